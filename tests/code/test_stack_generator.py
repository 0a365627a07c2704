"""The holdout generator: encoding, pacing and ordering, retries, and real writes into influxd."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tickguard.errors import TickguardError
from tickguard.influx import parse_duration_s
from tickguard.stack.config import InfluxSettings
from tickguard.stack.generator import (
    FEATURE_FIELDS,
    InfluxWriter,
    LineEncoder,
    ReplayPlan,
    check_rows,
    replay,
    row_order,
)


def make_rows(count: int, start_index: int = 227_845, seed: int = 1) -> pd.DataFrame:
    """Rows shaped like the holdout (index = row number in the data file)."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(count, len(FEATURE_FIELDS))), columns=list(FEATURE_FIELDS))
    frame["Time"] = np.arange(count, dtype=np.float64) // 3  # many rows share a second, as in the data set
    frame["Amount"] = rng.gamma(2.0, 40.0, size=count)
    frame["Class"] = (rng.random(count) < 0.05).astype(np.int64)
    frame.index = pd.RangeIndex(start_index, start_index + count)
    return frame


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("250ms", 0.25),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
    ],
)
def test_parse_duration_accepts_units(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(TickguardError, match="duration '5 minutes'"):
        parse_duration_s("5 minutes")


def test_generate_accepts_a_one_day_duration(capsys) -> None:
    """`generate --duration 1d` failed while backfill accepted 1d: one grammar now (tickguard.influx)."""
    from tickguard.cli import main

    code = main(
        [
            "generate",
            "--duration",
            "1d",
            "--url",
            f"http://127.0.0.1:{closed_port()}",
            "--data",
            "/nonexistent.csv",
        ]
    )
    err = capsys.readouterr().err
    assert "duration" not in err, err  # the duration was accepted; what fails is the missing data file
    assert code == 1 and "nonexistent.csv" in err


def test_timestamps_are_unique_and_increasing_even_within_one_clock_tick() -> None:
    encoder = LineEncoder("transactions", "holdout-replay")
    stamps = [encoder.encode(np.zeros(len(FEATURE_FIELDS)), 0, f"tx{i}")[1] for i in range(20_000)]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False))


def test_line_protocol_has_fields_label_txid_and_one_low_cardinality_tag() -> None:
    encoder = LineEncoder("transactions", "holdout replay")
    line, ts = encoder.encode(np.arange(len(FEATURE_FIELDS), dtype=float) + 0.5, 1, "tx000042")
    stamp = line.rsplit(" ", 1)[1]
    assert line.startswith("transactions,source=holdout\\ replay ")
    assert int(stamp) == ts
    assert 'txid="tx000042"' in line and "Class=1i" in line
    for name in ("Time", "V1", "V28", "Amount"):
        assert f"{name}=" in line


def test_check_rows_names_the_field_and_row_of_a_bad_value() -> None:
    rows = make_rows(10)
    rows.iloc[4, rows.columns.get_loc("V3")] = np.nan
    with pytest.raises(TickguardError, match=r"holdout row 227849: field V3 is not a finite number"):
        check_rows(rows)


def test_check_rows_names_missing_columns() -> None:
    with pytest.raises(TickguardError, match="lack column.*Class"):
        check_rows(make_rows(3).drop(columns=["Class"]))


