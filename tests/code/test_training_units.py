"""Training building blocks on synthetic data: features, folds, threshold rule, metrics, leakage, resampling
relative to the anomaly rate, failed trials, too few anomalies."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from tickguard.compiled_scorer import compile_model
from tickguard.detectors import Feature, load_detector
from tickguard.features import DetectorFeatures, FraudFeatures
from tickguard.training import pipeline as pipeline_module
from tickguard.training.metrics import (
    metrics_at,
    precision_at_recall,
    recall_at_precision,
    threshold_for_precision,
)
from tickguard.training.pipeline import (
    DEFAULT_PARAMS,
    RelativeOversampler,
    ServingModel,
    build_pipeline,
    make_sampler,
)
from tickguard.training.tuning import (
    ERROR_ATTR,
    TrainingError,
    best_params,
    check_positives,
    cv_average_precision,
    run_study,
    subsample_negatives,
    time_folds,
)


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
    params = {**DEFAULT_PARAMS, "gb_n_estimators": 20, "et_n_estimators": 10, "oversample_factor": 3.0}
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


def identity_features(width: int) -> DetectorFeatures:
    return DetectorFeatures(tuple(f"f{i}" for i in range(width)), ("none",) * width)


def test_detector_features_follow_the_spec_transforms_and_name_the_spec_columns():
    spec = load_detector("fraud")
    encoding = DetectorFeatures.from_spec(spec)
    X, _ = synthetic(n=50, frauds=5)
    np.testing.assert_array_equal(encoding.fit(X).transform(X), FraudFeatures().fit(X).transform(X))
    assert list(encoding.get_feature_names_out()) == list(spec.model_columns)
    mixed = DetectorFeatures(("a", "b", "c"), ("log1p", "none", "hour_of_day"))
    out = mixed.fit_transform(np.array([[np.e - 1, 5.0, 21_600.0], [-3.0, -5.0, 86_400.0 + 21_600.0]]))
    np.testing.assert_allclose(out, [[1.0, 5.0, 1.0, 0.0], [0.0, -5.0, 1.0, 0.0]], atol=1e-12)
    assert [Feature(f, t).columns for f, t in zip(mixed.fields, mixed.transforms, strict=True)] == [
        ("log1p(a)",),
        ("b",),
        ("hour_sin(c)", "hour_cos(c)"),
    ]
    with pytest.raises(ValueError, match=r"expected 3 columns \(a, b, c\), got 2"):
        mixed.fit(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="unknown transform"):
        DetectorFeatures(("a",), ("log2",)).fit(np.zeros((1, 1)))


def rated(n: int, positives: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=int)
    y[rng.choice(n, positives, replace=False)] = 1
    X = rng.normal(size=(n, 4))
    X[y == 1] += 2.0
    return X, y


def test_the_old_absolute_ratio_fails_where_relative_oversampling_works():
    X, y = rated(2000, 144)  # 7.2% anomalies, the shuttle set's rate
    with pytest.raises(ValueError, match="remove samples from the minority class"):
        make_sampler({"sampler": "smote", "sampling_ratio": 0.05}, seed=0).fit_resample(X, y)
    sampler = make_sampler({"sampler": "smote", "oversample_factor": 5.0}, seed=0)
    assert isinstance(sampler, RelativeOversampler)
    X_out, y_out = sampler.fit_resample(X, y)  # anomalies already common: left as they are
    assert X_out is X and y_out is y


@pytest.mark.parametrize("kind", ["smote", "adasyn"])
def test_oversampling_is_a_multiple_of_the_observed_anomalies(kind):
    X, y = rated(5000, 20)  # 0.4%
    sampler = RelativeOversampler(kind, factor=4.0, k_neighbors=5, random_state=0)
    X_out, y_out = sampler.fit_resample(X, y)
    assert sampler.target_positives(y) == 80
    assert (y_out == 1).sum() == (80 if kind == "smote" else pytest.approx(80, abs=8))
    assert (y_out == 0).sum() == 4980 and len(X_out) == len(y_out)
    capped = RelativeOversampler(kind, factor=1000.0).target_positives(y)
    assert capped == int(0.5 * 4980)  # never more than half the normal rows


def test_oversampling_copes_with_a_handful_of_anomalies():
    X, y = rated(3000, 3)
    _, y_out = RelativeOversampler("smote", factor=10.0, k_neighbors=9).fit_resample(X, y)
    assert (y_out == 1).sum() == 30  # k lowered to 2: SMOTE would refuse k=9 with 3 anomalies
    X1, y1 = rated(3000, 1)
    assert RelativeOversampler("smote", factor=10.0).fit_resample(X1, y1)[1] is y1


def test_too_few_anomalies_is_a_clear_error_with_the_counts():
    y = np.zeros(4000, dtype=int)
    y[[10, 20, 30, 1500, 2500, 3500, 3600]] = 1
    with pytest.raises(TrainingError) as err:
        check_positives(y, 3)
    message = str(err.value)
    assert "has 7 in 4000 rows" in message and "at least 3 in each of its 4 time blocks" in message
    assert ">= 12 in all" in message and "the blocks have 3, 1, 1, 2" in message
    y[np.arange(0, 4000, 100)] = 1
    check_positives(y, 3)  # 10+ per block: fine


def small_params(**changes):
    return {**DEFAULT_PARAMS, "gb_n_estimators": 20, "et_n_estimators": 10, **changes}


def test_a_failing_trial_fails_alone_and_is_recorded(tmp_path):
    X, y = synthetic(n=2000, frauds=80)
    broken = small_params(et_max_features=5.0)  # scikit-learn refuses a share above 1 when fitting
    study = run_study(
        X, y, n_trials=4, n_folds=2, seed=0, storage_path=tmp_path / "study.sqlite3",
        seed_trials=(broken, small_params(sampler="none")),
    )  # fmt: skip
    states = [t.state.name for t in study.trials]
    assert states.count("FAIL") == 1 and states.count("COMPLETE") >= 2, states
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert "max_features" in failed.user_attrs[ERROR_ATTR]
    assert best_params(study)["et_max_features"] <= 1.0


def test_all_trials_failing_is_one_error_naming_the_cause(tmp_path):
    X, y = synthetic(n=1500, frauds=60)
    X[7, 3] = np.inf  # every fit fails in the scaler
    with pytest.raises(TrainingError, match=r"every tuning trial failed \(2 of 2.*infinity"):
        run_study(X, y, n_trials=2, n_folds=2, seed=0, storage_path=None)


def test_common_anomalies_are_never_resampled_by_the_study():
    X, y = rated(1500, 120)  # 8%
    study = run_study(X, y, n_trials=3, n_folds=2, seed=0, storage_path=None, features=identity_features(4))
    assert all("sampler" not in t.params for t in study.trials)
    assert best_params(study)["sampler"] == "none"


def test_threshold_keeps_precision_when_recall_is_already_complete():
    y = np.array([0] * 90 + [1] * 10)
    s = np.concatenate([np.linspace(0.0, 0.3, 90), np.linspace(0.6, 0.9, 10)])
    t = threshold_for_precision(y, s, 0.9)
    assert t == pytest.approx(
        0.6
    )  # the lowest threshold at precision >= 0.9 would be ~0.3, letting one normal in
    assert metrics_at(y, s, t)["precision"] == 1.0 and metrics_at(y, s, t)["recall"] == 1.0


@pytest.mark.parametrize(
    "encoding",
    [
        identity_features(6),
        DetectorFeatures(("t", "a", "b", "c", "d", "amount"), ("hour_of_day", *["none"] * 4, "log1p")),
    ],
    ids=["identity", "time-first-log-last"],
)
def test_detector_encodings_are_served_compiled_with_the_pipelines_scores(encoding):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 6))
    X[:, 0] = np.sort(rng.uniform(0, 3 * 86_400, 3000))
    X[:, -1] = rng.exponential(50, 3000)
    y = (X[:, 1] + X[:, 2] + rng.normal(scale=0.5, size=3000) > 2.5).astype(int)
    pipe = build_pipeline(small_params(), seed=0, features=encoding).fit(X, y)
    scorer = compile_model(ServingModel(pipe))
    np.testing.assert_allclose(scorer.score(X), pipe.predict_proba(X)[:, 1], rtol=0, atol=1e-12)


def test_an_encoding_the_kernel_does_not_know_is_refused_by_the_compiler():
    from tickguard.compiled_scorer import UnsupportedModel

    encoding = DetectorFeatures(("a", "b", "c"), ("log1p", "none", "none"))
    X, y = rated(800, 60)
    pipe = build_pipeline(small_params(), seed=0, features=encoding).fit(np.abs(X[:, :3]), y)
    with pytest.raises(UnsupportedModel):
        compile_model(pipe)
