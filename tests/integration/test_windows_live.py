"""Window features live (issue 17): real influxd, kapacitord, scoring service and UDF agent, a windowed detector.

The fixture's `meters` detector (tests/fixtures/udf.py: series by tag `meter`, lags, a difference, a rolling
window with an expected range, hour of day) is deployed as production deploys it (tickguard.stack.deploy,
from the task templates). Points reach the agent through Kapacitor's subscription in four phases:

1. in order, interleaved series, then a gap, a late point, a point older than everything its series keeps
   (out of order) and a point without the value field;
2. the agent is stopped: Kapacitor's task loses its UDF and these points are never scored (a real gap);
3. a new agent (with InfluxDB settings) and the task restarted: every series' state is rebuilt from
   InfluxDB's history; new series warm up; a late point lands among rebuilt points;
4. `tickguard backfill` scores the gap, rebuilding the state from the history before it.

The agent writes what it computed (TICKGUARD_UDF_WRITE_FEATURES: every model column as a field), and each
phase is compared, exactly, with training's code (tickguard.windows) over the same points in the same order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import requests

from tests._wait import poll
from tests.fixtures.tmp_hygiene import short_dir
from tests.fixtures.udf import ScoringServiceThread
from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import agent_settings
from tickguard.agent.schema import ERROR, EXPECTED_HIGH, EXPECTED_LOW, SCORED
from tickguard.agent.server import Listener, UdfServer
from tickguard.influx import encode_line
from tickguard.runtime import TickRuntime
from tickguard.windows import OK, OUT_OF_ORDER, WARMING_UP, WindowFeatures, features_for_frame

pytestmark = [pytest.mark.tick, pytest.mark.slow]

HOUR = 3_600 * 10**9
T = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
DB = "meters"
SOURCE, SCORED_MEASUREMENT = "readings", "readings_scored"
WAIT_S = 60


class Scenario:
    """The running servers, what was written in each phase (in arrival order), and helpers."""

    def __init__(self, runtime: TickRuntime, service: ScoringServiceThread, spec, socket_path: Path) -> None:
        self.runtime = runtime
        self.service = service
        self.spec = spec
        self.socket_path = socket_path
        self.agent: UdfServer | None = None
        self.phases: dict[str, list[tuple[str, int, dict]]] = {}
        self.backfill = None
        self.backfill_settings = None

    def start_agent(self, influx_url: str) -> None:
        settings = dataclasses.replace(
            agent_settings({}),
            url=self.service.url,
            metrics_port=0,
            log_interval_s=0,
            kapacitor_url="",
            influx_url=influx_url,
            write_features=True,
        )
        self.agent = UdfServer(settings, [Listener(self.socket_path, pb.STREAM)])
        self.agent.start()

    def write(self, phase: str, points: list[tuple[str, int, dict]]) -> None:
        """Write points in one request, in this order (the order Kapacitor forwards them)."""
        self.phases.setdefault(phase, []).extend(points)
        lines = [encode_line(SOURCE, {"meter": meter}, fields, time_ns) for meter, time_ns, fields in points]
        self.runtime.influx.write_lines(lines, DB)

    def count(self, measurement: str) -> int:
        rows = self.runtime.influx.select(f'SELECT count("scored") FROM "{measurement}"', DB)
        return int(rows[0]["count"]) if rows else 0

    def wait_scored(self, expected: int) -> None:
        got = poll(lambda: self.count(SCORED_MEASUREMENT) >= expected, WAIT_S)
        assert got, f"{self.count(SCORED_MEASUREMENT)} of {expected} points reached {SCORED_MEASUREMENT}"

    def scored_points(self) -> dict[tuple[str, int], dict]:
        rows = self.runtime.influx.select(f'SELECT * FROM "{SCORED_MEASUREMENT}"', DB)
        return {(row["meter"], int(row["time"])): row for row in rows}


def hourly(meter: str, hours: range, value=lambda h: 10.0 + (h % 5) * 1.5) -> list[tuple[str, int, dict]]:
    return [(meter, T + h * HOUR, {"v": float(value(h))}) for h in hours]


@pytest.fixture(scope="module")
def scenario(tick_binaries, udf_model_dir: Path, tmp_path_factory) -> Scenario:
    from tickguard.detectors import load_detector
    from tickguard.stack import deploy, tasks

    spec = load_detector(udf_model_dir / "meters.toml")
    service = ScoringServiceThread(udf_model_dir).start()
    socket_path = short_dir("win-") / "udf.sock"
    runtime = TickRuntime(
        tmp_path_factory.mktemp("windows-live"),
        udfs={"tickguard": (socket_path, "10s")},
        binaries=tick_binaries,
    )
    scene = Scenario(runtime, service, spec, socket_path)
    scene.start_agent(influx_url="")  # influxd's port is not known yet: the first agent cannot read history
    try:
        runtime.start()
        runtime.create_database(DB)
        workdir = tmp_path_factory.mktemp("windows-alerts")
        overrides = tasks.alert_output_vars(workdir / "alerts.log", workdir / "alerts.json")
        deploy.deploy(runtime.kapacitor_client(), spec, overrides)
        score_task = tasks.score_task_id(spec.name)
        kapacitor = runtime.kapacitor_client()

        # Phase 1: in order, then a gap, a late point, an out-of-order point and a point without `v`.
        first = []
        for hour in range(15):
            first += hourly("m1", range(hour, hour + 1)) + hourly(
                "m2", range(hour, hour + 1), lambda h: h * 2.0
            )
        first += hourly("m3", range(3))
        scene.write("live1", first)
        scene.wait_scored(len(first))
        scene.write(
            "live1",
            [
                ("m1", T + 30 * HOUR, {"v": 30.0}),  # 16 hours after the previous point of m1
                ("m1", T + 13 * HOUR + HOUR // 2, {"v": 99.0}),  # late, among kept points
                ("m2", T - 50 * HOUR, {"v": 5.0}),  # older than every point m2 keeps (it is full)
                ("m2", T + 15 * HOUR, {"w": 1.0}),  # no value field
            ],
        )
        scene.wait_scored(len(scene.phases["live1"]))

        # Phase 2: the agent goes away; Kapacitor's task fails and these points are never scored.
        scene.agent.stop()
        poll(lambda: not kapacitor.get_task(score_task).executing, 20, 0.2)
        scene.write(
            "gap",
            hourly("m1", range(31, 36))
            + hourly("m2", range(16, 20), lambda h: h * 2.0)
            + hourly("m4", range(3)),
        )

        # Phase 3: a new agent that can read InfluxDB; the task restarted (the watchdog's job in production).
        scene.start_agent(influx_url=runtime.influx_url)
        kapacitor.disable_task(score_task)
        kapacitor.enable_task(score_task)
        assert poll(lambda: kapacitor.get_task(score_task).executing, 20, 0.2)
        scored_before = scene.count(SCORED_MEASUREMENT)
        after = hourly("m1", range(36, 40)) + hourly("m2", range(20, 23), lambda h: h * 2.0)
        after += hourly("m3", range(3, 8)) + hourly("m5", range(6))
        scene.write("live2", after)
        scene.wait_scored(scored_before + len(after))
        scene.write("live2", [("m1", T + 32 * HOUR + HOUR // 2, {"v": 50.0})])  # late, among rebuilt points
        scene.wait_scored(scored_before + len(after) + 1)

        # Phase 4: backfill the gap, as `tickguard backfill` does with the detector's settings.
        from tickguard.ops.backfill import Backfiller
        from tickguard.ops.config import apply_detector, backfill_settings

        settings = dataclasses.replace(
            apply_detector(backfill_settings({}), spec),
            influx_url=runtime.influx_url,
            api_url=service.url,
            username="",
            password="",
            write_features=True,
        )
        # Only the missing points: points the live agent left unscored keep their live record here, so the
        # phases above can be checked as they were written.
        scene.backfill = Backfiller(settings, rescore_unscored=False).run(T - 60 * HOUR, T + 45 * HOUR)
        scene.backfill_settings = settings
        yield scene
    finally:
        runtime.stop()
        if scene.agent is not None:
            scene.agent.stop()
        service.stop()


def replay(features: WindowFeatures, points: list[tuple[str, int, dict]]) -> list:
    """Training's code over (meter, time, fields) in this order; a point without `v` gives None."""
    out = []
    for meter, time_ns, fields in points:
        out.append(features.push_point({"meter": meter}, time_ns, fields) if "v" in fields else None)
    return out


