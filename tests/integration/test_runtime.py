"""The TICK harness against the real servers: versions, ping, InfluxDB -> Kapacitor -> InfluxDB, restarts, errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from influxdb_client import Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tickguard.kapacitor_client import KapacitorClient, KapacitorError, TaskNotFoundError
from tickguard.runtime import (
    INFLUXDB_VERSION,
    KAPACITOR_VERSION,
    InfluxAuth,
    TickBinaries,
    TickRuntime,
    TickRuntimeError,
)

pytestmark = pytest.mark.tick

COPY_TASK = """
stream
    |from()
        .database('{src}')
        .retentionPolicy('autogen')
        .measurement('payments')
    |influxDBOut()
        .database('{dst}')
        .retentionPolicy('autogen')
        .measurement('payments_copy')
        .flushInterval(50ms)
"""


def wait_for_rows(
    runtime: TickRuntime, query: str, database: str, count: int, timeout: float = 20.0
) -> list[dict]:
    """Poll a SELECT until it returns `count` rows (or time out and return what is there)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = runtime.influx.select(query, database)
        if len(rows) >= count or time.monotonic() >= deadline:
            return rows
        time.sleep(0.1)


def sample_points(count: int, start_ns: int) -> list[Point]:
    """Points with every field type and distinct nanosecond timestamps."""
    points = []
    for i in range(count):
        points.append(
            Point("payments")
            .tag("card", f"c{i % 3}")
            .field("amount", 10.5 + i * 1.25)
            .field("seq", i)
            .field("merchant", f"shop-{i}")
            .field("flagged", i % 2 == 0)
            .time(start_ns + i * 1_000_003, WritePrecision.NS)
        )
    return points


def define_copy_task(runtime: TickRuntime, task_id: str, src: str, dst: str) -> KapacitorClient:
    """Create the source/destination databases and a stream task copying payments -> payments_copy."""
    runtime.create_database(src)
    runtime.influx.create_database(dst)
    client = runtime.kapacitor_client()
    task = client.define_task(task_id, COPY_TASK.format(src=src, dst=dst), dbrps=[(src, "autogen")])
    assert task.enabled and task.executing, task
    return client


@pytest.fixture(scope="module")
def shared_runtime(tick_binaries: TickBinaries, tmp_path_factory: pytest.TempPathFactory):
    """One influxd + kapacitord for the read-mostly tests of this module (stats every second)."""
    runtime = TickRuntime(
        tmp_path_factory.mktemp("tick-shared"),
        binaries=tick_binaries,
        kapacitor_config={"stats": {"stats-interval": "1s"}},
    )
    with runtime:
        yield runtime


def test_binaries_report_the_pinned_versions(tick_binaries: TickBinaries) -> None:
    assert tick_binaries.kapacitord_version() == KAPACITOR_VERSION == "1.7.6"
    assert tick_binaries.influxd_version() == INFLUXDB_VERSION == "1.8.10"


def test_servers_answer_ping_with_their_versions(shared_runtime: TickRuntime) -> None:
    influx_ping = requests.get(shared_runtime.influx_url + "/ping", timeout=5)
    assert influx_ping.status_code == 204
    assert influx_ping.headers["X-Influxdb-Version"].lstrip("v") == "1.8.10"
    assert shared_runtime.kapacitor_client().ping() == "1.7.6"
    assert shared_runtime.influx_url.startswith("http://127.0.0.1:")
    assert shared_runtime.kapacitor_url.startswith("http://127.0.0.1:")


def test_points_written_to_influxdb_flow_through_a_stream_task_unchanged(shared_runtime: TickRuntime) -> None:
    client = define_copy_task(shared_runtime, "copy_roundtrip", "rt_in", "rt_out")
    start_ns = 1_700_000_000_123_456_789
    points = sample_points(60, start_ns)
    with shared_runtime.influx_client() as influx:
        influx.write_api(write_options=SYNCHRONOUS).write(bucket="rt_in/autogen", record=points)

    rows = wait_for_rows(shared_runtime, "SELECT * FROM payments_copy", "rt_out", len(points))
    written = {
        (
            p._time,
            p._tags["card"],
            p._fields["amount"],
            p._fields["seq"],
            p._fields["merchant"],
            p._fields["flagged"],
        )
        for p in points
    }
    arrived = {(r["time"], r["card"], r["amount"], r["seq"], r["merchant"], r["flagged"]) for r in rows}
    assert arrived == written
    assert all(isinstance(r["seq"], int) and isinstance(r["flagged"], bool) for r in rows)

    task = client.get_task("copy_roundtrip")
    assert task.error == ""
    assert task.node_stats("stream0")["emitted"] >= len(points)


