"""The served ensemble evaluated by one compiled loop: the pipeline's numbers, without its per-call costs.

scikit-learn and LightGBM spend most of a small call on validation, dispatch and per-tree Python
loops: one row through the production ensemble costs milliseconds. `compile_model` reads the fitted
pipeline's parameters into flat arrays, and a numba kernel (compiled on first use, then cached on
disk) applies the feature encoding, the scaler and every learner to each row in one pass.

Trees with at most 64 leaves (the boosted trees) are not walked node by node, which costs a
mispredicted branch per level. Each tree keeps a 64-bit set of the leaves a row can still reach;
every split whose test fails (value > threshold) removes its left subtree's leaves from that set,
and the exit leaf is the leftmost leaf left (Lucchese et al., "QuickScorer", SIGIR 2015). A split is
applied to a block of rows at once without branches, which the compiler turns into SIMD code.
Larger trees (the randomized forest) are walked.

Only structures this module understands are compiled: [feature encoding of tickguard.features, when its
`kernel_layout` is one the kernel repeats] -> [StandardScaler] ->
(resampler, training only) -> a soft-voting ensemble of (or a single) LightGBM binary classifier,
scikit-learn tree forests and a logistic regression. Anything else raises UnsupportedModel and is
scored by the pipeline itself; `compile_if_possible` also checks the compiled scores against the
pipeline's before they are used.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _numba_cache_dir() -> None:
    """Give numba a writable cache directory when the installed package's own is read-only.

    numba caches compiled kernels beside their source file; in a container the package belongs to
    root while the service runs unprivileged, and numba refuses `cache=True` with no place to write.
    """
    if "NUMBA_CACHE_DIR" in os.environ or os.access(os.path.dirname(__file__), os.W_OK):
        return
    import tempfile

    os.environ["NUMBA_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"tickguard-numba-{os.getuid()}")


_numba_cache_dir()
import numba  # noqa: E402  (after the cache directory is settled)

from tickguard.features import (  # noqa: E402  (the encodings the kernel repeats)
    LAYOUT_IDENTITY,
    LAYOUT_TIME_FIRST_LOG_LAST,
    SECONDS_PER_DAY,
)

# LightGBM sends a value to a node's default side when missing_type is "Zero" and |value| is below this.
LIGHTGBM_ZERO_THRESHOLD = 1e-35
DISABLE_ENV = "TICKGUARD_COMPILED_SCORER"
MAX_BITMASK_LEAVES = 64
BLOCK = 64  # rows the bitmask learner scores together (its inner loop runs across them)

# How a learner turns the leaves its trees reach into a probability.
LEAF_MEAN = 0  # scikit-learn forests: mean of the per-tree fraud fractions
LEAF_SIGMOID = 1  # LightGBM binary: sigmoid of the summed raw leaf values


class UnsupportedModel(Exception):
    """The pipeline contains a step this module cannot compile (it is then scored as is)."""


@dataclass(frozen=True)
class Tree:
    """One decision tree with local node indices; leaves have feature -1 and carry `value`."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    zero_goes: np.ndarray  # 0: plain test; 1/2: a LightGBM "Zero"-missing split sends |x|<=1e-35 left/right

    @property
    def n_leaves(self) -> int:
        """Number of leaves."""
        return int(np.count_nonzero(self.feature < 0))


@dataclass(frozen=True)
class WalkedTrees:
    """A learner's trees flattened into one node array, evaluated by walking from each root."""

    kind: int
    weight: float
    float32_inputs: bool  # scikit-learn trees test float32-rounded inputs
    roots: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    zero_goes: np.ndarray

    def kernel_args(self) -> tuple:
        """Positional arguments of one walked learner in `_score_rows`."""
        return (self.kind, self.weight, self.float32_inputs, self.roots, self.feature, self.threshold,
                self.left, self.right, self.value, self.zero_goes)  # fmt: skip


