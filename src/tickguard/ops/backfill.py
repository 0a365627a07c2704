"""Backfill: score the points of `transactions` that have no scored counterpart in `transactions_scored`.

Kapacitor stream tasks only see live writes, so points that reached InfluxDB while the score task was
down (UDF agent restarted, kapacitord restarted, subscription lost) are never scored by the pipeline.
A backfill reads the raw points of a time range, matches them to the scored measurement by timestamp
(and `txid` when both sides have one), sends the unmatched ones - and, by default, the ones the pipeline
emitted unscored (`scored=false`, e.g. the model service was down) - to the REST service in batches, and
writes them back with the same tags and timestamp, every input field, the agent's output fields (score,
anomaly, scored, model_version, threshold, tp/fp/fn/tn when the label is present) and `backfilled=true`.
Writing to another measurement (`--measurement`) re-scores history with the model now served.

The same code runs after the watchdog heals a task: `heal_hook()` returns a callback for
`tickguard.agent.watchdog.Watchdog.add_callback` that backfills the outage once the task is back;
`tickguard backfill` (tickguard.ops.commands) runs it from the command line.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import requests

from tickguard.agent.config import OUTPUT_LEAN
from tickguard.errors import TickguardError
from tickguard.ops.config import BackfillSettings, backfill_settings

log = logging.getLogger(__name__)

TXID_FIELD = "txid"
BACKFILLED_FIELD = "backfilled"
_NUMERIC = frozenset({"float", "integer"})  # InfluxDB field types a lean point drops (unless kept)
PROGRESS_EVERY_S = 5.0
MAX_BUCKETS = 2000  # density buckets of one planning query
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}


# ---- time ranges ------------------------------------------------------------------------------------


def parse_duration_ns(text: str) -> int:
    """Nanoseconds of an InfluxQL-style duration: '90s', '5m', '1h30m', '250ms', '2d'."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(value + unit for value, unit in parts) != compact:
        raise TickguardError(f"duration {text!r}: expected e.g. 90s, 5m, 1h30m, 250ms, 2d")
    return int(sum(float(value) * _UNIT_NS[unit] for value, unit in parts))


