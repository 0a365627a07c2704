"""What the agent's scoring client puts on the wire.

The service compresses answers of 1 KiB or more whenever Accept-Encoding allows it; on the agent's
loopback link that only burns CPU on both ends, so the client must ask for the identity encoding on
every request it makes (the card and the batches), whatever requests would send by default.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tickguard.agent.scoring import CircuitBreaker, ScoringClient
from tickguard.scoring.payloads import columns_request


class _Recorder(BaseHTTPRequestHandler):
    """Answers GET /model and POST /predict like the service, remembering each request's headers."""

    seen: list[tuple[str, str, str | None]] = []

    def _answer(self, body: dict) -> None:
        payload = orjson.dumps(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append(("GET", self.path, self.headers.get("Accept-Encoding")))
        self._answer({"version": "v1", "features": ["a", "b"], "threshold": 0.5})

    def do_POST(self) -> None:  # noqa: N802
        self.seen.append(("POST", self.path, self.headers.get("Accept-Encoding")))
        rows = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))["data"]
        predictions = [{"score": 0.25, "anomaly": False} for _ in rows]
        self._answer({"predictions": predictions, "threshold": 0.5, "model_version": "v1"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recording_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_the_agent_asks_for_uncompressed_answers(recording_service):
    url, seen = recording_service
    client = ScoringClient(url, retries=0, breaker=CircuitBreaker(3, 1.0), model="fraud")
    assert client.model_features(1.0) == ("a", "b")
    result = client.score(columns_request(["a", "b"], [[1.0, 2.0]] * 40), 40, time.monotonic() + 5, 2.0)
    assert result.scores == [0.25] * 40
    client.score_once(columns_request(["a", "b"], [[1.0, 2.0]]), 1, 2.0)
    assert [(method, encoding) for method, _, encoding in seen] == [
        ("GET", "identity"),
        ("POST", "identity"),
        ("POST", "identity"),
    ]
