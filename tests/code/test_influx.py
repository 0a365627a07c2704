"""tickguard.influx, the one home of InfluxDB access: durations, line protocol, InfluxQL quoting, the client.

The round-trip tests write through the module into a real influxd 1.8 and read back through InfluxQL, with
names drawn by hypothesis from the characters that break naive escaping (spaces, hyphens, dots, quotes,
commas, equals signs, backslashes, unicode).
"""

from __future__ import annotations

import itertools
import socket

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tickguard.errors import TickguardError
from tickguard.influx import (
    InfluxClient,
    InfluxRejected,
    InfluxUnavailable,
    LineProtocolError,
    call_with_retries,
    encode_line,
    escape_key,
    escape_measurement,
    format_duration,
    format_field,
    parse_duration_ns,
    parse_duration_s,
    preferred_type,
    quote_ident,
    quote_string,
)

S = 1_000_000_000

# ---- durations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1d", 86_400 * S),
        ("1h30m", 5_400 * S),
        ("2w", 14 * 86_400 * S),
        ("250ms", 250_000_000),
        ("10u", 10_000),
        ("10µ", 10_000),
        ("10us", 10_000),
        ("7ns", 7),
        ("1.5h", 5_400 * S),
        ("90", 90 * S),  # a bare number is seconds (GENERATOR_DURATION, --follow)
        (" 1m 30s ", 90 * S),
    ],
)
def test_one_duration_grammar_with_influxql_units(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("text", ["", "5 minutes", "1y", "m", "1h-5m", "-1s", "1hh"])
def test_bad_durations_are_refused_naming_the_text(text: str) -> None:
    with pytest.raises(TickguardError, match=f"duration {text!r}"):
        parse_duration_ns(text)


@given(st.integers(min_value=0, max_value=10**19))
def test_format_duration_reads_back_to_the_same_nanoseconds(ns: int) -> None:
    assert parse_duration_ns(format_duration(ns)) == ns


def test_parse_duration_s_is_the_same_grammar_in_seconds() -> None:
    assert parse_duration_s("1d") == 86_400.0


# ---- line protocol and InfluxQL -------------------------------------------------------------------------


def test_line_protocol_escapes_each_part_as_influxdb_reads_it() -> None:
    line = encode_line(
        "cpu load,x",
        {"host name": "a=b,c", "empty": ""},
        {"f=1": 1.5, "n": 3, "ok": True, "s": 'say "hi" \\'},
        7,
    )
    assert line == 'cpu\\ load\\,x,host\\ name=a\\=b\\,c f\\=1=1.5,n=3i,ok=true,s="say \\"hi\\" \\\\" 7'


def test_field_values_take_the_type_influxdb_has_for_the_field() -> None:
    assert format_field(0, "float") == "0.0"  # InfluxDB's JSON gives the float 0.0 as 0
    assert format_field(2, "integer") == "2i"
    assert format_field(2.5, "integer") is None  # an integer field cannot hold 2.5
    assert format_field(float("inf"), None) is None
    assert format_field(1, "boolean") is None


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "non-empty"),
        ("a\\", "backslash before the end"),
        ("a\\,b", "backslash before ','"),
        ("a\\ b", "backslash before ' '"),
        ("a\nb", "line break"),
    ],
)
def test_names_influxdb_cannot_store_are_refused_naming_them(name: str, reason: str) -> None:
    with pytest.raises(LineProtocolError, match=reason):
        escape_key(name)
    with pytest.raises(LineProtocolError, match=reason):
        escape_measurement(name)
    with pytest.raises(LineProtocolError, match=reason):
        escape_key(name, "tag value")


def test_a_backslash_before_a_double_quote_is_refused_where_influxdb_unescapes_it() -> None:
    # influxd 1.8 stores the field key and measurement 'k\"z' as 'k"z', but keeps tags as written.
    with pytest.raises(LineProtocolError, match="backslash before '\"'"):
        escape_key('k\\"z')
    with pytest.raises(LineProtocolError, match="backslash before '\"'"):
        escape_measurement('k\\"z')
    assert escape_key('k\\"z', "tag key") == 'k\\"z'


def test_a_measurement_starting_with_a_hash_would_be_a_comment() -> None:
    with pytest.raises(LineProtocolError, match="comment"):
        encode_line("#m", {}, {"x": 1})


def test_a_point_without_a_writable_field_is_refused_naming_the_measurement() -> None:
    with pytest.raises(LineProtocolError, match="'m'.*at least one writable field"):
        encode_line("m", {}, {"x": None, "y": float("nan")})


