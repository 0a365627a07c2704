"""End-to-end benchmark on the local runtime; writes benchmarks/results/latest.json and benchmarks/README.md's table.

Each configuration runs the real pipeline of `tickguard up --local` (tickguard.stack.local.LocalStack:
influxd and kapacitord from `make tick`, the `score` TICKscript, the UDF agent and `tickguard serve`, each
its own process), started afresh so memory is measured per configuration:

  echo       the agent returns the points unscored (TICKGUARD_UDF_MODE=echo): the protocol ceiling
  tickguard  the agent's defaults (micro-batches to the REST service, requests in flight)
  naive      TICKGUARD_UDF_MODE=naive: batch size 1, one synchronous /predict per point (the prototype's way)

Points are real holdout transactions (the generator's schema: 30 features, Class, txid; tag source)
written to InfluxDB over HTTP by this process with timestamps of the send time. Two phases per config:

  sustained  closed loop: the writer keeps about two seconds of work queued in the pipeline (it writes
             while points written - points scored < max(4000, 2 x the last second's output)) for
             --seconds; points/s = scored points written per second after a warm-up, i.e. the rate the
             pipeline sustains while never starved and never overrun.
  latency    open loop at min(--rate, 80% of the sustained rate) for --latency-seconds: end-to-end
             latency of every point = when InfluxDB accepted its scored point minus its timestamp.

"When InfluxDB accepted it" comes from an InfluxDB subscription to this process (tickguard.ops.probe):
InfluxDB forwards each write as it accepts it, so every scored point is timed, without polling.
Points in / out are counted by InfluxDB itself (count over the run's time range in `transactions` and
`transactions_scored`). Peak RSS is sampled from /proc (the API = gunicorn master + workers).

Alerting tasks (fraud_alert, fraud_anomaly_rate, fraud_scoring_errors, kapacitor_stats) are disabled so the three
configurations run the same Kapacitor work (echo's points lack the fields they filter on); pass
--with-alert-tasks to keep them. The machine's 2 cores run everything, this process included; the load
average at the start of each configuration is recorded.

Run: .venv/bin/python -m benchmarks.e2e_bench [--configs echo,tickguard,naive] [--seconds 20]

Variants for profiling and tuning (each recorded in the result): --pprof 15 takes a Go CPU profile of
influxd and kapacitord in the sustained phase (`go tool pprof -top` summaries in results/profiles/);
--server-env GOGC=400 (or --influxd-env / --kapacitord-env); --influx-config data.wal-fsync-delay=10ms
and --kapacitor-config influxdb.KEY=VALUE (server config overrides); --scored-rp NAME writes
transactions_scored into its own retention policy, excluded from Kapacitor's subscription;
--udf-env TICKGUARD_UDF_OUTPUT=lean (agent settings); --task-var flush_interval=100ms (TICKscript vars).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULTS_DIR = ROOT / "benchmarks" / "results"
RESULTS = RESULTS_DIR / "latest.json"
SCRATCH = ROOT / "benchmarks" / ".scratch" / "e2e"
DATABASE = "fraud"
# fraud's alert tasks (tickguard.stack.deploy.task_ids) and the shared statistics task.
SIDE_TASKS = ("fraud_alert", "fraud_anomaly_rate", "fraud_scoring_errors", "kapacitor_stats")
CONFIGS = {
    "echo": {"TICKGUARD_UDF_MODE": "echo"},
    "tickguard": {"TICKGUARD_UDF_MODE": "score"},
    "naive": {"TICKGUARD_UDF_MODE": "naive"},
}
TARGETS = {
    "tickguard_points_per_s": 20_000,
    "tickguard_p99_ms": 250.0,
    "tickguard_vs_echo": 0.5,
    "tickguard_vs_naive": 50.0,
}
MIN_BACKLOG = 4000
NAIVE_MIN_BACKLOG = 500
MAX_BACKLOG = 100_000
TICK_S = 0.05


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[e2e_bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- model ---------------------------------------------------------------------------------------------


def pick_model(explicit: str | None) -> tuple[Path, str]:
    """(models root, fraud version): --model (a models/fraud/<version> directory), models/fraud/production,
    or a small real model fitted for the benchmark."""
    from tickguard.modelstore import CARD_FILE

    if explicit:
        path = Path(explicit).resolve()
        return path.parent.parent, path.name
    models = ROOT / "models"
    if (models / "fraud" / "production" / CARD_FILE).is_file():
        return models, "production"
    return scratch_model(), "production"


def scratch_model() -> Path:
    """A logistic regression on the data set's training split (used only when no trained model exists)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tickguard.data import FEATURES, TARGET, load_dataset, time_split
    from tickguard.modelstore import promote, save_model

    root = SCRATCH / "models"
    if (root / "fraud" / "production").exists():
        return root
    log("no models/fraud/production: fitting a small logistic regression for the benchmark")
    train, _ = time_split(load_dataset())
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1))
    model.fit(train[list(FEATURES)].to_numpy(dtype=np.float64), train[TARGET].to_numpy())
    card = {
        "version": "bench-logreg",
        "features": list(FEATURES),
        "threshold": 0.5,
        "kind": "benchmark fallback",
    }
    save_model(model, card, root / "fraud" / "bench-logreg")
    promote(root / "fraud", "bench-logreg")
    return root


