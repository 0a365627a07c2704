"""What sharding costs InfluxDB and each Kapacitor: the inputs of docs/scaling.md's throughput model.

InfluxDB subscriptions have no filter, so with N Kapacitor shards InfluxDB sends every point N times and
every Kapacitor receives and parses every point, keeping only its own (tickguard.stack.sharding). This
measures both costs on the real servers (`make tick`): one influxd and N kapacitord (N = 0, 1, 2, 4),
each Kapacitor running one stream task whose shard filter matches none of the points (so it pays for
receiving, parsing and filtering, and nothing else; scoring a shard's own points is what
benchmarks/e2e_bench.py measures). Real holdout transactions are written by the product's generator
(shard tag on) at a fixed rate; the CPU seconds of influxd and of each kapacitord over the measured
window, divided by the points written, give CPU microseconds per point. A last run writes unpaced with
no subscriber: InfluxDB's write path alone (points/s and CPU per point).

CPU per point, not points/s, is the result that carries over to other machines: the 2 cores here are
shared with the writer (this process) and whatever else runs, so the load average is recorded too.
Each configuration runs at two rates; the marginal cost per point is the slope between them (CPU at
the high rate minus CPU at the low rate, over the difference in points), which leaves out what the
servers spend regardless of the rate (statistics, snapshots, garbage collection of an idle heap).

Run: .venv/bin/python -m benchmarks.shard_bench [--rates 2000,6000] [--seconds 20] [--subscribers 0,1,4]
Writes benchmarks/results/sharding.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from tickguard.detectors import load_detector
from tickguard.kapacitor_client import KapacitorClient
from tickguard.runtime import KapacitorServer, TickRuntime, find_tick_binaries
from tickguard.stack.config import influx_settings
from tickguard.stack.generator import (
    InfluxWriter,
    LineEncoder,
    ReplayFormat,
    ReplayPlan,
    load_holdout,
    replay,
)

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "benchmarks" / "results" / "sharding.json"
DATABASE = "fraud"
GOGC = {"GOGC": "200"}  # as compose and local mode run the servers
WARMUP_S = 3.0

# Receives every point, keeps none: the cost a shard pays for the points of the other shards.
FILTER_NONE = """
stream
    |from()
        .measurement('transactions')
        .where(lambda: "shard" == 'none')
    |influxDBOut()
        .database('fraud')
        .measurement('never_written')
"""


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process so far."""
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def run_config(rows, subscribers: int, rate: float, seconds: float, binaries) -> dict[str, Any]:
    """One influxd and `subscribers` kapacitord; the rows written at `rate` (0 = unpaced) for `seconds`."""
    workdir = Path(tempfile.mkdtemp(prefix="tg-shard-bench-"))
    runtime = TickRuntime(workdir, with_kapacitor=False, binaries=binaries, influx_env=GOGC)
    runtime.start()
    kapacitors: list[KapacitorServer] = []
    try:
        for index in range(subscribers):
            server = KapacitorServer(
                binaries.kapacitord, workdir / f"kapacitord-{index}", influx=runtime.influx
            )
            server.env = dict(GOGC)
            server.start()
            kapacitors.append(server)
        runtime.influx.create_database(DATABASE)
        for server in kapacitors:
            runtime.influx.wait_for_subscription(DATABASE, server.port, 30)
            task = KapacitorClient(server.url).define_task(
                "filter", FILTER_NONE, dbrps=[(DATABASE, "autogen")]
            )
            assert task.executing, task.error
        settings = replace(
            influx_settings(), url=runtime.influx_url, username="", password="", database=DATABASE
        )
        writer = InfluxWriter(settings)
        plan = ReplayPlan(rate=rate, batch_size=500 if rate else 5000, loop=True, shards=max(subscribers, 1))
        try:
            replay(rows, replace(plan, duration_s=WARMUP_S), writer)
            load = os.getloadavg()[0]
            before = [cpu_seconds(runtime.influx.pid), *(cpu_seconds(k.pid) for k in kapacitors)]
            me_before = cpu_seconds(os.getpid())
            report = replay(rows, replace(plan, duration_s=seconds), writer)
            # Let the subscriptions drain what was written last.
            time.sleep(1.0)
            after = [cpu_seconds(runtime.influx.pid), *(cpu_seconds(k.pid) for k in kapacitors)]
            me_after = cpu_seconds(os.getpid())
        finally:
            writer.close()
        received = []
        for server in kapacitors:
            task = KapacitorClient(server.url).get_task("filter")
            from_node = next(name for name in task.stats.get("node-stats", {}) if name.startswith("from"))
            received.append(int(task.node_stats(from_node).get("collected", 0)))
        points = report.written
        influxd_cpu = after[0] - before[0]
        kapacitor_cpu = [a - b for a, b in zip(after[1:], before[1:], strict=True)]
        return {
            "subscribers": subscribers,
            "rate_target": rate,
            "points": points,
            "failed": report.failed,
            "seconds": round(report.elapsed_s, 2),
            "points_per_s": round(points / report.elapsed_s, 1),
            "load_avg_1m_at_start": round(load, 2),
            "influxd_cpu_cores": round(influxd_cpu / report.elapsed_s, 3),
            "influxd_cpu_us_per_point": round(influxd_cpu / points * 1e6, 2),
            "kapacitord_cpu_us_per_point": [round(c / points * 1e6, 2) for c in kapacitor_cpu],
            "kapacitord_points_received_total": received,
            "writer_cpu_us_per_point": round((me_after - me_before) / points * 1e6, 2),
        }
    finally:
        for server in kapacitors:
            server.stop()
        runtime.stop()


