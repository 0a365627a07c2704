"""Two-minute Locust load test of the REST service; writes benchmarks/results/locust.json.

Starts `tickguard serve` (its defaults: 2 gunicorn workers x 4 threads) on a free loopback port, writes
real holdout transactions as payloads, runs Locust headless (benchmarks/locustfile.py: 90% single
records, 10% 100-row batches, 16 users) and records per request type the counts, failures, requests/s
and latency percentiles from Locust's CSV statistics. Exit code 1 when any request failed (the target
is an error rate of 0). Client and server share the machine's 2 cores; the load average is recorded.

Run: .venv/bin/python -m benchmarks.load_test [--duration 120] [--users 16]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULTS = ROOT / "benchmarks" / "results" / "locust.json"
SCRATCH = ROOT / "benchmarks" / ".scratch" / "locust"
BATCH_ROWS = 100


def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[load_test {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def write_payloads(features: list[str], path: Path, singles: int = 2000, batches: int = 50) -> None:
    """Real holdout rows as single records and as {"columns", "data"} batches."""
    from tickguard.stack.generator import load_holdout

    rows = load_holdout()[features].sample(n=singles + batches * BATCH_ROWS, random_state=3)
    values = rows.to_numpy().tolist()
    from tickguard.scoring.payloads import columns_request, record_request

    # Request bodies as /predict takes them (tickguard.scoring.payloads), stored as text.
    payload = {
        "singles": [
            record_request(dict(zip(features, row, strict=True))).decode() for row in values[:singles]
        ],
        "batches": [
            {
                "body": columns_request(
                    features, values[singles + i * BATCH_ROWS : singles + (i + 1) * BATCH_ROWS]
                ).decode(),
                "rows": BATCH_ROWS,
            }
            for i in range(batches)
        ],
    }
    path.write_text(json.dumps(payload))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_stats(csv_path: Path) -> list[dict]:
    """Rows of Locust's <prefix>_stats.csv as dicts with the numbers we report."""
    out = []
    with csv_path.open() as handle:
        for row in csv.DictReader(handle):
            out.append(
                {
                    "name": row["Name"] if row["Type"] else "Aggregated",
                    "requests": int(row["Request Count"]),
                    "failures": int(row["Failure Count"]),
                    "rps": round(_number(row["Requests/s"]) or 0.0, 1),
                    "p50": _number(row["50%"]),
                    "p95": _number(row["95%"]),
                    "p99": _number(row["99%"]),
                    "max": _number(row["Max Response Time"]),
                    "mean": round(_number(row["Average Response Time"]) or 0.0, 2),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    """Start the service, run Locust, write the results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=120, help="seconds of load (default 120)")
    parser.add_argument("--users", type=int, default=16, help="concurrent Locust users (default 16)")
    parser.add_argument(
        "--workers", type=int, default=2, help="gunicorn workers (tickguard serve's default: 2)"
    )
    parser.add_argument("--model", help="model directory (default models/fraud/production)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from benchmarks.e2e_bench import git_sha, pick_model
    from tickguard.modelstore import detector_models_dir, read_card, resolve_model_dir
    from tickguard.ops.probe import loadavg
    from tickguard.service.local import LocalService

    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or shutil.which("locust")
    if locust is None:
        log("Locust is not installed: pip install -e '.[bench]' (or .venv/bin/pip install locust)")
        return 2
    shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir(parents=True)
    models_dir, model = pick_model(args.model)
    card = read_card(resolve_model_dir(detector_models_dir(models_dir), model))
    payloads = SCRATCH / "payloads.json"
    write_payloads(list(card["features"]), payloads)
    load_start = loadavg()
    service = LocalService(
        model=model,
        models_dir=models_dir,
        detectors=("fraud",),
        workers=args.workers,
        env={"TICKGUARD_LOG_LEVEL": "WARNING"},
        log_file=SCRATCH / "service.log",
    ).start()
    prefix = SCRATCH / "locust"
    command = [
        locust, "-f", str(ROOT / "benchmarks" / "locustfile.py"), "--headless",
        "-u", str(args.users), "-r", str(args.users), "-t", f"{args.duration}s",
        "--host", service.url, "--csv", str(prefix), "--only-summary", "--stop-timeout", "5",
        "--loglevel", "WARNING",
    ]  # fmt: skip
    log(f"Locust: {args.users} users for {args.duration} s against {service.url} (load average {load_start})")
    try:
        completed = subprocess.run(
            command,
            env=dict(os.environ, TICKGUARD_LOCUST_PAYLOADS=str(payloads)),
            capture_output=True,
            text=True,
            timeout=args.duration + 120,
        )
    finally:
        service.stop()
    (SCRATCH / "locust.log").write_text(completed.stdout + completed.stderr)
    stats_file = Path(f"{prefix}_stats.csv")
    if not stats_file.exists():
        log(f"Locust wrote no statistics (exit {completed.returncode}); see {SCRATCH / 'locust.log'}")
        return 1
    rows = read_stats(stats_file)
    total = next((r for r in rows if r["name"] == "Aggregated"), None) or {"requests": 0, "failures": 0}
    error_rate = total["failures"] / total["requests"] if total["requests"] else None
    from importlib.metadata import version

    report = {
        "benchmark": "locust",
        "tool": f"Locust {version('locust')} (FastHttpUser)",
        "command": "python -m benchmarks.load_test " + " ".join(argv if argv is not None else sys.argv[1:]),
        "locust_command": " ".join(str(part) for part in command),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": args.duration,
        "users": args.users,
        "workload": "90% POST /predict with 1 record, 10% with a 100-row columns/data batch; 5-20 ms think time",
        "api_workers": args.workers,
        "model": card["version"],
        "requests": rows,
        "error_rate": error_rate,
        "latency_unit": "ms (Locust rounds percentiles to 2 significant digits)",
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": load_start, "loadavg_end": loadavg()},
        "git_sha": git_sha(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {args.out}: {total['requests']} requests, {total['failures']} failures")
    for row in rows:
        log(f"  {row['name']}: {row['requests']} req, {row['failures']} fail, {row['rps']} req/s, "
            f"p50 {row['p50']} p95 {row['p95']} p99 {row['p99']} ms")  # fmt: skip
    return 0 if error_rate == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