def test_influxql_quoting() -> None:
    assert quote_ident('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert quote_string("it's \\") == "'it\\'s \\\\'"


def test_a_field_with_several_types_is_read_as_its_number_type() -> None:
    # SHOW FIELD KEYS lists types alphabetically: "boolean" came first and the feature was dropped.
    assert preferred_type(["boolean", "float"]) == "float"
    assert preferred_type(["string", "integer"]) == "integer"
    assert preferred_type(["integer", "float", "string"]) == "float"
    assert preferred_type(["string"]) == "string"


# ---- retries --------------------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_transient_failures_are_retried_with_backoff_then_raised() -> None:
    waits: list[float] = []
    calls = itertools.count()

    def failing() -> None:
        next(calls)
        raise InfluxUnavailable("down")

    with pytest.raises(InfluxUnavailable):
        call_with_retries(failing, 3, sleep=waits.append)
    assert next(calls) == 4 and waits == [0.25, 0.5, 1.0]


def test_an_unreachable_influxdb_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    client = InfluxClient(url, database="x", retries=1, sleep=lambda _s: None, timeout_s=2)
    with pytest.raises(InfluxUnavailable, match=f"InfluxDB at {url} unreachable") as caught:
        client.write(["m x=1"])
    assert "\n" not in str(caught.value)


# ---- against a real influxd -------------------------------------------------------------------------------

# Characters that break naive escaping, plus letters so names are not all punctuation ("time" is InfluxDB's own).
AWKWARD = " -._\"',=\\/:;#é€漢🙂abcXYZ019"
names = st.text(alphabet=AWKWARD, min_size=1, max_size=12).filter(lambda n: n != "time")


def storable(name: str, escape=escape_key, *args: str) -> bool:
    try:
        escape(name, *args)
    except LineProtocolError:
        return False
    return True


@pytest.fixture(scope="module")
def client(influx_server):
    influx_server.create_database("influx_props")
    with InfluxClient(influx_server.url, database="influx_props", retention_policy="autogen") as one:
        yield one


_measurements = itertools.count()


@pytest.mark.tick
@example(
    fields=["a b", "x-y.z", 'q"uote', "it's", "c,d", "e=f", "g\\h", "ü ñ 漢"],
    tag_key="host name",
    tag_value="a=b,c \\d",
    text='say "hi" \\ \n',
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fields=st.lists(names, min_size=1, max_size=6, unique=True),
    tag_key=names,
    tag_value=names,
    text=st.text(max_size=20),
)
def test_awkward_names_round_trip_through_a_real_influxd(client, fields, tag_key, tag_value, text) -> None:
    """Write through the module, read back through InfluxQL: every storable name comes back unchanged, and
    every name the module refuses is one InfluxDB 1.x cannot store (a backslash before a separator or the end)."""
    refused = [n for n in fields if not storable(n)]
    refused += [n for n in (tag_key, tag_value) if not storable(n, escape_key, "tag key")]
    if refused:
        assert all("\\" in n for n in refused)  # only names with a backslash InfluxDB cannot keep are refused
        event("refused: a backslash InfluxDB cannot keep")
        return
    event("written and read back")
    measurement = f"m {next(_measurements)},{fields[0]}"
    if not storable(measurement, escape_measurement):
        measurement = f"m {next(_measurements)}"
    values = {name: float(i) + 0.5 for i, name in enumerate(fields)}
    values["text field"] = text
    client.write([encode_line(measurement, {tag_key: tag_value}, values, 1_000)])
    assert client.field_types(measurement) == {**dict.fromkeys(fields, "float"), "text field": "string"}
    columns = ", ".join(quote_ident(name) for name in [*fields, "text field"])
    rows = client.select(
        f"SELECT {columns} FROM {quote_ident(measurement)} "
        f"WHERE {quote_ident(tag_key)}::tag = {quote_string(tag_value)}"  # ::tag: a field may share the name
    )
    assert len(rows) == 1
    row = rows[0]
    assert {name: row[name] for name in fields} == {name: values[name] for name in fields}
    assert row["text field"] == text
    tags = client.select(f"SHOW TAG VALUES FROM {quote_ident(measurement)} WITH KEY = {quote_ident(tag_key)}")
    assert [(t["key"], t["value"]) for t in tags] == [(tag_key, tag_value)]


@pytest.mark.tick
def test_a_rejected_write_names_the_measurement_and_field(client) -> None:
    client.write(["typed v=1i"])
    with pytest.raises(InfluxRejected) as caught:
        client.write(["typed v=1.5"])
    message = str(caught.value)
    assert "measurement 'typed', field 'v'" in message and "type conflict" in message and "\n" not in message
    with pytest.raises(InfluxRejected, match="no database 'nope'"):
        client.write(["typed v=1i"], database="nope")
    with pytest.raises(InfluxRejected, match="measurement 'typed': .*invalid field format"):
        client.write(["typed v"])


@pytest.mark.tick
def test_writes_go_in_batches_and_queries_stream_in_chunks(client) -> None:
    lines = [encode_line("chunks", {}, {"i": i}, i + 1) for i in range(2_500)]
    assert client.write(lines, batch_size=1_000) == 2_500
    series = list(client.iter_series('SELECT "i" FROM "chunks"', chunk_size=700))
    assert [len(s["values"]) for s in series] == [700, 700, 700, 400]
    assert [row["i"] for _tags, row in client.rows('SELECT "i" FROM "chunks"', chunk_size=700)] == list(
        range(2_500)
    )


@pytest.mark.tick
def test_a_bad_query_is_one_line_naming_the_statement(client) -> None:
    with pytest.raises(InfluxRejected, match="'SELEC x' failed: error parsing query"):
        client.query("SELEC x")
