"""End-to-end training for any labelled detector: split, tune, choose the threshold, fit, report, save.

The detector file says everything that differs between data sets: which fields are inputs and how each
is encoded, which column orders the rows in time, which label values are anomalies, how the threshold is
chosen. The order of work keeps the holdout honest: every choice (parameters, threshold, whether the
new model replaces the served one) is made on the training part's validation folds; the time-ordered
holdout (the last 20% of the rows) is scored once, after all choices are made, for the report.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tickguard import modelstore
from tickguard.data import SPLIT_DEFINITION, TARGET, load_detector_frame, stratified_split, time_split
from tickguard.detectors import DetectorSpec, load_detector
from tickguard.errors import ModelIntegrityError
from tickguard.features import DetectorFeatures
from tickguard.training import config
from tickguard.training.metrics import metrics_at, plot_pr_curves, threshold_for_precision
from tickguard.training.pipeline import NO_EXTRA_FOREST, ServingModel, build_pipeline
from tickguard.training.tuning import (
    SEED_TRIALS,
    TrainingError,
    best_params,
    choose_extra_forest,
    failed_trials,
    run_study,
    time_folds,
)

log = logging.getLogger(__name__)
STUDY_FILE = "study.sqlite3"

# Quality targets per detector (issue 14 for the credit-card set); detectors without targets are reported only.
TARGETS: dict[str, dict[str, float]] = {
    "fraud": {
        "holdout_auprc_min": 0.815,
        "stratified_auprc_min": 0.875,
        "holdout_precision_min": 0.90,
        "train_seconds_max": 1800,
        "model_mb_max": 25,
    },
}


def targets_for(detector: str) -> dict[str, float]:
    """The quality targets a detector's models are checked against (empty: report only)."""
    return dict(TARGETS.get(detector, {}))


def check_targets(
    targets: dict[str, float],
    holdout: dict,
    stratified: dict | None,
    seconds: float | None = None,
    size_bytes: int | None = None,
) -> dict[str, bool]:
    """Which of `targets` the figures meet (a figure that is not known is left out)."""
    met: dict[str, bool] = {}
    if "holdout_auprc_min" in targets:
        met["holdout_auprc"] = holdout["auprc"] >= targets["holdout_auprc_min"]
    if "stratified_auprc_min" in targets and stratified:
        met["stratified_auprc"] = stratified["auprc"] >= targets["stratified_auprc_min"]
    if "holdout_precision_min" in targets:
        met["holdout_precision"] = holdout["precision"] >= targets["holdout_precision_min"]
    if "holdout_recall_min" in targets:
        met["holdout_recall"] = holdout["recall"] >= targets["holdout_recall_min"]
    if "train_seconds_max" in targets and seconds is not None:
        met["train_time"] = seconds <= targets["train_seconds_max"]
    if "model_mb_max" in targets and size_bytes is not None:
        met["model_size"] = size_bytes <= targets["model_mb_max"] * 2**20
    return met


def stratified_sample(df: pd.DataFrame, rows: int | None, seed: int, label: str = TARGET) -> pd.DataFrame:
    """A label-stratified random sample of `rows` rows, kept in original (time) order."""
    if rows is None or rows >= len(df):
        return df
    from sklearn.model_selection import train_test_split

    sample, _ = train_test_split(df, train_size=rows, stratify=df[label], random_state=seed)
    return sample.sort_index()


def new_version(prefix: str = "") -> str:
    """A sortable version name from the current UTC time."""
    return prefix + datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")


def library_versions() -> dict[str, str]:
    """Versions of the libraries the pickled model depends on."""
    import imblearn
    import joblib
    import lightgbm
    import optuna
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "imbalanced-learn": imblearn.__version__,
        "optuna": optuna.__version__,
        "lightgbm": lightgbm.__version__,
        "joblib": joblib.__version__,
    }


def default_output_dir(profile: config.TrainProfile, promote: bool, models_root: Path) -> Path:
    """models/<detector>/<version> for full or promoted runs; models/<detector>/_scratch/<version> for fast ones."""
    version = new_version("fast-" if profile.name == "fast" else "")
    if promote or profile.name != "fast":
        return models_root / version
    return models_root / "_scratch" / version


