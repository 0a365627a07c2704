"""The agent's window features (issue 17): per-series state, warming up, late and out-of-order points, and
the rebuild from InfluxDB history after a restart, against the real scoring service and a real influxd.

The agent runs in this process (`udf_agent_factory`), driven over its socket as Kapacitor drives it
(`UdfWire`); the model is the fixture's windowed `meters` detector (tests/fixtures/udf.py). What the agent
computed is read back from the points it returns (`.writeFeatures(TRUE)` writes every model column) and
compared with training's code, tickguard.windows, replaying the same points in the same order.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import requests

from tests._wait import poll
from tests.fixtures.udf import UdfWire
from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import frame
from tickguard.agent.history import HistoryReader, SeriesSource, history_statement
from tickguard.agent.schema import ERROR, EXPECTED_HIGH, EXPECTED_LOW, SCORED, schema_for
from tickguard.influx import encode_line
from tickguard.windows import OK, OUT_OF_ORDER, WARMING_UP, WindowFeatures, WindowInputError

HOUR = 3_600 * 10**9
T0 = 1_700_000_000 * 10**9
_databases = itertools.count()


@pytest.fixture(scope="module")
def meters(udf_model_dir: Path):
    """The windowed fixture detector the served `meters` model was trained for."""
    from tickguard.detectors import load_detector

    return load_detector(udf_model_dir / "meters.toml")


def meter_point(meter: str | None, time_ns: int, value=None, database: str = "meters") -> pb.Request:
    """A point as Kapacitor sends it from `database`.autogen.readings (value None = no `v` field)."""
    request = pb.Request()
    point = request.point
    point.time = time_ns
    point.name = "readings"
    point.database = database
    point.retentionPolicy = "autogen"
    if meter is not None:
        point.tags["meter"] = meter
    if isinstance(value, str):
        point.fieldsString["v"] = value
    elif isinstance(value, int):
        point.fieldsInt["v"] = value
    elif value is not None:
        point.fieldsDouble["v"] = value
    return request


def exchange(wire: UdfWire, requests_: list[pb.Request]) -> list[pb.Point]:
    """Send every point, return every point the agent sends back (in order)."""
    for request in requests_:
        wire.send(request)
    return [wire.receive_kind("point").point for _ in requests_]


def open_wire(agent, **options) -> UdfWire:
    wire = UdfWire(agent.socket_path)
    # As the rendered score task asks (tickguard.stack.tasks from schema_for): lean output keeping `v`.
    response = wire.init(model="meters", labelField="", keep="v", writeFeatures=True, **options)
    assert response.init.success, response.init.error
    return wire


def expected_results(features: WindowFeatures, requests_: list[pb.Request]) -> list:
    """What training's code gives for the same points in the same order (a bad field -> its error text)."""
    out = []
    for request in requests_:
        point = request.point
        fields = {**point.fieldsDouble, **point.fieldsInt, **point.fieldsString}
        try:
            out.append(features.push_point(dict(point.tags), point.time, fields))
        except WindowInputError as exc:
            out.append(exc)
    return out


def assert_same(points: list[pb.Point], expected: list, columns: tuple[str, ...]) -> dict[str, int]:
    """Every returned point carries exactly what tickguard.windows computed for it; counts by outcome."""
    seen = {"scored": 0, WARMING_UP: 0, OUT_OF_ORDER: 0, "bad": 0}
    for index, (point, result) in enumerate(zip(points, expected, strict=True)):
        if isinstance(result, Exception):
            assert point.fieldsBool[SCORED] is False, index
            assert "'v'" in point.fieldsString[ERROR], (index, point.fieldsString[ERROR])
            seen["bad"] += 1
        elif result.status != OK:
            assert point.fieldsBool[SCORED] is False, index
            assert point.fieldsString[ERROR] == result.status, index
            assert EXPECTED_LOW not in point.fieldsDouble
            seen[result.status] += 1
        else:
            assert point.fieldsBool[SCORED] is True, (index, point.fieldsString.get(ERROR))
            # The value fields stay as the point carried them (an integer stays an integer).
            live = tuple(
                float(point.fieldsInt[name]) if name in point.fieldsInt else point.fieldsDouble[name]
                for name in columns
            )
            assert live == result.features, index  # exactly: the same code on the same numbers
            assert point.fieldsDouble[EXPECTED_LOW] == result.expected_low
            assert point.fieldsDouble[EXPECTED_HIGH] == result.expected_high
            assert ("late" in point.fieldsBool) is result.late and point.fieldsBool.get("late", True)
            seen["scored"] += 1
    return seen


def test_schema_of_a_windowed_detector_keeps_its_values_and_declares_the_range(meters) -> None:
    schema = schema_for(meters)
    assert "v" in schema.keep_fields
    assert schema.field_types()[EXPECTED_LOW] == schema.field_types()[EXPECTED_HIGH] == "float"
    assert schema.label_field == "" and "tp" not in schema.field_types()


