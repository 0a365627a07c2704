"""The API benchmark's load generator (benchmarks.api_bench.run_load) against a local HTTP server.

The benchmark's latency numbers are only as good as this accounting: a paced request that could not
be sent on time (its connection still waited for an earlier answer) counts from when it was due; one
sent on time counts from when it was sent, its timer's lateness recorded apart.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.api_bench import http_request, run_load


def _server(delay_s: float) -> ThreadingHTTPServer:
    """A keep-alive HTTP/1.1 server answering every POST after `delay_s`."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40-ms delayed ACK

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay_s)
            body = b'{"score": 0.5}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def http_server():
    """Start servers with a given answer delay; returns their ports; shuts them down afterwards."""
    servers: list[ThreadingHTTPServer] = []

    def start(delay_s: float) -> int:
        servers.append(_server(delay_s))
        return servers[-1].server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_paced_requests_queued_behind_slow_answers_count_from_when_they_were_due(http_server) -> None:
    # One connection due every 20 ms, answers take 40 ms: every request waits for the previous one.
    port = http_server(0.04)
    summary = run_load(
        port, [http_request("/predict", b"{}", port)], clients=1, duration=0.5, rows_per_request=1, rate=50
    )
    assert summary["errors"] == 0
    # Open loop: every request due in the measured half second is sent and measured, late or not.
    assert summary["requests"] >= 0.5 * 50 - 1
    assert summary["backlogged_requests"] >= summary["requests"] - 1
    # Counting from the due time, the queue shows: latencies grow well past one 40-ms answer.
    assert summary["latency_ms"]["p50"] > 40.0
    assert summary["latency_ms"]["max"] > 2 * 40.0


def test_paced_requests_sent_on_time_record_the_generators_lateness_apart(http_server) -> None:
    port = http_server(0.0)
    summary = run_load(
        port, [http_request("/predict", b"{}", port)], clients=2, duration=1.5, rows_per_request=1, rate=10
    )
    assert summary["errors"] == 0 and summary["requests"] >= 10
    lateness = summary["generator_send_lateness_ms"]
    # Every measured request is either backlogged or sent on time with its lateness recorded.
    assert lateness["requests"] + summary["backlogged_requests"] == summary["requests"]
    assert lateness["requests"] > 0 and lateness["p50"] >= 0.0


def test_closed_loop_runs_carry_no_pacing_fields(http_server) -> None:
    port = http_server(0.0)
    summary = run_load(
        port, [http_request("/predict", b"{}", port)], clients=2, duration=0.5, rows_per_request=1
    )
    assert summary["errors"] == 0 and summary["requests"] > 0
    assert "backlogged_requests" not in summary and "generator_send_lateness_ms" not in summary