@dataclass(frozen=True)
class BitmaskTrees:
    """A learner's splits sorted by (feature, threshold), each with the leaves its failure removes."""

    kind: int
    weight: float
    float32_inputs: bool
    n_trees: int
    split_feature: np.ndarray  # the feature each split tests
    threshold: np.ndarray
    tree: np.ndarray
    keep_mask: np.ndarray  # uint64: the tree's leaves that stay reachable when x > threshold
    leaf_start: np.ndarray  # tree t's leaf values are leaf_value[leaf_start[t]:], left to right
    leaf_value: np.ndarray

    def kernel_args(self) -> tuple:
        """Positional arguments of the bitmask learner in `_score_rows`."""
        return (self.kind, self.weight, self.float32_inputs, self.n_trees, self.split_feature,
                self.threshold, self.tree, self.keep_mask, self.leaf_start, self.leaf_value)  # fmt: skip


@dataclass(frozen=True)
class CompiledScorer:
    """A fitted pipeline's scoring path as arrays; `score(X)` equals pipeline.predict_proba(X)[:, 1]."""

    n_inputs: int
    encode_time_amount: bool
    mean: np.ndarray
    scale: np.ndarray
    linear_coef: np.ndarray
    linear_intercept: float
    linear_weight: float
    bitmask: BitmaskTrees
    walked: tuple[WalkedTrees, WalkedTrees]
    total_weight: float

    def __post_init__(self) -> None:
        # The kernel's model arguments, gathered once: every call of score() passes the same ones.
        model_args = (
            self.encode_time_amount,
            self.mean,
            self.scale,
            self.linear_coef,
            self.linear_intercept,
            self.linear_weight,
            *self.bitmask.kernel_args(),
            *self.walked[0].kernel_args(),
            *self.walked[1].kernel_args(),
            self.total_weight,
        )
        object.__setattr__(self, "_model_args", model_args)

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probability per row of a [n, n_inputs] float array (finite values only)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise ValueError(f"expected a 2-D array with {self.n_inputs} columns, got shape {X.shape}")
        out = np.empty(X.shape[0], dtype=np.float64)
        _score_rows(X, *self._model_args, out)
        return out


def compile_model(estimator: Any) -> CompiledScorer:
    """Read a fitted pipeline (or tickguard's ServingModel around one) into a CompiledScorer."""
    from imblearn.pipeline import Pipeline as ImbPipeline
    from sklearn.pipeline import Pipeline as SkPipeline

    pipeline = getattr(estimator, "pipeline", estimator)
    if not isinstance(pipeline, SkPipeline | ImbPipeline):
        raise UnsupportedModel(f"{type(pipeline).__name__} is not a pipeline")
    steps = [step for _, step in pipeline.steps]
    n_inputs = int(getattr(pipeline, "n_features_in_", 0) or 0)
    encode = False
    mean = scale = None
    for step in steps[:-1]:
        if step is None or step == "passthrough" or hasattr(step, "fit_resample"):
            continue  # resamplers only act while fitting
        layout = getattr(step, "kernel_layout", None)  # tickguard.features' encodings say which they are
        if layout == LAYOUT_TIME_FIRST_LOG_LAST and not encode and mean is None:
            encode = True
        elif layout == LAYOUT_IDENTITY and not encode and mean is None:
            continue
        elif type(step).__name__ == "StandardScaler" and mean is None:
            mean, scale = _scaler_arrays(step)
        else:
            raise UnsupportedModel(f"step {type(step).__name__} is not supported here")
    width = n_inputs + 1 if encode else n_inputs  # the encoding turns Time into its sine and cosine
    if mean is None:
        mean, scale = np.zeros(width), np.ones(width)
    if len(mean) != width:
        raise UnsupportedModel(f"scaler has {len(mean)} columns, expected {width}")

    learners, weights = _learners(steps[-1])
    coef, intercept, linear_weight = np.zeros(width), 0.0, 0.0
    bitmask: BitmaskTrees | None = None
    walked: list[WalkedTrees] = []
    for learner, weight in zip(learners, weights, strict=True):
        name = type(learner).__name__
        if name == "LogisticRegression" and linear_weight == 0.0:
            coef, intercept = _linear_arrays(learner, width)
            linear_weight = weight
            continue
        if name == "LGBMClassifier":
            kind, float32_inputs, trees = LEAF_SIGMOID, False, _lightgbm_trees(learner, width)
        elif name in ("ExtraTreesClassifier", "RandomForestClassifier"):
            kind, float32_inputs, trees = LEAF_MEAN, True, _forest_trees(learner, width)
        else:
            raise UnsupportedModel(f"learner {name} is not supported here")
        fits_bitmask = all(t.n_leaves <= MAX_BITMASK_LEAVES and not t.zero_goes.any() for t in trees)
        if bitmask is None and fits_bitmask:
            bitmask = _bitmask_trees(kind, weight, float32_inputs, trees, width)
        elif len(walked) < 2:
            walked.append(_walked_trees(kind, weight, float32_inputs, trees))
        else:
            raise UnsupportedModel("more tree learners than the kernel takes")
    while len(walked) < 2:
        walked.append(_walked_trees(LEAF_MEAN, 0.0, False, []))
    return CompiledScorer(
        n_inputs=n_inputs,
        encode_time_amount=encode,
        mean=np.ascontiguousarray(mean, dtype=np.float64),
        scale=np.ascontiguousarray(scale, dtype=np.float64),
        linear_coef=np.ascontiguousarray(coef, dtype=np.float64),
        linear_intercept=float(intercept),
        linear_weight=float(linear_weight),
        bitmask=bitmask or _bitmask_trees(LEAF_MEAN, 0.0, False, [], width),
        walked=(walked[0], walked[1]),
        total_weight=float(sum(weights)),
    )


