"""Building output points cheaply: the input point's bytes plus appended map entries.

Protobuf merges repeated occurrences of a message's fields, and a map entry that appears later wins.
So a scored point is the input Point's bytes, untouched, followed by a few hand-encoded map entries
(`fieldsDouble`, `fieldsBool`, `fieldsInt`, `fieldsString`). No per-field Python work, no re-encoding
of the input's tags and features.
"""

from __future__ import annotations

import numbers
import struct

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import TWO_BYTE_TAG_POINT, varint
from tickguard.agent.schema import CONFUSION, ERROR, LATENCY_MS, MODEL_VERSION, SCORED, THRESHOLD

# Point's map fields (see udf/udf.proto): field number << 3 | wire type 2 (length-delimited).
FIELDS_DOUBLE_TAG = bytes(((8 << 3) | 2,))
FIELDS_INT_TAG = bytes(((9 << 3) | 2,))
FIELDS_STRING_TAG = bytes(((10 << 3) | 2,))
FIELDS_BOOL_TAG = bytes(((12 << 3) | 2,))
# Inside a map entry: key = field 1 (string), value = field 2 (wire type by value kind).
_KEY = b"\x0a"
_VALUE_FIXED64 = bytes(((2 << 3) | 1,))
_VALUE_VARINT = bytes(((2 << 3) | 0,))
_VALUE_BYTES = bytes(((2 << 3) | 2,))


def set_typed_field(point: pb.Point, name: str, value: bool | int | float | str) -> None:
    """Put `value` in the Point map its Python type belongs to, as InfluxDB would type it.

    bool is tested before int because bool is an int in Python; numpy's integers and floats count as
    numbers. The backfill (rows read back from InfluxDB) and the tests build points through this one rule.
    """
    if isinstance(value, bool):
        point.fieldsBool[name] = value
    elif isinstance(value, numbers.Integral):
        point.fieldsInt[name] = int(value)
    elif isinstance(value, numbers.Real):
        point.fieldsDouble[name] = float(value)
    elif isinstance(value, str):
        point.fieldsString[name] = value
    else:
        raise TypeError(f"field {name!r}: cannot put a {type(value).__name__} in a UDF point")


def _key(name: str) -> bytes:
    raw = name.encode()
    return _KEY + varint(len(raw)) + raw


def double_entry_prefix(name: str) -> bytes:
    """Bytes before the 8-byte little-endian double of a `fieldsDouble` entry named `name`."""
    entry_len = len(_key(name)) + 1 + 8
    return FIELDS_DOUBLE_TAG + varint(entry_len) + _key(name) + _VALUE_FIXED64


def double_entry(name: str, value: float) -> bytes:
    """A complete `fieldsDouble` map entry."""
    return double_entry_prefix(name) + struct.pack("<d", value)


def bool_entry(name: str, value: bool) -> bytes:
    """A complete `fieldsBool` map entry."""
    entry = _key(name) + _VALUE_VARINT + (b"\x01" if value else b"\x00")
    return FIELDS_BOOL_TAG + varint(len(entry)) + entry


def int_entry(name: str, value: int) -> bytes:
    """A complete `fieldsInt` map entry (two's complement for negatives, as int64 wants)."""
    entry = _key(name) + _VALUE_VARINT + varint(value & 0xFFFFFFFFFFFFFFFF)
    return FIELDS_INT_TAG + varint(len(entry)) + entry


def string_entry(name: str, value: str) -> bytes:
    """A complete `fieldsString` map entry."""
    raw = value.encode()
    entry = _key(name) + _VALUE_BYTES + varint(len(raw)) + raw
    return FIELDS_STRING_TAG + varint(len(entry)) + entry


def point_response_frame(point_bytes: bytes | memoryview, extra: bytes = b"") -> list[bytes | memoryview]:
    """Pieces of one framed point Response: length, tag 17, inner length, point bytes, appended fields."""
    inner_len = len(point_bytes) + len(extra)
    inner_prefix = varint(inner_len)
    body_len = 2 + len(inner_prefix) + inner_len
    return [varint(body_len), TWO_BYTE_TAG_POINT, inner_prefix, point_bytes, extra]


def point_payload_offset(request_body: bytes) -> int:
    """Offset of the Point bytes inside a point request body (after tag 17 and the length varint)."""
    pos = 2
    while request_body[pos] & 0x80:
        pos += 1
    return pos + 1


class ScoredFieldsEncoder:
    """Precomputed pieces for the fields the agent appends to every point of one task node."""

    def __init__(self, score_field: str, flag_field: str) -> None:
        self.score_and_latency = struct.Struct(
            f"<{len(double_entry_prefix(score_field))}sd{len(double_entry_prefix(LATENCY_MS))}sd"
        )
        self.score_prefix = double_entry_prefix(score_field)
        self.latency_prefix = double_entry_prefix(LATENCY_MS)
        self.latency_only = struct.Struct(f"<{len(self.latency_prefix)}sd")
        self.flag = {True: bool_entry(flag_field, True), False: bool_entry(flag_field, False)}
        self.scored = {True: bool_entry(SCORED, True), False: bool_entry(SCORED, False)}
        # Confusion-matrix cell for (label, flagged), so dashboards can sum precision/recall live.
        cells = dict(
            zip(((True, True), (False, True), (True, False), (False, False)), CONFUSION, strict=True)
        )
        self.confusion = {
            key: b"".join(int_entry(name, int(name == cell)) for name in CONFUSION)
            for key, cell in cells.items()
        }

    def scored_tail(self, model_version: str, threshold: float) -> bytes:
        """Fields shared by every point of one scored batch."""
        return (
            self.scored[True]
            + string_entry(MODEL_VERSION, model_version)
            + double_entry(THRESHOLD, threshold)
        )

    def scored_fields(
        self, score: float, latency_ms: float, flagged: bool, label: bool | None, tail: bytes
    ) -> bytes:
        """All appended fields of one scored point."""
        head = self.score_and_latency.pack(self.score_prefix, score, self.latency_prefix, latency_ms)
        if label is None:
            return head + self.flag[flagged] + tail
        return head + self.flag[flagged] + self.confusion[(label, flagged)] + tail

    def unscored_fields(self, latency_ms: float, error_entry: bytes) -> bytes:
        """All appended fields of a point emitted without a score (`error_entry` from `error_field`)."""
        return self.latency_only.pack(self.latency_prefix, latency_ms) + self.scored[False] + error_entry

    @staticmethod
    def error_field(message: str) -> bytes:
        """The `error` string field saying why a point is unscored."""
        return string_entry(ERROR, message)
