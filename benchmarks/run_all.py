"""`make bench`: every benchmark, one after another (they share the machine's 2 cores), then the README tables.

Steps (each its own process, so one failing does not stop the others):
  e2e      benchmarks/e2e_bench.py  - the whole pipeline in three configurations -> results/latest.json
  locust   benchmarks/load_test.py  - 2-minute Locust load test of the REST API   -> results/locust.json
  api      benchmarks/api_bench.py  - REST service throughput/latency            -> results/api.json
  udf      benchmarks/udf_bench.py  - UDF agent modes through Kapacitor           -> results/udf.json
Then benchmarks/report.py rewrites the generated tables of benchmarks/README.md (including the fault
costs that `pytest -m faults` wrote to results/faults.json). A step's own exit code says whether it ran
and met its hard requirement (e.g. Locust's error rate 0); performance targets are recorded in the JSON.

Run: .venv/bin/python -m benchmarks.run_all [--only e2e,locust] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

STEPS: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (module, arguments, arguments with --quick)
    "e2e": ("benchmarks.e2e_bench", [], ["--seconds", "8", "--naive-seconds", "8", "--latency-seconds", "5"]),
    "locust": ("benchmarks.load_test", [], ["--duration", "20"]),
    "api": ("benchmarks.api_bench", [], ["--duration", "5"]),
    "udf": (
        "benchmarks.udf_bench",
        [],
        ["--points", "20000", "--naive-points", "1000", "--paced-seconds", "5"],
    ),
}


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[run_all {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the selected steps and update the README."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in (args.only or ",".join(STEPS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        parser.error(f"unknown step(s) {unknown}; choose from {list(STEPS)}")
    outcome: dict[str, dict] = {}
    for name in names:
        module, arguments, quick = STEPS[name]
        if not (ROOT / (module.replace(".", "/") + ".py")).is_file():
            log(f"{name}: {module} not found, skipped")
            outcome[name] = {"status": "missing"}
            continue
        command = [sys.executable, "-m", module, *(quick if args.quick else arguments)]
        log(f"{name}: {' '.join(command[1:])}")
        started = time.monotonic()
        code = subprocess.call(command, cwd=ROOT)
        elapsed = round(time.monotonic() - started, 1)
        outcome[name] = {"status": "ok" if code == 0 else f"exit {code}", "seconds": elapsed}
        log(f"{name}: {outcome[name]['status']} after {elapsed} s")
    from benchmarks.report import update_readme

    update_readme()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "run_all.json").write_text(
        json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": outcome}, indent=2)
        + "\n"
    )
    log(f"summary: {json.dumps(outcome)}; tables in benchmarks/README.md")
    return 0 if all(step["status"] in ("ok", "missing") for step in outcome.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
