"""Training building blocks on synthetic data: features, folds, threshold rule, metrics, leakage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from tickguard.training import pipeline as pipeline_module
from tickguard.training.features import FraudFeatures
from tickguard.training.metrics import (
    metrics_at,
    precision_at_recall,
    recall_at_precision,
    threshold_for_precision,
)
from tickguard.training.pipeline import DEFAULT_PARAMS, ServingModel, build_pipeline
from tickguard.training.tuning import cv_average_precision, subsample_negatives, time_folds


def synthetic(n=3000, frauds=90, seed=0):
    """Raw-layout rows [Time, V1..V28, Amount] with a learnable fraud signal in V1..V3."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 30))
    X[:, 0] = np.sort(rng.uniform(0, 2 * 86_400, n))
    X[:, -1] = rng.exponential(80, n)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, frauds, replace=False)] = 1
    X[y == 1, 1:4] += 2.5
    return X, y


def test_features_encode_time_of_day_on_a_circle():
    X = np.zeros((3, 30))
    X[:, 0] = [0.0, 86_400.0, 43_200.0]
    X[:, -1] = [0.0, np.e - 1, -5.0]
    out = FraudFeatures().fit(X).transform(X)
    assert out.shape == (3, 31)
    np.testing.assert_allclose(out[0, :2], out[1, :2], atol=1e-12)  # midnight on day 1 == day 2
    np.testing.assert_allclose(out[2, :2], [0.0, -1.0], atol=1e-12)  # noon is opposite
    np.testing.assert_allclose(out[:, -1], [0.0, 1.0, 0.0])  # log1p, negatives clipped


def test_time_folds_validate_strictly_after_training():
    folds = time_folds(1000, 3)
    assert len(folds) == 3
    for train_idx, valid_idx in folds:
        assert train_idx.max() < valid_idx.min()
    assert folds[-1][1].max() == 999


def test_subsample_negatives_keeps_every_fraud_and_order():
    y = np.array([0] * 900 + [1] * 100)
    idx = np.arange(1000)
    kept = subsample_negatives(idx, y, 0.3, seed=1)
    assert set(np.flatnonzero(y)) <= set(kept)
    assert 250 < (y[kept] == 0).sum() < 350
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(kept, subsample_negatives(idx, y, 0.3, seed=1))


def test_threshold_is_the_lowest_meeting_the_precision_target():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    t = threshold_for_precision(y, s, 0.9)
    assert t == 0.5  # from 0.5 up every flagged row is a fraud; at 0.4 a normal row slips in
    m = metrics_at(y, s, t)
    assert m["precision"] == 1.0 and m["recall"] == 0.8
    assert m["confusion_matrix"] == {"tn": 3, "fp": 0, "fn": 1, "tp": 4}
    assert recall_at_precision(y, s, 0.9) == 0.8


def test_precision_at_recall_is_the_best_over_thresholds_reaching_the_recall():
    y = np.array([0, 0, 1, 0, 1, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert precision_at_recall(y, s, 0.8) == 1.0  # threshold 0.5: four of five frauds, nothing else
    assert precision_at_recall(y, s, 1.0) == 5 / 6  # all five frauds need 0.3, which lets in 0.4


def test_threshold_falls_back_to_best_precision_when_target_unreachable():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6])
    assert threshold_for_precision(y, s, 0.99) == 0.9


def test_resampling_sees_only_each_folds_training_rows(monkeypatch):
    seen: list[np.ndarray] = []

    class RecordingSMOTE(pipeline_module.SMOTE):
        def fit_resample(self, X, y, **kw):
            seen.append(np.array(X, copy=True))
            return super().fit_resample(X, y, **kw)

    monkeypatch.setattr(pipeline_module, "SMOTE", RecordingSMOTE)
    X, y = synthetic()
    folds = time_folds(len(y), 3)
    params = {**DEFAULT_PARAMS, "gb_n_estimators": 20, "et_n_estimators": 10, "sampling_ratio": 0.2}
    cv_average_precision(params, X, y, folds, seed=0)
    assert len(seen) == len(folds)
    for recorded, (train_idx, _valid_idx) in zip(seen, folds, strict=True):
        expected = StandardScaler().fit_transform(FraudFeatures().fit_transform(X[train_idx]))
        np.testing.assert_allclose(recorded, expected)  # exactly the fold's training rows, no validation row


def test_pipeline_is_deterministic_under_a_seed():
    X, y = synthetic()
    params = {**DEFAULT_PARAMS, "gb_n_estimators": 30, "et_n_estimators": 10}
    a = build_pipeline(params, seed=7).fit(X, y).predict_proba(X)[:, 1]
    b = build_pipeline(params, seed=7).fit(X, y).predict_proba(X)[:, 1]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sampler", ["smote", "adasyn", "none"])
def test_every_sampler_trains_and_predicts_probabilities(sampler):
    X, y = synthetic(n=1500, frauds=60)
    params = {**DEFAULT_PARAMS, "sampler": sampler, "gb_n_estimators": 20, "et_n_estimators": 10}
    model = ServingModel(build_pipeline(params).fit(X, y))
    p = model.predict_proba(X)
    assert p.shape == (1500, 2) and np.all((p >= 0) & (p <= 1))
    assert p[y == 1, 1].mean() > p[y == 0, 1].mean()
    with pytest.raises(ValueError, match="unknown sampler"):
        build_pipeline({**params, "sampler": "magic"})


def test_serving_path_gives_exactly_the_pipelines_probabilities():
    X, y = synthetic()
    params = {**DEFAULT_PARAMS, "gb_n_estimators": 40, "et_n_estimators": 10}
    pipe = build_pipeline(params, seed=3).fit(X, y)
    served = ServingModel(pipe)
    np.testing.assert_array_equal(served.predict_proba(X), pipe.predict_proba(X))
    np.testing.assert_array_equal(served.predict_proba(X[:1]), pipe.predict_proba(X[:1]))


def test_serving_path_rejects_bad_shapes_and_values():
    X, y = synthetic(n=800, frauds=40)
    params = {**DEFAULT_PARAMS, "sampler": "none", "gb_n_estimators": 10, "et_n_estimators": 5}
    served = ServingModel(build_pipeline(params).fit(X, y))
    with pytest.raises(ValueError, match="30 columns"):
        served.predict_proba(X[:, :29])
    bad = X[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        served.predict_proba(bad)