def parse_time(text: str, now_ns: int | None = None) -> int:
    """Nanoseconds since the epoch from 'now', 'now-10m' / '-10m', RFC 3339 / ISO 8601, or epoch digits.

    Bare digits are read as seconds (10 digits or fewer), milliseconds (13), or nanoseconds (19).
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    value = text.strip()
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
    # datetime keeps microseconds only: add back the nanoseconds of a 9-digit fraction.
    fraction = re.search(r"\.(\d{7,9})", value)
    extra = int(fraction.group(1).ljust(9, "0")[6:]) if fraction else 0
    return int(parsed.timestamp()) * 1_000_000_000 + parsed.microsecond * 1_000 + extra


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds, for logs and reports."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest:09d}Z"


# ---- line protocol ----------------------------------------------------------------------------------


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _escape_measurement(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _escape_string(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def encode_value(value: Any, field_type: str | None) -> str | None:
    """One field value in line protocol, typed as InfluxDB knows the field; None when it cannot be written.

    InfluxDB's JSON gives whole floats as integers (1.0 -> 1), so the declared type decides, not Python's.
    """
    if value is None:
        return None
    if isinstance(value, bool) or field_type == "boolean":
        if isinstance(value, bool):
            return "true" if value else "false"
        return None
    if isinstance(value, str) or field_type == "string":
        return f'"{_escape_string(str(value))}"'
    if field_type == "integer":
        return f"{int(value)}i"
    if isinstance(value, int | float):
        number = float(value)
        return repr(number) if math.isfinite(number) else None
    return None


def encode_line(measurement: str, tags: dict[str, str], fields: dict[str, str], time_ns: int) -> str:
    """A line of line protocol from already-encoded field values."""
    tag_text = "".join(
        f",{_escape_key(key)}={_escape_key(value)}" for key, value in sorted(tags.items()) if value != ""
    )
    field_text = ",".join(f"{_escape_key(name)}={value}" for name, value in fields.items())
    return f"{_escape_measurement(measurement)}{tag_text} {field_text} {time_ns}"


# ---- HTTP with retries --------------------------------------------------------------------------------


def request_with_retries(
    session: requests.Session,
    settings: BackfillSettings,
    what: str,
    base_url: str,
    method: str,
    path: str,
    retry_statuses: frozenset[int] = frozenset(),
    **kwargs: Any,
) -> requests.Response:
    """One HTTP call, retried with backoff on connection errors, 5xx and `retry_statuses`."""
    last = ""
    for attempt in range(settings.retries + 1):
        try:
            response = session.request(method, base_url + path, timeout=settings.timeout_s, **kwargs)
        except requests.RequestException as exc:
            last = f"{what} at {base_url} unreachable: {exc}"
        else:
            if response.status_code < 500 and response.status_code not in retry_statuses:
                return response
            last = f"{what} {method} {path} returned {response.status_code}: {response.text[:300]}"
        if attempt < settings.retries:
            time.sleep(min(5.0, 0.25 * 2**attempt))
    raise TickguardError(last)


# ---- InfluxDB ---------------------------------------------------------------------------------------


class InfluxQL:
    """The InfluxDB 1.x HTTP API: InfluxQL queries and line-protocol writes, with retries."""

    def __init__(self, settings: BackfillSettings):
        self.settings = settings
        self.session = requests.Session()
        if settings.username:
            self.session.auth = (settings.username, settings.password)

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return request_with_retries(
            self.session, self.settings, "InfluxDB", self.settings.influx_url, method, path, **kwargs
        )

    def query(self, influxql: str) -> list[dict[str, Any]]:
        """Series of one statement (each with 'columns', 'values' and maybe 'tags'); times in ns."""
        params = {"db": self.settings.database, "q": influxql, "epoch": "ns"}
        response = self._request("POST", "/query", data=params)
        if response.status_code == 401:
            raise TickguardError(
                "InfluxDB refused the credentials (set TICKGUARD_INFLUXDB_USER/_PASSWORD or --user)"
            )
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise TickguardError(
                f"InfluxDB query failed ({response.status_code}): {response.text[:300]}"
            ) from None
        results = body.get("results") or [{}]
        error = body.get("error") or results[0].get("error")
        if error:
            if "database not found" in error:
                raise TickguardError(f"InfluxDB has no database {self.settings.database!r}")
            raise TickguardError(f"InfluxDB query {influxql!r} failed: {error}")
        return results[0].get("series") or []

    def write(self, lines: list[str], retention_policy: str) -> None:
        """Write lines (ns precision); raise TickguardError naming InfluxDB's reason on a refusal."""
        params = {"db": self.settings.database, "rp": retention_policy, "precision": "ns"}
        response = self._request("POST", "/write", params=params, data="\n".join(lines).encode())
        if response.status_code != 204:
            raise TickguardError(
                f"InfluxDB refused a backfill write ({response.status_code}): {response.text[:300]}"
            )

    def field_types(self, measurement: str) -> dict[str, str]:
        """Field name -> InfluxDB type (float, integer, string, boolean); the first type wins on conflicts."""
        types: dict[str, str] = {}
        for series in self.query(f'SHOW FIELD KEYS FROM "{measurement}"'):
            for name, kind in series.get("values") or []:
                types.setdefault(name, kind)
        return types


def _rows(series: list[dict[str, Any]]) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """(tags, row) for every row of a query's series; the row maps column -> value, including time."""
    for one in series:
        tags = {key: value for key, value in (one.get("tags") or {}).items() if value not in (None, "")}
        columns = one["columns"]
        for values in one.get("values") or []:
            yield tags, dict(zip(columns, values, strict=True))


# ---- scoring ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """The REST service's answer for one batch."""

    scores: list[float]
    flags: list[bool]
    threshold: float
    model_version: str


