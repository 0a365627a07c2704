"""Training settings: profiles (full / fast) and paths, overridable by environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from tickguard.data.config import project_root


def models_dir() -> Path:
    """Where model versions live: $TICKGUARD_MODELS_DIR or <repo>/models."""
    return Path(os.environ.get("TICKGUARD_MODELS_DIR") or project_root() / "models")


def fast_mode_from_env() -> bool:
    """True when TICKGUARD_FAST is set to 1/true/yes (notebooks and CI use the fast profile)."""
    return os.environ.get("TICKGUARD_FAST", "").lower() in {"1", "true", "yes"}


@dataclass(frozen=True)
class TrainProfile:
    """How much data and search a training run uses."""

    name: str
    n_trials: int
    n_folds: int
    sample_rows: int | None  # stratified sample of each training part; None = all rows
    negative_fraction: float  # share of normal rows kept in tuning folds (all frauds always kept)
    timeout_s: float | None  # stop starting new trials after this long (None = trial count only)
    n_jobs: int = 2
    seed: int = 42
    precision_target: float | None = None  # None: the detector's [threshold] target
    extra_forests: bool = True  # after tuning, try averaging with each of pipeline.EXTRA_FORESTS (CV folds)

    def with_overrides(self, **changes) -> TrainProfile:
        """A copy with the non-None overrides applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


# Full: the whole training part; tuning folds keep every fraud but half of the normal rows (validation
# folds stay complete) so ~30-40 trials fit in 20 minutes on 2 shared cores, and the whole run in < 30.
FULL = TrainProfile(
    name="full", n_trials=40, n_folds=3, sample_rows=None, negative_fraction=0.5, timeout_s=20 * 60
)
# Fast (CI, notebooks under TICKGUARD_FAST=1): a 20k-row stratified sample of each training part, 3 trials,
# no extra forest.
FAST = TrainProfile(
    name="fast",
    n_trials=3,
    n_folds=2,
    sample_rows=20_000,
    negative_fraction=1.0,
    timeout_s=None,
    extra_forests=False,
)