def compile_if_possible(estimator: Any, probe: np.ndarray, tolerance: float = 1e-9) -> CompiledScorer | None:
    """A CompiledScorer whose scores on `probe` match the estimator's, or None (with the reason logged)."""
    if os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("compiled scorer disabled by %s=0", DISABLE_ENV)
        return None
    try:
        scorer = compile_model(estimator)
        compiled = scorer.score(probe)
    except UnsupportedModel as exc:
        log.info("model scored by its own pipeline: %s", exc)
        return None
    except Exception as exc:  # a compiler bug must never stop a model from being served
        log.warning("compiling the model failed, scoring with its own pipeline: %r", exc)
        return None
    reference = np.asarray(estimator.predict_proba(probe)[:, 1], dtype=np.float64)
    gap = float(np.max(np.abs(compiled - reference))) if len(probe) else 0.0
    if not gap <= tolerance:
        log.warning("compiled scores differ from the pipeline's by %.3g; scoring with the pipeline", gap)
        return None
    return scorer


def _scaler_arrays(step) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of a fitted StandardScaler, with its with_mean/with_std switches applied."""
    width = int(step.n_features_in_)
    mean = np.asarray(step.mean_, dtype=np.float64) if step.with_mean else np.zeros(width)
    scale = np.asarray(step.scale_, dtype=np.float64) if step.with_std else np.ones(width)
    return mean, scale


def _learners(final) -> tuple[list[Any], list[float]]:
    """Base learners and their soft-voting weights (a single classifier counts as one, weight 1)."""
    if type(final).__name__ == "VotingClassifier":
        if final.voting != "soft":
            raise UnsupportedModel("only soft voting is supported")
        weights = final._weights_not_none or [1.0] * len(final.estimators_)
        learners = list(final.estimators_)
    else:
        learners, weights = [final], [1.0]
    for learner in learners:
        if len(getattr(learner, "classes_", [])) != 2:
            raise UnsupportedModel(f"{type(learner).__name__} is not a binary classifier")
    return learners, [float(w) for w in weights]


def _linear_arrays(learner, width: int) -> tuple[np.ndarray, float]:
    """Coefficients and intercept of a binary logistic regression."""
    coef = np.asarray(learner.coef_, dtype=np.float64)
    if coef.shape != (1, width):
        raise UnsupportedModel(f"logistic regression has coefficients of shape {coef.shape}")
    return coef[0], float(np.asarray(learner.intercept_)[0])


def _forest_trees(forest, width: int) -> list[Tree]:
    """The trees of a scikit-learn forest, each leaf valued with its fraud fraction."""
    trees = []
    for model in forest.estimators_:
        tree = model.tree_
        if tree.n_outputs != 1 or tree.n_features != width:
            raise UnsupportedModel("forest tree shape does not match the inputs")
        counts = tree.value[:, 0, :]
        fraction = counts[:, 1] / np.maximum(counts.sum(axis=1), np.finfo(np.float64).tiny)
        is_leaf = tree.children_left < 0
        trees.append(
            Tree(
                feature=np.where(is_leaf, -1, tree.feature).astype(np.int64),
                threshold=np.asarray(tree.threshold, dtype=np.float64),
                left=np.asarray(tree.children_left, dtype=np.int64),
                right=np.asarray(tree.children_right, dtype=np.int64),
                value=np.where(is_leaf, fraction, 0.0),
                zero_goes=np.zeros(tree.node_count, dtype=np.int8),
            )
        )
    return trees


def _lightgbm_trees(model, width: int) -> list[Tree]:
    """The trees of a LightGBM binary booster, leaves valued with their raw scores."""
    dump = model.booster_.dump_model()
    objective = str(dump.get("objective", ""))
    if objective.split(" ")[0] != "binary" or dump.get("num_tree_per_iteration") != 1:
        raise UnsupportedModel(f"LightGBM objective {objective!r} is not plain binary")
    if dump.get("average_output") or dump.get("max_feature_idx", -1) + 1 != width:
        raise UnsupportedModel("LightGBM model averages its output or has other inputs")
    if "sigmoid:" in objective and float(objective.split("sigmoid:")[1].split(" ")[0]) != 1.0:
        raise UnsupportedModel(f"LightGBM objective {objective!r} scales its sigmoid")
    return [_lightgbm_tree(info["tree_structure"]) for info in dump["tree_info"]]


def _lightgbm_tree(root: dict) -> Tree:
    """One tree of LightGBM's JSON dump as arrays (numerical splits only)."""
    columns: dict[str, list] = {k: [] for k in ("feature", "threshold", "left", "right", "value", "zero")}

    def add(node: dict) -> int:
        index = len(columns["feature"])
        for key, blank in (("feature", -1), ("threshold", 0.0), ("left", -1), ("right", -1), ("value", 0.0)):
            columns[key].append(blank)
        columns["zero"].append(0)
        if "leaf_value" in node:
            columns["value"][index] = float(node["leaf_value"])
            return index
        if node["decision_type"] != "<=":
            raise UnsupportedModel(f"LightGBM split {node['decision_type']!r} (categorical) is not supported")
        columns["feature"][index] = int(node["split_feature"])
        columns["threshold"][index] = float(node["threshold"])
        if node["missing_type"] == "Zero":
            columns["zero"][index] = 1 if node["default_left"] else 2
        columns["left"][index] = add(node["left_child"])
        columns["right"][index] = add(node["right_child"])
        return index

    add(root)
    return Tree(
        feature=np.asarray(columns["feature"], dtype=np.int64),
        threshold=np.asarray(columns["threshold"], dtype=np.float64),
        left=np.asarray(columns["left"], dtype=np.int64),
        right=np.asarray(columns["right"], dtype=np.int64),
        value=np.asarray(columns["value"], dtype=np.float64),
        zero_goes=np.asarray(columns["zero"], dtype=np.int8),
    )


