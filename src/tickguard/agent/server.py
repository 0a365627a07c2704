"""The agent's Unix-socket listener: one thread per accepted Kapacitor connection."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import AgentSettings
from tickguard.agent.connection import Connection
from tickguard.agent.metrics import AgentMetrics
from tickguard.agent.scoring import ClientRegistry
from tickguard.errors import TickguardError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    """A socket path and the edge type (pb.STREAM or pb.BATCH) its info response declares."""

    path: Path
    edge: int


def _claim_socket_path(path: Path) -> None:
    """Remove a stale socket file, but refuse to steal one another live agent is serving."""
    if not path.exists() and not path.is_symlink():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise TickguardError(f"{path} is already served by another process; stop it or choose another --socket")


class UdfServer:
    """Accepts Kapacitor's connections on one or more Unix sockets and serves each on its own thread."""

    def __init__(
        self, settings: AgentSettings, listeners: list[Listener], metrics: AgentMetrics | None = None
    ):
        self.settings = settings
        self.listeners = listeners
        self.metrics = metrics or AgentMetrics()
        self.clients = ClientRegistry(
            settings.retries, settings.breaker_failures, settings.breaker_cooldown_s, self.metrics.set_breaker
        )
        self._sockets: list[socket.socket] = []
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._counter = 0
        self.metrics.queue_depth.set_function(self.queued_points)
        self.metrics.connections.set_function(lambda: len(self._connections))
        self.metrics.window_series.set_function(self.window_series)

    def queued_points(self) -> int:
        """Points received on all connections and not yet written back."""
        with self._lock:
            return sum(max(0, c.queued_points) for c in self._connections)

    def window_series(self) -> int:
        """Series with window state in memory, all connections (windowed detectors only)."""
        with self._lock:
            return sum(len(c.windows.features) for c in self._connections if c.windows is not None)

    def live_tasks(self) -> set[str]:
        """Ids of the Kapacitor tasks with an initialized connection to this agent."""
        with self._lock:
            return {c.task_id for c in self._connections if c.options is not None}

    def start(self) -> None:
        """Bind every socket and start accepting."""
        for listener in self.listeners:
            _claim_socket_path(listener.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(listener.path))
            os.chmod(listener.path, self.settings.socket_mode)
            sock.listen(128)
            self._sockets.append(sock)
            edge = pb.EdgeType.Name(listener.edge).lower()
            log.info("tickguard UDF agent listening on %s (%s edges)", listener.path, edge)
            threading.Thread(
                target=self._accept_loop, args=(sock, listener), name=f"udf-accept-{edge}", daemon=True
            ).start()

    def _accept_loop(self, sock: socket.socket, listener: Listener) -> None:
        while not self._stopped.is_set():
            try:
                conn_sock, _ = sock.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                log.exception("accept failed on %s", listener.path)
                continue
            with self._lock:
                self._counter += 1
                name = f"conn#{self._counter}"
            connection = Connection(conn_sock, listener.edge, self.settings, self.clients, self.metrics, name)
            threading.Thread(target=self._serve, args=(connection,), name=f"udf-{name}", daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        with self._lock:
            self._connections.add(connection)
        try:
            connection.serve()
        finally:
            with self._lock:
                self._connections.discard(connection)

    def wait(self) -> None:
        """Block until stop() is called."""
        self._stopped.wait()

    def stop(self) -> None:
        """Stop accepting, close every connection and remove the socket files."""
        self._stopped.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close(wait_s=1.0)
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                os.unlink(listener.path)
        self._sockets.clear()
