"""The UDF agent in the real pipeline: InfluxDB -> kapacitord -> our agent -> the real scoring service.

Kapacitor's UDF timeout is kept short (2 s: keepalives every second) so the slow and broken paths are
exercised quickly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.fixtures.udf import FEATURES, MODEL_VERSION, short_socket_dir, synthetic_rows
from tickguard.agent.watchdog import Watchdog

pytestmark = pytest.mark.tick

UDF_TIMEOUT = "2s"
BASE_NS = 1_700_000_000_000_000_000


def influxql(url: str, database: str, query: str) -> list[dict]:
    """Rows of an InfluxQL query as dicts (time in ns)."""
    response = requests.get(url + "/query", params={"db": database, "q": query, "epoch": "ns"}, timeout=10)
    response.raise_for_status()
    result = response.json()["results"][0]
    assert "error" not in result, result
    return [
        dict(zip(series["columns"], values, strict=True))
        for series in result.get("series", [])
        for values in series["values"]
    ]


def wait_for_count(
    url: str, database: str, measurement: str, expected: int, timeout_s: float = 30.0
) -> list[dict]:
    """Poll until `measurement` holds `expected` rows; return the rows (fewer on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = influxql(url, database, f'SELECT * FROM "{measurement}"')
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def write_transactions(
    runtime, database: str, first: int, count: int, measurement: str = "tx", seed: int = 0
):
    """Write `count` synthetic transactions (30 features + Class) with increasing ms timestamps."""
    from influxdb_client import Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    X, y = synthetic_rows(first + count, seed=seed)
    points = []
    for i in range(first, first + count):
        point = Point(measurement).tag("card", f"c{i % 5}").field("Class", int(y[i]))
        for name, value in zip(FEATURES, X[i], strict=True):
            point = point.field(name, float(value))
        points.append(point.time(BASE_NS + i * 1_000_000, WritePrecision.NS))
    with runtime.influx_client() as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=f"{database}/autogen", record=points)
    return X[first:], y[first:]


def scoring_script(url: str, database: str, extra: str = "") -> str:
    """A stream task scoring every point of `database` into `<database>_scored`."""
    return f"""
stream
    |from()
        .database('{database}')
    @tickguard()
        .url('{url}')
        .flushInterval(20ms){extra}
    |influxDBOut()
        .database('{database}_scored')
        .retentionPolicy('autogen')
        .flushInterval(100ms)
"""


def setup_pipeline(
    tick_runtime_factory, agent, database: str, script: str, task_id: str, batch: bool = False
):
    """Start influxd + kapacitord against the agent, create the databases and define the task."""
    udfs = {"tickguard": (agent.socket_path, UDF_TIMEOUT)}
    if agent.batch_socket_path:
        udfs["tickguard_batch"] = (agent.batch_socket_path, UDF_TIMEOUT)
    runtime = tick_runtime_factory(udfs=udfs)
    runtime.create_database(database)
    runtime.influx.create_database(f"{database}_scored")
    kapacitor = runtime.kapacitor_client()
    task = kapacitor.define_task(
        task_id, script, dbrps=[(database, "autogen")], task_type="batch" if batch else "stream"
    )
    assert task.executing, task.error
    return runtime, kapacitor


