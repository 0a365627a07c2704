"""Replay a detector's holdout rows into InfluxDB as if they were happening now.

Each replayed row becomes one point of the detector's source measurement (fraud: `transactions` in
database `fraud`): its feature fields (fraud: Time — the data set's seconds-since-first-row, which the
model uses — V1..V28, Amount), the ground-truth label as the data holds it (Class 0/1; a string label
stays a string, so the agent's positive values decide), the id field naming the source row (fraud's
txid) and the display fields that are not features; one low-cardinality tag (`source`) plus the
detector's tag filter, if it has one. Timestamps are the wall clock at send time (also for shuttle,
whose data has none), made strictly increasing in nanoseconds because many rows are sent within the
same microsecond and InfluxDB would merge points that share series and timestamp.

Writes go through tickguard.influx (line protocol and HTTP, like every other InfluxDB access of the
project) in batches. A batch that fails because InfluxDB is unreachable or overloaded is retried with
exponential backoff; after `max_retries` it is counted as failed and the replay goes on. Bad credentials
or a rejected batch (4xx) stop the replay with a clear error, since every later batch would fail the same
way.

For a sharded deployment (several Kapacitors, tickguard.stack.sharding), `ReplayPlan.shards = N` adds the
`shard` tag, crc32 of the point's id (or series key) modulo N; 0, the default, writes no shard tag.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tickguard.data import FEATURES, TARGET, load_dataset, time_split
from tickguard.detectors import DetectorSpec, load_detector
from tickguard.errors import TickguardError
from tickguard.influx import (
    InfluxClient,
    InfluxError,
    InfluxRejected,
    InfluxUnavailable,
    call_with_retries,
    escape_key,
    escape_measurement,
    escape_string,
    format_field,
)
from tickguard.stack.config import InfluxSettings
from tickguard.stack.sharding import SHARD_KEYS, SHARD_TAG, check_shards, series_key, shard_of

log = logging.getLogger(__name__)

FEATURE_FIELDS: tuple[str, ...] = FEATURES  # the fraud detector's (the default replay format's)
LABEL_FIELD = TARGET
TXID_FIELD = "txid"
SOURCE_TAG = "source"
FRAUD = "fraud"
PROGRESS_EVERY_S = 2.0
MAX_BACKOFF_S = 10.0


@dataclass
class ReplayPlan:
    """What to send: how many points, how fast, in which order."""

    rate: float = 50.0  # points per second; 0 = as fast as InfluxDB accepts
    count: int | None = None  # stop after this many points (None = until the rows or the duration end)
    duration_s: float | None = None  # stop after this many seconds
    shuffle: bool = False
    seed: int = 0
    loop: bool = False  # start over when the rows run out
    batch_size: int = 500
    max_retries: int = 8
    source_tag: str = "holdout-replay"
    shards: int = 0  # > 0: write the `shard` tag for that many Kapacitor shards (tickguard.stack.sharding)
    shard_key: str = (
        "auto"  # what the shard is a hash of: "id", "series" or "auto" (the id when there is one)
    )


@dataclass
class ReplayReport:
    """What happened: points written, retried (in retried batches) and finally failed."""

    written: int = 0
    retried: int = 0
    failed: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    first_time_ns: int | None = None
    last_time_ns: int | None = None
    txids: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Achieved write rate in points per second."""
        return self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """One line for logs and the command's output."""
        return (
            f"written {self.written}, retried {self.retried}, failed {self.failed} points "
            f"in {self.batches} batches, {self.elapsed_s:.1f} s ({self.rate:.1f} points/s)"
        )