def test_kapacitor_internal_stats_reach_a_stream_task_on_the_kapacitor_database(
    shared_runtime: TickRuntime,
) -> None:
    # [stats] emits into Kapacitor's own stream as database _kapacitor (not into InfluxDB); a task exports them.
    shared_runtime.influx.create_database("kstats")
    script = (
        "stream|from().database('_kapacitor').retentionPolicy('autogen').measurement('kapacitor')"
        "|influxDBOut().database('kstats').retentionPolicy('autogen').flushInterval(50ms)"
    )
    shared_runtime.kapacitor_client().define_task("export_stats", script, dbrps=[("_kapacitor", "autogen")])
    rows = wait_for_rows(shared_runtime, "SELECT * FROM kapacitor", "kstats", 1, timeout=10)
    assert rows and rows[0]["num_tasks"] >= 1 and rows[0]["num_enabled_tasks"] >= 1


def test_client_reports_kapacitors_own_errors(shared_runtime: TickRuntime) -> None:
    client = shared_runtime.kapacitor_client()
    with pytest.raises(KapacitorError, match="from") as bad_script:
        client.define_task("broken", "stream|from(.database('x')", dbrps=["x"])
    assert bad_script.value.status_code == 400 and bad_script.value.kapacitor_message
    with pytest.raises(TaskNotFoundError):
        client.get_task("no_such_task")
    assert client.delete_task("no_such_task") is False
    with pytest.raises(KapacitorError, match="unreachable"):
        KapacitorClient("http://127.0.0.1:1", timeout=1).ping()


def test_task_lifecycle_through_the_client(shared_runtime: TickRuntime) -> None:
    client = define_copy_task(shared_runtime, "lifecycle", "life_in", "life_out")
    assert [t.id for t in client.list_tasks(pattern="life*")] == ["lifecycle"]
    disabled = client.disable_task("lifecycle")
    assert disabled.status == "disabled" and not disabled.executing
    updated = client.define_task(
        "lifecycle",
        COPY_TASK.format(src="life_in", dst="other"),
        dbrps=[("life_in", "autogen")],
        enabled=False,
    )
    assert "'other'" in updated.script and updated.status == "disabled"
    assert client.enable_task("lifecycle").executing
    assert client.delete_task("lifecycle") is True
    assert not client.task_exists("lifecycle")


def test_restarted_kapacitord_resumes_its_tasks(tick_runtime: TickRuntime) -> None:
    client = define_copy_task(tick_runtime, "copy_restart", "rs_in", "rs_out")
    tick_runtime.influx.write_lines("payments amount=1.0 1000000000", "rs_in")
    assert len(wait_for_rows(tick_runtime, "SELECT * FROM payments_copy", "rs_out", 1)) == 1

    old_pid = tick_runtime.kapacitor.pid
    tick_runtime.kapacitor.restart()
    assert tick_runtime.kapacitor.pid != old_pid
    task = client.get_task("copy_restart")
    assert task.enabled and task.executing
    tick_runtime.influx.write_lines("payments amount=2.0 2000000000", "rs_in")
    rows = wait_for_rows(tick_runtime, "SELECT * FROM payments_copy", "rs_out", 2)
    assert [r["amount"] for r in rows] == [1.0, 2.0]


