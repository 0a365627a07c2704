"""Throughput of the UDF agent, through the real pipeline and on its own; writes benchmarks/results/udf.json.

Pipeline modes: points are written to a real influxd, reach a real kapacitord stream task through its
subscription, pass through our socket UDF agent (its own process) and are written back by
influxDBOut. The scoring service runs as `tickguard serve` (gunicorn, its own processes). One task each:

  noudf    the same task without the UDF: what Kapacitor + InfluxDB manage on their own here
  echo     `.mode('echo')`: no scoring, the points go straight back - the protocol ceiling
  default  the agent's defaults: micro-batches (1,000 points / 50 ms), two requests in flight
  naive    `.mode('naive')`: one synchronous /predict call per point on the reading thread (the prototype's way)
  paced    the default configuration fed at a fixed rate (`--rate`), for end-to-end latency percentiles

Direct modes drive the agent over its socket exactly as Kapacitor does (pre-encoded requests, one
connection), without Kapacitor or InfluxDB, to isolate the agent (and the scoring service):
direct-echo, direct-default, direct-naive, and direct-capacity (defaults, but maxDelay/timeout 60 s so
no point may leave unscored: the scoring capacity).

Throughput = points / (time from the first write until Kapacitor's influxDBOut node reports every point
written; for direct modes, until the last response is read). Latency = the `latency_ms` field the agent
writes: from the point's timestamp (set when the benchmark generates it) to the agent's emission.
Everything shares this machine's 2 cores with whatever else runs, so the load average at start is
recorded with the results.

Run: .venv/bin/python -m benchmarks.udf_bench [--points 50000] [--naive-points 1000] [--rate 20000] [--model DIR|scratch]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results" / "udf.json"
SCRATCH = ROOT / "benchmarks" / ".scratch" / "udf"
CHUNK = 5000
TARGETS = {"default_points_per_s": 20_000, "default_vs_echo": 0.5, "default_vs_naive": 50.0, "p99_ms": 250.0}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[udf_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- model and processes ---------------------------------------------------------------------------


def pick_model(explicit: str | None) -> tuple[Path, str]:
    """(models root, fraud version) to serve: --model (a models/fraud/<version> directory),
    models/fraud/production, the newest model in models/fraud/, or a scratch one."""
    from tickguard.modelstore import CARD_FILE

    models = ROOT / "models"
    if explicit == "scratch":
        return build_scratch_model(), "production"
    if explicit:
        path = Path(explicit).resolve()
        return path.parent.parent, path.name
    if (models / "fraud" / "production" / CARD_FILE).exists():
        return models, "production"
    candidates = sorted(p for p in (models / "fraud").glob("*") if (p / CARD_FILE).is_file())
    if candidates:
        return models, candidates[-1].name
    return build_scratch_model(), "production"


def build_scratch_model() -> Path:
    """A small real model (scaler + logistic regression on synthetic rows) when no trained one exists."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tickguard.modelstore import promote, save_model

    features = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, len(features)))
    y = (X[:, 1] + X[:, 2] > 2).astype(int)
    root = SCRATCH / "models"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(X, y)
    save_model(
        model,
        {"version": "bench-synthetic", "features": features, "threshold": 0.5},
        root / "fraud" / "bench-synthetic",
    )
    promote(root / "fraud", "bench-synthetic")
    return root


def start_service(models_dir: Path, model: str, port: int, workers: int) -> subprocess.Popen:
    """`tickguard serve` in its own process group; returns once GET /model answers."""
    command = [sys.executable, "-m", "tickguard.cli", "serve", "--port", str(port), "--workers", str(workers)]
    command += ["--models-dir", str(models_dir), "--detector", "fraud", "--model", model]
    env = dict(os.environ, TICKGUARD_LOG_LEVEL="WARNING")
    with open(SCRATCH / "service.log", "wb") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/model", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"scoring service did not start; see {SCRATCH / 'service.log'}")
        time.sleep(0.2)


def start_agent(socket_path: Path, url: str) -> subprocess.Popen:
    """`tickguard udf` in its own process; returns once the socket exists."""
    env = dict(os.environ, TICKGUARD_UDF_METRICS_PORT="0", TICKGUARD_UDF_LOG_INTERVAL="0")
    command = [sys.executable, "-m", "tickguard.cli", "udf", "--socket", str(socket_path), "--url", url]
    with open(SCRATCH / "agent.log", "wb") as log_file:  # the child keeps its own descriptor
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 30
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"UDF agent did not start; see {SCRATCH / 'agent.log'}")
        time.sleep(0.05)
    return process


# ---- load --------------------------------------------------------------------------------------------


