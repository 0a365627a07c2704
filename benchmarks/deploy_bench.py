"""How long `tickguard deploy` takes on the real kapacitord, and that a redeploy restarts nothing.

A fresh influxd + kapacitord (tickguard.runtime) with the UDF agent in echo mode (no model needed); then,
`--repeats` times: deploy fraud and shuttle (templates + 8 tasks, each started), deploy both again (the
idempotent path: every task compared with the plan, none redefined: Kapacitor's `modified` times must not
change), undeploy both (tasks, then the unused templates). Wall time of each step, median and max.

Run: .venv/bin/python -m benchmarks.deploy_bench [--repeats 5]
Writes benchmarks/results/deploy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tickguard.detectors import load_detector
from tickguard.runtime import TickRuntime, find_tick_binaries
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
    runtime = TickRuntime(workdir, udfs={"tickguard": socket_path}, binaries=find_tick_binaries())
    steps: dict[str, list[float]] = {"deploy": [], "redeploy": [], "undeploy": []}
    restarted_on_redeploy = 0
    try:
        runtime.start()
        client = runtime.kapacitor_client()
        for _ in range(args.repeats):
            steps["deploy"].append(timed(lambda: [deploy.deploy(client, spec) for spec in specs]))
            before = {task.id: task.raw["modified"] for task in client.list_tasks()}
            steps["redeploy"].append(timed(lambda: [deploy.deploy(client, spec) for spec in specs]))
            after = {task.id: task.raw["modified"] for task in client.list_tasks()}
            restarted_on_redeploy += sum(after[t] != before[t] for t in before)
            steps["undeploy"].append(timed(lambda: [deploy.undeploy(client, spec.name) for spec in specs]))
    finally:
        runtime.stop()
        agent.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    result = {
        "what": "tickguard deploy / redeploy / undeploy of fraud + shuttle (4 templates, 8 tasks) on kapacitord",
        "kapacitord": str(find_tick_binaries().kapacitord),
        "repeats": args.repeats,
        "tasks": len(DETECTORS) * len(deploy.TEMPLATE_IDS),
        "seconds": {
            step: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
            for step, v in steps.items()
        },
        "tasks_redefined_by_redeploys": restarted_on_redeploy,
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
