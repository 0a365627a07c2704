"""End to end on the local runtime: generator -> influxd -> kapacitord (our TICKscripts, our UDF agent,
our REST service) -> transactions_scored, alerts and every Grafana panel query.

One stack for the module (starting it costs seconds and CPU): the tests run in file order and share it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from tests._deps import require
from tests._panels import panels_without_data
from tests._wait import poll
from tickguard.stack.generator import InfluxWriter, ReplayPlan, load_holdout, replay, txid_for
from tickguard.stack.local import LocalStack

pytestmark = [pytest.mark.tick, pytest.mark.slow]

NORMAL_ROWS = 1500  # the first holdout rows, in file order
FRAUD_ROWS = 60  # plus frauds from later in the holdout, so some points are surely flagged
ARRIVAL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    from tickguard.data.dataset import default_csv_path

    require(default_csv_path().is_file(), f"{default_csv_path()} missing: run `make data`")
    holdout = load_holdout()
    frauds = holdout.iloc[NORMAL_ROWS:][holdout.iloc[NORMAL_ROWS:]["Class"] == 1].head(FRAUD_ROWS)
    return pd.concat([holdout.iloc[:NORMAL_ROWS], frauds])


@pytest.fixture(scope="module")
def stack(tick_binaries, service_models_dir: Path, tmp_path_factory) -> LocalStack:
    workdir = tmp_path_factory.mktemp("e2e-stack")
    local = LocalStack(workdir, models_dir=service_models_dir, model="production")
    local.start()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def replayed(stack: LocalStack, rows: pd.DataFrame) -> dict:
    """Replay the rows once and wait until every point has left the pipeline."""
    started = time.monotonic()
    writer = InfluxWriter(stack.influx_settings())
    result: dict = {}
    sender = threading.Thread(
        target=lambda: result.update(report=replay(rows, ReplayPlan(rate=1000), writer))
    )
    sender.start()
    first = poll(stack.scored_count, 30, 0.05)
    first_scored_s = time.monotonic() - started
    sender.join()
    writer.close()
    report = result["report"]
    arrived = poll(lambda: stack.scored_count() >= len(rows) and stack.scored_count(), ARRIVAL_TIMEOUT_S)
    elapsed = time.monotonic() - started
    print(
        f"\ne2e: {report.summary()}; first scored point after {first_scored_s:.2f} s; "
        f"{arrived} scored in {elapsed:.1f} s ({(arrived or 0) / elapsed:.0f} points/s end to end)"
    )
    assert first, "no point reached transactions_scored within 30 s"
    return {"report": report, "arrived": arrived, "sent_until_ns": time.time_ns()}


def test_every_generated_point_arrives_scored_exactly_once(stack, rows, replayed) -> None:
    assert replayed["report"].written == len(rows)
    assert replayed["report"].failed == 0
    time.sleep(2)  # nothing more may arrive: exactly N, not N plus duplicates
    assert stack.scored_count() == len(rows)
    counts = stack.query(
        'SELECT count("score") AS scored, count("latency_ms") AS total FROM "transactions_scored"'
    )
    assert counts[0]["scored"] == counts[0]["total"] == len(rows)
    assert stack.query('SELECT "txid" FROM "transactions_scored" WHERE "scored" = false') == []
    txids = {row["txid"] for row in stack.query('SELECT "txid" FROM "transactions_scored"')}
    assert txids == {txid_for(i) for i in rows.index}


def test_flagged_transactions_match_the_api_for_the_same_rows(stack, rows, replayed) -> None:
    card = requests.get(f"{stack.api_url}/model", timeout=10).json()
    features = card.get("features") or card["card"]["features"]
    body = {"instances": [{name: float(row[name]) for name in features} for _, row in rows.iterrows()]}
    answer = requests.post(f"{stack.api_url}/predict", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    api_scores = {txid_for(i): p["score"] for i, p in zip(rows.index, predictions, strict=True)}
    api_flagged = {txid_for(i) for i, p in zip(rows.index, predictions, strict=True) if p["anomaly"]}
    stored = stack.query('SELECT "txid", "score", "anomaly" FROM "transactions_scored"')
    pipeline_flagged = {r["txid"] for r in stored if r["anomaly"]}
    assert api_flagged, "the test rows should contain transactions the model flags"
    assert pipeline_flagged == api_flagged
    for r in stored:
        assert r["score"] == pytest.approx(api_scores[r["txid"]], abs=1e-9)


def test_alerts_reach_chronograf_alert_history(stack, replayed) -> None:
    flagged = {
        r["txid"] for r in stack.query('SELECT "txid" FROM "transactions_scored" WHERE "anomaly" = true')
    }

    def fraud_alerts():
        try:
            found = stack.query(
                'SELECT "value", "message", "duration", "txid", "level", "alertID" FROM "alerts" '
                "WHERE \"alertName\" = 'fraud_alert'",
                database="chronograf",
            )
        except Exception:  # the chronograf database appears with the first alert
            return []
        return found if len(found) >= len(flagged) else []

    alerts = poll(fraud_alerts, 30)
    assert len(alerts) == len(flagged)
    assert {a["txid"] for a in alerts} == flagged
    for alert in alerts:
        assert alert["level"] == "CRITICAL"
        assert alert["alertID"] == f"fraud_alert:{alert['txid']}"  # one alert per transaction
        assert alert["duration"] == 0
        assert alert["txid"] in alert["message"] and "score" in alert["message"]
        assert isinstance(alert["value"], float)
    tags = stack.query('SHOW TAG KEYS FROM "alerts"', database="chronograf")
    assert {"alertName", "alertID", "level", "triggerType"} <= {t["tagKey"] for t in tags}

    # alerts.log: one human-readable line per alert; alerts.json: the same alerts as Kapacitor's JSON.
    def fraud_lines() -> list[str]:  # the .exec() handler writes them a moment after the alert
        found = [
            line for line in stack.alert_log.read_text().splitlines() if " CRITICAL fraud_alert:tx" in line
        ]
        return found if len(found) >= len(flagged) else []

    lines = poll(fraud_lines, 15)
    assert {line.split()[2].removeprefix("fraud_alert:") for line in lines} == flagged
    assert len(lines) == len(flagged) and all("fraud flagged: txid" in line for line in lines)
    records = [json.loads(line) for line in stack.alert_json.read_text().splitlines()]
    assert sorted(r["id"] for r in records if r["id"].startswith("fraud_alert:")) == sorted(
        f"fraud_alert:{txid}" for txid in flagged
    )


def test_every_grafana_panel_query_returns_data(stack, replayed) -> None:
    """Each query of each panel of fraud's dashboards, interpolated as Grafana would, returns rows."""
    empty = panels_without_data(stack, replayed["sent_until_ns"])
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_anomaly_rate_alert_fires_and_scoring_errors_stays_quiet(stack, replayed) -> None:
    """The test rows are ~3% flagged (frauds added on purpose): above anomaly_rate's 1% warn level."""
    # Kapacitor's stream windows close when a later point arrives (point time drives them), and the burst
    # above lasted ~2 s: a trickle of normal rows over 12 s lets the 10 s window emit.
    trickle = rows_after_burst()
    writer = InfluxWriter(stack.influx_settings())
    try:
        replay(trickle, ReplayPlan(rate=2.5), writer)
    finally:
        writer.close()

    def rate_alerts():
        return stack.query(
            'SELECT "level", "value" FROM "alerts" WHERE "alertName" = \'fraud_anomaly_rate\'',
            database="chronograf",
        )

    alerts = poll(rate_alerts, 30)
    assert alerts, "fraud_anomaly_rate raised no alert"
    assert {a["level"] for a in alerts} <= {"WARNING", "CRITICAL", "OK"}
    assert any(a["level"] in {"WARNING", "CRITICAL"} and a["value"] > 0.01 for a in alerts)
    logged = poll(
        lambda: [x for x in stack.alert_log.read_text().splitlines() if " fraud_anomaly_rate  " in x], 15
    )
    assert logged and re.match(
        r"\S+Z (WARNING|CRITICAL) fraud_anomaly_rate  0\.\d{4} of the points fraud scored", logged[0]
    )
    errors = stack.query(
        'SELECT "level" FROM "alerts" WHERE "alertName" = \'fraud_scoring_errors\'', database="chronograf"
    )
    assert errors == [], "every point was scored, so fraud_scoring_errors must not fire"


def rows_after_burst() -> pd.DataFrame:
    """30 normal holdout rows not used by the burst (their txids do not collide with it)."""
    holdout = load_holdout()
    later = holdout.iloc[-2000:]
    return later[later["Class"] == 0].head(30)


def test_local_mode_runs_a_watchdog_that_backfills_after_heals(stack) -> None:
    # The agent starts before kapacitord, so local mode heals tasks with a separate watchdog process.
    assert stack.watchdog is not None and stack.watchdog.running(), "no watchdog in local mode"
    log_path = stack.workdir / "logs" / "watchdog.log"
    seen = poll(lambda: log_path.is_file() and "backfill after heal is on" in log_path.read_text(), 15)
    assert seen, f"the watchdog did not enable backfill after heals:\n{log_path.read_text()}"
