"""tickguard serve beside MLServer on the same pickle, in one run; writes benchmarks/results/mlserver.json.

Why: issue 15 sets a goal relative to the peer users would otherwise pick: at least 2x MLServer's
rows/s and at most 0.5x its p50 in every scenario. Both servers run at the same time, each with two
workers (gunicorn workers for tickguard, MLServer's `parallel_workers` for MLServer), serving
models/fraud/production/model.joblib: tickguard through its compiled scorer, MLServer through its
sklearn runtime (`predict_proba`). Each scenario runs against tickguard, then MLServer, with the same
client code and the same pre-encoded V2 requests (the only difference: the output asked for, `score`
from tickguard, `predict_proba` from MLServer):

  batch_rest_json    1,000-row FP64 V2 JSON bodies, 2 keep-alive connections, closed loop
  batch_rest_binary  the same as binary tensors (Inference-Header-Content-Length), when the server
                     supports the extension (MLServer 1.7.1 does not: probed and recorded n/a)
  batch_grpc         the same rows through tritonclient.grpc (raw contents), 2 client threads
  single_paced_100 / single_paced_250   one record per V2 JSON request, 32 connections paced in
                     total at 100 and 250 req/s (api_bench's open-loop generator, run_load)
  single_closed_8    one record per request, 8 connections, closed loop

MLServer lives in its own venv (${TICKGUARD_CACHE:-~/.cache/tickguard}/mlserver-venv, created here on
first use): its pins must not move the project's .venv. The pickle imports tickguard's pipeline and
features modules, so the MLServer process gets PYTHONPATH=<repo>/src (tickguard is not installed into
that venv, so none of tickguard's own pins enter it), and the pickle's libraries (scikit-learn,
imbalanced-learn, LightGBM, joblib) are pinned to the versions in .venv, so both servers unpickle the
same objects. The scores are compared row by row on 1,000 rows.

Run: .venv/bin/python -m benchmarks.mlserver_bench [--duration 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import numpy as np
import orjson

from benchmarks.api_bench import run_load
from benchmarks.oip_binary import HEADER, holdout_rows
from tickguard.service.local import LocalService, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mlserver.json"
SCRATCH = ROOT / "benchmarks" / ".scratch" / "mlserver"
MODEL_DIR = ROOT / "models" / "fraud" / "production"
CACHE = Path(os.environ.get("TICKGUARD_CACHE") or Path.home() / ".cache" / "tickguard")
VENV = CACHE / "mlserver-venv"
# uvloop 0.22 makes MLServer 1.7.1's parallel workers die at start (asyncio.get_event_loop() raises in
# the worker: SeldonIO/MLServer issue 2286, fix unreleased), so the last release before it.
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.22"]
# What unpickling the fraud pipeline needs, at the versions that made and serve it in .venv.
PICKLE_LIBRARIES = ["scikit-learn", "imbalanced-learn", "lightgbm", "joblib", "numpy"]
BATCH_ROWS = 1000
BATCH_CLIENTS = 2
PACED_CONNECTIONS = 32
CLOSED_LOOP_CLIENTS = 8
SCENARIOS = (
    "batch_rest_json",
    "batch_rest_binary",
    "batch_grpc",
    "single_paced_100",
    "single_paced_250",
    "single_closed_8",
)
GOAL = {"rows_per_s_ratio_min": 2.0, "p50_ratio_max": 0.5}


# ---- MLServer's own environment ------------------------------------------------------------------


def ensure_mlserver_venv() -> Path:
    """The MLServer venv's python, created and installed on first use (re-installed when pins change)."""
    pins = MLSERVER_PINS + [f"{name}=={version(name)}" for name in PICKLE_LIBRARIES]
    stamp = VENV / ".tickguard-pins"
    python = VENV / "bin" / "python"
    if stamp.is_file() and stamp.read_text().split() == pins and python.exists():
        return python
    print(f"mlserver_bench: creating {VENV} (MLServer's own venv: its pins stay out of .venv)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    print(f"mlserver_bench: pip install {' '.join(pins)} (a minute or two)", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *pins], check=True)
    stamp.write_text("\n".join(pins) + "\n")
    print("mlserver_bench: MLServer venv ready", flush=True)
    return python


@contextlib.contextmanager
def mlserver(python: Path, workers: int):
    """`mlserver start` on free loopback ports serving MODEL_DIR's pickle as model `fraud`."""
    repository = SCRATCH / "repository"
    (repository / "fraud").mkdir(parents=True, exist_ok=True)
    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    settings = {"host": "127.0.0.1", "parallel_workers": workers, **ports}
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": "fraud",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(MODEL_DIR.resolve() / "model.joblib")},
    }
    (repository / "fraud" / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with open(SCRATCH / "mlserver.log", "wb") as log:
        process = subprocess.Popen(
            [str(VENV / "bin" / "mlserver"), "start", str(repository)],
            cwd=SCRATCH,
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            wait_ready(ports["http_port"], process, "/v2/models/fraud/ready")
            yield process, ports
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(port: int, process: subprocess.Popen, path: str, timeout: float = 120.0) -> None:
    """Poll GET `path` until 200; fail early, pointing at the log, when the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"MLServer exited ({process.returncode}); see {SCRATCH / 'mlserver.log'}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"MLServer not ready after {timeout:.0f}s; see {SCRATCH / 'mlserver.log'}")


# ---- requests: the same rows and client code for both servers -----------------------------------------


def post(path: str, body: bytes, port: int, headers: dict[str, str]) -> bytes:
    """A complete pre-encoded HTTP/1.1 keep-alive POST for api_bench's load generator."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "Connection: keep-alive\r\n\r\n").encode() + body


def v2_body(rows: np.ndarray, output: str, binary: bool) -> tuple[bytes, dict[str, str]]:
    """A V2 inference body asking for `output`: JSON FP64 data, or binary FP64 tensors both ways."""
    tensor: dict = {"name": "features", "shape": list(rows.shape), "datatype": "FP64"}
    if not binary:
        tensor["data"] = rows.ravel().tolist()
        body = {"inputs": [tensor], "outputs": [{"name": output}]}
        return orjson.dumps(body), {"Content-Type": "application/json"}
    blob = rows.astype("<f8").tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    head = orjson.dumps(
        {"inputs": [tensor], "outputs": [{"name": output, "parameters": {"binary_data": True}}]}
    )
    return head + blob, {"Content-Type": "application/octet-stream", HEADER: str(len(head))}


def server_pid_tree_cpu(pid: int) -> float:
    """CPU seconds of a server and all its descendants (MLServer's workers are grandchildren at times)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
    return total


def rest_load(port: int, bodies: list[bytes], clients: int, seconds: float, rows: int, rate: float, pid: int):
    """api_bench.run_load with this server's CPU per request measured over the whole process tree."""
    cpu_before = server_pid_tree_cpu(pid)
    summary = run_load(port, bodies, clients, seconds, rows, check_every=50, rate=rate)
    cpu = server_pid_tree_cpu(pid) - cpu_before
    checked = summary.pop("_checked", [])
    if summary.get("errors"):
        raise RuntimeError(f"{summary['errors']} failed requests on port {port}")
    summary["server_cpu_ms_per_request_incl_warmup"] = round(cpu * 1000 / max(summary["requests"], 1), 3)
    summary["checked_responses"] = len(checked)
    return summary


def grpc_load(port: int, rows: np.ndarray, output: str, clients: int, seconds: float, pid: int) -> dict:
    """1,000-row ModelInfer calls from `clients` tritonclient.grpc threads, closed loop."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    lock = threading.Lock()

    def caller():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        requested = [grpcclient.InferRequestedOutput(output)]

        def call() -> None:
            tensor = grpcclient.InferInput("features", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows)
            result = client.infer("fraud", [tensor], outputs=requested)
            if result.as_numpy(output).shape[0] != rows.shape[0]:
                raise RuntimeError(f"gRPC {output}: wrong row count")

        return call

    calls = [caller() for _ in range(clients)]
    warm_until = time.perf_counter() + min(2.0, seconds / 5)
    stop = warm_until + seconds

    def loop(call) -> None:
        mine = []
        while (now := time.perf_counter()) < stop:
            call()
            if now >= warm_until:
                mine.append(time.perf_counter() - now)
        with lock:
            latencies.extend(mine)

    cpu_before = server_pid_tree_cpu(pid)
    threads = [threading.Thread(target=loop, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    cpu = server_pid_tree_cpu(pid) - cpu_before
    measured = np.array(latencies) * 1000
    return {
        "clients": clients,
        "mode": "closed loop (tritonclient.grpc threads)",
        "requests": int(measured.size),
        "requests_per_s": round(measured.size / seconds, 1),
        "rows_per_request": int(rows.shape[0]),
        "rows_per_s": round(measured.size * rows.shape[0] / seconds, 1),
        "latency_ms": {
            "p50": round(float(np.percentile(measured, 50)), 3),
            "p99": round(float(np.percentile(measured, 99)), 3),
        },
        "server_cpu_ms_per_request_incl_warmup": round(cpu * 1000 / max(measured.size, 1), 3),
    }


def scores_agree(tickguard_port: int, mlserver_port: int, rows: np.ndarray) -> dict:
    """tickguard's `score` against MLServer's predict_proba[:, 1] for the same rows."""

    def infer(port: int, output: str) -> np.ndarray:
        body, headers = v2_body(rows, output, binary=False)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v2/models/fraud/infer", data=body, headers=headers
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = orjson.loads(response.read())
        (tensor,) = answer["outputs"]
        return np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])

    ours = infer(tickguard_port, "score")
    theirs = infer(mlserver_port, "predict_proba")[:, 1]
    difference = np.abs(ours - theirs)
    return {
        "rows": int(rows.shape[0]),
        "max_abs_difference": float(difference.max()),
        "mean_abs_difference": float(difference.mean()),
        "agree_within_1e-9": bool(difference.max() <= 1e-9),
    }


def probe_binary(port: int, rows: np.ndarray, output: str) -> str | None:
    """None when the server answers a binary-tensor request with 200, else what it said."""
    body, headers = v2_body(rows[:2], output, binary=True)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/fraud/infer", data=body, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30):
            return None
    except urllib.error.HTTPError as exc:
        lines = exc.read().decode("utf-8", "replace").strip().splitlines() or [""]
        return f"HTTP {exc.code}: {lines[-1][:200]}"  # a traceback's last line says what failed


# ---- the run ------------------------------------------------------------------------------------


def compare(ours: dict | None, theirs: dict | None) -> dict:
    """tickguard / MLServer ratios of one scenario and whether the issue's goal is met."""
    if not ours or not theirs:
        return {"met": None, "note": "n/a: one server does not support this transport"}
    rows_ratio = ours["rows_per_s"] / theirs["rows_per_s"]
    p50_ratio = ours["latency_ms"]["p50"] / theirs["latency_ms"]["p50"]
    paced = "offered_requests_per_s" in ours  # rows/s is the offered rate there: latency decides
    met = p50_ratio <= GOAL["p50_ratio_max"] and (paced or rows_ratio >= GOAL["rows_per_s_ratio_min"])
    return {
        "rows_per_s_ratio": round(rows_ratio, 2),
        "p50_ratio": round(p50_ratio, 2),
        "p99_ratio": round(ours["latency_ms"]["p99"] / theirs["latency_ms"]["p99"], 2),
        "met": met,
    }


def markdown_table(results: dict) -> str:
    """The side-by-side table of benchmarks/README.md (printed at the end of a run)."""
    lines = [
        "| scenario | tickguard rows/s | MLServer rows/s | ratio (goal >= 2) | tickguard p50 / p99 ms "
        "| MLServer p50 / p99 ms | p50 ratio (goal <= 0.5) | goal |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for scenario in SCENARIOS:
        ours, theirs = results["scenarios"]["tickguard"][scenario], results["scenarios"]["mlserver"][scenario]
        ratio = results["ratios"][scenario]
        if theirs is None:
            ratio = ratio.get("vs_mlserver_rest_json", ratio)
            theirs = results["scenarios"]["mlserver"]["batch_rest_json"]
            label = f"{scenario} (MLServer: no binary tensors, its REST JSON)"
        else:
            label = scenario
        rows_ratio = "paced" if "offered_requests_per_s" in ours else f"{ratio['rows_per_s_ratio']:.2f}x"
        lines.append(
            f"| {label} | {ours['rows_per_s']:,.0f} | {theirs['rows_per_s']:,.0f} | {rows_ratio} "
            f"| {ours['latency_ms']['p50']:.2f} / {ours['latency_ms']['p99']:.2f} "
            f"| {theirs['latency_ms']['p50']:.2f} / {theirs['latency_ms']['p99']:.2f} "
            f"| {ratio['p50_ratio']:.2f} | {'met' if ratio['met'] else 'missed'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--duration", type=float, default=8.0, help="measured seconds per scenario and server"
    )
    parser.add_argument("--workers", type=int, default=2, help="workers of each server")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    python = ensure_mlserver_venv()
    card = json.loads((MODEL_DIR / "model_card.json").read_text())
    rows = holdout_rows(card["features"], 5 * BATCH_ROWS)
    batch = rows[:BATCH_ROWS]
    SCRATCH.mkdir(parents=True, exist_ok=True)
    load_average = [round(x, 2) for x in os.getloadavg()]
    outputs = {"tickguard": "score", "mlserver": "predict_proba"}
    results: dict = {
        "benchmark": "mlserver",
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.mlserver_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load_average,
        },
        "model": {"version": card["version"], "file": "models/fraud/production/model.joblib"},
        "servers": {
            "tickguard": f"tickguard serve: {args.workers} gunicorn workers x 4 threads, gRPC in the same workers, "
            "compiled scorer (output `score`)",
            "mlserver": f"MLServer {MLSERVER_PINS[0].split('==')[1]} + mlserver-sklearn, parallel_workers="
            f"{args.workers}, default settings otherwise (output `predict_proba`); own venv {VENV}, "
            "tickguard via PYTHONPATH=<repo>/src",
        },
        "goal": GOAL,
        "scenarios": {},
    }
    with (
        LocalService(
            models_dir=ROOT / "models",
            detectors=("fraud",),
            workers=args.workers,
            threads=4,
            grpc_port=free_port(),
            log_file=SCRATCH / "tickguard.log",
        ) as service,
        mlserver(python, args.workers) as (ml_process, ml_ports),
    ):
        servers = {
            "tickguard": (service.port, service.grpc_port, service.process.pid),
            "mlserver": (ml_ports["http_port"], ml_ports["grpc_port"], ml_process.pid),
        }
        results["scores"] = scores_agree(service.port, ml_ports["http_port"], batch)
        print(f"mlserver_bench: scores {results['scores']}", flush=True)
        unsupported = {
            name: probe_binary(port, batch, outputs[name]) for name, (port, _, _) in servers.items()
        }
        scenarios: dict[str, dict] = {name: {} for name in servers}
        # Scenario by scenario, tickguard then MLServer, so drift on the shared machine hits both alike.
        for scenario in SCENARIOS:
            for name, (port, grpc_port, pid) in servers.items():
                print(f"mlserver_bench: {scenario}: {name}", flush=True)
                runs, output = scenarios[name], outputs[name]
                if scenario == "batch_grpc":
                    runs[scenario] = grpc_load(grpc_port, batch, output, BATCH_CLIENTS, args.duration, pid)
                elif scenario == "batch_rest_binary" and unsupported[name]:
                    runs[scenario], runs["batch_rest_binary_refused"] = None, unsupported[name]
                elif scenario.startswith("batch_"):
                    body, headers = v2_body(batch, output, binary=scenario == "batch_rest_binary")
                    bodies = [post("/v2/models/fraud/infer", body, port, headers)]
                    runs[scenario] = rest_load(port, bodies, BATCH_CLIENTS, args.duration, BATCH_ROWS, 0, pid)
                else:
                    singles = [
                        post("/v2/models/fraud/infer", body, port, headers)
                        for body, headers in (v2_body(rows[i : i + 1], output, False) for i in range(500))
                    ]
                    paced = scenario.startswith("single_paced_")
                    clients = PACED_CONNECTIONS if paced else CLOSED_LOOP_CLIENTS
                    rate = float(scenario.rsplit("_", 1)[1]) if paced else 0.0
                    runs[scenario] = rest_load(port, singles, clients, args.duration, 1, rate, pid)
    results["scenarios"] = scenarios
    results["ratios"] = {
        scenario: compare(scenarios["tickguard"][scenario], scenarios["mlserver"][scenario])
        for scenario in SCENARIOS
    }
    if scenarios["mlserver"]["batch_rest_binary"] is None and scenarios["tickguard"]["batch_rest_binary"]:
        # What a binary-tensor client gets from each: MLServer refuses binary, so its REST JSON.
        results["ratios"]["batch_rest_binary"]["vs_mlserver_rest_json"] = compare(
            scenarios["tickguard"]["batch_rest_binary"], scenarios["mlserver"]["batch_rest_json"]
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["ratios"], indent=2))
    print(markdown_table(results))
    print(f"mlserver_bench: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
