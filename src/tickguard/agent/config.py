"""Settings of the UDF agent and the watchdog, read from environment variables when asked.

Nothing happens at import. Every variable is optional: a bare `@tickguard()` in a TICKscript uses
these defaults, so the agent works in compose without any option in the script.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# The scored-point contract (output shapes, default field names, the field-list grammar) lives in
# tickguard.agent.schema; these names are imported here for the settings that default to them.
from tickguard.agent.schema import (
    DEFAULT_LABEL_FIELD,
    FLAG_FIELD,
    OUTPUT_FULL,
    OUTPUT_LEAN,
    OUTPUTS,
    SCORE_FIELD,
    output_shape,
    parse_names,
)

__all__ = ["OUTPUTS", "OUTPUT_FULL", "OUTPUT_LEAN", "AgentSettings", "agent_settings", "output_shape"]


@dataclass(frozen=True)
class AgentSettings:
    """Defaults for every task node (TICKscript options override them per task) and process settings."""

    socket_path: str  # Unix socket of stream tasks (the CLI's --socket wins)
    batch_socket_path: str  # optional socket declaring batch edges
    socket_mode: int  # permission bits of the socket files (Kapacitor needs write access to connect)
    url: str  # base URL of the scoring service
    mode: str  # score | echo | naive
    batch_size: int
    flush_interval_s: float
    timeout_s: float  # one HTTP attempt
    max_delay_s: float  # longest a point may wait for its score before it is emitted unscored
    retries: int
    breaker_failures: int  # consecutive failed batches that open the breaker
    breaker_cooldown_s: float
    max_in_flight: int  # scoring requests in flight per task node
    score_field: str
    flag_field: str
    label_field: str
    output: str  # full (input fields + results) | lean (results, string/bool inputs, keep_fields)
    keep_fields: tuple[str, ...]  # numeric input fields a lean point keeps
    metrics_host: str
    metrics_port: int  # 0 = no /metrics endpoint
    log_interval_s: float
    kapacitor_url: str  # empty = no watchdog thread inside the agent
    kapacitor_username: str  # empty = Kapacitor without auth
    kapacitor_password: str
    udf_names: tuple[str, ...]  # UDF names (as in kapacitor.conf) whose tasks the watchdog heals
    watchdog_interval_s: float
    orphan_grace_s: (
        float  # how long an executing task may lack a connection before the watchdog reconnects it
    )
    # After healing a task, backfill the points it missed (needs InfluxDB access: TICKGUARD_INFLUXDB_*).
    backfill_on_heal: bool
    # Where a windowed detector's series history is read after a restart (tickguard.agent.windowing);
    # empty URL = no rebuild, new series warm up. TICKGUARD_INFLUXDB_URL/_USER/_PASSWORD.
    influx_url: str = ""
    influx_username: str = ""
    influx_password: str = ""
    window_history: bool = True  # TICKGUARD_UDF_WINDOW_HISTORY=false: never read history, always warm up
    write_features: bool = False  # TICKGUARD_UDF_WRITE_FEATURES=true: as .writeFeatures(TRUE) in every task


def _env(env: dict, name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def _env_or_empty(env: Mapping[str, str], name: str, default: str) -> str:
    """The variable when set, even to '' (which means "none"); `default` only when it is unset."""
    value = env.get(name)
    return default if value is None else value.strip()


def write_features_setting(env: Mapping[str, str]) -> bool:
    """TICKGUARD_UDF_WRITE_FEATURES: windowed models' columns written on scored points (agent and backfill)."""
    return _env(env, "TICKGUARD_UDF_WRITE_FEATURES", "false").lower() in ("1", "true", "yes")


