"""The bundled waterflow detector live (issue 17, item 4): unlabelled, window features, alerts.

`tickguard up --local --detector waterflow` as a user runs it (tickguard.stack.local: the service serving
models/waterflow/production (see `waterflow_models`), the agent, influxd and kapacitord with the detector's tasks deployed from the
templates). Two stations replay river's hourly water-flow series with its real timestamps: `clean` as it
is, `injected` with anomalies added by the seed-fixed injector (tickguard.data.inject): spikes, a variance
burst and a stuck sensor, of the kinds and sizes the unsupervised benchmark finds (see INJECTED). Then:

- points out = points in for each station; the unscored ones are exactly those whose window is not full
  yet (error `warming up`), as tickguard.windows says for the same points;
- every live score, expected_low and expected_high equals what the service answers for training's window
  features of the same points (features_for_frame): the agent computes what training computes;
- each injected anomaly is flagged, with a waterflow_alert alert (Chronograf's alert history), at a point
  inside its own segment, and the clean station has no flagged point in any of those segments: what is
  flagged is the injection, not something the series does there anyway;
- every panel of the generated waterflow dashboard, interpolated as Grafana would for the replayed range,
  returns data, and its series panel shows each station's value, expected range and score;
- midway through the replay the agent is killed and started again (local mode gives it InfluxDB's URL) and
  the score task reconnected: each series' window is rebuilt from InfluxDB at its first new point, so no
  point after the restart warms up and the checks above hold across it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from tests._wait import poll
from tickguard.agent.schema import ERROR, EXPECTED_HIGH, EXPECTED_LOW, SCORED
from tickguard.influx import InfluxClient, encode_line, quote_ident
from tickguard.stack.local import LocalStack
from tickguard.windows import OK, WARMING_UP, features_for_frame

pytestmark = [pytest.mark.tick, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DETECTOR = "waterflow"
ARRIVAL_TIMEOUT_S = 180
# The injected anomalies: (kind, region of the 1,268-point series, count, seed, size in noise or None for
# the injector's own draw). Where: the benchmark's holdout (points 760-1267, the last 40%; the model never
# saw them) outside the real outage that natural_anomalies marks (872-937), i.e. where
# benchmarks/unsupervised.py measures what tickguard finds. What, from its water-flow rows for this very
# model (same fit): every stuck sensor (12 of 12) and every variance burst (14 of 14) is found, at any size
# the injector draws, so those keep the draw; spikes are found 8 of 14 times over the range of 6-10 noise,
# both above 9.5 noise among them (and 3 of the 4 above 8), so spikes are injected at 10 noise, the
# injector's largest. Level shifts are left out: the benchmark finds 6 of 15 (4-6 noise), at no size
# reliably, and the served model misses this test's old shift (4.0 noise at 750-820; best score inside it
# 0.64, threshold 0.817). Claiming it here would be the claim the benchmark refutes.
INJECTED = (
    ("spike", (938, 1100), 3, 11, 10.0),
    ("variance_burst", (760, 872), 1, 12, None),
    ("stuck", (1100, 1268), 1, 13, None),
)
CHUNK = 200  # lines per write request (100 hours of both stations)
RESTART_AT = 1000  # lines written before the agent restart (500 points per station: full windows)


def waterflow_models(root: Path) -> Path:
    """`root` holding waterflow's models: the committed ones (models/waterflow/production is the shipped
    model), else, in a checkout without them, a model trained here with the unsupervised training's code
    and few trials (a few seconds)."""
    committed = REPO / "models" / DETECTOR
    if (committed / "production").exists():
        (root / DETECTOR).symlink_to(committed, target_is_directory=True)
        return root
    from tickguard import modelstore
    from tickguard.data.series import load_waterflow
    from tickguard.detectors import load_detector
    from tickguard.training.unsupervised import train_unsupervised

    spec = load_detector(DETECTOR)
    series = load_waterflow()
    frame = series.frame.rename(columns={"series": spec.windows.group_by[0], "value": spec.feature_fields[0]})
    train_unsupervised(spec, root / DETECTOR / "live-test", frame, period=series.period, n_trials=3)
    modelstore.promote(root / DETECTOR, "live-test")
    return root


@pytest.fixture(scope="module")
def stack(tick_binaries, tmp_path_factory) -> LocalStack:
    root = tmp_path_factory.mktemp("waterflow-models") / "models"
    root.mkdir()
    waterflow_models(root)
    local = LocalStack(
        tmp_path_factory.mktemp("waterflow-stack"), models_dir=root, detectors=(DETECTOR,), watchdog=False
    )
    local.start()
    yield local
    local.stop()


def injected_copy(values: np.ndarray) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The series with INJECTED's anomalies; (kind, start, end) of each segment."""
    from tickguard.data.inject import inject

    segments: list[tuple[str, int, int]] = []
    for kind, region, count, seed, size in INJECTED:
        result = inject(values, kind, seed, period=24, count=count, region=region, size=size)
        values = result.values
        segments += [(s.kind, s.start, s.end) for s in result.segments]
    return values, segments


