"""Framing of the UDF socket: varint lengths, split reads, large messages, garbage."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import (
    FrameReader,
    FramingError,
    classify,
    decode_varint,
    encode_varint,
    frame,
)


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_round_trips(value):
    encoded = encode_varint(value)
    assert decode_varint(encoded, 0) == (value, len(encoded))


def test_varint_matches_protobuf_encoding():
    # A message whose only content is a bytes field of length n is tag + varint(n) + payload.
    for size in (1, 127, 128, 16383, 16384, 300_000):
        message = pb.SnapshotResponse(snapshot=b"x" * size).SerializeToString()
        assert message[1 : 1 + len(encode_varint(size))] == encode_varint(size)


@given(st.lists(st.binary(max_size=400), max_size=20), st.integers(min_value=1, max_value=50))
def test_frames_survive_arbitrary_split_reads(messages, chunk):
    data = b"".join(frame(m) for m in messages)
    reader = FrameReader()
    received = []
    for start in range(0, len(data), chunk):
        received.extend(reader.feed(data[start : start + chunk]))
    assert received == messages
    assert reader.buffered == 0


def test_large_message_split_in_odd_pieces():
    big = os.urandom(5 * 1024 * 1024 + 3)
    data = frame(big) + frame(b"after")
    reader = FrameReader()
    received = []
    for start in range(0, len(data), 65_521):
        received.extend(reader.feed(data[start : start + 65_521]))
    assert received == [big, b"after"]


def test_incomplete_frame_waits_for_the_rest():
    reader = FrameReader()
    data = frame(b"hello world")
    assert reader.feed(data[:5]) == []
    assert reader.buffered == 5
    assert reader.feed(data[5:]) == [b"hello world"]


def test_runaway_varint_is_a_framing_error():
    with pytest.raises(FramingError, match="not a valid varint"):
        FrameReader().feed(b"\xff" * 11)


def test_absurd_length_is_a_framing_error():
    reader = FrameReader(max_frame_bytes=1000)
    with pytest.raises(FramingError, match="exceeds"):
        reader.feed(encode_varint(10_000_000) + b"abc")


def test_classify_reads_the_oneof_tag():
    def body(**kwargs):
        return pb.Request(**kwargs).SerializeToString()

    assert classify(body(keepalive=pb.KeepaliveRequest(time=5))) == "keepalive"
    assert classify(body(info=pb.InfoRequest())) == "info"
    assert classify(body(init=pb.InitRequest(taskID="t"))) == "init"
    assert classify(body(snapshot=pb.SnapshotRequest())) == "snapshot"
    assert classify(body(restore=pb.RestoreRequest(snapshot=b"s"))) == "restore"
    assert classify(body(begin=pb.BeginBatch(name="b"))) == "begin"
    assert classify(body(point=pb.Point(name="p"))) == "point"
    assert classify(body(end=pb.EndBatch(name="e"))) == "end"
    assert classify(b"\x07junk") == "unknown"
    assert classify(b"") == "unknown"


def test_point_request_bytes_are_a_valid_point_response():
    request = pb.Request(point=pb.Point(time=42, name="m", tags={"a": "b"}, fieldsDouble={"x": 1.5}))
    response = pb.Response.FromString(request.SerializeToString())
    assert response.WhichOneof("message") == "point"
    assert response.point == request.point
