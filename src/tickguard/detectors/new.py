"""`tickguard detectors new`: write a detector file from a CSV's header or a measurement's field keys.

A user with a labelled CSV or a live measurement should get a valid detector without learning the
format first: every numeric column (or float/integer field) other than the label, id and time becomes a
feature, and the result is validated by the same parser as any hand-written file before it is written,
so what `new` writes always loads. Names with spaces, quotes or dots are written as quoted TOML keys and
strings; tomllib reads them back unchanged.

Standard library only, except the InfluxDB path, which reaches the server through tickguard.influx.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tickguard.detectors.spec import (
    NAME_PATTERN,
    SUFFIX,
    DetectorError,
    DetectorSpec,
    parse_detector,
)

DEFAULT_TARGET_PRECISION = 0.90
# How `new` declares data without a time column (and says so in the description).
SYNTHETIC_STEP_SECONDS = 1
INFLUX_TIME_COLUMN = "time"  # what InfluxQL calls a point's timestamp (RFC 3339 in CSV exports)


@dataclass
class Draft:
    """What a new detector declares, before it is rendered as TOML and validated."""

    name: str
    description: str
    database: str
    measurement: str
    features: list[str]
    label: str
    positive: list[int | float | str | bool]
    time_column: str = ""
    time_unit: str = "s"
    id_field: str | None = None
    retention_policy: str = "autogen"
    tags: dict[str, str] = field(default_factory=dict)
    csv: str | None = None
    skipped: list[str] = field(default_factory=list)  # columns left out, reported to the user


# ------------------------------------------------------------------------------------------ TOML output


def toml_string(text: str) -> str:
    """A TOML basic string: backslash, quote and control characters escaped."""
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted key."""
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else toml_string(key)


