"""End-to-end training: split, tune, choose the threshold, fit, evaluate, write models/<version>/."""

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
from tickguard.data import (
    FEATURES,
    SPLIT_DEFINITION,
    TARGET,
    features_and_target,
    load_dataset,
    stratified_split,
    time_split,
)
from tickguard.data.config import CSV_SHA256, data_settings
from tickguard.training import config
from tickguard.training.metrics import metrics_at, plot_pr_curves, threshold_for_precision
from tickguard.training.pipeline import ServingModel, build_pipeline
from tickguard.training.tuning import best_params, run_study, time_folds

log = logging.getLogger(__name__)
STUDY_FILE = "study.sqlite3"
PRECISION_CHECK = 0.90

TARGETS = {
    "holdout_auprc_min": 0.82,
    "stratified_auprc_min": 0.88,
    "holdout_recall_min": 0.80,
    "holdout_precision_min": 0.85,
    "train_seconds_max": 1800,
    "model_mb_max": 25,
}


def stratified_sample(df: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """A class-stratified random sample of `rows` rows, kept in original (time) order."""
    if rows is None or rows >= len(df):
        return df
    from sklearn.model_selection import train_test_split

    sample, _ = train_test_split(df, train_size=rows, stratify=df[TARGET], random_state=seed)
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
    params: dict[str, Any], X: np.ndarray, y: np.ndarray, profile: config.TrainProfile
) -> tuple[float, dict]:
    """Fit on all but the last time block of the training part; pick the threshold on that block."""
    train_idx, valid_idx = time_folds(len(y), profile.n_folds)[-1]
    model = build_pipeline(params, seed=profile.seed, n_jobs=profile.n_jobs).fit(X[train_idx], y[train_idx])
    scores = model.predict_proba(X[valid_idx])[:, 1]
    threshold = threshold_for_precision(y[valid_idx], scores, profile.precision_target)
    return threshold, metrics_at(y[valid_idx], scores, threshold)


def check_targets(card: dict) -> dict[str, bool]:
    """Which of the issue's quality/size/time targets this model meets."""
    hold, strat = card["metrics"]["holdout"], card["metrics"]["stratified"]
    return {
        "holdout_auprc": hold["auprc"] >= TARGETS["holdout_auprc_min"],
        "stratified_auprc": strat["auprc"] >= TARGETS["stratified_auprc_min"],
        "holdout_recall": hold["recall"] >= TARGETS["holdout_recall_min"],
        "holdout_precision": hold["precision"] >= TARGETS["holdout_precision_min"],
        "train_time": card["training"]["seconds"] <= TARGETS["train_seconds_max"],
        "model_size": card.get("model_size_bytes", 0) <= TARGETS["model_mb_max"] * 2**20,
    }


def train(
    profile: config.TrainProfile,
    out_dir: Path | None = None,
    data_path: Path | None = None,
    promote: bool = False,
) -> Path:
    """Run a whole training; return the new model directory (promoted to production if asked)."""
    from threadpoolctl import threadpool_limits

    # One OpenMP thread: on a shared 2-core box, multi-threaded boosting spin-waits and runs far slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        return _train(profile, out_dir, data_path, promote)


