"""Settings of the TICK server harness, read from environment variables (call `load_settings()`; no work at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The versions `make tick` builds; the harness checks binaries against them on request.
KAPACITOR_VERSION = "1.7.6"
INFLUXDB_VERSION = "1.8.10"


@dataclass(frozen=True)
class RuntimeSettings:
    """Where to find the servers and how long to wait for them."""

    tick_bin_dir: Path | None
    """TICKGUARD_TICK_BIN: directory searched first for influxd/kapacitord (before <repo>/.tick/bin and PATH)."""
    cache_dir: Path
    """TICKGUARD_CACHE: where `make tick` keeps the built servers (default ~/.cache/tickguard)."""
    start_timeout: float
    """TICKGUARD_START_TIMEOUT: seconds to wait for a server's /ping after launching it (default 30)."""
    stop_timeout: float
    """TICKGUARD_STOP_TIMEOUT: seconds between SIGTERM and SIGKILL when stopping a server (default 10)."""
    keep_workdirs: bool
    """TICKGUARD_KEEP_WORKDIRS: keep the servers' data/log directories after a test run (default no)."""


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number of seconds, got {raw!r}") from exc


def load_settings() -> RuntimeSettings:
    """Read the harness settings from the environment (defaults for anything unset)."""
    tick_bin = os.environ.get("TICKGUARD_TICK_BIN", "").strip()
    cache = os.environ.get("TICKGUARD_CACHE", "").strip()
    return RuntimeSettings(
        tick_bin_dir=Path(tick_bin).expanduser() if tick_bin else None,
        cache_dir=Path(cache).expanduser() if cache else Path.home() / ".cache" / "tickguard",
        start_timeout=_env_float("TICKGUARD_START_TIMEOUT", 30.0),
        stop_timeout=_env_float("TICKGUARD_STOP_TIMEOUT", 10.0),
        keep_workdirs=os.environ.get("TICKGUARD_KEEP_WORKDIRS", "").lower() in {"1", "true", "yes"},
    )
