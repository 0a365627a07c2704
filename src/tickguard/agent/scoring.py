"""HTTP client of the scoring service: one pooled session, bounded retries, a circuit breaker.

One `ScoringClient` per service URL is shared by every task node of the process, so the breaker
reflects the service, not one task. A call never runs past the deadline it is given: that is what
keeps points flowing (unscored, with an `error`) when the service is down or slow.

Batches go to the Open Inference Protocol endpoint with binary tensors (`/v2/models/<name>/infer`):
the service parses 8 bytes per value instead of JSON numbers, which roughly halves its CPU per point.
The answer carries scores, flags and the model version; the threshold written with the points comes
from the model card, so a batch is sent as JSON to `/predict` whenever the card is not at hand (not
fetched yet, or it records no model name) or the answer comes from another model version than the card's.
"""

from __future__ import annotations

import logging
import threading
import time

import orjson
import requests
from requests.adapters import HTTPAdapter

from tickguard.scoring.payloads import (
    PayloadError,
    PredictResult,
    card_model_name,
    card_path,
    columns_request,
    parse_card,
    parse_predict_response,
    predict_path,
)
from tickguard.scoring.v2 import HEADER_LENGTH, BinaryBatch, infer_path, parse_binary_infer_response

log = logging.getLogger(__name__)

BREAKER_CLOSED = "closed"
BREAKER_OPEN = "open"
BREAKER_HALF_OPEN = "half_open"
BREAKER_STATES = (BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN)
# Shortest attempt worth starting: below this the request could not complete anyway.
MIN_ATTEMPT_S = 0.005
BACKOFF_BASE_S = 0.05
CARD_RETRY_S = 1.0  # after a failed GET /model, wait this long before asking again
CARD_TIMEOUT_S = 1.0


class ScoringUnavailable(Exception):
    """No scores for this batch (service down, slow, erroring, or the breaker is open)."""


# Scores of one batch, in input order, plus what the service says about its model (the /predict contract).
ScoreResult = PredictResult


class ModelNotServed(ScoringUnavailable):
    """The service answers but does not serve the named model (HTTP 404): the task cannot work."""


class CircuitBreaker:
    """Opens after `failures` consecutive failed batches; lets one trial through after `cooldown_s`."""

    def __init__(self, failures: int, cooldown_s: float, on_change=None) -> None:
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.state = BREAKER_CLOSED
        self.last_error = ""
        self._on_change = on_change

    def _set(self, state: str) -> None:
        if state != self.state:
            log.warning("scoring circuit breaker %s -> %s (%s)", self.state, state, self.last_error or "ok")
            self.state = state
            if self._on_change:
                self._on_change(state)

    def allow(self) -> bool:
        """May a request be sent now? In half-open state only one trial at a time."""
        with self._lock:
            if self.state == BREAKER_CLOSED:
                return True
            if self.state == BREAKER_OPEN and time.monotonic() - self._opened_at >= self.cooldown_s:
                self._set(BREAKER_HALF_OPEN)
            if self.state == BREAKER_HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    @property
    def trial(self) -> bool:
        """True while the single half-open trial request is running."""
        return self._trial_running

    def release_trial(self) -> None:
        """Give back a half-open trial slot that was not used."""
        with self._lock:
            self._trial_running = False

    def record_success(self) -> None:
        """A batch was scored: close the breaker."""
        with self._lock:
            self._consecutive = 0
            self._trial_running = False
            self.last_error = ""
            self._set(BREAKER_CLOSED)

    def record_failure(self, error: str) -> None:
        """A batch failed after its retries: count it, and open the breaker at the limit."""
        with self._lock:
            self._consecutive += 1
            self.last_error = error
            was_trial = self._trial_running
            self._trial_running = False
            if was_trial or self._consecutive >= self.failures:
                self._opened_at = time.monotonic()
                self._set(BREAKER_OPEN)