def test_stream_task_scores_every_point_and_marks_malformed_ones(
    tick_runtime_factory, udf_agent_factory, scoring_service
):
    agent = udf_agent_factory()
    runtime, kapacitor = setup_pipeline(
        tick_runtime_factory, agent, "fraud", scoring_script(scoring_service.url, "fraud"), "score_stream"
    )
    X, y = write_transactions(runtime, "fraud", 0, 1500)
    # Malformed points in their own measurements (InfluxDB fixes a field's type per measurement).
    missing = [
        f"tx_missing,card=x {','.join(f'{n}={v}' for n, v in zip(FEATURES, X[i], strict=True) if n != 'V7')} {BASE_NS + i}"
        for i in range(5)
    ]
    text = [
        f"tx_text,card=y {','.join(f'{n}={v}' for n, v in zip(FEATURES, X[i], strict=True) if n != 'Amount')},"
        f'Amount="12 EUR" {BASE_NS + i}'
        for i in range(5)
    ]
    requests.post(
        runtime.influx_url + "/write", params={"db": "fraud"}, data="\n".join(missing + text), timeout=10
    ).raise_for_status()

    rows = wait_for_count(runtime.influx_url, "fraud_scored", "tx", 1500)
    assert len(rows) == 1500
    rows.sort(key=lambda r: r["time"])
    from tickguard.modelstore import load_model
    from tickguard.service.app import model_dir_of

    expected = load_model(model_dir_of(scoring_service.app)).score(X)
    for i, row in enumerate(rows):
        assert row["time"] == BASE_NS + i * 1_000_000
        assert row["scored"] is True and row["model_version"] == MODEL_VERSION and row["threshold"] == 0.5
        assert row["score"] == pytest.approx(expected[i], abs=1e-9)
        assert row["anomaly"] == (expected[i] >= 0.5)
        assert row["Class"] == y[i] and row["tp"] + row["fp"] + row["fn"] + row["tn"] == 1
        assert row["latency_ms"] > 0 and row["card"] == f"c{i % 5}"
        # lean output (the default): Amount and Class kept, the PCA inputs left in the source measurement
        assert row["Amount"] == X[i][FEATURES.index("Amount")] and row.get("V3") is None
    assert sum(r["tp"] for r in rows) + sum(r["fn"] for r in rows) == int(y.sum())

    for measurement, problem in (
        ("tx_missing", "missing feature field 'V7'"),
        ("tx_text", "field 'Amount' is a string"),
    ):
        bad_rows = wait_for_count(runtime.influx_url, "fraud_scored", measurement, 5)
        assert len(bad_rows) == 5
        assert all(r["scored"] is False and r.get("score") is None for r in bad_rows)
        assert all(problem in r["error"] for r in bad_rows), bad_rows[0]["error"]

    # The connection survived the malformed points: more points are scored by the same task.
    write_transactions(runtime, "fraud", 1500, 100)
    rows = wait_for_count(runtime.influx_url, "fraud_scored", "tx", 1600)
    assert len(rows) == 1600 and all(r["scored"] for r in rows)
    assert kapacitor.get_task("score_stream").executing


def test_batch_task_with_window_scores_every_point(tick_runtime_factory, udf_agent_factory, scoring_service):
    agent = udf_agent_factory(batch=True)
    script = f"""
stream
    |from()
        .database('win')
        .measurement('tx')
    |window()
        .period(1s)
        .every(1s)
        .align()
    @tickguard_batch()
        .url('{scoring_service.url}')
    |influxDBOut()
        .database('win_scored')
        .retentionPolicy('autogen')
        .measurement('tx')
        .flushInterval(100ms)
"""
    runtime, _ = setup_pipeline(tick_runtime_factory, agent, "win", script, "score_window")
    # 600 points over 6 s of event time, then one point 10 s later that closes the last window.
    write_transactions(runtime, "win", 0, 600, seed=1)
    from influxdb_client import Point, WritePrecision

    sentinel = Point("tx").field("Class", 0).time(BASE_NS + 20_000_000_000, WritePrecision.NS)
    from influxdb_client.client.write_api import SYNCHRONOUS

    with runtime.influx_client() as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="win/autogen", record=sentinel)
    rows = wait_for_count(runtime.influx_url, "win_scored", "tx", 600)
    assert len(rows) == 600
    assert all(r["scored"] is True and r["score"] is not None for r in rows)
    assert sorted(r["time"] for r in rows) == [BASE_NS + i * 1_000_000 for i in range(600)]


