"""Unsupervised anomaly models over window features, servable like the supervised ones.

An unlabelled detector's model reads the window columns (`DetectorSpec.model_columns`, computed by
tickguard.windows) and answers `predict_proba(X)[:, 1]`, a score in [0, 1] that grows with how unusual a
point is; the model card's threshold (from the declared contamination or alert rate) turns it into a
flag. The model service loads these classes from the pickle, so this module needs only numpy and
scikit-learn (the `serve` extra); training and tuning live in tickguard.training.unsupervised.

Each model first turns the window columns into *evidence* columns, one per thing that can go wrong, all
measured on the training points' scale:

- `level`: distance of the value from a rolling window's centre, in that window's spread (median/MAD
  when the window has them, else mean/std) - spikes and the start of a level shift;
- `season`: the seasonal difference against its usual size - a broken daily/weekly pattern, shifts;
- `step`: a lag difference against its usual size, but no larger than the value's distance from its
  rolling centre (the point after a spike is ordinary) - spikes, variance bursts;
- `flat`: how far a window's spread has collapsed below its usual size - a stuck sensor;
- `burst`: how far a window's spread has grown above its usual size - a variance burst;
- `profile` (when the calendar columns give the phase of a daily or yearly season: hour_of_day,
  month_of_year): how far the value's offset from its rolling centre is from the usual offset at this
  hour or month, learned at fit - a seasonal pattern out of phase, whose values all stay in range and
  whose seasonal difference is lost in the jitter when the swing is small.

A seasonal difference whose reference (the value one season back, the `lag` of the season) was itself far
off its rolling centre is discounted: one season after a spike or a burst, the anomaly is the reference.

Season, step and spread scales follow the series' level when it has grown since training (airline
passengers double in a decade) and the level stands well above the jitter (not for returns around 0).

`RobustResidualModel` scores the largest evidence (each scaled by its training median and 90th
percentile, then weighted; profiles keep weight 1, the scale the tuned weights are relative to); `IsolationForestModel` isolates points in the evidence space. Both map the
raw score through an arctangent curve fixed at fit time, so scores are comparable across refits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

EPSILON = 0.05  # share of the value's training spread added to every spread: no division by ~0
MAD_TO_SIGMA = 1.4826
LEVEL_SERIES_RATIO = 5.0  # a level this many jitters above 0 makes scales follow the level
REFERENCE_OK = 3.0  # a seasonal reference this many spreads off its rolling centre is itself unusual
# Calendar columns that give a season's phase, and the number of phases the profile learns.
PHASES = (("hour", 24), ("month", 12))
_COLUMN = re.compile(r"^(?P<stat>[a-z]+?)(?P<span>\d[0-9a-zµ]*)\((?P<field>.*)\)$")


def _phase(sin: np.ndarray, cos: np.ndarray, phases: int) -> np.ndarray:
    """The phase (0 .. phases - 1: the hour, the month - 1) back from a calendar sine and cosine."""
    turns = np.mod(np.arctan2(sin, cos) / (2.0 * np.pi) * phases, phases)
    return np.rint(turns).astype(np.int64) % phases


def _robust_scale(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if not len(values):
        return 1.0
    mad = float(np.median(np.abs(values - np.median(values))))
    return MAD_TO_SIGMA * mad if mad > 0 else float(np.std(values)) or 1.0


class Evidence:
    """Window columns -> evidence columns (see the module docstring); `fit` records training scales."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        index = {name: i for i, name in enumerate(self.columns)}
        self.fields = [c for c in self.columns if "(" not in c and not c.startswith(("hour_", "dow_"))]
        self.plan: list[tuple] = []  # (kind, name, column indices...)
        self.level_columns: dict[int, int | None] = {}  # value column -> a rolling centre column
        for field in self.fields:
            value = index[field]
            windows: dict[str, dict[str, int]] = {}
            for name, i in index.items():
                match = _COLUMN.match(name)
                if not match or match["field"] != field:
                    continue
                stat, span = match["stat"], match["span"]
                if stat == "sdiff":
                    self.plan.append(("season", f"season{span}({field})", value, i))
                elif stat == "diff":
                    self.plan.append(("step", f"step{span}({field})", value, i))
                elif stat in ("mean", "std", "median", "mad", "min", "max"):
                    windows.setdefault(span, {})[stat] = i
            # A difference counts only as far as the value is also off its rolling centre: the point after
            # a spike has a large difference but an ordinary value.
            centres = [stats.get("median", stats.get("mean")) for stats in windows.values()]
            centre_of_field = next((c for c in centres if c is not None), None)
            self.plan = [
                (*step, centre_of_field) if step[0] == "step" and step[2] == value else step
                for step in self.plan
            ]
            self.level_columns[value] = centre_of_field
            # The seasonal difference's reference: the lag of the season, and the first window to tell
            # whether it was off its centre (median/MAD preferred to mean/std).
            reference = None
            for stats in windows.values():
                if "median" in stats and "mad" in stats:
                    reference = (stats["median"], stats["mad"], True)
                    break
                if "mean" in stats and "std" in stats and reference is None:
                    reference = (stats["mean"], stats["std"], False)
            self.plan = [
                (*step, index.get(f"lag{step[1][len('season') :].split('(')[0]}({field})"), reference)
                if step[0] == "season" and step[2] == value
                else step
                for step in self.plan
            ]
            for span, stats in windows.items():
                if "median" in stats and "mad" in stats:
                    centre, spread, robust = stats["median"], stats["mad"], True
                elif "mean" in stats and "std" in stats:
                    centre, spread, robust = stats["mean"], stats["std"], False
                else:
                    centre = spread = None
                if centre is not None:
                    self.plan.append(("level", f"level{span}({field})", value, centre, spread, robust))
                for stat in ("std", "mad"):
                    if stat in stats:
                        self.plan.append(("flat", f"flat{span}({field})", value, stats[stat]))
                        self.plan.append(("burst", f"burst{span}({field})", value, stats[stat]))
                        break
        # A profile per season phase the calendar gives, measured from the field's rolling centre.
        for phase, phases in PHASES:
            if f"{phase}_sin" not in index or f"{phase}_cos" not in index:
                continue
            for field in self.fields:
                centre = self.level_columns.get(index[field])
                if centre is not None:
                    sin, cos = index[f"{phase}_sin"], index[f"{phase}_cos"]
                    self.plan.append(
                        ("profile", f"profile_{phase}({field})", index[field], sin, cos, centre, phases)
                    )
        if not self.plan:
            raise ValueError(f"no evidence can be read from the columns {list(self.columns)}")
        self.names = tuple(step[1] for step in self.plan)

    def fit(self, X: np.ndarray) -> Evidence:
        """Record the training scales: each field's spread, each difference's centre and spread, each
        window spread's median, and each profile (the median offset from the rolling centre per phase)."""
        X = np.asarray(X, dtype=np.float64)
        self.field_scale_ = {}
        self.level_ref_ = {}
        for value, centre in self.level_columns.items():
            level = float(np.median(np.abs(X[:, centre]))) if centre is not None else 0.0
            noise = _robust_scale(np.diff(X[:, value]))
            # Only for series whose level stands well above their jitter (counts, flows), not returns.
            self.level_ref_[value] = level if level > LEVEL_SERIES_RATIO * noise else None
        self.centres_ = []
        self.scales_ = []
        self.pads_ = []
        self.profiles_: dict[int, np.ndarray] = {}  # plan index -> the usual offset at each phase
        for step in self.plan:
            kind, value = step[0], step[2]
            scale = self.field_scale_.setdefault(value, _robust_scale(np.diff(X[:, value])) + 1e-12)
            self.pads_.append(EPSILON * scale)
            if kind == "profile":
                phase = _phase(X[:, step[3]], X[:, step[4]], step[6])
                offset = X[:, value] - X[:, step[5]]
                # A phase the training rows never saw keeps offset 0 (the rolling centre itself).
                profile = np.zeros(step[6])
                for p in range(step[6]):
                    if (phase == p).any():
                        profile[p] = float(np.median(offset[phase == p]))
                self.profiles_[len(self.centres_)] = profile
                self.centres_.append(0.0)
                self.scales_.append(_robust_scale(offset - profile[phase]) + EPSILON * scale)
            elif kind in ("season", "step"):
                column = X[:, step[3]]
                self.centres_.append(float(np.median(column)))
                self.scales_.append(_robust_scale(column) + EPSILON * scale)
            elif kind in ("flat", "burst"):
                self.centres_.append(0.0)
                self.scales_.append(float(np.median(X[:, step[3]])) + EPSILON * scale)
            else:
                self.centres_.append(0.0)
                self.scales_.append(EPSILON * scale)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """One evidence column per plan step (larger = more unusual; about 0-3 on ordinary points)."""
        X = np.asarray(X, dtype=np.float64)
        out = np.empty((X.shape[0], len(self.plan)))
        growth = {}
        for column, reference in self.level_ref_.items():
            centre_column = self.level_columns[column]
            growth[column] = (
                1.0 if reference is None else np.maximum(np.abs(X[:, centre_column]) / reference, 1.0)
            )
        for j, step in enumerate(self.plan):
            kind, value = step[0], X[:, step[2]]
            centre, pad = self.centres_[j], self.pads_[j]
            # Differences and spreads of a series whose level has grown since training grow with it.
            scale = self.scales_[j] * growth.get(step[2], 1.0)
            if kind == "step" and len(step) > 4 and step[4] is not None:
                off_centre = np.abs(value - X[:, step[4]])
                out[:, j] = np.minimum(np.abs(X[:, step[3]] - centre), off_centre) / scale
            elif kind == "profile":
                offset = value - X[:, step[5]]
                usual = self.profiles_[j][_phase(X[:, step[3]], X[:, step[4]], step[6])]
                out[:, j] = np.abs(offset - usual) / scale
            elif kind == "season" and len(step) > 5 and step[4] is not None and step[5] is not None:
                centre_column, spread_column, robust = step[5]
                spread = X[:, spread_column] * (MAD_TO_SIGMA if robust else 1.0)
                reference_off = np.abs(X[:, step[4]] - X[:, centre_column]) / (spread + pad)
                discount = 1.0 + np.maximum(reference_off - REFERENCE_OK, 0.0)
                out[:, j] = np.abs(X[:, step[3]] - centre) / scale / discount
            elif kind in ("season", "step"):
                out[:, j] = np.abs(X[:, step[3]] - centre) / scale
            elif kind == "level":
                spread = X[:, step[4]] * (MAD_TO_SIGMA if step[5] else 1.0)
                out[:, j] = np.abs(value - X[:, step[3]]) / (spread + scale)
            elif kind == "flat":  # scale = the usual spread + pad
                out[:, j] = np.maximum(np.log(scale / (X[:, step[3]] + pad)), 0.0)
            else:  # burst
                out[:, j] = np.maximum(np.log((X[:, step[3]] + pad) / scale), 0.0)
        return out


