"""`tickguard backfill`: points the score task never saw get scored and written like live ones.

The integration tests run the real local pipeline (tests/fixtures/pipeline.py) and make a real gap by
disabling the `score` task while the generator writes, exactly what happens while a task is down.
"""

from __future__ import annotations

import json
import math
import time

import pandas as pd
import pytest
import requests

from tickguard.cli import main as tickguard_main
from tickguard.errors import TickguardError
from tickguard.influx import encode_line, format_field, parse_duration_ns, parse_time
from tickguard.ops.backfill import Backfiller, BackfillReport, feature_row, label_of, same_reason
from tickguard.stack.generator import txid_for

NOW = 1_800_000_000_000_000_000


# ---- pure functions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("now-10m", NOW - 600 * 10**9),
        ("-90s", NOW - 90 * 10**9),
        ("now+1h", NOW + 3600 * 10**9),
        ("1700000000", 1_700_000_000 * 10**9),
        ("1700000000123", 1_700_000_000_123 * 10**6),
        ("1700000000123456789", 1_700_000_000_123_456_789),
        ("2023-11-14T22:13:20Z", 1_700_000_000 * 10**9),
        ("2023-11-14T22:13:20.123456789Z", 1_700_000_000_123_456_789),
        ("2023-11-14T23:13:20+01:00", 1_700_000_000 * 10**9),
    ],
)
def test_parse_time_accepts_relative_absolute_and_epoch_times(text: str, expected: int) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "now-", "-10 parsecs", "2023-13-45T00:00:00Z", ""])
def test_parse_time_rejects_garbage_with_the_value_in_the_message(text: str) -> None:
    with pytest.raises(TickguardError, match=r"time|duration"):
        parse_time(text, NOW)


def test_parse_duration_combines_units() -> None:
    assert parse_duration_ns("1h30m") == 5400 * 10**9
    assert parse_duration_ns("250ms") == 250 * 10**6


def test_values_are_encoded_with_the_type_influxdb_has_for_the_field() -> None:
    assert format_field(0, "float") == "0.0"  # InfluxDB's JSON turns the float 0.0 into 0
    assert format_field(1, "integer") == "1i"
    assert format_field('say "hi" \\', "string") == '"say \\"hi\\" \\\\"'
    assert format_field(True, "boolean") == "true"
    assert format_field(None, "float") is None
    assert format_field(math.nan, None) is None  # InfluxDB cannot store NaN: the field is left out
    line = encode_line("m s", {"b": "x y", "a": "1,2", "empty": ""}, {"f=1": 1.5}, 42)
    assert line == "m\\ s,a=1\\,2,b=x\\ y f\\=1=1.5 42"


def test_feature_row_names_the_first_unusable_field() -> None:
    features = ("V1", "V2", "Amount")
    assert feature_row({"V1": 1, "V2": 2.5, "Amount": 3}, features) == ([1.0, 2.5, 3.0], "")
    assert feature_row({"V1": 1, "Amount": 3}, features) == (None, "missing feature field 'V2'")
    assert (
        feature_row({"V1": 1, "V2": "abc", "Amount": 3}, features)[1]
        == "field 'V2' is a string ('abc'), not a number"
    )
    assert (
        feature_row({"V1": True, "V2": 1, "Amount": 3}, features)[1]
        == "field 'V1' is a boolean, not a number"
    )


def test_a_point_left_unscored_for_the_reason_the_backfill_finds_is_not_rewritten() -> None:
    assert same_reason("warming up", "warming up")  # the live agent's words
    assert same_reason("backfill: warming up", "warming up")  # an earlier backfill's: a rerun writes nothing
    assert same_reason("missing feature field 'V2'", "missing feature field 'V2'")
    # Replayed in time order a point is never out of order; unscored either way, its live record stays.
    assert same_reason("out of order", "warming up")
    assert not same_reason(None, "warming up")  # no counterpart: the point is missing, and written
    assert not same_reason("warming up", "missing feature field 'v'")
    assert not same_reason("scoring service unreachable", "warming up")  # another reason: rewritten
    assert not same_reason("", "warming up")


def test_a_report_counts_points_left_as_live_apart_from_those_to_write() -> None:
    report = BackfillReport(
        0, 10, "x", source_points=10, already_scored=4, missing=2, unscored_counterparts=4
    )
    report.written, report.scored, report.unscorable, report.left_as_live = 3, 2, 1, 3
    assert report.to_score == report.written == 3
    assert "wrote 3 (2 scored, 1 unscorable), left 3 unscored as live (same reason)" in report.summary()
    dry = BackfillReport(0, 10, "x", source_points=10, missing=2, unscored_counterparts=4, dry_run=True)
    assert "would write at most 6 " in dry.summary()


