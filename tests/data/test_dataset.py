"""The real data set: identity, schema, cleanliness, class balance and the fixed splits."""

from __future__ import annotations

import numpy as np

from tickguard.data import COLUMNS, FEATURES, TARGET, stratified_split, time_split
from tickguard.data.config import CSV_SHA256, data_settings
from tickguard.data.dataset import read_header
from tickguard.modelstore import sha256_of


def test_file_is_the_reference_copy(dataset):
    assert sha256_of(data_settings().csv_path) == CSV_SHA256


def test_schema_and_order(dataset):
    assert read_header(data_settings().csv_path) == list(COLUMNS)
    assert list(dataset.columns) == list(COLUMNS)
    assert FEATURES[0] == "Time" and FEATURES[-1] == "Amount" and len(FEATURES) == 30


def test_no_missing_values_and_binary_target(dataset):
    assert not dataset.isna().any().any()
    assert set(np.unique(dataset[TARGET])) == {0, 1}


def test_size_and_class_ratio(dataset):
    assert len(dataset) == 284_807
    assert int(dataset[TARGET].sum()) == 492
    assert abs(dataset[TARGET].mean() - 0.001727) < 1e-5


def test_rows_are_time_ordered(dataset):
    assert dataset["Time"].is_monotonic_increasing


def test_time_split_sizes_and_order(dataset):
    train, holdout = time_split(dataset)
    assert len(train) == int(0.8 * len(dataset)) == 227_845
    assert len(holdout) == 56_962
    assert int(holdout[TARGET].sum()) == 75
    assert train.index.max() < holdout.index.min()
    assert train["Time"].max() <= holdout["Time"].min()


def test_stratified_split_is_stratified_and_reproducible(dataset):
    train, test = stratified_split(dataset)
    assert len(test) == 56_962 and int(test[TARGET].sum()) == 98
    assert set(train.index).isdisjoint(test.index)
    again, _ = stratified_split(dataset)
    assert train.index.equals(again.index)
