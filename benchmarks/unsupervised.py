"""Unlabelled series with injected anomalies: tickguard vs a Morgoth-like k-sigma rule vs a Kapacitor alert.

`python -m benchmarks.unsupervised` -> benchmarks/results/unsupervised.json (and the README table).

Series: river 0.26.1's water flow (hourly, 1 series), S&P 500 daily returns (10 series) and airline
passengers (monthly, 1 series), see tickguard.data.series. Per series the protocol of
tickguard.training.unsupervised: first 40% trains (clean), next 20% validates (anomalies injected with
seeds 1000-1002), last 40% is the holdout (anomalies injected with seeds 0-4, 3 segments per copy when they
fit), one anomaly kind per copy. Real anomalies already in a series (waterflow's outages) and the windows
they spoil are not scored (tickguard.data.inject.natural_anomalies).

Detectors, scored on the same holdout points:
- **tickguard**: the detector's window features (tickguard.windows) and its unsupervised model, kind and
  parameters chosen by Optuna on the validation copies only, threshold from the declared contamination of the clean
  history (u.declared_threshold);
- **morgoth-like**: |x - mean| / std of the previous N points (N = one season, 20 for returns), alert at 3;
- **kapacitor**: the plain TICKscript alert: window().periodCount(N).everyCount(1) -> mean, stddev and
  last joined -> z = abs(last - mean) / stddev, crit at z > 3 (the window includes the current point).
  Executed by the real kapacitord (1.7.6) on points written to its /write endpoint (z written to a real
  influxd), unless --no-kapacitor;
  the re-implementation in this file is checked against kapacitord's output in the same run (and in
  tests/integration/test_unsupervised_baselines.py).

Metrics per anomaly kind (tickguard.training.series_metrics): AUPRC over points, point-adjusted F1 at each
detector's own threshold, detection delay in points; means over copies, then over series sets.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tickguard.data.inject import KINDS
from tickguard.data.series import load_series
from tickguard.detectors import DetectorSpec, load_detector, parse_detector
from tickguard.training import unsupervised as u
from tickguard.training.config import FULL
from tickguard.training.series_metrics import event_metrics

RESULTS = Path(__file__).resolve().parent / "results" / "unsupervised.json"
README = Path(__file__).resolve().parent / "README.md"
SIGMA_K = 3.0
DETECTORS = ("tickguard", "morgoth-like", "kapacitor")
RETURNS_WINDOW = 20  # a trading month, for the series without a season
SEED = FULL.seed  # what `tickguard train` uses by default: the waterflow row is what retraining it gives

# The benchmark's detectors for the two sets that are not bundled detectors (same format as
# detectors/*.toml): returns have no season; airline passengers have a 12-month one, whose phase is the
# month of year (tickguard.anomaly's profile learns the usual shape per month, as per hour for water flow).
_SET_DETECTOR = """
name = "{name}"
features = ["value"]
[source]
database = "{name}"
measurement = "series"
[data]
csv = "{name}.csv"
[time]
column = "time"
unit = "ns"
[output]
measurement = "series_scored"
[windows]
group_by = ["series"]
{windows}
[anomaly]
model = "auto"
contamination = 0.01
"""
SP500_WINDOWS = """lags = [1]
differences = [1]
calendar = ["day_of_week"]
[[windows.rolling]]
points = 20
stats = ["mean", "std", "median", "mad"]
[[windows.rolling]]
points = 60
stats = ["median", "mad", "std"]
[[windows.rolling]]
points = 5
stats = ["std"]
"""
AIRLINE_WINDOWS = """lags = [1, 12]
differences = [1]
seasonal = 12
calendar = ["month_of_year"]
[[windows.rolling]]
points = 12
stats = ["mean", "std", "median", "mad"]
[[windows.rolling]]
points = 4
stats = ["std"]
"""


def set_detector(name: str) -> DetectorSpec:
    """The detector each series set is scored with (waterflow: the bundled detectors/waterflow.toml)."""
    if name == "waterflow":
        return load_detector("waterflow")
    windows = {"sp500": SP500_WINDOWS, "airline": AIRLINE_WINDOWS}[name]
    text = _SET_DETECTOR.format(name=name, windows=windows)
    return parse_detector(
        text, f"benchmarks/unsupervised.py:{name}", Path(f"{name}.toml"), expected_name=name
    )


def long_frame(name: str, spec: DetectorSpec):
    """The series set as the detector reads it: its field and its group_by tag."""
    loaded = load_series(name)
    frame = loaded.frame.rename(columns={"value": spec.feature_fields[0], "series": spec.windows.group_by[0]})
    return frame, loaded.period


# ------------------------------------------------------------------------------------------ baselines


def _mean_std(chunk: list[float]) -> tuple[float, float]:
    """Kapacitor's arithmetic, so degenerate windows agree too: mean = the left-to-right sum / n (its mean
    reducer), sample std by Welford's running update (its stddev reducer), which gives exactly 0 for a
    window of identical values where a two-pass formula leaves a rounding residue."""
    total = 0.0
    for v in chunk:
        total += v
    running_mean = m2 = 0.0
    for n, v in enumerate(chunk, start=1):
        delta = v - running_mean
        running_mean += delta / n
        m2 += delta * (v - running_mean)
    return total / len(chunk), math.sqrt(m2 / (len(chunk) - 1))


def rolling_sigma(values: np.ndarray, window: int, include_current: bool) -> np.ndarray:
    """|x - mean| / std (sample std) over `window` points: the previous ones (Morgoth-like, from the first
    full window) or ending with the current one (the TICKscript window; like Kapacitor's periodCount window,
    it emits while still filling). 0 where std is 0 or undefined (Kapacitor's eval fails on the division by
    zero, so no point and no alert)."""
    values = [float(v) for v in values]
    z = np.zeros(len(values))
    for i in range(len(values)):
        start, end = (max(i - window + 1, 0), i + 1) if include_current else (i - window, i)
        if start < 0 or end - start < 2:
            continue
        mean, std = _mean_std(values[start:end])
        if std > 0:
            z[i] = abs(values[i] - mean) / std
    return z


def baseline_window(period: int | None) -> int:
    """Both baselines look one season back (20 points for series without a season)."""
    return int(period or RETURNS_WINDOW)


# ------------------------------------------------------------------------------------ kapacitord run

TICKSCRIPT = """
var data = stream
    |from()
        .measurement('points')
        .where(lambda: "set" == '{set_name}')
        .groupBy('set', 'kind', 'seed', 'series')

