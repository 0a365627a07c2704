"""Pure units of the agent: options, output encoding, the circuit breaker, settings, the watchdog's task filter."""

from __future__ import annotations

import time

import pytest

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import agent_settings
from tickguard.agent.encode import (
    ScoredFieldsEncoder,
    bool_entry,
    double_entry,
    int_entry,
    set_typed_field,
    string_entry,
)
from tickguard.agent.framing import decode_varint
from tickguard.agent.options import OptionError, defaults, info_response, parse_options
from tickguard.agent.scoring import BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, CircuitBreaker
from tickguard.agent.watchdog import uses_udf


def option(name, value_type, **value):
    """One InitRequest option with a single value."""
    return pb.Option(name=name, values=[pb.OptionValue(type=value_type, **value)])


def test_settings_come_from_the_environment_with_defaults():
    settings = agent_settings({})
    assert (
        settings.url == "http://127.0.0.1:8000" and settings.mode == "score" and settings.batch_size == 1000
    )
    assert settings.metrics_host == "127.0.0.1"
    custom = agent_settings({"TICKGUARD_SCORING_URL": "http://api:8000/", "TICKGUARD_UDF_BATCH_SIZE": "50"})
    assert custom.url == "http://api:8000" and custom.batch_size == 50


def test_options_override_defaults():
    base = defaults(agent_settings({}))
    parsed = parse_options(
        [
            option("url", pb.STRING, stringValue="http://svc:9000/"),
            option("fields", pb.STRING, stringValue="V1, V2"),
            option("fields", pb.STRING, stringValue='Amount="amount (EUR)"'),
            option("model", pb.STRING, stringValue="shuttle"),
            option("threshold", pb.DOUBLE, doubleValue=0.7),
            option("batchSize", pb.INT, intValue=64),
            option("flushInterval", pb.DURATION, durationValue=5_000_000),
            option("timeout", pb.DURATION, durationValue=250_000_000),
        ],
        base,
    )
    assert parsed.url == "http://svc:9000"
    assert parsed.fields == (("V1", "V1"), ("V2", "V2"), ("Amount", "amount (EUR)"))
    assert parsed.model == "shuttle" and base.model is None
    assert parsed.threshold == 0.7 and parsed.batch_size == 64
    assert parsed.flush_interval_s == 0.005 and parsed.timeout_s == 0.25
    assert parse_options([option("mode", pb.STRING, stringValue="naive")], base).batch_size == 1