def test_the_injected_anomalies_sit_where_the_benchmark_measures() -> None:
    """INJECTED's regions are in the holdout and clear of the series' real anomalies (and the windows they
    spoil), as the benchmark's scored points are: a real outage there would be flagged with or without
    the injection."""
    from tickguard.data.inject import natural_anomalies
    from tickguard.data.series import load_waterflow
    from tickguard.training.unsupervised import TRAIN_SHARE, VALID_SHARE

    values = load_waterflow().frame["value"].to_numpy(dtype=np.float64)
    holdout_start = int((TRAIN_SHARE + VALID_SHARE) * len(values))
    marked = natural_anomalies(values, 24)
    for kind, (start, end), *_ in INJECTED:
        assert start >= holdout_start, (kind, start, holdout_start)
        assert not marked[start:end].any(), (kind, start, end, np.flatnonzero(marked[start:end]) + start)


@pytest.fixture(scope="module")
def replayed(stack: LocalStack) -> dict:
    """Both stations written in time order (interleaved), waited for until every point is scored."""
    from tickguard.data.series import load_waterflow

    spec = stack.detectors[DETECTOR]
    field, tag = spec.feature_fields[0], spec.windows.group_by[0]
    series = load_waterflow().frame
    values = series["value"].to_numpy(dtype=np.float64)
    changed, segments = injected_copy(values)
    frames = [
        pd.DataFrame({"time": series["time"].to_numpy(), tag: station, field: data})
        for station, data in (("clean", values), ("injected", changed))
    ]
    frame = pd.concat(frames, ignore_index=True).sort_values("time", kind="stable").reset_index(drop=True)
    lines = [
        encode_line(spec.source.measurement, {tag: station}, {field: value}, int(t))
        for t, station, value in zip(frame["time"], frame[tag], frame[field], strict=True)
    ]
    client = InfluxClient(stack.influx_url, database=spec.source.database)
    restart_log_offset = None
    # InfluxDB's subscription forwards write requests concurrently (its write-concurrency), so the points of
    # two requests in a row can reach Kapacitor in either order: the agent would place the late ones in time
    # (late=true), but the order would be unknown here. Each request waits for the previous one's scores.
    for offset in range(0, len(lines), CHUNK):
        if offset == RESTART_AT:
            restart_log_offset = restart_agent(stack)
        client.write(lines[offset : offset + CHUNK])
        done = min(offset + CHUNK, len(lines))
        scored = poll(lambda done=done: stack.scored_count(DETECTOR) >= done, ARRIVAL_TIMEOUT_S, 0.1)
        assert scored, f"{stack.scored_count(DETECTOR)} of {done} points scored"
    time.sleep(2)  # nothing more may arrive: exactly N
    return {
        "frame": frame,
        "segments": segments,
        "tag": tag,
        "field": field,
        "restart_log_offset": restart_log_offset,
    }


def restart_agent(stack: LocalStack) -> int:
    """Kill the UDF agent, start it again and reconnect the score task (what the watchdog does); returns
    where the new agent's lines start in its log."""
    from tests.fixtures.pipeline import Pipeline
    from tickguard.stack.deploy import task_ids

    restarted = Pipeline(stack, probe=None)
    restarted.kill_udf()
    log_offset = stack.udf.log_path.stat().st_size
    restarted.start_udf()
    task = stack.runtime.kapacitor_client().reload_task(task_ids(DETECTOR)[0])
    assert task.executing, task.error
    return log_offset


def scored_points(stack: LocalStack) -> pd.DataFrame:
    spec = stack.detectors[DETECTOR]
    rows = stack.query(f"SELECT * FROM {quote_ident(spec.output.measurement)}", spec.source.database)
    return pd.DataFrame(rows)


def test_points_out_equal_points_in_and_only_warming_up_points_leave_unscored(stack, replayed) -> None:
    spec = stack.detectors[DETECTOR]
    frame, tag = replayed["frame"], replayed["tag"]
    out = scored_points(stack)
    assert len(out) == len(frame)
    assert out.groupby(tag).size().to_dict() == frame.groupby(tag).size().to_dict()
    truth = features_for_frame(frame, spec)
    unscored = out[out[SCORED] == False]  # noqa: E712 (a column of booleans)
    assert set(unscored[ERROR]) == {WARMING_UP}
    assert len(unscored) == int((truth["status"] != OK).sum())