var win = data
    |window()
        .periodCount({window})
        .everyCount(1)

var m = win
    |mean('value')
        .as('mean')

var s = win
    |stddev('value')
        .as('stddev')

var z = win
    |last('value')
        .as('value')
    |join(m, s)
        .as('x', 'm', 's')
    |eval(lambda: abs("x.value" - "m.mean") / "s.stddev")
        .as('z')
        .keep('z')

z
    |alert()
        .crit(lambda: "z" > {k})
        .noRecoveries()
        .log('{log}')

// The alert node passes on only state changes: the z of every point goes to InfluxDB from here.
z
    |influxDBOut()
        .database('sigma')
        .retentionPolicy('autogen')
        .measurement('z')
        .flushInterval(1s)
"""


# One subscription writer (the points go straight to Kapacitor; this keeps any forwarded write in order).
SIGMA_RUNTIME_CONFIG = {"influx_config": {"subscriber": {"write-concurrency": 1}}}


def kapacitor_scores(copies: list[dict], windows: dict[str, int], rt) -> dict[tuple, np.ndarray]:
    """z of every point of every copy, computed by a real kapacitord from points written to a real influxd.

    `rt` is a started tickguard.runtime.harness.TickRuntime made with SIGMA_RUNTIME_CONFIG. `copies` items:
    {"set", "kind", "seed", "series", "times", "values"}. Returns {(set, kind, seed, series): z array
    aligned with times} (0 where Kapacitor wrote nothing: a one-point window, std 0)."""
    from tickguard.influx import encode_line

    rt.create_database("sigma")  # waits for Kapacitor's subscription
    client = rt.kapacitor_client(timeout=30.0)
    for set_name, window in windows.items():
        client.define_task(
            f"sigma_{set_name}",
            TICKSCRIPT.format(set_name=set_name, window=window, k=SIGMA_K, log=rt.workdir / "alerts.log"),
            dbrps=[("sigma", "autogen")],
        )
    lines, expected = [], 0
    for c in copies:
        tags = {"set": c["set"], "kind": c["kind"], "seed": str(c["seed"]), "series": c["series"]}
        for t, v in zip(c["times"], c["values"], strict=True):
            lines.append(encode_line("points", tags, {"value": float(v)}, int(t)))
        expected += max(len(c["values"]) - 1, 0)  # every point but the first (std of 1 point: no z)
    # Straight to Kapacitor, each copy in time order: count windows run per group in arrival order, and
    # an InfluxDB subscription may deliver concurrent batches out of order. z goes to influxd.
    for start in range(0, len(lines), 5000):
        client.write(lines[start : start + 5000], database="sigma")
    # Done when every point has its z, or (windows with std 0 write none) when the count stops growing.
    deadline = time.monotonic() + 600
    last, still = -1, 0
    while time.monotonic() < deadline:
        rows = rt.influx.query('SELECT count("z") FROM "z"', "sigma")
        series = rows[0].get("series", []) if rows else []
        got = series[0]["values"][0][1] if series else 0
        still = still + 1 if got == last and got > 0 else 0
        if got >= expected or still >= 5:
            break
        last = got
        time.sleep(1)
    results = rt.influx.query('SELECT "z" FROM "z" GROUP BY *', "sigma")
    out: dict[tuple, np.ndarray] = {}
    index = {}
    for c in copies:
        key = (c["set"], c["kind"], str(c["seed"]), c["series"])
        out[key] = np.zeros(len(c["times"]))
        index[key] = {int(t): i for i, t in enumerate(c["times"])}
    for item in results[0].get("series", []) if results else []:
        tags = item["tags"]
        key = (tags["set"], tags["kind"], tags["seed"], tags["series"])
        if key not in out:
            continue
        for t, z in item["values"]:
            if z is not None and np.isfinite(z):
                out[key][index[key][int(t)]] = z
    return out


# ------------------------------------------------------------------------------------------------ run


def run(n_trials: int, use_kapacitor: bool, sets: tuple[str, ...]) -> dict[str, Any]:
    started = time.monotonic()
    per_set: dict[str, dict] = {}
    copies_for_kapacitor: list[dict] = []
    scored: list[dict] = []  # one entry per holdout copy: labels, rows and every detector's scores
    tuning: dict[str, Any] = {}
    for name in sets:
        spec = set_detector(name)
        frame, period = long_frame(name, spec)
        cases = u.cases_from_frame(frame, spec)
        prepared = [u.prepare(spec, case, period) for case in cases]
        params, study = u.tune(spec, prepared, n_trials, seed=SEED)
        model = u.fit_pooled(spec, prepared, params, seed=SEED)
        stacked = np.vstack([p.X[p.train_rows] for p in prepared])
        threshold = u.declared_threshold(spec, model, prepared)
        tuning[name] = {
            "params": params,
            "validation_mean_auprc": round(float(study.best_value), 4),
            "trials": len(study.trials),
            "threshold": threshold,
            "train_rows": int(len(stacked)),
            "series": len(cases),
            "window_columns": list(spec.model_columns),
        }
        window = baseline_window(period)
        for p in prepared:
            series_name = p.case.key[0]
            for copy in p.holdout:
                rows = copy.rows
                entry = {
                    "set": name,
                    "kind": copy.kind,
                    "seed": copy.seed,
                    "series": series_name,
                    "labels": copy.labels[rows],
                    "scores": {
                        "tickguard": model.score(copy.X[rows]),
                        "morgoth-like": rolling_sigma(copy.values, window, include_current=False)[rows],
                        "kapacitor": rolling_sigma(copy.values, window, include_current=True)[rows],
                    },
                    "rows": rows,
                    "thresholds": {"tickguard": threshold, "morgoth-like": SIGMA_K, "kapacitor": SIGMA_K},
                }
                scored.append(entry)
                copies_for_kapacitor.append(
                    {
                        "set": name,
                        "kind": copy.kind,
                        "seed": copy.seed,
                        "series": series_name,
                        "times": p.case.times,
                        "values": copy.values,
                    }
                )
        per_set[name] = {"period": period, "baseline_window": window}

    kapacitor_run: dict[str, Any] = {"executed_by": "re-implementation (--no-kapacitor)"}
    if use_kapacitor:
        t0 = time.monotonic()
        from tickguard.runtime.harness import TickRuntime

        windows = {s: per_set[s]["baseline_window"] for s in sets}
        with (
            tempfile.TemporaryDirectory(prefix="tickguard-sigma-") as work,
            TickRuntime(Path(work), **SIGMA_RUNTIME_CONFIG) as rt,
        ):
            real = kapacitor_scores(copies_for_kapacitor, windows, rt)
        gaps, compared, missing = [], 0, 0
        for entry in scored:
            key = (entry["set"], entry["kind"], str(entry["seed"]), entry["series"])
            from_kapacitor = real[key][entry["rows"]]
            mine = entry["scores"]["kapacitor"]
            both = (from_kapacitor > 0) | (mine > 0)
            missing += int(((from_kapacitor == 0) & (mine > 0)).sum())
            gaps.append(float(np.max(np.abs(from_kapacitor - mine)[both])) if both.any() else 0.0)
            compared += int(both.sum())
            entry["scores"]["kapacitor"] = from_kapacitor
        kapacitor_run = {
            "executed_by": "kapacitord 1.7.6 (stream task per set; points written to Kapacitor, z to influxd 1.8.10)",
            "points_compared": compared,
            "points_missing_from_kapacitor": missing,
            "max_abs_z_difference_vs_reimplementation": max(gaps) if gaps else None,
            "seconds": round(time.monotonic() - t0, 1),
        }

    results: dict[str, dict] = {}
    for entry in scored:
        for detector in DETECTORS:
            metrics = event_metrics(entry["labels"], entry["scores"][detector], entry["thresholds"][detector])
            results.setdefault(entry["set"], {}).setdefault(entry["kind"], {}).setdefault(
                detector, []
            ).append(metrics)
    table = {
        s: {k: {d: u.summarize(items) for d, items in by_det.items()} for k, by_det in kinds.items()}
        for s, kinds in results.items()
    }
    average: dict[str, dict] = {}
    for kind in KINDS:
        for detector in DETECTORS:
            rows = [table[s][kind][detector] for s in table if kind in table[s]]
            if not rows:
                continue
            delays = [r["delay_points"] for r in rows if r["delay_points"] is not None]
            average.setdefault(kind, {})[detector] = {
                "auprc": round(float(np.mean([r["auprc"] for r in rows])), 4),
                "pa_f1": round(float(np.mean([r["pa_f1"] for r in rows])), 4),
                "delay_points": round(float(np.mean(delays)), 2) if delays else None,
                "sets": len(rows),
            }
    verdict = {}
    for kind, by_det in average.items():
        ours = by_det["tickguard"]
        verdict[kind] = {
            metric: all(ours[metric] > by_det[b][metric] for b in ("morgoth-like", "kapacitor"))
            for metric in ("auprc", "pa_f1")
        }
    return {
        "meta": {
            "command": "python -m benchmarks.unsupervised" + ("" if use_kapacitor else " --no-kapacitor"),
            "sets": list(sets),
            "optuna_trials": n_trials,
            "seed": SEED,
            "holdout_seeds": list(u.HOLDOUT_SEEDS),
            "validation_seeds": list(u.VALID_SEEDS),
            "sigma_k": SIGMA_K,
            "load_average_at_start": os.getloadavg()[0],
            "python": platform.python_version(),
            "seconds": round(time.monotonic() - started, 1),
        },
        "kapacitor_run": kapacitor_run,
        "tuning": tuning,
        "series_sets": per_set,
        "by_set": table,
        "average_over_sets": average,
        "tickguard_beats_both_baselines": verdict,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def readme_table(result: dict[str, Any]) -> str:
    """The README's table: per kind, mean over series sets of AUPRC / PA-F1 / delay for each detector."""
    lines = [
        "| anomaly | tickguard AUPRC / PA-F1 / delay | morgoth-like | kapacitor TICKscript | tickguard beats both |",
        "|---|---:|---:|---:|---|",
    ]
    for kind, by_det in result["average_over_sets"].items():
        cells = [
            f"{_fmt(by_det[d]['auprc'])} / {_fmt(by_det[d]['pa_f1'])} / {_fmt(by_det[d]['delay_points'], 1)}"
            for d in DETECTORS
        ]
        won = result["tickguard_beats_both_baselines"][kind]
        verdict = ", ".join(f"{m}: {'yes' if ok else 'no'}" for m, ok in won.items())
        lines.append(
            f"| {kind} (sets: {by_det['tickguard']['sets']}) | " + " | ".join(cells) + f" | {verdict} |"
        )
    lines.append("")
    lines.append("| set | anomaly | tickguard AUPRC / PA-F1 | morgoth-like | kapacitor |")
    lines.append("|---|---|---:|---:|---:|")
    for set_name, kinds in result["by_set"].items():
        for kind, by_det in kinds.items():
            cells = [f"{_fmt(by_det[d]['auprc'])} / {_fmt(by_det[d]['pa_f1'])}" for d in DETECTORS]
            lines.append(f"| {set_name} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(result: dict[str, Any], path: Path = README) -> None:
    """Replace the text between the unsupervised markers in benchmarks/README.md."""
    text = path.read_text()
    start, end = "<!-- unsupervised:start -->", "<!-- unsupervised:end -->"
    if start not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{readme_table(result)}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40, help="Optuna trials per series set (default 40)")
    parser.add_argument(
        "--no-kapacitor", action="store_true", help="use the re-implementation of the TICKscript"
    )
    parser.add_argument("--sets", default="waterflow,sp500,airline")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.trials, not args.no_kapacitor, tuple(args.sets.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.out == RESULTS:
        write_readme(result)
    print(readme_table(result))
    print(json.dumps(result["kapacitor_run"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