def choose_threshold(
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    profile: config.TrainProfile,
    spec: DetectorSpec,
    precision_target: float,
) -> tuple[float, dict]:
    """Fit on all but the last time block of the training part; pick the threshold on that block.

    Policy `precision`: the lowest score whose precision there reaches the target; `fixed`: the
    detector's target itself. Either way the block's metrics at the threshold are returned.
    """
    train_idx, valid_idx = time_folds(len(y), profile.n_folds)[-1]
    model = build_pipeline(
        params, seed=profile.seed, n_jobs=profile.n_jobs, features=DetectorFeatures.from_spec(spec)
    ).fit(X[train_idx], y[train_idx])
    scores = model.predict_proba(X[valid_idx])[:, 1]
    if spec.threshold.policy == "fixed":
        threshold = float(spec.threshold.target)
    else:
        threshold = threshold_for_precision(y[valid_idx], scores, precision_target)
    return threshold, metrics_at(y[valid_idx], scores, threshold)


def promotion_decision(models_root: Path, validation: dict, split: dict) -> dict:
    """Whether a new model may replace the served one, judged on validation only.

    It may when nothing is served, when the served model's validation figures are not comparable (no
    validation block recorded, or another split of other data), or when the new validation AUPRC is at
    least the served one's.
    """
    try:
        current_dir = modelstore.resolve_model_dir(models_root, modelstore.PRODUCTION)
        current = modelstore.read_card(current_dir)
    except ModelIntegrityError:
        return {"promote": True, "reason": "no model is served yet"}
    served = (current.get("metrics") or {}).get("validation") or {}
    same_rows = (current.get("split") or {}).get("train_rows") == split["train_rows"]
    same_block = served.get("rows") == validation["rows"]
    if "auprc" not in served or not (same_rows and same_block):
        return {
            "promote": True,
            "against": current.get("version"),
            "reason": "the served model's validation block is not this one's: not comparable",
        }
    better = validation["auprc"] >= served["auprc"]
    return {
        "promote": better,
        "against": current.get("version"),
        "validation_auprc": validation["auprc"],
        "served_validation_auprc": served["auprc"],
        "reason": f"validation AUPRC {validation['auprc']:.4f} {'>=' if better else '<'} the served "
        f"{current.get('version')}'s {served['auprc']:.4f}",
    }


def train(
    profile: config.TrainProfile,
    detector: DetectorSpec | str | None = None,
    out_dir: Path | None = None,
    data_path: Path | None = None,
    promote: bool = False,
    frame: pd.DataFrame | None = None,
    data_source: dict | None = None,
) -> Path:
    """Run a whole training for a detector (default fraud); return the new model directory.

    The data is the detector's CSV (or `data_path`), or an already loaded `frame` (load_detector_frame's
    shape, e.g. read from InfluxDB) described by `data_source`. With `promote`, the result becomes the
    detector's production model if its validation AUPRC is at least the served model's.
    """
    from threadpoolctl import threadpool_limits

    spec = detector if isinstance(detector, DetectorSpec) else load_detector(detector)
    # One OpenMP thread: on a shared 2-core box, multi-threaded boosting spin-waits and runs far slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train(profile, spec, out_dir, data_path, promote, frame, data_source)


def _data_description(spec: DetectorSpec, data_path: Path | None, frame: pd.DataFrame) -> tuple[Path, dict]:
    from tickguard.data.config import data_settings

    csv_path = Path(data_path) if data_path else data_settings().csv_for(spec)
    fetch = spec.data.fetch
    return csv_path, {
        "file": csv_path.name,
        "sha256": modelstore.sha256_of(csv_path),
        # the fetched member's hash is the CSV's own unless the member is gzipped
        "reference_sha256": fetch.member_sha256 if fetch and not fetch.gzip else None,
    }