def field_pool(features: list[str], size: int = 1000) -> list[str]:
    """Pre-rendered line-protocol field sets (features + Class), reused cyclically."""
    rng = np.random.default_rng(1)
    pool = []
    for i in range(size):
        values = rng.normal(size=len(features))
        fields = ",".join(f"{name}={value!r}" for name, value in zip(features, values.tolist(), strict=True))
        pool.append(f"{fields},Class={int(i % 50 == 0)}i")
    return pool


def chunk_body(pool: list[str], start: int, count: int) -> bytes:
    """`count` lines stamped now (ns, unique per point)."""
    now = time.time_ns()
    size = len(pool)
    return "\n".join(
        f"tx,card=c{(start + i) % 16} {pool[(start + i) % size]} {now + i}" for i in range(count)
    ).encode()


class Writer:
    """Posts line protocol to influxd's /write from one thread, optionally paced."""

    def __init__(self, url: str, database: str, pool: list[str]) -> None:
        self.session = requests.Session()
        self.endpoint = f"{url}/write?db={database}&precision=ns"
        self.pool = pool
        self.finished_at = 0.0
        self.error: str = ""

    def _post(self, body: bytes) -> None:
        response = self.session.post(self.endpoint, data=body, timeout=60)
        if response.status_code != 204:
            raise RuntimeError(f"write failed ({response.status_code}): {response.text[:200]}")

    def run(self, total: int, rate: float | None) -> None:
        """Write `total` points, as fast as possible or at `rate` points/s (10 chunks per second)."""
        try:
            chunk = CHUNK if rate is None else max(1, int(rate / 10))
            started = time.monotonic()
            sent = 0
            while sent < total:
                count = min(chunk, total - sent)
                if rate is not None:
                    due = started + sent / rate
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                self._post(chunk_body(self.pool, sent, count))
                sent += count
        except Exception as exc:  # reported in the results, the run is then marked failed
            self.error = repr(exc)
        self.finished_at = time.monotonic()


def direct_run(
    socket_path: Path,
    mode: str,
    url: str,
    total: int,
    features: list[str],
    meter: CpuMeter,
    patient: bool = False,
) -> dict:
    """Drive the agent over its socket the way Kapacitor does, without Kapacitor or InfluxDB: the agent's own ceiling.

    `patient` sets maxDelay/timeout to 60 s so that no point is emitted unscored: scoring capacity.
    """
    import socket as socket_module

    from tickguard.agent import udf_pb2 as pb
    from tickguard.agent.framing import FrameReader, frame

    request = pb.Request()
    request.init.taskID = f"direct_{mode}"
    request.init.nodeID = "tickguard1"
    for name, value in (("mode", mode), ("url", url)):
        option = request.init.options.add()
        option.name = name
        option.values.add(type=pb.STRING, stringValue=value)
    if patient:
        for name in ("maxDelay", "timeout"):
            option = request.init.options.add()
            option.name = name
            option.values.add(type=pb.DURATION, durationValue=60_000_000_000)
    rng = np.random.default_rng(2)
    frames = []
    for i in range(1000):
        point = pb.Request()
        point.point.time = time.time_ns() + i
        point.point.name = "tx"
        point.point.database = "bench"
        point.point.retentionPolicy = "autogen"
        point.point.tags["card"] = f"c{i % 16}"
        for name, value in zip(features, rng.normal(size=len(features)).tolist(), strict=True):
            point.point.fieldsDouble[name] = value
        point.point.fieldsInt["Class"] = int(i % 50 == 0)
        frames.append(frame(point.SerializeToString()))
    payload = b"".join(
        frames[i % 1000] for i in range(total)
    )  # timestamps = build time: latency includes queueing
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_STREAM)
    sock.connect(str(socket_path))
    sock.sendall(frame(request.SerializeToString()))
    reader = FrameReader()
    while not reader.feed(sock.recv(65536)):
        pass
    meter.start()
    started = time.monotonic()

    def send() -> None:
        for offset in range(0, len(payload), 1 << 18):
            sock.sendall(payload[offset : offset + (1 << 18)])

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = 0
    sampled: list[
        bytes
    ] = []  # every 50th response is decoded after the run (decoding all would slow this client)
    while received < total:
        bodies = reader.feed(sock.recv(1 << 20))
        sampled.extend(bodies[(-received) % 50 :: 50])
        received += len(bodies)
    elapsed = time.monotonic() - started
    sender.join()
    sock.close()
    result = {
        "points": total,
        "seconds": round(elapsed, 3),
        "points_per_s": round(total / elapsed, 1),
        **meter.stop(total),
    }
    if mode != "echo":
        points = [pb.Response.FromString(body).point for body in sampled]
        result["sampled"] = len(points)
        result["sampled_scored"] = sum(1 for p in points if p.fieldsBool.get("scored"))
        result["sample_errors"] = sorted(
            {p.fieldsString["error"] for p in points if "error" in p.fieldsString}
        )[:3]
        latencies = sorted(p.fieldsDouble["latency_ms"] for p in points)
        result["latency_ms_p50"] = round(latencies[len(latencies) // 2], 1)
        result["latency_ms_p99"] = round(latencies[int(len(latencies) * 0.99)], 1)
    log(f"direct {mode}{' (patient)' if patient else ''}: {json.dumps(result)}")
    return result


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of a process and all its live descendants, from /proc."""
    if not pid:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, frontier = 0.0, [pid]
    while frontier:
        current = frontier.pop()
        if current in stats:
            total += stats[current][1]
        frontier.extend(child for child, (parent, _) in stats.items() if parent == current)
    return total


class CpuMeter:
    """CPU seconds used by each named process tree between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}

    def start(self) -> None:
        """Remember the current CPU totals."""
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self, points: int) -> dict:
        """CPU seconds per process tree and microseconds per point since start()."""
        used = {name: cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}
        return {
            "cpu_seconds": {name: round(value, 2) for name, value in used.items()},
            "cpu_us_per_point": {
                name: round(value / points * 1e6, 1) for name, value in used.items() if points
            },
        }