def check(points: dict, written: list[tuple[str, int, dict]], expected: list, columns) -> dict[str, int]:
    """Each written point's scored counterpart holds exactly what training's code computed for it."""
    seen = {"scored": 0, WARMING_UP: 0, OUT_OF_ORDER: 0, "no value": 0}
    for (meter, time_ns, _fields), result in zip(written, expected, strict=True):
        point = points[(meter, time_ns)]
        where = (meter, time_ns)
        if result is None:
            assert point[SCORED] is False and "'v'" in point[ERROR], where
            seen["no value"] += 1
        elif result.status != OK:
            assert point[SCORED] is False and point[ERROR].endswith(result.status), (where, point[ERROR])
            assert point[EXPECTED_LOW] is None, where
            seen[result.status] += 1
        else:
            assert point[SCORED] is True, (where, point[ERROR])
            assert tuple(float(point[name]) for name in columns) == result.features, where
            assert (point[EXPECTED_LOW], point[EXPECTED_HIGH]) == (result.expected_low, result.expected_high)
            assert point["late"] is (True if result.late else None), where
            seen["scored"] += 1
    return seen


def test_live_features_equal_trainings_with_gaps_late_and_out_of_order_points(scenario) -> None:
    points = scenario.scored_points()
    written = scenario.phases["live1"]
    expected = replay(WindowFeatures.from_spec(scenario.spec), written)
    seen = check(points, written, expected, scenario.spec.request_fields)
    # m1, m2: 4 warming up each (lag 2, rolling 4); m3: 3 points, all warming up.
    assert seen == {"scored": 2 * 11 + 2, WARMING_UP: 4 + 4 + 3, OUT_OF_ORDER: 1, "no value": 1}


