"""The scored point: what the agent adds to a point, with which types, and which input fields stay.

One home for that contract. The agent writes these fields, backfill must write the very same ones
(a backfilled point equals a live one), and the tasks, alerts and dashboards read them; a name or a
type defined twice would let them drift apart. The rules for a detector's scored points (which
fields a lean point keeps, how the flag avoids the label's name) are here too, so the rendered score
task and a backfill of it agree.

The field-list grammar of the `@tickguard()` options lives here as well (`.fields('feature=field,...')`,
`.keep('a,b')`, TICKGUARD_UDF_KEEP_FIELDS): backfill reads a live task's options with the same parser.

    item    = name | name "=" name          (model feature = point field; a bare name maps to itself)
    list    = item ("," item)*
    name    = bare | quoted
    bare    = any characters but , = "      (whitespace around it is dropped, inside it is kept)
    quoted  = '"' (any character; "" for a double quote) '"'    (kept exactly, spaces included)

So `amount=Amount, "card, holder"=holder` maps feature `amount` to field `Amount` and feature
`card, holder` to field `holder`. Double quotes were chosen over backslashes because a backslash is
itself special in TICKscript strings and in line protocol. `format_names`/`format_field_map` write the
shortest text that parses back to the same names.

Standard library only: the backfill command, the dashboards and the generator import it without the
agent's protocol bindings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickguard.detectors.spec import DetectorSpec

# ---- the fields the agent adds, and their InfluxDB types ------------------------------------------

SCORE_FIELD = "score"  # float: the model's score (the name is a task option: .scoreField())
FLAG_FIELD = "anomaly"  # bool: score >= threshold (.flagField())
FLAG_FIELD_BESIDE_LABEL = "flagged"  # the flag's name in a detector whose label is called `anomaly`
SCORED = "scored"  # bool: false when the point could not be scored
ERROR = "error"  # string: why the point is unscored (only on unscored points)
MODEL_VERSION = "model_version"  # string
THRESHOLD = "threshold"  # float: the threshold the flag used (the task's .threshold() or the service's)
LATENCY_MS = "latency_ms"  # float: from the point's arrival at the agent to its score
CONFUSION = ("tp", "fp", "fn", "tn")  # int 0/1 each: only when the task has a label field
BACKFILLED = "backfilled"  # bool: written by `tickguard backfill`, never by the agent
# Windowed detectors (a `[windows]` table, tickguard.windows): the range the point's series makes expected,
# centre -/+ k * spread of the declared rolling window. Float, on scored points whose detector declares
# `expected_range`. An unscored point's `error` is then also `warming up` (its window is not full yet) or
# `out of order` (older than everything its series keeps): tickguard.windows' statuses.
EXPECTED_LOW = "expected_low"
EXPECTED_HIGH = "expected_high"
LATE = "late"  # bool, true on a windowed detector's scored point that arrived after a newer one of its series

# Names the agent (or backfill) writes itself; no option may rename the score, flag or label onto one.
RESERVED_OUTPUT_FIELDS = (
    SCORED,
    ERROR,
    MODEL_VERSION,
    THRESHOLD,
    LATENCY_MS,
    *CONFUSION,
    BACKFILLED,
    EXPECTED_LOW,
    EXPECTED_HIGH,
    LATE,
)

FLOAT, BOOL, STRING, INT = "float", "boolean", "string", "integer"  # InfluxDB's names of field types


def added_field_types(
    score_field: str = SCORE_FIELD,
    flag_field: str = FLAG_FIELD,
    labelled: bool = True,
    expected_range: bool = False,
) -> dict[str, str]:
    """Field -> InfluxDB type of every field a scored point gets on top of its input fields
    (`expected_range`: the detector declares one, tickguard.windows).

    An unscored point has only `latency_ms`, `scored` (false) and `error` of these.
    """
    types = {
        score_field: FLOAT,
        flag_field: BOOL,
        SCORED: BOOL,
        MODEL_VERSION: STRING,
        THRESHOLD: FLOAT,
        LATENCY_MS: FLOAT,
    }
    if labelled:
        types.update(dict.fromkeys(CONFUSION, INT))
    if expected_range:
        types.update(dict.fromkeys((EXPECTED_LOW, EXPECTED_HIGH), FLOAT))
    return types


UNSCORED_FIELD_TYPES = {LATENCY_MS: FLOAT, SCORED: BOOL, ERROR: STRING}

# ---- output shapes -------------------------------------------------------------------------------

OUTPUT_FULL = "full"  # the input point (tags and every field) plus the agent's fields
OUTPUT_LEAN = "lean"  # tags, string/bool input fields (txid), `keep` numeric fields and the agent's fields
OUTPUTS = (OUTPUT_FULL, OUTPUT_LEAN)
DEFAULT_OUTPUT = OUTPUT_LEAN
# The fraud detector's kept numeric fields: Amount (fraud_alert's message, the dashboards), Class (notebook 06).
DEFAULT_KEEP_FIELDS = ("Amount", "Class")
DEFAULT_LABEL_FIELD = "Class"


def lean_keeps(value: object, name: str, keep: Iterable[str]) -> bool:
    """Whether a lean point keeps input field `name` holding `value`: strings and booleans always,
    numbers only when named in `keep`."""
    return isinstance(value, str | bool) or name in keep


def output_shape(env: Mapping[str, str] | None = None) -> tuple[str, tuple[str, ...]]:
    """(TICKGUARD_UDF_OUTPUT, TICKGUARD_UDF_KEEP_FIELDS): the default shape, shared by agent and backfill.

    Keep unset: DEFAULT_KEEP_FIELDS; set but empty: none.
    """
    env = os.environ if env is None else env
    output = env.get("TICKGUARD_UDF_OUTPUT") or DEFAULT_OUTPUT
    keep = env.get("TICKGUARD_UDF_KEEP_FIELDS")
    return output, DEFAULT_KEEP_FIELDS if keep is None else parse_names(keep)


@dataclass(frozen=True)
class ScoredSchema:
    """What one detector's score task writes: where, under which names, keeping which input fields."""

    measurement: str
    score_field: str
    flag_field: str
    label_field: str  # '' = the detector has no label: no tp/fp/fn/tn
    keep_fields: tuple[str, ...]  # input fields a lean point keeps: id, display fields and the label
    output: str = DEFAULT_OUTPUT
    expected_range: bool = False  # scored points carry expected_low / expected_high

    def field_types(self) -> dict[str, str]:
        """The agent's fields of a scored point of this detector, with their types."""
        return added_field_types(
            self.score_field, self.flag_field, bool(self.label_field), self.expected_range
        )


