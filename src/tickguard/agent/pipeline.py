"""Turning runs of point requests into scoring requests, and scoring results into output bytes.

`prepare` decodes a run of point requests with one parser call, extracts the feature rows (a point
missing a feature or carrying a non-numeric value is set aside with an error naming the field) and
packs them as a binary V2 inference body (FP64, the cheapest transport for the service to parse). `render` turns the scores (or the reason there are none) into framed point
responses, in input order, as one bytes object ready for a single socket write.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from operator import itemgetter

from google.protobuf.message import DecodeError

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.encode import ScoredFieldsEncoder, point_payload_offset, point_response_frame
from tickguard.agent.framing import TWO_BYTE_TAG_POINT, varint
from tickguard.agent.options import LabelRule
from tickguard.agent.scoring import ScoreResult
from tickguard.agent.windowing import LiveWindows
from tickguard.scoring.v2 import BinaryBatch


class MalformedRequest(Exception):
    """A request's bytes are not a valid protobuf message: fatal for the connection."""


@dataclass
class Batch:
    """Points of one scoring request, with what is needed to emit them afterwards."""

    frames: list[bytes]
    arrival: float  # monotonic time the oldest point was read from the socket
    times: list[int] = field(default_factory=list)
    labels: list[bool | None] = field(default_factory=list)
    row_of: list[int] = field(default_factory=list)  # index into the request rows, -1 = not sent
    errors: dict[int, str] = field(default_factory=dict)  # point index -> why it is not scored
    # point index -> re-encoded Point to emit instead of the input bytes (non-finite fields removed)
    replacements: dict[int, bytes] = field(default_factory=dict)
    body: BinaryBatch | None = None
    rows: int = 0
    # lean output: per point, the re-encoded Point without its numeric input fields (None = full output)
    lean: list[bytes] | None = None
    # point index -> fields appended to that point when it is scored (a windowed detector's expected range)
    extras: dict[int, bytes] = field(default_factory=dict)


def feature_problem(point: pb.Point, features: tuple[str, ...]) -> str:
    """Name the first feature of `point` that is missing, non-numeric or not finite."""
    for name in features:
        if name in point.fieldsDouble:
            if not math.isfinite(point.fieldsDouble[name]):
                return f"field '{name}' is {point.fieldsDouble[name]}, not a finite number"
            continue
        if name in point.fieldsInt:
            continue
        if name in point.fieldsString:
            value = point.fieldsString[name]
            shown = value if len(value) <= 40 else value[:37] + "..."
            return f"field '{name}' is a string ('{shown}'), not a number"
        if name in point.fieldsBool:
            return f"field '{name}' is a boolean, not a number"
        return f"missing feature field '{name}'"
    return ""


def _slow_row(point: pb.Point, features: tuple[str, ...]) -> tuple[tuple[float, ...] | None, str]:
    problem = feature_problem(point, features)
    if problem:
        return None, problem
    doubles = point.fieldsDouble
    ints = point.fieldsInt
    return tuple(float(doubles[n]) if n in doubles else float(ints[n]) for n in features), ""


def _drop_non_finite(point: pb.Point) -> list[str]:
    """Remove NaN/Inf double fields from `point`; return their names.

    InfluxDB refuses a whole write that contains one non-finite value, so passing such a field
    through would lose every other point of Kapacitor's write batch too.
    """
    names = sorted(name for name, value in point.fieldsDouble.items() if not math.isfinite(value))
    for name in names:
        del point.fieldsDouble[name]
    return names


def lean_points(points, keep: tuple[str, ...], fresh: dict[int, pb.Point] | None = None) -> list[bytes]:
    """Each point re-encoded without its double and int fields, except the finite ones named in `keep`.

    Tags, time, string fields (txid) and bool fields stay; the agent's fields are appended afterwards.
    Kapacitor then decodes, and InfluxDB parses and stores, about a third of the bytes per point.
    `fresh` maps indexes to re-decoded points (reading a missing feature inserted a 0.0 into the original).
    """
    out: list[bytes] = []
    append = out.append
    for index, point in enumerate(points):
        if fresh and index in fresh:
            point = fresh[index]
        doubles = point.fieldsDouble
        ints = point.fieldsInt
        kept_d = [(n, doubles[n]) for n in keep if n in doubles and math.isfinite(doubles[n])]
        kept_i = [(n, ints[n]) for n in keep if n in ints]
        point.ClearField("fieldsDouble")
        point.ClearField("fieldsInt")
        # Item by item (MutableMapping.update on protobuf maps is a slow, pure-Python loop), and through
        # the point: ClearField detaches the map objects fetched before it.
        for name, value in kept_d:
            point.fieldsDouble[name] = value
        for name, value in kept_i:
            point.fieldsInt[name] = value
        append(point.SerializeToString())
    return out


def lean_point_response(body: bytes, keep: tuple[str, ...]) -> bytes:
    """A point request's body turned into a point response carrying the lean point (echo mode)."""
    try:
        point = pb.Request.FromString(body).point
    except DecodeError as exc:
        raise MalformedRequest(f"malformed point request: {exc}") from None
    data = lean_points([point], keep)[0]
    return TWO_BYTE_TAG_POINT + varint(len(data)) + data


def decode_run(frames: list[bytes]):
    """Decode consecutive point-request bodies with a single parse (they form a PointRun)."""
    try:
        return pb.PointRun.FromString(b"".join(frames)).point
    except DecodeError:
        for index, frame in enumerate(frames):
            try:
                pb.Request.FromString(frame)
            except DecodeError as exc:
                raise MalformedRequest(
                    f"point request #{index} of a run is not valid protobuf: {exc}"
                ) from None
        raise MalformedRequest("a run of point requests is not valid protobuf") from None