def test_live_scores_and_ranges_equal_the_services_on_trainings_features(stack, replayed) -> None:
    spec = stack.detectors[DETECTOR]
    frame, tag = replayed["frame"], replayed["tag"]
    truth = features_for_frame(frame, spec)
    ok = truth["status"] == OK
    columns = list(spec.request_fields)
    body = {"columns": columns, "data": truth.loc[ok, columns].to_numpy().tolist()}
    answer = requests.post(f"{stack.api_url}/predict?model={DETECTOR}", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    expected = frame.loc[ok, ["time", tag]].assign(
        score=[p["score"] for p in answer.json()["predictions"]],
        low=truth.loc[ok, "expected_low"].to_numpy(),
        high=truth.loc[ok, "expected_high"].to_numpy(),
    )
    live = scored_points(stack)
    live = live[live[SCORED] == True]  # noqa: E712
    merged = expected.merge(live, on=["time", tag], how="outer", validate="one_to_one", indicator=True)
    assert (merged["_merge"] == "both").all()
    np.testing.assert_allclose(merged["score_y"], merged["score_x"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(merged[EXPECTED_LOW], merged["low"])
    np.testing.assert_array_equal(merged[EXPECTED_HIGH], merged["high"])


def test_each_injected_anomaly_is_flagged_and_alerted_inside_its_segment_and_not_without_it(
    stack, replayed
) -> None:
    frame, tag = replayed["frame"], replayed["tag"]
    times = frame.loc[frame[tag] == "injected", "time"].to_numpy()
    out = scored_points(stack)
    alerts = poll(
        lambda: stack.query(
            f'SELECT * FROM "chronograf"."autogen"."alerts" WHERE "alertName" = \'{DETECTOR}_alert\'',
            "chronograf",
        ),
        30,
    )

    def caught(station: str) -> dict[tuple[str, int, int], list[int]]:
        """Per injected segment: the station's points inside it that are flagged and alerted."""
        flagged = set(out.loc[(out[tag] == station) & (out["anomaly"] == True), "time"])  # noqa: E712
        alerted = {int(row["time"]) for row in alerts if row[tag] == station}  # a display field
        return {
            (kind, start, end): sorted(set(times[start:end].tolist()) & flagged & alerted)
            for kind, start, end in replayed["segments"]
        }

    injected, clean = caught("injected"), caught("clean")
    assert [kind for kind, _, _ in injected] == ["spike", "spike", "spike", "variance_burst", "stuck"]
    missed = [segment for segment, points in injected.items() if not points]
    assert not missed, f"injected anomalies without a flagged, alerted point inside them: {missed}"
    # The same check on the same points of the series without the injection finds nothing.
    anyway = {segment: points for segment, points in clean.items() if points}
    assert not anyway, f"the clean series is flagged there too: {anyway}"


def test_dashboard_panels_show_the_series_with_its_range_and_score(stack, replayed) -> None:
    from tickguard.stack.dashboards import detector_live, panel_queries

    spec = stack.detectors[DETECTOR]
    board = detector_live(spec)
    times = replayed["frame"]["time"]
    start_ms, end_ms = int(times.min()) // 10**6, int(times.max()) // 10**6
    empty = []
    for title, query in panel_queries(board, start_ms, end_ms):
        rows = stack.query(query, spec.source.database)
        if not any(value is not None for row in rows for key, value in row.items() if key != "time"):
            empty.append((title, query))
        if title == "Series, expected range and score":
            stations = {row.get(replayed["tag"]) for row in rows}
            assert stations == {"clean", "injected"}, (query, stations)
    assert not empty, empty


def test_an_agent_restart_rebuilds_each_series_from_influxdb_instead_of_warming_up(stack, replayed) -> None:
    frame, tag = replayed["frame"], replayed["tag"]
    after = frame.iloc[RESTART_AT:]
    out = scored_points(stack)
    out = out[out["time"].isin(set(after["time"]))]
    assert len(out) == len(after) and set(out[tag]) == {"clean", "injected"}
    # Each series' first point after the restart (and every later one) is scored from its rebuilt window.
    assert (out[SCORED] == True).all(), out.loc[out[SCORED] != True, [tag, ERROR]]  # noqa: E712
    new_agent = stack.udf.log_path.read_bytes()[replayed["restart_log_offset"] :].decode(errors="replace")
    assert f"history from {stack.influx_url}" in new_agent