def _walked_trees(kind: int, weight: float, float32_inputs: bool, trees: list[Tree]) -> WalkedTrees:
    """Concatenate trees into one node array, shifting child indices by each tree's offset."""
    roots, offset = [], 0
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature", "threshold", "left", "right", "value", "zero")
    }
    for tree in trees:
        is_leaf = tree.feature < 0
        roots.append(offset)
        parts["feature"].append(tree.feature)
        parts["threshold"].append(tree.threshold)
        parts["left"].append(np.where(is_leaf, -1, tree.left + offset))
        parts["right"].append(np.where(is_leaf, -1, tree.right + offset))
        parts["value"].append(tree.value)
        parts["zero"].append(tree.zero_goes)
        offset += len(tree.feature)

    def joined(key: str, dtype) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(parts[key]) if parts[key] else np.zeros(1), dtype=dtype)

    return WalkedTrees(
        kind=kind,
        weight=float(weight),
        float32_inputs=float32_inputs,
        roots=np.asarray(roots, dtype=np.int64),
        feature=joined("feature", np.int64),
        threshold=joined("threshold", np.float64),
        left=joined("left", np.int64),
        right=joined("right", np.int64),
        value=joined("value", np.float64),
        zero_goes=joined("zero", np.int8),
    )


def _bitmask_trees(
    kind: int, weight: float, float32_inputs: bool, trees: list[Tree], width: int
) -> BitmaskTrees:
    """Number each tree's leaves left to right; give every split the leaves its failure leaves reachable."""
    everything = (1 << 64) - 1
    splits: list[tuple[int, float, int, int]] = []
    leaf_values: list[float] = []
    leaf_start: list[int] = []
    for t, tree in enumerate(trees):
        leaf_start.append(len(leaf_values))

        def number(node: int, tree=tree, t=t) -> tuple[int, int]:
            """Leaf range [first, end) of the subtree at node (numbering leaves as met)."""
            if tree.feature[node] < 0:
                leaf_values.append(float(tree.value[node]))
                first = len(leaf_values) - 1 - leaf_start[t]
                return first, first + 1
            first, middle = number(int(tree.left[node]))
            _, end = number(int(tree.right[node]))
            left_leaves = ((1 << middle) - 1) ^ ((1 << first) - 1)
            splits.append((int(tree.feature[node]), float(tree.threshold[node]), t, everything ^ left_leaves))
            return first, end

        number(0)
    splits.sort(key=lambda s: (s[0], s[1]))
    features = np.asarray([s[0] for s in splits], dtype=np.int64)
    return BitmaskTrees(
        kind=kind,
        weight=float(weight),
        float32_inputs=float32_inputs,
        n_trees=len(trees),
        split_feature=np.asarray(features if len(features) else [0], dtype=np.int64),
        threshold=np.asarray([s[1] for s in splits] or [0.0], dtype=np.float64),
        tree=np.asarray([s[2] for s in splits] or [0], dtype=np.int64),
        keep_mask=np.asarray([s[3] for s in splits] or [0], dtype=np.uint64),
        leaf_start=np.asarray(leaf_start or [0], dtype=np.int64),
        leaf_value=np.asarray(leaf_values or [0.0], dtype=np.float64),
    )


