"""Backfill: score the points of `transactions` that have no scored counterpart in `transactions_scored`.

Kapacitor stream tasks only see live writes, so points that reached InfluxDB while the score task was
down (UDF agent restarted, kapacitord restarted, subscription lost) are never scored by the pipeline.
A backfill reads the raw points of a time range, matches them to the scored measurement by timestamp
(and `txid` when both sides have one), sends the unmatched ones - and, by default, the ones the pipeline
emitted unscored (`scored=false`, e.g. the model service was down) - to the REST service in batches, and
writes them back with the same tags and timestamp, every input field, the agent's output fields (score,
anomaly, scored, model_version, threshold, tp/fp/fn/tn when the label is present) and `backfilled=true`.
Writing to another measurement (`--measurement`) re-scores history with the model now served.

A windowed detector (tickguard.windows: the served model's card declares `[windows]`) scores a point from
its series' past, so for each time window the backfill rebuilds every series' state from its last
`capacity` points in InfluxDB before the window, exactly as the agent does after a restart
(tickguard.agent.windowing), pushes every point of the window in time order (scored before or not) and
writes the pending ones with the agent's fields, expected range included. Points of several series share
timestamps there, so a raw point is matched to its scored one by timestamp and series key.

A point the live task already wrote unscored is rewritten only when the backfill scores it or finds another
reason: when its reason is the live one (a series that starts fresh is `warming up` for the backfill too),
the live record stays as it is and the report counts it as `left_as_live`, so backfilled points are what
the live task would have written and a rerun writes nothing new.

The same code runs after the watchdog heals a task: `heal_hook()` returns a callback for
`tickguard.agent.watchdog.Watchdog.add_callback` that backfills the outage once the task is back;
`tickguard backfill` (tickguard.ops.commands) runs it from the command line.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import requests

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.encode import set_typed_field
from tickguard.agent.options import LabelRule
from tickguard.agent.schema import (
    BACKFILLED,
    CONFUSION,
    ERROR,
    EXPECTED_HIGH,
    EXPECTED_LOW,
    MODEL_VERSION,
    OUTPUT_LEAN,
    SCORED,
    THRESHOLD,
)
from tickguard.agent.windowing import (
    point_values,
    rebuild_from_history,
    series_tags,
    source_tag_filter,
    window_features_for_card,
)
from tickguard.errors import TickguardError
from tickguard.influx import (
    NUMERIC_TYPES,
    InfluxClient,
    encode_line,
    format_time,
    iter_rows,
    quote_ident,
    time_range,
)
from tickguard.ops.config import BackfillSettings, backfill_settings
from tickguard.scoring.payloads import (
    PayloadError,
    PredictResult,
    card_path,
    columns_request,
    parse_card,
    parse_predict_response,
    predict_path,
)
from tickguard.windows import OUT_OF_ORDER, WARMING_UP

log = logging.getLogger(__name__)

BACKFILLED_FIELD = BACKFILLED  # the scored-point schema: tickguard.agent.schema
_NUMERIC = frozenset(NUMERIC_TYPES)  # InfluxDB field types a lean point drops (unless kept)
PROGRESS_EVERY_S = 5.0
BACKFILL_PREFIX = "backfill: "  # begins the error of a point the backfill writes unscored
MAX_BUCKETS = 2000  # density buckets of one planning query


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


def influx_client(settings: BackfillSettings) -> InfluxClient:
    """The InfluxDB client of a backfill: reads from the settings' database, writes to its retention policy."""
    return InfluxClient(
        settings.influx_url,
        username=settings.username,
        password=settings.password,
        database=settings.database,
        retention_policy=settings.retention_policy,
        timeout_s=settings.timeout_s,
        retries=settings.retries,
    )


# ---- scoring ----------------------------------------------------------------------------------------


# The REST service's answer for one batch (the /predict contract).
Scores = PredictResult


