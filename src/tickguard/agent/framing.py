"""Varint-length framing of the UDF socket, and cheap classification of request frames.

Every message on a Kapacitor UDF socket is an unsigned varint byte count followed by that many
bytes of protobuf. The agent reads the socket in large chunks and cuts frames out of them here
without decoding: a data point only needs its tag bytes checked, because the bytes of a point
request are, unchanged, a valid point response (both put the Point in field 17).
"""

from __future__ import annotations

# A request's first byte(s) are the tag of its one oneof field (field number << 3 | wire type 2).
TAG_INFO = 0x0A
TAG_INIT = 0x12
TAG_KEEPALIVE = 0x1A
TAG_SNAPSHOT = 0x22
TAG_RESTORE = 0x2A
# Fields 16..18 need two tag bytes: 0x82 0x01, 0x8A 0x01, 0x92 0x01.
TWO_BYTE_TAG_BEGIN = b"\x82\x01"
TWO_BYTE_TAG_POINT = b"\x8a\x01"
TWO_BYTE_TAG_END = b"\x92\x01"

KIND_INFO = "info"
KIND_INIT = "init"
KIND_KEEPALIVE = "keepalive"
KIND_SNAPSHOT = "snapshot"
KIND_RESTORE = "restore"
KIND_BEGIN = "begin"
KIND_POINT = "point"
KIND_END = "end"
KIND_UNKNOWN = "unknown"

_ONE_BYTE_KINDS = {
    TAG_INFO: KIND_INFO,
    TAG_INIT: KIND_INIT,
    TAG_KEEPALIVE: KIND_KEEPALIVE,
    TAG_SNAPSHOT: KIND_SNAPSHOT,
    TAG_RESTORE: KIND_RESTORE,
}
_TWO_BYTE_KINDS = {0x82: KIND_BEGIN, 0x8A: KIND_POINT, 0x92: KIND_END}

# Kapacitor never sends anything near this; a larger length prefix means the stream is garbage.
MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_VARINT_BYTES = 10


class FramingError(Exception):
    """The byte stream cannot be cut into frames (bad varint, absurd length): the connection is unusable."""


def encode_varint(value: int) -> bytes:
    """Unsigned varint encoding of a non-negative integer."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Lengths of most frames are small: precomputed prefixes save a Python loop per point.
_SMALL_VARINTS = [encode_varint(n) for n in range(1 << 14)]


def varint(value: int) -> bytes:
    """Fast varint for the common small lengths."""
    if value < 16384:
        return _SMALL_VARINTS[value]
    return encode_varint(value)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int] | None:
    """Decode a varint at `pos`: (value, position after it), or None if `buf` ends inside it."""
    result = 0
    shift = 0
    end = len(buf)
    for count in range(MAX_VARINT_BYTES):
        if pos >= end:
            return None
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if count == MAX_VARINT_BYTES - 1:
            break
    raise FramingError(
        "length prefix is not a valid varint (more than 10 bytes): the stream is not UDF framing"
    )


def frame(message_bytes: bytes) -> bytes:
    """Prefix serialized message bytes with their varint length."""
    return varint(len(message_bytes)) + message_bytes


def classify(body: bytes) -> str:
    """Which request a frame body holds, judged from its first tag byte(s) only."""
    if not body:
        return KIND_UNKNOWN
    first = body[0]
    kind = _ONE_BYTE_KINDS.get(first)
    if kind is not None:
        return kind
    if len(body) > 1 and body[1] == 0x01:
        return _TWO_BYTE_KINDS.get(first, KIND_UNKNOWN)
    return KIND_UNKNOWN


class FrameReader:
    """Incremental frame splitter: feed it whatever recv() returned, get back complete frame bodies."""

    __slots__ = ("_buffer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = b""
        self.max_frame_bytes = max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Append received bytes; return the bodies of all frames now complete, in order."""
        buf = self._buffer + data if self._buffer else data
        frames: list[bytes] = []
        append = frames.append
        pos = 0
        end = len(buf)
        limit = self.max_frame_bytes
        while pos < end:
            # Inline fast path for one- and two-byte length prefixes (every frame below 16 KiB).
            b0 = buf[pos]
            if b0 < 0x80:
                length = b0
                start = pos + 1
            elif pos + 1 < end and buf[pos + 1] < 0x80:
                length = (b0 & 0x7F) | (buf[pos + 1] << 7)
                start = pos + 2
            else:
                decoded = decode_varint(buf, pos)
                if decoded is None:
                    break
                length, start = decoded
                if length > limit:
                    raise FramingError(
                        f"frame length {length} exceeds the {limit}-byte limit: the stream is not UDF framing"
                    )
            stop = start + length
            if stop > end:
                break
            append(buf[start:stop])
            pos = stop
        self._buffer = buf[pos:] if pos < end else b""
        return frames
