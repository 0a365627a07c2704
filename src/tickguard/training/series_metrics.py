"""Event metrics for anomalies that last several points: AUPRC, point-adjusted F1, detection delay.

A level shift of 40 points is one event; a detector that flags its first point has found it. The usual
point-adjusted F1 (Xu et al., WWW 2018) counts every point of an event as found when any of its points
is flagged, then computes F1 over points. Detection delay is the number of points from an event's start
to its first flagged point (found events only); AUPRC is over points, without adjustment.
"""

from __future__ import annotations

import numpy as np


def segments_of(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s."""
    labels = np.asarray(labels).astype(np.int8)
    edges = np.diff(np.concatenate([[0], labels, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def point_adjusted(labels: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """`flags` with every point of an event set when any of its points is flagged."""
    adjusted = np.asarray(flags, dtype=bool).copy()
    for a, b in segments_of(labels):
        if adjusted[a:b].any():
            adjusted[a:b] = True
    return adjusted


def f1(labels: np.ndarray, flags: np.ndarray) -> float:
    """Plain F1 of 0/1 flags against 0/1 labels (0 when nothing is flagged or nothing is positive)."""
    labels, flags = np.asarray(labels, dtype=bool), np.asarray(flags, dtype=bool)
    tp = int((labels & flags).sum())
    if tp == 0:
        return 0.0
    precision, recall = tp / int(flags.sum()), tp / int(labels.sum())
    return 2 * precision * recall / (precision + recall)


def event_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """AUPRC of the scores, and at `threshold` (score >= threshold flags): point-adjusted F1, events found,
    mean detection delay in points (None when no event is found), share of normal points flagged."""
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    flags = scores >= threshold
    events = segments_of(labels)
    delays = []
    for a, b in events:
        hit = np.flatnonzero(flags[a:b])
        if len(hit):
            delays.append(int(hit[0]))
    return {
        "auprc": float(average_precision_score(labels, scores)) if labels.any() else None,
        "pa_f1": f1(labels, point_adjusted(labels, flags)),
        "events": len(events),
        "events_found": len(delays),
        "delay_points": float(np.mean(delays)) if delays else None,
        "false_alarm_rate": float(flags[labels == 0].mean()) if (labels == 0).any() else 0.0,
    }
