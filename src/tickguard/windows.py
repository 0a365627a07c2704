"""Per-series window features: one incremental implementation for training (history) and the agent (live).

A point alone cannot show a level shift, a stuck sensor or a variance burst; its series' recent past can.
An unlabelled detector declares window features in its `[windows]` table (tickguard.detectors.spec): lags,
differences, a seasonal difference, rolling statistics over N points or a duration, calendar columns. This
module computes them, per series, with the same objects whether the points come from a CSV, from InfluxDB
history or one by one from Kapacitor, so a model sees at serving time exactly the columns it was trained on.

Standard library only: the agent (no numpy in its extra) imports it; `features_for_frame` loads pandas
when called.

Policy (the same for batch and live, because batch replays points through the same objects):

- State: per series, the newest `capacity` points, sorted by time (two `array`s per series: 8 bytes per
  time and per field value). Memory per series is bounded by `capacity`.
- Features of a point come from the kept points strictly older than it; then the point joins the state.
- Gaps: a point-count window takes the previous N points whatever their spacing; a duration window takes
  the kept points in [t - D, t), so points that have expired are not used (and fewer than `min_points`
  leave the point warming up). A duration seasonal difference uses the newest kept point at or before
  t - D.
- Late points (older than the newest point of their series): inserted at their place in time, so the
  state is always "the newest `capacity` points received", whatever the arrival order; that is exactly
  what the last `capacity` points of InfluxDB's history give back after a restart (`rebuild`). The late
  point is scored from the points older than it (result.late is True); points scored before it arrived
  are not rescored. A point with the time of a kept point replaces its values (InfluxDB overwrites too).
- A late point older than every kept point of a full series cannot be placed: it leaves unscored with
  status `out of order` and does not change the state.
- Warming up: while a window lacks points (fewer than k previous points for lag k, N for a rolling
  window of N points, `min_points` inside a duration window, nothing one season back), the point leaves
  unscored with status `warming up`; it still joins the state.
- Expected range (when the detector declares `expected_range`): centre -/+ k * spread of a rolling window
  of the first feature field, centre/spread = median and 1.4826 * MAD, or mean and std.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tickguard.errors import TickguardError

if TYPE_CHECKING:
    import pandas as pd

    from tickguard.detectors.spec import DetectorSpec, Rolling, WindowSpec

OK = "ok"
WARMING_UP = "warming up"
OUT_OF_ORDER = "out of order"
STATUSES = (OK, WARMING_UP, OUT_OF_ORDER)

NS_PER_DAY = 86_400 * 10**9
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
SNAPSHOT_VERSION = 1


class WindowInputError(TickguardError, ValueError):
    """A point cannot enter a window: a missing or non-numeric field, or a bad time (message names it)."""


@dataclass(frozen=True, slots=True)
class WindowResult:
    """What pushing one point gives: `status` (ok, warming up, out of order), the feature vector in
    `WindowSpec.columns` order when ok, whether the point was late, and the expected range if declared."""

    status: str
    features: tuple[float, ...] | None = None
    late: bool = False
    expected_low: float | None = None
    expected_high: float | None = None

    @property
    def scored(self) -> bool:
        """True when the features are complete (the point can be sent to the model)."""
        return self.status == OK


def _median(sorted_values: Sequence[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else (sorted_values[mid - 1] + sorted_values[mid]) / 2.0


def _stats(window: Sequence[float], names: Sequence[str]) -> list[float]:
    """The named statistics of a non-empty window, in `names` order (std is the sample std, n - 1)."""
    n = len(window)
    out = []
    mean = math.fsum(window) / n if ("mean" in names or "std" in names) else 0.0
    ordered = sorted(window) if ("median" in names or "mad" in names) else ()
    median = _median(ordered) if ordered else 0.0
    for name in names:
        if name == "mean":
            out.append(mean)
        elif name == "std":
            out.append(math.sqrt(math.fsum((v - mean) ** 2 for v in window) / (n - 1)) if n > 1 else 0.0)
        elif name == "min":
            out.append(min(window))
        elif name == "max":
            out.append(max(window))
        elif name == "median":
            out.append(median)
        elif name == "mad":
            out.append(_median(sorted(abs(v - median) for v in window)))
    return out


def calendar_columns(time_ns: int, calendar: Sequence[str]) -> list[float]:
    """hour_sin, hour_cos (time of day, UTC), dow_sin, dow_cos (day of week, Monday = 0) and month_sin,
    month_cos (month of year, UTC, January = 0), as declared."""
    out: list[float] = []
    if "hour_of_day" in calendar:
        angle = (time_ns % NS_PER_DAY) / NS_PER_DAY * 2.0 * math.pi
        out += [math.sin(angle), math.cos(angle)]
    if "day_of_week" in calendar:
        weekday = (time_ns // NS_PER_DAY + EPOCH_WEEKDAY) % 7
        angle = weekday / 7.0 * 2.0 * math.pi
        out += [math.sin(angle), math.cos(angle)]
    if "month_of_year" in calendar:
        month = datetime.fromtimestamp(time_ns // 10**9, UTC).month
        angle = (month - 1) / 12.0 * 2.0 * math.pi
        out += [math.sin(angle), math.cos(angle)]
    return out


class SeriesWindow:
    """The state of one series: its newest `capacity` points, sorted by time, and how to turn a new point
    into its window features (see the module docstring for gaps, late points and warming up)."""

    __slots__ = ("spec", "times", "values")

    def __init__(self, spec: WindowSpec, n_fields: int) -> None:
        if n_fields < 1:
            raise ValueError("a series window needs at least one field")
        self.spec = spec
        self.times = array("q")
        self.values = [array("d") for _ in range(n_fields)]

    def __len__(self) -> int:
        return len(self.times)

    @property
    def newest_ns(self) -> int | None:
        """The time of the newest kept point, or None for an empty series."""
        return self.times[-1] if self.times else None

    def push(self, time_ns: int, values: Sequence[float], *, compute: bool = True) -> WindowResult:
        """Features of the point at `time_ns` from the older kept points, then keep the point.

        `values` are finite floats in the detector's field order. With compute=False only the state is
        updated (a rebuild), and the result's status is still right but carries no features."""
        if len(values) != len(self.values):
            raise WindowInputError(f"expected {len(self.values)} values, got {len(values)}")
        times = self.times
        n = len(times)
        if n == 0 or time_ns > times[-1]:
            index, late, replace = n, False, False
        else:
            index = bisect_left(times, time_ns)
            late = True
            replace = index < n and times[index] == time_ns
            if index == 0 and not replace and n >= self.spec.capacity:
                return WindowResult(OUT_OF_ORDER, late=True)
        result = self._features(index, time_ns, values, late) if compute else WindowResult(OK, late=late)
        if replace:
            for column, value in zip(self.values, values, strict=True):
                column[index] = value
        else:
            times.insert(index, time_ns)
            for column, value in zip(self.values, values, strict=True):
                column.insert(index, value)
            if len(times) > self.spec.capacity:
                del times[0]
                for column in self.values:
                    del column[0]
        return result

    def _features(self, end: int, time_ns: int, values: Sequence[float], late: bool) -> WindowResult:
        """The feature vector of a point at `time_ns` whose older kept points are [0, end)."""
        spec = self.spec
        times = self.times
        out: list[float] = []
        # Window bounds depend on time only, so they are found once for every field.
        seasonal_ref = None
        if spec.seasonal is not None:
            if spec.seasonal.points is not None:
                seasonal_ref = end - spec.seasonal.points
            else:
                seasonal_ref = bisect_right(times, time_ns - spec.seasonal.duration_ns, 0, end) - 1
            if seasonal_ref < 0:
                return WindowResult(WARMING_UP, late=late)
        bounds = []
        for rolling in spec.rolling:
            if rolling.span.points is not None:
                start = end - rolling.span.points
            else:
                start = bisect_left(times, time_ns - rolling.span.duration_ns, 0, end)
            if start < 0 or end - start < rolling.min_points:
                return WindowResult(WARMING_UP, late=late)
            bounds.append(start)
        deepest = max((*spec.lags, *spec.differences), default=0)
        if end < deepest:
            return WindowResult(WARMING_UP, late=late)
        low = high = None
        for field_index, (column, value) in enumerate(zip(self.values, values, strict=True)):
            out.append(value)
            out += [column[end - k] for k in spec.lags]
            out += [value - column[end - k] for k in spec.differences]
            if seasonal_ref is not None:
                out.append(value - column[seasonal_ref])
            for window_index, (rolling, start) in enumerate(zip(spec.rolling, bounds, strict=True)):
                window = column[start:end]
                out += _stats(window, rolling.stats)
                if field_index == 0 and spec.expected_range and spec.expected_range.window == window_index:
                    low, high = _expected_range(window, rolling, spec.expected_range.k)
        out += calendar_columns(time_ns, spec.calendar)
        return WindowResult(OK, tuple(out), late, low, high)

    def snapshot(self) -> dict[str, Any]:
        """The kept points as plain lists (JSON-able): {"times": [...], "values": [[field 0...], ...]}."""
        return {"times": list(self.times), "values": [list(column) for column in self.values]}

    @classmethod
    def from_snapshot(cls, spec: WindowSpec, snapshot: Mapping[str, Any]) -> SeriesWindow:
        """A series with exactly the snapshot's points (the newest `capacity` of them, sorted by time)."""
        values = snapshot["values"]
        window = cls(spec, len(values))
        points = sorted(zip(snapshot["times"], zip(*values, strict=True), strict=True))
        for time_ns, row in points[-spec.capacity :]:
            window.push(int(time_ns), [float(v) for v in row], compute=False)
        return window


