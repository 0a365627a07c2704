"""The feature encodings a detector names, as the first step of every trained pipeline.

Training builds this step and pickles it inside the model; serving (the pipeline itself, or the compiled
scorer that repeats it) applies it to raw fields. Both sides need the same definition, so it lives here
rather than in `tickguard.training`. A detector's `features` list says, field by field, which transform
applies (see tickguard.detectors.spec): `none`, `log1p` (of the value clipped at 0, for heavy-tailed
amounts) or `hour_of_day` (seconds mapped onto a 24-hour circle as sine and cosine, so 23:59 and 00:00 are
neighbours and an ever-growing elapsed-seconds column carries over from training to later rows).

`FraudFeatures` is the credit-card encoding from before detectors existed. Models pickled then refer to
it (as tickguard.training.features.FraudFeatures, still importable there), so it stays, unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from tickguard.detectors import TRANSFORMS  # the names a detector file may use (one list, there)

if TYPE_CHECKING:
    from tickguard.detectors import DetectorSpec

SECONDS_PER_DAY = 86_400.0

# Layouts the compiled scorer's kernel repeats (tickguard.compiled_scorer): every column as is, or
# the credit-card layout (hour_of_day on the first column, log1p on the last, the rest as is).
LAYOUT_IDENTITY = "identity"
LAYOUT_TIME_FIRST_LOG_LAST = "time_first_log_last"


def hour_of_day(seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of the time of day of `seconds` (counted from a midnight)."""
    angle = (seconds % SECONDS_PER_DAY) * (2.0 * np.pi / SECONDS_PER_DAY)
    return np.sin(angle), np.cos(angle)


def clipped_log1p(values: np.ndarray) -> np.ndarray:
    """log1p of the values clipped at 0 (a negative amount is read as 0)."""
    return np.log1p(np.clip(values, 0.0, None))


class DetectorFeatures(TransformerMixin, BaseEstimator):
    """Raw fields in a detector's order -> model columns, by each field's named transform.

    `fields` and `transforms` are parallel tuples (a detector's `features`); the output columns are
    `DetectorSpec.model_columns`. Stateless: fit only records the input width and checks it.
    """

    def __init__(self, fields: tuple[str, ...] = (), transforms: tuple[str, ...] = ()):
        self.fields = fields
        self.transforms = transforms

    @classmethod
    def from_spec(cls, spec: DetectorSpec) -> DetectorFeatures:
        """The encoding a detector's `features` list declares."""
        return cls(
            fields=tuple(f.field for f in spec.features), transforms=tuple(f.transform for f in spec.features)
        )

    def _check(self, width: int) -> None:
        if len(self.fields) != len(self.transforms):
            raise ValueError(f"{len(self.fields)} fields but {len(self.transforms)} transforms")
        unknown = sorted({t for t in self.transforms if t not in TRANSFORMS})
        if unknown:
            raise ValueError(f"unknown transform(s) {unknown} (choose from {', '.join(TRANSFORMS)})")
        if width != len(self.transforms):
            raise ValueError(
                f"expected {len(self.transforms)} columns ({', '.join(self.fields)}), got {width}"
            )

    def fit(self, X, y=None):
        """Nothing to learn; checks the input has one column per declared field."""
        width = np.asarray(X).shape[1]
        self._check(width)
        self.n_features_in_ = width
        return self

    def transform(self, X):
        """Apply each column's transform, in order."""
        X = np.asarray(X, dtype=np.float64)
        self._check(X.shape[1])
        columns = []
        for j, transform in enumerate(self.transforms):
            if transform == "hour_of_day":
                columns.extend(hour_of_day(X[:, j]))
            elif transform == "log1p":
                columns.append(clipped_log1p(X[:, j]))
            else:
                columns.append(X[:, j])
        return np.column_stack(columns) if columns else np.empty((X.shape[0], 0))

    def get_feature_names_out(self, input_features=None):
        """Model column names: hour_sin(f), hour_cos(f), log1p(f) or the field itself."""
        names = []
        for field, transform in zip(self.fields, self.transforms, strict=True):
            if transform == "hour_of_day":
                names += [f"hour_sin({field})", f"hour_cos({field})"]
            elif transform == "log1p":
                names.append(f"log1p({field})")
            else:
                names.append(field)
        return np.asarray(names, dtype=object)

    @property
    def kernel_layout(self) -> str | None:
        """Which of the compiled scorer's fixed layouts this encoding is, or None when it is another."""
        t = tuple(self.transforms)
        if all(x == "none" for x in t):
            return LAYOUT_IDENTITY
        if len(t) >= 2 and t[0] == "hour_of_day" and t[-1] == "log1p" and all(x == "none" for x in t[1:-1]):
            return LAYOUT_TIME_FIRST_LOG_LAST
        return None


class FraudFeatures(TransformerMixin, BaseEstimator):
    """Raw [Time, V1..V28, Amount] -> [hour-of-day sin/cos, V1..V28, log1p(Amount)].

    The credit-card encoding of models trained before detectors existed; `DetectorFeatures` built from
    detectors/fraud.toml computes the same columns (a test holds them together).
    """

    kernel_layout = LAYOUT_TIME_FIRST_LOG_LAST

    def fit(self, X, y=None):
        """Stateless: nothing to learn."""
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        """Apply the fixed encodings."""
        X = np.asarray(X, dtype=np.float64)
        sin, cos = hour_of_day(X[:, 0])
        return np.column_stack([sin, cos, X[:, 1:-1], clipped_log1p(X[:, -1])])
