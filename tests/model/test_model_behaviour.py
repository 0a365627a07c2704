"""Behaviour of trained models: the served one (models/fraud/production) and a fast one trained here."""

from __future__ import annotations

import json
import shutil
import sqlite3

import numpy as np
import pytest

from tickguard import modelstore
from tickguard.data import FEATURES, TARGET
from tickguard.detectors import load_detector
from tickguard.errors import ModelIntegrityError
from tickguard.training.metrics import metrics_at

# File rows (0-based, in creditcard.csv order) inside the time-ordered holdout: a fraud that every
# model trained so far flags with a high score, and an ordinary purchase.
KNOWN_FRAUD_ROW = 252_124
KNOWN_NORMAL_ROW = 250_000


def test_production_card_honours_the_contract(production_model):
    card = production_model.card
    assert production_model.features == list(FEATURES)
    assert 0.0 < production_model.threshold < 1.0
    assert card["model_sha256"] == modelstore.sha256_of(production_model.path / modelstore.MODEL_FILE)
    assert (production_model.path / modelstore.PR_CURVE_FILE).stat().st_size > 1000
    for split in ("holdout", "stratified"):
        metrics = card["metrics"][split]
        for key in (
            "auprc",
            "roc_auc",
            "precision",
            "recall",
            "f1",
            "confusion_matrix",
            "recall_at_precision_0.90",
        ):
            assert key in metrics, (split, key)
    split = card["split"]
    assert split["holdout_rows"] == 56_962
    assert split.get("holdout_positives", split.get("holdout_frauds")) == 75  # the key before detectors
    assert card["model_size_bytes"] <= 25 * 2**20


def test_threshold_is_honoured_on_the_holdout(production_model, holdout):
    scores = production_model.score(holdout[production_model.features].to_numpy())
    recomputed = metrics_at(holdout[TARGET].to_numpy(), scores, production_model.threshold)
    stored = production_model.card["metrics"]["holdout"]
    assert recomputed["confusion_matrix"] == stored["confusion_matrix"]
    assert recomputed["auprc"] == pytest.approx(stored["auprc"], abs=1e-9)
    flagged = scores >= production_model.threshold
    assert flagged.sum() == stored["confusion_matrix"]["tp"] + stored["confusion_matrix"]["fp"]


def test_known_fraud_scores_above_known_normal(production_model, dataset):
    rows = dataset.loc[[KNOWN_FRAUD_ROW, KNOWN_NORMAL_ROW]]
    assert rows[TARGET].tolist() == [1, 0]
    assert int(0.8 * len(dataset)) <= KNOWN_NORMAL_ROW and int(0.8 * len(dataset)) <= KNOWN_FRAUD_ROW
    fraud_score, normal_score = production_model.score(rows[production_model.features].to_numpy())
    assert fraud_score > normal_score
    assert fraud_score >= production_model.threshold > normal_score


def test_scores_are_probabilities_and_batch_independent(production_model, holdout):
    X = holdout[production_model.features].to_numpy()[:2000]
    whole = production_model.score(X)
    assert whole.shape == (2000,) and np.all((whole >= 0) & (whole <= 1))
    pieces = np.concatenate([production_model.score(X[i : i + 300]) for i in range(0, 2000, 300)])
    np.testing.assert_allclose(whole, pieces, rtol=0, atol=1e-12)


def test_a_tampered_model_file_is_refused(production_model, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(production_model.path, copy)
    with open(copy / modelstore.MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="does not match the model card"):
        modelstore.load_model(copy)


def test_fast_training_writes_a_complete_artifact(fast_model_dir):
    artifact = modelstore.load_model(fast_model_dir)
    card = artifact.card
    assert card["profile"] == "fast" and card["features"] == list(FEATURES)
    assert card["detector"]["name"] == "fraud" and card["detector_sha256"] == load_detector("fraud").sha256
    assert card["model_columns"] == list(load_detector("fraud").model_columns)
    assert card["data"]["positives"] == 492 and card["split"]["holdout_positives"] == 75
    for key in (
        "version",
        "created",
        "data",
        "split",
        "threshold",
        "metrics",
        "libraries",
        "training",
        "tuning",
    ):
        assert key in card
    assert card["data"]["sha256"] == card["data"]["reference_sha256"]
    assert (fast_model_dir / modelstore.PR_CURVE_FILE).is_file()
    with sqlite3.connect(fast_model_dir / "study.sqlite3") as db:
        (n_trials,) = db.execute("select count(*) from trials").fetchone()
    assert n_trials == card["tuning"]["trials_run"] >= 2
    json.dumps(card)  # the card is plain JSON


def test_stored_threshold_reaches_the_precision_target_on_validation(fast_model_dir):
    card = modelstore.read_card(fast_model_dir)
    validation = card["metrics"]["validation"]
    assert validation["threshold"] == card["threshold"]
    assert validation["precision"] >= card["precision_target"]


def test_fast_training_does_not_touch_production(fast_model_dir):
    from tickguard.training.config import models_dir

    fraud_dir = modelstore.detector_models_dir(models_dir(), "fraud")
    if (fraud_dir / modelstore.PRODUCTION).exists():
        assert modelstore.resolve_model_dir(fraud_dir) != fast_model_dir.resolve()


def test_served_scores_equal_the_plain_pipelines(production_model, holdout):
    X = holdout[production_model.features].to_numpy()[:5000]
    pipeline = getattr(production_model.estimator, "pipeline", production_model.estimator)
    np.testing.assert_allclose(production_model.score(X), pipeline.predict_proba(X)[:, 1], rtol=0, atol=1e-12)


def test_production_model_is_served_compiled_and_equals_its_pipeline_on_the_whole_holdout(
    production_model, holdout
):
    assert production_model.scored_by == "compiled"
    X = holdout[production_model.features].to_numpy()
    compiled, reference = production_model.score(X), production_model.reference_score(X)
    np.testing.assert_allclose(compiled, reference, rtol=0, atol=1e-12)
    threshold = production_model.threshold
    assert np.array_equal(compiled >= threshold, reference >= threshold)


def test_fast_trained_model_is_served_compiled(fast_model_dir, holdout):
    from tickguard.scoring.predictor import Predictor

    artifact = Predictor.load(fast_model_dir, max_rows=100_000)
    assert artifact.scored_by == "compiled"
    X = holdout[artifact.features].to_numpy()[:20_000]
    np.testing.assert_allclose(artifact.score(X), artifact.reference_score(X), rtol=0, atol=1e-12)