@pytest.mark.parametrize(
    ("opt", "message"),
    [
        (option("nope", pb.STRING, stringValue="x"), "unknown option .nope()"),
        (option("fields", pb.STRING, stringValue="V1,,V2"), "empty name"),
        (option("fields", pb.STRING, stringValue="a=x,a=y"), "feature(s) 'a' more than once"),
        (option("fields", pb.STRING, stringValue='a"b'), "quote the whole name"),
        (option("model", pb.STRING, stringValue=" "), "model name"),
        (
            option("labelField", pb.STRING, stringValue="anomaly"),
            "labelField 'anomaly' equals flagField 'anomaly'",
        ),
        (
            option("labelField", pb.STRING, stringValue="score"),
            "labelField 'score' equals scoreField 'score'",
        ),
        (option("labelField", pb.STRING, stringValue="tp"), "labelField 'tp' collides"),
        (option("flagField", pb.STRING, stringValue="score"), "both 'score'"),
        (option("flushInterval", pb.DURATION, durationValue=-1), "flushInterval"),
        (pb.Option(name="batchSize"), "exactly one argument"),
    ],
)
def test_bad_options_raise_a_message_naming_them(opt, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options([opt], defaults(agent_settings({})))


def test_info_response_declares_edges():
    info = info_response(pb.BATCH, pb.BATCH).info
    assert info.wants == pb.BATCH and info.provides == pb.BATCH and "batchSize" in info.options


def test_hand_encoded_entries_decode_as_protobuf_map_entries():
    point = pb.Point.FromString(
        double_entry("score", 0.25)
        + bool_entry("anomaly", True)
        + int_entry("tp", 1)
        + string_entry("error", "é")
    )
    assert point.fieldsDouble["score"] == 0.25 and point.fieldsBool["anomaly"] is True
    assert point.fieldsInt["tp"] == 1 and point.fieldsString["error"] == "é"


def test_appended_fields_override_same_named_input_fields():
    original = pb.Point(name="m", fieldsDouble={"score": 9.0, "V1": 1.0}).SerializeToString()
    encoder = ScoredFieldsEncoder("score", "anomaly")
    extra = encoder.scored_fields(0.5, 1.0, False, None, encoder.scored_tail("v", 0.4))
    point = pb.Point.FromString(original + extra)
    assert point.fieldsDouble["score"] == 0.5 and point.fieldsDouble["V1"] == 1.0
    assert point.fieldsBool["scored"] is True and point.fieldsString["model_version"] == "v"


def test_breaker_opens_after_consecutive_failures_and_half_opens_after_cooldown():
    breaker = CircuitBreaker(failures=2, cooldown_s=0.05)
    breaker.record_failure("boom")
    assert breaker.state == BREAKER_CLOSED and breaker.allow()
    breaker.record_failure("boom")
    assert breaker.state == BREAKER_OPEN and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow() and breaker.state == BREAKER_HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.record_failure("still down")
    assert breaker.state == BREAKER_OPEN
    time.sleep(0.06)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == BREAKER_CLOSED and breaker.allow()


def test_watchdog_recognises_tasks_using_the_udf():
    assert uses_udf("stream\n  |from()\n  @tickguard()\n  .url('x')", ["tickguard"])
    assert uses_udf("@tickguard_batch ()", ["tickguard", "tickguard_batch"])
    assert not uses_udf("@tickguard_batch()", ["tickguard"])
    assert not uses_udf("stream|from()|alert()", ["tickguard"])


def test_a_point_with_a_nan_feature_is_emitted_unscored_without_the_nan_field():
    from tickguard.agent.pipeline import Batch, prepare, render

    def request_bytes(point: pb.Point) -> bytes:
        return pb.Request(point=point).SerializeToString()

    good = pb.Point(time=1, name="tx", fieldsDouble={"V1": 0.5, "V2": 1.5}, fieldsInt={"Class": 0})
    bad = pb.Point(time=2, name="tx", fieldsDouble={"V1": float("nan"), "V2": 2.0, "Other": float("inf")})
    batch = Batch(frames=[request_bytes(good), request_bytes(bad)], arrival=time.monotonic())
    prepare(batch, ("V1", "V2"), "Class")

    assert batch.row_of == [0, -1]
    assert "V1" in batch.errors[1] and "Other" in batch.errors[1]
    out = render(batch, None, "", ScoredFieldsEncoder("score", "anomaly"), None)
    # Two framed responses; decode the second and check the non-finite fields are gone.
    responses = []
    pos = 0
    while pos < len(out):
        length, pos = decode_varint(out, pos)
        responses.append(pb.Response.FromString(out[pos : pos + length]))
        pos += length
    emitted = responses[1].point
    assert set(emitted.fieldsDouble) == {"V2", "latency_ms"}
    assert emitted.fieldsBool["scored"] is False
    assert "V1" in emitted.fieldsString["error"]


def test_lean_output_drops_numeric_inputs_but_keeps_tags_strings_and_kept_fields():
    from tickguard.agent.pipeline import Batch, prepare, render
    from tickguard.agent.scoring import ScoreResult

    point = pb.Point(
        time=7,
        name="transactions",
        tags={"source": "gen"},
        fieldsDouble={"V1": 0.5, "V2": 1.5, "Amount": 12.5},
        fieldsInt={"Class": 1},
        fieldsString={"txid": "tx1"},
    )
    missing = pb.Point(time=8, name="transactions", fieldsDouble={"V1": 0.5}, fieldsString={"txid": "tx2"})
    frames = [pb.Request(point=p).SerializeToString() for p in (point, missing)]
    batch = Batch(frames=frames, arrival=time.monotonic())
    prepare(batch, ("V1", "V2"), "Class", lean_keep=("Amount",))
    assert batch.row_of == [0, -1] and batch.labels == [True, None]
    result = ScoreResult(scores=[0.9], flags=[True], model_version="v1", threshold=0.5)
    out = render(batch, result, "", ScoredFieldsEncoder("score", "anomaly"), None)
    emitted = []
    pos = 0
    while pos < len(out):
        length, pos = decode_varint(out, pos)
        emitted.append(pb.Response.FromString(out[pos : pos + length]).point)
        pos += length
    scored, unscored = emitted
    assert scored.time == 7 and scored.name == "transactions" and dict(scored.tags) == {"source": "gen"}
    assert set(scored.fieldsDouble) == {"Amount", "score", "latency_ms", "threshold"}
    assert set(scored.fieldsInt) == {"tp", "fp", "fn", "tn"} and scored.fieldsInt["tp"] == 1
    assert scored.fieldsString["txid"] == "tx1" and scored.fieldsBool["anomaly"] is True
    # V2 missing: unscored, and the 0.0 that reading it inserted is not emitted either.
    assert set(unscored.fieldsDouble) == {"latency_ms"} and unscored.fieldsBool["scored"] is False
    assert unscored.fieldsString["txid"] == "tx2" and "V2" in unscored.fieldsString["error"]


def test_output_and_keep_options():
    base = defaults(agent_settings({}))
    assert base.output == "lean" and base.keep_fields == ("Amount", "Class")
    assert defaults(agent_settings({"TICKGUARD_UDF_KEEP_FIELDS": ""})).keep_fields == ()
    parsed = parse_options(
        [
            option("output", pb.STRING, stringValue="full"),
            option("keep", pb.STRING, stringValue="Amount"),
        ],
        base,
    )
    assert parsed.output == "full" and parsed.keep_fields == ("Amount",)
    with pytest.raises(OptionError, match="output"):
        parse_options([option("output", pb.STRING, stringValue="slim")], base)


def test_udf_command_takes_its_socket_from_the_environment_or_says_what_is_missing(monkeypatch, capsys):
    from tickguard.cli import build_parser, main

    monkeypatch.setenv("TICKGUARD_UDF_SOCKET", "/run/x.sock")
    assert build_parser().parse_args(["udf"]).socket is None  # no flag needed: the env var serves
    monkeypatch.delenv("TICKGUARD_UDF_SOCKET")
    assert main(["udf"]) == 1
    assert "pass --socket PATH or set TICKGUARD_UDF_SOCKET" in capsys.readouterr().err


# ---- the field-list grammar of .fields()/.keep() (tickguard.agent.schema) ------------------------

AWKWARD_NAMES = [
    "Amount",
    "card holder",
    "a.b",
    "it's",
    'say "hi"',
    "x,y",
    "p=q",
    " padded ",
    "µ-ü",
    "back\\slash",
]


@pytest.mark.parametrize(
    ("text", "pairs"),
    [
        ("V1, V2", (("V1", "V1"), ("V2", "V2"))),
        ("amount = Amount", (("amount", "Amount"),)),
        ("f1=sensor one, f2=sensor.two", (("f1", "sensor one"), ("f2", "sensor.two"))),
        ('"a,b"="c=d", "say ""hi"""=it\'s', (("a,b", "c=d"), ('say "hi"', "it's"))),
        ('" padded "=x', ((" padded ", "x"),)),
        ("", ()),
    ],
)
def test_field_map_grammar(text, pairs):
    from tickguard.agent.schema import parse_field_map

    assert parse_field_map(text) == pairs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,", "ends without a name"),
        ("=a", "between two names"),
        ("a=b=c", "between two names"),
        ('"open', "unclosed double quote"),
        ('"a" b', "missing ',' or '='"),
        ("a,,b", "empty name"),
    ],
)
def test_field_map_grammar_errors_say_what_is_wrong(text, message):
    from tickguard.agent.schema import FieldListError, parse_field_map

    with pytest.raises(FieldListError, match=message):
        parse_field_map(text)