def toml_value(value: int | float | str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    return repr(value)


def render(draft: Draft) -> str:
    """The detector file's text."""
    lines = [
        "# Written by `tickguard detectors new`; check it with `tickguard detectors validate` after editing.",
        f"name = {toml_string(draft.name)}",
        f"description = {toml_string(draft.description)}",
        "",
        "# The model's inputs, in order (a string = the field as is; { field = ..., transform = ... } for",
        "# log1p or hour_of_day).",
        "features = [",
        *(f"  {toml_string(name)}," for name in draft.features),
        "]",
        "",
        "[source]",
        f"database = {toml_string(draft.database)}",
        f"retention_policy = {toml_string(draft.retention_policy)}",
        f"measurement = {toml_string(draft.measurement)}",
        "tags = {"
        + ", ".join(f"{toml_key(k)} = {toml_string(v)}" for k, v in sorted(draft.tags.items()))
        + "}",
        "",
    ]
    if draft.csv is not None:
        lines += ["[data]", f"csv = {toml_string(draft.csv)}", ""]
    lines += ["[time]", f"column = {toml_string(draft.time_column)}"]
    if draft.time_column:
        lines.append(f"unit = {toml_string(draft.time_unit)}")
    else:
        lines.append(f"synthetic_step_seconds = {SYNTHETIC_STEP_SECONDS}")
    lines += [
        "",
        "[label]",
        f"field = {toml_string(draft.label)}",
        f"positive = [{', '.join(toml_value(v) for v in draft.positive)}]",
        "",
        "[output]",
        f"measurement = {toml_string(draft.measurement + '_scored')}",
    ]
    if draft.id_field:
        lines.append(f"id_field = {toml_string(draft.id_field)}")
    lines += [
        "display_fields = []",
        "",
        "[model]",
        f"name = {toml_string(draft.name)}",
        "",
        "[threshold]",
        'policy = "precision"',
        f"target = {DEFAULT_TARGET_PRECISION}",
        "",
    ]
    return "\n".join(lines)


def write_detector(draft: Draft, out: Path, force: bool = False) -> DetectorSpec:
    """Validate the draft as the loader will, then write it; an existing file needs `force`."""
    text = render(draft)
    spec = parse_detector(text, str(out), out.resolve(), expected_name=out.stem)
    if spec.feature_fields != tuple(draft.features) or (spec.label and spec.label.field != draft.label):
        raise DetectorError(
            f"{out}: field names did not survive the TOML round trip"
        )  # a bug, not user error
    if out.exists() and not force:
        raise DetectorError(f"{out} exists: use --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return spec


def default_out(name: str, dirs: Sequence[Path]) -> Path:
    """detectors/<name>.toml in the first detectors folder (TICKGUARD_DETECTORS_DIR when set)."""
    return dirs[0] / f"{name}{SUFFIX}"


def check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise DetectorError(f"{name!r} is not a detector name: use lower-case letters, digits, '_' and '-'")


# ------------------------------------------------------------------------------------------ from a CSV


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def typed_positive(values: Iterable[str], seen: set[str], column: str) -> list[int | float | str | bool]:
    """The --positive values typed like the label column: numbers when it holds numbers, booleans when it
    holds true/false, else strings; each must occur in the column (a typo would make every row negative)."""
    out: list[int | float | str | bool] = []
    numeric = all(_number(v) is not None for v in seen)
    boolean = {v.lower() for v in seen} <= {"true", "false"}
    for text in values:
        if numeric and _number(text) is not None:
            value = _number(text)
            occurs = any(_number(v) == value for v in seen)
            out.append(int(value) if value.is_integer() else value)
        elif boolean and text.lower() in {"true", "false"}:
            occurs = text.lower() in {v.lower() for v in seen}
            out.append(text.lower() == "true")
        else:
            occurs = text in seen
            out.append(text)
        if not occurs:
            shown = ", ".join(sorted(seen)[:10]) + (", ..." if len(seen) > 10 else "")
            raise DetectorError(f"label column {column!r} has no value {text!r} (values seen: {shown})")
    return out


def draft_from_csv(
    name: str,
    csv_path: Path,
    label: str,
    positive: Sequence[str],
    *,
    time_column: str = "",
    time_unit: str | None = None,
    id_column: str | None = None,
    database: str | None = None,
    measurement: str | None = None,
) -> Draft:
    """A draft from a CSV: its header, which columns hold only numbers, and the label's values."""
    try:
        with open(csv_path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DetectorError(f"{csv_path}: empty file (no header)")
            repeated = sorted({c for c in header if header.count(c) > 1})
            if repeated:
                raise DetectorError(f"{csv_path}: repeated columns: {', '.join(repeated)}")
            numeric = dict.fromkeys(header, True)
            labels: set[str] = set()
            times_ok = True
            rows = 0
            for row_number, row in enumerate(reader, start=1):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DetectorError(
                        f"{csv_path}: data row {row_number} has {len(row)} values, the header {len(header)}"
                    )
                rows += 1
                record = dict(zip(header, row, strict=True))
                for column, value in record.items():
                    if numeric[column] and value != "" and _number(value) is None:
                        numeric[column] = False
                if label in record:
                    labels.add(record[label])
                if time_column in record and times_ok and time_unit is None:
                    times_ok = _number(record[time_column]) is not None or _is_time(record[time_column])
    except OSError as exc:
        raise DetectorError(f"{csv_path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DetectorError(f"{csv_path}: not UTF-8 text ({exc.reason})") from None
    for role, column in (("--label", label), ("--time", time_column), ("--id", id_column)):
        if column and column not in header:
            raise DetectorError(f"{csv_path}: no column {column!r} for {role} (columns: {', '.join(header)})")
    if rows == 0:
        raise DetectorError(f"{csv_path}: no data rows")
    if time_column and time_unit is None:
        if not times_ok:
            raise DetectorError(
                f"{csv_path}: column {time_column!r} holds neither numbers nor RFC 3339 times"
            )
        time_unit = "s" if numeric[time_column] else "rfc3339"
    reserved = {label, time_column, id_column or ""}
    features = [c for c in header if c not in reserved and numeric[c]]
    skipped = [c for c in header if c not in reserved and not numeric[c]]
    if not features:
        raise DetectorError(
            f"{csv_path}: no numeric column besides the label, time and id to use as a feature"
        )
    when = (
        f"rows ordered by {time_column!r}"
        if time_column
        else f"no timestamp: tickguard gives it one, one row every {SYNTHETIC_STEP_SECONDS} s in file order"
    )
    return Draft(
        name=name,
        description=f"From {csv_path.name}: {rows} rows, {len(features)} features, label {label!r}; {when}.",
        database=database or name,
        measurement=measurement or name,
        features=features,
        label=label,
        positive=typed_positive(positive, labels, label),
        time_column=time_column,
        time_unit=time_unit or "s",
        id_field=id_column,
        csv=str(csv_path.resolve()),
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------ from InfluxDB


def draft_from_field_types(
    name: str,
    field_types: Mapping[str, str],
    *,
    database: str,
    measurement: str,
    label: str,
    positive: Sequence[str] = (),
    id_field: str | None = None,
    retention_policy: str = "autogen",
    tags: Mapping[str, str] | None = None,
) -> Draft:
    """A draft from a measurement's field keys ({field: float|integer|string|boolean})."""
    if not field_types:
        raise DetectorError(
            f"measurement {measurement!r} in database {database!r} has no fields (no points yet?)"
        )
    if label not in field_types:
        raise DetectorError(
            f"measurement {measurement!r} has no field {label!r} for --label (fields: {', '.join(sorted(field_types))})"
        )
    kind = field_types[label]
    if positive:
        values: list[int | float | str | bool] = []
        for text in positive:
            if kind in ("float", "integer"):
                number = _number(text)
                if number is None:
                    raise DetectorError(f"--positive {text!r}: field {label!r} holds numbers ({kind})")
                values.append(int(number) if number.is_integer() else number)
            elif kind == "boolean":
                if text.lower() not in ("true", "false"):
                    raise DetectorError(f"--positive {text!r}: field {label!r} holds true/false")
                values.append(text.lower() == "true")
            else:
                values.append(text)
    elif kind == "boolean":
        values = [True]
    elif kind in ("float", "integer"):
        values = [1]
    else:
        raise DetectorError(f"field {label!r} holds strings: say which are anomalous with --positive")
    reserved = {label, id_field or ""}
    features = [f for f, k in field_types.items() if f not in reserved and k in ("float", "integer")]
    skipped = [f for f, k in field_types.items() if f not in reserved and k not in ("float", "integer")]
    if not features:
        raise DetectorError(
            f"measurement {measurement!r} has no numeric field besides the label to use as a feature"
        )
    return Draft(
        name=name,
        description=(
            f"From {database}.{retention_policy}.{measurement}: {len(features)} numeric fields, label {label!r};"
            " rows ordered by the points' time."
        ),
        database=database,
        measurement=measurement,
        features=features,
        label=label,
        positive=values,
        time_column=INFLUX_TIME_COLUMN,
        time_unit="rfc3339",
        id_field=id_field,
        retention_policy=retention_policy,
        tags=dict(tags or {}),
        skipped=skipped,
    )


def influx_field_types(
    url: str, database: str, measurement: str, username: str = "", password: str = ""
) -> dict:
    """SHOW FIELD KEYS of a measurement on a live InfluxDB, in the server's order."""
    try:
        import requests  # noqa: F401  (the client's transport, from the agent extra)
    except ImportError as exc:
        from tickguard.cli import extras_hint

        raise DetectorError(extras_hint("detectors new --influx-url", ["agent"])) from exc
    from tickguard.influx import InfluxClient

    with InfluxClient(url, username=username, password=password, retries=1, timeout_s=15) as client:
        return client.field_types(measurement, database=database)


def report(spec: DetectorSpec, draft: Draft, out: Path) -> None:
    print(
        f"wrote {out}: {len(spec.features)} features, label {draft.label!r} positive {list(draft.positive)}"
    )
    if draft.skipped:
        print(f"not numeric, left out: {', '.join(draft.skipped)}", file=sys.stderr)