def test_after_the_agent_restart_the_state_is_rebuilt_from_influxdb(scenario) -> None:
    """The new agent's features equal training's code whose state holds, per series, the last `capacity`
    points InfluxDB has before that series' first new point (phase 1 and the gap), then the new points."""
    spec = scenario.spec
    stored = [p for phase in ("live1", "gap") for p in scenario.phases[phase] if "v" in p[2]]
    written = scenario.phases["live2"]
    features = WindowFeatures.from_spec(spec)
    first_new: dict[str, int] = {}
    for meter, time_ns, _fields in written:
        first_new.setdefault(meter, time_ns)
    for meter, first in first_new.items():
        history = [(t, [f["v"]]) for m, t, f in stored if m == meter and t < first]
        features.rebuild((meter,), sorted(history)[-spec.windows.capacity :])
    seen = check(scenario.scored_points(), written, replay(features, written), spec.request_fields)
    # m1, m2 and m3 go on without warming up (m3 had 3 points: one more warms up); m5 is new.
    assert seen == {"scored": 4 + 3 + 4 + 2 + 1, WARMING_UP: 1 + 4, OUT_OF_ORDER: 0, "no value": 0}


def test_backfill_rebuilds_the_state_from_history_before_the_gap(scenario) -> None:
    """The gap's points, backfilled, carry training's features over the stored history in time order."""
    import pandas as pd

    report = scenario.backfill
    gap = scenario.phases["gap"]
    assert (report.missing, report.written) == (len(gap), len(gap))
    stored = [p for phase in ("live1", "gap", "live2") for p in scenario.phases[phase] if "v" in p[2]]
    frame = pd.DataFrame([{"meter": m, "time": t, "v": f["v"]} for m, t, f in stored]).sort_values(
        "time", kind="stable"
    )
    truth = features_for_frame(frame, scenario.spec)
    by_point = {(row.meter, row.time): index for index, row in frame.iterrows()}
    points = scenario.scored_points()
    columns = scenario.spec.request_fields
    seen = 0
    for meter, time_ns, _fields in gap:
        point, row = points[(meter, time_ns)], truth.loc[by_point[(meter, time_ns)]]
        assert point["backfilled"] is True
        if row["status"] == OK:
            assert point[SCORED] is True
            assert tuple(float(point[name]) for name in columns) == tuple(row[list(columns)])
            assert (point[EXPECTED_LOW], point[EXPECTED_HIGH]) == (row["expected_low"], row["expected_high"])
            seen += 1
        else:
            assert point[SCORED] is False and point[ERROR].endswith(row["status"])
    assert seen == 5 + 4  # m1 and m2 had history before the gap; m4 is new and warms up


