"""The agent's side of window features: per-series state for a windowed detector's task node.

A model whose card records a detector with `[windows]` (tickguard.detectors.spec) does not take a point's
fields as they are: it takes window features computed from the point and its series' recent past. The agent
keeps that past per series (series key = the values of the detector's `group_by` tags, read from the point's
tags, which Kapacitor sends with every point) in a `tickguard.windows.WindowFeatures`, the very objects
training replays history through (`features_for_frame`), so live columns equal training columns.

Every point still leaves. A point whose window is not full yet leaves unscored with `error` = `warming up`
(it joins its series' state all the same); a late point older than everything kept in a full series
leaves with `out of order`; a point missing a value field leaves with the field named (and stays out of
the state, so a rebuilt state matches, see tickguard.agent.history).

After a restart of the agent (or of the task: Kapacitor opens a new connection, with empty state), each
series' state is rebuilt from InfluxDB the first time the connection sees the series: the last `capacity`
points of that series before its first new point, read from the measurement the point came from
(tickguard.agent.history, through tickguard.influx). Without InfluxDB settings (TICKGUARD_INFLUXDB_URL
unset or TICKGUARD_UDF_WINDOW_HISTORY=false), or when the read fails, the series starts empty and its
first points leave `warming up`.

Scored points of a windowed detector also get `expected_low` / `expected_high` (the detector's declared
expected range, centre -/+ k * spread of its rolling window) so a dashboard shows why a point was flagged,
and `late=true` when the point came after a newer one of its series (scored from the points older than it);
the task option `.writeFeatures(TRUE)` adds every model column as a field too (what the model saw, for
parity checks and debugging).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.encode import bool_entry, double_entry, double_entry_prefix
from tickguard.agent.history import HistoryReader, SeriesSource
from tickguard.agent.schema import EXPECTED_HIGH, EXPECTED_LOW, LATE
from tickguard.windows import OK, WindowFeatures

log = logging.getLogger(__name__)

LATE_FIELD = bool_entry(LATE, True)
CARD_DETECTOR = "detector"  # the model card's copy of its detector spec (tickguard.modelstore)


def card_windows(card: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The canonical `[windows]` of the card's detector, or None for a model that scores points alone."""
    detector = card.get(CARD_DETECTOR)
    if not isinstance(detector, Mapping):
        return None
    windows = detector.get("windows")
    return windows if isinstance(windows, Mapping) else None


