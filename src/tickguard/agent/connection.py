"""One Kapacitor task node's connection: a reader, and (when scoring) a batcher and an emitter thread.

The reader thread only reads and answers: keepalive, snapshot, restore and init are answered at once,
points are handed to the batcher. It never waits on the scoring service, so Kapacitor's keepalive
timer is reset even while a scoring request hangs. The batcher groups points into micro-batches and
starts their scoring requests (up to `max_in_flight` at a time); the emitter waits for them in input
order and writes the results. Every socket write goes through one lock.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from google.protobuf.message import DecodeError

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import OUTPUT_LEAN, AgentSettings
from tickguard.agent.encode import ScoredFieldsEncoder
from tickguard.agent.framing import FrameReader, FramingError, classify, frame, varint
from tickguard.agent.metrics import AgentMetrics
from tickguard.agent.options import (
    MODE_ECHO,
    MODE_NAIVE,
    LabelRule,
    OptionError,
    TaskOptions,
    defaults,
    info_response,
    parse_options,
    resolve_features,
)
from tickguard.agent.pipeline import (
    Batch,
    MalformedRequest,
    lean_point_response,
    prepare,
    render,
    render_unscored,
)
from tickguard.agent.scoring import ClientRegistry, ModelNotServed, ScoringClient, ScoringUnavailable
from tickguard.agent.windowing import (
    LiveWindows,
    card_windows,
    source_tag_filter,
    window_features_for_card,
)

log = logging.getLogger(__name__)

RECV_BYTES = 1 << 20
SNAPSHOT_MARKER = b"tickguard-udf/1"
_STOP = object()
_RAW = "raw"
_POINTS = "points"


class _Failed:
    """Stands in for a scoring future when a batch could not even be prepared."""

    def __init__(self, message: str) -> None:
        self.message = message


class ProtocolError(Exception):
    """Kapacitor sent something the protocol does not allow here: answered with an ErrorResponse."""


class Connection:
    """Serve one accepted socket until Kapacitor closes it or a fatal protocol error occurs."""

    def __init__(
        self,
        sock: socket.socket,
        edge: int,
        settings: AgentSettings,
        clients: ClientRegistry,
        metrics: AgentMetrics,
        name: str,
    ) -> None:
        self.sock = sock
        self.edge = edge
        self.settings = settings
        self.clients = clients
        self.metrics = metrics
        self.name = name
        self.task_id = ""
        self.node_id = ""
        self.options: TaskOptions | None = None
        self.client: ScoringClient | None = None
        self.encoder: ScoredFieldsEncoder | None = None
        # The served model's features resolved against the task's .fields(), per model card (object).
        self._resolved_card: dict | None = None
        self._resolved: tuple[tuple[str, ...] | None, tuple[str, ...] | None, str] = (None, None, "")
        self.label_rule = LabelRule(None)
        # A windowed model's per-series state (None = the model scores each point's own fields).
        self.windows: LiveWindows | None = None
        self._windows_declared: object = None
        self.queued_points = 0  # received, not yet written back
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._closing = False
        self._write_blocked_s = 0.0  # total time the emitter waited for Kapacitor to take our output
        self._close_lock = threading.Lock()
        self._last_keepalive: float | None = None
        self.keepalive_interval_s: float | None = None
        self._batch_queue: queue.SimpleQueue | None = None
        self._threads: list[threading.Thread] = []
        self._executor: ThreadPoolExecutor | None = None

    # ---- socket output -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write bytes atomically with respect to other writers of this connection."""
        if not data:
            return
        with self._write_lock:
            self.sock.sendall(data)

    def respond(self, response: pb.Response) -> None:
        """Serialize, frame and write one response."""
        self.write(frame(response.SerializeToString()))

    def _send_error(self, message: str) -> None:
        log.error("%s: %s", self.describe(), message)
        self.metrics.errors.labels(kind="protocol").inc()
        response = pb.Response()
        response.error.error = message
        with contextlib.suppress(OSError):
            self.respond(response)

    def describe(self) -> str:
        """Who this connection serves, for log lines."""
        return f"{self.name} task={self.task_id or '?'} node={self.node_id or '?'}"

    # ---- reader ------------------------------------------------------------------------------

    def serve(self) -> None:
        """The reader loop; returns when the connection is finished."""
        reader = FrameReader()
        try:
            while True:
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    break
                self._handle(reader.feed(data), time.monotonic())
        except FramingError as exc:
            self._send_error(f"tickguard UDF: unreadable request stream: {exc}")
        except (ProtocolError, MalformedRequest) as exc:
            self._send_error(f"tickguard UDF: {exc}")
        except OSError as exc:
            if not self._closed.is_set():
                log.warning("%s: connection lost: %s", self.describe(), exc)
        finally:
            self.close()

    def _handle(self, bodies: list[bytes], arrival: float) -> None:
        echo_out: list[bytes] = []
        echoed = 0
        points: list[bytes] = []
        mode = self.options.mode if self.options is not None else None
        # Echo returns what scoring would, minus the scores: lean output drops the inputs here too.
        echo_keep = self._lean_keep() if mode == MODE_ECHO else None
        for body in bodies:
            if len(body) > 1 and body[0] == 0x8A and body[1] == 0x01:  # a point: the hot path
                if mode is None:
                    raise ProtocolError("point received before init")
                if mode == MODE_ECHO:
                    if echo_keep is not None:
                        body = lean_point_response(body, echo_keep)
                    echo_out.append(varint(len(body)))
                    echo_out.append(body)
                    echoed += 1
                else:
                    points.append(body)
                continue
            kind = classify(body)
            if kind in ("begin", "end"):
                if mode is None:
                    raise ProtocolError(f"{kind} batch received before init")
                if mode == MODE_ECHO:
                    echo_out.append(varint(len(body)))
                    echo_out.append(body)
                else:
                    self._submit_points(points, arrival)
                    points = []
                    self._submit_raw(varint(len(body)) + body)
                continue
            # Control messages keep their place in the output: flush what came before them.
            if echo_out:
                self._write_echoed(echo_out, echoed)
                echo_out, echoed = [], 0
            if points:
                self._submit_points(points, arrival)
                points = []
            self._control(kind, body)
        if points:
            self._submit_points(points, arrival)
        if echo_out:
            self._write_echoed(echo_out, echoed)

    def _write_echoed(self, pieces: list[bytes], points: int) -> None:
        self.metrics.points_in.inc(points)
        self.metrics.points_out.inc(points)
        self.write(b"".join(pieces))

    def _control(self, kind: str, body: bytes) -> None:
        try:
            request = pb.Request.FromString(body)
        except DecodeError as exc:
            raise ProtocolError(f"malformed {kind} request: {exc}") from None
        response = pb.Response()
        if kind == "keepalive":
            now = time.monotonic()
            if self._last_keepalive is not None:
                self.keepalive_interval_s = now - self._last_keepalive
            self._last_keepalive = now
            response.keepalive.time = request.keepalive.time
        elif kind == "info":
            response = info_response(self.edge, self.edge)
        elif kind == "init":
            self._init(request.init, response)
        elif kind == "snapshot":
            response.snapshot.snapshot = SNAPSHOT_MARKER
        elif kind == "restore":
            # Nothing to restore: points in flight at the snapshot were already emitted.
            response.restore.success = True
        else:
            raise ProtocolError(
                f"unknown request (first bytes {body[:4].hex()}); is this a Kapacitor UDF socket?"
            )
        self.respond(response)

    def _init(self, init: pb.InitRequest, response: pb.Response) -> None:
        self.task_id = init.taskID
        self.node_id = init.nodeID
        if self.options is not None:
            response.init.success = False
            response.init.error = "init received twice on one connection"
            return
        try:
            options = parse_options(init.options, defaults(self.settings))
        except OptionError as exc:
            response.init.success = False
            response.init.error = f"tickguard: {exc}"
            log.warning("%s: init refused: %s", self.describe(), exc)
            return
        if options.mode != MODE_ECHO:
            self.client = self.clients.get(options.url, options.model)
            refusal = self._check_model(options)
            if refusal:
                response.init.success = False
                response.init.error = f"tickguard: {refusal}"
                log.warning("%s: init refused: %s", self.describe(), refusal)
                return
            self.encoder = ScoredFieldsEncoder(options.score_field, options.flag_field)
        self.options = options
        if options.mode not in (MODE_ECHO, MODE_NAIVE):
            self._start_pipeline()
        response.init.success = True
        log.info(
            "%s: init mode=%s model=%s output=%s url=%s batch=%d flush=%.3gs timeout=%.3gs",
            self.describe(),
            options.mode,
            options.model or "(default)",
            options.output,
            options.url,
            options.batch_size,
            options.flush_interval_s,
            options.timeout_s,
        )

    def _check_model(self, options: TaskOptions) -> str:
        """Why the task cannot start (an unknown model, `.fields()` naming features the model lacks), or ''.

        A service that cannot be reached now does not stop the task: its points leave unscored (with the
        reason) until the service answers, and the mapping is checked when the model card first arrives.
        """
        self.options = options  # _features reads the options
        try:
            self.client.card(options.timeout_s)
        except ModelNotServed as exc:
            self.options = None
            return str(exc)
        except ScoringUnavailable as exc:
            log.warning(
                "%s: cannot check the model's features now (%s); checked once it answers",
                self.describe(),
                exc,
            )
            return ""
        features, _fields, error = self._features()
        self.options = None
        if features is None:
            return error
        log.info(
            "%s: model %s features %s; label '%s' positive: %s",
            self.describe(),
            options.model or "(default)",
            ", ".join(features),
            options.label_field,
            self.label_rule.describe(),
        )
        return ""

    # ---- scoring pipeline --------------------------------------------------------------------

    def budget_s(self) -> float:
        """How long a point may wait for its score: maxDelay, capped by Kapacitor's keepalive interval."""
        budget = self.options.max_delay_s
        if self.keepalive_interval_s:
            budget = min(budget, self.keepalive_interval_s)
        return budget

    def _submit_points(self, points: list[bytes], arrival: float) -> None:
        if not points:
            return
        self.metrics.points_in.inc(len(points))
        self.queued_points += len(points)
        if self.options.mode == MODE_NAIVE:
            for body in points:  # the prototype's way: one synchronous request per point, on this thread
                batch = Batch([body], arrival)
                try:
                    self._score_now(batch)
                except (OSError, MalformedRequest):
                    raise
                except Exception as exc:  # a bug must not stop the task: the point leaves unscored
                    log.exception("%s: scoring a point failed", self.describe())
                    self._write_unscored(batch, f"internal error while scoring the point: {exc!r}")
            return
        self._batch_queue.put((_POINTS, points, arrival, self._excused_s()))

    def _submit_raw(self, data: bytes) -> None:
        if self.options.mode == MODE_NAIVE:
            self.write(data)
        else:
            self._batch_queue.put((_RAW, data, 0.0, 0.0))

    def _lean_keep(self) -> tuple[str, ...] | None:
        """The numeric input fields lean output keeps, or None for full output."""
        return self.options.keep_fields if self.options.output == OUTPUT_LEAN else None

    def _features(self) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None, str]:
        """(model features, the point field of each, '') or (None, None, why they are unknown)."""
        try:
            card = self.client.card(self.options.timeout_s)
        except ScoringUnavailable as exc:
            self.metrics.errors.labels(kind="model_card").inc()
            return None, None, f"feature list unknown: {exc}"
        if card is not self._resolved_card:
            features = tuple(card["features"])
            try:
                self._resolved = (
                    features,
                    resolve_features(features, self.options.fields, self.options.model),
                    "",
                )
            except OptionError as exc:
                self._resolved = (None, None, str(exc))
            self._resolved_card = card
            self.label_rule = LabelRule.from_card(card)
            self._update_windows(card)
        return self._resolved

    def _update_windows(self, card: dict) -> None:
        """Window state for the card's detector: kept while its `[windows]` stay the same (a new model
        version of the same detector), fresh (rebuilt from history) when they change, none without."""
        declared = card_windows(card)
        if declared is None:
            self.windows, self._windows_declared = None, None
            return
        if self.windows is not None and declared == self._windows_declared:
            return
        try:
            features = window_features_for_card(card)
        except Exception as exc:  # a card this agent cannot read: its points leave unscored, saying why
            self.windows, self._windows_declared = None, None
            self._resolved = (None, None, f"the model's window features are unusable: {exc}")
            return
        unknown = [name for name in self._resolved[0] or () if name not in features.columns]
        if unknown:
            self.windows, self._windows_declared = None, None
            self._resolved = (
                None,
                None,
                f"the model's features {', '.join(map(repr, unknown))} are not window columns of its "
                f"detector ({', '.join(features.columns)})",
            )
            return
        self.windows = LiveWindows(
            features,
            self._history_reader(),
            self.options.write_features,
            self.describe(),
            source_tag_filter(card),
        )
        self._windows_declared = declared
        log.info(
            "%s: windowed model: series by %s, %d points kept per series, history %s",
            self.describe(),
            ", ".join(features.spec.group_by) or "(one series)",
            features.spec.capacity,
            "from " + self.settings.influx_url if self.windows.history else "off (new series warm up)",
        )

    def _history_reader(self):
        """Where new series' history is read (TICKGUARD_INFLUXDB_*), or None: they warm up instead."""
        settings = self.settings
        if not (settings.window_history and settings.influx_url):
            return None
        from tickguard.agent.history import HistoryReader
        from tickguard.influx import InfluxClient

        client = InfluxClient(
            settings.influx_url,
            username=settings.influx_username,
            password=settings.influx_password,
            timeout_s=max(1.0, self.options.timeout_s),
            retries=1,
        )
        return HistoryReader(client)

    def _prepare(self, batch: Batch) -> None:
        """Fill the batch's request rows from its points, with this task's features, label and kept fields."""
        features, fields, features_error = self._features()
        prepare(
            batch,
            features,
            self.options.label_field,
            features_error,
            self._lean_keep(),
            fields=fields,
            label_rule=self.label_rule,
            windows=self.windows if features is not None else None,
        )

    def _score_now(self, batch: Batch) -> None:
        self._prepare(batch)
        result, error = None, ""
        if batch.rows:
            try:
                result = self.client.score_once(batch.body, batch.rows, self.options.timeout_s)
            except ScoringUnavailable as exc:
                error = str(exc)
        self._emit(batch, result, error)

    def _excused_s(self) -> float:
        """Agent-side waits so far that do not count against a point's budget, which guards against a slow
        scoring service: Kapacitor not taking our output, and reading new series' history from InfluxDB
        (after a restart, thousands of series are read back before their first points can be scored)."""
        windows = self.windows
        return self._write_blocked_s + (windows.history_s if windows is not None else 0.0)

    def _timed_write(self, data: bytes) -> None:
        started = time.monotonic()
        self.write(data)
        self._write_blocked_s += time.monotonic() - started

    def _write_unscored(self, batch: Batch, message: str) -> None:
        """Emit a batch's points as received plus scored=false and `error`: the path of last resort."""
        self._timed_write(render_unscored(batch.frames, self.encoder, message))
        count = len(batch.frames)
        self.queued_points -= count
        self.metrics.points_out.inc(count)
        self.metrics.points_unscored.inc(count)

    def _emit(self, batch: Batch, result, error: str) -> None:
        data = render(batch, result, error, self.encoder, self.options.threshold)
        count = len(batch.frames)
        self.queued_points -= count
        scored = sum(1 for row in batch.row_of if row >= 0) if result is not None else 0
        self.metrics.points_out.inc(count)
        self.metrics.points_scored.inc(scored)
        self.metrics.points_unscored.inc(count - scored)
        if count - scored:
            self.metrics.errors.labels(kind="unscored_points").inc(count - scored)
        self._timed_write(data)

    def _start_pipeline(self) -> None:
        self._batch_queue = queue.SimpleQueue()
        self._in_flight: queue.Queue = queue.Queue(maxsize=max(1, self.settings.max_in_flight))
        self._executor = ThreadPoolExecutor(max_workers=max(1, self.settings.max_in_flight) + 1)
        for target, suffix in ((self._batcher, "batcher"), (self._emitter, "emitter")):
            thread = threading.Thread(target=target, name=f"udf-{suffix}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_batch(self, frames: list[bytes], arrival: float, blocked_at_arrival: float) -> None:
        batch = Batch(frames, arrival)
        try:
            self._prepare(batch)
        except MalformedRequest:
            raise
        except Exception as exc:  # a bug must not stop the task: these points leave unscored
            log.exception("%s: preparing a batch failed", self.describe())
            self.metrics.errors.labels(kind="internal").inc()
            self._in_flight.put((batch, _Failed(f"internal error while preparing the batch: {exc!r}")))
            return
        future: Future | None = None
        if batch.rows:
            # Time spent waiting for Kapacitor to read our output, or reading history, is not the scoring
            # service's fault: it extends the budget, so it does not turn into unscored points.
            deadline = arrival + self.budget_s() + max(0.0, self._excused_s() - blocked_at_arrival)
            self.metrics.batches.inc()
            future = self._executor.submit(
                self.client.score, batch.body, batch.rows, deadline, self.options.timeout_s
            )
        self._in_flight.put((batch, future))

    def _batcher(self) -> None:
        pending: list[bytes] = []
        pending_arrival = pending_blocked = 0.0
        batch_size = self.options.batch_size
        flush_s = self.options.flush_interval_s
        try:
            while True:
                timeout = None if not pending else max(0.0, pending_arrival + flush_s - time.monotonic())
                try:
                    item = self._batch_queue.get(timeout=timeout)
                except queue.Empty:
                    self._start_batch(pending, pending_arrival, pending_blocked)
                    pending = []
                    continue
                if item is _STOP:
                    break
                kind, payload, arrival, blocked = item
                if kind == _POINTS:
                    if not pending:
                        pending_arrival, pending_blocked = arrival, blocked
                    pending.extend(payload)
                    while len(pending) >= batch_size:
                        self._start_batch(pending[:batch_size], pending_arrival, pending_blocked)
                        pending = pending[batch_size:]
                    if pending and flush_s <= 0:
                        self._start_batch(pending, pending_arrival, pending_blocked)
                        pending = []
                else:
                    if pending:
                        self._start_batch(pending, pending_arrival, pending_blocked)
                        pending = []
                    self._in_flight.put((payload, None))
            if pending:
                self._start_batch(pending, pending_arrival, pending_blocked)
        except MalformedRequest as exc:
            self._send_error(f"tickguard UDF: {exc}")
            self._shutdown_socket()
        except Exception:  # a bug here must not leave Kapacitor waiting forever
            log.exception("%s: batcher failed", self.describe())
            self._send_error("tickguard UDF: internal error in the batcher (see the agent's log)")
            self._shutdown_socket()
        finally:
            self._in_flight.put(_STOP)

    def _emitter(self) -> None:
        finished = False
        try:
            while True:
                item = self._in_flight.get()
                if item is _STOP:
                    finished = True
                    return
                batch, future = item
                if isinstance(batch, bytes):  # begin/end of a Kapacitor batch, in its place
                    self._timed_write(batch)
                    continue
                if isinstance(future, _Failed):
                    self._write_unscored(batch, future.message)
                    continue
                result, error = None, ""
                if future is not None:
                    try:
                        result = future.result()
                    except ScoringUnavailable as exc:
                        error = str(exc)
                    if result is not None:
                        self.client.forget_card_unless(result.model_version)
                try:
                    self._emit(batch, result, error)
                except OSError:
                    raise
                except Exception as exc:  # a bug must not stop the task: these points leave unscored
                    log.exception("%s: rendering a batch failed", self.describe())
                    self.metrics.errors.labels(kind="internal").inc()
                    self._write_unscored(batch, f"internal error while rendering the batch: {exc!r}")
        except OSError as exc:
            if not self._closed.is_set():
                log.warning("%s: cannot write to Kapacitor: %s", self.describe(), exc)
            self._shutdown_socket()
        except Exception:
            log.exception("%s: emitter failed", self.describe())
            self._send_error("tickguard UDF: internal error in the emitter (see the agent's log)")
            self._shutdown_socket()
        finally:
            # After a failure keep draining, so the batcher never blocks on a full in-flight queue.
            while not finished and self._in_flight.get() is not _STOP:
                pass

    # ---- teardown ----------------------------------------------------------------------------

    def _shutdown_socket(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self, wait_s: float = 5.0) -> None:
        """Flush what is queued (best effort), stop the threads and close the socket (once)."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        if self._batch_queue is not None:
            self._batch_queue.put(_STOP)
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(wait_s)
        self._closed.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._shutdown_socket()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.queued_points > 0:
            log.warning("%s: closed with %d points not written back", self.describe(), self.queued_points)
        log.info("%s: connection closed", self.describe())