@dataclass(frozen=True)
class ReplayFormat:
    """What a replayed row becomes: a point of `measurement` with these fields and tags."""

    measurement: str
    feature_fields: tuple[str, ...] = FEATURE_FIELDS  # written as floats
    label_field: str | None = LABEL_FIELD  # written as the data holds it (number, string or boolean)
    id_field: str | None = TXID_FIELD  # a string naming the source row
    extra_fields: tuple[str, ...] = ()  # display fields that are not features, written as they are
    tags: tuple[tuple[str, str], ...] = ()  # the detector's tag filter (its task reads only these points)

    @classmethod
    def of(cls, spec: DetectorSpec, measurement: str | None = None) -> ReplayFormat:
        """The format of a detector's source points (`measurement` overrides the spec's)."""
        label = spec.label.field if spec.label is not None else None
        extras = tuple(
            name for name in spec.output.display_fields if name not in spec.feature_fields and name != label
        )
        return cls(
            measurement=measurement or spec.source.measurement,
            feature_fields=spec.feature_fields,
            label_field=label,
            id_field=spec.output.id_field,
            extra_fields=extras,
            tags=tuple(sorted(spec.source.tags.items())),
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns a row must have (the id is made from the row when the data has none)."""
        return (*self.feature_fields, *([self.label_field] if self.label_field else []), *self.extra_fields)


def check_rows(rows: pd.DataFrame, fmt: ReplayFormat | None = None) -> None:
    """Refuse rows that lack a needed column or hold a non-finite value, naming the column and row."""
    fmt = fmt or ReplayFormat(measurement="transactions")
    missing = [name for name in fmt.columns if name not in rows.columns]
    if missing:
        raise TickguardError(f"holdout rows lack column(s) {', '.join(missing)}")
    values = rows[list(fmt.feature_fields)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise TickguardError(
            f"holdout row {rows.index[row]}: field {fmt.feature_fields[col]} is not a finite number"
        )


class LineEncoder:
    """Turns rows into InfluxDB line protocol with strictly increasing nanosecond timestamps."""

    def __init__(
        self,
        measurement: str,
        source_tag: str,
        fmt: ReplayFormat | None = None,
        shards: int = 0,
        shard_key: str = "auto",
    ):
        fmt = fmt or ReplayFormat(measurement=measurement)
        tags = dict([(SOURCE_TAG, source_tag), *fmt.tags])  # the detector's filter wins over `source`
        self.prefix = self._prefix(measurement, tags)
        # Sharded: one prefix per shard value; the series key (without `shard`) or the id picks one.
        if shards:
            check_shards(shards)
            if shard_key not in SHARD_KEYS:
                raise TickguardError(f"shard_key must be one of {', '.join(SHARD_KEYS)}, got {shard_key!r}")
        self.shards = shards
        self.shard_by_id = shard_key == "id" or (shard_key == "auto" and fmt.id_field is not None)
        self.series_shard = shard_of(series_key(measurement, tags), shards) if shards else 0
        self.shard_prefixes = [self._prefix(measurement, {**tags, SHARD_TAG: str(i)}) for i in range(shards)]
        # Field keys escaped once: every line repeats them.
        self.keys = [escape_key(name) for name in fmt.feature_fields]
        self.label_key = escape_key(fmt.label_field) if fmt.label_field else None
        self.txid_key = escape_key(fmt.id_field) if fmt.id_field else None
        self.extra_keys = [escape_key(name) for name in fmt.extra_fields]
        self.last_ns = 0

    @staticmethod
    def _prefix(measurement: str, tags: dict[str, str]) -> str:
        return (
            escape_measurement(measurement)
            + "".join(
                f",{escape_key(key, 'tag key')}={escape_key(value, 'tag value')}"
                for key, value in sorted(tags.items())
            )
            + " "
        )

    def prefix_for(self, txid: str) -> str:
        """The measurement and tags of a point with this id (its shard's, when sharded)."""
        if not self.shards:
            return self.prefix
        shard = shard_of(txid, self.shards) if self.shard_by_id else self.series_shard
        return self.shard_prefixes[shard]

    def next_timestamp(self) -> int:
        """Now in nanoseconds, bumped past the previous timestamp when the clock has not moved on."""
        now = time.time_ns()
        self.last_ns = now if now > self.last_ns else self.last_ns + 1
        return self.last_ns

    def encode(self, features: np.ndarray, label: object, txid: str, extras: tuple = ()) -> tuple[str, int]:
        """One line of line protocol and its timestamp (`extras`: values of the format's extra fields)."""
        fields = ",".join(f"{key}={value!r}" for key, value in zip(self.keys, features.tolist(), strict=True))
        if self.label_key is not None:
            text = f"{int(label)}i" if type(label) is int else format_field(label)
            if text is not None:  # a missing label (NaN, None) leaves the field out
                fields += f",{self.label_key}={text}"
        for key, value in zip(self.extra_keys, extras, strict=True):
            text = format_field(value)
            if text is not None:
                fields += f",{key}={text}"
        if self.txid_key is not None:
            fields += f',{self.txid_key}="{escape_string(txid)}"'
        ts = self.next_timestamp()
        return f"{self.prefix_for(txid)}{fields} {ts}", ts


def txid_for(index_value: object) -> str:
    """The txid of a row: its position in the original data file, so a point can be traced back."""
    return f"tx{int(index_value):06d}" if isinstance(index_value, int | np.integer) else str(index_value)


def row_order(n_rows: int, plan: ReplayPlan) -> Iterator[int]:
    """Row positions in file order or shuffled, once or forever when looping (a new shuffle per pass)."""
    rng = np.random.default_rng(plan.seed)
    while True:
        order = rng.permutation(n_rows) if plan.shuffle else np.arange(n_rows)
        yield from (int(i) for i in order)
        if not plan.loop:
            return


class InfluxWriter:
    """Writes one line-protocol batch per call through tickguard.influx, raising InfluxUnavailable (worth a
    retry) or InfluxRejected (not); the replay loop retries itself, so it can count and report every retry."""

    def __init__(self, settings: InfluxSettings, timeout_ms: int = 10_000):
        self.client = InfluxClient.from_settings(settings, timeout_s=timeout_ms / 1000, retries=0)

    def __call__(self, lines: list[str]) -> None:
        """Write one batch (nanosecond precision), one attempt."""
        self.client.write(lines, batch_size=max(1, len(lines)), retries=0)

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self.client.close()


def replay(
    rows: pd.DataFrame,
    plan: ReplayPlan,
    write: Callable[[list[str]], None],
    measurement: str | None = None,
    progress: Callable[[ReplayReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    detector: DetectorSpec | str | None = None,
) -> ReplayReport:
    """Send rows as points of `detector`'s source measurement (default fraud; `measurement` overrides it)
    through `write`, paced at `plan.rate`, and report what was written."""
    spec = detector if isinstance(detector, DetectorSpec) else load_detector(detector or FRAUD)
    fmt = ReplayFormat.of(spec, measurement)
    if rows.empty:
        raise TickguardError("no rows to replay (the holdout set is empty)")
    check_rows(rows, fmt)
    if plan.rate < 0:
        raise TickguardError(f"rate must be >= 0 points/s, got {plan.rate}")
    if plan.count is not None and plan.count <= 0:
        raise TickguardError(f"count must be positive, got {plan.count}")
    if plan.loop and plan.count is None and plan.duration_s is None:
        raise TickguardError("--loop needs --count or --duration, otherwise it never ends")
    features = rows[list(fmt.feature_fields)].to_numpy(dtype=np.float64)
    # Python values (tolist): numpy scalars are not ints/strs to the line-protocol encoder.
    labels = rows[fmt.label_field].tolist() if fmt.label_field else [None] * len(rows)
    if fmt.id_field and fmt.id_field in rows.columns:
        txids = [str(value) for value in rows[fmt.id_field].tolist()]
    else:
        txids = [txid_for(i) for i in rows.index]
    extras = list(zip(*(rows[name].tolist() for name in fmt.extra_fields), strict=True)) or [()] * len(rows)
    encoder = LineEncoder(fmt.measurement, plan.source_tag, fmt, plan.shards, plan.shard_key)
    order = row_order(len(rows), plan)
    report = ReplayReport()
    started = time.monotonic()
    last_progress = started
    deadline = started + plan.duration_s if plan.duration_s is not None else math.inf
    limit = plan.count if plan.count is not None else math.inf
    sent = 0
    exhausted = False
    while not exhausted and sent < limit:
        now = time.monotonic()
        if now >= deadline:
            break
        if plan.rate > 0:
            due = math.floor((now - started) * plan.rate) + 1 - sent
            if due <= 0:
                sleep(min((sent + 1) / plan.rate - (now - started), deadline - now))
                continue
        else:
            due = plan.batch_size
        size = int(min(due, plan.batch_size, limit - sent))
        lines: list[str] = []
        batch_txids: list[str] = []
        for _ in range(size):
            position = next(order, None)
            if position is None:
                exhausted = True
                break
            line, ts = encoder.encode(features[position], labels[position], txids[position], extras[position])
            lines.append(line)
            batch_txids.append(txids[position])
            if report.first_time_ns is None:
                report.first_time_ns = ts
            report.last_time_ns = ts
        if not lines:
            break
        sent += len(lines)
        if _send_with_retries(lines, write, plan.max_retries, report, sleep):
            report.written += len(lines)
            report.txids.extend(batch_txids)
        else:
            report.failed += len(lines)
        report.batches += 1
        report.elapsed_s = time.monotonic() - started
        if progress and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
            last_progress = time.monotonic()
            progress(report)
    report.elapsed_s = time.monotonic() - started
    return report


def _send_with_retries(
    lines: list[str],
    write: Callable[[list[str]], None],
    max_retries: int,
    report: ReplayReport,
    sleep: Callable[[float], None],
) -> bool:
    """Write a batch, retrying transient failures with backoff; False once the retries are used up."""

    def retrying(attempt: int, exc: InfluxError, backoff: float) -> None:
        report.retried += len(lines)
        log.warning("write failed (%s); retry %d/%d in %.2f s", exc, attempt + 1, max_retries, backoff)

    try:
        call_with_retries(
            lambda: write(lines), max_retries, sleep=sleep, on_retry=retrying, cap_s=MAX_BACKOFF_S
        )
        return True
    except InfluxRejected as exc:
        raise TickguardError(f"InfluxDB rejected a batch of {len(lines)} points: {exc}") from exc
    except InfluxUnavailable as exc:
        log.error("batch of %d points failed after %d retries: %s", len(lines), max_retries, exc)
        return False


def log_progress(report: ReplayReport) -> None:
    """Progress line for long replays."""
    log.info("generate: %s", report.summary())


def load_holdout(path: str | None = None, detector: DetectorSpec | str | None = None) -> pd.DataFrame:
    """A detector's time-ordered holdout rows (last 20% of its data; default fraud), indexed by their row.

    Fraud reads the credit-card set's cached arrays. Other detectors read their CSV through
    load_detector_frame with the label (and display fields) kept as the data holds them, not mapped to
    0/1: the agent, like training, decides by the detector's positive values (string labels too).
    """
    spec = detector if isinstance(detector, DetectorSpec) else load_detector(detector or FRAUD)
    if spec.name == FRAUD:
        _, holdout = time_split(load_dataset(path))
        return holdout
    from dataclasses import replace

    from tickguard.data import load_detector_frame

    raw = spec
    if spec.label is not None:
        # As a display field the label is read as text and left as it is (load_detector_frame maps a label).
        output = replace(spec.output, display_fields=(*spec.output.display_fields, spec.label.field))
        raw = replace(spec, label=None, output=output)
    frame = load_detector_frame(raw, path)
    for name in dict.fromkeys(raw.output.display_fields):
        if name in frame.columns and name not in spec.feature_fields:
            frame[name] = [_typed(value, spec, name) for value in frame[name].tolist()]
    _, holdout = time_split(frame)
    return holdout


def _typed(text: object, spec: DetectorSpec, name: str) -> object:
    """A label or display value read as text, typed as the data means it: the label like the detector's
    positive values (numbers, booleans or strings), a display field as a number when it reads as one."""
    if not isinstance(text, str):
        return text
    stripped = text.strip()
    positives = spec.label.positive if spec.label is not None and name == spec.label.field else None
    if positives is not None and all(isinstance(v, bool) for v in positives):
        return stripped.lower() == "true" if stripped.lower() in ("true", "false") else text
    if positives is not None and any(isinstance(v, str) for v in positives):
        return text
    try:
        number = float(stripped)
    except ValueError:
        return text
    return (
        int(number) if number.is_integer() and "." not in stripped and "e" not in stripped.lower() else number
    )