class ScoringClient:
    """Binary V2 inference (JSON /predict as the fallback) and GET /model against one scoring service
    (`model`: a served model's name, None = default)."""

    def __init__(
        self, url: str, retries: int, breaker: CircuitBreaker, pool_size: int = 8, model: str | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.retries = max(0, retries)
        self.breaker = breaker
        self.session = requests.Session()
        # requests asks for gzip/deflate by default, and the service compresses answers from 1 KiB when
        # asked: over loopback that is pure CPU on both sides (~53 us API + 11 us agent per 100-row reply).
        self.session.headers["Accept-Encoding"] = "identity"
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._card_lock = threading.Lock()
        self._card: dict | None = None
        self._card_failed_at = -CARD_RETRY_S
        self._card_failure = ScoringUnavailable("")

    # ---- model card ----------------------------------------------------------------------

    def model_features(self, timeout_s: float) -> tuple[str, ...]:
        """The served model's feature names (GET /model), cached until the model version changes."""
        return tuple(self.card(timeout_s)["features"])

    def card(self, timeout_s: float) -> dict:
        """The served model's card (GET /model[?model=NAME]), cached until the model version changes.

        A failed fetch is remembered for CARD_RETRY_S, so an outage costs one request per second, not
        one per batch, and never stalls the batcher for longer than one short timeout.
        """
        card = self._card
        if card is None:
            with self._card_lock:
                if self._card is None:
                    if time.monotonic() - self._card_failed_at < CARD_RETRY_S:
                        raise self._card_failure
                    if not self.breaker.allow():
                        raise ScoringUnavailable(f"scoring circuit open: {self.breaker.last_error}")
                    self.breaker.release_trial()
                    try:
                        self._card = self._fetch_card(min(timeout_s, CARD_TIMEOUT_S))
                    except ScoringUnavailable as exc:
                        self._card_failed_at = time.monotonic()
                        self._card_failure = exc
                        raise
                card = self._card
        return card

    def forget_card_unless(self, model_version: str) -> None:
        """Drop the cached card when the service reports a different model version (a reload)."""
        card = self._card
        if card is not None and str(card.get("version")) != model_version:
            log.info("scoring service now serves model %s (was %s)", model_version, card.get("version"))
            self._card = None

    def _fetch_card(self, timeout_s: float) -> dict:
        url = self.url + card_path(self.model)
        try:
            response = self.session.get(url, timeout=max(timeout_s, MIN_ATTEMPT_S))
        except requests.RequestException as exc:
            raise ScoringUnavailable(f"GET {url} failed: {_short(exc)}") from None
        if response.status_code == 404 and self.model:
            detail = _error_detail(response.content)
            raise ModelNotServed(
                f"the scoring service at {self.url} does not serve model '{self.model}': {detail}"
            )
        if response.status_code != 200:
            raise ScoringUnavailable(f"GET {url} returned HTTP {response.status_code}")
        try:
            return parse_card(response.content)
        except PayloadError as exc:
            raise ScoringUnavailable(f"GET {url}: {exc}") from None

    # ---- scoring ------------------------------------------------------------------------------

    def score(
        self, body: BinaryBatch | bytes, rows: int, deadline: float, attempt_timeout_s: float
    ) -> ScoreResult:
        """Score one batch (packed rows, or a JSON /predict body); retry with backoff within `deadline`
        (a monotonic time)."""
        if not self.breaker.allow():
            raise ScoringUnavailable(
                f"scoring circuit open after repeated failures: {self.breaker.last_error}"
            )
        attempts = 1 if self.breaker.state == BREAKER_HALF_OPEN else 1 + self.retries
        error = ""
        for attempt in range(attempts):
            remaining = deadline - time.monotonic()
            if remaining < MIN_ATTEMPT_S:
                if attempt == 0:
                    # The points waited out their budget in the queue (a backlog, not a service failure):
                    # the breaker does not count this, but a half-open trial slot must be given back.
                    self.breaker.release_trial()
                    raise ScoringUnavailable(
                        "not scored: the point's time budget was spent waiting in the queue"
                    )
                break
            try:
                result = self._post(body, rows, min(attempt_timeout_s, remaining))
            except _Permanent as exc:
                # The service understood the request and refused it: retrying cannot help, and the
                # service itself is healthy, so the breaker does not count it. The model may have
                # changed its features: ask GET /model again before the next batch.
                self.breaker.record_success()
                self._card = None
                raise ScoringUnavailable(str(exc)) from None
            except ScoringUnavailable as exc:
                error = str(exc)
                backoff = BACKOFF_BASE_S * (2**attempt)
                if attempt + 1 < attempts and deadline - time.monotonic() > backoff + MIN_ATTEMPT_S:
                    time.sleep(backoff)
                    continue
                break
            self.breaker.record_success()
            return result
        self.breaker.record_failure(error)
        raise ScoringUnavailable(error)

    def _post(self, body: BinaryBatch | bytes, rows: int, timeout_s: float) -> ScoreResult:
        if isinstance(body, BinaryBatch):
            started = time.monotonic()
            result = self._infer(body, rows, timeout_s)
            if result is not None:
                return result
            timeout_s = max(MIN_ATTEMPT_S, timeout_s - (time.monotonic() - started))
            body = columns_request(body.columns, body.feature_rows())
        response = self._send(predict_path(self.model), body, {"Content-Type": "application/json"}, timeout_s)
        try:
            return parse_predict_response(response.content, rows)
        except PayloadError as exc:
            raise ScoringUnavailable(str(exc)) from None

    def _infer(self, batch: BinaryBatch, rows: int, timeout_s: float) -> ScoreResult | None:
        """Score packed rows over binary V2; None when this batch has to go as JSON (see the module doc)."""
        card = self._card
        name = self.model or (card_model_name(card) if card is not None else None)
        if card is None or name is None:
            return None
        response = self._send(
            infer_path(name),
            batch.body,
            {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(batch.header_length)},
            timeout_s,
        )
        try:
            scores, flags, version = parse_binary_infer_response(
                response.content, response.headers.get(HEADER_LENGTH), rows
            )
        except PayloadError as exc:
            raise ScoringUnavailable(str(exc)) from None
        if version != str(card.get("version")):
            # The service swapped the model after the card was read: this card's threshold is not the
            # one that set the flags. The JSON answer states it; the emitter then drops the stale card.
            return None
        return PredictResult(scores, flags, float(card["threshold"]), version)

    def _send(self, path: str, body: bytes, headers: dict[str, str], timeout_s: float) -> requests.Response:
        """POST `body`; the 200 response, else _Permanent (a 4xx: the request was refused) or
        ScoringUnavailable."""
        try:
            response = self.session.post(self.url + path, data=body, headers=headers, timeout=timeout_s)
        except requests.Timeout:
            raise ScoringUnavailable(f"scoring service did not answer within {timeout_s:.3g}s") from None
        except requests.RequestException as exc:
            raise ScoringUnavailable(f"scoring service unreachable: {_short(exc)}") from None
        status = response.status_code
        if status != 200:
            detail = _error_detail(response.content)
            if 400 <= status < 500 and status not in (408, 429):
                raise _Permanent(f"scoring service rejected the batch (HTTP {status}): {detail}")
            raise ScoringUnavailable(f"scoring service returned HTTP {status}: {detail}")
        return response

    def score_once(self, body: BinaryBatch | bytes, rows: int, timeout_s: float) -> ScoreResult:
        """One synchronous attempt without retries or breaker: the naive per-point mode."""
        try:
            return self._post(body, rows, timeout_s)
        except _Permanent as exc:
            raise ScoringUnavailable(str(exc)) from None


class _Permanent(ScoringUnavailable):
    """The service refused the request (4xx): not a service failure."""


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _error_detail(content: bytes) -> str:
    """The service's error message, with the first offending values it names (row index, field)."""
    try:
        body = orjson.loads(content)
        if isinstance(body, dict) and "error" in body:
            detail = str(body["error"])[:300]
            problems = body.get("problems")
            if isinstance(problems, list) and problems:
                named = [
                    f"row {item.get('row')}, field {item.get('field')}: {item.get('problem')}"
                    for item in problems[:3]
                    if isinstance(item, dict)
                ]
                more = len(problems) - len(named)
                detail += " (" + "; ".join(named) + (f"; {more} more" if more > 0 else "") + ")"
            return detail
    except orjson.JSONDecodeError:
        pass
    return content[:200].decode("utf-8", "replace")


class ClientRegistry:
    """One ScoringClient per (service URL, model) for the whole agent process; one breaker per URL
    (a service that is down is down for every model it serves)."""

    def __init__(
        self, retries: int, breaker_failures: int, breaker_cooldown_s: float, on_breaker_change=None
    ) -> None:
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str | None], ScoringClient] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._retries = retries
        self._failures = breaker_failures
        self._cooldown = breaker_cooldown_s
        self._on_breaker_change = on_breaker_change

    def get(self, url: str, model: str | None = None) -> ScoringClient:
        """The shared client of `model` (None = the default model) at `url`, created on first use."""
        with self._lock:
            client = self._clients.get((url, model))
            if client is None:
                breaker = self._breakers.get(url)
                if breaker is None:
                    on_change = (
                        (lambda state, u=url: self._on_breaker_change(u, state))
                        if self._on_breaker_change
                        else None
                    )
                    breaker = self._breakers[url] = CircuitBreaker(self._failures, self._cooldown, on_change)
                    if on_change:
                        on_change(BREAKER_CLOSED)
                client = ScoringClient(url, self._retries, breaker, model=model)
                self._clients[(url, model)] = client
            return client

    def clients(self) -> list[ScoringClient]:
        """Every client created so far."""
        with self._lock:
            return list(self._clients.values())