class _Scored:
    """A raw score mapped into (0, 1) by an arctangent centred on the training median, with the training
    99th percentile at 0.85; `predict_proba` gives [1 - score, score] like a classifier."""

    def _calibrate(self, raw: np.ndarray) -> None:
        self.raw_mid_ = float(np.median(raw))
        spread = float(np.quantile(raw, 0.99)) - self.raw_mid_
        self.raw_scale_ = spread / 2.0 if spread > 0 else 1.0

    def score(self, X: np.ndarray) -> np.ndarray:
        """The anomaly score of each row, in (0, 1)."""
        z = (self._raw(np.asarray(X, dtype=np.float64)) - self.raw_mid_) / self.raw_scale_
        # arctan, not a logistic: it never reaches 1.0 in floats for any real evidence, so large
        # anomalies keep their order (no ties at 1 to blur the ranking).
        return 0.5 + np.arctan(z) / np.pi

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """[[1 - score, score], ...]: the service reads column 1."""
        s = self.score(X)
        return np.column_stack([1.0 - s, s])

    @property
    def n_features_in_(self) -> int:
        return len(self.evidence.columns)


class RobustResidualModel(_Scored):
    """The largest weighted evidence: residuals from robust rolling and seasonal baselines."""

    kind = "robust_zscore"

    def __init__(self, columns: Sequence[str], weights: dict[str, float] | None = None) -> None:
        self.columns = tuple(columns)
        self.weights = dict(weights or {})

    def fit(self, X: np.ndarray, y=None) -> RobustResidualModel:
        """Learn the evidence scales and each evidence's median and 99th percentile on training rows."""
        self.evidence = Evidence(self.columns).fit(X)
        E = self.evidence.transform(X)
        self.mid_ = np.median(E, axis=0)
        # The 90th percentile, not a higher one: real anomalies left in training must not set the scale.
        self.high_ = np.maximum(np.quantile(E, 0.9, axis=0) - self.mid_, 1e-6)
        kinds = [step[0] for step in self.evidence.plan]
        self.w_ = np.array([self.weights.get(kind, 1.0) for kind in kinds])
        self._calibrate(self._raw(X))
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        E = self.evidence.transform(X)
        return np.max((E - self.mid_) / self.high_ * self.w_, axis=1)


