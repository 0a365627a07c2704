"""The agent over a real Unix socket, driven the way Kapacitor drives it, scoring with the real service."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.fixtures.udf import FEATURES, MODEL_VERSION, UdfWire, make_point, synthetic_rows
from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import frame
from tickguard.agent.options import DECLARED_OPTIONS
from tickguard.agent.schema import format_field_map

MS = 1_000_000


def test_info_declares_every_option_with_its_type(udf_agent_factory):
    agent = udf_agent_factory(batch=True)
    for path, edge in ((agent.socket_path, pb.STREAM), (agent.batch_socket_path, pb.BATCH)):
        wire = UdfWire(path)
        wire.send(pb.Request(info=pb.InfoRequest()))
        info = wire.receive_kind("info").info
        assert info.wants == edge and info.provides == edge
        assert {name: list(o.valueTypes) for name, o in info.options.items()} == {
            name: [value_type] for name, value_type in DECLARED_OPTIONS.items()
        }
        wire.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batchSize": 0}, "batchSize"),
        ({"threshold": 1.5}, "threshold"),
        ({"mode": "turbo"}, "mode"),
        ({"url": "ftp://x"}, "url"),
        ({"scoreField": "scored"}, "scoreField"),
        ({"timeout": ("duration", 0)}, "timeout"),
        ({"batchSize": "ten"}, "batchSize() expects a int"),
    ],
)
def test_init_rejects_bad_options_naming_them(udf_agent_factory, options, message):
    wire = UdfWire(udf_agent_factory().socket_path)
    response = wire.init(**options).init
    assert not response.success
    assert message in response.error
    # The connection stays usable: a keepalive is still answered.
    wire.send(pb.Request(keepalive=pb.KeepaliveRequest(time=7)))
    assert wire.receive_kind("keepalive").keepalive.time == 7


def test_keepalive_snapshot_and_restore_are_answered(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    assert wire.init(mode="echo").init.success
    wire.send(pb.Request(keepalive=pb.KeepaliveRequest(time=123456789)))
    assert wire.receive_kind("keepalive").keepalive.time == 123456789
    wire.send(pb.Request(snapshot=pb.SnapshotRequest()))
    snapshot = wire.receive_kind("snapshot").snapshot.snapshot
    wire.send(pb.Request(restore=pb.RestoreRequest(snapshot=snapshot)))
    assert wire.receive_kind("restore").restore.success


def test_echo_mode_with_full_output_returns_every_point_byte_for_byte(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    assert wire.init(mode="echo", output="full").init.success
    requests = [make_point(i, values=np.arange(30) * i, label=i % 2, note="x") for i in range(500)]
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in requests))
    for request in requests:
        assert wire.receive_kind("point").point == request.point


def test_echo_mode_with_default_lean_output_keeps_tags_strings_and_kept_fields_only(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    assert wire.init(mode="echo").init.success
    requests = [make_point(i, values=np.arange(30) * i, label=i % 2, note="x") for i in range(50)]
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in requests))
    for request in requests:
        point = wire.receive_kind("point").point
        assert point.time == request.point.time and dict(point.tags) == dict(request.point.tags)
        assert dict(point.fieldsString) == {"note": "x"}
        kept = {**dict(point.fieldsDouble), **dict(point.fieldsInt)}
        assert set(kept) == {"Amount", "Class"} and kept["Amount"] == request.point.fieldsDouble["Amount"]


def test_garbage_bytes_get_a_clear_error_response(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    wire.send_raw(frame(b"\x07\x01\x02garbage"))
    error = wire.receive_kind("error").error.error
    assert "unknown request" in error
    assert wire.receive() is None  # the agent closed this connection, and only this one


def test_runaway_length_prefix_gets_a_clear_error_response(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    wire.send_raw(b"\xff" * 12)
    assert "not UDF framing" in wire.receive_kind("error").error.error


def test_point_before_init_is_a_protocol_error(udf_agent_factory):
    wire = UdfWire(udf_agent_factory().socket_path)
    wire.send(make_point(0))
    assert "before init" in wire.receive_kind("error").error.error


@pytest.mark.parametrize("output", ["full", "lean"])
def test_scored_points_carry_every_output_field_in_input_order(udf_agent_factory, scoring_service, output):
    X, y = synthetic_rows(700, seed=3)
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(batchSize=256, flushInterval=("duration", 20 * MS), output=output).init.success
    requests = [make_point(i, values=X[i], label=int(y[i])) for i in range(len(X))]
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in requests))

    from tickguard.modelstore import load_model
    from tickguard.service.app import model_dir_of

    expected = load_model(model_dir_of(scoring_service.app)).score(X)
    cells = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for i, request in enumerate(requests):
        point = wire.receive_kind("point").point
        assert point.time == request.point.time
        assert dict(point.tags) == dict(request.point.tags)
        assert point.fieldsBool["scored"] is True
        assert point.fieldsDouble["score"] == pytest.approx(expected[i], abs=1e-9)
        assert point.fieldsBool["anomaly"] == (expected[i] >= 0.5)
        assert point.fieldsDouble["threshold"] == 0.5
        assert point.fieldsString["model_version"] == MODEL_VERSION
        assert point.fieldsDouble["latency_ms"] > 0
        if output == "full":
            for name in FEATURES:
                assert point.fieldsDouble[name] == request.point.fieldsDouble[name]
        else:  # lean: of the numeric inputs only the kept ones (Amount, Class) remain
            dropped = [name for name in FEATURES if name != "Amount"]
            assert not set(dropped) & set(point.fieldsDouble)
            assert point.fieldsDouble["Amount"] == request.point.fieldsDouble["Amount"]
        assert point.fieldsInt["Class"] == y[i]
        assert sum(point.fieldsInt[c] for c in cells) == 1
        for cell in cells:
            cells[cell] += point.fieldsInt[cell]
        assert "error" not in point.fieldsString
    assert cells["tp"] + cells["fn"] == int(y.sum())
    assert cells["tp"] > 0 and cells["tn"] > 0
    assert scoring_service.requests <= 20  # micro-batches, not one request per point (700 points)


def test_options_rename_fields_override_threshold_and_pick_features(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(50, seed=4)
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(
        fields=",".join(FEATURES), threshold=0.0, scoreField="p_fraud", flagField="is_fraud", labelField=""
    ).init.success
    wire.send_raw(b"".join(frame(make_point(i, values=X[i], label=0).SerializeToString()) for i in range(50)))
    for _ in range(50):
        point = wire.receive_kind("point").point
        assert "p_fraud" in point.fieldsDouble and "score" not in point.fieldsDouble
        assert point.fieldsBool["is_fraud"] is True  # threshold 0 flags everything
        assert point.fieldsDouble["threshold"] == 0.0
        assert "tp" not in point.fieldsInt  # labelField('') turns the confusion cells off


def test_malformed_points_are_marked_and_the_connection_lives(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(4, seed=5)
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(flushInterval=("duration", 10 * MS)).init.success
    missing = make_point(1, values=X[1])
    del missing.point.fieldsDouble["V7"]
    text = make_point(2, values=X[2])
    del text.point.fieldsDouble["Amount"]
    text.point.fieldsString["Amount"] = "12 EUR"
    as_int = make_point(3, values=X[3])
    del as_int.point.fieldsDouble["Time"]
    as_int.point.fieldsInt["Time"] = 3
    nan = make_point(4, values=X[0])
    nan.point.fieldsDouble["V2"] = float("nan")
    good = make_point(0, values=X[0])
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in (good, missing, text, as_int, nan)))
    points = [wire.receive_kind("point").point for _ in range(5)]
    assert [p.tags["seq"] for p in points] == ["0", "1", "2", "3", "4"]
    assert points[0].fieldsBool["scored"] and points[3].fieldsBool["scored"]  # int features are numbers
    assert not points[1].fieldsBool["scored"]
    assert "'V7'" in points[1].fieldsString["error"] and "missing" in points[1].fieldsString["error"]
    assert "'V7'" not in points[1].fieldsDouble  # reported missing, not invented as 0.0
    assert not points[2].fieldsBool["scored"]
    assert "'Amount'" in points[2].fieldsString["error"] and "string" in points[2].fieldsString["error"]
    assert not points[4].fieldsBool["scored"] and "'V2'" in points[4].fieldsString["error"]
    wire.send(pb.Request(keepalive=pb.KeepaliveRequest(time=1)))
    assert wire.receive_kind("keepalive").keepalive.time == 1


def test_service_down_marks_points_and_scoring_resumes(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(20, seed=6)
    agent = udf_agent_factory(url=scoring_service.url, breaker_cooldown_s=0.2, retries=1)
    wire = UdfWire(agent.socket_path)
    assert wire.init(flushInterval=("duration", 5 * MS)).init.success

    def roundtrip(first: int) -> list[pb.Point]:
        wire.send_raw(
            b"".join(frame(make_point(first + i, values=X[i]).SerializeToString()) for i in range(10))
        )
        return [wire.receive_kind("point").point for _ in range(10)]

    assert all(p.fieldsBool["scored"] for p in roundtrip(0))
    scoring_service.stop()
    for round_ in range(4):  # enough failed batches to open the breaker
        down = roundtrip(100 + 10 * round_)
        assert all(not p.fieldsBool["scored"] for p in down)
        assert all(p.fieldsString["error"] for p in down)
        assert all("score" not in p.fieldsDouble for p in down)
    assert any("circuit open" in p.fieldsString["error"] for p in down)
    scoring_service.start()
    deadline = time.monotonic() + 10
    while True:
        back = roundtrip(1000)
        if all(p.fieldsBool["scored"] for p in back) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert all(p.fieldsBool["scored"] for p in back)


def test_keepalives_are_answered_while_the_service_hangs(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(5, seed=7)
    scoring_service.delay_s = 3.0
    agent = udf_agent_factory(url=scoring_service.url, retries=0)
    wire = UdfWire(agent.socket_path)
    assert wire.init(
        flushInterval=("duration", 0), timeout=("duration", 5_000 * MS), maxDelay=("duration", 1_500 * MS)
    ).init.success
    wire.send_raw(b"".join(frame(make_point(i, values=X[i]).SerializeToString()) for i in range(5)))
    started = time.monotonic()
    wire.send(pb.Request(keepalive=pb.KeepaliveRequest(time=99)))
    assert wire.receive_kind("keepalive").keepalive.time == 99
    assert time.monotonic() - started < 0.5  # answered while the scoring request is still hanging
    points = [wire.receive_kind("point").point for _ in range(5)]
    waited = time.monotonic() - started
    assert all(not p.fieldsBool["scored"] for p in points)
    assert "did not answer" in points[0].fieldsString["error"]
    assert waited < 2.9  # emitted at the maxDelay budget, not when the service finally answers


def test_batch_edges_keep_begin_points_end_in_order(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(30, seed=8)
    agent = udf_agent_factory(batch=True, url=scoring_service.url)
    wire = UdfWire(agent.batch_socket_path)
    assert wire.init(batchSize=7).init.success
    data = []
    for b in range(3):
        data.append(pb.Request(begin=pb.BeginBatch(name="w", size=10, tags={"b": str(b)})))
        data.extend(make_point(10 * b + i, values=X[10 * b + i]) for i in range(10))
        data.append(pb.Request(end=pb.EndBatch(name="w", tmax=b)))
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in data))
    kinds = []
    for request in data:
        response = wire.receive()
        kind = response.WhichOneof("message")
        kinds.append(kind)
        if kind == "point":
            assert response.point.tags["seq"] == request.point.tags["seq"]
            assert response.point.fieldsBool["scored"]
        elif kind == "begin":
            assert response.begin == request.begin
        else:
            assert response.end == request.end
    assert kinds == [r.WhichOneof("message") for r in data]


def test_naive_mode_scores_one_point_per_request(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(12, seed=9)
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(mode="naive").init.success
    wire.send_raw(b"".join(frame(make_point(i, values=X[i]).SerializeToString()) for i in range(12)))
    assert all(wire.receive_kind("point").point.fieldsBool["scored"] for _ in range(12))
    assert scoring_service.requests == 12


def test_many_connections_are_served_concurrently(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(100, seed=10)
    agent = udf_agent_factory(url=scoring_service.url)
    failures: list[str] = []

    def one_task(task: int) -> None:
        try:
            wire = UdfWire(agent.socket_path)
            assert wire.init(flushInterval=("duration", 10 * MS)).init.success
            wire.send_raw(b"".join(frame(make_point(i, values=X[i]).SerializeToString()) for i in range(100)))
            seqs = [wire.receive_kind("point").point.tags["seq"] for _ in range(100)]
            assert seqs == [str(i) for i in range(100)]
            wire.close()
        except Exception as exc:  # collected and asserted in the main thread
            failures.append(f"task {task}: {exc!r}")

    threads = [threading.Thread(target=one_task, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []


def test_undecodable_point_gets_a_clear_error_response(udf_agent_factory, scoring_service):
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(flushInterval=("duration", 0)).init.success
    wire.send_raw(frame(b"\x8a\x01\x05\xff\xff\xff\xff\xff"))  # a point whose bytes are not a Point
    assert "not valid protobuf" in wire.receive_kind("error").error.error


def test_metrics_endpoint_counts_points_batches_and_breaker_state(udf_agent_factory, scoring_service):
    import requests

    X, _ = synthetic_rows(20, seed=11)
    agent = udf_agent_factory(url=scoring_service.url)
    port = agent.metrics.serve("127.0.0.1", 0)
    wire = UdfWire(agent.socket_path)
    assert wire.init(flushInterval=("duration", 5 * MS)).init.success
    wire.send_raw(b"".join(frame(make_point(i, values=X[i]).SerializeToString()) for i in range(20)))
    for _ in range(20):
        wire.receive_kind("point")
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "tickguard_udf_points_in_total 20.0" in text
    assert "tickguard_udf_points_out_total 20.0" in text
    assert "tickguard_udf_points_scored_total 20.0" in text
    assert "tickguard_udf_batches_total" in text and "tickguard_udf_queue_depth 0.0" in text
    assert "tickguard_udf_connections 1.0" in text
    assert f'tickguard_udf_breaker_state{{state="closed",url="{scoring_service.url}"}} 1.0' in text
    agent.metrics.stop()


def test_an_internal_error_leaves_points_unscored_instead_of_killing_the_task(
    udf_agent_factory, scoring_service, monkeypatch
):
    import tickguard.agent.connection as connection_module

    def broken_prepare(*_args, **_kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(connection_module, "prepare", broken_prepare)
    X, _ = synthetic_rows(3, seed=12)
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(flushInterval=("duration", 0)).init.success
    wire.send_raw(b"".join(frame(make_point(i, values=X[i]).SerializeToString()) for i in range(3)))
    points = [wire.receive_kind("point").point for _ in range(3)]
    assert [p.tags["seq"] for p in points] == ["0", "1", "2"]
    assert all(not p.fieldsBool["scored"] and "internal error" in p.fieldsString["error"] for p in points)
    assert all(p.fieldsDouble["V1"] == X[i][1] for i, p in enumerate(points))
    wire.send(pb.Request(keepalive=pb.KeepaliveRequest(time=5)))
    assert wire.receive_kind("keepalive").keepalive.time == 5


# ---- several models: .model(), .fields() renames checked at init, positive values from the card -----


def _score_of(scoring_service, model: str, rows: np.ndarray) -> np.ndarray:
    """What the service itself answers for `rows` of `model` (the agent must write the same)."""
    import requests

    card = requests.get(f"{scoring_service.url}/model?model={model}", timeout=5).json()
    body = {"columns": card["features"], "data": rows.tolist()}
    answer = requests.post(f"{scoring_service.url}/predict?model={model}", json=body, timeout=5).json()
    return np.array([p["score"] for p in answer["predictions"]]), card


def test_model_option_scores_with_the_named_model_and_renamed_fields(udf_agent_factory, scoring_service):
    X, y = synthetic_rows(40, seed=13, width=9)
    expected, card = _score_of(scoring_service, "shuttle", X)
    assert card["version"] == "udf-shuttle-1"
    point_fields = ["f1", "sensor two", "f.3", "it's f4", 'the "5th"', "f6", "f7", "f8", "f9, last"]
    mapping = format_field_map(zip(card["features"], point_fields, strict=True))
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    response = wire.init(model="shuttle", fields=mapping, labelField="anomaly", flagField="flagged").init
    assert response.success, response.error
    requests_ = []
    for i in range(len(X)):
        request = make_point(i)
        for name, value in zip(point_fields, X[i], strict=True):
            request.point.fieldsDouble[name] = float(value)
        request.point.fieldsInt["anomaly"] = int(y[i])
        requests_.append(request)
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in requests_))
    for i in range(len(X)):
        point = wire.receive_kind("point").point
        assert point.fieldsBool["scored"], point.fieldsString["error"]
        assert point.fieldsString["model_version"] == "udf-shuttle-1"
        assert point.fieldsDouble["score"] == pytest.approx(expected[i], abs=1e-12)
        assert point.fieldsBool["flagged"] == (expected[i] >= 0.5)
        assert point.fieldsInt["anomaly"] == y[i]  # the label survives: the flag has its own name
        assert point.fieldsInt["tp"] + point.fieldsInt["fn"] == y[i]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "nosuch"}, "does not serve model 'nosuch'"),
        ({"model": "shuttle", "fields": "f1=a,f10=b,g=c"}, "'f10', 'g' that model 'shuttle' does not have"),
        ({"fields": "Time,Amount,Bogus"}, "'Bogus' that the service's default model does not have"),
        ({"labelField": "anomaly"}, "labelField 'anomaly' equals flagField 'anomaly'"),
    ],
)
def test_init_refuses_an_unknown_model_or_unknown_features_naming_them(
    udf_agent_factory, scoring_service, options, message
):
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    response = wire.init(**options).init
    assert not response.success
    assert message in response.error


def test_init_succeeds_while_the_service_is_down_and_points_say_why(udf_agent_factory, scoring_service):
    scoring_service.stop()
    wire = UdfWire(udf_agent_factory(url=scoring_service.url, retries=0).socket_path)
    assert wire.init(model="shuttle", fields="f1=a", flushInterval=("duration", 0)).init.success
    wire.send(make_point(0, a=1.0))
    point = wire.receive_kind("point").point
    assert not point.fieldsBool["scored"] and "unknown" in point.fieldsString["error"]


def test_string_labels_count_by_the_detectors_positive_values(udf_agent_factory, scoring_service):
    X, _ = synthetic_rows(30, seed=14, width=2)
    expected, card = _score_of(scoring_service, "grades", X)
    assert card["detector"]["label"]["positive"] == ["bad", "worse"]
    grades = ["bad", "good", "worse", "Bad", "fine"] * 6
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(model="grades", labelField="grade", threshold=0.0).init.success
    wire.send_raw(
        b"".join(
            frame(make_point(i, f1=float(X[i, 0]), f2=float(X[i, 1]), grade=grades[i]).SerializeToString())
            for i in range(30)
        )
    )
    for i in range(30):
        point = wire.receive_kind("point").point
        assert point.fieldsDouble["score"] == pytest.approx(expected[i], abs=1e-12)
        # threshold 0 flags every point: a positive label is a tp, any other an fp ("Bad" is not "bad")
        assert point.fieldsInt["tp"] == (grades[i] in ("bad", "worse")), grades[i]
        assert point.fieldsInt["fp"] == (grades[i] not in ("bad", "worse"))
