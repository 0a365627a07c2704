"""Replay holdout transactions into InfluxDB as if they were happening now.

Each replayed row becomes one point of measurement `transactions` in database `fraud`: the model's
input fields (Time — the data set's seconds-since-first-row, which the model uses — V1..V28, Amount),
the ground-truth label Class and a txid naming the source row; one low-cardinality tag (`source`). Timestamps are the wall clock at send time, made strictly increasing in nanoseconds
because many rows are sent within the same microsecond and InfluxDB would merge points that share
series and timestamp.

Writes go through tickguard.influx (line protocol and HTTP, like every other InfluxDB access of the
project) in batches. A batch that fails because InfluxDB is unreachable or overloaded is retried with
exponential backoff; after `max_retries` it is counted as failed and the replay goes on. Bad credentials
or a rejected batch (4xx) stop the replay with a clear error, since every later batch would fail the same
way.
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
)
from tickguard.stack.config import InfluxSettings

log = logging.getLogger(__name__)

FEATURE_FIELDS: tuple[str, ...] = FEATURES
LABEL_FIELD = TARGET
TXID_FIELD = "txid"
SOURCE_TAG = "source"
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


def check_rows(rows: pd.DataFrame) -> None:
    """Refuse rows that lack a needed column or hold a non-finite value, naming the column and row."""
    missing = [name for name in (*FEATURE_FIELDS, LABEL_FIELD) if name not in rows.columns]
    if missing:
        raise TickguardError(f"holdout rows lack column(s) {', '.join(missing)}")
    values = rows[list(FEATURE_FIELDS)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise TickguardError(
            f"holdout row {rows.index[row]}: field {FEATURE_FIELDS[col]} is not a finite number"
        )


class LineEncoder:
    """Turns rows into InfluxDB line protocol with strictly increasing nanosecond timestamps."""

    def __init__(self, measurement: str, source_tag: str):
        self.prefix = f"{escape_measurement(measurement)},{SOURCE_TAG}={escape_key(source_tag, 'tag value')} "
        # Field keys escaped once: every line repeats them.
        self.keys = [escape_key(name) for name in FEATURE_FIELDS]
        self.label_key = escape_key(LABEL_FIELD)
        self.txid_key = escape_key(TXID_FIELD)
        self.last_ns = 0

    def next_timestamp(self) -> int:
        """Now in nanoseconds, bumped past the previous timestamp when the clock has not moved on."""
        now = time.time_ns()
        self.last_ns = now if now > self.last_ns else self.last_ns + 1
        return self.last_ns

    def encode(self, features: np.ndarray, label: int, txid: str) -> tuple[str, int]:
        """One line of line protocol and its timestamp."""
        fields = ",".join(f"{key}={value!r}" for key, value in zip(self.keys, features.tolist(), strict=True))
        ts = self.next_timestamp()
        line = f'{self.prefix}{fields},{self.label_key}={int(label)}i,{self.txid_key}="{escape_string(txid)}" {ts}'
        return line, ts


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
    measurement: str = "transactions",
    progress: Callable[[ReplayReport], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Send rows as points through `write`, paced at `plan.rate`, and report what was written."""
    if rows.empty:
        raise TickguardError("no rows to replay (the holdout set is empty)")
    check_rows(rows)
    if plan.rate < 0:
        raise TickguardError(f"rate must be >= 0 points/s, got {plan.rate}")
    if plan.count is not None and plan.count <= 0:
        raise TickguardError(f"count must be positive, got {plan.count}")
    if plan.loop and plan.count is None and plan.duration_s is None:
        raise TickguardError("--loop needs --count or --duration, otherwise it never ends")
    features = rows[list(FEATURE_FIELDS)].to_numpy(dtype=np.float64)
    labels = rows[LABEL_FIELD].to_numpy()
    txids = [txid_for(i) for i in rows.index]
    encoder = LineEncoder(measurement, plan.source_tag)
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
            line, ts = encoder.encode(features[position], labels[position], txids[position])
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


def load_holdout(path: str | None = None) -> pd.DataFrame:
    """The time-ordered holdout rows (last 20% of the data file), indexed by their row in the file."""
    _, holdout = time_split(load_dataset(path))
    return holdout