def _train(
    profile: config.TrainProfile,
    spec: DetectorSpec,
    out_dir: Path | None,
    data_path: Path | None,
    promote: bool,
    frame: pd.DataFrame | None,
    data_source: dict | None,
) -> Path:
    started = time.monotonic()
    if spec.label is None:
        raise TrainingError(
            f"detector {spec.name} ({spec.path}) has no [label]: training a classifier needs labelled data"
        )
    label = spec.label.field
    fields = list(spec.feature_fields)
    precision_target = (
        profile.precision_target if profile.precision_target is not None else spec.threshold.target
    )
    models_root = modelstore.detector_models_dir(config.models_dir(), spec.name)

    if frame is None:
        frame = load_detector_frame(spec, data_path)
        _, data_info = _data_description(spec, data_path, frame)
    else:
        data_info = dict(data_source or {"file": None})
    data_info |= {"rows": int(len(frame)), "positives": int(frame[label].sum())}

    out_dir = Path(out_dir) if out_dir is not None else default_output_dir(profile, promote, models_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("training %s (profile %s) into %s", spec.name, profile.name, out_dir)

    train_df, holdout_df = time_split(frame)
    strat_train_df, strat_test_df = stratified_split(frame, label=label)
    train_df = stratified_sample(train_df, profile.sample_rows, profile.seed, label)
    strat_train_df = stratified_sample(strat_train_df, profile.sample_rows, profile.seed, label)
    X, y = train_df[fields].to_numpy(dtype=np.float64), train_df[label].to_numpy(dtype=np.int64)
    log.info(
        "time-ordered training part: %d rows, %d anomalies (%.2f%%)", len(y), int(y.sum()), 100 * y.mean()
    )
    features = DetectorFeatures.from_spec(spec)

    # Forests are judged on the last time block of the training part, so the search does not see it: the
    # best of 40 trials scored on its own folds beats any blend by that selection alone.
    judge_fold = time_folds(len(y), profile.n_folds)[-1]
    tuned_rows = len(judge_fold[0]) if profile.extra_forests else len(y)
    tune_started = time.monotonic()
    study = run_study(
        X[:tuned_rows],
        y[:tuned_rows],
        n_trials=profile.n_trials,
        n_folds=profile.n_folds,
        seed=profile.seed,
        storage_path=out_dir / STUDY_FILE,
        negative_fraction=profile.negative_fraction,
        timeout=profile.timeout_s,
        n_jobs=profile.n_jobs,
        features=features,
        seed_trials=SEED_TRIALS,
    )
    params = best_params(study)
    failures = failed_trials(study)
    log.info("best CV AP %.4f with %s (%d trial(s) failed)", study.best_value, params, len(failures))
    extra_forest: dict[str, Any] = {"chosen": NO_EXTRA_FOREST, "rule": f"not tried ({profile.name} profile)"}
    if profile.extra_forests:
        params, extra_forest = choose_extra_forest(
            params, X, y, [judge_fold], profile.seed, 1.0, profile.n_jobs, features
        )
    tune_seconds = time.monotonic() - tune_started

    threshold, validation = choose_threshold(params, X, y, profile, spec, precision_target)
    log.info(
        "threshold %.4f (%s policy, target %.2f, on the last time block): validation AUPRC %.4f",
        threshold,
        spec.threshold.policy,
        precision_target,
        validation["auprc"],
    )

    fit_started = time.monotonic()
    model = ServingModel(
        build_pipeline(params, seed=profile.seed, n_jobs=profile.n_jobs, features=features).fit(X, y)
    )
    fit_seconds = time.monotonic() - fit_started
    split = {
        **SPLIT_DEFINITION,
        "time_column": spec.time.column or f"(none: one row every {spec.time.synthetic_step_seconds} s)",
        "label": label,
        "train_rows": int(len(train_df)),
        "train_positives": int(train_df[label].sum()),
        "holdout_rows": int(len(holdout_df)),
        "holdout_positives": int(holdout_df[label].sum()),
        "sample_rows": profile.sample_rows,
    }
    decision = promotion_decision(models_root, validation, split) if promote else {"promote": False}

    # Every choice is made; the holdout is read once, for the report.
    X_hold, y_hold = holdout_df[fields].to_numpy(dtype=np.float64), holdout_df[label].to_numpy(dtype=np.int64)
    hold_scores = model.predict_proba(X_hold)[:, 1]
    holdout = metrics_at(y_hold, hold_scores, threshold)
    log.info(
        "holdout AUPRC %.4f, precision %.3f, recall %.3f at the threshold",
        holdout["auprc"],
        holdout["precision"],
        holdout["recall"],
    )
    strat_model = build_pipeline(params, seed=profile.seed, n_jobs=profile.n_jobs, features=features)
    strat_model.fit(strat_train_df[fields].to_numpy(dtype=np.float64), strat_train_df[label].to_numpy())
    y_ste = strat_test_df[label].to_numpy(dtype=np.int64)
    strat_scores = strat_model.predict_proba(strat_test_df[fields].to_numpy(dtype=np.float64))[:, 1]
    stratified = metrics_at(y_ste, strat_scores, threshold)
    log.info("stratified AUPRC %.4f", stratified["auprc"])

    plot_pr_curves(
        {"time-ordered holdout": (y_hold, hold_scores), "stratified 20% test": (y_ste, strat_scores)},
        out_dir / modelstore.PR_CURVE_FILE,
    )
    targets = targets_for(spec.name)
    card = {
        "version": out_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "data": data_info,
        "split": split,
        "features": fields,
        "model_columns": list(spec.model_columns),
        "label": {"field": label, "positive": list(spec.label.positive)},
        "threshold": threshold,
        "threshold_rule": (
            f"fixed at {threshold} by the detector"
            if spec.threshold.policy == "fixed"
            else f"lowest score with precision >= {precision_target} on the last of {profile.n_folds} "
            "time-ordered validation blocks of the training part (model fit on the blocks before it)"
        ),
        "precision_target": precision_target,
        "model": {
            "kind": "imblearn Pipeline: DetectorFeatures -> StandardScaler -> resampler -> soft VotingClassifier"
            "(LightGBM, ExtraTrees, LogisticRegression"
            + ("" if params.get("extra_forest", NO_EXTRA_FOREST) == NO_EXTRA_FOREST else ", extra forest")
            + ")",
            "params": params,
        },
        "tuning": {
            "objective": "mean average precision over time-ordered expanding-window folds",
            "n_folds": profile.n_folds,
            "rows": tuned_rows,
            "negative_fraction_in_tuning_folds": profile.negative_fraction,
            "trials_requested": profile.n_trials,
            "trials_run": len(study.trials),
            "trials_failed": failures,
            "best_cv_auprc": float(study.best_value),
            "best_trial": int(study.best_trial.number),
            "extra_forest": extra_forest,
            "seconds": round(tune_seconds, 1),
            "study": STUDY_FILE,
            "seed": profile.seed,
        },
        "metrics": {
            "validation": validation,
            "holdout": holdout,
            "stratified": stratified,
            "stratified_note": "a second fit of the same parameters on the stratified 80%; metrics at the stored threshold",
        },
        "promotion": decision,
        "training": {"seconds": None, "final_fit_seconds": round(fit_seconds, 1), "cpu_cores": _cores()},
        "libraries": library_versions(),
        "targets": targets,
    }
    card["training"]["seconds"] = round(time.monotonic() - started, 1)
    card = modelstore.save_model(model, card, out_dir, detector=spec)
    card["targets_met"] = check_targets(
        targets, holdout, stratified, card["training"]["seconds"], card["model_size_bytes"]
    )
    (out_dir / modelstore.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    log.info(
        "wrote %s (%.1f MB) in %.0f s", out_dir, card["model_size_bytes"] / 2**20, card["training"]["seconds"]
    )
    if decision.get("promote"):
        if out_dir.parent.resolve() != models_root.resolve():
            target = models_root / out_dir.name
            shutil.copytree(out_dir, target, dirs_exist_ok=True)
            out_dir = target
        modelstore.promote(models_root, out_dir.name)
        log.info("%s/production -> %s (%s)", models_root, out_dir.name, decision.get("reason"))
    elif promote:
        log.warning("not promoted: %s", decision.get("reason"))
    return out_dir


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