def test_live_features_equal_trainings_with_gaps_late_and_out_of_order_points(
    udf_agent_factory, scoring_service, meters
) -> None:
    agent = udf_agent_factory(url=scoring_service.url)
    wire = open_wire(agent)
    sequence: list[pb.Request] = []
    for i in range(20):  # two interleaved series, hourly
        sequence += [
            meter_point("a", T0 + i * HOUR, 10.0 + (i % 5)),
            meter_point("b", T0 + i * HOUR, float(i)),
        ]
    sequence.append(meter_point("a", T0 + 40 * HOUR, 30.0))  # a gap of 20 hours
    sequence.append(meter_point("a", T0 + 18 * HOUR + 1, 99.0))  # late: between kept points
    sequence.append(meter_point("a", T0 + 19 * HOUR, 11.5))  # the time of a kept point: replaces it
    sequence.append(meter_point("a", T0 - 100 * HOUR, 5.0))  # older than everything kept: out of order
    sequence.append(meter_point("b", T0 + 21 * HOUR, None))  # no value: unscored, stays out of the state
    sequence.append(meter_point("b", T0 + 22 * HOUR, "high"))  # a string value: the same
    sequence.append(meter_point("b", T0 + 23 * HOUR, 7))  # an integer field is a number
    sequence.append(meter_point(None, T0, 1.0))  # no tag: series "" (warming up)
    points = exchange(wire, sequence)
    wire.close()
    expected = expected_results(WindowFeatures.from_spec(meters), sequence)
    seen = assert_same(points, expected, meters.request_fields)
    assert seen == {"scored": 20 * 2 - 2 * 4 + 4, WARMING_UP: 2 * 4 + 1, OUT_OF_ORDER: 1, "bad": 2}
    # The scores are the service's for those very rows.
    scored = [
        (p, r) for p, r in zip(points, expected, strict=True) if not isinstance(r, Exception) and r.scored
    ]
    body = {"columns": list(meters.request_fields), "data": [list(r.features) for _p, r in scored]}
    answer = requests.post(f"{scoring_service.url}/predict?model=meters", json=body, timeout=10).json()
    for (point, _result), prediction in zip(scored, answer["predictions"], strict=True):
        assert point.fieldsDouble["score"] == pytest.approx(prediction["score"], abs=1e-12)
    # The connection is closed, so its state goes with it; the agent notices the close on its own thread,
    # a moment after the client's close() returns.
    assert poll(lambda: agent.server.window_series() == 0, timeout=10, interval=0.05)


def test_without_writefeatures_a_scored_point_carries_only_the_range(
    udf_agent_factory, scoring_service, meters
) -> None:
    agent = udf_agent_factory(url=scoring_service.url)
    wire = UdfWire(agent.socket_path)
    assert wire.init(model="meters", labelField="", keep="v").init.success
    points = exchange(wire, [meter_point("a", T0 + i * HOUR, float(i % 3)) for i in range(6)])
    wire.close()
    assert [p.fieldsBool[SCORED] for p in points] == [False] * 4 + [True] * 2
    assert "mean4(v)" not in points[-1].fieldsDouble and EXPECTED_LOW in points[-1].fieldsDouble


# ---- restart: the state comes back from InfluxDB -------------------------------------------------------


def write_history(influx_server, database: str, rows: list[tuple[str, int, object]]) -> None:
    influx_server.create_database(database)
    lines = [encode_line("readings", {"meter": m}, {"v": v}, t) for m, t, v in rows]
    influx_server.write_lines(lines, database)


def test_after_a_restart_each_series_is_rebuilt_from_influxdb_history(
    udf_agent_factory, scoring_service, influx_server, meters
) -> None:
    database = f"meters_history_{next(_databases)}"
    history = [("a", T0 + i * HOUR, 20.0 + (i % 7)) for i in range(30)]
    history += [("b", T0 + i * HOUR, float(i)) for i in range(3)]  # too short: b still warms up
    write_history(influx_server, database, history)
    # The new points are in InfluxDB too before the agent sees them (Kapacitor's subscription comes after
    # the write): the rebuild must read only what is older than each series' first new point.
    new = [("a", T0 + (30 + i) * HOUR, 25.0 + i) for i in range(3)] + [("b", T0 + 3 * HOUR, 3.0)]
    new += [("c", T0 + 5 * HOUR, 1.0)]
    write_history(influx_server, database, new)
    agent = udf_agent_factory(url=scoring_service.url, influx_url=influx_server.url)
    wire = open_wire(agent)
    sequence = [meter_point(m, t, v, database=database) for m, t, v in new]
    points = exchange(wire, sequence)
    wire.close()

    features = WindowFeatures.from_spec(meters)  # training's code over the whole history, in time order
    for meter, t, v in sorted(history, key=lambda row: row[1]):
        features.push((meter,), t, [float(v)])
    expected = expected_results(features, sequence)
    seen = assert_same(points, expected, meters.request_fields)
    assert points[0].fieldsBool[SCORED] is True  # no warming up for `a` after the restart
    assert seen == {"scored": 3, WARMING_UP: 2, OUT_OF_ORDER: 0, "bad": 0}  # b: 3 points kept, c: none


