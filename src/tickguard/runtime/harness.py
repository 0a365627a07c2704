"""TickRuntime: a private influxd + kapacitord pair for tests, local mode and benchmarks."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from tickguard.runtime.binaries import TickBinaries, find_tick_binaries
from tickguard.runtime.config import load_settings
from tickguard.runtime.influxdb import InfluxAuth, InfluxServer
from tickguard.runtime.kapacitor import KapacitorServer, SocketUdf
from tickguard.runtime.process import TickRuntimeError

log = logging.getLogger(__name__)


class TickRuntime:
    """influxd and kapacitord on free loopback ports, Kapacitor subscribed to that InfluxDB.

    Usage::

        with TickRuntime(tmp_path, udfs={"score": SocketUdf("/tmp/agent.sock", "10s")}) as rt:
            rt.influx_url, rt.kapacitor_url          # http://127.0.0.1:<port>
            rt.kapacitor_client().define_task(...)   # tickguard.kapacitor_client.KapacitorClient
            rt.kapacitor.restart(); rt.influx.stop(); rt.influx.start()
            print(rt.logs())

    `udfs` maps a UDF name to its socket (path, (path, timeout) or SocketUdf). Kapacitor dials each socket
    at startup (for Info) before its HTTP API comes up, so the UDF agents must already listen when
    `start()` runs. The UDF set is fixed for the life of kapacitord (restart it with a new runtime to change).

    `workdir` gets influxd/ and kapacitord/ sub-directories (config, data, log); None means a temporary
    directory removed on stop(). `influx_auth` turns on InfluxDB auth with that admin user and hands the
    credentials to Kapacitor. `kapacitor_config` / `influx_config` are nested dicts deep-merged into the
    generated configs (e.g. {"task": {"snapshot-interval": "5s"}}); `*_extra_config` is raw TOML appended.
    `influx_env` / `kapacitor_env` add to a daemon's environment (e.g. {"GOGC": "400"}).
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        udfs: Mapping[str, SocketUdf | Path | str | tuple[Path | str, str]] | None = None,
        influx_auth: InfluxAuth | None = None,
        binaries: TickBinaries | None = None,
        with_kapacitor: bool = True,
        subscriptions_sync_interval: str = "1s",
        kapacitor_config: Mapping[str, Any] | None = None,
        kapacitor_extra_config: str = "",
        influx_config: Mapping[str, Any] | None = None,
        influx_extra_config: str = "",
        start_timeout: float | None = None,
        influx_env: Mapping[str, str] | None = None,
        kapacitor_env: Mapping[str, str] | None = None,
    ):
        settings = load_settings()
        self.binaries = (binaries or find_tick_binaries(settings)).require_servers()
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tickguard-tick-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        timeout = start_timeout if start_timeout is not None else settings.start_timeout
        self.influx = InfluxServer(
            self.binaries.influxd,  # type: ignore[arg-type]
            self.workdir / "influxd",
            auth=influx_auth,
            config_overrides=influx_config,
            extra_config=influx_extra_config,
            start_timeout=timeout,
            stop_timeout=settings.stop_timeout,
        )
        self.influx.env = dict(influx_env or {})
        self.kapacitor: KapacitorServer | None = None
        if with_kapacitor:
            self.kapacitor = KapacitorServer(
                self.binaries.kapacitord,  # type: ignore[arg-type]
                self.workdir / "kapacitord",
                influx=self.influx,
                udfs=udfs,
                subscriptions_sync_interval=subscriptions_sync_interval,
                config_overrides=kapacitor_config,
                extra_config=kapacitor_extra_config,
                start_timeout=timeout,
                stop_timeout=settings.stop_timeout,
            )
            self.kapacitor.env = dict(kapacitor_env or {})
        self._keep_workdir = settings.keep_workdirs

    def __repr__(self) -> str:
        kapacitor = self.kapacitor.url if self.kapacitor is not None else "none"
        return f"TickRuntime(influx={self.influx.url}, kapacitor={kapacitor}, workdir={self.workdir})"

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> TickRuntime:
        """Start influxd, then kapacitord (UDF agents must already listen); stop both if either fails."""
        try:
            self.influx.start()
            if self.kapacitor is not None:
                self.kapacitor.start()
        except BaseException:
            self._stop_servers()
            raise
        return self

    def stop(self) -> None:
        """Stop kapacitord, then influxd; remove the workdir if the runtime created it (unless kept)."""
        self._stop_servers()
        if self._owns_workdir and not self._keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_servers(self) -> None:
        for server in (self.kapacitor, self.influx):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    def __enter__(self) -> TickRuntime:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            log.error("TICK runtime in %s ended with %r; server logs:\n%s", self.workdir, exc, self.logs())
        self.stop()

    # -- addresses and clients -------------------------------------------------------------------------
    @property
    def influx_url(self) -> str:
        """InfluxDB's base URL, e.g. http://127.0.0.1:40123."""
        return self.influx.url

    @property
    def kapacitor_url(self) -> str:
        """Kapacitor's base URL (API under /kapacitor/v1)."""
        return self._require_kapacitor().url

    def kapacitor_client(self, timeout: float = 10.0):  # -> KapacitorClient (imported lazily)
        """A KapacitorClient for this runtime's kapacitord."""
        from tickguard.kapacitor_client import KapacitorClient

        return KapacitorClient(self.kapacitor_url, timeout=timeout)

    def influx_client(self, **kwargs: Any):  # -> influxdb_client.InfluxDBClient
        """An influxdb_client.InfluxDBClient for this influxd (v2 API compatibility endpoints); caller closes it."""
        from influxdb_client import InfluxDBClient

        token = self.influx.auth.token if self.influx.auth else ""
        return InfluxDBClient(url=self.influx_url, token=token, org="-", **kwargs)

    def create_database(self, database: str, timeout: float = 15.0) -> None:
        """Create a database and wait until Kapacitor's subscription to it exists (points then flow)."""
        self.influx.create_database(database)
        if self.kapacitor is not None and self.kapacitor.is_running():
            self.influx.wait_for_subscription(database, self.kapacitor.port, timeout)

    def logs(self, lines: int = 40) -> str:
        """The tails of both servers' logs, labelled, for error messages and failed tests."""
        parts = []
        for server in (self.influx, self.kapacitor):
            if server is not None:
                parts.append(f"--- {server.name} ({server.log_path}) ---\n{server.log_tail(lines)}")
        return "\n".join(parts)

    def _require_kapacitor(self) -> KapacitorServer:
        if self.kapacitor is None:
            raise TickRuntimeError("this TickRuntime was created with with_kapacitor=False")
        return self.kapacitor
