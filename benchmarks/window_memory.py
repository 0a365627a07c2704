"""Memory of the UDF agent holding window state for many series (issue 17); writes
benchmarks/results/window_memory.json.

A windowed detector (detectors/waterflow.toml) keeps, per series, its newest `capacity` points
(tickguard.windows). This benchmark fills that state for N series (10,000 by default) the way a restarted
agent does it, and reads the agent's resident memory (VmRSS in /proc) at each step:

1. a real influxd (tickguard.runtime, no Kapacitor) gets `capacity` hourly points of each series;
2. `tickguard serve` serves a model for the detector: models/waterflow/production when it exists, else a
   scratch logistic regression over the window columns fitted here (the model only costs service CPU);
3. `tickguard udf` runs as its own process with TICKGUARD_INFLUXDB_URL, and this script talks to its socket
   as Kapacitor does (init, then point requests; options maxDelay/timeout 60 s so nothing leaves unscored
   for lack of time);
4. round 1: one new point per series. Every series is new to the connection: its state is rebuilt from its
   last `capacity` points in InfluxDB, so the state is full, and the point is scored. The round's time is
   mostly that rebuild (history requests of 200 statements each);
5. rounds 2..R: one more point per series each. The state stays `capacity` points per series, so RSS must
   stay flat: memory per series is bounded;
6. a second agent without InfluxDB settings gets one point per series: every series starts empty and the
   points leave `warming up` (the other restart policy), for comparison;
7. a third agent, with InfluxDB, rebuilds all series under the default time budget (maxDelay 3 s): how many
   first points leave unscored because their rebuild outlasted their budget.

Points out = points in is checked for every round. The machine's other load is recorded (2 shared cores).

Run: .venv/bin/python -m benchmarks.window_memory [--series 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results" / "window_memory.json"
HOUR_NS = 3_600 * 10**9
START_NS = 1_735_689_600 * 10**9  # 2025-01-01T00:00:00Z, the first history point of every series
DATABASE = "waterflow_bench"
WRITE_LINES = 20_000


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[window_memory {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmRSS, VmHWM) of one process, in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(rest.split()[0]) / 1024, 1)
    return values


# ---- model, history, processes -----------------------------------------------------------------------


def models_root(spec, scratch: Path) -> tuple[Path, str]:
    """(models root, what is served): the committed production model, else a scratch one for the detector."""
    from tickguard.modelstore import CARD_FILE, promote, save_model

    committed = ROOT / "models" / spec.name / "production"
    if (committed / CARD_FILE).exists():
        return ROOT / "models", f"models/{spec.name}/production"
    from sklearn.linear_model import LogisticRegression

    columns = list(spec.request_fields)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(2000, len(columns)))
    model = LogisticRegression(max_iter=300).fit(rows, (rows[:, 0] > 1.5).astype(int))
    card = {"version": "bench-1", "features": columns, "threshold": 0.5, "kind": "window_memory scratch"}
    save_model(model, card, scratch / spec.name / "bench-1", detector=spec)
    promote(scratch / spec.name, "bench-1")
    return scratch, "scratch logistic regression over the window columns"


def write_history(influx, spec, series: int, points: int) -> float:
    """`points` hourly values of each series (tag = the detector's first group_by tag); seconds taken."""
    from tickguard.influx import escape_key, escape_measurement

    tag = escape_key(spec.windows.group_by[0], "tag")
    prefix = f"{escape_measurement(spec.source.measurement)},{tag}="
    field = escape_key(spec.feature_fields[0])
    rng = np.random.default_rng(1)
    started = time.monotonic()
    lines: list[str] = []
    for index in range(series):
        values = 50.0 + 10.0 * np.sin(np.arange(points) / 24 * 2 * np.pi) + rng.normal(0, 1, points)
        head = f"{prefix}s{index} {field}="
        lines.extend(
            f"{head}{value!r} {START_NS + hour * HOUR_NS}" for hour, value in enumerate(values.tolist())
        )
        if len(lines) >= WRITE_LINES or index == series - 1:
            influx.write(lines, database=DATABASE, batch_size=WRITE_LINES)
            lines = []
    return time.monotonic() - started


def start_process(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log_file:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "tickguard.cli", *argv],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )


def wait_for(check, process: subprocess.Popen, what: str, log_path: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; see {log_path}")
        time.sleep(0.2)


def service_ready(url: str) -> bool:
    try:
        return requests.get(f"{url}/v2/health/ready", timeout=1).ok
    except requests.RequestException:
        return False


# ---- the Kapacitor side of the socket -----------------------------------------------------------------


class Peer:
    """One UDF connection driven as Kapacitor drives it."""

    def __init__(self, path: Path, model: str, patient: bool = True) -> None:
        from tickguard.agent import udf_pb2 as pb
        from tickguard.agent.framing import FrameReader, frame

        self.pb, self.frame = pb, frame
        self.reader = FrameReader()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        request = pb.Request()
        request.init.taskID, request.init.nodeID = "window_memory", "tickguard1"
        for name, value in (("model", model), ("labelField", "")):
            option = request.init.options.add(name=name)
            option.values.add(type=pb.STRING, stringValue=value)
        for name in ("maxDelay", "timeout") if patient else ():
            option = request.init.options.add(name=name)
            option.values.add(type=pb.DURATION, durationValue=60 * 10**9)
        self.sock.sendall(frame(request.SerializeToString()))
        response = pb.Response.FromString(self._read(1)[0])
        if not response.init.success:
            raise SystemExit(f"the agent refused the task: {response.init.error}")

    def _read(self, count: int) -> list[bytes]:
        bodies: list[bytes] = []
        while len(bodies) < count:
            data = self.sock.recv(1 << 20)
            if not data:
                raise SystemExit(f"the agent closed the connection after {len(bodies)} of {count} responses")
            bodies.extend(self.reader.feed(data))
        return bodies

    def round(self, spec, series: int, time_ns: int) -> dict:
        """One point per series at `time_ns`; every response read back; counts of how they left."""
        pb = self.pb
        tag, field = spec.windows.group_by[0], spec.feature_fields[0]
        payload = bytearray()
        for index in range(series):
            request = pb.Request()
            point = request.point
            point.time, point.name = time_ns, spec.source.measurement
            point.database, point.retentionPolicy = DATABASE, "autogen"
            point.tags[tag] = f"s{index}"
            point.fieldsDouble[field] = 50.0 + (index % 7)
            payload += self.frame(request.SerializeToString())
        started = time.monotonic()
        sender = threading.Thread(target=self.sock.sendall, args=(bytes(payload),), daemon=True)
        sender.start()
        bodies = self._read(series)
        seconds = time.monotonic() - started
        sender.join()
        errors: dict[str, int] = {}
        scored = 0
        for body in bodies:
            point = pb.Response.FromString(body).point
            if point.fieldsBool.get("scored"):
                scored += 1
            else:
                message = point.fieldsString.get("error", "?")
                errors[message] = errors.get(message, 0) + 1
        return {"points_in": series, "points_out": len(bodies), "scored": scored, "unscored": errors,
                "seconds": round(seconds, 2)}  # fmt: skip

    def close(self) -> None:
        self.sock.close()


# ---- the run ------------------------------------------------------------------------------------------


def run(series: int, rounds: int) -> dict:
    from tickguard.detectors import load_detector
    from tickguard.runtime import TickRuntime, free_port

    spec = load_detector("waterflow")
    capacity = spec.windows.capacity
    workdir = Path(tempfile.mkdtemp(prefix="tg-winmem-"))
    result: dict = {
        "detector": spec.name,
        "series": series,
        "capacity_points_per_series": capacity,
        "value_fields": len(spec.feature_fields),
        "model_columns": len(spec.request_fields),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }
    processes: list[subprocess.Popen] = []
    runtime = TickRuntime(workdir / "tick", with_kapacitor=False)
    try:
        runtime.start()
        runtime.create_database(DATABASE)
        influx = runtime.influx.client(timeout_s=120.0, retries=2)
        log(f"writing {capacity} points x {series} series into influxd")
        result["history_write_seconds"] = round(write_history(influx, spec, series, capacity), 1)
        root, served = models_root(spec, workdir / "models")
        result["model"] = served
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--models-dir",
            str(root),
            "--detector",
            spec.name,
        ]
        service = start_process(argv, {"TICKGUARD_LOG_LEVEL": "WARNING"}, workdir / "service.log")
        processes.append(service)
        wait_for(lambda: service_ready(url), service, "the scoring service", workdir / "service.log")

        def agent(name: str, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
            path = workdir / f"{name}.sock"
            env = {"TICKGUARD_UDF_METRICS_PORT": "0", "TICKGUARD_UDF_LOG_INTERVAL": "0", **env}
            process = start_process(
                ["udf", "--socket", str(path), "--url", url], env, workdir / f"{name}.log"
            )
            processes.append(process)
            wait_for(path.exists, process, f"agent {name}", workdir / f"{name}.log")
            return process, path

        warm, warm_path = agent("rebuilt", {"TICKGUARD_INFLUXDB_URL": runtime.influx_url})
        time.sleep(1.0)
        steps = {"idle": rss_mb(warm.pid)}
        peer = Peer(warm_path, spec.model.name)
        steps["after_init"] = rss_mb(warm.pid)
        result["rounds"] = []
        for number in range(1, rounds + 1):
            log(f"round {number}: one point for each of {series} series")
            outcome = peer.round(spec, series, START_NS + (capacity - 1 + number) * HOUR_NS)
            outcome.update(rss_mb(warm.pid))
            result["rounds"].append(outcome)
            log(json.dumps(outcome))
        peer.close()
        base, full = steps["after_init"]["rss_mb"], result["rounds"][0]["rss_mb"]
        result["rss_mb"] = steps
        result["bytes_per_series_full_state"] = round((full - base) * 1024 * 1024 / series)
        result["rss_growth_after_round_1_mb"] = round(result["rounds"][-1]["rss_mb"] - full, 1)

        cold, cold_path = agent("cold", {})
        time.sleep(1.0)
        peer = Peer(cold_path, spec.model.name)
        before = rss_mb(cold.pid)["rss_mb"]
        outcome = peer.round(spec, series, START_NS + capacity * HOUR_NS)
        outcome.update(rss_mb(cold.pid))
        peer.close()
        result["cold_agent"] = {"after_init_rss_mb": before, "round_1": outcome}

        # The same restart with the agent's default time budget (maxDelay 3 s, timeout 2 s): how many of the
        # first points leave unscored while 10,000 series are read back.
        hurried, hurried_path = agent("default-budget", {"TICKGUARD_INFLUXDB_URL": runtime.influx_url})
        time.sleep(1.0)
        peer = Peer(hurried_path, spec.model.name, patient=False)
        default_budget = peer.round(spec, series, START_NS + capacity * HOUR_NS)
        default_budget.update(rss_mb(hurried.pid))
        peer.close()
        result["restart_with_default_budget"] = default_budget
        result["points_out_equal_in"] = all(
            r["points_out"] == r["points_in"] for r in (*result["rounds"], outcome, default_budget)
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        runtime.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.series, args.rounds)
    result["command"] = (
        f".venv/bin/python -m benchmarks.window_memory --series {args.series} --rounds {args.rounds}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
