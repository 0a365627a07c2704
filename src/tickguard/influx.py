"""The one place tickguard talks to InfluxDB 1.x: line protocol, InfluxQL quoting, durations, times, HTTP.

Before this module the project reached InfluxDB five ways (backfill, the write probe, the test harness, the
generator through influxdb-client, the notebooks' own helper), with two escapers and two duration grammars
(`generate --duration 1d` failed while `backfill --follow 1d` worked). Everything now goes through here:

- names: `escape_measurement`, `escape_key` (tag keys and values, field keys), `escape_string` (string
  field values) and `quote_ident` / `quote_string` for InfluxQL. InfluxDB 1.x's line protocol has no escape
  for a backslash in a name, so a name whose backslash stands before a separator (or at its end) cannot be
  written at all: it is refused here, naming it, instead of being stored under another name;
- `parse_duration_ns` / `parse_duration_s`: InfluxQL's units (ns, u/µ/us, ms, s, m, h, d, w), compounds
  such as 1h30m, decimals, and a bare number as seconds; `parse_time` / `format_time`;
- `InfluxClient`: queries (chunked for big results), batched writes with retries and backoff on what may pass
  (unreachable, 5xx, 429) and one-line errors on what will not (credentials, missing database, a rejected
  field, named with its measurement).

The module imports only the standard library; `requests` (agent and generate extras) loads when a client is
made, so light modules (settings, command registration) can parse durations and escape names.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

from tickguard.errors import TickguardError

if TYPE_CHECKING:
    import requests

    from tickguard.stack.config import InfluxSettings

T = TypeVar("T")

NUMERIC_TYPES = ("float", "integer")  # InfluxDB field types holding numbers (1.8 has no unsigned writes)
# When a field was written with several types (one per shard), which one to read it as: numbers first.
TYPE_PREFERENCE = ("float", "integer", "boolean", "string")
DEFAULT_CHUNK_SIZE = 10_000
DEFAULT_WRITE_BATCH = 5_000
MAX_BACKOFF_S = 10.0


class InfluxError(TickguardError):
    """InfluxDB could not be used; `status` is the HTTP status when there was an answer."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class InfluxUnavailable(InfluxError):
    """Unreachable, timed out, overloaded (5xx, 429): worth another try later."""


class InfluxRejected(InfluxError):
    """InfluxDB refused the request itself (bad credentials, no such database, a bad line or query)."""


class LineProtocolError(InfluxError, ValueError):
    """A name or value that line protocol cannot carry."""


# ---- durations and times ------------------------------------------------------------------------------

UNIT_NS = {
    "ns": 1,
    "u": 1_000,
    "µ": 1_000,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}
# Longest units first, so 'ms' is not read as 'm' followed by garbage.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|µs|us|ms|u|µ|s|m|h|d|w)")
DURATION_HINT = (
    "e.g. 90s, 5m, 1h30m, 250ms, 1d, 2w (units ns, u/µ/us, ms, s, m, h, d, w; a bare number = seconds)"
)


def parse_duration_ns(text: str) -> int:
    """Nanoseconds of a duration in InfluxQL's units, compounds allowed ('1h30m'); a bare number is seconds."""
    compact = str(text).strip().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", compact):
        return int(Fraction(compact) * UNIT_NS["s"])
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(value + unit for value, unit in parts) != compact:
        raise TickguardError(f"duration {text!r}: expected {DURATION_HINT}")
    # Exact arithmetic: floats lose nanoseconds beyond 2**53 (about 104 days).
    return int(sum(Fraction(value) * UNIT_NS[unit] for value, unit in parts))


def parse_duration_s(text: str) -> float:
    """Seconds of a duration (see parse_duration_ns)."""
    return parse_duration_ns(text) / 1e9


