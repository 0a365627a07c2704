"""A real influxd (InfluxDB 1.8) on loopback ports with its own data directory and generated config.

Its helpers (queries, writes, users) go through tickguard.influx like every other InfluxDB access.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickguard.influx import InfluxClient, InfluxError, quote_ident, quote_string
from tickguard.runtime import toml
from tickguard.runtime.process import ManagedServer, TickRuntimeError, free_port


@dataclass(frozen=True)
class InfluxAuth:
    """InfluxDB admin credentials: the harness creates this user and turns HTTP auth on."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print the password in test logs
        return f"InfluxAuth(username={self.username!r}, password=***)"

    @property
    def token(self) -> str:
        """The 'user:password' token InfluxDB 1.8's /api/v2 compatibility endpoints accept."""
        return f"{self.username}:{self.password}"


class InfluxServer(ManagedServer):
    """influxd with HTTP on a free loopback port, monitor/reporting off, optional auth.

    With `auth`, the first start creates the admin user (allowed while no user exists) and every helper
    request carries the credentials; `config_overrides` are deep-merged into the generated config.
    """

    name = "influxd"
    ping_path = "/ping"

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        auth: InfluxAuth | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        extra_config: str = "",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ):
        super().__init__(binary, workdir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.auth = auth
        self.config_overrides = dict(config_overrides or {})
        self.extra_config = extra_config
        self.rpc_port = free_port()
        self._admin_created = False

    # -- config ----------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The config as nested dicts (before rendering), with the caller's overrides applied."""
        data = self.data_dir
        base: dict[str, Any] = {
            "reporting-disabled": True,
            "bind-address": f"{self.host}:{self.rpc_port}",
            "meta": {"dir": str(data / "meta"), "logging-enabled": False},
            "data": {
                "dir": str(data / "data"),
                "wal-dir": str(data / "wal"),
                "query-log-enabled": False,
                "trace-logging-enabled": False,
            },
            "coordinator": {"log-queries-after": "0s"},
            "retention": {"enabled": True},
            "monitor": {"store-enabled": False},
            "subscriber": {"enabled": True, "http-timeout": "5s"},
            "http": {
                "enabled": True,
                "bind-address": f"{self.host}:{self.port}",
                "auth-enabled": self.auth is not None,
                "log-enabled": False,
                "pprof-enabled": False,
                "flux-enabled": False,
            },
            "logging": {"format": "logfmt", "level": "info", "suppress-logo": True},
            "continuous_queries": {"enabled": False},
        }
        return toml.deep_merge(base, self.config_overrides)

    def _render_config(self) -> str:
        rendered = toml.dumps(self.config())
        return rendered + ("\n" + self.extra_config.strip() + "\n" if self.extra_config.strip() else "")

    def _command(self) -> list[str]:
        return [str(self.binary), "run", "-config", str(self.config_path)]

    def _reassign_ports(self) -> None:
        super()._reassign_ports()
        self.rpc_port = free_port()

    def _after_ready(self) -> None:
        if self.auth is None or self._admin_created:
            return
        # Creating the first user needs no credentials; on a restart the user already exists.
        try:
            self.client().execute("SHOW USERS")
            self._admin_created = True
            return
        except InfluxError:
            pass
        statement = (
            f"CREATE USER {quote_ident(self.auth.username)} WITH PASSWORD {quote_string(self.auth.password)} "
            "WITH ALL PRIVILEGES"
        )
        try:
            InfluxClient(self.url, timeout_s=10, retries=0).execute(statement)
        except InfluxError as exc:
            raise self.error(f"creating admin user {self.auth.username!r} failed: {exc}") from exc
        self._admin_created = True

    # -- helpers for callers ---------------------------------------------------------------------------
    def client(self, **options: Any) -> InfluxClient:
        """A tickguard.influx client for this influxd, with the admin credentials when auth is on."""
        username, password = (self.auth.username, self.auth.password) if self.auth else ("", "")
        options.setdefault("timeout_s", 30.0)
        options.setdefault("retries", 0)  # a test helper: a failure should show at once
        return InfluxClient(self.url, username=username, password=password, **options)

    def query(
        self, influxql: str, database: str | None = None, *, epoch: str | None = "ns"
    ) -> list[dict[str, Any]]:
        """Run InfluxQL over /query and return the result list; raise TickRuntimeError on any error."""
        try:
            with self.client() as client:
                return client.results(influxql, database=database or "", epoch=epoch)
        except InfluxError as exc:
            raise TickRuntimeError(f"influxd: {exc}") from exc

    def select(self, influxql: str, database: str) -> list[dict[str, Any]]:
        """Run one SELECT and return its rows as dicts (column -> value), `time` in ns; [] if no rows."""
        results = self.query(influxql, database)
        rows: list[dict[str, Any]] = []
        for series in results[0].get("series", []) if results else []:
            tags = series.get("tags", {})
            for values in series.get("values", []):
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
        return rows

    def create_database(self, database: str) -> None:
        """CREATE DATABASE (idempotent)."""
        self.query(f"CREATE DATABASE {quote_ident(database)}")

    def write_lines(
        self, lines: Iterable[str] | str, database: str, *, precision: str = "ns", rp: str = ""
    ) -> None:
        """Write line protocol over /write; raise TickRuntimeError with InfluxDB's message on failure."""
        batch = [lines] if isinstance(lines, str) else list(lines)
        try:
            with self.client() as client:
                client.write(
                    batch,
                    database=database,
                    retention_policy=rp,
                    precision=precision,
                    batch_size=len(batch) or 1,
                )
        except InfluxError as exc:
            raise TickRuntimeError(f"influxd write to {database!r} failed: {exc}") from exc

    def subscriptions(self) -> list[dict[str, Any]]:
        """Rows of SHOW SUBSCRIPTIONS: database, retention_policy, name, mode, destinations."""
        try:
            with self.client() as client:
                return client.subscriptions()
        except InfluxError as exc:
            raise TickRuntimeError(f"influxd: {exc}") from exc

    def wait_for_subscription(
        self, database: str, destination_port: int, timeout: float = 15.0
    ) -> dict[str, Any]:
        """Wait until `database` has a subscription sending to 127.0.0.1:`destination_port`; return it."""
        needle = f":{destination_port}"
        deadline = time.monotonic() + timeout
        while True:
            for row in self.subscriptions():
                if row["database"] == database and any(
                    needle in dest for dest in row.get("destinations") or []
                ):
                    return row
            if time.monotonic() >= deadline:
                raise self.error(
                    f"no subscription on database {database!r} to port {destination_port} after {timeout:.0f} s"
                )
            time.sleep(0.1)