class ScoringApi:
    """POST /predict in {"columns", "data"} batches; GET /model for the feature list."""

    def __init__(self, settings: BackfillSettings):
        self.settings = settings
        self.session = requests.Session()
        self._features: tuple[str, ...] | None = None

    def _post_or_get(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        # 408/429: the service is busy, not refusing the rows; worth another try.
        return request_with_retries(
            self.session,
            self.settings,
            "scoring service",
            self.settings.api_url,
            method,
            path,
            retry_statuses=frozenset({408, 429}),
            **kwargs,
        )

    def features(self) -> tuple[str, ...]:
        """The served model's features (GET /model), fetched once."""
        if self._features is None:
            response = self._post_or_get("GET", "/model")
            try:
                card = orjson.loads(response.content)
                features = tuple(card["features"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise TickguardError(
                    f"GET {self.settings.api_url}/model did not return a model card ({response.status_code})"
                ) from None
            if not features or not all(isinstance(name, str) for name in features):
                raise TickguardError(f"GET {self.settings.api_url}/model returned no usable feature list")
            self._features = features
        return self._features

    def score(self, rows: list[list[float]]) -> Scores:
        """Scores of rows given in `features()` order."""
        body = orjson.dumps({"columns": list(self.features()), "data": rows})
        response = self._post_or_get(
            "POST", "/predict", data=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code != 200:
            raise TickguardError(
                f"scoring service refused a backfill batch of {len(rows)} rows "
                f"({response.status_code}): {response.text[:300]}"
            )
        payload = orjson.loads(response.content)
        predictions = payload["predictions"]
        if len(predictions) != len(rows):
            raise TickguardError(f"scoring service returned {len(predictions)} scores for {len(rows)} rows")
        return Scores(
            [float(p["score"]) for p in predictions],
            [bool(p["anomaly"]) for p in predictions],
            float(payload["threshold"]),
            str(payload["model_version"]),
        )


def feature_row(row: dict[str, Any], features: tuple[str, ...]) -> tuple[list[float] | None, str]:
    """The point's feature values in model order, or why it cannot be scored (naming the field)."""
    values: list[float] = []
    for name in features:
        value = row.get(name)
        if value is None:
            return None, f"missing feature field '{name}'"
        if isinstance(value, bool):
            return None, f"field '{name}' is a boolean, not a number"
        if isinstance(value, str):
            shown = value if len(value) <= 40 else value[:37] + "..."
            return None, f"field '{name}' is a string ('{shown}'), not a number"
        number = float(value)
        if not math.isfinite(number):
            return None, f"field '{name}' is {number}, not a finite number"
        values.append(number)
    return values, ""


def label_of(value: Any) -> bool | None:
    """The ground-truth label as the agent reads it (non-zero number, true, or '1'/'true'/'yes'/'fraud')."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    return str(value).strip().lower() in ("1", "true", "yes", "fraud")


# ---- the backfill -----------------------------------------------------------------------------------


@dataclass
class BackfillReport:
    """What a backfill found and did."""

    start_ns: int
    end_ns: int
    target: str
    source_points: int = 0
    already_scored: int = 0
    missing: int = 0  # no counterpart at all
    unscored_counterparts: int = 0  # counterpart written with scored=false
    written: int = 0
    scored: int = 0
    unscorable: int = 0  # written with scored=false: a feature missing or not a number
    windows: int = 0
    model_version: str = ""
    elapsed_s: float = 0.0
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def to_score(self) -> int:
        """Points the backfill (re)scores: missing ones plus unscored counterparts (when re-scoring them)."""
        return self.missing + self.unscored_counterparts

    def summary(self) -> str:
        """One line for logs and the command's output."""
        verb = "would write" if self.dry_run else "wrote"
        return (
            f"{format_time(self.start_ns)} .. {format_time(self.end_ns)} -> {self.target}: "
            f"{self.source_points} source points, {self.already_scored} already scored, "
            f"{self.missing} missing, {self.unscored_counterparts} unscored; {verb} {self.written} "
            f"({self.scored} scored, {self.unscorable} unscorable) in {self.elapsed_s:.1f} s"
            + (f", model {self.model_version}" if self.model_version else "")
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = {k: v for k, v in self.__dict__.items()}
        data["from"] = format_time(self.start_ns)
        data["to"] = format_time(self.end_ns)
        return data


class Backfiller:
    """Finds and scores unscored points of one source measurement into one target measurement."""

    def __init__(
        self,
        settings: BackfillSettings | None = None,
        *,
        target: str | None = None,
        rescore_unscored: bool = True,
        rescore_all: bool = False,
        dry_run: bool = False,
        progress: Callable[[BackfillReport], None] | None = None,
    ):
        self.settings = settings or backfill_settings()
        self.target = target or self.settings.scored_measurement
        self.rescore_unscored = rescore_unscored
        self.rescore_all = rescore_all
        self.dry_run = dry_run
        self.progress = progress
        self.influx = InfluxQL(self.settings)
        self.api = ScoringApi(self.settings)
        self.skipped_points = 0  # points of the last plan in buckets that needed nothing

    # -- planning -------------------------------------------------------------------------------------
    def plan_windows(self, start_ns: int, end_ns: int) -> list[tuple[int, int, int]]:
        """Consecutive [from, to) windows with at most `max_window_points` source points each (empty ones skipped)."""
        span = max(1, end_ns - start_ns + 1)
        bucket = max(1_000_000_000, -(-span // MAX_BUCKETS))
        bucket = -(-bucket // 1_000_000_000) * 1_000_000_000  # whole seconds for GROUP BY time()
        source = self.settings.source_measurement
        series = self.influx.query(
            f'SELECT count(*) FROM "{source}" WHERE time >= {start_ns} AND time <= {end_ns} '
            f"GROUP BY time({bucket // 1_000_000_000}s) fill(0)"
        )
        done = self._done_per_bucket(start_ns, end_ns, bucket)
        self.skipped_points = 0
        windows: list[tuple[int, int, int]] = []
        current_from, current_count = None, 0
        for _tags, row in _rows(series):
            count = max((v for k, v in row.items() if k != "time" and isinstance(v, int)), default=0)
            if count and done.get(int(row["time"]), 0) >= count:
                self.skipped_points += count  # every point here already has its counterpart: nothing to read
                count = 0
            low = max(start_ns, int(row["time"]))
            high = min(end_ns + 1, int(row["time"]) + bucket)
            if count == 0:
                if current_from is not None:
                    windows.append((current_from, low, current_count))
                    current_from, current_count = None, 0
                continue
            if current_from is not None and current_count + count > self.settings.max_window_points:
                windows.append((current_from, low, current_count))
                current_from, current_count = None, 0
            if current_from is None:
                current_from = low
            current_count += count
            last_high = high
        if current_from is not None:
            windows.append((current_from, last_high, current_count))
        return windows

    def _done_per_bucket(self, start_ns: int, end_ns: int, bucket: int) -> dict[int, int]:
        """Bucket start -> points of the target that need nothing more (scored, or any when keeping unscored)."""
        if self.rescore_all:
            return {}
        field_name = self.settings.score_field if self.rescore_unscored else "scored"
        series = self.influx.query(
            f'SELECT count("{field_name}") FROM "{self.target}" WHERE time >= {start_ns} AND time <= {end_ns} '
            f"GROUP BY time({bucket // 1_000_000_000}s) fill(0)"
        )
        return {int(row["time"]): int(row.get("count") or 0) for _tags, row in _rows(series)}

    # -- matching -------------------------------------------------------------------------------------
    def counterparts(self, low: int, high: int) -> dict[int, list[tuple[str | None, bool]]]:
        """time -> [(txid, scored)] of the target measurement's points in [low, high)."""
        index: dict[int, list[tuple[str | None, bool]]] = {}
        if self.rescore_all:
            return index
        series = self.influx.query(
            f'SELECT "scored", "{TXID_FIELD}", "{self.settings.score_field}" FROM "{self.target}" '
            f"WHERE time >= {low} AND time < {high}"
        )
        for _tags, row in _rows(series):
            scored = row.get("scored") is True and row.get(self.settings.score_field) is not None
            index.setdefault(int(row["time"]), []).append((row.get(TXID_FIELD), scored))
        return index

    @staticmethod
    def match(candidates: list[tuple[str | None, bool]] | None, txid: str | None) -> bool | None:
        """None = no counterpart; else whether the counterpart is scored. txid must agree when both have one."""
        if not candidates:
            return None
        found: bool | None = None
        for other_txid, scored in candidates:
            if txid is None or other_txid is None or other_txid == txid:
                found = found or scored
        return found

    # -- the run --------------------------------------------------------------------------------------
    def run(self, start_ns: int, end_ns: int) -> BackfillReport:
        """Backfill every window of [start_ns, end_ns]; returns what was found and written."""
        if end_ns < start_ns:
            raise TickguardError(f"--from {format_time(start_ns)} is after --to {format_time(end_ns)}")
        report = BackfillReport(start_ns, end_ns, self.target, dry_run=self.dry_run)
        started = time.monotonic()
        last_progress = started
        source = self.settings.source_measurement
        types = self.influx.field_types(source)
        if not types:
            report.elapsed_s = time.monotonic() - started
            return report
        features = self.api.features() if not self.dry_run else ()
        windows = self.plan_windows(start_ns, end_ns)
        report.source_points += self.skipped_points
        report.already_scored += self.skipped_points
        for low, high, _count in windows:
            report.windows += 1
            index = self.counterparts(low, high)
            series = self.influx.query(
                f'SELECT * FROM "{source}" WHERE time >= {low} AND time < {high} GROUP BY *'
            )
            pending: list[tuple[dict[str, str], dict[str, Any], bool]] = []
            for tags, row in _rows(series):
                report.source_points += 1
                status = self.match(index.get(int(row["time"])), row.get(TXID_FIELD))
                if status is True:
                    report.already_scored += 1
                    continue
                if status is None:
                    report.missing += 1
                elif self.rescore_unscored:
                    report.unscored_counterparts += 1
                else:
                    report.already_scored += 1
                    continue
                pending.append((tags, row, status is False))
            if pending and not self.dry_run:
                self._score_and_write(pending, features, types, report)
            if self.progress and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                report.elapsed_s = last_progress - started
                self.progress(report)
        report.elapsed_s = time.monotonic() - started
        return report

    def _score_and_write(
        self,
        pending: list[tuple[dict[str, str], dict[str, Any], bool]],
        features: tuple[str, ...],
        types: dict[str, str],
        report: BackfillReport,
    ) -> None:
        s = self.settings
        lean, keep = s.output == OUTPUT_LEAN, frozenset(s.keep_fields)
        lines: list[str] = []
        for offset in range(0, len(pending), s.batch_size):
            chunk = pending[offset : offset + s.batch_size]
            rows: list[list[float]] = []
            row_of: list[int] = []
            problems: list[str] = []
            for _tags, row, _replaces in chunk:
                values, problem = feature_row(row, features)
                row_of.append(len(rows) if values is not None else -1)
                problems.append(problem)
                if values is not None:
                    rows.append(values)
            result = self.api.score(rows) if rows else None
            if result is not None:
                report.model_version = result.model_version
            for (tags, row, replaces), position, problem in zip(chunk, row_of, problems, strict=True):
                fields: dict[str, str] = {}
                for name, value in row.items():
                    if name == "time" or (lean and types.get(name) in _NUMERIC and name not in keep):
                        continue  # lean output, like the agent's: no numeric inputs beyond `keep`
                    encoded = encode_value(value, types.get(name))
                    if encoded is not None:
                        fields[name] = encoded
                if position >= 0 and result is not None:
                    score = result.scores[position]
                    flagged = result.flags[position]
                    fields[s.score_field] = repr(score)
                    fields[s.flag_field] = "true" if flagged else "false"
                    fields["scored"] = "true"
                    fields["model_version"] = f'"{_escape_string(result.model_version)}"'
                    fields["threshold"] = repr(result.threshold)
                    label = label_of(row.get(s.label_field)) if s.label_field else None
                    if label is not None:
                        cells = {"tp": label and flagged, "fp": (not label) and flagged}
                        cells |= {"fn": label and not flagged, "tn": (not label) and not flagged}
                        for name, hit in cells.items():
                            fields[name] = "1i" if hit else "0i"
                    if replaces:
                        fields["error"] = '""'  # clear the reason the live pipeline left it unscored
                    report.scored += 1
                else:
                    fields["scored"] = "false"
                    fields["error"] = f'"{_escape_string("backfill: " + problem)}"'
                    report.unscorable += 1
                fields[BACKFILLED_FIELD] = "true"
                lines.append(encode_line(self.target, tags, fields, int(row["time"])))
            if len(lines) >= s.write_batch:
                self.influx.write(lines, s.retention_policy)
                report.written += len(lines)
                lines = []
        if lines:
            self.influx.write(lines, s.retention_policy)
            report.written += len(lines)


def backfill(
    start_ns: int, end_ns: int, settings: BackfillSettings | None = None, **options: Any
) -> BackfillReport:
    """Backfill [start_ns, end_ns] (see `Backfiller` for the options)."""
    return Backfiller(settings, **options).run(start_ns, end_ns)


# ---- after a watchdog heal --------------------------------------------------------------------------


def last_scored_before(settings: BackfillSettings, before_ns: int) -> int | None:
    """Timestamp of the newest point of the scored measurement at or before `before_ns` (None if none)."""
    series = InfluxQL(settings).query(
        f'SELECT last("scored") FROM "{settings.scored_measurement}" WHERE time <= {before_ns}'
    )
    for _tags, row in _rows(series):
        return int(row["time"])
    return None


def heal_window(
    settings: BackfillSettings,
    down_since: datetime,
    healed_at: datetime,
    *,
    lookback_s: float = 60.0,
    max_lookback_s: float = 86_400.0,
    end_margin_s: float = 2.0,
) -> tuple[int, int]:
    """The range to backfill after a heal: from the last point scored before the outage (at least
    `lookback_s` before the watchdog noticed it, at most `max_lookback_s`) to `end_margin_s` past the heal.

    The watchdog notices an outage late (it polls; an agent restarted with its own watchdog only sees the
    task after the restart), so the last scored point marks where the gap really began.
    """
    down_ns = int(down_since.timestamp() * 1e9)
    start = down_ns - int(lookback_s * 1e9)
    try:
        last = last_scored_before(settings, down_ns)
    except TickguardError as exc:
        log.warning("backfill: cannot find the last scored point before the outage: %s", exc)
        last = None
    if last is not None:
        start = min(start, last - 1_000_000_000)
    start = max(start, down_ns - int(max_lookback_s * 1e9))
    return start, int(healed_at.timestamp() * 1e9) + int(end_margin_s * 1e9)


def heal_hook(
    settings: BackfillSettings | None = None,
    *,
    settle_s: float = 5.0,
    lookback_s: float = 60.0,
    end_margin_s: float = 2.0,
    asynchronous: bool = True,
    on_done: Callable[[BackfillReport], None] | None = None,
) -> Callable[[Any], None]:
    """A callback for `Watchdog.add_callback`: backfill the outage of each healed task.

    It waits `settle_s` after the heal (points scored just before or after it are still in influxDBOut's
    buffer), then backfills `heal_window(...)`. Runs on its own thread unless `asynchronous=False`, so the
    watchdog keeps polling; backfills never overlap. Failures are logged, never raised into the watchdog.
    """
    lock = threading.Lock()

    def run(event: Any) -> None:
        resolved = settings or backfill_settings()
        wait = settle_s - (datetime.now(UTC) - event.healed_at).total_seconds()
        if wait > 0:
            time.sleep(wait)
        with lock:
            try:
                start, end = heal_window(
                    resolved,
                    event.down_since,
                    event.healed_at,
                    lookback_s=lookback_s,
                    end_margin_s=end_margin_s,
                )
                log.info(
                    "backfill after task %s was healed: %s .. %s",
                    event.task_id,
                    format_time(start),
                    format_time(end),
                )
                report = backfill(start, end, resolved)
                log.info("backfill after heal of %s: %s", event.task_id, report.summary())
            except Exception:
                log.exception("backfill after the heal of task %s failed", event.task_id)
                return
        if on_done is not None:
            on_done(report)

    def hook(event: Any) -> None:
        if asynchronous:
            threading.Thread(target=run, args=(event,), name=f"backfill-{event.task_id}", daemon=True).start()
        else:
            run(event)

    return hook
