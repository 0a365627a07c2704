"""Prediction logic of the REST service, free of any web framework: parse, validate, score.

Names are resolved on first use: `tickguard.scoring.payloads` (the /predict contract) is imported by
the UDF agent, whose image has no numpy, so importing the package must not import the predictor.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ScoringError": "tickguard.scoring.errors",
    "FeatureSchema": "tickguard.scoring.payloads",
    "decode_json": "tickguard.scoring.payloads",
    "ModelHolder": "tickguard.scoring.predictor",
    "ModelRegistry": "tickguard.scoring.predictor",
    "Predictor": "tickguard.scoring.predictor",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tickguard.scoring' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