# Index of a uint64's only set bit: multiplying by a de Bruijn sequence puts a distinct 6-bit
# pattern in the top bits for each of the 64 positions (cheaper than a float log2 per tree).
_DEBRUIJN = np.uint64(0x03F79D71B4CB0A89)
_DEBRUIJN_INDEX = np.zeros(64, dtype=np.int64)
for _position in range(64):
    _DEBRUIJN_INDEX[((1 << _position) * 0x03F79D71B4CB0A89 % (1 << 64)) >> 58] = _position


@numba.njit(cache=True, nogil=True)
def _finish(kind, total, n_trees):
    """A learner's probability from its trees' summed leaf values."""
    if kind == LEAF_SIGMOID:
        return 1.0 / (1.0 + math.exp(-total))
    return total / n_trees


@numba.njit(cache=True, nogil=True)
def _bitmask_block(
    zt, n, kind, n_trees, split_feature, threshold, tree, keep_mask, leaf_start, leaf_value, reach, out
):
    """One bitmask learner's probabilities for the first n rows of a block (zt: one row per feature).

    Each split is applied to all n rows at once, with a select instead of a branch: the loop over
    rows has a run-time length, so the compiler vectorizes it (with its own overlap checks).
    """
    everything = np.uint64(0xFFFFFFFFFFFFFFFF)
    for t in range(n_trees):
        reach_t = reach[t]
        for r in range(n):
            reach_t[r] = everything
    for k in range(threshold.shape[0]):
        limit = threshold[k]
        keep = keep_mask[k]
        reach_t = reach[tree[k]]
        x = zt[split_feature[k]]
        for r in range(n):
            reach_t[r] &= keep if x[r] > limit else everything
    for r in range(n):
        total = 0.0
        for t in range(n_trees):
            bits = reach[t, r]
            lowest = bits & (~bits + np.uint64(1))
            total += leaf_value[leaf_start[t] + _DEBRUIJN_INDEX[(lowest * _DEBRUIJN) >> np.uint64(58)]]
        out[r] = _finish(kind, total, n_trees)


