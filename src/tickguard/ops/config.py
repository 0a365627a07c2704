"""Settings of `tickguard backfill`, read from environment variables when asked (nothing happens at import).

InfluxDB access reuses the stack's TICKGUARD_INFLUXDB_* variables and the scoring URL the UDF agent's
TICKGUARD_SCORING_URL, so a backfill talks to the same servers as the live pipeline. The output field
names and the output shape follow the agent's TICKGUARD_UDF_*_FIELD, TICKGUARD_UDF_OUTPUT and
TICKGUARD_UDF_KEEP_FIELDS variables, so backfilled points look like live ones. When Kapacitor is known
(TICKGUARD_KAPACITOR_URL), the live task's own definition overrides them (tickguard.ops.livetask): its
`@tickguard()` options, its source and its output, as the agent would apply them to that task.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from tickguard.agent.config import output_shape, write_features_setting
from tickguard.stack.config import MEASUREMENT, SCORED_MEASUREMENT, influx_settings

if TYPE_CHECKING:
    from tickguard.detectors import DetectorSpec


@dataclass(frozen=True)
class BackfillSettings:
    """Where to read, score and write; every field can be overridden on the command line."""

    influx_url: str
    username: str
    password: str
    database: str
    retention_policy: str
    source_measurement: str  # the raw points (`transactions`)
    scored_measurement: str  # where the live pipeline writes (`transactions_scored`)
    api_url: str  # the REST scoring service
    batch_size: int  # rows per /predict request
    write_batch: int  # lines per InfluxDB /write request
    max_window_points: int  # points held in memory at once
    timeout_s: float  # one HTTP request
    retries: int  # per request, on connection errors and 5xx
    score_field: str
    flag_field: str
    label_field: str
    output: str  # "lean" (like the agent's default: results, string/bool inputs, keep_fields) or "full"
    keep_fields: tuple[str, ...]  # numeric input fields a lean point keeps
    threshold: float | None = None  # the task's .threshold(); None = the service's
    # (model feature, point field) pairs from the task's .fields(); None = the served model's features
    features: tuple[tuple[str, str], ...] | None = None
    kapacitor_url: str = ""  # where the live task's definition is read (empty: settings only)
    kapacitor_username: str = ""
    kapacitor_password: str = ""
    task_id: str = ""  # the live task whose points are backfilled ("" = none named)
    model: str = ""  # the served model to score with ("" = the service's default)
    id_field: str = "txid"  # matches a raw point to its scored one, with the timestamp ("" = timestamp only)
    detector: str = ""  # the detector the settings came from ("" = none)
    write_features: bool = False  # a windowed model's columns as fields (the live task's .writeFeatures())
    # An InfluxQL condition limiting the backfill to some points, on the raw and the scored side alike:
    # a Kapacitor shard's own, `"shard" = '1'` (tickguard.stack.sharding). "" = every point.
    where: str = ""


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name)
    return default if value is None or value == "" else value


def _env_or_empty(env: Mapping[str, str], name: str, default: str) -> str:
    """The variable when set, even to '' (which means "none"); `default` only when it is unset."""
    value = env.get(name)
    return default if value is None else value.strip()


def apply_detector(settings: BackfillSettings, spec: DetectorSpec) -> BackfillSettings:
    """The settings for a detector's points (tickguard.detectors): its source, its output measurement, id and
    kept fields, its label, its model. A live task's definition, applied after, still decides over these."""
    from tickguard.agent.schema import schema_for

    label = spec.label.field if spec.label is not None else ""
    # What the detector's score task keeps (tickguard.agent.schema): display fields, the label, and a
    # windowed detector's value fields (its id field is a string, kept anyway).
    keep = tuple(name for name in schema_for(spec).keep_fields if name != spec.output.id_field)
    return replace(
        settings,
        database=spec.source.database,
        retention_policy=spec.source.retention_policy,
        source_measurement=spec.source.measurement,
        scored_measurement=spec.output.measurement,
        id_field=spec.output.id_field or "",
        label_field=label,
        keep_fields=keep,
        model=spec.model.name,
        detector=spec.name,
    )


def backfill_settings(env: Mapping[str, str] | None = None) -> BackfillSettings:
    """Read the settings from the environment, with defaults for the local runtime."""
    env = os.environ if env is None else env
    influx = influx_settings()
    output, keep_fields = output_shape(env)
    return BackfillSettings(
        influx_url=influx.url.rstrip("/"),
        username=influx.username,
        password=influx.password,
        database=influx.database,
        retention_policy=influx.retention_policy,
        source_measurement=_env(env, "TICKGUARD_BACKFILL_SOURCE", MEASUREMENT),
        scored_measurement=_env(env, "TICKGUARD_BACKFILL_TARGET", SCORED_MEASUREMENT),
        api_url=_env(env, "TICKGUARD_SCORING_URL", "http://127.0.0.1:8000").rstrip("/"),
        batch_size=int(_env(env, "TICKGUARD_BACKFILL_BATCH_SIZE", "1000")),
        write_batch=int(_env(env, "TICKGUARD_BACKFILL_WRITE_BATCH", "5000")),
        max_window_points=int(_env(env, "TICKGUARD_BACKFILL_WINDOW_POINTS", "100000")),
        timeout_s=float(_env(env, "TICKGUARD_BACKFILL_TIMEOUT", "30")),
        retries=int(_env(env, "TICKGUARD_BACKFILL_RETRIES", "3")),
        score_field=_env(env, "TICKGUARD_UDF_SCORE_FIELD", "score"),
        flag_field=_env(env, "TICKGUARD_UDF_FLAG_FIELD", "anomaly"),
        # Set but empty = no label field (like the task option .labelField('')): no tp/fp/fn/tn.
        label_field=_env_or_empty(env, "TICKGUARD_UDF_LABEL_FIELD", "Class"),
        output=output,
        keep_fields=keep_fields,
        kapacitor_url=_env(env, "TICKGUARD_KAPACITOR_URL", "").rstrip("/"),
        kapacitor_username=_env(env, "TICKGUARD_KAPACITOR_USERNAME", ""),
        kapacitor_password=_env(env, "TICKGUARD_KAPACITOR_PASSWORD", ""),
        task_id=_env(env, "TICKGUARD_BACKFILL_TASK", ""),
        write_features=write_features_setting(env),
        where=_env(env, "TICKGUARD_BACKFILL_WHERE", ""),
    )