def _expected_range(window: Sequence[float], rolling: Rolling, k: float) -> tuple[float, float]:
    if "median" in rolling.stats and "mad" in rolling.stats:
        centre, mad = _stats(window, ("median", "mad"))
        spread = MAD_TO_SIGMA * mad
    else:
        centre, spread = _stats(window, ("mean", "std"))
    return centre - k * spread, centre + k * spread


SeriesKey = tuple[str, ...]


class WindowFeatures:
    """Window states keyed by series (the values of the detector's `group_by` tags, missing = "")."""

    def __init__(self, spec: WindowSpec, fields: Sequence[str]) -> None:
        if not fields:
            raise ValueError("window features need at least one field")
        self.spec = spec
        self.fields = tuple(fields)
        self.columns = spec.columns(self.fields)
        self._series: dict[SeriesKey, SeriesWindow] = {}

    @classmethod
    def from_spec(cls, detector: DetectorSpec) -> WindowFeatures:
        """The window features a detector declares (its `features` fields, its `[windows]` table)."""
        if detector.windows is None:
            raise TickguardError(f"detector {detector.name!r} declares no [windows]")
        return cls(detector.windows, detector.feature_fields)

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, key: object) -> bool:
        return key in self._series

    def keys(self) -> list[SeriesKey]:
        """The series seen so far."""
        return list(self._series)

    def key_of(self, tags: Mapping[str, str]) -> SeriesKey:
        """A point's series key: its values of the `group_by` tags, in order ("" for a missing tag)."""
        return tuple(tags.get(name, "") for name in self.spec.group_by)

    def series(self, key: SeriesKey) -> SeriesWindow:
        """The state of series `key`, created empty on first use."""
        window = self._series.get(key)
        if window is None:
            window = self._series[key] = SeriesWindow(self.spec, len(self.fields))
        return window

    def forget(self, key: SeriesKey) -> None:
        """Drop a series' state (it warms up again on its next point)."""
        self._series.pop(key, None)

    def values_of(self, fields: Mapping[str, Any]) -> list[float]:
        """The point's values in field order; WindowInputError names a missing or non-finite field."""
        out = []
        for name in self.fields:
            if name not in fields:
                raise WindowInputError(f"field {name!r} is missing")
            value = fields[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise WindowInputError(f"field {name!r} is not a number: {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise WindowInputError(f"field {name!r} is not finite: {value!r}")
            out.append(value)
        return out

    def push(self, key: SeriesKey, time_ns: int, values: Sequence[float]) -> WindowResult:
        """Push a point (values already in field order and finite) into series `key`."""
        return self.series(key).push(int(time_ns), values)

    def push_point(self, tags: Mapping[str, str], time_ns: int, fields: Mapping[str, Any]) -> WindowResult:
        """Push a point given as tags and fields (what the agent receives); bad fields raise before any state
        changes."""
        values = self.values_of(fields)
        return self.series(self.key_of(tags)).push(int(time_ns), values)

    def rebuild(self, key: SeriesKey, points: Iterable[tuple[int, Sequence[float]]]) -> SeriesWindow:
        """Replace series `key`'s state by `points` ((time_ns, values), any order), e.g. the last `capacity`
        points of InfluxDB's history after a restart. No features are computed."""
        window = SeriesWindow(self.spec, len(self.fields))
        for time_ns, values in sorted(points, key=lambda p: p[0]):
            window.push(int(time_ns), [float(v) for v in values], compute=False)
        self._series[key] = window
        return window

    def snapshot(self) -> dict[str, Any]:
        """Every series' kept points, JSON-able: {"version", "fields", "series": [{"key", "times", "values"}]}."""
        return {
            "version": SNAPSHOT_VERSION,
            "fields": list(self.fields),
            "series": [{"key": list(key), **window.snapshot()} for key, window in self._series.items()],
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace every state by a `snapshot()`'s (which must be for the same fields)."""
        if snapshot.get("version") != SNAPSHOT_VERSION or list(snapshot.get("fields", [])) != list(
            self.fields
        ):
            raise TickguardError(
                f"window snapshot for fields {snapshot.get('fields')} (version {snapshot.get('version')}) "
                f"does not fit fields {list(self.fields)} (version {SNAPSHOT_VERSION})"
            )
        self._series = {
            tuple(item["key"]): SeriesWindow.from_snapshot(self.spec, item) for item in snapshot["series"]
        }


def features_for_points(
    features: WindowFeatures, points: Iterable[tuple[Mapping[str, str], int, Mapping[str, Any]]]
) -> list[WindowResult]:
    """Replay (tags, time_ns, fields) points, in the given (arrival) order, through `features`."""
    return [features.push_point(tags, time_ns, fields) for tags, time_ns, fields in points]


def features_for_frame(
    frame: pd.DataFrame,
    detector: DetectorSpec,
    *,
    time_column: str = "time",
    features: WindowFeatures | None = None,
) -> pd.DataFrame:
    """Window features of every row of `frame`, replayed in row order through the live code.

    `frame` has an integer nanosecond `time_column`, the detector's fields and its `group_by` tags (a
    missing tag column = "" for every row). Returns a frame on the same index with the model columns
    (NaN unless ok) and `status`, `late`, `expected_low`, `expected_high`. Pass `features` to continue
    from existing state (e.g. a validation split after the training split)."""
    import numpy as np
    import pandas as pd

    features = WindowFeatures.from_spec(detector) if features is None else features
    times = frame[time_column].to_numpy()
    if len(times) and not np.issubdtype(times.dtype, np.integer):
        raise WindowInputError(f"column {time_column!r} must hold integer nanoseconds, not {times.dtype}")
    tag_columns = [
        frame[name].astype(str).to_numpy() if name in frame.columns else None
        for name in features.spec.group_by
    ]
    value_columns = []
    for name in features.fields:
        if name not in frame.columns:
            raise WindowInputError(f"column {name!r} is missing")
        column = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(column))
        if len(bad):
            raise WindowInputError(f"row {frame.index[bad[0]]}: field {name!r} is not a finite number")
        value_columns.append(column.tolist())
    width = len(features.columns)
    matrix = np.full((len(frame), width), np.nan)
    status, late, low, high = [], [], [], []
    for row in range(len(frame)):
        key = tuple("" if column is None else column[row] for column in tag_columns)
        result = features.push(key, int(times[row]), [column[row] for column in value_columns])
        if result.features is not None:
            matrix[row] = result.features
        status.append(result.status)
        late.append(result.late)
        low.append(np.nan if result.expected_low is None else result.expected_low)
        high.append(np.nan if result.expected_high is None else result.expected_high)
    out = pd.DataFrame(matrix, index=frame.index, columns=list(features.columns))
    out["status"] = status
    out["late"] = late
    out["expected_low"] = low
    out["expected_high"] = high
    return out
