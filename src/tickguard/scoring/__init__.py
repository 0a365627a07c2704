"""Prediction logic of the REST service, free of any web framework: parse, validate, score."""

from tickguard.scoring.errors import ScoringError
from tickguard.scoring.payloads import FeatureSchema, decode_json
from tickguard.scoring.predictor import ModelHolder, Predictor

__all__ = ["FeatureSchema", "ModelHolder", "Predictor", "ScoringError", "decode_json"]