def agent_settings(env: dict | None = None) -> AgentSettings:
    """Read the TICKGUARD_UDF_* variables (and TICKGUARD_SCORING_URL, TICKGUARD_KAPACITOR_URL)."""
    env = os.environ if env is None else env
    output, keep_fields = output_shape(env)
    return AgentSettings(
        socket_path=_env(env, "TICKGUARD_UDF_SOCKET", ""),
        batch_socket_path=_env(env, "TICKGUARD_UDF_BATCH_SOCKET", ""),
        socket_mode=int(_env(env, "TICKGUARD_UDF_SOCKET_MODE", "660"), 8),
        url=_env(env, "TICKGUARD_SCORING_URL", "http://127.0.0.1:8000").rstrip("/"),
        mode=_env(env, "TICKGUARD_UDF_MODE", "score"),
        batch_size=int(_env(env, "TICKGUARD_UDF_BATCH_SIZE", "1000")),
        flush_interval_s=float(_env(env, "TICKGUARD_UDF_FLUSH_INTERVAL", "0.05")),
        timeout_s=float(_env(env, "TICKGUARD_UDF_TIMEOUT", "2.0")),
        max_delay_s=float(_env(env, "TICKGUARD_UDF_MAX_DELAY", "3.0")),
        retries=int(_env(env, "TICKGUARD_UDF_RETRIES", "2")),
        breaker_failures=int(_env(env, "TICKGUARD_UDF_BREAKER_FAILURES", "3")),
        breaker_cooldown_s=float(_env(env, "TICKGUARD_UDF_BREAKER_COOLDOWN", "2.0")),
        max_in_flight=int(_env(env, "TICKGUARD_UDF_MAX_IN_FLIGHT", "2")),
        score_field=_env(env, "TICKGUARD_UDF_SCORE_FIELD", SCORE_FIELD),
        flag_field=_env(env, "TICKGUARD_UDF_FLAG_FIELD", FLAG_FIELD),
        # Set but empty = no label field, as `.labelField('')` in a task: no tp/fp/fn/tn.
        label_field=_env_or_empty(env, "TICKGUARD_UDF_LABEL_FIELD", DEFAULT_LABEL_FIELD),
        output=output,
        keep_fields=keep_fields,
        metrics_host=_env(env, "TICKGUARD_UDF_METRICS_HOST", "127.0.0.1"),
        metrics_port=int(_env(env, "TICKGUARD_UDF_METRICS_PORT", "9102")),
        log_interval_s=float(_env(env, "TICKGUARD_UDF_LOG_INTERVAL", "30")),
        kapacitor_url=_env(env, "TICKGUARD_KAPACITOR_URL", "").rstrip("/"),
        kapacitor_username=_env(env, "TICKGUARD_KAPACITOR_USERNAME", ""),
        kapacitor_password=_env(env, "TICKGUARD_KAPACITOR_PASSWORD", ""),
        udf_names=parse_names(_env(env, "TICKGUARD_UDF_NAMES", "tickguard,tickguard_batch")),
        watchdog_interval_s=float(_env(env, "TICKGUARD_WATCHDOG_INTERVAL", "2.0")),
        orphan_grace_s=float(_env(env, "TICKGUARD_WATCHDOG_ORPHAN_GRACE", "5.0")),
        # On by default wherever the agent knows its InfluxDB; TICKGUARD_BACKFILL_ON_HEAL=false turns it off.
        backfill_on_heal=_env(env, "TICKGUARD_BACKFILL_ON_HEAL", "true").lower() in ("1", "true", "yes")
        and bool(_env(env, "TICKGUARD_INFLUXDB_URL", "")),
        influx_url=_env(env, "TICKGUARD_INFLUXDB_URL", "").rstrip("/"),
        influx_username=_env(env, "TICKGUARD_INFLUXDB_USER", ""),
        influx_password=_env(env, "TICKGUARD_INFLUXDB_PASSWORD", ""),
        window_history=_env(env, "TICKGUARD_UDF_WINDOW_HISTORY", "true").lower() in ("1", "true", "yes"),
        write_features=write_features_setting(env),
    )