def test_row_order_file_order_shuffle_and_loop() -> None:
    assert list(row_order(5, ReplayPlan())) == [0, 1, 2, 3, 4]
    shuffled = list(row_order(50, ReplayPlan(shuffle=True, seed=3)))
    assert sorted(shuffled) == list(range(50)) and shuffled != list(range(50))
    looping = row_order(3, ReplayPlan(loop=True))
    assert [next(looping) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_loop_without_an_end_is_refused() -> None:
    with pytest.raises(TickguardError, match="--loop needs --count or --duration"):
        replay(make_rows(3), ReplayPlan(loop=True), write=lambda lines: None)


def test_unreachable_influxdb_is_retried_with_backoff_then_counted_as_failed() -> None:
    settings = InfluxSettings(f"http://127.0.0.1:{closed_port()}", "", "", "fraud", "autogen", "transactions")
    writer = InfluxWriter(settings, timeout_ms=2000)
    waits: list[float] = []
    try:
        report = replay(
            make_rows(25), ReplayPlan(rate=0, batch_size=10, max_retries=3), writer, sleep=waits.append
        )
    finally:
        writer.close()
    assert report.written == 0
    assert report.failed == 25  # three batches: 10 + 10 + 5
    assert report.retried == 3 * 25  # every batch retried three times
    assert waits[:3] == [0.25, 0.5, 1.0]  # exponential backoff per batch


@pytest.mark.tick
def test_replay_writes_every_row_once_into_real_influxdb(influx_server) -> None:
    influx_server.create_database("gen_test")
    settings = InfluxSettings(influx_server.url, "", "", "gen_test", "autogen", "transactions")
    rows = make_rows(1200)
    writer = InfluxWriter(settings)
    try:
        report = replay(rows, ReplayPlan(rate=0, batch_size=250), writer)
    finally:
        writer.close()
    assert (report.written, report.failed, report.retried) == (1200, 0, 0)
    stored = influx_server.select('SELECT "txid", "Class", "Amount", "Time" FROM "transactions"', "gen_test")
    assert len(stored) == 1200  # unique timestamps: no two rows merged
    assert {r["txid"] for r in stored} == {f"tx{i:06d}" for i in rows.index}
    by_txid = {r["txid"]: r for r in stored}
    first = rows.iloc[0]
    assert by_txid["tx227845"]["Amount"] == pytest.approx(first["Amount"])
    assert by_txid["tx227845"]["Class"] == int(first["Class"])
    tags = influx_server.select('SHOW TAG VALUES FROM "transactions" WITH KEY = "source"', "gen_test")
    assert [t["value"] for t in tags] == ["holdout-replay"]


@pytest.mark.tick
def test_replay_paces_to_the_rate_and_stops_at_the_count(influx_server) -> None:
    influx_server.create_database("gen_rate")
    settings = InfluxSettings(influx_server.url, "", "", "gen_rate", "autogen", "transactions")
    writer = InfluxWriter(settings)
    try:
        report = replay(make_rows(500), ReplayPlan(rate=200, count=300, shuffle=True), writer)
    finally:
        writer.close()
    assert report.written == 300
    # 300 points at 200/s cannot be sent in much less than 1.5 s (the first point goes at t=0).
    assert report.elapsed_s >= 1.4
    assert report.batches > 1  # paced sends go in small batches, not one burst


@pytest.mark.tick
def test_missing_database_is_a_clear_error_not_a_retry_loop(influx_server) -> None:
    settings = InfluxSettings(influx_server.url, "", "", "no_such_db", "autogen", "transactions")
    writer = InfluxWriter(settings)
    try:
        with pytest.raises(TickguardError, match="InfluxDB rejected a batch.*404"):
            replay(make_rows(5), ReplayPlan(rate=0), writer)
    finally:
        writer.close()


@pytest.mark.tick
def test_influxdb_restart_mid_replay_loses_nothing(tick_runtime_factory) -> None:
    """InfluxDB goes away for ~1.5 s during a paced replay: batches are retried, none fail, none doubled."""
    runtime = tick_runtime_factory(with_kapacitor=False)
    runtime.influx.create_database("gen_fault")
    settings = InfluxSettings(runtime.influx_url, "", "", "gen_fault", "autogen", "transactions")
    writer = InfluxWriter(settings, timeout_ms=2000)
    result: dict = {}
    sender = threading.Thread(
        target=lambda: result.update(
            report=replay(make_rows(900), ReplayPlan(rate=300, max_retries=10), writer)
        )
    )
    sender.start()
    time.sleep(0.8)
    runtime.influx.stop()
    time.sleep(1.5)
    runtime.influx.start()
    sender.join(60)
    writer.close()
    report = result["report"]
    assert (report.written, report.failed) == (900, 0)
    assert report.retried > 0
    rows = runtime.influx.select('SELECT count("txid") FROM "transactions"', "gen_fault")
    assert rows[0]["count"] == 900


# ---- any detector: its fields, its label as the data holds it, its tags -------------------------------


def test_shuttle_holdout_is_replayed_as_its_readings() -> None:
    from tickguard.detectors import load_detector
    from tickguard.stack.generator import ReplayFormat, load_holdout

    spec = load_detector("shuttle")
    from tests._deps import require
    from tickguard.data.config import data_settings

    require(data_settings().csv_for(spec).is_file(), "data/raw/shuttle.csv missing: run `make data`")
    rows = load_holdout(detector=spec)
    assert len(rows) == 9820 and list(rows.index[:2]) == [39277, 39278]  # last 20% of 49,097, file order
    fmt = ReplayFormat.of(spec)
    assert (fmt.measurement, fmt.label_field, fmt.id_field, fmt.extra_fields) == (
        "readings",
        "anomaly",
        None,
        (),
    )
    line, _ts = LineEncoder(fmt.measurement, "holdout-replay", fmt).encode(
        rows[list(fmt.feature_fields)].to_numpy()[0], rows["anomaly"].tolist()[0], "unused"
    )
    assert line.startswith("readings,source=holdout-replay f1=104.0,f2=-1.0,f3=105.0,")
    assert ",anomaly=1i " in line and "txid" not in line


def test_string_labels_stay_strings_and_tags_and_awkward_names_are_escaped(tmp_path: Path) -> None:
    from tests.code.test_stack_tasks import awkward_detector
    from tickguard.stack.generator import ReplayFormat

    spec = awkward_detector(tmp_path)
    fmt = ReplayFormat.of(spec)
    assert fmt.tags == (("site id", "north's"),) and fmt.id_field == "row id"
    line, _ts = LineEncoder(fmt.measurement, "replay", fmt).encode(np.array([1.5, 2.0, 3.0]), "yes", "r1")
    assert line.startswith("read\\ ings,site\\ id=north's,source=replay ")
    assert 'sensor\\ one=1.5,it\'s.two=2.0,say\\ "3"=3.0,is\\ bad="yes",row\\ id="r1" ' in line


@pytest.mark.tick
def test_replay_of_a_detector_with_string_labels_into_real_influxdb(influx_server, tmp_path: Path) -> None:
    from tests.code.test_stack_tasks import awkward_detector
    from tickguard.influx import quote_ident

    spec = awkward_detector(tmp_path)
    influx_server.create_database(spec.source.database)
    settings = InfluxSettings(
        influx_server.url, "", "", spec.source.database, "autogen", spec.source.measurement
    )
    rng = np.random.default_rng(5)
    rows = pd.DataFrame(rng.normal(size=(300, 3)), columns=list(spec.feature_fields))
    rows["is bad"] = np.where(rng.random(300) < 0.1, "yes", "no")
    writer = InfluxWriter(settings)
    try:
        report = replay(rows, ReplayPlan(rate=0, batch_size=100), writer, detector=spec)
    finally:
        writer.close()
    assert (report.written, report.failed) == (300, 0)
    stored = influx_server.select(
        f"SELECT * FROM {quote_ident(spec.source.measurement)}", spec.source.database
    )
    assert len(stored) == 300
    assert [r["is bad"] for r in stored] == rows["is bad"].tolist()  # strings, in replay order
    assert [r["sensor one"] for r in stored] == pytest.approx(rows["sensor one"].tolist())
    assert {r["site id"] for r in stored} == {"north's"}