def test_backfilled_points_have_the_live_points_fields_and_the_services_scores(scenario) -> None:
    points = scenario.scored_points()
    live = [p for p in points.values() if p[SCORED] is True and not p.get("backfilled") and not p.get("late")]
    filled = [p for p in points.values() if p[SCORED] is True and p.get("backfilled")]
    assert live and filled
    names = {k for k, v in live[0].items() if v is not None} - {"latency_ms"}
    for point in filled:
        assert {k for k, v in point.items() if v is not None} - {"backfilled"} == names
    columns = list(scenario.spec.request_fields)
    body = {"columns": columns, "data": [[p[name] for name in columns] for p in live + filled]}
    answer = requests.post(f"{scenario.service.url}/predict?model=meters", json=body, timeout=30).json()
    for point, prediction in zip(live + filled, answer["predictions"], strict=True):
        assert point["score"] == pytest.approx(prediction["score"], abs=1e-12)
        assert point["anomaly"] is prediction["anomaly"]


def test_every_point_that_went_in_came_out(scenario) -> None:
    written = sum(len(points) for points in scenario.phases.values())
    assert len(scenario.runtime.influx.select(f'SELECT * FROM "{SOURCE}"', DB)) == written
    assert scenario.count(SCORED_MEASUREMENT) == written  # the gap's points through the backfill


def test_a_missing_point_is_found_beside_other_series_points_of_its_timestamp(
    scenario, udf_model_dir: Path, monkeypatch
) -> None:
    """Several series share timestamps, so a raw point is matched to its scored one by timestamp and series
    key, also when the settings name an id field (the environment's default, `txid`, as after a watchdog
    heal) the points lack: m4's scored point at T is removed, m1, m2 and m3 have theirs at T."""
    from tickguard.ops.backfill import Backfiller

    scenario.runtime.influx.query(
        f'DELETE FROM "{SCORED_MEASUREMENT}" WHERE "meter" = \'m4\' AND time = {T}', DB
    )
    assert ("m4", T) not in scenario.scored_points() and ("m1", T) in scenario.scored_points()
    settings = dataclasses.replace(scenario.backfill_settings, id_field="txid")
    # A dry run (no scoring service asked) knows the series tags from the detector file.
    monkeypatch.setenv("TICKGUARD_DETECTORS_DIR", str(udf_model_dir))  # where meters.toml is
    counted = Backfiller(settings, rescore_unscored=False, dry_run=True).run(T - 60 * HOUR, T + 45 * HOUR)
    assert (counted.missing, counted.written) == (1, 0)
    found = Backfiller(settings, rescore_unscored=False).run(T - 60 * HOUR, T + 45 * HOUR)
    assert (found.missing, found.written) == (1, 1)
    assert scenario.scored_points()[("m4", T)]["backfilled"] is True
    again = Backfiller(dataclasses.replace(settings, id_field=""), rescore_unscored=False).run(
        T - 60 * HOUR, T + 45 * HOUR
    )
    assert (again.missing, again.written) == (0, 0)


