"""The credit-card fraud data set: fetch, load, validate, split (public API used by the generator too)."""

from tickguard.data.dataset import (
    AMOUNT,
    COLUMNS,
    FEATURES,
    PCA_FEATURES,
    SPLIT_DEFINITION,
    TARGET,
    TIME,
    DataSchemaError,
    check_columns,
    features_and_target,
    load_dataset,
    stratified_split,
    time_split,
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
    "check_columns",
    "features_and_target",
    "load_dataset",
    "stratified_split",
    "time_split",
]
