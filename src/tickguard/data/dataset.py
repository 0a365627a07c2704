"""Loading, validating and splitting a detector's data set (the public data API).

`load_detector_frame(spec)` reads any detector's CSV: features as numbers, the label as 0/1 by the
detector's positive values, rows in time order with their elapsed seconds. `load_dataset()` is the
credit-card set's fast path (a parsed-array cache) for the callers that predate detectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tickguard.data.config import data_settings
from tickguard.data.schema import COLUMNS, FEATURES, TARGET, DataSchemaError, check_columns, read_header
from tickguard.detectors import DetectorSpec, load_detector
from tickguard.errors import TickguardError

EXPECTED_ROWS = 284_807
EXPECTED_FRAUDS = 492
TRAIN_FRACTION = 0.8
RANDOM_STATE = 42
# The column load_detector_frame adds: seconds since the earliest row, whatever the detector's time unit
# (a synthetic one row per step when the data has no timestamp). Splits and replays order by it.
ELAPSED = "_elapsed_s"
_UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

SPLIT_DEFINITION = {
    "time": (
        "rows in file order (sorted by Time); training = the first int(0.8 * n) rows, "
        "holdout = the remaining rows (the last 20%)"
    ),
    "stratified": "sklearn train_test_split(test_size=0.2, stratify=Class, random_state=42)",
}


def default_csv_path() -> Path:
    """Where `tickguard data fetch` puts creditcard.csv."""
    return data_settings().csv_path


def _cache_path(csv_path: Path) -> Path:
    """A parsed-array cache beside data/raw (in data/processed), keyed on the CSV's size and mtime."""
    st = csv_path.stat()
    return csv_path.parent.parent / "processed" / f"{csv_path.stem}.{st.st_size}.{st.st_mtime_ns}.npy"


def load_dataset(path: Path | str | None = None) -> pd.DataFrame:
    """Load creditcard.csv (default: data/raw/), check its schema and return it in file order.

    The parsed, validated array is cached in data/processed/ (gitignored): parsing 144 MB of CSV
    takes seconds, loading the array a fraction of one.
    """
    path = Path(path) if path is not None else default_csv_path()
    if not path.is_file():
        raise TickguardError(
            f"{path} not found: run `tickguard data fetch` (or put Kaggle's creditcard.csv there)"
        )
    check_columns(read_header(path), str(path))
    cache = _cache_path(path)
    if cache.is_file():
        try:
            return _frame(np.load(cache))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    df = _read_csv(path)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache.parent.glob(f"{path.stem}.*.npy"):
            stale.unlink()
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, df.to_numpy(dtype=np.float64))
        tmp.replace(cache)
    except OSError:
        pass  # caching is an optimisation; a read-only tree still works
    return df


