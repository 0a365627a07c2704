"""What the agent's scoring client puts on the wire.

The service compresses answers of 1 KiB or more whenever Accept-Encoding allows it; on the agent's
loopback link that only burns CPU on both ends, so the client must ask for the identity encoding on
every request it makes (the card and the batches), whatever requests would send by default.

Batches go as binary V2 inference requests (the service's cheapest parse). The points the agent writes
must not change with the transport: the binary answer, read with the card's threshold, must equal the
JSON /predict answer for the same rows, and a refused batch must still name the row and field.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tests.fixtures.udf import ScoringServiceThread, UdfWire, make_point, synthetic_rows
from tickguard.agent.framing import frame
from tickguard.agent.scoring import CircuitBreaker, ScoringClient, ScoringUnavailable
from tickguard.scoring.payloads import columns_request
from tickguard.scoring.v2 import BinaryBatch


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


def _client(url: str, model: str | None = "shuttle") -> ScoringClient:
    return ScoringClient(url, retries=0, breaker=CircuitBreaker(3, 1.0), model=model)


def _shuttle_rows(count: int, seed: int = 5) -> list[list[float]]:
    X, _ = synthetic_rows(count, seed=seed, width=9)
    X[0] *= 40  # a few scores near 1, so both flag values occur
    return X.tolist()


def test_binary_v2_answer_equals_json_predict_for_the_same_rows(scoring_service):
    client = _client(scoring_service.url)
    card = client.card(2.0)
    rows = _shuttle_rows(300)
    before = scoring_service.requests
    binary = client.score(BinaryBatch(card["features"], rows), len(rows), time.monotonic() + 10, 5.0)
    assert scoring_service.requests == before, "the batch went to /predict, not to the V2 endpoint"
    json_answer = client.score(columns_request(card["features"], rows), len(rows), time.monotonic() + 10, 5.0)
    assert scoring_service.requests == before + 1
    assert binary == json_answer  # scores bit for bit, flags, threshold, model version
    assert binary.threshold == card["threshold"] and binary.model_version == "udf-shuttle-1"
    assert len(set(binary.flags)) == 2


def test_the_default_model_is_addressed_by_the_name_its_card_records(tmp_path, udf_model_dir):
    # A service with one model (the default) whose card names it, as every trained detector's does.
    (tmp_path / "shuttle").symlink_to(udf_model_dir / "shuttle")
    service = ScoringServiceThread(tmp_path).start()
    try:
        client = _client(service.url, model=None)
        card = client.card(2.0)
        rows = _shuttle_rows(50)
        result = client.score(BinaryBatch(card["features"], rows), 50, time.monotonic() + 10, 5.0)
        assert service.requests == 0
        expected = client.score(columns_request(card["features"], rows), 50, time.monotonic() + 10, 5.0)
        assert result == expected
    finally:
        service.stop()


def test_without_the_card_or_with_a_stale_one_the_batch_goes_as_json(scoring_service):
    client = _client(scoring_service.url)
    features = ScoringClient(scoring_service.url, 0, CircuitBreaker(3, 1.0), model="shuttle").model_features(
        2.0
    )
    rows = _shuttle_rows(20)
    before = scoring_service.requests
    first = client.score(BinaryBatch(features, rows), 20, time.monotonic() + 10, 5.0)  # card not fetched
    assert scoring_service.requests == before + 1
    card = client.card(2.0)
    # A card of an older version: its threshold did not set the flags, so the JSON answer is used.
    client._card = {**card, "version": "udf-shuttle-0", "threshold": 0.99}
    second = client.score(BinaryBatch(features, rows), 20, time.monotonic() + 10, 5.0)
    assert scoring_service.requests == before + 2
    assert first == second and second.threshold == card["threshold"]


def test_a_refused_binary_batch_names_the_row_and_field_like_predict(scoring_service):
    client = _client(scoring_service.url)
    features = client.model_features(2.0)
    rows = _shuttle_rows(3)
    rows[1][2] = math.nan  # the agent never sends one; the service's check must still name it
    messages = []
    for body in (BinaryBatch(features, rows), columns_request(features, rows)):
        with pytest.raises(ScoringUnavailable) as refused:
            client.score(body, 3, time.monotonic() + 10, 5.0)
        messages.append(str(refused.value))
    assert (
        f"(HTTP 400): tensor 'features' has invalid values; see 'problems' (row 1, field {features[2]}: NaN"
        in (messages[0])
    )
    assert (
        f"(HTTP 400): invalid input in a batch of 3 row(s); see 'problems' (row index, field) (row 1, field {features[2]}:"
        in (messages[1])
    )  # JSON has no NaN: orjson sent null
    assert client.breaker.state == "closed"  # a refusal is not a service failure


def test_agent_writes_the_same_fields_over_binary_v2_as_predict_answers(udf_agent_factory, scoring_service):
    rows = _shuttle_rows(60, seed=9)
    card = _client(scoring_service.url).card(2.0)
    answer = orjson.loads(
        _client(scoring_service.url)
        .session.post(
            f"{scoring_service.url}/predict?model=shuttle",
            data=columns_request(card["features"], rows),
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        .content
    )
    wire = UdfWire(udf_agent_factory(url=scoring_service.url).socket_path)
    assert wire.init(model="shuttle").init.success
    before = scoring_service.requests
    requests_ = []
    for index, row in enumerate(rows):
        request = make_point(index)
        for name, value in zip(card["features"], row, strict=True):
            request.point.fieldsDouble[name] = value
        requests_.append(request)
    wire.send_raw(b"".join(frame(r.SerializeToString()) for r in requests_))
    for prediction in answer["predictions"]:
        point = wire.receive_kind("point").point
        assert point.fieldsBool["scored"], point.fieldsString["error"]
        assert point.fieldsDouble["score"] == prediction["score"]
        assert point.fieldsBool["anomaly"] == prediction["anomaly"]
        assert point.fieldsDouble["threshold"] == answer["threshold"]
        assert point.fieldsString["model_version"] == answer["model_version"]
    assert scoring_service.requests == before, "the agent scored over /predict, not binary V2"


def test_the_agents_client_side_needs_no_numpy():
    # The agent's image has no numpy: importing the agent and packing/reading a binary batch must work.
    script = (
        "import sys; sys.modules['numpy'] = None\n"
        "import tickguard.agent.cli, tickguard.agent.connection\n"
        "from tickguard.scoring.v2 import BinaryBatch\n"
        "batch = BinaryBatch(['a', 'b'], [(1.5, 2), (3.0, -4.25)])\n"
        "assert batch.feature_rows() == [[1.5, 2.0], [3.0, -4.25]], batch.feature_rows()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
