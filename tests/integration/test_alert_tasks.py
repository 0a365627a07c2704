"""fraud's per-point alert task (template tickguard_point_alert, vars from detectors/fraud.toml) on the real
kapacitord: one alert id per flagged transaction, and each alert as one human-readable line in the alert log
plus one JSON record in alerts.json.

No UDF is needed: the alert task reads transactions_scored, so the test writes scored points directly.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests._wait import poll
from tickguard.detectors import load_detector
from tickguard.stack import deploy, tasks

pytestmark = pytest.mark.tick

GROUP_IDLE = "1s"  # fraud_alert's group_idle, short so the test sees the groups deleted
LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z) (?P<level>[A-Z]+) (?P<id>\S+)  (?P<message>.+)$"
)


def scored_point(txid: str, amount: float, score: float, anomaly: bool, time_ns: int) -> str:
    flag = "true" if anomaly else "false"
    return (
        f'transactions_scored,source=test txid="{txid}",Amount={amount},score={score},'
        f"anomaly={flag},scored=true,Class=1i {time_ns}"
    )


def define_alert_task(runtime, spec, outputs: dict[str, Path]) -> None:
    """The detector's per-point alert task, made from its template as `tickguard deploy` makes it, with its
    alerts written to `outputs` and a short group_idle."""
    overrides = {**tasks.alert_output_vars(outputs["log"], outputs["json"]), "group_idle": GROUP_IDLE}
    planned = {t.task_id: t for t in deploy.plan(spec, overrides)}[f"{spec.name}_alert"]
    runtime.create_database(spec.source.database)
    client = runtime.kapacitor_client()
    client.define_template(planned.template_id, deploy.read_templates()[planned.template_id])
    task = client.define_task_from_template(
        planned.task_id, planned.template_id, dbrps=planned.dbrps, vars=planned.vars
    )
    assert task.executing, task.error


@pytest.fixture
def fraud_alert(tick_runtime, tmp_path: Path):
    """tick_runtime with fraud's alert task made from its template, writing its alerts under tmp_path."""
    outputs = {"log": tmp_path / "alerts.log", "json": tmp_path / "alerts.json"}
    define_alert_task(tick_runtime, load_detector("fraud"), outputs)
    return tick_runtime, outputs


def test_each_flagged_transaction_is_its_own_alert_with_one_line_and_one_json_record(fraud_alert) -> None:
    runtime, outputs = fraud_alert
    now = time.time_ns()
    runtime.influx.write_lines(
        [
            scored_point("tx101", 12.5, 0.9871, True, now),
            scored_point("tx202", 480.0, 0.9512, True, now + 2_000_000_000),  # 2 s later: not one alert
            scored_point("tx303", 3.0, 0.0100, False, now + 3_000_000_000),  # not flagged: no alert
        ],
        "fraud",
    )

    def history():
        try:
            rows = runtime.influx.select(
                'SELECT "value", "duration", "message", "txid", "level", "alertID" FROM "alerts"',
                "chronograf",
            )
        except Exception:  # the chronograf database appears with the first alert
            return []
        return rows if len(rows) >= 2 else []

    rows = poll(history, 30, 0.25)
    assert {r["alertID"] for r in rows} == {"fraud_alert:tx101", "fraud_alert:tx202"}, rows
    assert len(rows) == 2
    for row in rows:
        assert row["duration"] == 0, row  # a fixed id would give the second alert a duration of 2 s
        assert row["level"] == "CRITICAL"
        assert row["alertID"] == f"fraud_alert:{row['txid']}"
        assert f"txid {row['txid']}" in row["message"] and row["message"].startswith("fraud flagged: ")
    tag_keys = {t["tagKey"] for t in runtime.influx.select('SHOW TAG KEYS FROM "alerts"', "chronograf")}
    assert "alert_key" not in tag_keys, "the grouping helper tag must not reach the alert history"
    assert {"alertName", "alertID", "level", "triggerType"} <= tag_keys

    lines = poll(lambda: _lines(outputs["log"], 2), 15, 0.25)
    parsed = sorted((LINE.match(line) for line in lines), key=lambda m: m and m["id"])
    assert all(parsed), f"not '<time> <level> <id>  <message>' lines:\n{lines}"
    assert [(m["level"], m["id"], m["message"]) for m in parsed] == [
        ("CRITICAL", "fraud_alert:tx101", "fraud flagged: txid tx101, Amount 12.5, score 0.987"),
        ("CRITICAL", "fraud_alert:tx202", "fraud flagged: txid tx202, Amount 480, score 0.951"),
    ]

    records = [json.loads(line) for line in poll(lambda: _lines(outputs["json"], 2), 15, 0.25)]
    assert sorted(r["id"] for r in records) == ["fraud_alert:tx101", "fraud_alert:tx202"]
    assert all(r["level"] == "CRITICAL" and r["duration"] == 0 for r in records)
    assert {m["time"] for m in parsed} == {r["time"] for r in records}, "the line and the record disagree"


