"""Window features: the [windows]/[anomaly] spec, hand-checked values, and the parity that training relies on.

The property tests compare the incremental code with a brute-force reference written here (features
recomputed from the sorted list of every point received so far), and the batch path (`features_for_frame`)
and a restart (`rebuild` from history, `snapshot`/`restore`) with the live path, on random streams with
gaps, late points, duplicates and several series.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickguard.detectors import DetectorError, parse_detector
from tickguard.windows import (
    OK,
    OUT_OF_ORDER,
    WARMING_UP,
    WindowFeatures,
    WindowInputError,
    calendar_columns,
    features_for_frame,
)

S = 10**9

BASE = """
name = "probe"
features = ["v"]

[source]
database = "probe"
measurement = "m"

[data]
csv = "probe.csv"

[time]
column = "time"
unit = "ns"

[output]
measurement = "m_scored"

[anomaly]
contamination = 0.02
"""

POINTS_WINDOWS = """
[windows]
group_by = ["host"]
lags = [1, 3]
differences = [2]
seasonal = 4
calendar = ["hour_of_day", "day_of_week"]
expected_range = { window = 0, k = 2.0 }

[[windows.rolling]]
points = 5
stats = ["mean", "std", "min", "max", "median", "mad"]
"""

DURATION_WINDOWS = """
[windows]
group_by = ["host"]
lags = [1]
seasonal = "20s"
capacity = 24

