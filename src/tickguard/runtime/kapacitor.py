"""A real kapacitord (Kapacitor 1.5) on a loopback port, subscribed to the harness's influxd, with socket UDFs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickguard.runtime import toml
from tickguard.runtime.influxdb import InfluxServer
from tickguard.runtime.process import ManagedServer


@dataclass(frozen=True)
class SocketUdf:
    """One socket UDF: Kapacitor dials `socket` (a Unix socket path); `timeout` is its keepalive timeout."""

    socket: Path | str
    timeout: str = "10s"

    @classmethod
    def coerce(cls, value: SocketUdf | Path | str | tuple[Path | str, str]) -> SocketUdf:
        """Accept a SocketUdf, a socket path, or a (socket path, timeout) pair."""
        if isinstance(value, SocketUdf):
            return value
        if isinstance(value, tuple):
            socket_path, timeout = value
            return cls(socket_path, timeout)
        return cls(value)


class KapacitorServer(ManagedServer):
    """kapacitord with its HTTP API on a free loopback port, data under its workdir.

    Socket UDFs are fixed at start: at startup kapacitord dials every configured socket once for Info and
    retries for minutes while the socket is missing, and its HTTP API (hence `start()`'s wait on
    /kapacitor/v1/ping) is not up meanwhile. So start the UDF agent (listening on its socket) BEFORE this
    server; otherwise `start()` times out with the log tail.

    With `influx`, Kapacitor subscribes to that InfluxDB over HTTP (points written to InfluxDB reach stream
    tasks), writes its own stats to `_kapacitor`, and re-syncs subscriptions every
    `subscriptions_sync_interval` (so new databases are picked up quickly).
    """

    name = "kapacitord"
    ping_path = "/kapacitor/v1/ping"

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        influx: InfluxServer | None = None,
        udfs: Mapping[str, SocketUdf | Path | str | tuple[Path | str, str]] | None = None,
        subscriptions_sync_interval: str = "1s",
        stats_interval: str = "10s",
        snapshot_interval: str = "60s",
        log_level: str = "INFO",
        http_log_enabled: bool = False,
        config_overrides: Mapping[str, Any] | None = None,
        extra_config: str = "",
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ):
        super().__init__(binary, workdir, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.influx = influx
        self.udfs: dict[str, SocketUdf] = {
            name: SocketUdf.coerce(value) for name, value in (udfs or {}).items()
        }
        self.subscriptions_sync_interval = subscriptions_sync_interval
        self.stats_interval = stats_interval
        self.snapshot_interval = snapshot_interval
        self.log_level = log_level
        self.http_log_enabled = http_log_enabled
        self.config_overrides = dict(config_overrides or {})
        self.extra_config = extra_config

    @property
    def api_url(self) -> str:
        """The API root, e.g. http://127.0.0.1:40123/kapacitor/v1."""
        return self.url + "/kapacitor/v1"

    def config(self) -> dict[str, Any]:
        """The config as nested dicts (before rendering), with the caller's overrides applied."""
        data = self.data_dir
        base: dict[str, Any] = {
            "hostname": self.host,
            "data_dir": str(data),
            "skip-config-overrides": False,
            "default-retention-policy": "",
            "http": {
                "bind-address": f"{self.host}:{self.port}",
                "log-enabled": self.http_log_enabled,
                "write-tracing": False,
                "pprof-enabled": False,
                "https-enabled": False,
            },
            "config-override": {"enabled": True},
            "logging": {"file": "STDERR", "level": self.log_level},
            "load": {"enabled": False},
            "replay": {"dir": str(data / "replay")},
            "task": {"dir": str(data / "tasks"), "snapshot-interval": self.snapshot_interval},
            "storage": {"boltdb": str(data / "kapacitor.db")},
            "reporting": {"enabled": False},
            "stats": {
                "enabled": True,
                "stats-interval": self.stats_interval,
                "database": "_kapacitor",
                "retention-policy": "autogen",
            },
            "udf": {
                "functions": {
                    name: {"socket": str(udf.socket), "timeout": udf.timeout}
                    for name, udf in self.udfs.items()
                }
            },
        }
        overrides = dict(self.config_overrides)
        if self.influx is not None:
            # {"influxdb": {...}} (a table, not a list) is merged into the one [[influxdb]] section.
            section = overrides.pop("influxdb") if isinstance(overrides.get("influxdb"), Mapping) else {}
            base["influxdb"] = [toml.deep_merge(self._influxdb_section(), section)]
        else:
            base["influxdb"] = [
                {"enabled": False, "name": "default", "default": True, "urls": ["http://127.0.0.1:1"]}
            ]
        return toml.deep_merge(base, overrides)

    def _influxdb_section(self) -> dict[str, Any]:
        assert self.influx is not None
        auth = self.influx.auth
        return {
            "enabled": True,
            "default": True,
            "name": "default",
            "urls": [self.influx.url],
            "username": auth.username if auth else "",
            "password": auth.password if auth else "",
            "timeout": "0s",
            "startup-timeout": "1m",
            "disable-subscriptions": False,
            "subscription-mode": "cluster",
            "subscription-protocol": "http",
            "subscriptions-sync-interval": self.subscriptions_sync_interval,
            # InfluxDB sends subscribed points to http://<kapacitor-hostname>:<http port>.
            "kapacitor-hostname": self.host,
            "http-port": 0,
            "udp-bind": "",
            "excluded-subscriptions": {"_kapacitor": ["autogen"]},
        }

    def _startup_hint(self) -> str:
        if not self.udfs:
            return ""
        described = []
        for name, udf in self.udfs.items():
            path = Path(udf.socket)
            state = (
                "listening socket"
                if path.is_socket()
                else ("not a socket" if path.exists() else "no such socket")
            )
            described.append(f"{name} -> {path} ({state})")
        return (
            "kapacitord dials every socket UDF before its HTTP API starts: is each UDF agent listening? "
            + "; ".join(described)
        )

    def _render_config(self) -> str:
        rendered = toml.dumps(self.config())
        return rendered + ("\n" + self.extra_config.strip() + "\n" if self.extra_config.strip() else "")

    def _command(self) -> list[str]:
        return [str(self.binary), "-config", str(self.config_path)]
