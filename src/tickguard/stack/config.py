"""Settings of the stack tools (generator, local mode), read from environment variables.

Nothing here does work at import: each function reads the environment when called, so tests and the
CLI can set variables first. Every variable is optional; the defaults suit the local runtime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

DATABASE = "fraud"
RETENTION_POLICY = "autogen"
MEASUREMENT = "transactions"
SCORED_MEASUREMENT = "transactions_scored"
ALERTS_DATABASE = "chronograf"
ALERTS_MEASUREMENT = "alerts"


@dataclass(frozen=True)
class InfluxSettings:
    """Where the generator writes and how it authenticates (empty user = authentication off)."""

    url: str
    username: str
    password: str
    database: str
    retention_policy: str
    measurement: str


@dataclass(frozen=True)
class GeneratorSettings:
    """Defaults of `tickguard generate`; command-line flags override each of them."""

    rate: float
    batch_size: int
    max_retries: int
    source_tag: str


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def influx_settings() -> InfluxSettings:
    """InfluxDB connection settings from TICKGUARD_INFLUXDB_* variables."""
    return InfluxSettings(
        url=_env("TICKGUARD_INFLUXDB_URL", "http://127.0.0.1:8086"),
        username=_env("TICKGUARD_INFLUXDB_USER", ""),
        password=_env("TICKGUARD_INFLUXDB_PASSWORD", ""),
        database=_env("TICKGUARD_INFLUXDB_DATABASE", DATABASE),
        retention_policy=_env("TICKGUARD_INFLUXDB_RP", RETENTION_POLICY),
        measurement=_env("TICKGUARD_GENERATOR_MEASUREMENT", MEASUREMENT),
    )


def generator_settings() -> GeneratorSettings:
    """Generator defaults from TICKGUARD_GENERATOR_* variables."""
    return GeneratorSettings(
        rate=float(_env("TICKGUARD_GENERATOR_RATE", "50")),
        batch_size=int(_env("TICKGUARD_GENERATOR_BATCH_SIZE", "500")),
        max_retries=int(_env("TICKGUARD_GENERATOR_MAX_RETRIES", "8")),
        source_tag=_env("TICKGUARD_GENERATOR_SOURCE", "holdout-replay"),
    )