def window_backfill(scenario, **options):
    from tickguard.ops.backfill import Backfiller

    return Backfiller(scenario.backfill_settings, **options).run(T - 60 * HOUR, T + 60 * HOUR)


def test_a_default_backfill_leaves_points_unscored_for_their_live_reason_as_they_are(scenario) -> None:
    """Series that start fresh (m1..m5's first points, live and backfilled), the out-of-order point (no
    history before it either) and the point without `v`: a default backfill (re-scoring unscored points)
    finds the reason the live task gave each, and rewrites none of them. One exception, by design: in time
    order the out-of-order point (T - 50 h) is m2's first, so m2's fourth point at T + 3 h has a full window
    for the backfill and is scored from it."""
    before = scenario.scored_points()
    unscored = {key: point for key, point in before.items() if point[SCORED] is False}
    errors = sorted(point[ERROR] for point in unscored.values())
    assert errors.count(WARMING_UP) == 4 + 4 + 3 + 1 + 4  # live1: m1, m2, m3; live2: m3, m5
    assert errors.count("backfill: " + WARMING_UP) == 3  # m4, the gap's new series
    assert OUT_OF_ORDER in errors and "missing value field 'v'" in errors
    dry = window_backfill(scenario, dry_run=True)
    assert (dry.unscored_counterparts, dry.to_score, dry.written) == (len(unscored), len(unscored), 0)
    assert f"would write at most {len(unscored)} " in dry.summary()

    report = window_backfill(scenario)
    assert (
        (report.unscored_counterparts, report.left_as_live) == (len(unscored), len(unscored) - 1) == (21, 20)
    )
    assert (report.missing, report.written, report.scored) == (0, 1, 1)
    assert report.written + report.left_as_live == report.to_score + report.left_as_live == 21
    assert report.source_points == report.already_scored + report.unscored_counterparts == len(before)
    assert "left 20 unscored as live (same reason)" in report.summary()
    after = scenario.scored_points()
    rescored = after.pop(("m2", T + 3 * HOUR))
    assert before.pop(("m2", T + 3 * HOUR))[ERROR] == WARMING_UP
    assert after == before  # every field, error text included, as the live task (or first backfill) wrote it
    m2 = sorted((t, f) for m, t, f in scenario.phases["live1"] if m == "m2" and "v" in f)
    in_time_order = WindowFeatures.from_spec(scenario.spec)
    results = [in_time_order.push_point({"meter": "m2"}, t, f) for t, f in m2 if t <= T + 3 * HOUR]
    assert [r.status for r in results] == [WARMING_UP] * 4 + [OK]
    assert rescored[SCORED] is True and rescored["backfilled"] is True and rescored[ERROR] == ""
    columns = scenario.spec.request_fields
    assert tuple(float(rescored[name]) for name in columns) == results[-1].features


