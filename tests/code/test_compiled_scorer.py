"""The compiled scorer reproduces each supported model exactly, and refuses what it cannot compile."""

from __future__ import annotations

import numpy as np
import pytest
from imblearn.pipeline import Pipeline
from lightgbm import LGBMClassifier
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from tickguard import compiled_scorer
from tickguard.compiled_scorer import UnsupportedModel, compile_if_possible, compile_model
from tickguard.scoring.predictor import probe_rows
from tickguard.training.features import FraudFeatures

FEATURES = ["Time", *[f"V{i}" for i in range(1, 29)], "Amount"]


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows in the raw schema with a learnable, imbalanced label."""
    X = probe_rows(FEATURES, n=n, seed=seed)
    logit = 1.5 * X[:, 1] - 1.0 * X[:, 4] + 0.8 * np.sin(X[:, 0] / 8_000.0) + 0.01 * X[:, -1] - 4.0
    y = (np.random.default_rng(seed).random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return X, y


def _pipeline(model) -> Pipeline:
    return Pipeline([("features", FraudFeatures()), ("scale", StandardScaler()), ("model", model)])


def _lgbm(**kw) -> LGBMClassifier:
    params = {"n_estimators": 40, "num_leaves": 15, "random_state": 1, "verbose": -1, "n_jobs": 1}
    return LGBMClassifier(**{**params, **kw})


MODELS = {
    "soft vote like production": VotingClassifier(
        [
            ("gb", _lgbm()),
            ("et", ExtraTreesClassifier(n_estimators=8, max_depth=9, min_samples_leaf=3, random_state=1)),
            ("lr", LogisticRegression(C=0.1, max_iter=500)),
        ],
        voting="soft",
        weights=[0.4, 0.6, 0.9],
    ),
    "lightgbm alone": _lgbm(),
    "lightgbm with more than 64 leaves (walked)": _lgbm(num_leaves=100, min_child_samples=2),
    "lightgbm treating zero as missing (walked)": _lgbm(zero_as_missing=True),
    "random forest (walked, float32 tests)": RandomForestClassifier(n_estimators=6, random_state=1),
    "small random forest (bitmask, float32 tests)": RandomForestClassifier(
        n_estimators=6, max_leaf_nodes=30, random_state=1
    ),
    "logistic regression alone": LogisticRegression(max_iter=500),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_scores_equal_the_pipelines(name):
    X, y = _data(6_000)
    pipeline = _pipeline(MODELS[name]).fit(X, y)
    scorer = compile_model(pipeline)
    X_new, _ = _data(3_000, seed=1)
    # Raw values equal to the scaler's mean scale to exactly 0: LightGBM's zero-as-missing rule.
    X_new[:200, 1:5] = pipeline.named_steps["scale"].mean_[2:6]
    expected = pipeline.predict_proba(X_new)[:, 1]
    np.testing.assert_allclose(scorer.score(X_new), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(scorer.score(X_new[7:8]), expected[7:8], rtol=0, atol=1e-12)


def test_structures_seen_in_tests_use_both_evaluation_paths():
    X, y = _data(3_000)
    small = compile_model(_pipeline(_lgbm()).fit(X, y))
    assert small.bitmask.n_trees == 40 and small.bitmask.weight == 1.0
    wide = compile_model(_pipeline(_lgbm(num_leaves=100, min_child_samples=2)).fit(X, y))
    assert wide.bitmask.weight == 0.0 and len(wide.walked[0].roots) == 40
    zero_rules = compile_model(_pipeline(_lgbm(zero_as_missing=True)).fit(X, y))
    assert zero_rules.bitmask.weight == 0.0 and zero_rules.walked[0].zero_goes.any()


def test_unsupported_learner_is_refused_with_its_name():
    X, y = _data(2_000)
    with pytest.raises(UnsupportedModel, match="KNeighborsClassifier"):
        compile_model(_pipeline(KNeighborsClassifier()).fit(X, y))


def test_hard_voting_is_refused():
    X, y = _data(2_000)
    vote = VotingClassifier([("a", _lgbm()), ("b", LogisticRegression(max_iter=300))], voting="hard")
    with pytest.raises(UnsupportedModel, match="soft voting"):
        compile_model(_pipeline(vote).fit(X, y))


class _Shifted:
    """A model whose probabilities differ from what its pipeline's parameters say (a stale compile)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def predict_proba(self, X):
        p = self.pipeline.predict_proba(X)
        return np.clip(p + np.array([-1e-6, 1e-6]), 0, 1)


def test_a_compiled_scorer_that_disagrees_is_not_used(caplog):
    X, y = _data(2_000)
    pipeline = _pipeline(_lgbm()).fit(X, y)
    assert compile_if_possible(pipeline, X[:200]) is not None
    assert compile_if_possible(_Shifted(pipeline), X[:200]) is None
    assert "differ from the pipeline's" in caplog.text


def test_disabling_by_env_scores_with_the_pipeline(monkeypatch):
    X, y = _data(2_000)
    pipeline = _pipeline(_lgbm()).fit(X, y)
    monkeypatch.setenv(compiled_scorer.DISABLE_ENV, "0")
    assert compile_if_possible(pipeline, X[:50]) is None


def test_wrong_width_is_a_clear_error():
    X, y = _data(2_000)
    scorer = compile_model(_pipeline(_lgbm()).fit(X, y))
    with pytest.raises(ValueError, match="30 columns"):
        scorer.score(X[:, :5])


def test_extreme_but_finite_inputs_score_like_the_pipeline():
    X, y = _data(4_000)
    pipeline = _pipeline(MODELS["soft vote like production"]).fit(X, y)
    scorer = compile_model(pipeline)
    rng = np.random.default_rng(5)
    extreme = rng.choice([-1e30, -1e6, -1.0, 0.0, 1e-30, 1.0, 1e6, 1e30], size=(400, len(FEATURES)))
    extreme[:, 0] = rng.choice(
        [-86_400.0 * 3.5, -1.0, 0.0, 1e12], size=400
    )  # Time before the data, far after
    extreme[:, -1] = rng.choice([-5.0, 0.0, 0.01, 1e9], size=400)  # Amount: refunds, zero, huge
    expected = pipeline.predict_proba(extreme)[:, 1]
    np.testing.assert_allclose(scorer.score(extreme), expected, rtol=0, atol=1e-12)
