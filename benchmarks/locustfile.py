"""Locust load test of the REST service: a mixed single-record / batch workload on POST /predict.

Payloads are real holdout transactions prepared by benchmarks/load_test.py (path in
$TICKGUARD_LOCUST_PAYLOADS): each user sends mostly single records (what an online caller does) and now
and then a 100-row {"columns", "data"} batch (what the UDF agent and backfill do). Every answer is
checked: HTTP 200 and one prediction per row, otherwise the request counts as a failure.

Run through the wrapper (starts the service, writes benchmarks/results/locust.json):
    .venv/bin/python -m benchmarks.load_test
or by hand against a running service:
    TICKGUARD_LOCUST_PAYLOADS=payloads.json .venv/bin/locust -f benchmarks/locustfile.py --headless \
        -u 16 -r 16 -t 2m --host http://127.0.0.1:8000
"""

from __future__ import annotations

import itertools
import json
import os

from locust import FastHttpUser, between, task

from tickguard.scoring.payloads import PayloadError, parse_predict_response, predict_path

_HEADERS = {"Content-Type": "application/json"}


def _payloads() -> tuple[list[bytes], list[tuple[bytes, int]]]:
    path = os.environ.get("TICKGUARD_LOCUST_PAYLOADS")
    if not path:
        raise SystemExit(
            "set TICKGUARD_LOCUST_PAYLOADS to the payload file written by benchmarks/load_test.py"
        )
    with open(path) as handle:
        data = json.load(handle)
    singles = [body.encode() for body in data["singles"]]
    batches = [(batch["body"].encode(), batch["rows"]) for batch in data["batches"]]
    return singles, batches


SINGLES, BATCHES = _payloads()


class ScoringUser(FastHttpUser):
    """One client of the scoring service."""

    wait_time = between(0.005, 0.02)

    def on_start(self) -> None:
        """Each user walks the payloads from its own offset."""
        offset = id(self) % len(SINGLES)
        self._singles = itertools.islice(itertools.cycle(SINGLES), offset, None)
        self._batches = itertools.cycle(BATCHES)

    def _post(self, body: bytes, rows: int, name: str) -> None:
        with self.client.post(
            predict_path(), data=body, headers=_HEADERS, name=name, catch_response=True
        ) as reply:
            if reply.status_code != 200:
                reply.failure(f"HTTP {reply.status_code}: {(reply.text or '')[:200]}")
                return
            try:
                scores = parse_predict_response(reply.content, rows).scores
            except PayloadError as exc:
                reply.failure(str(exc))
                return
            if not all(0.0 <= s <= 1.0 for s in scores):
                reply.failure(f"scores outside [0, 1]: {scores[:5]}")

    @task(9)
    def single(self) -> None:
        """One transaction, as an online caller sends it."""
        self._post(next(self._singles), 1, "POST /predict (1 record)")

    @task(1)
    def batch(self) -> None:
        """A 100-row batch, as the UDF agent or a backfill sends it."""
        body, rows = next(self._batches)
        self._post(body, rows, f"POST /predict ({rows}-row batch)")
