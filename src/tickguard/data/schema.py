"""The columns of the credit-card fraud data set and the check that a CSV has them.

Kept apart from `dataset` (pandas) because the light parts need the schema too: `tickguard data fetch`
checks a user-supplied file's header without the numeric stack installed.
"""

from __future__ import annotations

from pathlib import Path

from tickguard.errors import TickguardError

TIME = "Time"
AMOUNT = "Amount"
TARGET = "Class"
PCA_FEATURES: tuple[str, ...] = tuple(f"V{i}" for i in range(1, 29))
# Model inputs, in the column order every model expects (the model card repeats this list).
FEATURES: tuple[str, ...] = (TIME, *PCA_FEATURES, AMOUNT)
COLUMNS: tuple[str, ...] = (*FEATURES, TARGET)


class DataSchemaError(TickguardError):
    """The CSV does not have the columns of the Kaggle credit-card data set."""


def check_columns(columns: list[str] | tuple[str, ...], source: str = "data") -> None:
    """Raise DataSchemaError naming the missing and the unexpected columns, if any."""
    actual = list(columns)
    missing = [c for c in COLUMNS if c not in actual]
    extra = [c for c in actual if c not in COLUMNS]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected columns: {', '.join(extra)}")
        raise DataSchemaError(f"{source} is not the credit-card fraud data set ({'; '.join(parts)})")


def read_header(path: Path | str) -> list[str]:
    """The column names from the first line of a CSV file."""
    with open(path, encoding="utf-8") as fh:
        return [name.strip().strip('"') for name in fh.readline().rstrip("\r\n").split(",")]
