"""Measuring the live pipeline from outside: when each scored point is written, and how much memory it takes.

`WriteProbe` is an HTTP endpoint that InfluxDB forwards every write of a database to (an InfluxDB
subscription, the mechanism Kapacitor itself uses). InfluxDB forwards a write as it accepts it, so the
arrival time of a `transactions_scored` line here is when that scored point was written; its timestamp
is the raw point's, set by the writer at send time. Arrival minus timestamp is the end-to-end latency of
that point, measured for every point, without polling InfluxDB. The probe also counts points marked
unscored (`scored=false`) and backfilled ones as they are written.

`RssSampler` samples the resident memory of process trees (a gunicorn master and its workers) from /proc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from tickguard.influx import InfluxClient, escape_measurement, quote_ident, quote_string

log = logging.getLogger(__name__)


@dataclass
class _Arrival:
    received_ns: int
    timestamps: np.ndarray
    unscored: int
    backfilled: int


class WriteProbe:
    """Receives InfluxDB's subscription writes and records, per scored point, its timestamp and arrival."""

    def __init__(self, measurement: str = "transactions_scored", host: str = "127.0.0.1"):
        self.measurement = measurement
        # Lines carry the measurement as line protocol escapes it.
        prefix = re.escape(escape_measurement(measurement).encode())
        self._line = re.compile(rb"^" + prefix + rb"[, ].* (\d+)$", re.M)
        self._unscored = re.compile(rb"^" + prefix + rb"[, ].*[ ,]scored=false[, ]", re.M)
        self._backfilled = re.compile(rb"^" + prefix + rb"[, ].*[ ,]backfilled=true", re.M)
        self._needle = escape_measurement(measurement).encode()
        self.host = host
        self._lock = threading.Lock()
        self._arrivals: list[_Arrival] = []
        self.count = 0  # scored-measurement points received so far
        self.unscored = 0
        self.backfilled = 0
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._subscription: tuple[str, str, str, str, tuple[str, str] | None] | None = None

    # -- HTTP endpoint ----------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        probe = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                probe.feed(body, time.time_ns())
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        return Handler

    def start(self) -> WriteProbe:
        """Listen on a free loopback port (serving on a daemon thread)."""
        self._server = ThreadingHTTPServer((self.host, 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="write-probe", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """Where InfluxDB sends the writes."""
        assert self._server is not None, "start() first"
        return f"http://{self.host}:{self._server.server_port}"

    def feed(self, body: bytes, received_ns: int) -> None:
        """Record the scored-measurement lines of one forwarded write."""
        with self._lock:
            self.requests += 1
        if self._needle not in body:
            return
        stamps = self._line.findall(body)
        if not stamps:
            return
        timestamps = np.array(stamps, dtype=np.int64)
        unscored = len(self._unscored.findall(body)) if b"scored=false" in body else 0
        backfilled = len(self._backfilled.findall(body)) if b"backfilled=true" in body else 0
        with self._lock:
            self._arrivals.append(_Arrival(received_ns, timestamps, unscored, backfilled))
            self.count += len(timestamps)
            self.unscored += unscored
            self.backfilled += backfilled

    # -- subscription -----------------------------------------------------------------------------------
    def subscribe(
        self,
        influx_url: str,
        database: str,
        retention_policy: str = "autogen",
        auth: tuple[str, str] | None = None,
    ) -> None:
        """CREATE SUBSCRIPTION on `database` sending every write here."""
        name = f"tickguard_probe_{uuid.uuid4().hex[:8]}"
        statement = (
            f"CREATE SUBSCRIPTION {quote_ident(name)} ON {quote_ident(database)}.{quote_ident(retention_policy)} "
            f"DESTINATIONS ALL {quote_string(self.url)}"
        )
        _influx_execute(influx_url, statement, auth)
        self._subscription = (influx_url, database, retention_policy, name, auth)

    def unsubscribe(self) -> None:
        """DROP the subscription (errors ignored: InfluxDB may be gone)."""
        if self._subscription is None:
            return
        influx_url, database, retention_policy, name, auth = self._subscription
        with contextlib.suppress(Exception):
            _influx_execute(
                influx_url,
                f"DROP SUBSCRIPTION {quote_ident(name)} ON {quote_ident(database)}.{quote_ident(retention_policy)}",
                auth,
            )
        self._subscription = None

    def stop(self) -> None:
        """Drop the subscription and stop listening."""
        self.unsubscribe()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- results ----------------------------------------------------------------------------------------
    def mark(self) -> int:
        """Index of the next arrival, to look only at what arrives after this call."""
        with self._lock:
            return len(self._arrivals)

    def arrivals(self, since: int = 0) -> list[_Arrival]:
        """Arrivals recorded from index `since` on."""
        with self._lock:
            return list(self._arrivals[since:])

    def latencies_ms(
        self, since: int = 0, min_ts: int | None = None, max_ts: int | None = None, live_only: bool = True
    ) -> np.ndarray:
        """Arrival minus timestamp (ms) of every scored point received since `since`, optionally by timestamp range.

        Writes of a backfill (their points carry backfilled=true) are left out unless `live_only` is False.
        """
        parts = []
        for arrival in self.arrivals(since):
            if live_only and arrival.backfilled:
                continue
            stamps = arrival.timestamps
            if min_ts is not None or max_ts is not None:
                keep = np.ones(stamps.shape, dtype=bool)
                if min_ts is not None:
                    keep &= stamps >= min_ts
                if max_ts is not None:
                    keep &= stamps <= max_ts
                stamps = stamps[keep]
            if stamps.size:
                parts.append((arrival.received_ns - stamps) / 1e6)
        return np.concatenate(parts) if parts else np.empty(0)

    def count_between(self, start_ns: int, end_ns: int, since: int = 0) -> int:
        """Scored-measurement points that arrived in [start_ns, end_ns) (arrival time)."""
        return int(sum(a.timestamps.size for a in self.arrivals(since) if start_ns <= a.received_ns < end_ns))

    def wait_for(self, count: int, timeout_s: float, idle_s: float | None = None) -> bool:
        """Wait until `count` points have arrived; give up after `timeout_s`, or after `idle_s` without progress."""
        deadline = time.monotonic() + timeout_s
        last, last_change = self.count, time.monotonic()
        while self.count < count:
            now = time.monotonic()
            if now > deadline:
                return False
            if self.count != last:
                last, last_change = self.count, now
            elif idle_s is not None and now - last_change > idle_s:
                return False
            time.sleep(0.02)
        return True


def _influx_execute(influx_url: str, statement: str, auth: tuple[str, str] | None) -> None:
    username, password = auth or ("", "")
    with InfluxClient(influx_url, username=username, password=password, timeout_s=10, retries=1) as client:
        client.execute(statement)


def percentiles(values: np.ndarray, points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    """{'p50': ..., 'p95': ..., 'p99': ..., 'max': ...} rounded to 0.1 ms (None when there are no values)."""
    if values.size == 0:
        return {**{f"p{p}": None for p in points}, "max": None}
    found = np.percentile(values, points)
    result: dict[str, float | None] = {
        f"p{p}": round(float(v), 1) for p, v in zip(points, found, strict=True)
    }
    result["max"] = round(float(values.max()), 1)
    return result


# ---- memory -----------------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def tree_pids(pid: int) -> list[int]:
    """The process and all its descendants."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(_children(current))
    return found


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of one process in KiB; (0, 0) if it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


class RssSampler:
    """Samples the summed RSS of named process trees every `interval_s`; keeps the peak of each."""

    def __init__(self, roots: dict[str, int], interval_s: float = 0.25):
        self.roots = dict(roots)
        self.interval_s = interval_s
        self.peak_kb: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_hwm_kb: dict[str, int] = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        """One sample of every tree."""
        for name, root in self.roots.items():
            total = hwm_total = 0
            for pid in tree_pids(root):
                rss, hwm = rss_kb(pid)
                total += rss
                hwm_total += hwm
            self.peak_kb[name] = max(self.peak_kb[name], total)
            self.peak_hwm_kb[name] = max(self.peak_hwm_kb[name], hwm_total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> RssSampler:
        """Sample on a daemon thread until stop()."""
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling; peak MiB per tree."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()
        return {name: round(kb / 1024, 1) for name, kb in self.peak_kb.items()}


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_seconds(pid: int, tree: bool = True) -> float:
    """User + system CPU seconds used so far by a process (and, with `tree`, its live descendants)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for member in tree_pids(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
    return total