_LEGACY_LABELS = LabelRule(None)


def prepare(
    batch: Batch,
    features: tuple[str, ...] | None,
    label_field: str,
    features_error: str = "",
    lean_keep: tuple[str, ...] | None = None,
    fields: tuple[str, ...] | None = None,
    label_rule: LabelRule | None = None,
    windows: LiveWindows | None = None,
) -> None:
    """Decode the batch, pick out each point's feature row and label, and pack the request body.

    `features` are the model's (the body's columns); `fields` the point field each is read from (None =
    the same names). `label_rule` decides which label values are positive (None = the legacy rule).
    `lean_keep` not None: the output points are lean (see lean_points), keeping those numeric fields.
    `windows` not None: the model takes window features, computed per series from the points
    (tickguard.agent.windowing) instead of read from their fields.
    """
    points = decode_run(batch.frames)
    batch.times = [p.time for p in points]
    if label_field:
        label_of = (label_rule or _LEGACY_LABELS).value
        batch.labels = [label_of(p, label_field) for p in points]
    else:
        batch.labels = [None] * len(points)
    if features is None:
        batch.row_of = [-1] * len(points)
        batch.errors = dict.fromkeys(range(len(points)), features_error)
        if lean_keep is not None:
            batch.lean = lean_points(points, lean_keep)
        return
    if windows is not None:
        _prepare_windowed(batch, points, features, windows)
        if lean_keep is not None:
            batch.lean = lean_points(points, lean_keep)
        return
    columns = features
    features = fields or features
    if len(features) == 1:
        only = features[0]

        def getter(mapping):
            return (mapping[only],)
    else:
        getter = itemgetter(*features)
    rows: list[tuple] = []
    row_of: list[int] = []
    errors = batch.errors
    fresh: dict[int, pb.Point] = {}
    for index, point in enumerate(points):
        doubles = point.fieldsDouble
        before = len(doubles)
        row = getter(doubles)
        # A missing key in a protobuf map reads as 0.0 (and is inserted): a grown map means a feature
        # is absent from fieldsDouble (it may be an int field, a string, or really missing).
        total = sum(row)
        if len(doubles) != before or total - total != 0.0:
            point = pb.Point.FromString(batch.frames[index][point_payload_offset(batch.frames[index]) :])
            fresh[index] = point
            row, problem = _slow_row(point, features)
            if row is None:
                dropped = _drop_non_finite(point)
                if dropped:
                    batch.replacements[index] = point.SerializeToString()
                    problem += f" (dropped from the output, InfluxDB cannot store it: {', '.join(dropped)})"
                errors[index] = problem
                row_of.append(-1)
                continue
        row_of.append(len(rows))
        rows.append(row)
    batch.row_of = row_of
    batch.rows = len(rows)
    if rows:
        batch.body = BinaryBatch(columns, rows)
    if lean_keep is not None:
        batch.lean = lean_points(points, lean_keep, fresh)


def _prepare_windowed(batch: Batch, points, columns: tuple[str, ...], windows: LiveWindows) -> None:
    """Rows from each point's window features (in the model's column order), in arrival order."""
    order = windows.columns
    pick = None if tuple(columns) == order else [order.index(name) for name in columns]
    rows: list[tuple] = []
    row_of: list[int] = []
    for index, outcome in enumerate(windows.push(points)):
        if outcome.row is None:
            batch.errors[index] = outcome.error
            row_of.append(-1)
            continue
        if outcome.extra:
            batch.extras[index] = outcome.extra
        row_of.append(len(rows))
        rows.append(outcome.row if pick is None else tuple(outcome.row[i] for i in pick))
    batch.row_of = row_of
    batch.rows = len(rows)
    if rows:
        batch.body = BinaryBatch(columns, rows)


def render(
    batch: Batch,
    result: ScoreResult | None,
    batch_error: str,
    encoder: ScoredFieldsEncoder,
    threshold_override: float | None,
) -> bytes:
    """Framed point responses for every point of the batch, in input order."""
    now_ns = time.time_ns()
    parts: list = []
    extend = parts.extend
    error_entries: dict[str, bytes] = {}
    lean = batch.lean
    extras = batch.extras
    if result is not None:
        threshold = result.threshold if threshold_override is None else threshold_override
        tail = encoder.scored_tail(result.model_version, threshold)
        scores = result.scores
        flags = result.flags
    for index, frame in enumerate(batch.frames):
        latency_ms = (now_ns - batch.times[index]) / 1e6
        row = batch.row_of[index]
        if row >= 0 and result is not None:
            score = scores[row]
            flagged = flags[row] if threshold_override is None else score >= threshold_override
            extra = encoder.scored_fields(score, latency_ms, flagged, batch.labels[index], tail)
            if extras:
                extra += extras.get(index, b"")
        else:
            message = batch.errors.get(index) or batch_error
            entry = error_entries.get(message)
            if entry is None:
                entry = error_entries[message] = encoder.error_field(message)
            extra = encoder.unscored_fields(latency_ms, entry)
        if lean is not None:
            extend(point_response_frame(lean[index], extra))
            continue
        replacement = batch.replacements.get(index)
        if replacement is not None:
            extend(point_response_frame(replacement, extra))
            continue
        extend(point_response_frame(memoryview(frame)[point_payload_offset(frame) :], extra))
    return b"".join(parts)


def render_unscored(frames: list[bytes], encoder: ScoredFieldsEncoder, message: str) -> bytes:
    """Framed point responses marking every point unscored with `message`, without decoding anything."""
    extra = encoder.scored[False] + encoder.error_field(message)
    parts: list = []
    for frame in frames:
        parts.extend(point_response_frame(memoryview(frame)[point_payload_offset(frame) :], extra))
    return b"".join(parts)