# ---- load ----------------------------------------------------------------------------------------------


class LineWriter:
    """Writes holdout rows as `transactions` points (the generator's schema), stamped at send time."""

    def __init__(self, influx_url: str, measurement: str = "transactions", source: str = "bench"):
        from tickguard.data import FEATURES, TARGET
        from tickguard.stack.generator import load_holdout, txid_for

        rows = load_holdout()
        values = rows[list(FEATURES)].to_numpy(dtype=np.float64).tolist()
        labels = rows[TARGET].to_numpy().tolist()
        prefix = f"{measurement},source={source} "
        self.pool = [
            prefix
            + ",".join(f"{name}={value!r}" for name, value in zip(FEATURES, row, strict=True))
            + f',{TARGET}={int(label)}i,txid="{txid_for(index)}"'
            for row, label, index in zip(values, labels, rows.index, strict=True)
        ]
        self.position = 0
        self.last_ns = 0
        self.written = 0
        self.first_ns: int | None = None
        self.session = requests.Session()
        self.endpoint = f"{influx_url}/write?db={DATABASE}&precision=ns"

    def write(self, count: int) -> None:
        """Write `count` points in one request, timestamps strictly increasing from now."""
        now = time.time_ns()
        base = now if now > self.last_ns else self.last_ns + 1
        pool, size, start = self.pool, len(self.pool), self.position
        body = "\n".join(f"{pool[(start + i) % size]} {base + i}" for i in range(count)).encode()
        response = self.session.post(self.endpoint, data=body, timeout=60)
        if response.status_code != 204:
            raise RuntimeError(f"InfluxDB refused a write ({response.status_code}): {response.text[:200]}")
        self.position = (start + count) % size
        self.last_ns = base + count - 1
        if self.first_ns is None:
            self.first_ns = base
        self.written += count


def influx_count(stack, measurement: str, field: str, start_ns: int, end_ns: int, rp: str = "") -> int:
    """count(field) over [start_ns, end_ns] as InfluxDB reports it (in retention policy `rp`, or the default)."""
    source = f'"{rp}"."{measurement}"' if rp else f'"{measurement}"'
    rows = stack.query(f'SELECT count("{field}") FROM {source} WHERE time >= {start_ns} AND time <= {end_ns}')
    return int(rows[0]["count"]) if rows else 0


def drain(probe, expected: int, patience_s: float) -> bool:
    """Wait until the probe has seen `expected` scored points, giving up after `patience_s` without progress."""
    return probe.wait_for(expected, timeout_s=600, idle_s=patience_s)


