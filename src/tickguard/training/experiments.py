"""Comparisons the notebooks show: resampling strategies and ensembles vs single models."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from imblearn.over_sampling import RandomOverSampler
from imblearn.pipeline import Pipeline
from imblearn.under_sampling import RandomUnderSampler
from lightgbm import LGBMClassifier
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from tickguard.training.features import FraudFeatures
from tickguard.training.metrics import recall_at_precision
from tickguard.training.pipeline import (
    DEFAULT_PARAMS,
    build_pipeline,
    build_single,
    make_learners,
    make_sampler,
)
from tickguard.training.tuning import time_folds


def resampling_strategies(ratio: float = 0.05, seed: int = 42) -> dict[str, Any]:
    """The resamplers compared in notebook 02 (None = train on the data as it is)."""
    return {
        "none": None,
        "random undersampling": RandomUnderSampler(sampling_strategy=ratio, random_state=seed),
        "random oversampling": RandomOverSampler(sampling_strategy=ratio, random_state=seed),
        "SMOTE": make_sampler({"sampler": "smote", "sampling_ratio": ratio, "k_neighbors": 5}, seed),
        "ADASYN": make_sampler({"sampler": "adasyn", "sampling_ratio": ratio, "k_neighbors": 5}, seed),
    }


def regularized_lightgbm(n_estimators: int, seed: int) -> LGBMClassifier:
    """The production pipeline's LightGBM with its default (regularised) settings and n_estimators trees."""
    learner = dict(make_learners(DEFAULT_PARAMS, seed))["gb"]
    return learner.set_params(n_estimators=n_estimators)


def compare_resampling(
    X: np.ndarray,
    y: np.ndarray,
    n_folds: int = 3,
    ratio: float = 0.05,
    seed: int = 42,
    n_estimators: int = 150,
) -> pd.DataFrame:
    """Mean/std AP of one LightGBM learner behind each resampler, with resampling inside time-ordered folds.

    The learner is the pipeline's regularised LightGBM (min_child_samples=50, L2, row/column subsampling):
    with LightGBM's stock settings the no-resampling case collapses (CV AP < 0.1 here) because a few
    frauds with huge gradients dominate the boosting, which would make any resampler look good.
    """
    rows = []
    for name, sampler in resampling_strategies(ratio, seed).items():
        scores, seconds = [], 0.0
        for train_idx, valid_idx in time_folds(len(y), n_folds):
            model = Pipeline(
                [
                    ("features", FraudFeatures()),
                    ("scale", StandardScaler()),
                    ("resample", sampler or "passthrough"),
                    (
                        "model",
                        regularized_lightgbm(n_estimators, seed),
                    ),
                ]
            )
            started = time.perf_counter()
            model.fit(X[train_idx], y[train_idx])
            seconds += time.perf_counter() - started
            scores.append(average_precision_score(y[valid_idx], model.predict_proba(X[valid_idx])[:, 1]))
        rows.append(
            {
                "strategy": name,
                "cv_ap_mean": np.mean(scores),
                "cv_ap_std": np.std(scores),
                "fit_seconds": seconds,
            }
        )
    return pd.DataFrame(rows).sort_values("cv_ap_mean", ascending=False).reset_index(drop=True)


def build_stacking(params: dict[str, Any] | None = None, seed: int = 42, n_jobs: int = 1) -> Pipeline:
    """The same three learners combined by a logistic-regression meta-learner (5-fold stacking)."""
    params = {**DEFAULT_PARAMS, **(params or {})}
    stack = StackingClassifier(
        make_learners(params, seed, n_jobs), final_estimator=LogisticRegression(max_iter=1000), cv=5
    )
    return Pipeline(
        [
            ("features", FraudFeatures()),
            ("scale", StandardScaler()),
            ("resample", make_sampler(params, seed) or "passthrough"),
            ("model", stack),
        ]
    )


def compare_models(
    params: dict[str, Any],
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    seed: int = 42,
    include_stacking: bool = True,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Fit each single learner, the soft-voting ensemble and (optionally) stacking; score the test rows.

    Returns a table (AP, ROC-AUC, recall at precision >= 0.90, fit seconds, ms per 1000 rows scored)
    and each model's test scores for PR curves.
    """
    candidates: dict[str, Any] = {
        "LightGBM": build_single("gb", params, seed),
        "ExtraTrees": build_single("et", params, seed),
        "LogisticRegression": build_single("lr", params, seed),
        "soft voting (3 learners)": build_pipeline(params, seed),
    }
    if include_stacking:
        candidates["stacking (3 learners + LR)"] = build_stacking(params, seed)
    rows, scores = [], {}
    for name, model in candidates.items():
        started = time.perf_counter()
        model.fit(X_train, y_train)
        fit_seconds = time.perf_counter() - started
        s = model.predict_proba(X_test)[:, 1]
        batch = X_test[:1000]
        started = time.perf_counter()
        for _ in range(5):
            model.predict_proba(batch)
        ms_per_1000 = (time.perf_counter() - started) / 5 * 1000 * 1000 / len(batch)
        scores[name] = s
        rows.append(
            {
                "model": name,
                "ap": average_precision_score(y_test, s),
                "roc_auc": roc_auc_score(y_test, s),
                "recall_at_p90": recall_at_precision(y_test, s, 0.90),
                "fit_seconds": fit_seconds,
                "ms_per_1000_rows": ms_per_1000,
            }
        )
    return pd.DataFrame(rows).sort_values("ap", ascending=False).reset_index(drop=True), scores


def cv_compare_models(
    params: dict[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    n_folds: int = 3,
    negative_fraction: float = 0.5,
    seed: int = 42,
) -> pd.DataFrame:
    """Mean AP of each single learner and the soft-voting ensemble under the tuning's time-ordered CV."""
    from tickguard.training.tuning import subsample_negatives

    makers = {
        "LightGBM": lambda: build_single("gb", params, seed),
        "ExtraTrees": lambda: build_single("et", params, seed),
        "LogisticRegression": lambda: build_single("lr", params, seed),
        "soft voting (3 learners)": lambda: build_pipeline(params, seed),
    }
    rows = []
    for name, make in makers.items():
        scores = []
        for i, (train_idx, valid_idx) in enumerate(time_folds(len(y), n_folds)):
            train_idx = subsample_negatives(train_idx, y, negative_fraction, seed + i)
            model = make().fit(X[train_idx], y[train_idx])
            scores.append(average_precision_score(y[valid_idx], model.predict_proba(X[valid_idx])[:, 1]))
        rows.append(
            {"model": name, "cv_ap_mean": np.mean(scores), "cv_ap_per_fold": np.round(scores, 4).tolist()}
        )
    return pd.DataFrame(rows).sort_values("cv_ap_mean", ascending=False).reset_index(drop=True)