def test_reading_history_does_not_eat_the_points_time_budget(
    udf_agent_factory, scoring_service, influx_server, meters
) -> None:
    """After a restart, many new series are read back before their first points can be scored: that time
    is the agent's, not the scoring service's, so it extends the points' budget (maxDelay) instead of
    turning them into unscored points (benchmarks/window_memory.py: 9,000 of 10,000 before)."""
    database = f"meters_budget_{next(_databases)}"
    series = [f"s{i}" for i in range(1500)]
    write_history(influx_server, database, [(m, T0 + i * HOUR, float(i)) for m in series for i in range(12)])
    agent = udf_agent_factory(url=scoring_service.url, influx_url=influx_server.url)
    wire = open_wire(agent, maxDelay=("duration", 150_000_000), flushInterval=("duration", 0))
    sequence = [meter_point(m, T0 + 12 * HOUR, 1.0, database=database) for m in series]
    wire.send_raw(b"".join(frame(request.SerializeToString()) for request in sequence))
    points = [wire.receive_kind("point").point for _ in sequence]
    assert agent.server.metrics.snapshot()["tickguard_udf_window_series"] == len(series)
    wire.close()
    assert [p.fieldsString.get(ERROR, "") for p in points] == [""] * len(series)
    # Closed, the connection's state is gone.
    assert poll(lambda: agent.server.metrics.snapshot()["tickguard_udf_window_series"] == 0, 10, 0.1)


def test_without_influxdb_settings_new_series_warm_up(udf_agent_factory, scoring_service) -> None:
    agent = udf_agent_factory(url=scoring_service.url, influx_url="")
    wire = open_wire(agent)
    points = exchange(wire, [meter_point("a", T0 + i * HOUR, 1.0 + i) for i in range(5)])
    wire.close()
    assert [p.fieldsString.get(ERROR, "") for p in points] == [WARMING_UP] * 4 + [""]


def test_an_unreachable_influxdb_leaves_the_series_warming_up_and_every_point_leaves(
    udf_agent_factory, scoring_service
) -> None:
    from tickguard.runtime import free_port

    agent = udf_agent_factory(url=scoring_service.url, influx_url=f"http://127.0.0.1:{free_port()}")
    wire = open_wire(agent, timeout=("duration", 200_000_000))
    started = time.monotonic()
    points = exchange(wire, [meter_point(m, T0 + i * HOUR, 1.0) for i in range(5) for m in "xy"])
    wire.close()
    assert len(points) == 10
    assert [p.fieldsString.get(ERROR, "") for p in points] == [WARMING_UP] * 8 + [""] * 2
    assert time.monotonic() - started < 10  # one failed read for both series, not one per point


def test_history_reader_reads_the_newest_points_before_a_time_in_few_requests(influx_server) -> None:
    database = f"meters_reader_{next(_databases)}"
    rows = [(m, T0 + i * HOUR, float(i)) for m in ("a", "b", "c", "d", "e") for i in range(10)]
    write_history(influx_server, database, rows)
    # A point of `a` without `v` (another field only): not a usable point, as it is not one live.
    influx_server.write_lines(
        [encode_line("readings", {"meter": "a"}, {"w": 1.0}, T0 + 4 * HOUR + 1)], database
    )
    reader = HistoryReader(influx_server.client(), statements_per_request=2)
    sources = {m: SeriesSource(database, "autogen", "readings", (("meter", m),)) for m in "abcdef"}
    found = reader.recent(((sources[m], T0 + 5 * HOUR) for m in "abcdef"), ("v",), limit=3)
    assert reader.requests == 3  # six series, two statements per request
    assert found[sources["a"]] == [(T0 + 2 * HOUR, (2.0,)), (T0 + 3 * HOUR, (3.0,)), (T0 + 4 * HOUR, (4.0,))]
    assert found[sources["f"]] == []  # no such series
    statement = history_statement(sources["a"], ("v",), T0, 3)
    assert statement.endswith("ORDER BY time DESC LIMIT 3") and "\"meter\" = 'a'" in statement


def test_write_features_option_is_declared_and_parsed() -> None:
    from tickguard.agent.config import agent_settings
    from tickguard.agent.options import DECLARED_OPTIONS, defaults, parse_options

    assert DECLARED_OPTIONS["writeFeatures"] == pb.BOOL
    option = pb.Option(name="writeFeatures")
    option.values.add(type=pb.BOOL, boolValue=True)
    assert parse_options([option], defaults(agent_settings({}))).write_features is True
    assert defaults(agent_settings({})).write_features is False
