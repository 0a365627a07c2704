"""Re-evaluate a stored model on the time-ordered holdout and compare with its card."""

from __future__ import annotations

from pathlib import Path

from tickguard import modelstore
from tickguard.data import TARGET, load_dataset, time_split
from tickguard.training import config
from tickguard.training.metrics import metrics_at


def evaluate(model: str | Path = "production", data_path: Path | None = None) -> dict:
    """Holdout metrics of a stored model at its stored threshold, plus whether they match its card."""
    from tickguard.scoring.predictor import Predictor  # scores as the service does (compiled if it can)

    fraud_dir = modelstore.detector_models_dir(config.models_dir(), modelstore.DEFAULT_DETECTOR)
    model_dir = modelstore.resolve_model_dir(fraud_dir, str(model))
    artifact = Predictor.load(model_dir, max_rows=1)
    _, holdout_df = time_split(load_dataset(data_path))
    X = holdout_df[artifact.features].to_numpy(dtype=float)
    y = holdout_df[TARGET].to_numpy(dtype=int)
    holdout = metrics_at(y, artifact.score(X), artifact.threshold)
    card_holdout = artifact.card.get("metrics", {}).get("holdout", {})
    matches = bool(card_holdout) and abs(card_holdout.get("auprc", -1) - holdout["auprc"]) < 1e-6
    report = {
        "version": artifact.version,
        "path": str(model_dir),
        "holdout": holdout,
        "stratified_from_card": artifact.card.get("metrics", {}).get("stratified"),
        "matches_card": matches,
    }
    from tickguard.training.train import TARGETS

    report["targets_met"] = {
        "holdout_auprc": holdout["auprc"] >= TARGETS["holdout_auprc_min"],
        "holdout_recall": holdout["recall"] >= TARGETS["holdout_recall_min"],
        "holdout_precision": holdout["precision"] >= TARGETS["holdout_precision_min"],
        "stratified_auprc": (report["stratified_from_card"] or {}).get("auprc", 0)
        >= TARGETS["stratified_auprc_min"],
    }
    return report
