"""`tickguard detectors list|show|validate|new` on real files and a real influxd, and the frames they lead to.

`new --csv` runs on the real Statlog Shuttle CSV and on a generated CSV whose column names hold spaces,
hyphens, dots, quotes and a comma; the written detector must load, and `load_detector_frame` must read
the CSV back through it (so a name that did not survive TOML or CSV quoting fails here). `new
--influx-url` reads SHOW FIELD KEYS from a real influxd, including a field stored with two types.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests._deps import require
from tickguard.cli import main
from tickguard.data.config import data_settings
from tickguard.data.schema import DataSchemaError
from tickguard.detectors import load_detector, load_detector_file

AWKWARD_FEATURES = ["reading one", "temp-c", "volt.max", 'say "hi"', "it's", "a,b"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_validate(capsys, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "detectors", "list")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["fraud", "shuttle", "waterflow"]
    assert "fraud.autogen.transactions -> transactions_scored; 30 features; Class in [1]" in out

    code, out, _ = run(capsys, "detectors", "show", "fraud")
    shown = json.loads(out)
    assert code == 0 and shown["sha256"] == load_detector("fraud").sha256
    assert shown["model_columns"][0] == "hour_sin(Time)" and shown["spec"]["threshold"]["target"] == 0.9

    bad = tmp_path / "fraud.toml"
    bad.write_text(load_detector("fraud").path.read_text().replace('policy = "precision"', 'policy = "best"'))
    good = load_detector("shuttle").path
    code, out, err = run(capsys, "detectors", "validate", str(good), str(bad))
    assert code == 1
    assert out.startswith(f"{good}: ok (shuttle, 9 features, sha256 ")
    assert "threshold.policy: unknown value 'best' (choose from precision, fixed)" in err
    assert f"{bad}:" in err or "fraud.toml:" in err


def test_new_from_the_shuttle_csv_reproduces_the_bundled_features(capsys, tmp_path: Path) -> None:
    shuttle_csv = data_settings().csv_for(load_detector("shuttle"))
    require(shuttle_csv.is_file(), f"{shuttle_csv} missing: run `make data`")
    out_file = tmp_path / "myshuttle.toml"
    argv = [
        "detectors",
        "new",
        "myshuttle",
        "--csv",
        str(shuttle_csv),
        "--label",
        "anomaly",
        "--positive",
        "1",
    ]
    code, out, _ = run(capsys, *argv, "--out", str(out_file))
    assert code == 0, out
    spec = load_detector_file(out_file)
    bundled = load_detector("shuttle")
    assert spec.feature_fields == bundled.feature_fields
    assert spec.label == bundled.label
    assert spec.time.column == "" and spec.time.synthetic_step_seconds == 1.0
    assert "49097 rows" in spec.description and "one row every 1 s" in spec.description

    code, _, err = run(capsys, *argv, "--out", str(out_file))
    assert code == 1 and "exists: use --force to overwrite it" in err
    code, _, err = run(capsys, *argv[:-1], "7", "--out", str(out_file), "--force")
    assert code == 1 and "label column 'anomaly' has no value '7' (values seen: 0, 1)" in err
    code, _, _ = run(capsys, *argv, "--out", str(out_file), "--force")
    assert code == 0


def write_awkward_csv(path: Path) -> None:
    """Rows out of time order, a string label with three categories, an id and a text column."""
    rows = [
        ("2024-05-01T10:00:02Z", "tx-3", "ok", "north", [3.0, -1, 2.5, 0, 1e3, 7]),
        ("2024-05-01T10:00:00Z", "tx-1", "fraud", "south", [1.0, 2, 0.5, 1, 2e3, 8]),
        ("2024-05-01T10:00:01Z", "tx-2", "review", "east", [2.0, 3, 1.5, 0, 3e3, 9]),
        ("2024-05-01T10:00:03Z", "tx-4", "chargeback", "west", [4.0, 4, 4.5, 1, 4e3, 10]),
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["event time", "tx.id", "the label", "region", *AWKWARD_FEATURES])
        for when, txid, label, region, values in rows:
            writer.writerow([when, txid, label, region, *values])


def test_new_from_a_csv_with_awkward_names_round_trips_to_the_frame(capsys, tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from tickguard.data.dataset import ELAPSED, load_detector_frame

    data = tmp_path / "odd data.csv"
    write_awkward_csv(data)
    out_file = tmp_path / "dets" / "odd.toml"
    code, out, err = run(
        capsys,
        "detectors", "new", "odd", "--csv", str(data), "--label", "the label",
        "--positive", "fraud", "--positive", "chargeback",
        "--time", "event time", "--id", "tx.id", "--out", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    assert "not numeric, left out: region" in err
    spec = load_detector_file(out_file)
    assert spec.feature_fields == tuple(AWKWARD_FEATURES)
    assert spec.label.positive == ("fraud", "chargeback")
    assert (spec.time.column, spec.time.unit, spec.output.id_field) == ("event time", "rfc3339", "tx.id")

    with pytest.raises(DataSchemaError, match="unexpected columns: region"):
        load_detector_frame(spec, data)  # region is not a declared column
    frame_csv = tmp_path / "declared.csv"
    pd.read_csv(data).drop(columns=["region"]).to_csv(frame_csv, index=False)
    frame = load_detector_frame(spec, frame_csv)
    assert list(frame["tx.id"]) == ["tx-1", "tx-2", "tx-3", "tx-4"]  # time order, not file order
    assert list(frame["the label"]) == [1, 0, 0, 1]  # fraud, review, ok, chargeback
    assert list(frame[ELAPSED]) == [0.0, 1.0, 2.0, 3.0]
    assert list(frame["it's"]) == [2000.0, 3000.0, 1000.0, 4000.0]
    assert list(frame['say "hi"']) == [1.0, 0.0, 0.0, 1.0]
    assert frame["a,b"].dtype == "float64" and list(frame["a,b"]) == [8.0, 9.0, 7.0, 10.0]


def test_new_refuses_bad_arguments(capsys, tmp_path: Path) -> None:
    data = tmp_path / "x.csv"
    write_awkward_csv(data)
    base = ["detectors", "new", "odd", "--csv", str(data), "--positive", "fraud"]
    cases = {
        ("--label", "nope"): "no column 'nope' for --label",
        (
            "--label",
            "the label",
            "--time",
            "region",
        ): "column 'region' holds neither numbers nor RFC 3339 times",
        (
            "--label",
            "the label",
            "--out",
            str(tmp_path / "other.toml"),
        ): "a detector file is named <name>.toml",
    }
    for extra, message in cases.items():
        code, _, err = run(capsys, *base, *extra)
        assert code == 1 and message in err, err
    code, _, err = run(
        capsys, "detectors", "new", "Bad Name", "--csv", str(data), "--label", "x", "--positive", "1"
    )
    assert code == 1 and "'Bad Name' is not a detector name" in err


@pytest.mark.tick
def test_new_from_a_live_measurement(capsys, tmp_path: Path, influx_server) -> None:
    database = "detectors_new"
    influx_server.create_database(database)
    old, new = 86_400 * 400 * 10**9, 1_700_000_000 * 10**9  # two shard groups, far apart
    influx_server.write_lines(
        [
            # field keys escape space, comma and equals in line protocol; quotes and dots need nothing
            f'sensor\\ data,site=a reading\\ one=1.5,temp-c=2i,volt.max=3,say\\ "hi"=4,a\\,b=5,'
            f'mixed="text once",state="bad",note="n",ok=true {old}',
            f'sensor\\ data,site=a reading\\ one=1.5,temp-c=2i,volt.max=3,say\\ "hi"=4,a\\,b=5,'
            f'mixed=2.5,state="good",note="n",ok=false {new}',
        ],
        database,
    )
    out_file = tmp_path / "live.toml"
    code, out, err = run(
        capsys,
        "detectors", "new", "live", "--influx-url", influx_server.url, "--database", database,
        "--measurement", "sensor data", "--label", "state", "--positive", "bad", "--tag", "site=a",
        "--out", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    spec = load_detector_file(out_file)
    # numeric fields in SHOW FIELD KEYS order; `mixed` was a string in one shard and a float in the other
    assert set(spec.feature_fields) == {"reading one", "temp-c", "volt.max", 'say "hi"', "a,b", "mixed"}
    assert spec.label.field == "state" and spec.label.positive == ("bad",)
    assert (spec.source.database, spec.source.measurement, dict(spec.source.tags)) == (
        database,
        "sensor data",
        {"site": "a"},
    )
    assert (spec.time.column, spec.time.unit) == ("time", "rfc3339")
    assert "not numeric, left out: note, ok" in err

    code, _, err = run(
        capsys,
        "detectors", "new", "live", "--influx-url", influx_server.url, "--database", database,
        "--measurement", "sensor data", "--label", "state", "--out", str(out_file), "--force",
    )  # fmt: skip
    assert code == 1 and "field 'state' holds strings: say which are anomalous with --positive" in err
    code, _, err = run(
        capsys,
        "detectors", "new", "empty", "--influx-url", influx_server.url, "--database", database,
        "--measurement", "nothing here", "--label", "state", "--out", str(tmp_path / "empty.toml"),
    )  # fmt: skip
    assert code == 1 and "has no fields (no points yet?)" in err
