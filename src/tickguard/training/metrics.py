"""Quality metrics, threshold choice and the PR-curve plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
)


def threshold_for_precision(y_true: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The threshold with the most recall at precision >= `target` on (y_true, scores).

    Of the thresholds that reach that recall with the target precision, the highest is taken: a lower
    one would only let more normal rows through (with well separated classes, the lowest threshold
    meeting the target sits deep among the normal rows and spends the whole 1 - target on them).
    If no threshold reaches the target, the one with the best precision is returned.
    """
    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    meets = np.flatnonzero(precision >= target)
    if meets.size:
        best_recall = recall[meets].max()
        return float(thresholds[meets[recall[meets] == best_recall].max()])
    return float(thresholds[int(np.argmax(precision))])


def recall_at_precision(y_true: np.ndarray, scores: np.ndarray, min_precision: float = 0.90) -> float:
    """Best recall achievable with precision >= min_precision (0 if never reached)."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    ok = precision >= min_precision
    return float(recall[ok].max()) if ok.any() else 0.0


def precision_at_recall(y_true: np.ndarray, scores: np.ndarray, min_recall: float = 0.80) -> float:
    """Best precision achievable with recall >= min_recall, at any threshold."""
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(precision[recall >= min_recall].max())  # recall 1.0 is always on the curve


def metrics_at(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """AUPRC, ROC-AUC, recall at precision >= 0.90 (None when y_true has one class only) and the confusion
    matrix / P / R / F1 at threshold."""
    y_true = np.asarray(y_true).astype(int)
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both_classes = 0 < y_true.sum() < len(y_true)  # AUPRC and ROC-AUC are undefined otherwise
    return {
        "rows": int(len(y_true)),
        "positives": int(y_true.sum()),
        "auprc": float(average_precision_score(y_true, scores)) if both_classes else None,
        "roc_auc": float(roc_auc_score(y_true, scores)) if both_classes else None,
        "recall_at_precision_0.90": recall_at_precision(y_true, scores, 0.90) if both_classes else None,
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path | str | None = None, ax=None):
    """Plot precision-recall curves {label: (y_true, scores)}; save a PNG if path is given."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(6, 5))
    for label, (y_true, scores) in curves.items():
        precision, recall, _ = precision_recall_curve(y_true, scores)
        ap = average_precision_score(y_true, scores)
        ax.step(recall, precision, where="post", label=f"{label} (AP {ap:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    if path is not None and own_figure:
        ax.figure.tight_layout()
        ax.figure.savefig(path, dpi=110)
        plt.close(ax.figure)
    return ax
