"""Re-evaluate a stored model on its detector's time-ordered holdout and compare with its card."""

from __future__ import annotations

from pathlib import Path

from tickguard import modelstore
from tickguard.data import load_detector_frame, time_split
from tickguard.detectors import DetectorSpec, load_detector
from tickguard.training import config
from tickguard.training.metrics import metrics_at


def evaluate(
    model: str | Path = "production",
    detector: DetectorSpec | str | None = None,
    data_path: Path | None = None,
) -> dict:
    """Holdout metrics of a stored model at its stored threshold, plus whether they match its card.

    The model is loaded as the service loads it (sha256-checked, checked against the detector, compiled
    when it can be); the holdout is the last 20% of the detector's rows in time order.
    """
    from tickguard.scoring.predictor import Predictor
    from tickguard.training.train import check_targets, targets_for

    spec = detector if isinstance(detector, DetectorSpec) else load_detector(detector)
    detector_dir = modelstore.detector_models_dir(config.models_dir(), spec.name)
    model_dir = modelstore.resolve_model_dir(detector_dir, str(model))
    artifact = Predictor.load(model_dir, max_rows=1, detector=spec)
    _, holdout_df = time_split(load_detector_frame(spec, data_path))
    X = holdout_df[artifact.features].to_numpy(dtype=float)
    y = holdout_df[spec.label.field].to_numpy(dtype=int)
    holdout = metrics_at(y, artifact.score(X), artifact.threshold)
    card_holdout = artifact.card.get("metrics", {}).get("holdout", {})
    matches = bool(card_holdout) and abs(card_holdout.get("auprc", -1) - holdout["auprc"]) < 1e-6
    stratified = artifact.card.get("metrics", {}).get("stratified")
    return {
        "version": artifact.version,
        "detector": spec.name,
        "path": str(model_dir),
        "holdout": holdout,
        "stratified_from_card": stratified,
        "matches_card": matches,
        "targets_met": check_targets(targets_for(spec.name), holdout, stratified),
    }
