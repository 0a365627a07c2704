"""Smoke test of the whole foundation: InfluxDB -> Kapacitor stream task -> our UDF agent (echo) -> InfluxDB.

Points written with influxdb-client reach a Kapacitor stream task (defined over Kapacitor's HTTP API)
through its InfluxDB subscription, pass through our socket UDF in echo mode (no scoring), and are
written back by influxDBOut. Every point must come back with the same tags, fields and timestamp.
"""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.tick

DATABASE = "smoke"
POINTS = 300
BASE_NS = 1_700_000_000_000_000_000

TICKSCRIPT = """
stream
    |from()
        .measurement('tx')
    @tickguard()
        .mode('echo')
        .output('full')
    |influxDBOut()
        .database('smoke')
        .retentionPolicy('autogen')
        .measurement('tx_out')
        .flushInterval(100ms)
"""


def influxql(url: str, query: str) -> list[dict]:
    """Rows of an InfluxQL query as dicts (time in ns)."""
    response = requests.get(url + "/query", params={"db": DATABASE, "q": query, "epoch": "ns"}, timeout=10)
    response.raise_for_status()
    result = response.json()["results"][0]
    assert "error" not in result, result
    rows = []
    for series in result.get("series", []):
        for values in series["values"]:
            rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


def wait_for_rows(url: str, measurement: str, expected: int, timeout_s: float = 30.0) -> list[dict]:
    """Poll until `expected` rows are in `measurement` (or the timeout passes); return the rows."""
    deadline = time.monotonic() + timeout_s
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = influxql(url, f'SELECT * FROM "{measurement}"')
        if len(rows) >= expected:
            return rows
        time.sleep(0.25)
    return rows


def test_points_flow_through_kapacitor_and_the_echo_udf_unchanged(tick_runtime_factory, udf_agent_factory):
    from influxdb_client import Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    agent = udf_agent_factory()
    runtime = tick_runtime_factory(udfs={"tickguard": (agent.socket_path, "10s")})
    runtime.create_database(DATABASE)
    task = runtime.kapacitor_client().define_task("smoke", TICKSCRIPT, dbrps=[(DATABASE, "autogen")])
    assert task.executing, task.error

    points = [
        Point("tx")
        .tag("card", f"c{i % 7}")
        .tag("merchant", "m-1" if i % 2 else "m 2")
        .field("amount", i * 1.25 + 0.1)
        .field("v1", -0.5 * i)
        .field("count", i)
        .field("note", f"row {i}")
        .field("flagged", i % 3 == 0)
        .time(BASE_NS + i * 1_000_000, WritePrecision.NS)
        for i in range(POINTS)
    ]
    with runtime.influx_client() as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=f"{DATABASE}/autogen", record=points)

    written = influxql(runtime.influx_url, 'SELECT * FROM "tx"')
    assert len(written) == POINTS
    echoed = wait_for_rows(runtime.influx_url, "tx_out", POINTS)
    assert len(echoed) == POINTS, f"{len(echoed)} of {POINTS} points came back through the UDF"
    assert sorted(echoed, key=lambda r: r["time"]) == sorted(written, key=lambda r: r["time"])
    assert agent.metrics.snapshot()["tickguard_udf_points_in_total"] == POINTS
