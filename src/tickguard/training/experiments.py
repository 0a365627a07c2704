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


def compare_resampling(
    X: np.ndarray,
    y: np.ndarray,
    n_folds: int = 3,
    ratio: float = 0.05,
    seed: int = 42,
    n_estimators: int = 150,
) -> pd.DataFrame:
    """Mean/std AP of one LightGBM learner behind each resampler, with resampling inside time-ordered folds."""
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
                        LGBMClassifier(n_estimators=n_estimators, n_jobs=1, random_state=seed, verbose=-1),
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