def test_flagged_transaction_groups_are_deleted_when_idle(fraud_alert) -> None:
    """Memory: the per-transaction groups do not pile up in the task (group_idle, then deleted)."""
    runtime, outputs = fraud_alert
    now = time.time_ns()
    runtime.influx.write_lines(
        [scored_point(f"tx{i}", 1.0, 0.99, True, now + i * 1_000_000) for i in range(1, 21)], "fraud"
    )
    assert poll(lambda: _lines(outputs["log"], 20), 30, 0.25), "20 flagged points did not give 20 alert lines"
    client = runtime.kapacitor_client()

    def alert_cardinality() -> int:
        stats = client.get_task("fraud_alert").stats.get("node-stats", {})
        (node,) = [name for name in stats if name.startswith("alert")]
        return int(stats[node]["working_cardinality"])

    assert poll(lambda: alert_cardinality() == 0, 20, 0.5), f"groups still open: {alert_cardinality()}"


def _lines(path: Path, at_least: int) -> list[str]:
    """The file's lines once it has at least `at_least` of them, else []."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return lines if len(lines) >= at_least else []


def test_a_windowed_detectors_alert_names_the_series_value_and_expected_range(tick_runtime, tmp_path) -> None:
    """No id field but `[windows] group_by`: one alert ID per series, the message says which and why."""
    path = tmp_path / "pipes.toml"
    path.write_text(
        'name = "pipes"\nfeatures = ["flow"]\n'
        '[source]\ndatabase = "pipes"\nmeasurement = "flow"\n'
        '[time]\ncolumn = ""\nsynthetic_step_seconds = 1\n'
        '[output]\nmeasurement = "flow_scored"\n'
        '[windows]\ngroup_by = ["station", "line"]\nlags = [1]\nexpected_range = { window = 0, k = 3.0 }\n'
        '[[windows.rolling]]\npoints = 4\nstats = ["median", "mad"]\n'
        '[anomaly]\nmodel = "robust_zscore"\ncontamination = 0.01\n'
    )
    log = tmp_path / "alerts.log"
    define_alert_task(tick_runtime, load_detector(path), {"log": log, "json": tmp_path / "alerts.json"})
    now = time.time_ns()
    point = (
        "flow_scored,station={s},line={l} flow={v},expected_low=1.5,expected_high=2.25,score={p},"
        "anomaly={a},scored=true {t}"
    )
    tick_runtime.influx.write_lines(
        [
            point.format(s="north", l="a", v=9.5, p=0.97, a="true", t=now),
            point.format(s="south", l="b", v=0.1, p=0.91, a="true", t=now + 1_000_000),
            point.format(s="south", l="b", v=2.0, p=0.10, a="false", t=now + 2_000_000),
        ],
        "pipes",
    )
    lines = poll(lambda: _lines(log, 2), 30, 0.25)
    parsed = sorted((LINE.match(line) for line in lines), key=lambda m: m and m["id"])
    assert [(m["id"], m["message"]) for m in parsed] == [
        (
            "pipes_alert:north/a",
            "pipes flagged: station north, line a, flow 9.5 (expected 1.500 .. 2.250), score 0.970",
        ),
        (
            "pipes_alert:south/b",
            "pipes flagged: station south, line b, flow 0.1 (expected 1.500 .. 2.250), score 0.910",
        ),
    ]
    rows = poll(
        lambda: _alert_rows(tick_runtime, 2),
        15,
        0.25,
    )
    assert {(r["alertID"], r["station"]) for r in rows} == {
        ("pipes_alert:north/a", "north"),
        ("pipes_alert:south/b", "south"),
    }


def _alert_rows(runtime, at_least: int) -> list[dict]:
    try:
        rows = runtime.influx.select('SELECT * FROM "alerts"', "chronograf")
    except Exception:  # the chronograf database appears with the first alert
        return []
    return rows if len(rows) >= at_least else []