def test_service_stopped_mid_stream_loses_nothing_and_scoring_resumes(
    tick_runtime_factory, udf_agent_factory, scoring_service
):
    agent = udf_agent_factory(breaker_cooldown_s=0.3, retries=1)
    runtime, kapacitor = setup_pipeline(
        tick_runtime_factory, agent, "outage", scoring_script(scoring_service.url, "outage"), "score_outage"
    )
    write_transactions(runtime, "outage", 0, 300)
    assert len(wait_for_count(runtime.influx_url, "outage_scored", "tx", 300)) == 300
    scoring_service.stop()
    write_transactions(runtime, "outage", 300, 300)
    assert len(wait_for_count(runtime.influx_url, "outage_scored", "tx", 600)) == 600
    scoring_service.start()
    time.sleep(0.5)  # past the breaker's cool-down
    # The breaker lets one trial batch through at a time; batches flushed while that trial is in
    # flight fail over (unscored, with the reason). Feed small batches until one comes back scored:
    # from then on the breaker is closed and every point must be scored.
    written = 600
    for _ in range(20):
        write_transactions(runtime, "outage", written, 5)
        written += 5
        probe = sorted(
            wait_for_count(runtime.influx_url, "outage_scored", "tx", written), key=lambda r: r["time"]
        )
        if any(r["scored"] for r in probe[written - 5 : written]):
            break
        time.sleep(0.4)
    else:
        pytest.fail(
            f"scoring did not resume within 20 trial batches after the service restarted: {probe[-1]}"
        )
    write_transactions(runtime, "outage", written, 900 - written)
    rows = sorted(wait_for_count(runtime.influx_url, "outage_scored", "tx", 900), key=lambda r: r["time"])
    assert len(rows) == 900
    assert all(r["scored"] for r in rows[:300])
    assert not any(r["scored"] for r in rows[300:600])
    assert all(r["error"] and r["score"] is None for r in rows[300:600])
    assert all(r["scored"] or r["error"] for r in rows[600:written])  # failed over, never silently
    assert all(r["scored"] for r in rows[written:])
    assert kapacitor.get_task("score_outage").executing


def test_task_survives_a_service_slower_than_the_keepalive_timeout(
    tick_runtime_factory, udf_agent_factory, scoring_service
):
    agent = udf_agent_factory(retries=0)
    script = scoring_script(scoring_service.url, "slow", extra="\n        .timeout(10s)")
    runtime, kapacitor = setup_pipeline(tick_runtime_factory, agent, "slow", script, "score_slow")
    scoring_service.delay_s = 4.0  # twice Kapacitor's 2 s UDF timeout
    write_transactions(runtime, "slow", 0, 200)
    rows = wait_for_count(runtime.influx_url, "slow_scored", "tx", 200)
    assert len(rows) == 200
    assert not any(r["scored"] for r in rows)
    assert kapacitor.get_task("score_slow").executing
    time.sleep(3)  # several keepalive periods with the slow request still outstanding
    assert kapacitor.get_task("score_slow").executing
    scoring_service.delay_s = 0.0
    time.sleep(4.5)  # the hanging request finishes; the breaker's cool-down passes
    write_transactions(runtime, "slow", 200, 200)
    rows = sorted(wait_for_count(runtime.influx_url, "slow_scored", "tx", 400), key=lambda r: r["time"])
    assert len(rows) == 400
    assert all(r["scored"] for r in rows[200:])
    assert kapacitor.get_task("score_slow").executing


def _start_agent_process(socket_path, url: str, kapacitor_url: str = "", log_path=None) -> subprocess.Popen:
    env = dict(
        os.environ,
        TICKGUARD_WATCHDOG_INTERVAL="0.5",
        TICKGUARD_WATCHDOG_ORPHAN_GRACE="1",
        TICKGUARD_UDF_METRICS_PORT="0",
    )
    command = [sys.executable, "-m", "tickguard.cli", "udf", "--socket", str(socket_path), "--url", url]
    if kapacitor_url:
        command += ["--kapacitor-url", kapacitor_url]
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "agent did not create its socket"
        time.sleep(0.05)
    return process


