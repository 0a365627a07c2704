"""The tuned ensemble averaged with an extra forest: what the blend computes, how it is chosen on a
validation block the search did not see, and that the service's compiled scorer reproduces it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.code.test_training_units import synthetic
from tickguard.compiled_scorer import compile_model
from tickguard.training.config import FAST, FULL
from tickguard.training.pipeline import (
    DEFAULT_PARAMS,
    EXTRA_FORESTS,
    NO_EXTRA_FOREST,
    ServingModel,
    build_pipeline,
    build_single,
)
from tickguard.training.tuning import choose_extra_forest, cv_average_precision, time_folds


def noisy(n: int = 2400, positives: int = 90, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """test_training_units' rows with the anomalies' shift cut to 1.2 standard deviations: they overlap the
    normals, so the learners rank them differently."""
    X, y = synthetic(n=n, frauds=positives, seed=seed)
    X[y == 1, 1:4] -= 1.3
    return X, y


def small_params(**changes) -> dict:
    return {**DEFAULT_PARAMS, "sampler": "none", "gb_n_estimators": 30, "et_n_estimators": 10, **changes}


@pytest.mark.parametrize("forest", sorted(EXTRA_FORESTS))
def test_a_blend_scores_the_mean_of_the_tuned_ensemble_and_the_forest(forest):
    X, y = noisy()
    tuned = build_pipeline(small_params(), seed=0).fit(X, y)
    alone = build_single("xf", small_params(extra_forest=forest), seed=0).fit(X, y)
    blend = build_pipeline(small_params(extra_forest=forest), seed=0).fit(X, y)
    expected = (tuned.predict_proba(X)[:, 1] + alone.predict_proba(X)[:, 1]) / 2
    np.testing.assert_allclose(blend.predict_proba(X)[:, 1], expected, rtol=0, atol=1e-12)
    # the service's two fast paths give the blend's own numbers
    served = ServingModel(blend)
    np.testing.assert_allclose(served.predict_proba(X), blend.predict_proba(X), rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        compile_model(served).score(X), blend.predict_proba(X)[:, 1], rtol=0, atol=1e-12
    )


def test_the_choice_is_the_best_blend_scored_as_the_blended_pipeline_itself_would_be():
    X, y = noisy(seed=3)
    folds = time_folds(len(y), 2)
    candidates = ("extra_trees_150_depth_20", "random_forest_100_full_depth")
    params, report = choose_extra_forest(
        small_params(), X, y, folds, seed=0, candidates=candidates, min_gain=0
    )

    assert set(report["cv_auprc"]) == {NO_EXTRA_FOREST, *candidates}
    # the shortcut (each member fitted once per fold) equals the blended pipeline's own CV score
    for name in candidates:
        direct = cv_average_precision(small_params(extra_forest=name), X, y, folds, seed=0)
        assert report["cv_auprc"][name] == pytest.approx(direct, abs=1e-6)
    assert report["cv_auprc"][NO_EXTRA_FOREST] == pytest.approx(
        cv_average_precision(small_params(), X, y, folds, seed=0), abs=1e-6
    )
    best = max(report["cv_auprc"], key=report["cv_auprc"].get)
    assert report["chosen"] == best
    assert params.get("extra_forest", NO_EXTRA_FOREST) == best
    # a gain below min_gain does not buy a forest's scoring cost
    gain = max(report["cv_auprc"].values()) - report["cv_auprc"][NO_EXTRA_FOREST]
    assert gain > 0  # this data has a blend that helps
    kept, report = choose_extra_forest(
        small_params(), X, y, folds, seed=0, candidates=candidates, min_gain=gain + 1e-9
    )
    assert report["chosen"] == NO_EXTRA_FOREST and "extra_forest" not in kept


def test_a_forest_that_does_not_beat_the_ensemble_is_not_added():
    X, y = noisy(seed=1)
    X[y == 1, 1:4] += 20.0  # separable: every candidate reaches AP 1.0
    params, report = choose_extra_forest(
        small_params(extra_forest="extra_trees_150_depth_20"), X, y, time_folds(len(y), 2), seed=0,
        candidates=("extra_trees_150_depth_20",),
    )  # fmt: skip
    assert report["cv_auprc"] == {NO_EXTRA_FOREST: 1.0, "extra_trees_150_depth_20": 1.0}
    assert report["chosen"] == NO_EXTRA_FOREST and "extra_forest" not in params


def test_an_unknown_forest_is_a_clear_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown extra_forest 'big_forest'.*extra_trees_150_depth_20"):
        build_pipeline(small_params(extra_forest="big_forest"))


def test_only_full_training_runs_try_extra_forests():
    assert FULL.extra_forests and not FAST.extra_forests


def test_training_keeps_the_judging_block_from_the_search_and_records_the_choice(tmp_path, monkeypatch):
    import pandas as pd

    from tests.fixtures.model import shuttle_csv
    from tickguard import modelstore
    from tickguard.training.train import train

    csv_path = tmp_path / "shuttle-part.csv"
    pd.read_csv(shuttle_csv()).iloc[:6000].to_csv(csv_path, index=False)
    monkeypatch.setenv("TICKGUARD_MODELS_DIR", str(tmp_path / "models"))
    profile = FAST.with_overrides(extra_forests=True, n_trials=2, sample_rows=None)
    card = modelstore.read_card(train(profile, "shuttle", out_dir=tmp_path / "m", data_path=csv_path))

    train_rows = card["split"]["train_rows"]
    judged = card["tuning"]["extra_forest"]
    # 2 folds: 3 time blocks; the search saw the first two, the forests were judged on the third
    assert card["tuning"]["rows"] == train_rows - train_rows // 3
    assert judged["validation_rows"] == [train_rows // 3] == [card["metrics"]["validation"]["rows"]]
    assert set(judged["cv_auprc"]) == {NO_EXTRA_FOREST, *EXTRA_FORESTS}
    assert card["model"]["params"].get("extra_forest", NO_EXTRA_FOREST) == judged["chosen"]
