"""A seed-fixed anomaly injector: labelled anomalies of five kinds added to a real, unlabelled series.

Real monitoring series come without labels, so unsupervised detectors are tuned and evaluated on copies
of real series with anomalies injected at known places. `inject(values, kind, seed, ...)` returns the
changed copy, a 0/1 label per point and the segments; the same arguments always give the same result
(numpy's PCG64 seeded with `seed` and a fixed number per kind).

Sizes are relative to the series' own *noise*: `noise = 1.4826 * MAD(first differences) / sqrt(2)`, the
point-to-point jitter, so an injected anomaly is as visible in a smooth series as in a jumpy one. The
seasonal period (in points) sets the lengths of the longer anomalies (a series without a season uses
`period = 20`). The kinds:

- `spike`: one point moved by +/- 6..10 noise;
- `level_shift`: a segment of 1..3 periods moved by +/- 4..6 noise;
- `variance_burst`: a segment of 0.5..1.5 periods with Gaussian noise of 3..5 noise added;
- `stuck`: a segment of 0.5..1.5 periods frozen at the value before it (a stuck sensor);
- `seasonal_break`: a segment of 1..2 periods replaced by the series half a period earlier (the daily or
  yearly pattern out of phase; same level and spread). Only for series with a season.

`size` fixes the amount in noise instead of drawing it from the kind's range above (spike, level shift,
variance burst: a test that claims a detection names the size it claims it for); the random draws happen
anyway, so the positions, lengths and signs are those of the same seed without `size`.

`count` segments (default 3) are placed at random inside `region` (start, end) in points, at least one
period apart. Every point of a segment is a positive (a stuck segment's first point included, even when
it happens to equal the value before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("spike", "level_shift", "variance_burst", "stuck", "seasonal_break")
SEASONAL_KINDS = ("seasonal_break",)  # need a season
SIZED_KINDS = ("spike", "level_shift", "variance_burst")  # the kinds with an amount in noise
DEFAULT_PERIOD = 20
_KIND_STREAM = {kind: i for i, kind in enumerate(KINDS)}  # a separate random stream per kind


class InjectionError(ValueError):
    """The series is too short for the requested anomalies, or the kind/arguments are invalid."""


@dataclass(frozen=True)
class Segment:
    """An injected anomaly: kind and [start, end) in points."""

    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class Injected:
    """The changed copy, its 0/1 labels and the segments, in time order."""

    values: np.ndarray
    labels: np.ndarray
    segments: tuple[Segment, ...]


def noise_scale(values: np.ndarray) -> float:
    """Point-to-point jitter: 1.4826 * MAD of the first differences / sqrt(2) (std of the series when 0)."""
    diffs = np.diff(np.asarray(values, dtype=np.float64))
    mad = float(np.median(np.abs(diffs - np.median(diffs)))) if len(diffs) else 0.0
    scale = 1.4826 * mad / np.sqrt(2.0)
    return scale if scale > 0 else float(np.std(values)) or 1.0


def _length(kind: str, period: int, rng: np.random.Generator) -> int:
    low, high = {
        "spike": (1, 1),
        "level_shift": (period, 3 * period),
        "variance_burst": (max(period // 2, 2), max(3 * period // 2, 3)),
        "stuck": (max(period // 2, 2), max(3 * period // 2, 3)),
        "seasonal_break": (period, 2 * period),
    }[kind]
    return int(rng.integers(low, high + 1))


def inject(
    values: np.ndarray,
    kind: str,
    seed: int,
    *,
    period: int | None = None,
    count: int = 3,
    region: tuple[int, int] | None = None,
    max_length: int | None = None,
    size: float | None = None,
) -> Injected:
    """A copy of `values` with `count` anomalies of `kind` inside `region` (default: the whole series);
    `max_length` caps the segments' lengths (for short series, e.g. 144 months); `size` (in noise, > 0)
    replaces the drawn amount of a spike, level shift or variance burst."""
    if kind not in KINDS:
        raise InjectionError(f"unknown anomaly kind {kind!r} (choose from {', '.join(KINDS)})")
    if size is not None and (kind not in SIZED_KINDS or not size > 0):
        raise InjectionError(
            f"size={size!r}: a size is a positive amount in noise, for {', '.join(SIZED_KINDS)} only (not {kind})"
        )
    if kind in SEASONAL_KINDS and not period:
        raise InjectionError(f"{kind} needs a series with a seasonal period")
    original = np.asarray(values, dtype=np.float64)
    period = int(period or DEFAULT_PERIOD)
    start, end = region if region is not None else (0, len(original))
    if kind == "seasonal_break":
        start = max(start, period)  # the copy reaches half a period back
    rng = np.random.default_rng([seed, _KIND_STREAM[kind]])
    lengths = [min(_length(kind, period, rng), max_length or len(original)) for _ in range(count)]
    gap = period
    room = (end - start) - sum(lengths) - gap * (count - 1)
    if room < 0:
        raise InjectionError(
            f"region [{start}, {end}) has {end - start} points: too short for {count} {kind} segments "
            f"of {lengths} points {gap} apart"
        )
    # Spread the spare room at random between the segments: sorted cut points of the spare room.
    cuts = np.sort(rng.integers(0, room + 1, size=count))
    out = original.copy()
    labels = np.zeros(len(original), dtype=np.int64)
    noise = noise_scale(original)
    segments = []
    position = start
    previous_cut = 0
    for length, cut in zip(lengths, cuts, strict=True):
        position += int(cut - previous_cut)
        previous_cut = int(cut)
        a, b = position, position + length
        sign = 1.0 if rng.random() < 0.5 else -1.0
        if kind == "spike":
            out[a] += sign * _amount(rng.uniform(6.0, 10.0), size) * noise
        elif kind == "level_shift":
            out[a:b] += sign * _amount(rng.uniform(4.0, 6.0), size) * noise
        elif kind == "variance_burst":
            out[a:b] += rng.normal(0.0, _amount(rng.uniform(3.0, 5.0), size) * noise, size=length)
        elif kind == "stuck":
            out[a:b] = original[a - 1]
        else:  # seasonal_break
            half = max(period // 2, 1)
            out[a:b] = original[a - half : b - half]
        labels[a:b] = 1
        segments.append(Segment(kind, a, b))
        position = b + gap
    return Injected(values=out, labels=labels, segments=tuple(segments))


def _amount(drawn: float, size: float | None) -> float:
    """The drawn amount, or the fixed `size` (drawn all the same, so the random stream is unchanged)."""
    return drawn if size is None else float(size)


NATURAL_K = 15.0  # in noise units: far beyond anything injected, so only real outages/crashes qualify


def natural_anomalies(values: np.ndarray, period: int | None, k: float = NATURAL_K) -> np.ndarray:
    """0/1 marks of anomalies already in a real series, and the windows they spoil.

    A point is marked when it is more than `k` noise from the median of the 2 * period + 1 points centred
    on it (waterflow's three outages to 24 l/s; sp500's crash days). The `2 * period` points after each
    marked point are marked too: their windows hold the anomaly. Training skips marked points (the model
    learns ordinary behaviour), and the evaluation scores no marked point (they are real, unlabelled
    anomalies: counting them as normal would punish every detector for finding them)."""
    import pandas as pd

    span = int(period or DEFAULT_PERIOD)
    series = pd.Series(np.asarray(values, dtype=np.float64))
    median = series.rolling(2 * span + 1, center=True, min_periods=1).median().to_numpy()
    marked = np.abs(series.to_numpy() - median) > k * noise_scale(series.to_numpy())
    spoiled = marked.copy()
    for i in np.flatnonzero(marked):
        spoiled[i : i + 2 * span + 1] = True
    return spoiled.astype(np.int64)