[[windows.rolling]]
duration = "10s"
min_points = 2
stats = ["mean", "std", "median", "mad"]
"""


def parse(text: str):
    return parse_detector(text, "detectors/probe.toml", Path("/x/probe.toml"), expected_name="probe")


POINTS_SPEC = parse(BASE + POINTS_WINDOWS)
DURATION_SPEC = parse(BASE + DURATION_WINDOWS)


# ------------------------------------------------------------------------------------------------ spec


def test_windows_spec_columns_capacity_and_canonical_form() -> None:
    spec = POINTS_SPEC
    assert spec.label is None and spec.anomaly.model == "auto" and spec.anomaly.contamination == 0.02
    assert (spec.threshold.policy, spec.threshold.target) == ("contamination", 0.02)
    assert spec.windows.capacity == 5 + 8  # the largest point count the windows need + room for late points
    assert spec.model_columns == (
        "v",
        "lag1(v)",
        "lag3(v)",
        "diff2(v)",
        "sdiff4(v)",
        "mean5(v)",
        "std5(v)",
        "min5(v)",
        "max5(v)",
        "median5(v)",
        "mad5(v)",
        "hour_sin",
        "hour_cos",
        "dow_sin",
        "dow_cos",
    )
    canonical = DURATION_SPEC.to_dict()
    assert canonical["windows"]["seasonal"] == "20s"
    assert canonical["windows"]["rolling"] == [
        {"duration": "10s", "stats": ["mean", "std", "median", "mad"], "min_points": 2}
    ]
    assert canonical["anomaly"] == {"model": "auto", "contamination": 0.02, "alert_rate": None}
    assert DURATION_SPEC.model_columns[-4:] == ("mean10s(v)", "std10s(v)", "median10s(v)", "mad10s(v)")
    assert POINTS_SPEC.sha256 != DURATION_SPEC.sha256


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


WINDOW_ERRORS = {
    "unknown stat": (
        'stats = ["mean", "std", "min", "max", "median", "mad"]',
        'stats = ["mean", "p99"]',
        "windows.rolling[0].stats[1]: unknown value 'p99' (choose from mean, std, min, max, median, mad)",
    ),
    "lag zero": ("lags = [1, 3]", "lags = [1, 0]", "windows.lags[1]: must be a positive integer"),
    "bad duration": ("seasonal = 4", 'seasonal = "4 parsecs"', "windows.seasonal: duration '4 parsecs'"),
    "calendar": (
        'calendar = ["hour_of_day", "day_of_week"]',
        'calendar = ["minute"]',
        "windows.calendar[0]: unknown value 'minute' (choose from hour_of_day, day_of_week, month_of_year)",
    ),
    "duration without capacity": (
        "points = 5",
        'duration = "1h"',
        "windows.capacity: missing: a duration window needs the most points a series keeps",
    ),
    "capacity too small": (
        "lags = [1, 3]",
        "capacity = 2\nlags = [1, 3]",
        "windows.capacity: 2 is fewer than",
    ),
    "range window": (
        "window = 0, k = 2.0",
        "window = 1, k = 2.0",
        "windows.expected_range.window: must index a [[windows.rolling]] table (0..0), not 1",
    ),
    "unknown key": ("lags = [1, 3]", "lag = [1, 3]", "windows.lag: unknown key (allowed here: group_by"),
}


@pytest.mark.parametrize("case", sorted(WINDOW_ERRORS))
def test_window_errors_name_the_line_and_the_dotted_key(case: str) -> None:
    old, new, message = WINDOW_ERRORS[case]
    text = BASE + POINTS_WINDOWS
    assert text.count(old) == 1
    text = text.replace(old, new)
    with pytest.raises(DetectorError) as err:
        parse(text)
    line = line_of(text, new.splitlines()[0])
    if case == "duration without capacity":
        line = line_of(text, "[windows]")
    assert f"detectors/probe.toml:{line}: {message}" in str(err.value)


def test_anomaly_rules_and_label_exclusion() -> None:
    both = BASE.replace("contamination = 0.02", "contamination = 0.02\nalert_rate = 0.01")
    with pytest.raises(DetectorError, match=r"probe.toml:\d+: anomaly: give exactly one of contamination"):
        parse(both)
    with pytest.raises(DetectorError, match=r"anomaly.contamination: a share of points is in \(0, 0.5\)"):
        parse(BASE.replace("contamination = 0.02", "contamination = 0.7"))
    with pytest.raises(DetectorError, match=r"anomaly.model: unknown value 'vae'"):
        parse(BASE.replace("contamination = 0.02", 'model = "vae"\ncontamination = 0.02'))
    with_threshold = BASE + '\n[threshold]\npolicy = "fixed"\ntarget = 0.5\n'
    with pytest.raises(DetectorError, match=r"threshold: leave it out: with \[anomaly\]"):
        parse(with_threshold)
    labelled = BASE + POINTS_WINDOWS + '\n[label]\nfield = "y"\npositive = [1]\n'
    with pytest.raises(DetectorError, match=r"windows: is for detectors without a \[label\]"):
        parse(labelled)
    rate = parse(BASE.replace("contamination = 0.02", "alert_rate = 0.005"))
    assert (rate.threshold.policy, rate.threshold.target) == ("alert_rate", 0.005)


# ----------------------------------------------------------------------------------------- hand-checked


def test_points_windows_by_hand() -> None:
    wf = WindowFeatures.from_spec(POINTS_SPEC)
    values = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    t0 = 1_700_000_000 * S  # 2023-11-14 22:13:20 UTC, a Tuesday
    results = [wf.push_point({"host": "a"}, t0 + i * 60 * S, {"v": v}) for i, v in enumerate(values)]
    assert [r.status for r in results] == [WARMING_UP] * 5 + [OK]  # rolling 5 needs 5 previous points
    got = dict(zip(wf.columns, results[-1].features, strict=True))
    previous = values[:5]
    assert got["v"] == 32.0 and got["lag1(v)"] == 16.0 and got["lag3(v)"] == 4.0
    assert got["diff2(v)"] == 32.0 - 8.0 and got["sdiff4(v)"] == 32.0 - 2.0
    assert got["mean5(v)"] == pytest.approx(statistics.mean(previous))
    assert got["std5(v)"] == pytest.approx(statistics.stdev(previous))
    assert (got["min5(v)"], got["max5(v)"], got["median5(v)"]) == (1.0, 16.0, 4.0)
    assert got["mad5(v)"] == 3.0  # |1-4|,|2-4|,|4-4|,|8-4|,|16-4| -> median of 3,2,0,4,12
    t = t0 + 5 * 60 * S
    hour = (t % (86_400 * S)) / (86_400 * S) * 2 * math.pi
    assert (got["hour_sin"], got["hour_cos"]) == pytest.approx((math.sin(hour), math.cos(hour)))
    assert (got["dow_sin"], got["dow_cos"]) == pytest.approx(
        (math.sin(2 * math.pi / 7), math.cos(2 * math.pi / 7))
    )
    assert results[-1].expected_low == pytest.approx(4.0 - 2.0 * 1.4826 * 3.0)
    assert results[-1].expected_high == pytest.approx(4.0 + 2.0 * 1.4826 * 3.0)
    # Another host has its own state: it warms up from scratch.
    assert wf.push_point({"host": "b"}, t, {"v": 1.0}).status == WARMING_UP
    assert len(wf) == 2 and len(wf.series(("a",))) == 6


def test_calendar_is_utc_monday_zero() -> None:
    monday_noon = 1_700_438_400 * S  # 2023-11-20 00:00 UTC is a Monday; + 12 h below
    sin_h, cos_h, sin_d, cos_d = calendar_columns(monday_noon + 12 * 3600 * S, ("hour_of_day", "day_of_week"))
    assert (sin_h, cos_h) == pytest.approx((0.0, -1.0), abs=1e-12)
    assert (sin_d, cos_d) == pytest.approx((0.0, 1.0), abs=1e-12)
    # month_of_year: January = 0; 2023-11-20 is in November (10 of 12 turns from January).
    sin_m, cos_m = calendar_columns(monday_noon, ("month_of_year",))
    assert (sin_m, cos_m) == pytest.approx((math.sin(10 / 12 * 2 * math.pi), math.cos(10 / 12 * 2 * math.pi)))
    assert calendar_columns(1_672_531_200 * S - 1, ("month_of_year",)) == pytest.approx(
        [math.sin(11 / 12 * 2 * math.pi), math.cos(11 / 12 * 2 * math.pi)]
    )  # the last nanosecond of 2022 is still December


def test_duration_windows_drop_expired_points_across_a_gap() -> None:
    wf = WindowFeatures.from_spec(DURATION_SPEC)
    key = ("a",)
    for i in range(25):
        wf.push(key, i * S, [float(i)])
    ok = wf.push(key, 25 * S, [100.0])
    assert ok.status == OK
    got = dict(zip(wf.columns, ok.features, strict=True))
    assert got["mean10s(v)"] == pytest.approx(statistics.mean(range(15, 25)))  # [15 s, 25 s)
    assert got["sdiff20s(v)"] == 100.0 - 5.0
    # After a 60 s gap the 10 s window is empty: warming up again, although the series keeps 24 points.
    late_gap = wf.push(key, 86 * S, [1.0])
    assert late_gap.status == WARMING_UP and len(wf.series(key)) == 24
    assert wf.push(key, 87 * S, [1.0]).status == WARMING_UP  # one point in the window, min_points = 2
    assert wf.push(key, 88 * S, [1.0]).status == OK


def test_late_duplicate_and_too_old_points() -> None:
    spec = parse(BASE + POINTS_WINDOWS.replace("lags = [1, 3]", "capacity = 6\nlags = [1, 3]"))
    wf = WindowFeatures.from_spec(spec)
    key = ("a",)
    for i in (0, 1, 2, 3, 4, 5, 7):
        wf.push(key, i * S, [float(i)])
    late = wf.push(key, 6 * S, [6.0])  # kept older points: 1..5 (0 was dropped: capacity 6)
    assert late.late and late.status == OK
    got = dict(zip(wf.columns, late.features, strict=True))
    assert (got["lag1(v)"], got["mean5(v)"]) == (5.0, 3.0)  # from the points before 6 s, not 7 s
    assert list(wf.series(key).times) == [2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S]
    again = wf.push(key, 4 * S, [40.0])  # a duplicate time replaces the kept value, like InfluxDB
    assert again.late and again.status == WARMING_UP  # only 2 and 3 are older
    assert list(wf.series(key).values[0]) == [2.0, 3.0, 40.0, 5.0, 6.0, 7.0]
    too_old = wf.push(key, 1 * S, [1.0])
    assert too_old.status == OUT_OF_ORDER and too_old.features is None
    assert list(wf.series(key).times) == [2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S]  # unchanged


def test_bad_fields_are_named_and_change_nothing() -> None:
    wf = WindowFeatures.from_spec(POINTS_SPEC)
    with pytest.raises(WindowInputError, match="field 'v' is missing"):
        wf.push_point({}, 0, {"w": 1.0})
    with pytest.raises(WindowInputError, match="field 'v' is not finite"):
        wf.push_point({}, 0, {"v": float("nan")})
    with pytest.raises(WindowInputError, match="field 'v' is not a number: 'x'"):
        wf.push_point({}, 0, {"v": "x"})
    assert len(wf.series(("",))) == 0


# ------------------------------------------------------------------------------------------- reference


def reference(spec, stream):
    """Brute force: the kept set is the newest `capacity` accepted points; features from the kept points
    older than the new one, recomputed from scratch."""
    w = spec.windows
    accepted: dict[tuple, dict[int, float]] = {}
    out = []
    for host, t, v in stream:
        series = accepted.setdefault((host,), {})
        kept = sorted(series.items())[-w.capacity :]
        newest = kept[-1][0] if kept else None
        late = newest is not None and t <= newest
        if late and len(kept) >= w.capacity and t < kept[0][0]:
            out.append((OUT_OF_ORDER, None, True))
            continue
        prev = [(pt, pv) for pt, pv in kept if pt < t]
        series[t] = v
        out.append((*_reference_features(w, prev, t, v), late))
    return out


def _reference_features(w, prev, t, v):
    vals = [pv for _, pv in prev]
    cols = [v]
    if len(vals) < max((*w.lags, *w.differences), default=0):
        return WARMING_UP, None
    cols += [vals[-k] for k in w.lags]
    cols += [v - vals[-k] for k in w.differences]
    if w.seasonal is not None:
        if w.seasonal.points is not None:
            if len(vals) < w.seasonal.points:
                return WARMING_UP, None
            cols.append(v - vals[-w.seasonal.points])
        else:
            before = [pv for pt, pv in prev if pt <= t - w.seasonal.duration_ns]
            if not before:
                return WARMING_UP, None
            cols.append(v - before[-1])
    for r in w.rolling:
        if r.span.points is not None:
            window = vals[-r.span.points :] if len(vals) >= r.span.points else []
        else:
            window = [pv for pt, pv in prev if pt >= t - r.span.duration_ns]
        if len(window) < r.min_points:
            return WARMING_UP, None
        med = statistics.median(window)
        table = {
            "mean": statistics.fmean(window),
            "std": statistics.stdev(window),
            "min": min(window),
            "max": max(window),
            "median": med,
            "mad": statistics.median(abs(x - med) for x in window),
        }
        cols += [table[s] for s in r.stats]
    cols += calendar_columns(t, w.calendar)
    return OK, cols


streams = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(min_value=0, max_value=80),  # seconds: repeats = duplicates, jumps = gaps
        st.integers(min_value=-50, max_value=50).map(float),
        st.sampled_from([0, 0, 0, 0, 0, 2, 5, 200]),  # arrival delay: late, and too late for the window
    ),
    min_size=10,
    max_size=80,
)


def as_stream(raw):
    """Points in arrival order (time + delay): gaps, duplicates, late and very late points."""
    arrived = sorted(raw, key=lambda p: p[1] + p[3])
    return [(host, t * S, v) for host, t, v, _ in arrived]


@pytest.mark.parametrize("spec", [POINTS_SPEC, DURATION_SPEC], ids=["points", "duration"])
@settings(max_examples=150, deadline=None)
@given(raw=streams)
def test_incremental_equals_brute_force_reference(spec, raw) -> None:
    stream = as_stream(raw)
    wf = WindowFeatures.from_spec(spec)
    got = [wf.push_point({"host": h}, t, {"v": v}) for h, t, v in stream]
    want = reference(spec, stream)
    for result, (status, cols, late) in zip(got, want, strict=True):
        assert (result.status, result.late) == (status, late)
        if cols is None:
            assert result.features is None
        else:
            assert result.features == pytest.approx(cols, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("spec", [POINTS_SPEC, DURATION_SPEC], ids=["points", "duration"])
@settings(max_examples=100, deadline=None)
@given(raw=streams, cut=st.integers(min_value=0, max_value=80))
def test_batch_live_and_restart_give_identical_features(spec, raw, cut) -> None:
    pd = pytest.importorskip("pandas")
    stream = as_stream(raw)
    live = WindowFeatures.from_spec(spec)
    live_results = [live.push_point({"host": h}, t, {"v": v}) for h, t, v in stream]

    frame = pd.DataFrame(stream, columns=["host", "time", "v"])
    batch = features_for_frame(frame, spec)
    assert list(batch["status"]) == [r.status for r in live_results]
    assert list(batch["late"]) == [r.late for r in live_results]
    for row, result in enumerate(live_results):
        if result.features is not None:  # bit-identical: the same code, not approximately the same
            assert tuple(batch.iloc[row][list(live.columns)]) == result.features

    # Restart after `cut` points: the state rebuilt from InfluxDB-like history (every point received,
    # time-sorted, the newest `capacity` per series) or from a snapshot continues exactly like live.
    cut = min(cut, len(stream))
    before = WindowFeatures.from_spec(spec)
    for h, t, v in stream[:cut]:
        before.push_point({"host": h}, t, {"v": v})
    history: dict[tuple, dict[int, float]] = {}  # what InfluxDB holds: the last write per series and time
    for h, t, v in stream[:cut]:
        history.setdefault((h,), {})[t] = v
    rebuilt = WindowFeatures.from_spec(spec)
    for key, points in history.items():
        newest = sorted(points.items())[-spec.windows.capacity :]
        rebuilt.rebuild(key, [(t, [v]) for t, v in newest])
    restored = WindowFeatures.from_spec(spec)
    restored.restore(before.snapshot())
    for state in (rebuilt, restored):
        assert by_key(state.snapshot()) == by_key(before.snapshot())
        after = [state.push_point({"host": h}, t, {"v": v}) for h, t, v in stream[cut:]]
        assert after == live_results[cut:]


def by_key(snapshot):
    return {tuple(s["key"]): (s["times"], s["values"]) for s in snapshot["series"]}


def test_detectors_show_and_list_explain_the_windows(capsys, tmp_path: Path) -> None:
    import json

    from tickguard.cli import main

    path = tmp_path / "probe.toml"
    path.write_text(BASE + POINTS_WINDOWS)
    assert main(["detectors", "show", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model_columns"] == list(POINTS_SPEC.model_columns)
    assert shown["windows"]["series_key"] == ["host"] and shown["windows"]["points_kept_per_series"] == 13
    assert shown["spec"]["anomaly"]["contamination"] == 0.02
    assert main(["detectors", "list"]) == 0  # the bundled detectors still list
    assert main(["detectors", "validate", str(path)]) == 0
    assert f"{path}: ok (probe, 1 features" in capsys.readouterr().out


def test_request_fields_are_the_window_columns_only_for_windowed_detectors() -> None:
    from tickguard.detectors import load_detector

    assert POINTS_SPEC.request_fields == POINTS_SPEC.model_columns != POINTS_SPEC.feature_fields
    fraud = load_detector("fraud")
    assert fraud.request_fields == fraud.feature_fields