def test_labels_are_read_like_the_agent_reads_them() -> None:
    assert [label_of(v) for v in (1, 0, 1.0, True, "fraud", "0", None)] == [
        True,
        False,
        True,
        True,
        True,
        False,
        None,
    ]


def test_labels_follow_the_served_models_positive_values_as_in_the_agent() -> None:
    from tickguard.agent.options import LabelRule

    rule = LabelRule(["anomalous", 4])  # a detector's [label] positive values, from the model card
    assert [label_of(v, rule) for v in ("anomalous", "normal", 4, 4.0, "4", 1, None)] == [
        True,
        False,
        True,
        True,
        True,
        False,
        None,
    ]


def test_counterparts_match_by_time_and_txid_when_both_have_one() -> None:
    match = Backfiller.match
    assert match(None, "tx1") is None
    assert match([("tx1", True)], "tx1") is True
    assert match([("tx2", True)], "tx1") is None  # same timestamp, another transaction
    assert match([(None, True)], "tx1") is True  # no txid on one side: the timestamp decides
    assert match([("tx1", False)], "tx1") is False  # emitted unscored


# ---- against the real pipeline ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def gap(pipeline, replay_rows) -> dict:
    """Rows replayed live, then with the score task disabled (the gap), then live again."""
    rows = replay_rows.iloc[40_000:40_900]
    client = pipeline.stack.runtime.kapacitor_client()
    first = pipeline.replay(rows.iloc[:300], rate=1000)
    # Disabling a task drops what it holds in flight: let the first third arrive first.
    pipeline.wait_settled(first.first_time_ns, first.last_time_ns, quiet_s=10)
    client.disable_task("score")
    try:
        missed = pipeline.replay(rows.iloc[300:600], rate=1000)
    finally:
        client.enable_task("score")
    last = pipeline.replay(rows.iloc[600:], rate=1000)
    pipeline.wait_settled(last.first_time_ns, last.last_time_ns, quiet_s=10)
    start, end = first.first_time_ns, last.last_time_ns
    counts = pipeline.counts(start, end)
    return {"rows": rows, "start": start, "end": end, "missed": missed, "counts": counts}


def test_the_gap_is_real_before_the_backfill(gap) -> None:
    assert gap["counts"]["in"] == 900
    assert gap["counts"]["out"] == 600, "the disabled task should have scored nothing of the middle third"


def test_backfill_scores_exactly_the_missing_points_and_is_idempotent(pipeline, gap) -> None:
    settings = pipeline.backfill_settings()
    report = Backfiller(settings).run(gap["start"], gap["end"])
    assert (report.source_points, report.already_scored, report.missing) == (900, 600, 300)
    assert report.written == report.scored == 300 and report.unscorable == 0
    counts = pipeline.counts(gap["start"], gap["end"])
    assert counts["out"] == counts["in"] == counts["scored"] == 900
    assert counts["backfilled"] == 300
    missed_txids = set(gap["missed"].txids)
    backfilled = pipeline.query(
        f'SELECT "txid" FROM "transactions_scored" WHERE time >= {gap["start"]} AND time <= {gap["end"]} '
        "AND backfilled = true"
    )
    assert {row["txid"] for row in backfilled} == missed_txids
    again = Backfiller(settings).run(gap["start"], gap["end"])
    assert (again.missing, again.unscored_counterparts, again.written) == (0, 0, 0)


def test_backfilled_points_look_like_live_ones_and_carry_the_service_scores(pipeline, gap) -> None:
    window = f"time >= {gap['start']} AND time <= {gap['end']}"
    live = pipeline.query(f'SELECT * FROM "transactions_scored" WHERE {window} AND latency_ms >= 0 LIMIT 1')[
        0
    ]
    filled = pipeline.query(f'SELECT * FROM "transactions_scored" WHERE {window} AND backfilled = true')
    assert filled
    live_fields = {k for k, v in live.items() if v is not None} - {"latency_ms"}
    filled_fields = {k for k, v in filled[0].items() if v is not None} - {"backfilled"}
    assert filled_fields == live_fields
    assert filled[0]["model_version"] == live["model_version"]
    assert filled[0]["threshold"] == live["threshold"]
    # The scores are the service's for the same transactions.
    rows = gap["rows"].set_axis([txid_for(i) for i in gap["rows"].index])
    card = requests.get(f"{pipeline.stack.api_url}/model", timeout=10).json()
    by_txid = {row["txid"]: row for row in filled}
    txids = sorted(by_txid)
    body = {"columns": card["features"], "data": rows.loc[txids, card["features"]].to_numpy().tolist()}
    answer = requests.post(f"{pipeline.stack.api_url}/predict", json=body, timeout=30).json()
    for txid, prediction in zip(txids, answer["predictions"], strict=True):
        point = by_txid[txid]
        assert point["score"] == pytest.approx(prediction["score"], abs=1e-12)
        assert point["anomaly"] == prediction["anomaly"]
        label = bool(rows.loc[txid, "Class"])
        assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (
            int(label and point["anomaly"]),
            int(not label and point["anomaly"]),
            int(label and not point["anomaly"]),
            int(not label and not point["anomaly"]),
        )


