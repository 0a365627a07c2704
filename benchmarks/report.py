"""Render benchmarks/results/*.json into the generated tables of benchmarks/README.md.

Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` markers; only those parts of the
README are rewritten. Run: .venv/bin/python -m benchmarks.report
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def e2e_table() -> str:
    """The end-to-end table from latest.json."""
    data = _load("latest.json")
    if not data or not data.get("configs"):
        return "_No end-to-end results yet: run `make bench`._"
    lines = [
        "| config | points/s (sustained) | latency p50 / p95 / p99 ms | at points/s | points in | points out "
        "| RSS UDF agent MiB | RSS API MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in data["configs"].items():
        lat = c["latency_ms"]
        lines.append(
            f"| {name} | {_fmt(c['points_per_s'])} | {_fmt(lat['p50'], 1)} / {_fmt(lat['p95'], 1)} / "
            f"{_fmt(lat['p99'], 1)} | {_fmt(c['latency']['rate'])} | {_fmt(c['points_in'])} | "
            f"{_fmt(c['points_out'])} | {_fmt(c['rss_mb']['udf'], 1)} | {_fmt(c['rss_mb']['api'], 1)} |"
        )
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for name, check in data.get("targets", {}).items():
        lines.append(
            f"| {name} {check['target']} | {check['value']} | {'yes' if check['met'] else '**no**'} |"
        )
    cores = {name: c["sustained"].get("cpu_cores") for name, c in data["configs"].items()}
    lines += ["", "CPU cores used per component during the sustained phase (2 cores in all):", ""]
    lines += ["| config | " + " | ".join(next(iter(cores.values())).keys()) + " |"]
    lines += ["|---|" + "---:|" * len(next(iter(cores.values())))]
    for name, used in cores.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v, 2) for v in used.values()) + " |")
    m = data.get("machine", {})
    lines += [
        "",
        f"Measured {data.get('when', '?')} at git {data.get('git_sha', '?')}, model {data.get('model', {}).get('version')}, "
        f"{m.get('cpus')} CPUs ({m.get('cpu_model')}), load average at start {m.get('loadavg_at_start')}. "
        f"Command: `{data.get('command', '')}`.",
    ]
    if data.get("failures"):
        lines.append(f"Failed configurations: {data['failures']}")
    return "\n".join(lines)


def locust_table() -> str:
    """The load-test table from locust.json."""
    data = _load("locust.json")
    if not data:
        return "_No load-test results yet: run `make bench` (or `python -m benchmarks.load_test`)._"
    lines = [
        "| request | requests | failures | req/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data.get("requests", []):
        lines.append(
            f"| {row['name']} | {_fmt(row['requests'])} | {_fmt(row['failures'])} | {_fmt(row['rps'], 1)} | "
            f"{_fmt(row['p50'])} | {_fmt(row['p95'])} | {_fmt(row['p99'])} | {_fmt(row['max'], 0)} |"
        )
    lines += [
        "",
        f"{data.get('tool')}: {data.get('users')} users, {data.get('duration_s')} s, "
        f"error rate {data.get('error_rate')}, API {data.get('api_workers')} workers; "
        f"measured {data.get('when')}, load average at start {data.get('machine', {}).get('loadavg_at_start')}. "
        f"Command: `{data.get('command', '')}`.",
    ]
    return "\n".join(lines)


def faults_table() -> str:
    """The fault-cost table from faults.json (written by `pytest -m faults`)."""
    data = _load("faults.json")
    if not data or not data.get("faults"):
        return "_No fault results yet: run `pytest -m faults`._"
    lines = [
        "| fault | points | lost before backfill | emitted unscored | backfilled | scoring gap s "
        "| recovery s | points out = in |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for name, f in data["faults"].items():
        lines.append(
            f"| {name} | {_fmt(f.get('points_in'))} | {_fmt(f.get('lost_before_backfill'))} | "
            f"{_fmt(f.get('unscored_emitted'))} | {_fmt(f.get('backfilled'))} | {_fmt(f.get('scoring_gap_s'), 1)} | "
            f"{_fmt(f.get('recovery_s'), 1)} | {'yes' if f.get('out_equals_in') else '**no**'} |"
        )
    lines += ["", f"Measured {data.get('when', '?')} by `pytest -m faults` (tests/faults/)."]
    return "\n".join(lines)


SECTIONS = {"e2e": e2e_table, "locust": locust_table, "faults": faults_table}


def update_readme(path: Path = README) -> None:
    """Rewrite every generated section of the README from the current result files."""
    text = path.read_text() if path.exists() else ""
    for name, render in SECTIONS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        block = f"{start}\n{render()}\n{end}"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=block: b, text)
        else:
            text += f"\n{block}\n"
    path.write_text(text)


if __name__ == "__main__":
    update_readme()
    print(f"updated {README}", file=sys.stderr)
