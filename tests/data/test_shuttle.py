"""The real Statlog Shuttle data (`make data` puts it in data/raw/shuttle.csv): size, balance, splits."""

from __future__ import annotations

import pytest

from tests._deps import require
from tickguard.data import ELAPSED, load_detector_frame, stratified_split, time_split
from tickguard.data.config import data_settings
from tickguard.data.schema import read_header
from tickguard.detectors import load_detector


@pytest.fixture(scope="module")
def shuttle():
    spec = load_detector("shuttle")
    path = data_settings().csv_for(spec)
    require(path.is_file(), f"{path} missing: run `make data`")
    return spec, path, load_detector_frame(spec)


def test_file_has_the_declared_columns_and_counts(shuttle):
    spec, path, frame = shuttle
    assert read_header(path) == [*spec.feature_fields, "anomaly"]
    assert len(frame) == 49_097 and int(frame["anomaly"].sum()) == 3_511  # 7.2% anomalies
    assert all(frame[name].dtype == "float64" for name in spec.feature_fields)


def test_synthetic_time_and_splits(shuttle):
    _, _, frame = shuttle
    assert frame[ELAPSED].tolist()[:3] == [0.0, 1.0, 2.0] and frame[ELAPSED].is_monotonic_increasing
    train, holdout = time_split(frame)
    assert (len(train), int(train["anomaly"].sum()), len(holdout), int(holdout["anomaly"].sum())) == (
        39_277,
        2_823,
        9_820,
        688,
    )
    train, test = stratified_split(frame, label="anomaly")
    assert len(test) == 9_820 and int(test["anomaly"].sum()) == 702
