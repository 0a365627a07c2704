"""Loading, validating and splitting the credit-card fraud data set (the public data API)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tickguard.data.config import data_settings
from tickguard.data.schema import COLUMNS, FEATURES, TARGET, DataSchemaError, check_columns, read_header
from tickguard.errors import TickguardError

EXPECTED_ROWS = 284_807
EXPECTED_FRAUDS = 492
TRAIN_FRACTION = 0.8
RANDOM_STATE = 42

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


def time_split(df: pd.DataFrame, train_fraction: float = TRAIN_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fixed time-ordered split: first int(0.8 * n) rows in file order for training, the rest held out."""
    cut = int(train_fraction * len(df))
    return df.iloc[:cut], df.iloc[cut:]


def stratified_split(
    df: pd.DataFrame, test_size: float = 1 - TRAIN_FRACTION, random_state: int = RANDOM_STATE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified random 80/20 split (random_state=42), for comparison with published results."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=test_size, stratify=df[TARGET], random_state=random_state)
    return train, test


def features_and_target(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """X (float array, columns in FEATURES order) and y (0/1 int array) from a data frame."""
    return df[list(FEATURES)].to_numpy(dtype=np.float64), df[TARGET].to_numpy(dtype=np.int64)
