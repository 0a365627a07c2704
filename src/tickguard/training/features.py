"""Feature preprocessing that lives inside the pickled pipeline (so serving needs only the raw columns)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

SECONDS_PER_DAY = 86_400.0


class FraudFeatures(TransformerMixin, BaseEstimator):
    """Raw [Time, V1..V28, Amount] -> [hour-of-day sin/cos, V1..V28, log1p(Amount)].

    `Time` counts seconds from the first transaction, so its raw value only grows: a model trained
    on the first 80% of rows would see unseen values on the holdout. The time of day is what carries
    over; it is encoded on a circle so 23:59 and 00:00 are neighbours. Amount is heavy-tailed, hence log.
    """

    def fit(self, X, y=None):
        """Stateless: nothing to learn."""
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        """Apply the fixed encodings."""
        X = np.asarray(X, dtype=np.float64)
        angle = (X[:, 0] % SECONDS_PER_DAY) * (2.0 * np.pi / SECONDS_PER_DAY)
        amount = np.log1p(np.clip(X[:, -1], 0.0, None))
        return np.column_stack([np.sin(angle), np.cos(angle), X[:, 1:-1], amount])