def schema_for(spec: DetectorSpec) -> ScoredSchema:
    """The scored-point schema of a detector: its output measurement, the flag renamed when the label is
    called like the default flag (it would overwrite the label), and id + display + label fields kept.

    A windowed detector also keeps its value fields (a dashboard draws the series with its expected range
    from the scored measurement alone), and declares expected_low / expected_high when it has a range."""
    label = spec.label.field if spec.label is not None else ""
    flag = FLAG_FIELD_BESIDE_LABEL if label == FLAG_FIELD else FLAG_FIELD
    windows = spec.windows
    values = spec.feature_fields if windows is not None else ()
    kept: list[str] = []
    for name in (spec.output.id_field, *spec.output.display_fields, label, *values):
        if name and name not in kept:
            kept.append(name)
    return ScoredSchema(
        spec.output.measurement,
        SCORE_FIELD,
        flag,
        label,
        tuple(kept),
        expected_range=windows is not None and windows.expected_range is not None,
    )


# ---- the field-list grammar ------------------------------------------------------------------------


class FieldListError(ValueError):
    """A field list does not follow the grammar; the message says where."""


_SPECIAL = ',="'


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens: ("name", n), (",", ","), ("=", "=")."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in ",=":
            tokens.append((char, char))
            i += 1
        elif char.isspace():
            i += 1
        elif char == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise FieldListError(f"unclosed double quote in {text!r}")
                if text[i] == '"':
                    if i + 1 < n and text[i + 1] == '"':
                        chars.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                chars.append(text[i])
                i += 1
            tokens.append(("name", "".join(chars)))
        else:
            start = i
            while i < n and text[i] not in _SPECIAL:
                i += 1
            if i < n and text[i] == '"':
                raise FieldListError(
                    f'a double quote inside a name in {text!r}: quote the whole name ("a ""b""")'
                )
            tokens.append(("name", text[start:i].strip()))
    return tokens


def _items(text: str) -> list[list[str]]:
    """The items of a list, each as its names: [name] or [feature, field]."""
    items: list[list[str]] = []
    current: list[str] = []
    expect_name = True
    for kind, value in _tokens(text):
        if kind == "name":
            if not expect_name:
                raise FieldListError(f"missing ',' or '=' before {value!r} in {text!r}")
            if not value:
                raise FieldListError(f"an empty name in {text!r}")
            current.append(value)
            expect_name = False
        elif kind == "=":
            if expect_name or len(current) != 1:
                raise FieldListError(f"'=' must stand between two names in {text!r}")
            expect_name = True
        else:  # ","
            if expect_name:
                raise FieldListError(f"an empty name in {text!r}")
            items.append(current)
            current, expect_name = [], True
    if current and not expect_name:
        items.append(current)
    elif current or items:
        raise FieldListError(f"the list {text!r} ends without a name")
    return items


def parse_names(text: str) -> tuple[str, ...]:
    """A list of names ('' = none): `Amount, "card, holder"` -> ('Amount', 'card, holder')."""
    names = []
    for item in _items(text):
        if len(item) != 1:
            raise FieldListError(f"'=' is not allowed in a list of names: {text!r}")
        names.append(item[0])
    return tuple(names)


def parse_field_map(text: str) -> tuple[tuple[str, str], ...]:
    """(model feature, point field) pairs of `feature=field, name, ...` (a bare name maps to itself)."""
    return tuple((item[0], item[-1]) for item in _items(text))


def format_name(name: str) -> str:
    """A name as the grammar writes it: bare when that reads back the same, else double-quoted."""
    if name and name == name.strip() and not any(char in _SPECIAL for char in name):
        return name
    return '"' + name.replace('"', '""') + '"'


def format_names(names: Iterable[str]) -> str:
    """The text of a list of names (parse_names reads it back)."""
    return ",".join(format_name(name) for name in names)


def format_field_map(pairs: Iterable[tuple[str, str]]) -> str:
    """The text of (feature, field) pairs; a feature read from its own name is written once."""
    return ",".join(
        format_name(feature) if feature == field else f"{format_name(feature)}={format_name(field)}"
        for feature, field in pairs
    )
