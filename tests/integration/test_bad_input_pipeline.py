"""Bad input through the real pipeline: malformed points reach Kapacitor and leave it marked unscored, with
the reason, while the task keeps scoring the good ones; a batch over the service's limits gets a 413 and
its points leave unscored saying so. (The REST API's own fuzzing lives in tests/code/test_service_fuzz.py.)
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from tickguard.stack.generator import txid_for

pytestmark = [pytest.mark.tick, pytest.mark.slow]

DAY_NS = 86_400 * 10**9


def line(row: pd.Series, ts: int, txid: str, *, measurement="transactions", drop=(), override=None) -> str:
    """A generator-shaped line for one holdout row, with fields dropped or replaced (raw line protocol)."""
    from tickguard.data import FEATURES

    values = {name: repr(float(row[name])) for name in FEATURES if name not in drop}
    values.update(override or {})
    fields = ",".join(f"{name}={value}" for name, value in values.items())
    return f'{measurement},source=bad-input {fields},Class={int(row["Class"])}i,txid="{txid}" {ts}'


def scored_rows(pipeline, start: int, end: int, measurement: str = "transactions_scored") -> dict[str, dict]:
    """txid -> the stored output point, for a time range."""
    rows = pipeline.query(
        f'SELECT "txid", "scored", "score", "error" FROM "{measurement}" WHERE time >= {start} AND time <= {end}'
    )
    return {row["txid"]: row for row in rows}


def wait_for(
    pipeline, start: int, end: int, count: int, measurement="transactions_scored", timeout=60.0
) -> dict:
    """Poll until `count` output points exist in the range (or the timeout); return them by txid."""
    deadline = time.monotonic() + timeout
    while True:
        found = scored_rows(pipeline, start, end, measurement)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def test_point_missing_a_feature_is_marked_unscored_and_the_rest_are_scored(pipeline, replay_rows) -> None:
    rows = replay_rows.iloc[50_000:50_006]
    now = time.time_ns()
    lines = [
        line(row, now + i, f"missing-{i}", drop=("V3",) if i == 2 else ())
        for i, (_, row) in enumerate(rows.iterrows())
    ]
    pipeline.stack.runtime.influx.write_lines(lines, "fraud")
    found = wait_for(pipeline, now, now + 10, len(lines))
    assert len(found) == len(lines), "every point must leave the pipeline"
    bad = found["missing-2"]
    assert bad["scored"] is False and bad["score"] is None
    assert "V3" in bad["error"] and "missing" in bad["error"]
    assert all(found[f"missing-{i}"]["scored"] is True for i in (0, 1, 3, 4, 5))


def test_point_with_a_string_feature_is_marked_unscored(pipeline, replay_rows) -> None:
    # InfluxDB fixes a field's type per shard: a string V5 can only be written into a shard that has no
    # float V5 yet, so these points are dated 8 weeks back (their own shard group); Kapacitor's stream
    # task sees them like any live write.
    row = replay_rows.iloc[50_010]
    base = time.time_ns() - 56 * DAY_NS
    bad_line = line(row, base, "string-1", override={"V5": '"not a number"'})
    pipeline.stack.runtime.influx.write_lines([bad_line], "fraud")
    found = wait_for(pipeline, base, base + 10, 1)
    bad = found.get("string-1")
    assert bad is not None, "the point with a string feature never left the pipeline"
    assert bad["scored"] is False
    assert "V5" in bad["error"] and "string" in bad["error"]


def test_nan_feature_from_a_tickscript_is_marked_unscored_and_its_neighbours_survive(
    pipeline, replay_rows
) -> None:
    # Line protocol cannot carry NaN; inside Kapacitor a computation can (sqrt(-1) = NaN). Only nan-1
    # gets the NaN; its neighbours travel in the same batches.
    client = pipeline.stack.runtime.kapacitor_client()
    script = """
stream
    |from()
        .measurement('nan_probe')
    |eval(lambda: if("txid" == 'nan-1', sqrt(-1.0), "V7"))
        .as('V7')
        .keep()
    @tickguard()
    |influxDBOut()
        .database('fraud')
        .retentionPolicy('autogen')
        .measurement('nan_probe_scored')
        .precision('ns')
        .flushInterval(100ms)
"""
    client.define_task("bad_input_nan", script, dbrps=[("fraud", "autogen")])
    try:
        rows = replay_rows.iloc[50_020:50_023]
        now = time.time_ns()
        lines = [
            line(row, now + i, f"nan-{i}", measurement="nan_probe")
            for i, (_, row) in enumerate(rows.iterrows())
        ]
        pipeline.stack.runtime.influx.write_lines(lines, "fraud")
        found = wait_for(pipeline, now, now + 10, len(lines), measurement="nan_probe_scored", timeout=20)
        task = client.get_task("bad_input_nan")
    finally:
        client.delete_task("bad_input_nan")
    assert task.executing, f"the NaN input stopped the task: {task.error}"
    assert len(found) == len(lines), (
        f"{len(lines) - len(found)} of {len(lines)} points never reached InfluxDB (stored: {sorted(found)})"
    )
    assert found["nan-1"]["scored"] is False and "V7" in found["nan-1"]["error"]
    assert found["nan-0"]["scored"] is True and found["nan-2"]["scored"] is True


def test_batch_over_the_service_row_limit_gets_413_and_its_points_leave_unscored(
    pipeline, replay_rows
) -> None:
    # The session pipeline's service accepts at most API_MAX_ROWS rows per request (TICKGUARD_MAX_ROWS);
    # this task asks the agent for bigger batches, so the service answers 413 and the agent must emit
    # every point unscored with that reason, and keep the task alive.
    from tests.fixtures.pipeline import API_MAX_ROWS

    count = API_MAX_ROWS * 3
    client = pipeline.stack.runtime.kapacitor_client()
    script = f"""
stream
    |from()
        .measurement('oversized_probe')
    @tickguard()
        .batchSize({count * 2})
        .flushInterval(3s)
        .maxDelay(10s)
    |influxDBOut()
        .database('fraud')
        .retentionPolicy('autogen')
        .measurement('oversized_probe_scored')
        .precision('ns')
        .buffer(10000)
        .flushInterval(100ms)
"""
    client.define_task("bad_input_oversized", script, dbrps=[("fraud", "autogen")])
    try:
        rows = replay_rows.iloc[51_000 : 51_000 + count]
        now = time.time_ns()
        lines = [
            line(row, now + i, txid_for(index), measurement="oversized_probe")
            for i, (index, row) in enumerate(rows.iterrows())
        ]
        pipeline.stack.runtime.influx.write_lines(lines, "fraud")
        found = wait_for(pipeline, now, now + count, count, measurement="oversized_probe_scored")
        task = client.get_task("bad_input_oversized")
    finally:
        client.delete_task("bad_input_oversized")
    assert task.executing, f"the 413 stopped the task: {task.error}"
    assert len(found) == count, "every point of a refused batch must still leave the pipeline"
    refused = [row for row in found.values() if row["scored"] is False]
    assert refused, "no batch went over the service's row limit"
    assert all("413" in row["error"] for row in refused), refused[0]["error"]