@numba.njit(cache=True, nogil=True)
def _walked_probability(z, kind, roots, feature, threshold, left, right, value, zero_goes):
    """One walked learner's probability for a row: follow each tree from its root to a leaf."""
    total = 0.0
    for t in range(roots.shape[0]):
        node = roots[t]
        while feature[node] >= 0:
            x = z[feature[node]]
            rule = zero_goes[node]
            if rule != 0 and abs(x) <= LIGHTGBM_ZERO_THRESHOLD:
                node = left[node] if rule == 1 else right[node]
            elif x <= threshold[node]:
                node = left[node]
            else:
                node = right[node]
        total += value[node]
    return _finish(kind, total, roots.shape[0])


@numba.njit(cache=True, nogil=True)
def _score_rows(
    X, encode, mean, scale, coef, intercept, w_linear,
    b_kind, b_weight, b_f32, b_trees, b_feature, b_threshold, b_tree, b_keep, b_leaf_start, b_leaf_value,
    w1_kind, w1_weight, w1_f32, w1_roots, w1_feature, w1_threshold, w1_left, w1_right, w1_value, w1_zero,
    w2_kind, w2_weight, w2_f32, w2_roots, w2_feature, w2_threshold, w2_left, w2_right, w2_value, w2_zero,
    total_weight, out,
):  # fmt: skip
    """Score every row of X into out: encode, scale, then the weighted mean of the learners.

    Rows go in blocks of BLOCK: the bitmask learner takes a block at a time, the others a row at a time.
    """
    width = mean.shape[0]
    zt = np.zeros((width, BLOCK), dtype=np.float64)
    z32t = np.zeros((width, BLOCK), dtype=np.float64)
    z = np.empty(width, dtype=np.float64)
    z32 = np.empty(width, dtype=np.float64)
    reach = np.empty((max(b_trees, 1), BLOCK), dtype=np.uint64)
    block_scores = np.empty(BLOCK, dtype=np.float64)
    bitmask_scores = np.empty(BLOCK, dtype=np.float64)
    for first in range(0, X.shape[0], BLOCK):
        n = min(BLOCK, X.shape[0] - first)
        for r in range(n):
            i = first + r
            if encode:
                angle = (X[i, 0] % SECONDS_PER_DAY) * (2.0 * np.pi / SECONDS_PER_DAY)
                z[0] = math.sin(angle)
                z[1] = math.cos(angle)
                for j in range(1, X.shape[1] - 1):
                    z[j + 1] = X[i, j]
                z[width - 1] = math.log1p(max(X[i, X.shape[1] - 1], 0.0))
            else:
                for j in range(width):
                    z[j] = X[i, j]
            decision = intercept
            for j in range(width):
                z[j] = (z[j] - mean[j]) / scale[j]
                z32[j] = np.float64(np.float32(z[j]))
                zt[j, r] = z[j]
                z32t[j, r] = z32[j]
                decision += z[j] * coef[j]
            score = 0.0
            if w_linear != 0.0:
                score += w_linear / (1.0 + math.exp(-decision))
            if w1_weight != 0.0:
                score += w1_weight * _walked_probability(
                    z32 if w1_f32 else z,
                    w1_kind, w1_roots, w1_feature, w1_threshold, w1_left, w1_right, w1_value, w1_zero,
                )  # fmt: skip
            if w2_weight != 0.0:
                score += w2_weight * _walked_probability(
                    z32 if w2_f32 else z,
                    w2_kind, w2_roots, w2_feature, w2_threshold, w2_left, w2_right, w2_value, w2_zero,
                )  # fmt: skip
            block_scores[r] = score
        if b_weight != 0.0:
            _bitmask_block(
                z32t if b_f32 else zt,
                n, b_kind, b_trees, b_feature, b_threshold, b_tree, b_keep, b_leaf_start, b_leaf_value,
                reach, bitmask_scores,
            )  # fmt: skip
            for r in range(n):
                block_scores[r] += b_weight * bitmask_scores[r]
        for r in range(n):
            out[first + r] = block_scores[r] / total_weight