def sustained_phase(
    stack, probe, writer: LineWriter, seconds: float, warmup_s: float, min_backlog: int = MIN_BACKLOG
) -> dict[str, Any]:
    """Closed loop: keep about two seconds of work queued; measure the output rate after the warm-up."""
    from tickguard.ops.probe import cpu_seconds

    base_out, base_written = probe.count, writer.written
    first_ns = writer.last_ns + 1
    pids = component_pids(stack)
    # The benchmark process is the parent of every server: count it alone, the others with their children.
    cpu_before = {name: cpu_seconds(pid, tree=name != "bench") for name, pid in pids.items()}
    started_ns = time.time_ns()
    started = time.monotonic()
    stop = started + seconds
    limit = min_backlog
    window: list[tuple[float, int]] = [(started, 0)]
    while (now := time.monotonic()) < stop:
        out = probe.count - base_out
        if now - window[-1][0] >= 0.25:
            window.append((now, out))
            window = window[-8:]
            span = window[-1][0] - window[0][0]
            if span > 0:
                rate = (window[-1][1] - window[0][1]) / span
                limit = int(min(MAX_BACKLOG, max(min_backlog, 2 * rate)))
        if (writer.written - base_written) - out >= limit:
            time.sleep(0.002)
            continue
        writer.write(max(100, min(1000, limit // 4)))
    stopped_ns = time.time_ns()
    wall = time.monotonic() - started
    cpu_after = {name: cpu_seconds(pid, tree=name != "bench") for name, pid in pids.items()}
    measured_from = started_ns + int(warmup_s * 1e9)
    delivered = probe.count_between(measured_from, stopped_ns)
    points_per_s = delivered / ((stopped_ns - measured_from) / 1e9)
    written = writer.written - base_written
    drained = drain(probe, base_out + written, patience_s=20)
    return {
        "seconds": round(seconds, 1),
        "warmup_s": warmup_s,
        "points_per_s": round(points_per_s, 1),
        "written": written,
        "first_ns": first_ns,
        "last_ns": writer.last_ns,
        "drained": drained,
        "final_backlog_limit": limit,
        "cpu_cores": {name: round((cpu_after[name] - cpu_before[name]) / wall, 2) for name in pids},
    }


def latency_phase(stack, probe, writer: LineWriter, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop at `rate` points/s; end-to-end latency of every point after the first second."""
    from tickguard.ops.probe import percentiles

    base_out = probe.count
    mark = probe.mark()
    first_ns = writer.last_ns + 1
    started = time.monotonic()
    total = int(rate * seconds)
    chunk = max(1, int(rate * TICK_S))
    sent = 0
    late_ticks = 0
    while sent < total:
        target = min(total, int((time.monotonic() - started) * rate))
        if target - sent >= chunk or (target == total and target > sent):
            count = target - sent
            if count > chunk * 4:
                late_ticks += 1  # the writer could not keep the pace for a moment
            writer.write(count)
            sent += count
            continue
        delay = started + (sent + chunk) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    achieved = sent / (time.monotonic() - started)
    drained = drain(probe, base_out + sent, patience_s=20)
    skip = first_ns + int(1e9)  # the first second: connections and batch sizes settling
    latencies = probe.latencies_ms(mark, min_ts=skip)
    return {
        "rate": round(rate, 1),
        "achieved_rate": round(achieved, 1),
        "seconds": seconds,
        "written": sent,
        "first_ns": first_ns,
        "last_ns": writer.last_ns,
        "drained": drained,
        "writer_fell_behind": late_ticks,
        "latency_ms": percentiles(latencies),
        "latency_samples": int(latencies.size),
    }


def node_stats(stack) -> dict[str, dict[str, Any]]:
    """Kapacitor's counters of the score task's nodes (avg_exec_time_ns: time per point in that node)."""
    try:
        task = stack.runtime.kapacitor_client().get_task("score")
    except Exception as exc:  # the numbers are an explanation, not a result: never fail the run on them
        return {"error": {"message": repr(exc)}}
    keep = ("avg_exec_time_ns", "collected", "emitted", "points_written", "write_errors", "errors")
    return {
        node: {key: value for key, value in stats.items() if key in keep}
        for node, stats in task.stats.get("node-stats", {}).items()
    }


def start_profilers(pids: dict[str, int], seconds: float, directory: Path, config: str) -> list:
    """py-spy (if installed) sampling the named Python processes (and their children) for `seconds`."""
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        log("--profile: py-spy not found (pip install py-spy); no profile taken")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    running = []
    for name, pid in pids.items():
        out = directory / f"{config}-{name}.txt"
        command = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
        command += ["--format", "raw", "--output", str(out), "--nonblocking", "--subprocesses"]
        running.append(
            (name, out, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        )
    return running


def summarize_profiles(running: list, top: int = 12) -> dict[str, Any]:
    """Wait for the profilers; the functions with the most samples (own time) per process."""
    summary: dict[str, Any] = {}
    for name, out, process in running:
        process.wait(60)
        counts: dict[str, int] = {}
        total = 0
        with contextlib.suppress(OSError):
            for line in out.read_text().splitlines():
                stack, _, number = line.rpartition(" ")
                if not stack or not number.isdigit():
                    continue
                frame = stack.split(";")[-1]
                counts[frame] = counts.get(frame, 0) + int(number)
                total += int(number)
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        summary[name] = {
            "samples": total,
            "file": str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out),
            "top_self": [{"frame": frame, "share": round(n / total, 3)} for frame, n in ranked]
            if total
            else [],
        }
    return summary


def parse_pairs(items: list[str]) -> dict[str, str]:
    """NAME=VALUE items as a dict."""
    return dict(item.split("=", 1) for item in items)


def parse_config(items: list[str]) -> dict[str, Any]:
    """section.key=value items (value read as JSON when it parses, else a string) as nested dicts."""
    config: dict[str, Any] = {}
    for item in items:
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *sections, key = path.split(".")
        table = config
        for section in sections:
            table = table.setdefault(section, {})
        table[key] = value
    return config


class GoProfiler:
    """CPU profiles of influxd and kapacitord (Go pprof over HTTP) during the sustained phase."""

    def __init__(self, stack, seconds: int, label: str):
        import threading

        self.label = label
        self.seconds = seconds
        self.threads: list = []
        self.files: dict[str, Path] = {}
        self.binaries = {
            "influxd": stack.runtime.binaries.influxd,
            "kapacitord": stack.runtime.binaries.kapacitord,
        }
        # Kapacitor serves Go's pprof under its API prefix.
        urls = {"influxd": stack.influx_url, "kapacitord": stack.kapacitor_url + "/kapacitor/v1"}
        (SCRATCH / "pprof").mkdir(parents=True, exist_ok=True)
        for name, url in urls.items():
            out = SCRATCH / "pprof" / f"{label}-{name}.pb.gz"
            self.files[name] = out
            thread = threading.Thread(target=self._fetch, args=(url, out), daemon=True)
            self.threads.append(thread)

    def _fetch(self, url: str, out: Path) -> None:
        try:
            response = requests.get(
                f"{url}/debug/pprof/profile", params={"seconds": self.seconds}, timeout=120
            )
            response.raise_for_status()
            out.write_bytes(response.content)
        except Exception as exc:  # a profile is an explanation, never a reason to fail the run
            log(f"pprof {url}: {exc!r}")

    def start(self) -> GoProfiler:
        for thread in self.threads:
            thread.start()
        return self

    def summarize(self) -> dict[str, str]:
        """Wait for the profiles; write `go tool pprof -top` of each to benchmarks/results/profiles/."""
        for thread in self.threads:
            thread.join(self.seconds + 60)
        directory = RESULTS_DIR / "profiles"
        directory.mkdir(parents=True, exist_ok=True)
        written = {}
        for name, raw in self.files.items():
            if not raw.is_file():
                continue
            for kind, extra in (("top", []), ("topcum", ["-cum"])):
                command = ["go", "tool", "pprof", "-top", "-nodecount=40", *extra, str(self.binaries[name])]
                text = subprocess.run(command + [str(raw)], capture_output=True, text=True, check=False)
                target = directory / f"{self.label}-{name}-{kind}.txt"
                target.write_text(text.stdout or text.stderr)
                written[f"{name}-{kind}"] = str(target.relative_to(ROOT))
        return written


def component_pids(stack) -> dict[str, int]:
    """Root pid of each part of the pipeline."""
    pids = {"api": stack.api.proc.pid, "udf": stack.udf.proc.pid, "bench": os.getpid()}
    for name, server in (("influxd", stack.runtime.influx), ("kapacitord", stack.runtime.kapacitor)):
        if server.pid:
            pids[name] = server.pid
    return pids


def run_config(name: str, args, models_dir: Path, model: str) -> dict[str, Any]:
    """Start a fresh local stack in this configuration, run both phases, return the measurements."""
    from tickguard.ops.probe import RssSampler, WriteProbe, loadavg
    from tickguard.stack.local import LocalStack

    workdir = SCRATCH / name
    shutil.rmtree(workdir, ignore_errors=True)
    load_start = loadavg()
    log(f"{name}: starting the local stack (load average {load_start})")
    env = {
        **CONFIGS[name],
        "TICKGUARD_UDF_LOG_INTERVAL": "0",
        "TICKGUARD_LOG_LEVEL": "WARNING",
        **parse_pairs(args.udf_env),
    }
    task_vars = parse_pairs(args.task_var)
    influx_config = parse_config(args.influx_config)
    kapacitor_config = parse_config(args.kapacitor_config)
    if args.pprof:
        influx_config.setdefault("http", {})["pprof-enabled"] = True
        kapacitor_config.setdefault("http", {})["pprof-enabled"] = True
    scored_rp = args.scored_rp
    if scored_rp:
        # Scored points go to their own retention policy, which Kapacitor does not subscribe to.
        task_vars["scored_retention_policy"] = f"'{scored_rp}'"
        excluded = {"_kapacitor": ["autogen"], DATABASE: [scored_rp]}
        kapacitor_config.setdefault("influxdb", {})["excluded-subscriptions"] = excluded
    stack = LocalStack(
        workdir,
        models_dir=models_dir,
        model=model,
        api_workers=args.api_workers,
        task_vars=task_vars,
        env=env,
        influx_config=influx_config,
        kapacitor_config=kapacitor_config,
        influx_env={**parse_pairs(args.server_env), **parse_pairs(args.influxd_env)},
        kapacitor_env={**parse_pairs(args.server_env), **parse_pairs(args.kapacitord_env)},
    )
    stack.start()
    if scored_rp:
        stack.query(f'CREATE RETENTION POLICY "{scored_rp}" ON "{DATABASE}" DURATION INF REPLICATION 1')
    probe = WriteProbe().start()
    sampler = None
    try:
        if not args.with_alert_tasks:
            client = stack.runtime.kapacitor_client()
            for task in SIDE_TASKS:
                with contextlib.suppress(Exception):
                    client.disable_task(task)
        probe.subscribe(stack.influx_url, DATABASE, scored_rp or "autogen")
        if scored_rp:
            # Same measurement cost as with one RP: InfluxDB forwards the raw writes to the probe too.
            stack.query(
                f'CREATE SUBSCRIPTION "bench_raw" ON "{DATABASE}"."autogen" DESTINATIONS ALL \'{probe.url}\''
            )
        roots = {"udf": stack.udf.proc.pid, "api": stack.api.proc.pid}
        roots |= {k: v for k, v in component_pids(stack).items() if k in ("influxd", "kapacitord")}
        sampler = RssSampler(roots).start()
        writer = LineWriter(stack.influx_url)
        # Warm-up: connections, the model card, the first batches.
        for _ in range(10):
            writer.write(200)
            time.sleep(0.05)
        drain(probe, writer.written, patience_s=15)
        seconds = args.naive_seconds if name == "naive" else args.seconds
        log(f"{name}: sustained phase, {seconds:.0f} s closed loop")
        profilers = []
        if args.profile:
            targets = {"udf": stack.udf.proc.pid, "api": stack.api.proc.pid}
            profilers = start_profilers(targets, seconds, SCRATCH / "profiles", name)
        # naive scores a few hundred points/s: a smaller floor keeps its queue (and drain) short.
        floor = NAIVE_MIN_BACKLOG if name == "naive" else MIN_BACKLOG
        warmup = min(5.0, seconds / 4)
        go_profiler = None
        if args.pprof:
            label = f"{args.label or 'e2e'}-{name}"
            go_profiler = GoProfiler(stack, int(min(args.pprof, seconds - warmup)), label)
            import threading

            threading.Timer(warmup, go_profiler.start).start()
        sustained = sustained_phase(stack, probe, writer, seconds, warmup, floor)
        if go_profiler is not None:
            sustained["pprof"] = go_profiler.summarize()
        sustained["kapacitor_nodes"] = node_stats(stack)
        if profilers:
            sustained["profile"] = summarize_profiles(profilers)
        log(f"{name}: sustained {sustained['points_per_s']:.0f} points/s, cores {sustained['cpu_cores']}")
        rate = min(args.rate, args.latency_fraction * sustained["points_per_s"])
        log(f"{name}: latency phase at {rate:.0f} points/s for {args.latency_seconds:.0f} s")
        latency = latency_phase(stack, probe, writer, rate, args.latency_seconds)
        log(f"{name}: latency {latency['latency_ms']}")
        time.sleep(1.5)  # nothing more may arrive: exactly N, not N plus duplicates
        first, last = writer.first_ns or 0, writer.last_ns
        points_in = influx_count(stack, "transactions", "Amount", first, last)
        # Every point the agent emits has `scored` (true or false), lean or not; echo's keep their input.
        out_field = "Amount" if name == "echo" else "scored"
        points_out = influx_count(stack, "transactions_scored", out_field, first, last, scored_rp)
        scored = (
            influx_count(stack, "transactions_scored", "score", first, last, scored_rp)
            if name != "echo"
            else None
        )
        rss = sampler.stop()
        sampler = None
        result = {
            "points_per_s": sustained["points_per_s"],
            "latency_ms": {k: latency["latency_ms"][k] for k in ("p50", "p95", "p99")},
            "points_in": points_in,
            "points_out": points_out,
            "rss_mb": {"udf": rss["udf"], "api": rss["api"]},
            "rss_mb_servers": {k: rss.get(k) for k in ("influxd", "kapacitord")},
            "points_written_by_bench": writer.written,
            "points_scored": scored,
            "points_unscored_seen": probe.unscored,
            "latency_max_ms": latency["latency_ms"]["max"],
            "sustained": sustained,
            "latency": latency,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "api_workers": args.api_workers,
            "tasks_enabled": ["score", *(SIDE_TASKS if args.with_alert_tasks else ())],
            "env": CONFIGS[name],
            "task_vars": task_vars,
            "udf_env": parse_pairs(args.udf_env),
            "influx_config": influx_config,
            "kapacitor_config": kapacitor_config,
            "influxd_env": {**parse_pairs(args.server_env), **parse_pairs(args.influxd_env)},
            "kapacitord_env": {**parse_pairs(args.server_env), **parse_pairs(args.kapacitord_env)},
            "scored_rp": scored_rp or "autogen",
        }
        log(
            f"{name}: in {points_in}, out {points_out}, scored {scored}, rss {rss}, "
            f"p50/p95/p99 {result['latency_ms']}"
        )
        return result
    finally:
        if sampler is not None:
            sampler.stop()
        probe.stop()
        stack.stop()


# ---- report --------------------------------------------------------------------------------------------


def git_sha() -> str:
    """HEAD's sha, with '-dirty' when the tree has uncommitted changes ('unknown' outside git)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def machine(load_start: list[float]) -> dict[str, Any]:
    """What the numbers were measured on."""
    meminfo = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "memory_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": load_start,
        "note": "everything (InfluxDB, Kapacitor, UDF agent, API, load generator) shares these cores",
    }


def evaluate(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each target with its measured value and whether it is met."""
    checks: dict[str, Any] = {}
    tg = configs.get("tickguard")
    if not tg:
        return checks
    checks["tickguard_points_per_s"] = {
        "target": f">= {TARGETS['tickguard_points_per_s']}",
        "value": tg["points_per_s"],
        "met": tg["points_per_s"] >= TARGETS["tickguard_points_per_s"],
    }
    p99 = tg["latency_ms"]["p99"]
    checks["tickguard_p99_ms"] = {
        "target": f"<= {TARGETS['tickguard_p99_ms']} (at {tg['latency']['rate']:.0f} points/s)",
        "value": p99,
        "met": p99 is not None and p99 <= TARGETS["tickguard_p99_ms"],
    }
    if "echo" in configs and configs["echo"]["points_per_s"]:
        ratio = tg["points_per_s"] / configs["echo"]["points_per_s"]
        checks["tickguard_vs_echo"] = {
            "target": f">= {TARGETS['tickguard_vs_echo']}",
            "value": round(ratio, 3),
            "met": ratio >= TARGETS["tickguard_vs_echo"],
        }
    if "naive" in configs and configs["naive"]["points_per_s"]:
        ratio = tg["points_per_s"] / configs["naive"]["points_per_s"]
        checks["tickguard_vs_naive"] = {
            "target": f">= {TARGETS['tickguard_vs_naive']}",
            "value": round(ratio, 1),
            "met": ratio >= TARGETS["tickguard_vs_naive"],
        }
    for name, result in configs.items():
        checks[f"{name}_points_out_eq_in"] = {
            "target": "points_out == points_in",
            "value": f"{result['points_out']} / {result['points_in']}",
            "met": result["points_out"] == result["points_in"] and result["points_in"] > 0,
        }
    return checks


def server_versions() -> dict[str, str]:
    """The versions of the influxd and kapacitord this run used (TICKGUARD_TICK_BIN can pick others)."""
    from tickguard.runtime import find_tick_binaries

    binaries = find_tick_binaries()
    return {"influxd": binaries.influxd_version(), "kapacitord": binaries.kapacitord_version()}


def main(argv: list[str] | None = None) -> int:
    """Run the configurations and write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="echo,tickguard,naive", help="comma-separated subset")
    parser.add_argument("--seconds", type=float, default=20.0, help="sustained phase of echo/tickguard")
    parser.add_argument("--naive-seconds", type=float, default=20.0, help="sustained phase of naive")
    parser.add_argument("--rate", type=float, default=20_000, help="latency phase rate cap (points/s)")
    parser.add_argument(
        "--latency-fraction", type=float, default=0.8, help="latency rate = this x sustained, capped"
    )
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="latency phase duration")
    parser.add_argument(
        "--api-workers", type=int, default=1, help="gunicorn workers (LocalStack's default: 1)"
    )
    parser.add_argument("--with-alert-tasks", action="store_true", help="keep the alerting tasks enabled")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the agent and the API with py-spy in the sustained phase",
    )
    parser.add_argument(
        "--task-var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a TICKscript var of the tasks, e.g. flush_interval=100ms (repeatable)",
    )
    parser.add_argument(
        "--udf-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the agent and the API, e.g. TICKGUARD_UDF_OUTPUT=lean (repeatable)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of influxd and kapacitord, e.g. GOGC=400 (repeatable)",
    )
    parser.add_argument("--influxd-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--kapacitord-env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--influx-config",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="influxd config override, e.g. data.index-version=tsi1 (value as JSON if it parses)",
    )
    parser.add_argument(
        "--kapacitor-config",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="kapacitord config override; influxdb.KEY goes into the [[influxdb]] section",
    )
    parser.add_argument(
        "--scored-rp",
        metavar="RP",
        help="write transactions_scored into this retention policy, excluded from Kapacitor's subscription",
    )
    parser.add_argument(
        "--pprof",
        type=float,
        default=0,
        metavar="SECONDS",
        help="CPU-profile influxd and kapacitord (Go pprof) this long in the sustained phase",
    )
    parser.add_argument("--label", default="", help="name of this variant (profile file names)")
    parser.add_argument("--model", help="model directory (default models/fraud/production)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from tickguard.modelstore import detector_models_dir, read_card, resolve_model_dir
    from tickguard.ops.probe import loadavg

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {list(CONFIGS)}")
    SCRATCH.mkdir(parents=True, exist_ok=True)
    models_dir, model = pick_model(args.model)
    card = read_card(resolve_model_dir(detector_models_dir(models_dir), model))
    load_start = loadavg()
    started = time.monotonic()
    configs: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name in names:
        try:
            configs[name] = run_config(name, args, models_dir, model)
        except Exception as exc:  # one broken configuration must not hide the others' numbers
            log(f"{name}: FAILED: {exc!r}")
            failures[name] = repr(exc)
    report = {
        "benchmark": "e2e",
        "command": "python -m benchmarks.e2e_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "configs": configs,
        "failures": failures,
        "targets": evaluate(configs),
        "model": {"version": card["version"], "features": len(card["features"]), "dir": str(models_dir)},
        "machine": machine(load_start),
        "servers": server_versions(),
        "git_sha": git_sha(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}")
    if not args.no_readme:
        from benchmarks.report import update_readme

        update_readme()
    for name, check in report["targets"].items():
        log(f"target {name}: {check['value']} ({check['target']}) {'met' if check['met'] else 'MISSED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
