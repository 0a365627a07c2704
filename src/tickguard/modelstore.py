"""Model artifacts on disk: `models/<version>/{model.joblib, model_card.json, pr_curve.png}`.

The contract every part of tickguard relies on (training writes it, the REST service and the
backfill read it):

- `model.joblib` is a fitted estimator/pipeline with `predict_proba(X)`; X is a float array whose
  columns are `card["features"]`, in that order.
- `model_card.json` holds at least `version`, `features`, `threshold` and `model_sha256`.
- `models/production` is a symlink (or, where links are unavailable, a one-line text file) naming
  the served version directory.

Pickle files run code when loaded, so `load_model` checks the file's sha256 against the card
before unpickling anything.

Reading cards and hashing files needs only the standard library, so the light commands (`tickguard
data fetch`, `serve`'s argument checks) work without the numeric stack; numpy, joblib and the model's
own libraries are imported by the functions that load or score a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickguard.errors import ModelIntegrityError

if TYPE_CHECKING:
    import numpy as np

MODEL_FILE = "model.joblib"
CARD_FILE = "model_card.json"
PR_CURVE_FILE = "pr_curve.png"
PRODUCTION = "production"
REQUIRED_CARD_KEYS = ("version", "features", "threshold", "model_sha256")


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelArtifact:
    """A loaded, verified model: the estimator plus what its card says about it."""

    estimator: Any
    card: dict
    path: Path
    compiled: Any = None  # a tickguard.compiled_scorer.CompiledScorer checked against the estimator, or None

    @property
    def version(self) -> str:
        """The model version string from the card."""
        return str(self.card["version"])

    @property
    def features(self) -> list[str]:
        """Feature names, in the column order the estimator expects."""
        return list(self.card["features"])

    @property
    def threshold(self) -> float:
        """The decision threshold stored with the model (score >= threshold means anomaly)."""
        return float(self.card["threshold"])

    @property
    def scored_by(self) -> str:
        """'compiled' when the compiled scorer serves this model, else 'pipeline'."""
        return "compiled" if self.compiled is not None else "pipeline"

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities for a 2-D array of finite floats with columns in `features` order."""
        if self.compiled is not None:
            return self.compiled.score(X)
        return self.reference_score(X)

    def reference_score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities from the estimator itself (what the compiled scorer must reproduce)."""
        import numpy as np
        import sklearn

        # Callers pass validated finite input; sklearn's own scan per pipeline step is repeated work.
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.estimator.predict_proba(X)[:, 1], dtype=np.float64)


def resolve_model_dir(models_dir: Path | str, name: str = PRODUCTION) -> Path:
    """Turn `production`, a version name or a path into a model directory that exists."""
    candidate = Path(name)
    if not candidate.is_absolute() and not (candidate / CARD_FILE).exists():
        candidate = Path(models_dir) / name
    if candidate.is_file():  # a pointer file holding a version name, for filesystems without symlinks
        candidate = candidate.parent / candidate.read_text().strip()
    candidate = candidate.resolve()
    if not (candidate / CARD_FILE).is_file():
        raise ModelIntegrityError(f"no model at {candidate}: {CARD_FILE} not found")
    return candidate


def read_card(model_dir: Path | str) -> dict:
    """Read and check a model card, without loading the model."""
    path = Path(model_dir) / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelIntegrityError(f"cannot read model card {path}: {exc}") from exc
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ModelIntegrityError(f"model card {path} lacks {', '.join(missing)}")
    return card


def load_model(model_dir: Path | str) -> ModelArtifact:
    """Load a model directory, refusing it if the model file's sha256 differs from the card's.

    The model is also compiled for fast scoring when its structure allows and the compiled scores
    match the model's on probe rows (TICKGUARD_COMPILED_SCORER=0 turns that off); else it scores itself.
    """
    import joblib

    model_dir = Path(model_dir)
    card = read_card(model_dir)
    model_path = model_dir / MODEL_FILE
    if not model_path.is_file():
        raise ModelIntegrityError(f"model file {model_path} not found")
    actual = sha256_of(model_path)
    if actual != card["model_sha256"]:
        raise ModelIntegrityError(
            f"refusing to load {model_path}: sha256 {actual} does not match the model card's "
            f"{card['model_sha256']} (the file was changed or replaced)"
        )
    estimator = joblib.load(model_path)
    from tickguard.compiled_scorer import compile_if_possible

    compiled = compile_if_possible(estimator, probe_rows(card["features"]))
    return ModelArtifact(estimator=estimator, card=card, path=model_dir.resolve(), compiled=compiled)


def probe_rows(features: list[str], n: int = 2048, seed: int = 7) -> np.ndarray:
    """Deterministic synthetic rows in the raw feature ranges, to check a compiled scorer against its model.

    PCA components are drawn wide (several standard deviations) so the rows reach the trees' rare
    branches as well as the common ones; Time covers two days, Amount spans cents to thousands.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = rng.normal(0.0, 3.0, size=(n, len(features)))
    for column, name in enumerate(features):
        if name == "Time":
            rows[:, column] = rng.uniform(0.0, 2 * 86_400.0, n)
        elif name == "Amount":
            rows[:, column] = np.round(rng.lognormal(3.0, 1.6, n), 2)
    return rows


def save_model(estimator: Any, card: dict, model_dir: Path | str) -> dict:
    """Write the estimator and its card (with the file's sha256 filled in); return the card."""
    import joblib

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_dir / MODEL_FILE
    joblib.dump(estimator, model_path, compress=3)
    card = dict(card)
    card["model_sha256"] = sha256_of(model_path)
    card["model_size_bytes"] = model_path.stat().st_size
    (model_dir / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


def promote(models_dir: Path | str, version: str) -> Path:
    """Point `models/production` at a version directory (atomically replacing the old link)."""
    models_dir = Path(models_dir)
    read_card(models_dir / version)
    link = models_dir / PRODUCTION
    tmp = models_dir / f".{PRODUCTION}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version, tmp)
    os.replace(tmp, link)
    return link