class ScoringApi:
    """POST /predict in {"columns", "data"} batches; GET /model for the feature list.

    `model` names a served model (None = the service's default); the bodies, paths and answers are
    tickguard.scoring.payloads', the one home of the /predict contract.
    """

    def __init__(self, settings: BackfillSettings, model: str | None = None):
        self.settings = settings
        self.model = model
        self.session = requests.Session()
        self._card: dict[str, Any] | None = None

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

    def card(self) -> dict[str, Any]:
        """The served model's card (GET /model), fetched once."""
        if self._card is None:
            path = card_path(self.model)
            response = self._post_or_get("GET", path)
            try:
                self._card = parse_card(response.content)
            except PayloadError as exc:
                raise TickguardError(
                    f"GET {self.settings.api_url}{path} ({response.status_code}): {exc}"
                ) from None
        return self._card

    def features(self) -> tuple[str, ...]:
        """The served model's features, in its order."""
        return tuple(self.card()["features"])

    def label_rule(self) -> LabelRule:
        """What counts as a positive label: the served model's detector's positive values, as in the agent."""
        return LabelRule.from_card(self.card())

    def score(self, rows: list[list[float]], columns: tuple[str, ...] | None = None) -> Scores:
        """Scores of rows given in `columns` order (default: `features()`, the served model's)."""
        body = columns_request(columns or self.features(), rows)
        response = self._post_or_get(
            "POST", predict_path(self.model), data=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code != 200:
            raise TickguardError(
                f"scoring service refused a backfill batch of {len(rows)} rows "
                f"({response.status_code}): {response.text[:300]}"
            )
        try:
            return parse_predict_response(response.content, len(rows))
        except PayloadError as exc:
            raise TickguardError(str(exc)) from None


def feature_row(row: dict[str, Any], fields: tuple[str, ...]) -> tuple[list[float] | None, str]:
    """The point's values of `fields` (the model's features, in its order), or why it cannot be scored (naming
    the field)."""
    values: list[float] = []
    for name in fields:
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


def label_of(value: Any, rule: LabelRule | None = None) -> bool | None:
    """The ground-truth label as the agent reads it: by `rule` (the model card's positive values; without
    one, non-zero / true / '1', 'true', 'yes', 'fraud'). The value is put in a protocol point, typed as
    InfluxDB returned it, so the agent's own rule decides: one rule, not a copy of it."""
    if value is None:
        return None
    return (rule or LabelRule(None)).value(as_point({"label": value}, ("label",)), "label")


def as_point(row: dict[str, Any], names: tuple[str, ...]) -> pb.Point:
    """The fields `names` of a stored row in a protocol point, typed as InfluxDB returned them, so the agent's
    own rules judge them (absent or None fields stay absent)."""
    point = pb.Point()
    for name in names:
        value = row.get(name)
        if value is not None:
            set_typed_field(point, name, value)
    return point


def same_reason(live_error: str | None, problem: str) -> bool:
    """Whether the live task (or an earlier backfill, which prefixes `backfill: `) already wrote the point
    unscored for the reason the backfill finds now.

    `out of order` counts as the reason `warming up`: the backfill replays each series in time order, so it
    never finds a point out of order; one the live task got too late to place is scored when the history
    before it fills its window (what the live task would have written had the point arrived in time), and
    otherwise it is unscored either way, and its live record also tells how it arrived."""
    if live_error is None:
        return False
    if live_error.removeprefix(BACKFILL_PREFIX) == OUT_OF_ORDER:
        live_error = WARMING_UP
    return live_error in (problem, BACKFILL_PREFIX + problem)


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
    left_as_live: int = 0  # unscored counterparts the backfill cannot score for their live reason: untouched
    windows: int = 0
    model_version: str = ""
    elapsed_s: float = 0.0
    dry_run: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def to_score(self) -> int:
        """Points the backfill (re)writes: missing ones plus unscored counterparts (when re-scoring them) but
        those left as the live task wrote them. After a real run, `written + left_as_live` is
        `missing + unscored_counterparts`, and those plus `already_scored` are `source_points`."""
        return self.missing + self.unscored_counterparts - self.left_as_live

    def summary(self) -> str:
        """One line for logs and the command's output."""
        head = (
            f"{format_time(self.start_ns)} .. {format_time(self.end_ns)} -> {self.target}: "
            f"{self.source_points} source points, {self.already_scored} already scored, "
            f"{self.missing} missing, {self.unscored_counterparts} unscored; "
        )
        if self.dry_run:  # nothing scored: an unscored point may yet be left as the live task wrote it
            return head + f"would write at most {self.to_score} in {self.elapsed_s:.1f} s"
        return (
            head
            + f"wrote {self.written} ({self.scored} scored, {self.unscorable} unscorable)"
            + (f", left {self.left_as_live} unscored as live (same reason)" if self.left_as_live else "")
            + f" in {self.elapsed_s:.1f} s"
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
        s = self.settings
        if s.label_field and s.label_field in (s.score_field, s.flag_field):
            # The agent refuses this too: the written flag or score would overwrite the ground truth.
            raise TickguardError(
                f"label field {s.label_field!r} is also the {'score' if s.label_field == s.score_field else 'flag'} "
                "field: give the task (or TICKGUARD_UDF_FLAG_FIELD / _SCORE_FIELD) another name"
            )
        self.target = target or self.settings.scored_measurement
        self.rescore_unscored = rescore_unscored
        self.rescore_all = rescore_all
        self.dry_run = dry_run
        self.progress = progress
        self.influx = influx_client(self.settings)
        self.api = ScoringApi(self.settings, model=self.settings.model or None)
        self.skipped_points = 0  # points of the last plan in buckets that needed nothing
        # time -> [(point id, error)] of the unscored counterparts of the window being read (counterparts())
        self.live_errors: dict[int, list[tuple[str | None, str]]] = {}
        self.series_by: tuple[str, ...] = ()  # a windowed detector's series tags (set by run())
        # Only the points this condition selects, on both sides (a Kapacitor shard's: `"shard" = '1'`).
        self.where = f" AND ({self.settings.where})" if self.settings.where else ""

    # -- planning -------------------------------------------------------------------------------------
    def plan_windows(self, start_ns: int, end_ns: int) -> list[tuple[int, int, int]]:
        """Consecutive [from, to) windows with at most `max_window_points` source points each (empty ones skipped)."""
        span = max(1, end_ns - start_ns + 1)
        bucket = max(1_000_000_000, -(-span // MAX_BUCKETS))
        bucket = -(-bucket // 1_000_000_000) * 1_000_000_000  # whole seconds for GROUP BY time()
        source = quote_ident(self.settings.source_measurement)
        series = self.influx.query(
            f"SELECT count(*) FROM {source} WHERE {time_range(start_ns, end_ns, end_inclusive=True)}"
            f"{self.where} GROUP BY time({bucket // 1_000_000_000}s) fill(0)"
        )
        done = self._done_per_bucket(start_ns, end_ns, bucket)
        self.skipped_points = 0
        windows: list[tuple[int, int, int]] = []
        current_from, current_count = None, 0
        for _tags, row in iter_rows(series):
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
        field_name = self.settings.score_field if self.rescore_unscored else SCORED
        series = self.influx.query(
            f"SELECT count({quote_ident(field_name)}) FROM {quote_ident(self.target)} "
            f"WHERE {time_range(start_ns, end_ns, end_inclusive=True)}{self.where} "
            f"GROUP BY time({bucket // 1_000_000_000}s) fill(0)"
        )
        return {int(row["time"]): int(row.get("count") or 0) for _tags, row in iter_rows(series)}

    # -- matching -------------------------------------------------------------------------------------
    def counterparts(self, low: int, high: int) -> dict[int, list[tuple[str | None, bool]]]:
        """time -> [(txid, scored)] of the target measurement's points in [low, high)."""
        index: dict[int, list[tuple[str | None, bool]]] = {}
        self.live_errors = {}
        if self.rescore_all:
            return index
        score_field = self.settings.score_field
        # Without an id field, the timestamp alone matches a raw point to its scored one.
        names = (SCORED, score_field, ERROR, *((self.settings.id_field,) if self.settings.id_field else ()))
        columns = ", ".join(quote_ident(name) for name in dict.fromkeys(names))
        group = f" GROUP BY {', '.join(map(quote_ident, self.series_by))}" if self.series_by else ""
        rows = self.influx.rows(
            f"SELECT {columns} FROM {quote_ident(self.target)} WHERE {time_range(low, high)}{self.where}{group}"
        )
        for tags, row in rows:
            scored = row.get(SCORED) is True and row.get(self.settings.score_field) is not None
            point_id = self.point_id(tags, row)
            index.setdefault(int(row["time"]), []).append((point_id, scored))
            if not scored:
                error = row.get(ERROR)
                self.live_errors.setdefault(int(row["time"]), []).append(
                    (point_id, error if isinstance(error, str) else "")
                )
        return index

    def live_error(self, time_ns: int, point_id: str | None) -> str:
        """The error the unscored counterpart of a point carries (matched as `match` does; "" if none)."""
        for other_id, error in self.live_errors.get(time_ns, ()):
            if point_id is None or other_id is None or other_id == point_id:
                return error
        return ""

    def _detector_series_tags(self) -> tuple[str, ...]:
        """A dry run asks the scoring service nothing: a windowed detector's series tags then come from its
        detector file, when the settings name one (`--detector`)."""
        if not self.settings.detector:
            return ()
        from tickguard.detectors import load_detector

        try:
            spec = load_detector(self.settings.detector)
        except TickguardError as exc:  # counted by timestamp alone, as for a detector without windows
            log.warning("backfill --dry-run: detector %s unreadable (%s)", self.settings.detector, exc)
            return ()
        return spec.windows.group_by if spec.windows is not None else ()

    def point_id(self, tags: dict[str, str], row: dict[str, Any]) -> str | None:
        """What tells apart points of one timestamp: the id field, else a windowed detector's series key
        (points of several series share their timestamps), else nothing (the timestamp alone matches)."""
        if self.settings.id_field and row.get(self.settings.id_field) is not None:
            return row.get(self.settings.id_field)
        if self.series_by:  # also when the settings name an id field these points do not have (txid)
            return "\x00".join(tags.get(name, "") for name in self.series_by)
        return None

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
        features = self.feature_fields() if not self.dry_run else ()
        state = None if self.dry_run else window_features_for_card(self.api.card())
        windowed = state is not None
        self.series_by = state.spec.group_by if state is not None else self._detector_series_tags()
        windows = self.plan_windows(start_ns, end_ns)
        report.source_points += self.skipped_points
        report.already_scored += self.skipped_points
        for low, high, _count in windows:
            report.windows += 1
            index = self.counterparts(low, high)
            rows = self.influx.rows(
                f"SELECT {self.select_list(types)} FROM {quote_ident(source)} "
                f"WHERE {time_range(low, high)}{self.where} GROUP BY *"
            )
            # (tags, row, live error): None = no counterpart, else the unscored counterpart's error
            pending: list[tuple[dict[str, str], dict[str, Any], str | None]] = []
            every: list[tuple[dict[str, str], dict[str, Any]]] = []  # a windowed detector's state needs all
            for tags, row in rows:
                if windowed:
                    every.append((tags, row))
                report.source_points += 1
                point_id = self.point_id(tags, row)
                status = self.match(index.get(int(row["time"])), point_id)
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
                live = self.live_error(int(row["time"]), point_id) if status is False else None
                pending.append((tags, row, live))
            if pending and not self.dry_run:
                computed = self.window_rows(every, pending) if windowed else None
                self._score_and_write(pending, features, types, report, computed)
            if self.progress and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                report.elapsed_s = last_progress - started
                self.progress(report)
        report.elapsed_s = time.monotonic() - started
        return report

    def feature_fields(self) -> tuple[tuple[str, str], ...]:
        """(model feature, point field) pairs in the model's order: the task's `.fields()` mapping when it has
        one, else the served model's features read from fields of the same names (what the agent does)."""
        if self.settings.features is not None:
            return self.settings.features
        return tuple((name, name) for name in self.api.features())

    def window_rows(
        self,
        every: list[tuple[dict[str, str], dict[str, Any]]],
        pending: list[tuple[dict[str, str], dict[str, Any], str | None]],
    ) -> list[tuple[list[float] | None, str, dict[str, float]]]:
        """A windowed detector's model row (or why there is none) and extra fields of each pending point.

        The live agent's state is rebuilt as after a restart (tickguard.agent.windowing): each series from
        its last `capacity` points in InfluxDB before its first point here; then every point of this
        window, scored before or not, enters its series in time order, so a point of the gap gets the
        features it would have had live. A failed history read fails the backfill (rather than writing
        points as warming up that are not)."""
        from tickguard.agent.history import HistoryReader, SeriesSource

        card = self.api.card()
        state = window_features_for_card(card)
        columns = tuple(card["features"])
        pick = [state.columns.index(name) for name in columns]
        group_by = state.spec.group_by
        tag_filter = source_tag_filter(card)
        source = self.settings.source_measurement
        ordered = sorted(every, key=lambda item: int(item[1]["time"]))  # stable: series order on ties
        first: dict[tuple[str, ...], tuple[SeriesSource, int]] = {}
        for tags, row in ordered:
            key = tuple(tags.get(name, "") for name in group_by)
            if key not in first:
                tags_of_series = series_tags(group_by, key, tag_filter)
                first[key] = (
                    SeriesSource(self.settings.database, "", source, tags_of_series),
                    int(row["time"]),
                )
        _rebuilt, error = rebuild_from_history(state, HistoryReader(self.influx), first)
        if error:
            raise TickguardError(f"backfill cannot rebuild the window state from InfluxDB: {error}")
        outcome: dict[int, tuple[list[float] | None, str, dict[str, float]]] = {}
        for tags, row in ordered:
            # The agent's rule (and words) for the value fields, so a point without its value gets the
            # reason the live task gave it.
            values, problem = point_values(as_point(row, state.fields), state.fields)
            if values is None:
                outcome[id(row)] = (None, problem, {})
                continue
            result = state.push(tuple(tags.get(name, "") for name in group_by), int(row["time"]), values)
            if result.features is None:
                outcome[id(row)] = (None, result.status, {})
                continue
            extra: dict[str, float] = {}
            if result.expected_low is not None and result.expected_high is not None:
                extra = {EXPECTED_LOW: result.expected_low, EXPECTED_HIGH: result.expected_high}
            if self.settings.write_features:  # as the live task's .writeFeatures(TRUE)
                for position, name in enumerate(state.columns):
                    if name not in state.fields:
                        extra[name] = result.features[position]
            outcome[id(row)] = ([result.features[i] for i in pick], "", extra)
        return [outcome[id(row)] for _tags, row, _replaces in pending]

    @staticmethod
    def select_list(types: dict[str, str]) -> str:
        """The SELECT list reading every field as the type `field_types` chose (numbers first), so a field that
        once had another type in some shard is read as its numeric values rather than dropped."""
        return ", ".join(
            f"{quote_ident(name)}::{kind} AS {quote_ident(name)}" for name, kind in sorted(types.items())
        )

    def _score_and_write(
        self,
        pending: list[tuple[dict[str, str], dict[str, Any], str | None]],
        features: tuple[tuple[str, str], ...],
        types: dict[str, str],
        report: BackfillReport,
        computed: list[tuple[list[float] | None, str, dict[str, float]]] | None = None,
    ) -> None:
        """Score `pending` and write it; `computed`: a windowed detector's rows (see window_rows), aligned."""
        s = self.settings
        lean, keep = s.output == OUTPUT_LEAN, frozenset(s.keep_fields)
        columns = tuple(feature for feature, _field in features)
        point_fields = tuple(field_name for _feature, field_name in features)
        out_types = dict(types)
        rule = self.api.label_rule() if s.label_field else None
        lines: list[str] = []
        for offset in range(0, len(pending), s.batch_size):
            chunk = pending[offset : offset + s.batch_size]
            rows: list[list[float]] = []
            row_of: list[int] = []
            problems: list[str] = []
            extras: list[dict[str, float]] = []
            for position_in_chunk, (_tags, row, _live) in enumerate(chunk):
                if computed is not None:
                    values, problem, extra = computed[offset + position_in_chunk]
                else:
                    (values, problem), extra = feature_row(row, point_fields), {}
                row_of.append(len(rows) if values is not None else -1)
                problems.append(problem)
                extras.append(extra)
                if values is not None:
                    rows.append(values)
            result = self.api.score(rows, columns) if rows else None
            if result is not None:
                report.model_version = result.model_version
            for (tags, row, live_error), position, problem, extra in zip(
                chunk, row_of, problems, extras, strict=True
            ):
                if (position < 0 or result is None) and same_reason(live_error, problem):
                    # The live task already wrote this point unscored for this reason (see same_reason):
                    # a series that starts fresh is warming up for the backfill too, and its record stays
                    # byte for byte as the live task wrote it; rewriting it would make it differ.
                    report.left_as_live += 1
                    continue
                fields: dict[str, Any] = {}
                for name, value in row.items():
                    if name == "time" or (lean and types.get(name) in _NUMERIC and name not in keep):
                        continue  # lean output, like the agent's: no numeric inputs beyond `keep`
                    fields[name] = value
                if position >= 0 and result is not None:
                    score = result.scores[position]
                    # The task's .threshold() decides over the service's, as in the agent (pipeline.render).
                    threshold = result.threshold if s.threshold is None else s.threshold
                    flagged = result.flags[position] if s.threshold is None else score >= s.threshold
                    fields[s.score_field] = float(score)
                    fields[s.flag_field] = bool(flagged)
                    fields[SCORED] = True
                    fields[MODEL_VERSION] = result.model_version
                    fields[THRESHOLD] = float(threshold)
                    label = label_of(row.get(s.label_field), rule) if s.label_field else None
                    if label is not None:
                        hits = (label and flagged, (not label) and flagged, label and not flagged)
                        hits += ((not label) and not flagged,)
                        for name, hit in zip(CONFUSION, hits, strict=True):  # tp, fp, fn, tn
                            fields[name] = int(hit)
                    fields.update(extra)  # a windowed detector's expected range (and columns)
                    if live_error is not None:
                        fields[ERROR] = ""  # clear the reason the live pipeline left it unscored
                    report.scored += 1
                else:
                    fields[SCORED] = False
                    fields[ERROR] = BACKFILL_PREFIX + problem
                    report.unscorable += 1
                fields[BACKFILLED_FIELD] = True
                lines.append(encode_line(self.target, tags, fields, int(row["time"]), out_types))
            if len(lines) >= s.write_batch:
                report.written += self.influx.write(lines, batch_size=s.write_batch)
                lines = []
        if lines:
            report.written += self.influx.write(lines, batch_size=s.write_batch)


def backfill(
    start_ns: int, end_ns: int, settings: BackfillSettings | None = None, **options: Any
) -> BackfillReport:
    """Backfill [start_ns, end_ns] (see `Backfiller` for the options)."""
    return Backfiller(settings, **options).run(start_ns, end_ns)


# ---- after a watchdog heal --------------------------------------------------------------------------


def last_scored_before(settings: BackfillSettings, before_ns: int) -> int | None:
    """Timestamp of the newest point of the scored measurement at or before `before_ns` (None if none)."""
    series = influx_client(settings).query(
        f"SELECT last({quote_ident(SCORED)}) FROM {quote_ident(settings.scored_measurement)} "
        f"WHERE time <= {int(before_ns)}{f' AND ({settings.where})' if settings.where else ''}"
    )
    for _tags, row in iter_rows(series):
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


def settings_for_heal(
    settings: BackfillSettings, task_id: str, udf_names: tuple[str, ...] | None = None
) -> BackfillSettings:
    """The settings to backfill a healed task with: as that task writes (read from Kapacitor), or the
    environment's when Kapacitor is unknown or the task cannot be read (logged)."""
    from tickguard.ops.livetask import DEFAULT_UDF_NAMES, settings_for_task

    if not settings.kapacitor_url:
        return settings
    try:
        return settings_for_task(settings, task_id, udf_names or DEFAULT_UDF_NAMES)
    except TickguardError as exc:
        log.warning("backfill of task %s uses the environment's settings: %s", task_id, exc)
        return settings


def heal_hook(
    settings: BackfillSettings | None = None,
    *,
    kapacitor_url: str = "",
    udf_names: tuple[str, ...] | None = None,
    settle_s: float = 5.0,
    lookback_s: float = 60.0,
    end_margin_s: float = 2.0,
    asynchronous: bool = True,
    on_done: Callable[[BackfillReport], None] | None = None,
) -> Callable[[Any], None]:
    """A callback for `Watchdog.add_callback`: backfill the outage of each healed task.

    It waits `settle_s` after the heal (points scored just before or after it are still in influxDBOut's
    buffer), then backfills `heal_window(...)` with the healed task's own options, source and output, read
    from Kapacitor (`kapacitor_url`, else TICKGUARD_KAPACITOR_URL). Runs on its own thread unless `asynchronous=False`, so the
    watchdog keeps polling; backfills never overlap. Failures are logged, never raised into the watchdog.
    """
    lock = threading.Lock()

    def run(event: Any) -> None:
        resolved = settings or backfill_settings()
        if kapacitor_url:
            resolved = replace(resolved, kapacitor_url=kapacitor_url.rstrip("/"))
        resolved = settings_for_heal(resolved, event.task_id, udf_names)
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
