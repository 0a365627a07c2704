"""TICKscript options of `@tickguard()`: what the info response declares, and their validation at init.

Each option takes exactly one argument (Kapacitor checks the count against the declared types);
`.fields()` may be given a comma-separated list and may be repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import OUTPUT_FULL, OUTPUTS, AgentSettings, field_names

MODE_SCORE = "score"
MODE_ECHO = "echo"
MODE_NAIVE = "naive"
MODES = (MODE_SCORE, MODE_ECHO, MODE_NAIVE)

# name -> value type of its single argument
DECLARED_OPTIONS: dict[str, int] = {
    "url": pb.STRING,
    "fields": pb.STRING,
    "threshold": pb.DOUBLE,
    "batchSize": pb.INT,
    "flushInterval": pb.DURATION,
    "timeout": pb.DURATION,
    "maxDelay": pb.DURATION,
    "scoreField": pb.STRING,
    "flagField": pb.STRING,
    "labelField": pb.STRING,
    "mode": pb.STRING,
    "output": pb.STRING,
    "keep": pb.STRING,
}

# Names the agent writes itself; an option may not rename score/flag onto one of them.
RESERVED_OUTPUT_FIELDS = (
    "scored",
    "error",
    "model_version",
    "threshold",
    "latency_ms",
    "tp",
    "fp",
    "fn",
    "tn",
)


class OptionError(ValueError):
    """An option value is unusable; the message is sent back to Kapacitor as the init error."""


@dataclass(frozen=True)
class TaskOptions:
    """Effective settings of one task node: env defaults overridden by the TICKscript options."""

    url: str
    mode: str
    fields: tuple[str, ...] | None  # None = the served model's features (GET /model)
    threshold: float | None  # None = the threshold the service returns
    batch_size: int
    flush_interval_s: float
    timeout_s: float
    max_delay_s: float
    score_field: str
    flag_field: str
    label_field: str
    output: str = OUTPUT_FULL
    keep_fields: tuple[str, ...] = ()  # numeric input fields a lean point keeps (e.g. Amount)


def info_response(wants: int, provides: int) -> pb.Response:
    """The InfoResponse for an edge type (STREAM or BATCH), declaring every option."""
    response = pb.Response()
    info = response.info
    info.wants = wants
    info.provides = provides
    for name, value_type in DECLARED_OPTIONS.items():
        info.options[name].valueTypes.append(value_type)
    return response


def defaults(settings: AgentSettings) -> TaskOptions:
    """Task options taken from the environment alone (what a bare `@tickguard()` gets)."""
    return TaskOptions(
        url=settings.url,
        mode=settings.mode,
        fields=None,
        threshold=None,
        batch_size=settings.batch_size,
        flush_interval_s=settings.flush_interval_s,
        timeout_s=settings.timeout_s,
        max_delay_s=settings.max_delay_s,
        score_field=settings.score_field,
        flag_field=settings.flag_field,
        label_field=settings.label_field,
        output=settings.output,
        keep_fields=settings.keep_fields,
    )


def _value(option: pb.Option) -> object:
    expected = DECLARED_OPTIONS[option.name]
    if len(option.values) != 1:
        raise OptionError(f".{option.name}() takes exactly one argument, got {len(option.values)}")
    value = option.values[0]
    if value.type != expected:
        raise OptionError(
            f".{option.name}() expects a {pb.ValueType.Name(expected).lower()}, "
            f"got a {pb.ValueType.Name(value.type).lower()}"
        )
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _field_name(option: str, value: str) -> str:
    name = value.strip()
    if not name:
        raise OptionError(f".{option}() needs a non-empty field name")
    if name in RESERVED_OUTPUT_FIELDS:
        raise OptionError(f".{option}('{name}') collides with a field the agent writes itself")
    return name


def parse_options(options: list[pb.Option] | tuple, base: TaskOptions) -> TaskOptions:
    """Apply the InitRequest's options to `base`; raise OptionError naming the bad option."""
    changes: dict[str, object] = {}
    fields: list[str] = []
    for option in options:
        if option.name not in DECLARED_OPTIONS:
            raise OptionError(f"unknown option .{option.name}(); known: {', '.join(DECLARED_OPTIONS)}")
        value = _value(option)
        name = option.name
        if name == "url":
            parsed = urlparse(str(value))
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise OptionError(f".url('{value}') is not an http(s) URL")
            changes["url"] = str(value).rstrip("/")
        elif name == "fields":
            parts = [part.strip() for part in str(value).split(",")]
            if not all(parts):
                raise OptionError(f".fields('{value}') has an empty field name")
            fields.extend(parts)
        elif name == "threshold":
            if not (isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise OptionError(f".threshold({value}) must be a number between 0 and 1")
            changes["threshold"] = float(value)
        elif name == "batchSize":
            if not 1 <= int(value) <= 100_000:
                raise OptionError(f".batchSize({value}) must be between 1 and 100000")
            changes["batch_size"] = int(value)
        elif name in ("flushInterval", "timeout", "maxDelay"):
            seconds = int(value) / 1e9
            low = 0.0 if name == "flushInterval" else 0.001
            if not low <= seconds <= 600:
                raise OptionError(f".{name}({seconds}s) must be between {low}s and 600s")
            key = {"flushInterval": "flush_interval_s", "timeout": "timeout_s", "maxDelay": "max_delay_s"}[
                name
            ]
            changes[key] = seconds
        elif name == "scoreField":
            changes["score_field"] = _field_name(name, str(value))
        elif name == "flagField":
            changes["flag_field"] = _field_name(name, str(value))
        elif name == "labelField":
            changes["label_field"] = str(value).strip()
        elif name == "output":
            if value not in OUTPUTS:
                raise OptionError(f".output('{value}') must be one of {', '.join(OUTPUTS)}")
            changes["output"] = value
        elif name == "keep":
            changes["keep_fields"] = field_names(str(value))
        elif name == "mode":
            if value not in MODES:
                raise OptionError(f".mode('{value}') must be one of {', '.join(MODES)}")
            changes["mode"] = value
    if fields:
        if len(set(fields)) != len(fields):
            raise OptionError(f".fields() lists a field twice: {', '.join(fields)}")
        changes["fields"] = tuple(fields)
    result = replace(base, **changes)
    if result.mode not in MODES:
        raise OptionError(f"mode '{result.mode}' (TICKGUARD_UDF_MODE) must be one of {', '.join(MODES)}")
    if result.output not in OUTPUTS:
        raise OptionError(
            f"output '{result.output}' (TICKGUARD_UDF_OUTPUT) must be one of {', '.join(OUTPUTS)}"
        )
    if result.score_field == result.flag_field:
        raise OptionError(f"scoreField and flagField are both '{result.score_field}'")
    if result.mode == MODE_NAIVE:
        result = replace(result, batch_size=1)
    return result