def format_duration(ns: int) -> str:
    """The shortest compound InfluxQL duration equal to `ns` (e.g. 5_400 s -> '1h30m'); '0s' for zero."""
    if ns == 0:
        return "0s"
    sign, rest, parts = ("-" if ns < 0 else ""), abs(ns), []
    for unit in ("w", "d", "h", "m", "s", "ms", "u", "ns"):
        count, rest = divmod(rest, UNIT_NS[unit])
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def parse_time(text: str, now_ns: int | None = None) -> int:
    """Nanoseconds since the epoch from 'now', 'now-10m' / '-10m', RFC 3339 / ISO 8601, or epoch digits.

    Bare digits are read as seconds (10 digits or fewer), milliseconds (13), microseconds (16) or
    nanoseconds (more).
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    value = str(text).strip()
    if value == "now":
        return now_ns
    relative = re.fullmatch(r"(?:now)?\s*([+-])\s*(.+)", value)
    if relative and not re.fullmatch(r"[+-]?\d+", value):
        offset = parse_duration_ns(relative.group(2))
        return now_ns - offset if relative.group(1) == "-" else now_ns + offset
    if re.fullmatch(r"\d+", value):
        number = int(value)
        if len(value) <= 10:
            return number * 1_000_000_000
        if len(value) <= 13:
            return number * 1_000_000
        if len(value) <= 16:
            return number * 1_000
        return number
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TickguardError(
            f"time {text!r}: expected now, now-10m, -10m, an RFC 3339 time such as "
            "2026-11-27T12:00:00Z, or epoch seconds/ms/ns"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # datetime keeps microseconds only: add back the nanoseconds of a 7- to 9-digit fraction.
    fraction = re.search(r"\.(\d{7,9})", value)
    extra = int(fraction.group(1).ljust(9, "0")[6:]) if fraction else 0
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1_000 + extra


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds (what InfluxQL accepts in a time literal and what logs show)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


# ---- line protocol ------------------------------------------------------------------------------------

# After a backslash, what InfluxDB 1.8 unescapes (or splits on) in each part of a line; a backslash before
# anything else is kept as it is. Measured on influxd 1.8.10 for every printable ASCII character.
_TAG_SPECIALS = frozenset(", =")
_KEY_SPECIALS = frozenset(', ="')  # measurements and field keys also unescape \"


def _check_name(kind: str, name: str, specials: frozenset[str]) -> None:
    if not isinstance(name, str) or name == "":
        raise LineProtocolError(f"{kind} {name!r}: line protocol needs a non-empty name")
    if "\n" in name or "\r" in name:
        raise LineProtocolError(f"{kind} {name!r}: line protocol cannot carry a line break in a name")
    # InfluxDB 1.x reads a backslash as escaping the next character but unescapes only the separators, and
    # not the same way in every part of a line: a backslash right before a separator or at the end of a
    # name is stored as something else or refused, whatever escaping is tried (checked against influxd 1.8).
    for position, char in enumerate(name):
        if char != "\\":
            continue
        after = name[position + 1] if position + 1 < len(name) else ""
        if after == "" or after in specials:
            where = "the end of the name" if after == "" else repr(after)
            raise LineProtocolError(
                f"{kind} {name!r}: InfluxDB 1.x cannot store a backslash before {where} "
                "(its line protocol has no escape for the backslash itself)"
            )


@functools.lru_cache(maxsize=8192)
def escape_measurement(name: str) -> str:
    """A measurement name for line protocol (commas and spaces escaped)."""
    _check_name("measurement", name, _KEY_SPECIALS)
    if name.startswith("#"):
        raise LineProtocolError(f"measurement {name!r}: a line starting with '#' is a comment to InfluxDB")
    return name.replace(",", "\\,").replace(" ", "\\ ")


@functools.lru_cache(maxsize=8192)
def escape_key(name: str, kind: str = "field") -> str:
    """A tag key, tag value or field key for line protocol (commas, equals signs and spaces escaped)."""
    _check_name(kind, name, _TAG_SPECIALS if kind.startswith("tag") else _KEY_SPECIALS)
    return name.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_string(value: str) -> str:
    """The inside of a string field value (backslashes and double quotes escaped)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def format_field(value: Any, field_type: str | None = None) -> str | None:
    """One field value in line protocol, or None when it cannot be written (None, NaN, infinities).

    `field_type` is the type InfluxDB already has for the field; it decides over Python's type because
    InfluxDB's JSON gives whole floats as integers (1.0 -> 1) and a value must keep its field's type.
    Without it: bool -> boolean, int -> integer, float -> float, str -> string.
    """
    if value is None:
        return None
    if field_type == "boolean" or isinstance(value, bool):
        return ("true" if value else "false") if isinstance(value, bool) else None
    if field_type == "string" or isinstance(value, str):
        return f'"{escape_string(str(value))}"'
    if isinstance(value, int | float):
        if field_type == "integer" or (field_type is None and isinstance(value, int)):
            if isinstance(value, float) and not value.is_integer():
                return None  # not representable in an integer field
            return f"{int(value)}i"
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    return None