def marginal_costs(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    """CPU microseconds per additional point between a low-rate and a high-rate run of one configuration."""

    def slope(low_cores: float, high_cores: float) -> float:
        return round((high_cores - low_cores) / (high["points_per_s"] - low["points_per_s"]) * 1e6, 2)

    def cores(run: dict[str, Any], us_per_point: float) -> float:
        return us_per_point * run["points_per_s"] / 1e6

    return {
        "subscribers": low["subscribers"],
        "rates": [low["points_per_s"], high["points_per_s"]],
        "influxd": slope(low["influxd_cpu_cores"], high["influxd_cpu_cores"]),
        "kapacitord": [
            slope(cores(low, a), cores(high, b))
            for a, b in zip(
                low["kapacitord_cpu_us_per_point"], high["kapacitord_cpu_us_per_point"], strict=True
            )
        ],
    }


def mean_line_bytes(rows, count: int = 2000) -> float:
    """Average size of one point in line protocol (what InfluxDB receives, and sends each subscriber)."""
    fmt = ReplayFormat.of(load_detector("fraud"))
    encoder = LineEncoder(fmt.measurement, "holdout-replay", fmt, shards=4)
    features = rows[list(fmt.feature_fields)].to_numpy(dtype=float)
    labels = rows[fmt.label_field].tolist()
    sizes = [
        len(encoder.encode(features[i], labels[i], f"tx{i:06d}")[0].encode()) + 1
        for i in range(min(count, len(rows)))
    ]
    return sum(sizes) / len(sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="2000,6000", help="two points/s rates (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per config")
    parser.add_argument("--subscribers", default="0,1,4", help="kapacitord counts (default %(default)s)")
    parser.add_argument("--unpaced-seconds", type=float, default=15.0, help="0 = skip the unpaced write run")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    binaries = find_tick_binaries()
    if not binaries.servers_found:
        print(binaries.describe_missing(), file=sys.stderr)
        return 1
    rows = load_holdout()
    low, high = (float(r) for r in args.rates.split(","))
    runs, marginal = [], []
    for subscribers in (int(n) for n in args.subscribers.split(",")):
        pair = []
        for rate in (low, high):
            run = run_config(rows, subscribers, rate, args.seconds, binaries)
            print(json.dumps(run), flush=True)
            runs.append(run)
            pair.append(run)
        marginal.append(marginal_costs(*pair))
        print(json.dumps(marginal[-1]), flush=True)
    unpaced = None
    if args.unpaced_seconds > 0:
        unpaced = run_config(rows, 0, 0.0, args.unpaced_seconds, binaries)
        print(json.dumps(unpaced), flush=True)
    result = {
        "benchmark": "shard_bench",
        "command": "python -m benchmarks.shard_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "line_protocol_bytes_per_point": round(mean_line_bytes(rows), 1),
        "marginal_cpu_us_per_point": marginal,
        "paced": runs,
        "unpaced_no_subscriber": unpaced,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "note": "2 cores shared with the writer and other jobs; compare CPU per point, not points/s",
        },
        "servers": {"influxd": "1.8.10", "kapacitord": "1.7.6", "GOGC": GOGC["GOGC"]},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