def _frame(values: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame(values, columns=list(COLUMNS))
    df[TARGET] = df[TARGET].astype(np.int64)
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    dtypes = {name: np.float64 for name in FEATURES} | {TARGET: np.float64}
    df = pd.read_csv(path, dtype=dtypes)
    nan_cols = [c for c in COLUMNS if df[c].isna().any()]
    if nan_cols:
        first = int(df[nan_cols].isna().any(axis=1).to_numpy().argmax())
        raise DataSchemaError(
            f"{path}: missing values in {', '.join(nan_cols)} (first at data row {first + 1})"
        )
    bad = ~df[TARGET].isin([0, 1])
    if bad.any():
        raise DataSchemaError(f"{path}: Class must be 0 or 1 (data row {int(bad.to_numpy().argmax()) + 1})")
    df = df[list(COLUMNS)]
    df[TARGET] = df[TARGET].astype(np.int64)
    return df


def load_detector_frame(
    spec: DetectorSpec | str | None = None, path: Path | str | None = None
) -> pd.DataFrame:
    """A detector's CSV (default: its file in data/raw) as a frame in time order, checked row by row.

    Columns: the CSV's declared columns in file order, features as float64, the label (when the detector
    has one) as 0/1 int64 by its positive values, plus ELAPSED (float seconds since the earliest row).
    A missing or non-numeric value is refused naming the column and the data row (1 = first after the header).
    """
    spec = spec if isinstance(spec, DetectorSpec) else load_detector(spec)
    path = Path(path) if path is not None else data_settings().csv_for(spec)
    if not path.is_file():
        how = (
            f"run `tickguard data fetch --detector {spec.name}`"
            if spec.data.fetch
            else "put the detector's CSV there"
        )
        raise TickguardError(f"{path} not found: {how}")
    header = read_header(path)
    check_columns(header, str(path), spec)
    label = spec.label.field if spec.label else None
    text_columns = {name: str for name in (label, spec.time.column) if name} | {
        name: str for name in (spec.output.id_field or "", *spec.output.display_fields) if name
    }
    for name in (*spec.feature_fields, *(c for c in list(text_columns) if c not in header)):
        text_columns.pop(name, None)  # a displayed feature (Amount) is still a number; txid may be absent
    df = pd.read_csv(path, dtype=text_columns)
    if df.empty:
        raise DataSchemaError(f"{path}: no data rows")
    for name in spec.feature_fields:
        df[name] = _numeric_column(df[name], name, path)
    if label is not None:
        df[label] = _label_column(df[label], spec, path)
    df[ELAPSED] = _elapsed_seconds(df, spec, path)
    if not df[ELAPSED].is_monotonic_increasing:
        df = df.sort_values(ELAPSED, kind="stable")
    return df.reset_index(drop=True)


def _first_row(mask: pd.Series) -> int:
    return int(mask.to_numpy().argmax()) + 1


def _numeric_column(values: pd.Series, name: str, path: Path) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce") if values.dtype == object else values
    numbers = numbers.astype(np.float64)
    bad = ~np.isfinite(numbers.to_numpy())
    if bad.any():
        row = int(bad.argmax())
        raw = values.iloc[row]
        what = "missing value" if pd.isna(raw) else f"not a finite number: {raw!r}"
        raise DataSchemaError(f"{path}: column {name!r}, data row {row + 1}: {what}")
    return numbers


def _label_column(values: pd.Series, spec: DetectorSpec, path: Path) -> pd.Series:
    """0/1 by the detector's positive values: numbers compare as numbers (1 = 1.0), strings exactly,
    booleans as true/false (any case)."""
    name = spec.label.field
    missing = values.isna()
    if missing.any():
        raise DataSchemaError(f"{path}: column {name!r}, data row {_first_row(missing)}: missing label")
    text = values.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    positive = pd.Series(False, index=values.index)
    for value in spec.label.positive:
        if isinstance(value, bool):
            positive |= text.str.lower() == str(value).lower()
        elif isinstance(value, str):
            positive |= values == value
        else:
            positive |= numbers == value
    return positive.astype(np.int64)


def _elapsed_seconds(df: pd.DataFrame, spec: DetectorSpec, path: Path) -> pd.Series:
    column = spec.time.column
    if not column:
        return pd.Series(
            np.arange(len(df), dtype=np.float64) * spec.time.synthetic_step_seconds, index=df.index
        )
    raw = df[column]
    if spec.time.unit == "rfc3339":
        stamps = pd.to_datetime(raw, utc=True, format="ISO8601", errors="coerce")
        bad = stamps.isna()
        if bad.any():
            row = _first_row(bad)
            raise DataSchemaError(
                f"{path}: column {column!r}, data row {row}: not an RFC 3339 time: {raw.iloc[row - 1]!r}"
            )
        return (stamps - stamps.min()).dt.total_seconds().astype(np.float64)
    numbers = df[column] if column in spec.feature_fields else _numeric_column(raw, column, path)
    return (numbers - numbers.min()) * _UNIT_SECONDS[spec.time.unit]


def time_split(df: pd.DataFrame, train_fraction: float = TRAIN_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed time-ordered split: first int(0.8 * n) rows in file order for training, the rest held out."""
    cut = int(train_fraction * len(df))
    return df.iloc[:cut], df.iloc[cut:]


def stratified_split(
    df: pd.DataFrame,
    test_size: float = 1 - TRAIN_FRACTION,
    random_state: int = RANDOM_STATE,
    label: str = TARGET,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified random 80/20 split (random_state=42) by the 0/1 `label` column, for comparison with
    published results."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=test_size, stratify=df[label], random_state=random_state)
    return train, test


def features_and_target(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """X (float array, columns in FEATURES order) and y (0/1 int array) from a data frame."""
    return df[list(FEATURES)].to_numpy(dtype=np.float64), df[TARGET].to_numpy(dtype=np.int64)
