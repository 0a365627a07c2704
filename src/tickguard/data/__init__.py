"""Detectors' data sets: fetch, load, validate, split (public API used by the generator too).

The schema names come from `schema` (standard library only); the loading and splitting functions live
in `dataset` (pandas) and are imported on first use, so `tickguard data fetch` and the other light
commands run on an install without the numeric stack.
"""

from importlib import import_module

from tickguard.data.schema import (
    AMOUNT,
    COLUMNS,
    FEATURES,
    PCA_FEATURES,
    TARGET,
    TIME,
    DataSchemaError,
    check_columns,
    detector_columns,
)

_FROM_DATASET = (
    "ELAPSED",
    "SPLIT_DEFINITION",
    "features_and_target",
    "load_dataset",
    "load_detector_frame",
    "load_detector_frame",
    "stratified_split",
    "time_split",
)

__all__ = [
    "AMOUNT",
    "COLUMNS",
    "FEATURES",
    "PCA_FEATURES",
    "SPLIT_DEFINITION",
    "TARGET",
    "TIME",
    "DataSchemaError",
    "ELAPSED",
    "check_columns",
    "detector_columns",
    "features_and_target",
    "load_dataset",
    "load_detector_frame",
    "stratified_split",
    "time_split",
]


def __getattr__(name: str):
    if name in _FROM_DATASET:
        return getattr(import_module("tickguard.data.dataset"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