def test_awkward_names_round_trip_through_the_grammar():
    from tickguard.agent.schema import format_field_map, format_names, parse_field_map, parse_names

    pairs = tuple(zip(AWKWARD_NAMES, reversed(AWKWARD_NAMES), strict=True))
    assert parse_field_map(format_field_map(pairs)) == pairs
    assert parse_names(format_names(AWKWARD_NAMES)) == tuple(AWKWARD_NAMES)
    assert format_names(["Amount", "Class"]) == "Amount,Class"  # plain names stay plain


def test_resolve_features_names_unknown_features_and_the_model_ones():
    from tickguard.agent.options import resolve_features

    features = ("f1", "f2", "f3")
    assert resolve_features(features, None, None) == features
    assert resolve_features(features, (("f2", "sensor two"),), "shuttle") == ("f1", "sensor two", "f3")
    with pytest.raises(
        OptionError, match=r"'f9', 'g' that model 'shuttle' does not have; its features: f1, f2, f3"
    ):
        resolve_features(features, (("f9", "x"), ("g", "g"), ("f1", "y")), "shuttle")


def _labelled(**fields) -> pb.Point:
    point = pb.Point()
    for name, value in fields.items():
        set_typed_field(point, name, value)
    return point


@pytest.mark.parametrize(
    ("positive", "value", "expected"),
    [
        ([1], 1, True),
        ([1], 0, False),
        ([1], 1.0, True),
        ([1], " 1 ", True),  # a number written as a string, as training reads the CSV
        ([1], True, False),  # true is not the number 1 (as in training)
        ([4, 5], 5, True),
        (["fraud"], "fraud", True),
        (["fraud"], "Fraud", False),  # strings compare exactly
        (["fraud"], 1, False),
        ([True], True, True),
        ([True], "TRUE", True),
        ([True], False, False),
        (None, 2, True),  # no positive values on the card: the legacy non-zero rule
        (None, "yes", True),
    ],
)
def test_label_rule_matches_training(positive, value, expected):
    from tickguard.agent.options import LabelRule

    rule = LabelRule(positive)
    assert rule.value(_labelled(label=value), "label") is expected
    assert rule.value(_labelled(other=1), "label") is None


