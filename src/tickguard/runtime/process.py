"""One managed server process: launch, wait for its /ping, stop (SIGTERM then SIGKILL), restart, log tail."""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import requests

from tickguard.errors import TickguardError

log = logging.getLogger(__name__)

# Every server started in this interpreter; stopped at exit so a crashed test run leaves no daemons behind.
_LIVE_SERVERS: weakref.WeakSet[ManagedServer] = weakref.WeakSet()
_ATEXIT_LOCK = threading.Lock()
_atexit_registered = False


class TickRuntimeError(TickguardError):
    """A TICK server failed to start, answer or stop; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def tail_file(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a text file ('' when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _server_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus KAPACITOR_*/INFLUXDB_* (both daemons read those as config overrides),
    plus `extra` (e.g. GOGC for one daemon)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAPACITOR_", "INFLUXDB_"))}
    # Without HOME, kapacitord 1.7's Snowflake driver creates .cache/snowflake in the working directory.
    env.setdefault("HOME", str(Path.home()))
    return {**env, **(extra or {})}


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the launching thread dies (no orphans)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _stop_all_at_exit() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop()


def _register(server: ManagedServer) -> None:
    global _atexit_registered
    with _ATEXIT_LOCK:
        _LIVE_SERVERS.add(server)
        if not _atexit_registered:
            atexit.register(_stop_all_at_exit)
            _atexit_registered = True


def _serialized(method):
    """Run a lifecycle method under the server's lock: a test and a supervisor thread may call at once."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lifecycle:
            return method(self, *args, **kwargs)

    return locked


class ManagedServer:
    """A daemon with a config file, a data directory and a log file, reachable over HTTP on loopback.

    Subclasses provide `_command()`, `_render_config()` and `ping_path`; the port stays the same across
    restarts so clients (and InfluxDB subscriptions) keep working.
    """

    name = "server"
    ping_path = "/ping"
    ping_status = 204
    die_with_parent = True
    """SIGTERM the daemon if the thread that launched it dies (Linux); set False for daemons meant to outlive it."""

    def __init__(
        self, binary: Path, workdir: Path, *, start_timeout: float = 30.0, stop_timeout: float = 10.0
    ):
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.host = "127.0.0.1"
        self.port = free_port()
        self.config_path = self.workdir / f"{self.name}.conf"
        self.log_path = self.workdir / f"{self.name}.log"
        self.data_dir = self.workdir / "data"
        self._process: subprocess.Popen[bytes] | None = None
        # start/stop/kill/recover may come from a test and a supervisor thread at once.
        self._lifecycle = threading.RLock()
        self._starts = 0
        self.env: dict[str, str] = {}
        """Extra environment of the daemon (e.g. {"GOGC": "400"}), applied at the next start."""

    # -- what subclasses define -------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _render_config(self) -> str:
        raise NotImplementedError

    def _reassign_ports(self) -> None:
        """Pick new free ports (used when the first launch lost a port race)."""
        self.port = free_port()

    def _startup_hint(self) -> str:
        """Extra explanation appended when the server does not come up in time."""
        return ""

    def _after_ready(self) -> None:
        """Hook run once the server answers its ping (e.g. create the admin user)."""

    # -- public API ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base HTTP URL, e.g. http://127.0.0.1:40123."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id while running, else None."""
        return self._process.pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while the process exists and has not exited."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of this server's log (all starts append to the same file)."""
        return tail_file(self.log_path, lines)

    def write_config(self) -> Path:
        """(Re)write the config file from the current settings and return its path."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self._render_config())
        return self.config_path

    @_serialized
    def start(self, timeout: float | None = None) -> None:
        """Launch the server and wait until its ping answers; raise TickRuntimeError with the log tail if not."""
        if self.is_running():
            return
        attempts = 2 if self._starts == 0 else 1  # a lost port race on first start gets one retry
        for attempt in range(attempts):
            try:
                self._launch_and_wait(timeout if timeout is not None else self.start_timeout)
                break
            except TickRuntimeError as exc:
                port_race = "address already in use" in self.log_tail(20).lower()
                if attempt + 1 < attempts and port_race and not self.is_running():
                    log.warning("%s lost a port race, retrying on new ports: %s", self.name, exc)
                    self._reassign_ports()
                    continue
                raise
        self._starts += 1
        self._after_ready()

    @_serialized
    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout` s); return its exit code (None if not running)."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            grace = self.stop_timeout if timeout is None else timeout
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.1f s after SIGTERM; sending SIGKILL", self.name, grace)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(10)
        self._process = None
        _LIVE_SERVERS.discard(self)
        self._log_marker(f"stopped (exit code {process.returncode})")
        return process.returncode

    @_serialized
    def kill(self) -> None:
        """SIGKILL the server at once (simulates a crash); the data dir stays for a later start()."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self._process = None
        _LIVE_SERVERS.discard(self)
        self._log_marker("killed (SIGKILL)")

    def exited_on_its_own(self) -> int | None:
        """The exit code if the daemon ended without stop() or kill() (a crash), else None."""
        process = self._process
        return process.poll() if process is not None else None

    @_serialized
    def recover(self, timeout: float | None = None) -> int | None:
        """Start a daemon that exited on its own again (compose's `restart: unless-stopped`); its exit code."""
        code = self.exited_on_its_own()
        if code is None:
            return None
        self._process = None
        _LIVE_SERVERS.discard(self)
        self._log_marker(f"exited on its own (exit code {code}); starting it again")
        log.warning("%s exited on its own (exit code %s); starting it again", self.name, code)
        self.start(timeout)
        return code

    def restart(self, timeout: float | None = None) -> None:
        """Stop and start again with the same config, data directory and port."""
        self.stop()
        self.start(timeout)

    def ping(self, timeout: float = 2.0) -> bool:
        """True when the server answers its ping endpoint."""
        try:
            response = requests.get(self.url + self.ping_path, timeout=timeout)
        except requests.RequestException:
            return False
        return response.status_code == self.ping_status

    def error(self, message: str, lines: int = 40) -> TickRuntimeError:
        """A TickRuntimeError for this server whose message ends with its log tail."""
        return TickRuntimeError(
            f"{self.name}: {message}\n--- last {lines} lines of {self.log_path} ---\n{self.log_tail(lines)}"
        )

    # -- internals -------------------------------------------------------------------------------------
    def _log_marker(self, text: str) -> None:
        with contextlib.suppress(OSError), self.log_path.open("a") as handle:
            handle.write(f"=== tickguard harness {time.strftime('%H:%M:%S')}: {self.name} {text} ===\n")

    def _launch_and_wait(self, timeout: float) -> None:
        self.write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = self._command()
        self._log_marker(f"starting on {self.url}: {' '.join(command)}")
        with self.log_path.open("ab") as log_handle:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=_server_environment(self.env),
                start_new_session=True,  # Ctrl-C in a terminal reaches the test runner, not the daemons
                preexec_fn=_die_with_parent if self.die_with_parent and sys.platform == "linux" else None,
            )
        _register(self)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while time.monotonic() < deadline:
            exit_code = self._process.poll()
            if exit_code is not None:
                self._process = None
                _LIVE_SERVERS.discard(self)
                raise self.error(f"exited with code {exit_code} during startup")
            if self.ping(timeout=1.0):
                log.info("%s ready on %s (pid %s)", self.name, self.url, self._process.pid)
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        self.kill()
        hint = self._startup_hint()
        raise self.error(
            f"did not answer {self.url}{self.ping_path} within {timeout:.0f} s (killed it)"
            + (f"; {hint}" if hint else "")
        )
