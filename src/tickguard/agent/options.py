"""TICKscript options of `@tickguard()`: what the info response declares, and their validation at init.

Each option takes exactly one argument (Kapacitor checks the count against the declared types).
`.model('name')` picks the served model (default: the service's default model). `.fields()` maps model
features to point fields, `'feature=field,...'` in the grammar of tickguard.agent.schema (a bare name
maps to itself; names with commas, equals signs or surrounding spaces are double-quoted); it may be
repeated, and features it does not name are read from fields of their own name. `.writeFeatures(TRUE)`
writes a windowed model's input columns (tickguard.agent.windowing) as fields of each scored point. The mapping is checked
against the served model's features when the task starts (`resolve_features`), and the label's positive
values come from the model's card (`LabelRule`), i.e. from the detector spec the model was trained for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from urllib.parse import urlparse

from tickguard.agent import udf_pb2 as pb
from tickguard.agent.config import AgentSettings
from tickguard.agent.schema import (
    OUTPUT_FULL,
    OUTPUTS,
    RESERVED_OUTPUT_FIELDS,
    FieldListError,
    parse_field_map,
    parse_names,
)

MODE_SCORE = "score"
MODE_ECHO = "echo"
MODE_NAIVE = "naive"
MODES = (MODE_SCORE, MODE_ECHO, MODE_NAIVE)

# name -> value type of its single argument
DECLARED_OPTIONS: dict[str, int] = {
    "url": pb.STRING,
    "model": pb.STRING,
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
    "writeFeatures": pb.BOOL,
}


class OptionError(ValueError):
    """An option value is unusable; the message is sent back to Kapacitor as the init error."""


@dataclass(frozen=True)
class TaskOptions:
    """Effective settings of one task node: env defaults overridden by the TICKscript options."""

    url: str
    mode: str
    # (model feature, point field) renames from .fields(); features not named read their own field
    fields: tuple[tuple[str, str], ...] | None
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
    model: str | None = None  # the served model's name; None = the service's default model
    write_features: bool = False  # a windowed model's columns are written as fields of scored points


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
        write_features=settings.write_features,
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
    fields: list[tuple[str, str]] = []
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
        elif name == "model":
            model = str(value).strip()
            if not model:
                raise OptionError(".model() needs a model name (omit it for the service's default model)")
            changes["model"] = model
        elif name == "fields":
            try:
                fields.extend(parse_field_map(str(value)))
            except FieldListError as exc:
                raise OptionError(f".fields(): {exc}") from None
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
            try:
                changes["keep_fields"] = parse_names(str(value))
            except FieldListError as exc:
                raise OptionError(f".keep(): {exc}") from None
        elif name == "writeFeatures":
            changes["write_features"] = bool(value)
        elif name == "mode":
            if value not in MODES:
                raise OptionError(f".mode('{value}') must be one of {', '.join(MODES)}")
            changes["mode"] = value
    if fields:
        features = [feature for feature, _field in fields]
        twice = sorted({feature for feature in features if features.count(feature) > 1})
        if twice:
            raise OptionError(f".fields() maps feature(s) {', '.join(map(repr, twice))} more than once")
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
    label = result.label_field
    if label:
        # The agent's fields are appended after the input's: the label would be overwritten and lost.
        for option, value in (("flagField", result.flag_field), ("scoreField", result.score_field)):
            if label == value:
                raise OptionError(
                    f"labelField '{label}' equals {option} '{value}': the {option[:-5]} would overwrite "
                    f"the label; give .{option}() another name"
                )
        if label in RESERVED_OUTPUT_FIELDS:
            raise OptionError(f"labelField '{label}' collides with a field the agent writes itself")
    if result.mode == MODE_NAIVE:
        result = replace(result, batch_size=1)
    return result


def resolve_features(
    model_features: tuple[str, ...], renames: tuple[tuple[str, str], ...] | None, model: str | None
) -> tuple[str, ...]:
    """The point field of each model feature, in the model's order; OptionError naming every `.fields()`
    feature the model does not have (and the features it has)."""
    if not renames:
        return model_features
    mapping = dict(renames)
    unknown = [feature for feature in mapping if feature not in model_features]
    if unknown:
        served = f"model '{model}'" if model else "the service's default model"
        raise OptionError(
            f".fields() maps feature(s) {', '.join(map(repr, unknown))} that {served} does not have; "
            f"its features: {', '.join(model_features)}"
        )
    return tuple(mapping.get(feature, feature) for feature in model_features)


# What a label counted as positive before models carried their detector's positive values (and still
# does for a model card without them): a non-zero number, true, or one of these strings.
_LEGACY_POSITIVE_TEXT = frozenset({"1", "true", "yes", "fraud"})


class LabelRule:
    """Whether a point's label is positive, by the detector's positive values (from the model card).

    The same comparison as training's (tickguard.data.dataset): numbers compare as numbers (1 = 1.0,
    also when the field holds the number as a string), strings exactly, booleans as true/false (a
    string field in any case). None = the point has no label field (no tp/fp/fn/tn for it).
    """

    def __init__(self, positive: tuple | list | None) -> None:
        self.positive = None if positive is None else tuple(positive)
        values = self.positive or ()
        self.numbers = frozenset(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))
        self.strings = frozenset(v for v in values if isinstance(v, str))
        self.bools = frozenset(v for v in values if isinstance(v, bool))
        self.bool_text = frozenset(str(v).lower() for v in self.bools)

    @classmethod
    def from_card(cls, card: dict) -> LabelRule:
        """The rule of a model card's detector (`detector.label.positive`); the legacy rule without one."""
        detector = card.get("detector")
        label = detector.get("label") if isinstance(detector, dict) else None
        positive = label.get("positive") if isinstance(label, dict) else None
        return cls(positive if isinstance(positive, list) and positive else None)

    def describe(self) -> str:
        """For log lines: the positive values, or the legacy rule."""
        if self.positive is None:
            return "non-zero / true (the model card names no positive values)"
        return ", ".join(map(repr, self.positive))

    def value(self, point: pb.Point, name: str) -> bool | None:
        """The label of `point` (field `name`) as positive/negative, None when the point lacks it."""
        if self.positive is None:
            return self._legacy(point, name)
        value = point.fieldsInt.get(name)  # the usual place (`Class=0i`); .get() does not insert a default
        if value is not None:
            return value in self.numbers
        if name in point.fieldsDouble:
            return point.fieldsDouble[name] in self.numbers
        if name in point.fieldsBool:
            return point.fieldsBool[name] in self.bools
        if name in point.fieldsString:
            text = point.fieldsString[name]
            if text in self.strings:
                return True
            stripped = text.strip()
            if stripped.lower() in self.bool_text:
                return True
            if self.numbers:
                try:
                    return float(stripped) in self.numbers
                except ValueError:
                    return False
            return False
        return None

    @staticmethod
    def _legacy(point: pb.Point, name: str) -> bool | None:
        value = point.fieldsInt.get(name)
        if value is not None:
            return value != 0
        if name in point.fieldsDouble:
            return point.fieldsDouble[name] != 0.0
        if name in point.fieldsBool:
            return point.fieldsBool[name]
        if name in point.fieldsString:
            return point.fieldsString[name].strip().lower() in _LEGACY_POSITIVE_TEXT
        return None