def test_label_rule_comes_from_the_model_card():
    from tickguard.agent.options import LabelRule
    from tickguard.detectors import load_detector

    card = {"detector": load_detector("shuttle").to_dict()}
    assert LabelRule.from_card(card).positive == (1,)
    assert LabelRule.from_card({"features": ["a"]}).positive is None


def test_scored_schema_of_each_bundled_detector():
    from tickguard.agent.schema import ScoredSchema, schema_for
    from tickguard.detectors import load_detector

    fraud = schema_for(load_detector("fraud"))
    assert fraud == ScoredSchema(
        "transactions_scored", "score", "anomaly", "Class", ("txid", "Amount", "Class")
    )
    shuttle = schema_for(load_detector("shuttle"))
    # The label is called like the default flag: the flag takes another name instead of overwriting it.
    assert shuttle.flag_field == "flagged" and shuttle.label_field == "anomaly"
    assert shuttle.keep_fields == ("anomaly",) and shuttle.measurement == "readings_scored"
    assert shuttle.field_types()["flagged"] == "boolean" and shuttle.field_types()["tp"] == "integer"


def test_typed_field_follows_influxdb_types_and_names_a_field_it_cannot_hold():
    import numpy as np

    point = pb.Point()
    for name, value in {
        "b": True,
        "i": 3,
        "n": np.int64(4),
        "f": 0.5,
        "g": np.float32(1.5),
        "s": "x",
    }.items():
        set_typed_field(point, name, value)
    assert dict(point.fieldsBool) == {"b": True}  # a bool is not taken for the int it also is
    assert dict(point.fieldsInt) == {"i": 3, "n": 4}
    assert dict(point.fieldsDouble) == {"f": 0.5, "g": 1.5}
    assert dict(point.fieldsString) == {"s": "x"}
    with pytest.raises(TypeError, match="field 'when'"):
        set_typed_field(point, "when", object())