def encode_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, Any],
    time_ns: int | None = None,
    types: Mapping[str, str] | None = None,
) -> str:
    """One line of line protocol; tags sorted (InfluxDB's order), empty tag values and unwritable fields left out.

    Raises LineProtocolError when no field is left or a name cannot be written, naming the measurement.
    """
    types = types or {}
    tag_text = "".join(
        f",{escape_key(key, 'tag key')}={escape_key(str(value), 'tag value')}"
        for key, value in sorted(tags.items())
        if value is not None and value != ""
    )
    encoded = []
    for name, value in fields.items():
        text = format_field(value, types.get(name))
        if text is not None:
            encoded.append(f"{escape_key(name)}={text}")
    if not encoded:
        raise LineProtocolError(f"measurement {measurement!r}: a point needs at least one writable field")
    stamp = "" if time_ns is None else f" {int(time_ns)}"
    return f"{escape_measurement(measurement)}{tag_text} {','.join(encoded)}{stamp}"


def measurement_of_line(line: str) -> str:
    """The (unescaped) measurement of a line of line protocol, for error messages."""
    match = re.match(r"((?:\\.|[^, \\])+)", line)
    return match.group(1).replace("\\,", ",").replace("\\ ", " ") if match else line[:40]


# ---- InfluxQL -----------------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes (any name: quotes, backslashes, spaces, unicode)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(text: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def tag_conditions(tags: Iterable[tuple[str, str]]) -> list[str]:
    """`"tag" = 'value'` for each (tag, value), for a WHERE clause: a detector's tag filter or a series key."""
    return [f"{quote_ident(tag)} = {quote_string(value)}" for tag, value in tags]


def qualified(measurement: str, database: str = "", retention_policy: str = "") -> str:
    """ "db"."rp"."measurement" (or the shorter forms when database / retention policy are empty)."""
    if database:
        return f"{quote_ident(database)}.{quote_ident(retention_policy) if retention_policy else ''}.{quote_ident(measurement)}"
    if retention_policy:
        return f"{quote_ident(retention_policy)}.{quote_ident(measurement)}"
    return quote_ident(measurement)


def time_range(start_ns: int, end_ns: int, end_inclusive: bool = False) -> str:
    """`time >= start AND time < end` (or <=) in nanoseconds, for a WHERE clause."""
    return f"time >= {int(start_ns)} AND time {'<=' if end_inclusive else '<'} {int(end_ns)}"


def iter_rows(series: Iterable[Mapping[str, Any]]) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """(tags, row) for every row of a query's series; the row maps column -> value, `time` included."""
    for one in series:
        tags = {key: value for key, value in (one.get("tags") or {}).items() if value not in (None, "")}
        columns = one["columns"]
        for values in one.get("values") or []:
            yield tags, dict(zip(columns, values, strict=True))


def preferred_type(kinds: Iterable[str]) -> str:
    """The type to read a field as when InfluxDB has it with several (one per shard): numbers first."""
    found = set(kinds)
    for kind in TYPE_PREFERENCE:
        if kind in found:
            return kind
    return sorted(found)[0]


# ---- retries ------------------------------------------------------------------------------------------


def backoff_s(attempt: int, cap_s: float = MAX_BACKOFF_S) -> float:
    """The wait before retry `attempt + 1`: 0.25 s, doubling, capped."""
    return min(cap_s, 0.25 * 2**attempt)