def test_a_default_backfill_scores_warming_up_points_that_history_fills_as_a_live_agent_would(
    scenario,
) -> None:
    """An agent restarted without InfluxDB (no history) leaves m1's and m2's next points warming up though
    their series are long; a default backfill rebuilds them from InfluxDB and writes what an agent with
    history writes (same features as training's code over the stored history, the service's scores). A new
    series (m6) is warming up for the backfill too and stays as written."""
    kapacitor = scenario.runtime.kapacitor_client()
    from tickguard.stack import tasks

    score_task = tasks.score_task_id(scenario.spec.name)
    scenario.agent.stop()
    poll(lambda: not kapacitor.get_task(score_task).executing, 20, 0.2)
    scenario.start_agent(influx_url="")  # restart without history
    kapacitor.disable_task(score_task)
    kapacitor.enable_task(score_task)
    assert poll(lambda: kapacitor.get_task(score_task).executing, 20, 0.2)
    stored = [p for phase in ("live1", "gap", "live2") for p in scenario.phases[phase] if "v" in p[2]]
    cold = hourly("m1", range(40, 44)) + hourly("m2", range(23, 27), lambda h: h * 2.0)
    cold += hourly("m6", range(2))
    count_before = scenario.count(SCORED_MEASUREMENT)
    scenario.write("cold", cold)
    scenario.wait_scored(count_before + len(cold))
    live = scenario.scored_points()
    assert all(live[(m, t)][ERROR] == WARMING_UP for m, t, _f in cold)  # not one scored: no history
    others = {
        key: point
        for key, point in live.items()
        if key[0] != "m6" and key not in {(m, t) for m, t, _ in cold}
    }

    # What an agent with history writes (test_after_the_agent_restart...: its state is the stored history).
    spec = scenario.spec
    features = WindowFeatures.from_spec(spec)
    for meter in ("m1", "m2"):
        first = min(t for m, t, _f in cold if m == meter)
        history = sorted((t, [f["v"]]) for m, t, f in stored if m == meter and t < first)
        features.rebuild((meter,), history[-spec.windows.capacity :])
    expected = replay(features, cold)

    report = window_backfill(scenario)
    assert (report.missing, report.written, report.scored, report.unscorable) == (0, 8, 8, 0)
    assert report.left_as_live == 20 + 2  # the points of the test above and m6's two
    assert report.written + report.left_as_live == report.unscored_counterparts == 8 + 22
    assert report.source_points == report.already_scored + report.unscored_counterparts
    points = scenario.scored_points()
    assert (
        len(points)
        == scenario.count(SCORED_MEASUREMENT)
        == len(scenario.runtime.influx.select(f'SELECT * FROM "{SOURCE}"', DB))
    )
    columns = spec.request_fields
    filled = []
    for (meter, time_ns, _fields), result in zip(cold, expected, strict=True):
        point = points[(meter, time_ns)]
        if meter == "m6":
            assert result.status == WARMING_UP and point == live[(meter, time_ns)]
            continue
        assert result.status == OK and point[SCORED] is True and point["backfilled"] is True
        assert point[ERROR] == ""  # the live reason cleared (InfluxDB keeps a field once written)
        assert tuple(float(point[name]) for name in columns) == result.features
        assert (point[EXPECTED_LOW], point[EXPECTED_HIGH]) == (result.expected_low, result.expected_high)
        filled.append(point)
    body = {"columns": list(columns), "data": [list(r.features) for r in expected if r.status == OK]}
    answer = requests.post(f"{scenario.service.url}/predict?model=meters", json=body, timeout=30).json()
    for point, prediction in zip(filled, answer["predictions"], strict=True):
        assert point["score"] == pytest.approx(prediction["score"], abs=1e-12)
        assert point["anomaly"] is prediction["anomaly"]
    # A live scored point has the same fields (the history-rebuilt agent's, from phase 3).
    live_scored = next(
        p for p in others.values() if p[SCORED] is True and not p.get("backfilled") and not p.get("late")
    )
    names = {k for k, v in live_scored.items() if v is not None} - {"latency_ms", ERROR}
    # (latency_ms: the live agent's for its unscored write; InfluxDB keeps fields an overwrite lacks.)
    assert {k for k, v in filled[0].items() if v is not None} - {"backfilled", ERROR, "latency_ms"} == names
    assert {key: points[key] for key in others} == others  # nothing else rewritten
    again = window_backfill(scenario)
    assert (again.written, again.left_as_live, again.to_score) == (0, 22, 0)
