"""Each bundled detector's tuned model beside untuned LightGBM and random forest on the same split.

A tuned detector must not lose to a learner with its library's default settings. For every bundled
detector with a production model this fits LightGBM and a random forest (defaults, seeded) on the
detector's encoded features twice, the way the tuned model was judged:
  validation - fit on the training part minus its last time block, score that block (what choices rest on);
  holdout    - fit on the whole training part, score the time-ordered holdout (the report);
and puts the tuned production model's figures (its card's validation block, its holdout scores
recomputed here) beside them. Each model's threshold is chosen on validation by the detector's policy
(precision target), then applied to the holdout: precision and recall at it are reported too.

Run: .venv/bin/python -m benchmarks.detectors_quality [--detector NAME ...] [--model NAME=VERSION ...]
     (--model puts another of the detector's versions, or a model directory, in the tuned row)
     (about 10 minutes on 2 cores, most of it the random forest on the credit-card set)
Writes benchmarks/results/detectors_quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "detectors_quality.json"


def untuned_learners(seed: int = 42) -> dict:
    """Name -> factory of an unfitted learner with its library's defaults (seeded, 2 jobs)."""
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier

    return {
        "untuned LightGBM (defaults)": lambda: LGBMClassifier(random_state=seed, n_jobs=2, verbose=-1),
        "untuned random forest (defaults)": lambda: RandomForestClassifier(random_state=seed, n_jobs=2),
    }


def summary(y: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """AUPRC, ROC-AUC, recall at precision >= 0.90, precision and recall at `threshold`."""
    from tickguard.training.metrics import metrics_at

    m = metrics_at(y, scores, threshold)
    keys = ("auprc", "roc_auc", "recall_at_precision_0.90", "threshold", "precision", "recall")
    return {k: None if m[k] is None else round(float(m[k]), 4) for k in keys} | {
        "confusion_matrix": m["confusion_matrix"]
    }


def compare(name: str, model: str = "production") -> dict:
    """The tuned model (`model`: production, a version or a path) and the untuned learners of one
    detector, side by side."""
    from tickguard import modelstore
    from tickguard.data import load_detector_frame, time_split
    from tickguard.detectors import load_detector
    from tickguard.features import DetectorFeatures
    from tickguard.scoring.predictor import Predictor
    from tickguard.training.config import models_dir
    from tickguard.training.metrics import threshold_for_precision
    from tickguard.training.tuning import time_folds

    spec = load_detector(name)
    model_dir = modelstore.resolve_model_dir(modelstore.detector_models_dir(models_dir(), name), model)
    tuned = Predictor.load(model_dir, max_rows=1, detector=spec)
    card = tuned.card
    frame = load_detector_frame(spec)
    train, holdout = time_split(frame)
    fields, label = list(spec.feature_fields), spec.label.field
    X, y = train[fields].to_numpy(dtype=float), train[label].to_numpy(dtype=int)
    X_hold, y_hold = holdout[fields].to_numpy(dtype=float), holdout[label].to_numpy(dtype=int)
    fit_idx, valid_idx = time_folds(len(y), card["tuning"]["n_folds"])[-1]
    encoding = DetectorFeatures.from_spec(spec).fit(X)
    Z, Z_hold = encoding.transform(X), encoding.transform(X_hold)
    target = card.get("precision_target") or spec.threshold.target

    validation = card["metrics"]["validation"]
    rows = {
        f"tuned ({card['version']})": {
            "validation": {
                k: round(float(validation[k]), 4) for k in ("auprc", "threshold", "precision", "recall")
            },
            "holdout": summary(y_hold, tuned.score(X_hold), tuned.threshold),
            "seconds": card["training"]["seconds"],
        }
    }
    for learner, make in untuned_learners().items():
        started = time.monotonic()
        valid_scores = make().fit(Z[fit_idx], y[fit_idx]).predict_proba(Z[valid_idx])[:, 1]
        threshold = threshold_for_precision(y[valid_idx], valid_scores, target)
        hold_scores = make().fit(Z, y).predict_proba(Z_hold)[:, 1]
        rows[learner] = {
            "validation": {
                k: v
                for k, v in summary(y[valid_idx], valid_scores, threshold).items()
                if k in ("auprc", "threshold", "precision", "recall")
            },
            "holdout": summary(y_hold, hold_scores, threshold),
            "seconds": round(time.monotonic() - started, 1),
        }
        print(f"detectors_quality: {name}: {learner}: {json.dumps(rows[learner]['holdout'])}", flush=True)
    best_untuned = max(
        (r["holdout"]["auprc"] for k, r in rows.items() if not k.startswith("tuned")), default=0.0
    )
    tuned_row = rows[f"tuned ({card['version']})"]
    return {
        "split": {
            "train_rows": len(y),
            "train_positives": int(y.sum()),
            "validation": f"last of {card['tuning']['n_folds']} time blocks of the training part: "
            f"{len(valid_idx)} rows, {int(y[valid_idx].sum())} positives",
            "holdout_rows": len(y_hold),
            "holdout_positives": int(y_hold.sum()),
        },
        "precision_target": target,
        "models": rows,
        "tuned_loses_on_holdout_auprc": tuned_row["holdout"]["auprc"] < best_untuned,
        "tuned_loses_on_validation_auprc": tuned_row["validation"]["auprc"]
        < max(r["validation"]["auprc"] for k, r in rows.items() if not k.startswith("tuned")),
    }


def main(argv: list[str] | None = None) -> int:
    """Compare every requested detector (default: every bundled one with a production model)."""
    from threadpoolctl import threadpool_limits

    from tickguard import modelstore
    from tickguard.detectors import list_detectors
    from tickguard.training.config import models_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", action="append", help="detector name (repeatable)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=VERSION",
        help="score this version (or model directory) of detector NAME instead of its production model",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    chosen = dict(item.split("=", 1) for item in args.model)
    served = modelstore.production_models(models_dir())
    names = args.detector or [s.name for s in list_detectors() if s.name in served and s.label is not None]
    started = datetime.now(UTC)
    with threadpool_limits(limits=1, user_api="openmp"):
        detectors = {name: compare(name, chosen.get(name, "production")) for name in names}
    git_sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    result = {
        "benchmark": "detectors_quality",
        "started_utc": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "command": "python -m benchmarks.detectors_quality " + " ".join(argv or sys.argv[1:]),
        "git_sha": git_sha,
        "machine": {"cpus": len(__import__("os").sched_getaffinity(0)), "python": platform.python_version()},
        "detectors": detectors,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"detectors_quality: wrote {args.output}")
    return 1 if any(d["tuned_loses_on_holdout_auprc"] for d in detectors.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