class IsolationForestModel(_Scored):
    """scikit-learn's IsolationForest on the evidence columns (deterministic with `seed`)."""

    kind = "isolation_forest"

    def __init__(
        self, columns: Sequence[str], n_estimators: int = 200, max_samples: int | float = 256, seed: int = 0
    ) -> None:
        self.columns = tuple(columns)
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.seed = seed

    def fit(self, X: np.ndarray, y=None) -> IsolationForestModel:
        """Fit the forest on the training rows' evidence."""
        from sklearn.ensemble import IsolationForest

        self.evidence = Evidence(self.columns).fit(X)
        E = self.evidence.transform(X)
        samples = self.max_samples if isinstance(self.max_samples, float) else min(self.max_samples, len(E))
        self.forest_ = IsolationForest(
            n_estimators=self.n_estimators, max_samples=samples, random_state=self.seed, n_jobs=1
        ).fit(E)
        self._calibrate(self._raw(X))
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        return -self.forest_.score_samples(self.evidence.transform(X))


MODELS = {RobustResidualModel.kind: RobustResidualModel, IsolationForestModel.kind: IsolationForestModel}


def threshold_for_share(scores: np.ndarray, share: float) -> float:
    """The threshold that flags about `share` of `scores` (score >= threshold): their (1 - share) quantile."""
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1.0 - share, method="higher"))