def output_node_written(task) -> int:
    """points_written of the task's influxDBOut node."""
    for name, stats in task.stats.get("node-stats", {}).items():
        if name.startswith("influxdb_out"):
            return int(stats.get("points_written", 0))
    return 0


def run_mode(
    runtime, name: str, script_mode: str, url: str, total: int, rate: float | None, features, meter: CpuMeter
) -> dict:
    """One task, one load run; returns the measured numbers."""
    database = f"bench_{name}"
    runtime.create_database(database)
    runtime.influx.create_database(database + "_out")
    options = f".mode('{script_mode}')" + ("" if script_mode == "echo" else f".url('{url}')")
    udf = "" if script_mode == "none" else f"@tickguard()\n        {options}"
    script = f"""
stream
    |from()
        .database('{database}')
        .measurement('tx')
    {udf}
    |influxDBOut()
        .database('{database}_out')
        .retentionPolicy('autogen')
        .measurement('tx')
        .buffer(10000)
        .flushInterval(100ms)
"""
    kapacitor = runtime.kapacitor_client()
    kapacitor.define_task(f"bench_{name}", script, dbrps=[(database, "autogen")])
    writer = Writer(runtime.influx_url, database, field_pool(features))
    log(f"{name}: writing {total} points" + (f" at {rate:.0f}/s" if rate else " as fast as possible"))
    meter.start()
    started = time.monotonic()
    thread = threading.Thread(target=writer.run, args=(total, rate), daemon=True)
    thread.start()
    written, last_progress, last_count = 0, started, 0
    while written < total:
        time.sleep(0.1)
        written = output_node_written(kapacitor.get_task(f"bench_{name}"))
        now = time.monotonic()
        if written != last_count:
            last_progress, last_count = now, written
        elif now - last_progress > 20 and not thread.is_alive():
            log(f"{name}: stalled at {written}/{total}")
            break
    finished = time.monotonic()
    thread.join()
    elapsed = finished - started
    result = {
        "points": total,
        "points_out": written,
        "seconds": round(elapsed, 3),
        "points_per_s": round(written / elapsed, 1),
        "write_seconds": round(writer.finished_at - started, 3),
        "writer_error": writer.error,
        **meter.stop(written),
    }
    if script_mode not in ("echo", "none"):
        time.sleep(0.5)  # influxDBOut's last flush
        rows = runtime.influx.select(
            "SELECT count(latency_ms) AS n, count(score) AS scored, percentile(latency_ms, 50) AS p50, "
            "percentile(latency_ms, 99) AS p99, max(latency_ms) AS max FROM tx",
            database + "_out",
        )
        row = rows[0] if rows else {}
        errors = runtime.influx.select("SELECT error FROM tx WHERE scored = false LIMIT 3", database + "_out")
        result.update(
            {
                "stored": row.get("n"),
                "scored": row.get("scored"),
                "latency_ms_p50": round(row.get("p50") or 0.0, 1),
                "latency_ms_p99": round(row.get("p99") or 0.0, 1),
                "latency_ms_max": round(row.get("max") or 0.0, 1),
                "sample_errors": sorted({e["error"] for e in errors}),
            }
        )
    kapacitor.disable_task(f"bench_{name}")
    log(f"{name}: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the modes and write benchmarks/results/udf.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=50_000, help="points per echo/default run")
    parser.add_argument("--naive-points", type=int, default=1_000, help="points for the naive run")
    parser.add_argument("--rate", type=float, default=20_000, help="points/s of the paced run (0 = skip it)")
    parser.add_argument("--paced-seconds", type=float, default=5.0, help="duration of the paced run")
    parser.add_argument(
        "--modes",
        default="direct-echo,direct-default,direct-capacity,direct-naive,noudf,echo,default,naive,paced",
        help="comma-separated subset; direct-* drive the agent without Kapacitor (direct-capacity: nothing may go"
        " unscored), noudf is Kapacitor without the UDF",
    )
    parser.add_argument(
        "--model",
        help="model directory to serve (default: models/fraud/production or newest; 'scratch' = a small logistic model)",
    )
    parser.add_argument("--service-workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from tickguard.modelstore import detector_models_dir, read_card, resolve_model_dir
    from tickguard.runtime import TickRuntime, free_port

    shutil.rmtree(SCRATCH / "tick", ignore_errors=True)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    models_dir, model = pick_model(args.model)
    card = read_card(resolve_model_dir(detector_models_dir(models_dir), model))
    features = list(card["features"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    service = start_service(models_dir, model, port, args.service_workers)
    socket_dir = Path(f"/tmp/tg-bench-{os.getpid()}")
    socket_dir.mkdir(exist_ok=True)
    agent = start_agent(socket_dir / "udf.sock", url)
    results: dict[str, dict] = {}
    try:
        with TickRuntime(SCRATCH / "tick", udfs={"tickguard": (socket_dir / "udf.sock", "10s")}) as runtime:
            modes = [m.strip() for m in args.modes.split(",") if m.strip()]
            direct_meter = CpuMeter({"agent": agent.pid, "service": service.pid})
            meter = CpuMeter(
                {
                    "agent": agent.pid,
                    "service": service.pid,
                    "kapacitord": runtime.kapacitor.pid,
                    "influxd": runtime.influx.pid,
                }
            )
            for mode in modes:
                if mode.startswith("direct-"):
                    kind = mode.removeprefix("direct-")
                    count = args.naive_points if kind == "naive" else args.points
                    script_mode = kind if kind in ("echo", "naive") else "score"
                    results[mode] = direct_run(
                        socket_dir / "udf.sock",
                        script_mode,
                        url,
                        count,
                        features,
                        direct_meter,
                        kind == "capacity",
                    )
                elif mode == "noudf":
                    results[mode] = run_mode(runtime, mode, "none", url, args.points, None, features, meter)
                elif mode == "echo":
                    results[mode] = run_mode(runtime, mode, "echo", url, args.points, None, features, meter)
                elif mode == "default":
                    results[mode] = run_mode(runtime, mode, "score", url, args.points, None, features, meter)
                elif mode == "naive":
                    results[mode] = run_mode(
                        runtime, mode, "naive", url, args.naive_points, None, features, meter
                    )
                elif mode == "paced" and args.rate > 0:
                    total = int(args.rate * args.paced_seconds)
                    results[mode] = run_mode(runtime, mode, "score", url, total, args.rate, features, meter)
                    results[mode]["rate"] = args.rate
    finally:
        agent.terminate()
        service.terminate()
        agent.wait(10)
        service.wait(10)
        shutil.rmtree(socket_dir, ignore_errors=True)

    rate = {mode: r["points_per_s"] for mode, r in results.items()}
    summary: dict = {}
    if "default" in rate and "echo" in rate:
        summary["default_vs_echo"] = round(rate["default"] / rate["echo"], 3)
    if "default" in rate and "naive" in rate:
        summary["default_vs_naive"] = round(rate["default"] / rate["naive"], 1)
    if "direct-default" in rate and "direct-echo" in rate:
        summary["direct_default_vs_echo"] = round(rate["direct-default"] / rate["direct-echo"], 3)
    if "direct-default" in rate and "direct-naive" in rate:
        summary["direct_default_vs_naive"] = round(rate["direct-default"] / rate["direct-naive"], 1)
    if "paced" in results:
        summary["paced_p99_ms"] = results["paced"].get("latency_ms_p99")
    report = {
        "benchmark": "udf",
        "command": "python -m benchmarks.udf_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_before,
        },
        "model": {"version": card["version"], "features": len(features)},
        "agent_defaults": {"batch_size": 1000, "flush_interval_ms": 50, "max_in_flight": 2},
        "service_workers": args.service_workers,
        "modes": results,
        "summary": summary,
        "targets": TARGETS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