def test_agent_killed_and_restarted_is_healed_by_the_watchdog(
    tick_runtime_factory, scoring_service, tmp_path
):
    socket_path = short_socket_dir() / "udf.sock"
    log_path = tmp_path / "agent.log"
    agent = _start_agent_process(socket_path, scoring_service.url, log_path=log_path)
    try:
        runtime = tick_runtime_factory(udfs={"tickguard": (socket_path, UDF_TIMEOUT)})
        runtime.create_database("heal")
        runtime.influx.create_database("heal_scored")
        kapacitor = runtime.kapacitor_client()
        kapacitor.define_task(
            "score_heal", scoring_script(scoring_service.url, "heal"), dbrps=[("heal", "autogen")]
        )
        write_transactions(runtime, "heal", 0, 100)
        assert len(wait_for_count(runtime.influx_url, "heal_scored", "tx", 100)) == 100

        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        # Kapacitor still reports the task as executing: it would only fail (losing that point) at the
        # next point. The restarted agent's watchdog sees a task with no connection to it and
        # reconnects it (disable -> enable) before any point is lost.
        agent = _start_agent_process(socket_path, scoring_service.url, runtime.kapacitor_url, log_path)
        deadline = time.monotonic() + 20
        while "task score_heal healed" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "task score_heal healed" in log_path.read_text(), log_path.read_text()
        assert kapacitor.get_task("score_heal").executing
        write_transactions(runtime, "heal", 100, 100)
        rows = wait_for_count(runtime.influx_url, "heal_scored", "tx", 200)
        assert len(rows) == 200 and all(r["scored"] for r in rows)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(10)


def test_watchdog_reports_heal_events_to_its_hook(tick_runtime_factory, udf_agent_factory, scoring_service):
    from dataclasses import replace

    from tickguard.agent import udf_pb2 as pb
    from tickguard.agent.config import agent_settings
    from tickguard.agent.server import Listener, UdfServer

    agent = udf_agent_factory()
    runtime, kapacitor = setup_pipeline(
        tick_runtime_factory, agent, "hook", scoring_script(scoring_service.url, "hook"), "score_hook"
    )
    socket_path = agent.socket_path
    agent.stop()  # the agent goes away
    # The next point makes Kapacitor fail the task (broken pipe), or leaves it "executing" on a dead
    # connection; the watchdog heals both (the second through `live_tasks`).
    write_transactions(runtime, "hook", 0, 1)
    time.sleep(1)
    settings = replace(agent_settings({}), metrics_port=0, log_interval_s=0)
    restarted = UdfServer(settings, [Listener(socket_path, pb.STREAM)])
    restarted.start()
    events = []
    watchdog = Watchdog(
        runtime.kapacitor_url,
        ["tickguard"],
        interval_s=0.2,
        on_healed=[events.append],
        live_tasks=restarted.live_tasks,
        orphan_grace_s=0.3,
    )
    try:
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            watchdog.check_once()
            time.sleep(0.1)
        task = kapacitor.get_task("score_hook")
        assert [e.task_id for e in events] == ["score_hook"], (
            watchdog.api_error,
            task.status,
            task.executing,
            task.error,
        )
        assert events[0].down_since < events[0].healed_at
        assert "score_hook" in restarted.live_tasks()
        assert kapacitor.get_task("score_hook").executing
        write_transactions(runtime, "hook", 1, 50)
        rows = wait_for_count(runtime.influx_url, "hook_scored", "tx", 50)
        # The point written while the agent was down may be lost (that gap is what the hook reports).
        assert {r["time"] for r in rows} >= {BASE_NS + i * 1_000_000 for i in range(1, 51)}
        assert all(r["scored"] for r in rows)
        assert watchdog.check_once() == []  # connected now: nothing more to heal
    finally:
        restarted.stop()
