"""Prometheus metrics of the service, correct across gunicorn worker processes.

Under gunicorn the config sets PROMETHEUS_MULTIPROC_DIR before the workers start, so every
worker writes its samples to shared files and `/metrics` (served by whichever worker gets the
scrape) adds them up: counters and histograms are totals for the whole server, not one worker.
Without that variable (tests, `create_app` in a thread) the metrics live in this process only.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ROW_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000)


def multiprocess_enabled() -> bool:
    """True when prometheus-client writes samples to files shared by all workers."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    """The service's metric families, registered in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tickguard_http_requests",
            "HTTP requests handled, by route, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.rows = Counter(
            "tickguard_rows_scored",
            "Rows in scoring requests (/predict, V2 infer), by route and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tickguard_http_request_duration_seconds",
            "Time from request start to response, by route.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "tickguard_batch_rows",
            "Rows per successful scoring request, by route.",
            ["endpoint"],
            buckets=ROW_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "tickguard_model_info",
            "1 for each model version a worker serves (label pid in multi-worker mode), 0 for older ones.",
            ["model", "version"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.reloads = Counter(
            "tickguard_model_reloads",
            "POST /admin/reload attempts, by result.",
            ["result"],
            registry=self.registry,
        )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of all metrics (summed over workers in multiprocess mode)."""
        if multiprocess_enabled():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