def test_influxd_stop_and_start_keeps_data_and_subscription(tick_runtime: TickRuntime) -> None:
    define_copy_task(tick_runtime, "copy_influx_restart", "ir_in", "ir_out")
    tick_runtime.influx.write_lines("payments amount=1.0 1000000000", "ir_in")
    assert len(wait_for_rows(tick_runtime, "SELECT * FROM payments_copy", "ir_out", 1)) == 1

    tick_runtime.influx.stop()
    assert not tick_runtime.influx.ping()
    tick_runtime.influx.start()
    assert tick_runtime.influx.select("SELECT * FROM payments", "ir_in")[0]["amount"] == 1.0
    tick_runtime.influx.write_lines("payments amount=2.0 2000000000", "ir_in")
    rows = wait_for_rows(tick_runtime, "SELECT * FROM payments_copy", "ir_out", 2)
    assert [r["amount"] for r in rows] == [1.0, 2.0]


def test_influx_auth_is_enforced_and_kapacitor_uses_the_credentials(
    tick_runtime_factory: Callable[..., TickRuntime],
) -> None:
    auth = InfluxAuth("tg_admin", "s3cret-'quoted")
    runtime = tick_runtime_factory(influx_auth=auth)
    anonymous = requests.post(runtime.influx_url + "/query", data={"q": "SHOW DATABASES"}, timeout=5)
    assert anonymous.status_code == 401
    define_copy_task(runtime, "copy_auth", "auth_in", "auth_out")
    with runtime.influx_client() as influx:
        influx.write_api(write_options=SYNCHRONOUS).write(
            bucket="auth_in/autogen", record=sample_points(5, 1_000_000_000)
        )
    assert len(wait_for_rows(runtime, "SELECT * FROM payments_copy", "auth_out", 5)) == 5


def test_bad_config_fails_fast_with_the_log_tail(tick_runtime_factory: Callable[..., TickRuntime]) -> None:
    with pytest.raises(TickRuntimeError) as failure:
        tick_runtime_factory(kapacitor_config={"task": {"snapshot-interval": "not-a-duration"}})
    message = str(failure.value)
    assert "kapacitord: exited with code" in message
    assert "not-a-duration" in message  # kapacitord's own parse error, from its log


def test_missing_udf_socket_times_out_with_the_log_tail(
    tick_runtime_factory: Callable[..., TickRuntime], tmp_path: Path
) -> None:
    socket_path = tmp_path / "nobody-listens.sock"
    with pytest.raises(TickRuntimeError) as failure:
        tick_runtime_factory(udfs={"ghost": (socket_path, "5s")}, start_timeout=4)
    message = str(failure.value)
    assert "did not answer" in message and "/kapacitor/v1/ping" in message
    assert f"ghost -> {socket_path} (no such socket)" in message  # the harness names the culprit


def test_shared_influx_server_round_trips_line_protocol(influx_server) -> None:
    influx_server.create_database("shared_probe")
    influx_server.write_lines(
        ['probe,card=c1 amount=1.5,seq=7i,note="x y" 1500000000000000001'], "shared_probe"
    )
    rows = influx_server.select("SELECT * FROM probe", "shared_probe")
    assert rows == [{"time": 1500000000000000001, "amount": 1.5, "card": "c1", "note": "x y", "seq": 7}]
    # tickguard.influx turns InfluxDB's "unable to parse '<line>': <reason>" into one line naming the
    # measurement, the reason and the line.
    with pytest.raises(
        TickRuntimeError, match=r"measurement 'probe': missing field value in line 'probe amount='"
    ):
        influx_server.write_lines(["probe amount="], "shared_probe")


def test_a_crashed_kapacitord_is_recovered_but_a_deliberate_stop_is_not(tick_runtime: TickRuntime) -> None:
    import os
    import signal

    kapacitor = tick_runtime.kapacitor
    assert kapacitor.recover() is None  # running: nothing to do
    os.kill(kapacitor.pid, signal.SIGKILL)  # a crash, not the harness's kill()
    deadline = time.monotonic() + 10
    while kapacitor.exited_on_its_own() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kapacitor.recover() == -signal.SIGKILL
    assert kapacitor.is_running() and kapacitor.ping()
    assert "exited on its own (exit code -9)" in kapacitor.log_tail(200)
    kapacitor.stop()
    assert kapacitor.exited_on_its_own() is None and kapacitor.recover() is None
    assert not kapacitor.is_running()
    kapacitor.start()
