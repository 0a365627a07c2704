"""The columns a detector's CSV must have, and the check that a CSV has them.

Kept apart from `dataset` (pandas) because the light parts need the schema too: `tickguard data fetch`
checks a user-supplied file's header without the numeric stack installed.

The names below are the credit-card set's, for the code that predates detectors; `detectors/fraud.toml`
declares the same columns (tests/code/test_detectors.py holds the two together).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

from tickguard.errors import TickguardError

if TYPE_CHECKING:
    from tickguard.detectors import DetectorSpec

TIME = "Time"
AMOUNT = "Amount"
TARGET = "Class"
PCA_FEATURES: tuple[str, ...] = tuple(f"V{i}" for i in range(1, 29))
# Model inputs, in the column order every model expects (the model card repeats this list).
FEATURES: tuple[str, ...] = (TIME, *PCA_FEATURES, AMOUNT)
COLUMNS: tuple[str, ...] = (*FEATURES, TARGET)


class DataSchemaError(TickguardError):
    """A CSV does not have the columns its detector declares, or a row has a bad value."""


def detector_columns(spec: DetectorSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) columns of a detector's CSV.

    Required: the time column, the features and the label. Optional: the id and display fields, which
    scored points keep when the source has them (the credit-card CSV has no `txid`; the generator adds it).
    """
    required: list[str] = []
    for name in (spec.time.column, *spec.feature_fields, spec.label.field if spec.label else ""):
        if name and name not in required:
            required.append(name)
    optional = [
        name
        for name in (spec.output.id_field or "", *spec.output.display_fields)
        if name and name not in required
    ]
    return tuple(required), tuple(optional)


def check_columns(
    columns: list[str] | tuple[str, ...], source: str = "data", spec: DetectorSpec | None = None
) -> None:
    """Raise DataSchemaError naming the missing and the unexpected columns against `spec` (default: fraud)."""
    if spec is None:
        from tickguard.detectors import load_detector

        spec = load_detector()
    required, optional = detector_columns(spec)
    actual = list(columns)
    missing = [c for c in required if c not in actual]
    extra = [c for c in actual if c not in required and c not in optional]
    duplicated = sorted({c for c in actual if actual.count(c) > 1})
    if missing or extra or duplicated:
        parts = []
        if missing:
            parts.append(f"missing columns: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected columns: {', '.join(extra)}")
        if duplicated:
            parts.append(f"repeated columns: {', '.join(duplicated)}")
        raise DataSchemaError(f"{source} is not the {spec.name} data set ({'; '.join(parts)})")


def read_header(path: Path | str) -> list[str]:
    """The column names from the first line of a CSV file (quoted names may hold commas and quotes)."""
    with open(path, encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh), [])
