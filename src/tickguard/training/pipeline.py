"""The model: features -> scaling -> resampling (training only) -> soft-voting ensemble of three learners,
optionally averaged with one bigger tree forest.

The feature step is the detector's own encoding (tickguard.features.DetectorFeatures, from the detector's
`features`); the rest is the same for every detector. Oversampling is asked for RELATIVE to the anomaly
rate each training fold actually has ("three times as many anomalies as observed"), never as an absolute
ratio: an absolute SMOTE ratio of 0.05 is a 25-fold boost for the credit-card set (0.17% frauds) and an
error for a data set that already has 7% anomalies. When anomalies are already common (>= 5%), nothing is
resampled at all.

The optional forest (EXTRA_FORESTS) exists because the learner study (benchmarks/learner_study.py) found
that averaging the tuned ensemble with a large extra-trees or random forest ranked the credit-card
frauds better than any single family; it joins the voting ensemble with the weight of the other three
together, so the score is the plain mean of "tuned ensemble" and "forest". Whether a detector gets one is
decided on validation folds (tuning.choose_extra_forest), never on the holdout.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from imblearn.over_sampling import ADASYN, SMOTE
from imblearn.pipeline import Pipeline
from lightgbm import LGBMClassifier
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tickguard.features import DetectorFeatures

SAMPLERS = ("smote", "adasyn", "none")
# An anomaly rate at or above this is not "rare": the study does not resample (shuttle has 7.2%).
HIGH_ANOMALY_RATE = 0.05
# The most an oversampler may grow the anomalies to, as a share of the normal rows.
MAX_RESAMPLED_RATIO = 0.5

# The forests a tuned ensemble may be averaged with (params["extra_forest"]; absent or "none": no forest).
# The learner study's additions: extra trees of 150 trees at depth 20 and of 300 at full depth, and a random
# forest (scikit-learn's default 100 trees: 300 took 17 minutes to fit twice on 2 cores).
NO_EXTRA_FOREST = "none"
EXTRA_FORESTS: dict[str, dict[str, Any]] = {
    "extra_trees_150_depth_20": {"kind": "extra_trees", "n_estimators": 150, "max_depth": 20},
    "extra_trees_300_full_depth": {"kind": "extra_trees", "n_estimators": 300, "max_depth": None},
    "random_forest_100_full_depth": {"kind": "random_forest", "n_estimators": 100, "max_depth": None},
}

# A reasonable, fast starting point; Optuna tunes around it (and enqueues it as trial 0).
DEFAULT_PARAMS: dict[str, Any] = {
    "sampler": "smote",
    "oversample_factor": 8.0,  # anomalies after resampling = 8 x those observed (fraud: ~0.015 of normals)
    "k_neighbors": 5,
    "gb_learning_rate": 0.08,
    "gb_n_estimators": 150,
    "gb_num_leaves": 31,
    "gb_min_child_samples": 50,
    "gb_reg_lambda": 1.0,
    "gb_subsample": 0.8,
    "gb_colsample": 0.7,
    "et_n_estimators": 20,
    "et_max_depth": 10,
    "et_max_features": 0.5,
    "et_min_samples_leaf": 1,
    "lr_C": 0.1,
    "w_gb": 1.0,
    "w_et": 1.0,
    "w_lr": 0.1,
}


class TolerantADASYN(ADASYN):
    """ADASYN that leaves the data unchanged when no minority row has a majority neighbour.

    Plain ADASYN raises in that case ("No samples will be generated"); for a tuning trial that
    only means this fold needs no synthetic rows.
    """

    def _fit_resample(self, X, y):
        try:
            return super()._fit_resample(X, y)
        except ValueError as exc:
            if "No samples will be generated" not in str(exc):
                raise
            return X, y


class RelativeOversampler(BaseEstimator):
    """SMOTE or ADASYN asked for `factor` times the anomalies the training rows have (capped).

    The target is computed from the labels each fit sees, so it means the same in every fold and for
    every detector. Nothing is generated when anomalies are already common (>= HIGH_ANOMALY_RATE), when
    there are fewer than two to interpolate between, or when the factor would not add a row; k is
    lowered to the number of anomalies minus one when there are few.
    """

    def __init__(
        self, kind: str = "smote", factor: float = 8.0, k_neighbors: int = 5, random_state: int = 42
    ):
        self.kind = kind
        self.factor = factor
        self.k_neighbors = k_neighbors
        self.random_state = random_state

    def target_positives(self, y) -> int:
        """How many anomalies the resampled rows hold (the observed count when nothing is generated)."""
        y = np.asarray(y)
        positives = int((y == 1).sum())
        negatives = int(y.size - positives)
        if positives < 2 or negatives == 0 or positives / y.size >= HIGH_ANOMALY_RATE:
            return positives
        wanted = int(round(positives * float(self.factor)))
        return max(positives, min(wanted, int(MAX_RESAMPLED_RATIO * negatives)))

    def fit_resample(self, X, y, **params):
        """Rows with synthetic anomalies appended (or the rows unchanged, see the class docstring)."""
        target = self.target_positives(y)
        positives = int((np.asarray(y) == 1).sum())
        if target <= positives:
            return X, y
        k = max(1, min(int(self.k_neighbors), positives - 1))
        strategy = {1: target}
        if self.kind == "smote":
            sampler = SMOTE(sampling_strategy=strategy, k_neighbors=k, random_state=self.random_state)
        elif self.kind == "adasyn":
            sampler = TolerantADASYN(
                sampling_strategy=strategy, n_neighbors=k, random_state=self.random_state
            )
        else:
            raise ValueError(f"unknown sampler {self.kind!r}; choose one of {SAMPLERS}")
        return sampler.fit_resample(X, y)


def make_sampler(params: dict[str, Any], seed: int):
    """The resampler named by params["sampler"], or None for no resampling.

    `oversample_factor` (the tuned pipeline) asks for a multiple of the observed anomalies; a bare
    `sampling_ratio` (the notebooks' fixed comparisons, cards from before detectors) is imblearn's
    absolute minority/majority ratio.
    """
    kind = params.get("sampler", "none")
    if kind == "none":
        return None
    if kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {SAMPLERS}")
    k = int(params.get("k_neighbors", 5))
    if "oversample_factor" in params:
        return RelativeOversampler(kind, float(params["oversample_factor"]), k, seed)
    ratio = float(params["sampling_ratio"])
    if kind == "smote":
        return SMOTE(sampling_strategy=ratio, k_neighbors=k, random_state=seed)
    return TolerantADASYN(sampling_strategy=ratio, n_neighbors=k, random_state=seed)


def make_learners(params: dict[str, Any], seed: int, n_jobs: int = 1) -> list[tuple[str, Any]]:
    """The three diverse base learners: boosted trees (LightGBM), randomized trees, a linear model; then the
    extra forest, if params name one."""
    return [
        (
            "gb",
            LGBMClassifier(
                learning_rate=params["gb_learning_rate"],
                n_estimators=int(params["gb_n_estimators"]),
                num_leaves=int(params["gb_num_leaves"]),
                min_child_samples=int(params["gb_min_child_samples"]),
                reg_lambda=params["gb_reg_lambda"],
                subsample=params["gb_subsample"],
                subsample_freq=1,
                colsample_bytree=params["gb_colsample"],
                n_jobs=1,  # one thread: faster than contended OpenMP threads on a shared 2-core box
                random_state=seed,
                deterministic=True,
                verbose=-1,
            ),
        ),
        (
            "et",
            ExtraTreesClassifier(
                n_estimators=int(params["et_n_estimators"]),
                max_depth=int(params["et_max_depth"]),
                max_features=params["et_max_features"],
                min_samples_leaf=int(params["et_min_samples_leaf"]),
                n_jobs=n_jobs,
                random_state=seed,
            ),
        ),
        ("lr", LogisticRegression(C=params["lr_C"], max_iter=2000)),
        *extra_forest_learner(params, seed, n_jobs),
    ]


def extra_forest_learner(params: dict[str, Any], seed: int, n_jobs: int = 1) -> list[tuple[str, Any]]:
    """[("xf", forest)] for params["extra_forest"] (a name in EXTRA_FORESTS), or [] when there is none."""
    name = params.get("extra_forest", NO_EXTRA_FOREST)
    if name == NO_EXTRA_FOREST:
        return []
    if name not in EXTRA_FORESTS:
        raise ValueError(f"unknown extra_forest {name!r}; choose one of {[NO_EXTRA_FOREST, *EXTRA_FORESTS]}")
    spec = EXTRA_FORESTS[name]
    forest = ExtraTreesClassifier if spec["kind"] == "extra_trees" else RandomForestClassifier
    return [
        (
            "xf",
            forest(
                n_estimators=spec["n_estimators"],
                max_depth=spec["max_depth"],
                n_jobs=n_jobs,
                random_state=seed,
            ),
        )
    ]


def voting_weights(params: dict[str, Any]) -> list[float]:
    """Soft-voting weights: the three tuned ones, then (with an extra forest) their sum, for a plain mean
    of the tuned ensemble's probability and the forest's."""
    weights = [params["w_gb"], params["w_et"], params["w_lr"]]
    if params.get("extra_forest", NO_EXTRA_FOREST) != NO_EXTRA_FOREST:
        weights.append(sum(weights))
    return weights


def merged_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """`params` over DEFAULT_PARAMS; parameters from before relative oversampling keep their absolute ratio."""
    params = dict(params or {})
    merged = {**DEFAULT_PARAMS, **params}
    if "sampling_ratio" in params and "oversample_factor" not in params:
        del merged["oversample_factor"]
    return merged


def default_features() -> TransformerMixin:
    """The credit-card detector's encoding (detectors/fraud.toml), for callers that name no detector."""
    from tickguard.detectors import load_detector

    return DetectorFeatures.from_spec(load_detector("fraud"))


def build_pipeline(
    params: dict[str, Any] | None = None,
    seed: int = 42,
    n_jobs: int = 1,
    features: TransformerMixin | None = None,
) -> Pipeline:
    """An unfitted imblearn Pipeline; the sampler runs in fit only, never in predict.

    `features` is the detector's encoding (`DetectorFeatures.from_spec(spec)`); default: fraud's.
    """
    params = merged_params(params)
    ensemble = VotingClassifier(
        make_learners(params, seed, n_jobs),
        voting="soft",
        weights=voting_weights(params),
    )
    return Pipeline(
        [
            ("features", features if features is not None else default_features()),
            ("scale", StandardScaler()),
            ("resample", make_sampler(params, seed) or "passthrough"),
            ("model", ensemble),
        ]
    )


def build_single(
    name: str,
    params: dict[str, Any] | None = None,
    seed: int = 42,
    n_jobs: int = 1,
    features: TransformerMixin | None = None,
) -> Pipeline:
    """The same pipeline around one base learner only (for ensemble-vs-single comparisons)."""
    params = merged_params(params)
    learner = dict(make_learners(params, seed, n_jobs))[name]
    return Pipeline(
        [
            ("features", features if features is not None else default_features()),
            ("scale", StandardScaler()),
            ("resample", make_sampler(params, seed) or "passthrough"),
            ("model", learner),
        ]
    )


class ServingModel:
    """A fitted pipeline with a lean, single-threaded scoring path for small and large batches.

    `predict_proba` gives the same numbers as the wrapped pipeline's (a test checks it) but skips
    scikit-learn's per-call input validation and per-tree joblib dispatch, and calls LightGBM's booster
    directly with one thread: on a shared 2-core machine (or under a multi-worker web server) OpenMP
    thread pools spin-wait and make a 1000-row call many times slower. Parallelism belongs to processes.
    """

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        for _, step in pipeline.steps:
            if isinstance(step, VotingClassifier):
                for est in step.estimators_:
                    if hasattr(est, "n_jobs"):
                        est.n_jobs = 1

    @property
    def classes_(self):
        """Class labels of the wrapped pipeline."""
        return self.pipeline.classes_

    @property
    def n_features_in_(self) -> int:
        """Number of input columns the pipeline was fitted on."""
        return int(self.pipeline.n_features_in_)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns [normal, anomaly], for a 2-D array of raw feature rows."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected a 2-D array with {self.n_features_in_} columns, got shape {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("input contains NaN or infinite values")
        Z = X
        for _, step in self.pipeline.steps[:-1]:
            if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
                continue  # samplers only act during fit
            if isinstance(step, StandardScaler):
                Z = Z - step.mean_ if step.with_mean else Z.copy()
                if step.with_std:
                    Z /= step.scale_
            else:
                Z = step.transform(Z)
        final = self.pipeline.steps[-1][1]
        if not isinstance(final, VotingClassifier):
            return final.predict_proba(Z)
        probas = [_fast_proba(est, Z) for est in final.estimators_]
        return np.average(probas, axis=0, weights=final._weights_not_none)

    def predict(self, X) -> np.ndarray:
        """0/1 labels at probability 0.5 (serving uses the card's threshold on predict_proba instead)."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)


def _fast_proba(est, Z: np.ndarray) -> np.ndarray:
    """predict_proba of one fitted base learner without the per-call overheads (same results)."""
    if isinstance(est, LGBMClassifier):
        p = est.booster_.predict(Z, num_threads=1)
        return np.vstack((1.0 - p, p)).T
    if isinstance(est, ExtraTreesClassifier | RandomForestClassifier):
        Z32 = np.ascontiguousarray(Z, dtype=np.float32)
        total = np.zeros((Z.shape[0], est.n_classes_), dtype=np.float64)
        for tree in est.estimators_:
            total += tree.predict_proba(Z32, check_input=False)
        total /= len(est.estimators_)
        return total
    return est.predict_proba(Z)
