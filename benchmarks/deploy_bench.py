"""How long `tickguard deploy` takes on the real kapacitord, and that a redeploy restarts nothing.

A fresh influxd + kapacitord (tickguard.runtime) with the UDF agent in echo mode (no model needed); then,
`--repeats` times: deploy fraud and shuttle (templates + 8 tasks, each started), deploy both again (the
idempotent path: every task compared with the plan, none redefined: Kapacitor's `modified` times must not
change), undeploy both (tasks, then the unused templates). Wall time of each step, median and max.

InfluxDB's side (`deploy.ensure_databases`, what compose's deploy service does as the admin): influxd runs
with authentication and a read-only `reader`; each repeat drops the detectors' databases, then times
ensuring them (created, READ granted) and ensuring them again (in place: nothing written). Once: how long
deploy waits for Kapacitor's subscription to a database it just created, with Kapacitor's default
subscription sync interval (1 minute, as compose runs it).

Run: .venv/bin/python -m benchmarks.deploy_bench [--repeats 5]
Writes benchmarks/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tickguard.detectors import load_detector
from tickguard.influx import quote_ident
from tickguard.runtime import InfluxAuth, TickRuntime, find_tick_binaries
from tickguard.stack import deploy

RESULTS = Path(__file__).parent / "results" / "deploy.json"
DETECTORS = ("fraud", "shuttle")


def echo_agent(directory: Path):
    """The UDF agent in echo mode, in this process, listening on a socket in `directory`."""
    from dataclasses import replace

    from tickguard.agent import udf_pb2 as pb
    from tickguard.agent.config import agent_settings
    from tickguard.agent.server import Listener, UdfServer

    settings = replace(agent_settings({}), mode="echo", metrics_port=0, log_interval_s=0, kapacitor_url="")
    listener = Listener(directory / "udf.sock", pb.STREAM)
    server = UdfServer(settings, [listener])
    server.start()
    return server, listener.path


def timed(step) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    specs = [load_detector(name) for name in DETECTORS]
    socket_dir = Path(tempfile.mkdtemp(prefix="tg-deploy-bench-", dir="/tmp"))
    workdir = Path(tempfile.mkdtemp(prefix="deploy-bench-"))
    agent, socket_path = echo_agent(socket_dir)
    runtime = TickRuntime(
        workdir,
        udfs={"tickguard": socket_path},
        binaries=find_tick_binaries(),
        influx_auth=InfluxAuth("admin", secrets.token_hex(12)),
        subscriptions_sync_interval="1m",  # Kapacitor's default, as compose runs it
    )
    steps: dict[str, list[float]] = {
        "deploy": [],
        "redeploy": [],
        "undeploy": [],
        "databases_new": [],
        "databases_in_place": [],
    }
    restarted_on_redeploy = 0
    try:
        runtime.start()
        client = runtime.kapacitor_client()
        influx = runtime.influx.client()
        influx.execute(f"CREATE USER \"reader\" WITH PASSWORD '{secrets.token_hex(12)}'")
        databases = sorted({db for spec in specs for db in deploy.detector_databases(spec)})
        for _ in range(args.repeats):
            for database in databases:
                influx.execute(f"DROP DATABASE {quote_ident(database)}")
            steps["databases_new"].append(
                timed(lambda: [deploy.ensure_databases(influx, spec, reader="reader") for spec in specs])
            )
            steps["databases_in_place"].append(
                timed(lambda: [deploy.ensure_databases(influx, spec, reader="reader") for spec in specs])
            )
            steps["deploy"].append(timed(lambda: [deploy.deploy(client, spec) for spec in specs]))
            before = {task.id: task.raw["modified"] for task in client.list_tasks()}
            steps["redeploy"].append(timed(lambda: [deploy.deploy(client, spec) for spec in specs]))
            after = {task.id: task.raw["modified"] for task in client.list_tasks()}
            restarted_on_redeploy += sum(after[t] != before[t] for t in before)
            steps["undeploy"].append(timed(lambda: [deploy.undeploy(client, spec.name) for spec in specs]))
        influx.create_database("bench_new")
        subscription_wait_s = timed(lambda: deploy.wait_for_subscriptions(influx, ["bench_new"], 120))
        subscribed = "bench_new" in {row["database"] for row in influx.subscriptions()}
    finally:
        runtime.stop()
        agent.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "what": "tickguard deploy / redeploy / undeploy of fraud + shuttle (4 templates, 8 tasks) on kapacitord; "
        "their InfluxDB databases ensured (new: created + READ granted; in place: nothing written) on influxd "
        "with authentication; the wait for Kapacitor's subscription to a new database (sync every 1 min)",
        "kapacitord": str(find_tick_binaries().kapacitord),
        "repeats": args.repeats,
        "tasks": len(DETECTORS) * len(deploy.TEMPLATE_IDS),
        "seconds": {
            step: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
            for step, v in steps.items()
        },
        "tasks_redefined_by_redeploys": restarted_on_redeploy,
        "databases": databases,
        "new_database_subscribed_after_s": round(subscription_wait_s, 1) if subscribed else None,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_1m": os.getloadavg()[0],
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