def source_tag_filter(card: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The tag filter of the card's detector (`[source] tags`): a history read must see only the points
    the task sees, so it adds these conditions to a series' own tags."""
    detector = card.get(CARD_DETECTOR)
    source = detector.get("source") if isinstance(detector, Mapping) else None
    tags = source.get("tags") if isinstance(source, Mapping) else None
    return tuple(sorted((str(k), str(v)) for k, v in tags.items())) if isinstance(tags, Mapping) else ()


def series_tags(
    group_by: Sequence[str], key: Sequence[str], tag_filter: Sequence[tuple[str, str]] = ()
) -> tuple[tuple[str, str], ...]:
    """The tag conditions of one series: its key's tags, plus the detector's filter on other tags."""
    own = tuple(zip(group_by, key, strict=True))
    return own + tuple(item for item in tag_filter if item[0] not in group_by)


def window_features_for_card(card: Mapping[str, Any]) -> WindowFeatures | None:
    """Fresh (empty) window state for the card's detector, or None when it declares no windows."""
    declared = card_windows(card)
    if declared is None:
        return None
    from tickguard.detectors.spec import window_spec_from_canonical

    fields = tuple(str(item["field"]) for item in card[CARD_DETECTOR]["features"])
    return WindowFeatures(window_spec_from_canonical(declared), fields)


def rebuild_from_history(
    features: WindowFeatures,
    history: HistoryReader | None,
    first: Mapping[tuple[str, ...], tuple[SeriesSource, int]],
) -> tuple[int, str]:
    """Set the state of each series `key` of `first` (where it is stored, the time of its first point to
    score) from its last `capacity` points before that time; empty without a reader, when nothing is
    found or when InfluxDB cannot be read. Returns (series rebuilt from history, the read error or '')."""
    found: dict[SeriesSource, list] = {}
    error = ""
    if history is not None and first:
        try:
            found = history.recent(first.values(), features.fields, features.spec.capacity)
        except Exception as exc:  # InfluxDB down or refusing: the series warm up instead
            error = str(exc) or repr(exc)
    rebuilt = 0
    for key, (source, _time) in first.items():
        points_before = found.get(source) or []
        features.rebuild(key, points_before)
        rebuilt += bool(points_before)
    return rebuilt, error


@dataclass
class PointWindow:
    """What the window state gives one point: its model row or why it has none, and its extra fields."""

    row: tuple[float, ...] | None
    error: str
    extra: bytes = b""


def point_values(point: pb.Point, fields: Sequence[str]) -> tuple[list[float] | None, str]:
    """The point's values of `fields`, or why it has none (naming the first unusable field). The backfill
    judges a stored point by this too, so both write the same reason for the same point."""
    values: list[float] = []
    for name in fields:
        value, problem = _number(point, name)
        if value is None:
            return None, problem
        values.append(value)
    return values, ""


def _number(point: pb.Point, name: str) -> tuple[float | None, str]:
    """A point's field as a finite float, or why it is not one (naming the field). Never inserts into the maps."""
    if name in point.fieldsDouble:
        value = point.fieldsDouble[name]
        if value - value != 0.0:
            return None, f"field '{name}' is {value}, not a finite number"
        return value, ""
    if name in point.fieldsInt:
        return float(point.fieldsInt[name]), ""
    if name in point.fieldsString:
        text = point.fieldsString[name]
        shown = text if len(text) <= 40 else text[:37] + "..."
        return None, f"field '{name}' is a string ('{shown}'), not a number"
    if name in point.fieldsBool:
        return None, f"field '{name}' is a boolean, not a number"
    return None, f"missing value field '{name}'"


class LiveWindows:
    """One task node's window state, its history reader, and how points become model rows."""

    def __init__(
        self,
        features: WindowFeatures,
        history: HistoryReader | None = None,
        write_features: bool = False,
        describe: str = "",
        tag_filter: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.features = features
        self.tag_filter = tag_filter
        self.history = history
        self.write_features = write_features
        self.describe = describe
        self.columns = tuple(features.columns)
        self.rebuilt = 0  # series whose state came from InfluxDB history
        self.cold = 0  # series that started empty (no history configured, none found, or the read failed)
        self.history_errors = 0
        self.history_s = 0.0  # time spent reading history
        # .writeFeatures(): every column but the raw value fields, which the point carries already (written
        # again as a float, an integer field would get a second type in the same point).
        self._written = [
            (position, double_entry_prefix(name))
            for position, name in enumerate(self.columns)
            if name not in features.fields
        ]

    # ---- restart rebuild -----------------------------------------------------------------------------

    def _source(self, point: pb.Point, key: tuple[str, ...]) -> SeriesSource:
        return SeriesSource(
            point.database,
            point.retentionPolicy,
            point.name,
            series_tags(self.features.spec.group_by, key, self.tag_filter),
        )

    def rebuild_new_series(self, points: Sequence[pb.Point], keys: Sequence[tuple[str, ...]]) -> None:
        """Give every series seen for the first time in `points` its state: from InfluxDB's history before
        its first point here when a reader is configured, else empty (it warms up)."""
        first: dict[tuple[str, ...], tuple[SeriesSource, int]] = {}
        for point, key in zip(points, keys, strict=True):
            if key not in self.features and key not in first:
                first[key] = (self._source(point, key), point.time)
        if not first:
            return
        started = time.monotonic()
        rebuilt, error = rebuild_from_history(self.features, self.history, first)
        self.history_s += time.monotonic() - started
        self.rebuilt += rebuilt
        self.cold += len(first) - rebuilt
        if error:
            self.history_errors += 1
            log.warning(
                "%s: cannot read the history of %d new series from InfluxDB (they warm up): %s",
                self.describe,
                len(first),
                error,
            )

    # ---- points -> rows --------------------------------------------------------------------------------

    def push(self, points: Sequence[pb.Point]) -> list[PointWindow]:
        """Each point pushed into its series' window, in the given (arrival) order."""
        features = self.features
        group_by = features.spec.group_by
        keys = [tuple(point.tags.get(name, "") for name in group_by) for point in points]
        self.rebuild_new_series(points, keys)
        fields = features.fields
        out: list[PointWindow] = []
        for point, key in zip(points, keys, strict=True):
            values, problem = point_values(point, fields)
            if values is None:
                out.append(PointWindow(None, problem))
                continue
            result = features.push(key, point.time, values)
            if result.status != OK:
                out.append(PointWindow(None, result.status))
                continue
            extra = b""
            if result.expected_low is not None and result.expected_high is not None:
                extra = double_entry(EXPECTED_LOW, result.expected_low) + double_entry(
                    EXPECTED_HIGH, result.expected_high
                )
            if result.late:
                extra += LATE_FIELD
            if self.write_features:
                row = result.features
                extra += b"".join(
                    prefix + struct.pack("<d", row[position]) for position, prefix in self._written
                )
            out.append(PointWindow(result.features, "", extra))
        return out
