"""Agent metrics: Prometheus counters on a small /metrics endpoint, and a periodic log line.

Counters are bumped once per batch or per received chunk, never per point, to keep the hot path cheap.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from tickguard.agent.scoring import BREAKER_STATES

log = logging.getLogger(__name__)


class AgentMetrics:
    """The agent's counters and gauges, in their own registry (tests can create several agents)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.points_in = Counter("tickguard_udf_points_in", "Points received from Kapacitor.", registry=r)
        self.points_out = Counter("tickguard_udf_points_out", "Points sent back to Kapacitor.", registry=r)
        self.points_scored = Counter(
            "tickguard_udf_points_scored", "Points sent back with a score.", registry=r
        )
        self.points_unscored = Counter(
            "tickguard_udf_points_unscored",
            "Points sent back without a score (see their error field).",
            registry=r,
        )
        self.batches = Counter(
            "tickguard_udf_batches", "Scoring requests sent (one per micro-batch).", registry=r
        )
        self.errors = Counter("tickguard_udf_errors", "Errors, by kind.", ["kind"], registry=r)
        self.breaker_state = Gauge(
            "tickguard_udf_breaker_state",
            "1 for the circuit breaker's current state, per service URL.",
            ["url", "state"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "tickguard_udf_queue_depth", "Points waiting to be scored, all connections.", registry=r
        )
        self.connections = Gauge("tickguard_udf_connections", "Open Kapacitor connections.", registry=r)
        self.window_series = Gauge(
            "tickguard_udf_window_series",
            "Series whose window state the agent holds (windowed detectors), all connections.",
            registry=r,
        )
        self.tasks_healed = Counter(
            "tickguard_udf_tasks_healed", "Tasks re-enabled by the watchdog.", registry=r
        )
        self._server = None
        self._log_stop = threading.Event()

    def set_breaker(self, url: str, state: str) -> None:
        """Record the breaker state of one service URL."""
        for candidate in BREAKER_STATES:
            self.breaker_state.labels(url=url, state=candidate).set(1 if candidate == state else 0)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = server.server_address[1]
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def snapshot(self) -> dict[str, float]:
        """Current values, for the log line and tests."""
        values: dict[str, float] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                key = sample.name + (
                    "{" + ",".join(f"{k}={v}" for k, v in sample.labels.items()) + "}"
                    if sample.labels
                    else ""
                )
                values[key] = sample.value
        return values

    def start_log_thread(self, interval_s: float) -> None:
        """Log a one-line summary every `interval_s` seconds (0 = never)."""
        if interval_s <= 0:
            return

        def run() -> None:
            while not self._log_stop.wait(interval_s):
                v = self.snapshot()
                log.info(
                    "points in=%d out=%d scored=%d unscored=%d batches=%d queue=%d connections=%d",
                    v.get("tickguard_udf_points_in_total", 0),
                    v.get("tickguard_udf_points_out_total", 0),
                    v.get("tickguard_udf_points_scored_total", 0),
                    v.get("tickguard_udf_points_unscored_total", 0),
                    v.get("tickguard_udf_batches_total", 0),
                    v.get("tickguard_udf_queue_depth", 0),
                    v.get("tickguard_udf_connections", 0),
                )

        threading.Thread(target=run, name="udf-metrics-log", daemon=True).start()

    def stop(self) -> None:
        """Stop the log thread and the HTTP endpoint."""
        self._log_stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