def call_with_retries(
    call: Callable[[], T],
    retries: int,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, InfluxError, float], None] | None = None,
    cap_s: float = MAX_BACKOFF_S,
) -> T:
    """Run `call`, retrying it on InfluxUnavailable up to `retries` times with backoff; re-raise the last."""
    for attempt in range(retries + 1):
        try:
            return call()
        except InfluxUnavailable as exc:
            if attempt == retries:
                raise
            wait = backoff_s(attempt, cap_s)
            if on_retry is not None:
                on_retry(attempt, exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def _loads(data: bytes | str) -> Any:
    try:
        import orjson
    except ImportError:  # the generate extra has no orjson; the standard library is fast enough there
        return json.loads(data)
    return orjson.loads(data)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


_FIELD_ON_MEASUREMENT = re.compile(
    r'field \\?"(?P<field>.+?)\\?" on measurement \\?"(?P<measurement>.+?)\\?"'
)


def describe_write_error(reason: str, lines: list[str]) -> str:
    """InfluxDB's reason for refusing a write, prefixed with the measurement and field it concerns."""
    found = _FIELD_ON_MEASUREMENT.search(reason)
    if found:
        return f"measurement {found['measurement']!r}, field {found['field']!r}: {_one_line(reason)}"
    parse = re.search(r"unable to parse '(.*?)': (.*)", reason, re.S)
    if parse:
        return f"measurement {measurement_of_line(parse.group(1))!r}: {_one_line(parse.group(2))} in line {_one_line(parse.group(1), 120)!r}"
    if "type conflict" in reason and lines:
        names = sorted({measurement_of_line(line) for line in lines})
        return f"measurement(s) {', '.join(map(repr, names[:5]))}: {_one_line(reason)} (a field got two types in one batch)"
    return _one_line(reason)


# ---- the HTTP client ----------------------------------------------------------------------------------


class InfluxClient:
    """InfluxDB 1.x over its HTTP API: InfluxQL queries (optionally chunked), line-protocol writes, retries.

    `database` / `retention_policy` are the defaults of queries and writes; every call may name others.
    Requests that fail in a way that may pass are retried `retries` times with backoff; then, or at once for
    a refusal, an InfluxError names what failed in one line.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        database: str = "",
        retention_policy: str = "",
        timeout_s: float = 30.0,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
    ):
        import requests

        self._requests = requests
        self.url = url.rstrip("/")
        self.username = username
        self.database = database
        self.retention_policy = retention_policy
        self.timeout_s = timeout_s
        self.retries = retries
        self.sleep = sleep
        self.session = session or requests.Session()
        if username:
            self.session.auth = (username, password)

    @classmethod
    def from_settings(cls, settings: InfluxSettings, **options: Any) -> InfluxClient:
        """A client for the TICKGUARD_INFLUXDB_* settings (tickguard.stack.config.influx_settings())."""
        return cls(
            settings.url,
            username=settings.username,
            password=settings.password,
            database=settings.database,
            retention_policy=settings.retention_policy,
            **options,
        )

    def close(self) -> None:
        """Release the connection pool."""
        self.session.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never show the password
        return f"InfluxClient({self.url!r}, username={self.username!r}, database={self.database!r})"

    # -- one HTTP request ------------------------------------------------------------------------------
    def _once(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(
                method, self.url + path, timeout=self.timeout_s, stream=stream, **kwargs
            )
        except self._requests.RequestException as exc:
            raise InfluxUnavailable(
                f"InfluxDB at {self.url} unreachable: {_one_line(str(exc), 200)}"
            ) from exc
        status = response.status_code
        if status >= 500 or status in (408, 429):
            text = _one_line(response.text)
            response.close()
            raise InfluxUnavailable(
                f"InfluxDB at {self.url} answered {method} {path} with {status}: {text}", status
            )
        if status in (401, 403):
            response.close()
            who = f"user {self.username!r}" if self.username else "no credentials"
            raise InfluxRejected(
                f"InfluxDB at {self.url} refused {who} ({status}): set TICKGUARD_INFLUXDB_USER and "
                "TICKGUARD_INFLUXDB_PASSWORD (or the command's --user/--password)",
                status,
            )
        return response

    def request(
        self, method: str, path: str, *, retries: int | None = None, **kwargs: Any
    ) -> requests.Response:
        """One HTTP request, retried on InfluxUnavailable; any answer below 500 is returned."""
        return call_with_retries(
            lambda: self._once(method, path, **kwargs),
            self.retries if retries is None else retries,
            sleep=self.sleep,
        )

    def ping(self) -> str:
        """InfluxDB's version (raises InfluxError when it does not answer)."""
        response = self.request("GET", "/ping")
        return response.headers.get("X-Influxdb-Version", "")

    # -- queries ---------------------------------------------------------------------------------------
    def _query_params(self, statement: str, database: str | None, epoch: str | None) -> dict[str, str]:
        params = {"q": statement}
        db = self.database if database is None else database
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        return params

    def _raise_for_results(self, statement: str, body: Any, status: int, database: str | None) -> list[dict]:
        if not isinstance(body, dict):
            raise InfluxRejected(f"InfluxDB query {_one_line(statement, 200)!r} failed ({status})", status)
        results = body.get("results") or [{}]
        error = body.get("error") or next((r.get("error") for r in results if r.get("error")), None)
        if error:
            db = self.database if database is None else database
            if "database not found" in error:
                raise InfluxRejected(f"InfluxDB has no database {db!r}", status)
            raise InfluxRejected(
                f"InfluxDB query {_one_line(statement, 200)!r} failed: {_one_line(error)}", status
            )
        return results

    def results(self, statement: str, *, database: str | None = None, epoch: str | None = "ns") -> list[dict]:
        """Every statement's result of an InfluxQL request (several statements separated by ';')."""
        response = self.request("POST", "/query", data=self._query_params(statement, database, epoch))
        try:
            body = _loads(response.content)
        except ValueError:
            raise InfluxRejected(
                f"InfluxDB query {_one_line(statement, 200)!r} failed ({response.status_code}): "
                f"{_one_line(response.text)}",
                response.status_code,
            ) from None
        return self._raise_for_results(statement, body, response.status_code, database)

    def query(self, statement: str, *, database: str | None = None, epoch: str | None = "ns") -> list[dict]:
        """The series of one statement (each with 'name', 'columns', 'values', maybe 'tags'); times in ns."""
        return self.results(statement, database=database, epoch=epoch)[0].get("series") or []

    def execute(self, statement: str, *, database: str | None = None) -> None:
        """A statement without rows (CREATE, DROP, GRANT...); raises InfluxError naming InfluxDB's reason."""
        self.results(statement, database=database, epoch=None)

    def iter_series(
        self,
        statement: str,
        *,
        database: str | None = None,
        epoch: str | None = "ns",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> Iterator[dict]:
        """The series of one statement in chunks of at most `chunk_size` rows, as InfluxDB streams them.

        Memory holds one chunk at a time, whatever the result's size. Only the start of the request is
        retried: once rows have been handed out, a failure raises.
        """
        params = self._query_params(statement, database, epoch) | {
            "chunked": "true",
            "chunk_size": str(chunk_size),
        }
        response = self.request("POST", "/query", data=params, stream=True)
        try:
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                try:
                    body = _loads(raw)
                except ValueError:
                    raise InfluxRejected(
                        f"InfluxDB query {_one_line(statement, 200)!r} failed ({response.status_code}): "
                        f"{_one_line(raw.decode(errors='replace'))}",
                        response.status_code,
                    ) from None
                for result in self._raise_for_results(statement, body, response.status_code, database):
                    yield from result.get("series") or []
        except self._requests.RequestException as exc:
            raise InfluxUnavailable(
                f"InfluxDB at {self.url} broke off a query: {_one_line(str(exc), 200)}"
            ) from exc
        finally:
            response.close()

    def rows(
        self, statement: str, *, database: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
        """(tags, row) of every row of one statement, read in chunks."""
        yield from iter_rows(self.iter_series(statement, database=database, chunk_size=chunk_size))

    def select(self, statement: str, *, database: str | None = None) -> list[dict[str, Any]]:
        """Rows of one statement as dicts (tags, then columns), `time` in ns; [] when there are none."""
        return [{**tags, **row} for tags, row in iter_rows(self.query(statement, database=database))]

    def field_types(self, measurement: str, *, database: str | None = None) -> dict[str, str]:
        """Field -> type (float, integer, string, boolean). A field written with several types over time is
        read as the one `preferred_type` picks (numbers first), whatever order SHOW FIELD KEYS lists them in."""
        kinds: dict[str, set[str]] = {}
        for series in self.query(f"SHOW FIELD KEYS FROM {quote_ident(measurement)}", database=database):
            for name, kind in series.get("values") or []:
                kinds.setdefault(name, set()).add(kind)
        return {name: preferred_type(found) for name, found in kinds.items()}

    def create_database(self, database: str) -> None:
        """CREATE DATABASE (idempotent)."""
        self.execute(f"CREATE DATABASE {quote_ident(database)}")

    # -- administration (an admin user, or auth off) -------------------------------------------------
    def databases(self) -> set[str]:
        """The databases InfluxDB has (SHOW DATABASES; an admin sees every one)."""
        return {
            str(values[0])
            for series in self.query("SHOW DATABASES", epoch=None)
            for values in series.get("values") or []
        }

    def privileges(self, user: str) -> dict[str, str]:
        """Database -> `user`'s privilege on it (READ, WRITE, ALL PRIVILEGES, NO PRIVILEGES): SHOW GRANTS."""
        try:
            series = self.query(f"SHOW GRANTS FOR {quote_ident(user)}", epoch=None)
        except InfluxRejected as exc:
            if "user not found" in str(exc):
                raise InfluxRejected(f"InfluxDB has no user {user!r}", exc.status) from None
            raise
        return {str(db): str(privilege) for one in series for db, privilege in one.get("values") or []}

    def grant(self, privilege: str, database: str, user: str) -> None:
        """GRANT READ|WRITE|ALL ON database TO user."""
        if privilege not in ("READ", "WRITE", "ALL"):
            raise ValueError(f"privilege {privilege!r}: expected READ, WRITE or ALL")
        self.execute(f"GRANT {privilege} ON {quote_ident(database)} TO {quote_ident(user)}")

    def subscriptions(self) -> list[dict[str, Any]]:
        """Rows of SHOW SUBSCRIPTIONS: database, retention_policy, name, mode, destinations."""
        return [
            {"database": series["name"], **row}
            for series in self.query("SHOW SUBSCRIPTIONS", epoch=None)
            for _tags, row in iter_rows([series])
        ]

    def ensure_database(self, database: str, reader: str = "") -> list[str]:
        """Create `database` if InfluxDB lacks it and let user `reader` (if given) READ it if it may not yet.

        Idempotent: nothing is written when both hold already, and a reader with ALL PRIVILEGES keeps
        them. Returns what was done, e.g. ['created database "x"', 'granted READ on "x" to "reader"'].
        With authentication on it needs an admin user (InfluxRejected with status 401/403 otherwise)."""
        done = []
        if database not in self.databases():
            self.create_database(database)
            done.append(f"created database {quote_ident(database)}")
        if reader and self.privileges(reader).get(database) not in ("READ", "ALL PRIVILEGES"):
            self.grant("READ", database, reader)
            done.append(f"granted READ on {quote_ident(database)} to {quote_ident(reader)}")
        return done

    # -- writes ----------------------------------------------------------------------------------------
    def write(
        self,
        lines: Iterable[str],
        *,
        database: str | None = None,
        retention_policy: str | None = None,
        precision: str = "ns",
        batch_size: int = DEFAULT_WRITE_BATCH,
        retries: int | None = None,
        on_retry: Callable[[int, InfluxError, float], None] | None = None,
    ) -> int:
        """Write lines of line protocol in batches of `batch_size`; returns how many were written.

        A batch that fails in a way that may pass is retried with backoff; a refused one raises
        InfluxRejected naming the database, the measurement and field when InfluxDB says which.
        """
        db = self.database if database is None else database
        rp = self.retention_policy if retention_policy is None else retention_policy
        if not db:
            raise InfluxRejected("InfluxDB write: no database given")
        params = {"db": db, "precision": precision}
        if rp:
            params["rp"] = rp
        written = 0
        batch: list[str] = []

        def send(chunk: list[str]) -> None:
            def attempt() -> None:
                response = self._once("POST", "/write", params=params, data="\n".join(chunk).encode())
                if response.status_code != 204:
                    reason = response.text
                    with contextlib.suppress(ValueError, AttributeError):
                        reason = _loads(response.content).get("error") or reason
                    where = f"{db}.{rp}" if rp else db
                    if "database not found" in reason:
                        raise InfluxRejected(
                            f"InfluxDB has no database {db!r} (HTTP {response.status_code})",
                            response.status_code,
                        )
                    raise InfluxRejected(
                        f"InfluxDB refused a write of {len(chunk)} point(s) to {where} "
                        f"(HTTP {response.status_code}): {describe_write_error(reason, chunk)}",
                        response.status_code,
                    )

            call_with_retries(
                attempt, self.retries if retries is None else retries, sleep=self.sleep, on_retry=on_retry
            )

        for line in lines:
            batch.append(line)
            if len(batch) >= batch_size:
                send(batch)
                written += len(batch)
                batch = []
        if batch:
            send(batch)
            written += len(batch)
        return written
