"""Start and stop a local `tickguard serve` (for notebooks, tests and benchmarks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalService:
    """`tickguard serve` in a subprocess on a free loopback port; use as a context manager."""

    def __init__(
        self,
        model: str | Path = "production",
        models_dir: str | Path = "models",
        detectors: tuple[str, ...] | list[str] = (),
        workers: int = 2,
        threads: int = 4,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_file: str | Path | None = None,
        grpc_port: int | None = None,
    ) -> None:
        self.model = str(model)
        self.models_dir = str(models_dir)
        self.detectors = tuple(detectors)  # empty: every detector with a production model
        self.workers = workers
        self.threads = threads
        self.port = port or free_port()
        self.env = dict(os.environ, **(env or {}))
        self.log_path = Path(log_file) if log_file else None
        self.grpc_port = grpc_port  # also serve gRPC (`serve --grpc-port`) on this port
        self.process: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8123."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalService:
        """Start the server and wait until /v2/health/ready answers 200."""
        command = [
            sys.executable,
            "-m",
            "tickguard.cli",
            "serve",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--model",
            self.model,
            "--models-dir",
            self.models_dir,
        ]
        for detector in self.detectors:
            command += ["--detector", detector]
        if self.grpc_port is not None:
            command += ["--grpc-port", str(self.grpc_port)]
        self._log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=self._log or subprocess.DEVNULL,
            stderr=self._log or subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tickguard serve exited with {self.process.returncode}; log: {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tickguard serve was not ready within {timeout:.0f}s; log: {self.log_path}")

    def stop(self, timeout: float = 20.0) -> int | None:
        """Graceful stop (SIGTERM to the gunicorn master), SIGKILL if it hangs; returns the exit code."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                code = self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self._log:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> LocalService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