def _train(profile: config.TrainProfile, out_dir: Path | None, data_path: Path | None, promote: bool) -> Path:
    started = time.monotonic()
    models_root = modelstore.detector_models_dir(config.models_dir(), modelstore.DEFAULT_DETECTOR)
    out_dir = Path(out_dir) if out_dir is not None else default_output_dir(profile, promote, models_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("training profile %s into %s", profile.name, out_dir)

    csv_path = Path(data_path) if data_path else data_settings().csv_path
    df = load_dataset(csv_path)
    data_sha = modelstore.sha256_of(csv_path)
    train_df, holdout_df = time_split(df)
    strat_train_df, strat_test_df = stratified_split(df)
    train_df = stratified_sample(train_df, profile.sample_rows, profile.seed)
    strat_train_df = stratified_sample(strat_train_df, profile.sample_rows, profile.seed)
    X, y = features_and_target(train_df)
    log.info("time-ordered training part: %d rows, %d frauds", len(y), int(y.sum()))

    tune_started = time.monotonic()
    study = run_study(
        X,
        y,
        n_trials=profile.n_trials,
        n_folds=profile.n_folds,
        seed=profile.seed,
        storage_path=out_dir / STUDY_FILE,
        negative_fraction=profile.negative_fraction,
        timeout=profile.timeout_s,
        n_jobs=profile.n_jobs,
    )
    tune_seconds = time.monotonic() - tune_started
    params = best_params(study)
    log.info("best CV AP %.4f with %s", study.best_value, params)

    threshold, validation_metrics = choose_threshold(params, X, y, profile)
    log.info(
        "threshold %.4f (precision target %.2f on the last time block)", threshold, profile.precision_target
    )

    fit_started = time.monotonic()
    model = ServingModel(build_pipeline(params, seed=profile.seed, n_jobs=profile.n_jobs).fit(X, y))
    fit_seconds = time.monotonic() - fit_started
    X_hold, y_hold = features_and_target(holdout_df)
    hold_scores = model.predict_proba(X_hold)[:, 1]
    holdout = metrics_at(y_hold, hold_scores, threshold)
    log.info(
        "holdout AUPRC %.4f, recall %.3f, precision %.3f",
        holdout["auprc"],
        holdout["recall"],
        holdout["precision"],
    )

    X_st, y_st = features_and_target(strat_train_df)
    X_ste, y_ste = features_and_target(strat_test_df)
    strat_model = build_pipeline(params, seed=profile.seed, n_jobs=profile.n_jobs).fit(X_st, y_st)
    strat_scores = strat_model.predict_proba(X_ste)[:, 1]
    stratified = metrics_at(y_ste, strat_scores, threshold)
    log.info("stratified AUPRC %.4f", stratified["auprc"])

    plot_pr_curves(
        {"time-ordered holdout": (y_hold, hold_scores), "stratified 20% test": (y_ste, strat_scores)},
        out_dir / modelstore.PR_CURVE_FILE,
    )
    card = {
        "version": out_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile.name,
        "data": {
            "file": csv_path.name,
            "sha256": data_sha,
            "reference_sha256": CSV_SHA256,
            "rows": int(len(df)),
            "frauds": int(df[TARGET].sum()),
        },
        "split": {
            **SPLIT_DEFINITION,
            "train_rows": int(len(train_df)),
            "train_frauds": int(train_df[TARGET].sum()),
            "holdout_rows": int(len(holdout_df)),
            "holdout_frauds": int(holdout_df[TARGET].sum()),
            "sample_rows": profile.sample_rows,
        },
        "features": list(FEATURES),
        "threshold": threshold,
        "threshold_rule": (
            f"lowest score with precision >= {profile.precision_target} on the last of {profile.n_folds} "
            "time-ordered validation blocks of the training part (model fit on the blocks before it)"
        ),
        "precision_target": profile.precision_target,
        "model": {
            "kind": "imblearn Pipeline: FraudFeatures -> StandardScaler -> resampler -> soft VotingClassifier"
            "(LightGBM, ExtraTrees, LogisticRegression)",
            "params": params,
        },
        "tuning": {
            "objective": "mean average precision over time-ordered expanding-window folds",
            "n_folds": profile.n_folds,
            "negative_fraction_in_tuning_folds": profile.negative_fraction,
            "trials_requested": profile.n_trials,
            "trials_run": len(study.trials),
            "best_cv_auprc": float(study.best_value),
            "best_trial": int(study.best_trial.number),
            "seconds": round(tune_seconds, 1),
            "study": STUDY_FILE,
            "seed": profile.seed,
        },
        "metrics": {
            "validation": validation_metrics,
            "holdout": holdout,
            "stratified": stratified,
            "stratified_note": "a second fit of the same parameters on the stratified 80%; metrics at the stored threshold",
        },
        "training": {"seconds": None, "final_fit_seconds": round(fit_seconds, 1), "cpu_cores": _cores()},
        "libraries": library_versions(),
        "targets": TARGETS,
    }
    card["training"]["seconds"] = round(time.monotonic() - started, 1)
    from tickguard.detectors import load_detector

    card = modelstore.save_model(model, card, out_dir, detector=load_detector(modelstore.DEFAULT_DETECTOR))
    card["targets_met"] = check_targets(card)
    (out_dir / modelstore.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    log.info(
        "wrote %s (%.1f MB) in %.0f s", out_dir, card["model_size_bytes"] / 2**20, card["training"]["seconds"]
    )
    if promote:
        if out_dir.parent.resolve() != models_root.resolve():
            target = models_root / out_dir.name
            shutil.copytree(out_dir, target, dirs_exist_ok=True)
            out_dir = target
        modelstore.promote(models_root, out_dir.name)
        log.info("%s/production -> %s", models_root, out_dir.name)
    return out_dir


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