def test_cli_rescores_history_into_a_named_measurement(pipeline, gap, capsys) -> None:
    code = tickguard_main(
        [
            "backfill",
            "--from", str(gap["start"]),
            "--to", str(gap["end"]),
            "--url", pipeline.stack.influx_url,
            "--api-url", pipeline.stack.api_url,
            "--measurement", "transactions_rescored",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["written"] == report["missing"] == 900
    rescored = pipeline.count("transactions_rescored", "score", gap["start"], gap["end"])
    assert rescored == 900
    # Same model, same transactions: the re-scored history equals the live one.
    window = f"time >= {gap['start']} AND time <= {gap['end']}"
    old = {
        r["txid"]: r["score"]
        for r in pipeline.query(f'SELECT "txid", "score" FROM "transactions_scored" WHERE {window}')
    }
    new = {
        r["txid"]: r["score"]
        for r in pipeline.query(f'SELECT "txid", "score" FROM "transactions_rescored" WHERE {window}')
    }
    assert new.keys() == old.keys()
    assert all(new[t] == pytest.approx(old[t], abs=1e-12) for t in new)


def test_dry_run_counts_and_writes_nothing(pipeline, gap) -> None:
    report = Backfiller(pipeline.backfill_settings(), target="transactions_dry", dry_run=True).run(
        gap["start"], gap["end"]
    )
    assert report.missing == 900 and report.written == 0
    assert pipeline.query('SHOW MEASUREMENTS WITH MEASUREMENT = "transactions_dry"') == []


def test_cli_reports_a_bad_time_in_one_line(capsys) -> None:
    assert tickguard_main(["backfill", "--from", "last tuesday"]) == 1
    err = capsys.readouterr().err
    assert "last tuesday" in err and "Traceback" not in err


# ---- backfill equals live: the task's own definition decides ------------------------------------------

VARIANT_SOURCE = "tx_variant"
VARIANT_SCORED = "tx_variant_scored"
VARIANT_RESCORED = "tx_variant_rescored"


def variant_script(threshold: float) -> str:
    """A scoring task whose options differ from the agent's environment: its own threshold, no label (its
    database comes from the task's dbrps, as Kapacitor's API reports them)."""
    return f"""var variant_threshold = {threshold!r}
stream
    |from()
        .measurement('{VARIANT_SOURCE}')
    @tickguard()
        .threshold(variant_threshold)
        .labelField('')
    |influxDBOut()
        .database('fraud')
        .retentionPolicy('autogen')
        .measurement('{VARIANT_SCORED}')
        .precision('ns')
        .flushInterval(100ms)
"""


@pytest.fixture(scope="module")
def variant(pipeline, replay_rows) -> dict:
    """Rows scored live by task `score_variant` (threshold between the scores, labelField('')), from a source
    whose `Amount` was once written as a boolean, then re-scored by `tickguard backfill --task score_variant`."""
    from tickguard.influx import encode_line
    from tickguard.stack.generator import InfluxWriter, ReplayPlan, replay

    rows = replay_rows.iloc[41_000:41_200]
    frauds = replay_rows[replay_rows["Class"] == 1].iloc[:40]
    rows = rows.drop(index=frauds.index, errors="ignore").iloc[: 200 - len(frauds)]
    rows = pd.concat([rows, frauds])
    api = pipeline.stack.api_url
    card = requests.get(f"{api}/model", timeout=10).json()
    answer = requests.post(
        f"{api}/predict",
        json={"columns": card["features"], "data": rows[card["features"]].to_numpy().tolist()},
        timeout=30,
    ).json()
    service_threshold = float(answer["threshold"])
    below = sorted(p["score"] for p in answer["predictions"] if p["score"] < service_threshold)
    threshold = float(below[len(below) * 3 // 4])  # a quarter of the unflagged rows get flagged by the task
    influx = pipeline.stack.runtime.influx
    # Defect (c): the source's Amount had another type once (a month ago, another shard). SHOW FIELD KEYS lists
    # "boolean" before "float", and the backfill took the first type it saw and dropped the field.
    month_ago = time.time_ns() - 30 * 86_400 * 10**9
    influx.write_lines([encode_line(VARIANT_SOURCE, {}, {"Amount": True, "note": "old"}, month_ago)], "fraud")
    client = pipeline.stack.runtime.kapacitor_client()
    client.define_task("score_variant", variant_script(threshold), dbrps=[("fraud", "autogen")])
    try:
        writer = InfluxWriter(pipeline.stack.influx_settings())
        try:
            report = replay(rows, ReplayPlan(rate=1000, batch_size=50), writer, measurement=VARIANT_SOURCE)
        finally:
            writer.close()
        deadline = time.monotonic() + 60
        window = f"time >= {report.first_time_ns} AND time <= {report.last_time_ns}"
        while time.monotonic() < deadline:
            live = pipeline.query(f'SELECT * FROM "{VARIANT_SCORED}" WHERE {window}')
            if len(live) >= len(rows):
                break
            time.sleep(0.25)
        code = tickguard_main(
            [
                "backfill", "--task", "score_variant", "--all",
                "--from", str(report.first_time_ns), "--to", str(report.last_time_ns),
                "--url", pipeline.stack.influx_url, "--api-url", api,
                "--kapacitor-url", pipeline.stack.kapacitor_url,
                "--measurement", VARIANT_RESCORED, "--json",
            ]
        )  # fmt: skip
        assert code == 0
        rescored = pipeline.query(f'SELECT * FROM "{VARIANT_RESCORED}" WHERE {window}')
    finally:
        client.delete_task("score_variant")
    return {
        "live": live,
        "rescored": rescored,
        "threshold": threshold,
        "service_threshold": service_threshold,
        "rows": len(rows),
    }


def present(point: dict) -> dict:
    """The fields and tags a point has (InfluxQL fills absent ones with None)."""
    return {key: value for key, value in point.items() if value is not None}


def test_the_variant_task_scored_every_point_live(variant) -> None:
    assert len(variant["live"]) == variant["rows"]
    assert all(point["scored"] is True for point in variant["live"])


def test_backfill_flags_with_the_tasks_threshold_not_the_services(variant) -> None:
    """Defect (a): the backfill used the service's threshold; points scored between the two differed."""
    threshold = variant["threshold"]
    between = [p for p in variant["rescored"] if threshold <= p["score"] < variant["service_threshold"]]
    assert between, "the test needs scores between the task's and the service's thresholds"
    assert all(p["anomaly"] is True and p["threshold"] == threshold for p in between)
    assert all(p["anomaly"] == (p["score"] >= threshold) for p in variant["rescored"])


def test_backfill_keeps_label_field_empty_and_writes_no_confusion_counts(variant) -> None:
    """Defect (b): `.labelField('')` could not be reproduced, so tp/fp/fn/tn appeared on backfilled points."""
    for point in variant["rescored"]:
        assert not {"tp", "fp", "fn", "tn"} & present(point).keys()


def test_backfill_reads_a_field_that_once_had_another_type_as_its_number(variant) -> None:
    """Defect (c): a kept field (Amount) once written as a boolean was dropped from backfilled points."""
    assert all(isinstance(point.get("Amount"), int | float) for point in variant["rescored"])


def test_backfilled_points_equal_live_ones_field_by_field(variant) -> None:
    """Every re-scored point equals the point the live task wrote, except `backfilled` (and `latency_ms`,
    which only a live point has: the time the agent held it)."""
    live = {point["time"]: present(point) for point in variant["live"]}
    rescored = {point["time"]: present(point) for point in variant["rescored"]}
    assert rescored.keys() == live.keys()
    for stamp, point in rescored.items():
        assert point.pop("backfilled") is True
        expected = dict(live[stamp])
        expected.pop("latency_ms")
        assert point.keys() == expected.keys(), stamp
        for name, value in expected.items():
            if isinstance(value, float):
                assert point[name] == pytest.approx(value, abs=1e-12), (stamp, name)
            else:
                assert point[name] == value, (stamp, name)


def test_a_healed_task_is_backfilled_with_its_own_definition(pipeline, variant) -> None:
    """The watchdog's heal-with-backfill reads the healed task, as the command does."""
    from tickguard.ops.backfill import settings_for_heal

    client = pipeline.stack.runtime.kapacitor_client()
    client.define_task("score_variant", variant_script(0.25), dbrps=[("fraud", "autogen")], enabled=False)
    try:
        settings = settings_for_heal(
            pipeline.backfill_settings(kapacitor_url=pipeline.stack.kapacitor_url), "score_variant"
        )
    finally:
        client.delete_task("score_variant")
    assert (settings.threshold, settings.label_field) == (0.25, "")
    assert (settings.source_measurement, settings.scored_measurement) == (VARIANT_SOURCE, VARIANT_SCORED)
