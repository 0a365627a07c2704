"""Model artifacts on disk: `models/<detector>/<version>/{model.joblib, model_card.json, pr_curve.png}`.

The contract every part of tickguard relies on (training and `tickguard models import` write it, the
REST service and the backfill read it):

- `model.joblib` is a fitted estimator/pipeline with `predict_proba(X)`; X is a float array whose
  columns are `card["features"]`, in that order.
- `model_card.json` holds at least `version`, `features`, `threshold` and `model_sha256`; a model
  saved for a detector also holds that detector's spec (`detector`, its canonical dict) and
  `detector_sha256`, so a server can tell whether the model still fits the detector file it serves.
- `models/<detector>/production` is a symlink (or, where links are unavailable, a one-line text
  file) naming the detector's served version directory. One directory per detector keeps versions of
  different detectors apart, and lets one service find every served model with one glob.

Pickle files run code when loaded, so `load_model` checks the file's sha256 against the card
before unpickling anything. How a loaded model is scored fast is the predictor's business
(tickguard.scoring.predictor), not this module's.

Reading cards and hashing files needs only the standard library, so the light commands (`tickguard
data fetch`, `serve`'s argument checks) work without the numeric stack; joblib and the model's own
libraries are imported by the functions that load or save a model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickguard.detectors import DEFAULT_DETECTOR
from tickguard.errors import ModelIntegrityError

if TYPE_CHECKING:
    import numpy as np

    from tickguard.detectors import DetectorSpec

MODEL_FILE = "model.joblib"
CARD_FILE = "model_card.json"
PR_CURVE_FILE = "pr_curve.png"
PRODUCTION = "production"
REQUIRED_CARD_KEYS = ("version", "features", "threshold", "model_sha256")
# Card keys written by `save_model(..., detector=spec)`.
CARD_DETECTOR = "detector"
CARD_DETECTOR_SHA256 = "detector_sha256"


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

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly probabilities from the estimator itself, for finite floats in `features` order."""
        import numpy as np
        import sklearn

        # Callers pass validated finite input; sklearn's own scan per pipeline step is repeated work.
        with sklearn.config_context(assume_finite=True):
            return np.asarray(self.estimator.predict_proba(X)[:, 1], dtype=np.float64)


def detector_models_dir(models_root: Path | str, detector: str = DEFAULT_DETECTOR) -> Path:
    """`models/<detector>`: where one detector's versions and its `production` link live."""
    return Path(models_root) / detector


def production_models(models_root: Path | str) -> dict[str, Path]:
    """Every detector under `models_root` that has a `production` entry, name -> its detector directory.

    A `production` directly in `models_root` is the layout before detectors existed; it is refused with
    the command that converts it, rather than silently serving nothing.
    """
    root = Path(models_root)
    if (root / PRODUCTION).exists() or (root / PRODUCTION).is_symlink():
        raise ModelIntegrityError(
            f"{root / PRODUCTION} is the old single-model layout: move the versions into "
            f"{root / DEFAULT_DETECTOR}/ (e.g. `mkdir {root / DEFAULT_DETECTOR} && mv {root}/v* "
            f"{root / PRODUCTION} {root / DEFAULT_DETECTOR}/`)"
        )
    if not root.is_dir():
        return {}
    found = {}
    for entry in sorted(root.iterdir()):
        link = entry / PRODUCTION
        if entry.is_dir() and not entry.name.startswith((".", "_")) and (link.exists() or link.is_symlink()):
            found[entry.name] = entry
    return found


def resolve_model_dir(models_dir: Path | str, name: str = PRODUCTION) -> Path:
    """Turn `production`, a version name or a path into a model directory that exists.

    `models_dir` is one detector's directory (`models/<detector>`, see `detector_models_dir`).
    """
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
    if not isinstance(card, dict):
        raise ModelIntegrityError(f"model card {path} is not a JSON object")
    missing = [key for key in REQUIRED_CARD_KEYS if key not in card]
    if missing:
        raise ModelIntegrityError(f"model card {path} lacks {', '.join(missing)}")
    return card


def load_model(model_dir: Path | str) -> ModelArtifact:
    """Load a model directory, refusing it if the model file's sha256 differs from the card's."""
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
    if getattr(estimator, "feature_names_in_", None) is not None:
        _quiet_unnamed_columns_warning()
    return ModelArtifact(estimator=estimator, card=card, path=model_dir.resolve())


def _quiet_unnamed_columns_warning() -> None:
    """Silence sklearn's "X does not have valid feature names" for models fitted on a DataFrame.

    Scoring passes arrays whose columns are the card's features in order (`tickguard models import`
    refuses an estimator whose fitted column names differ), so the warning says nothing; left on, a model
    a user fitted on pandas would write it to the service log on every request.
    """
    import warnings

    warnings.filterwarnings(
        "ignore", message="X does not have valid feature names", category=UserWarning, module="sklearn"
    )


def detector_card_fields(detector: DetectorSpec) -> dict[str, Any]:
    """What a model card records about the detector it was made for."""
    return {CARD_DETECTOR: detector.to_dict(), CARD_DETECTOR_SHA256: detector.sha256}


def card_detector_differences(card: Mapping[str, Any], detector: DetectorSpec) -> list[str]:
    """How a model card disagrees with a detector spec, one phrase per difference (empty = it fits).

    The features must be the detector's request fields in order (what a client sends: the raw fields, or
    the window columns of a windowed detector); when the card records the detector it was saved for, its
    label and spec hash must be the current file's too.
    """
    differences = []
    fields = list(detector.request_fields)
    if list(card.get("features", [])) != fields:
        missing = [name for name in fields if name not in card.get("features", [])]
        extra = [name for name in card.get("features", []) if name not in fields]
        detail = "; ".join(
            part
            for part in (
                f"the card lacks {missing}" if missing else "",
                f"the detector has no {extra}" if extra else "",
                "same fields, another order" if not missing and not extra else "",
            )
            if part
        )
        differences.append(f"features differ ({detail})")
    recorded = card.get(CARD_DETECTOR)
    if isinstance(recorded, Mapping):
        current = detector.to_dict()
        if recorded.get("label") != current.get("label"):
            differences.append(
                f"label differs (card {recorded.get('label')!r}, detector {current.get('label')!r})"
            )
        if card.get(CARD_DETECTOR_SHA256) != detector.sha256:
            differences.append(
                f"detector spec hash differs (card {str(card.get(CARD_DETECTOR_SHA256))[:12]}, "
                f"{detector.path.name if getattr(detector, 'path', None) else 'file'} {detector.sha256[:12]})"
            )
    return differences


def recorded_detector_differences(card: Mapping[str, Any], detector_name: str) -> list[str]:
    """How a card disagrees with the detector spec it recorded itself (for hosts without the detector file).

    The card must belong to `detector_name` (the directory it sits in) and its features must be the
    recorded spec's request fields (its window columns when it declares windows); a card that records no
    spec has nothing to compare.
    """
    recorded = card.get(CARD_DETECTOR)
    if not isinstance(recorded, Mapping):
        return []
    differences = []
    if recorded.get("name") != detector_name:
        differences.append(f"the card was made for detector {recorded.get('name')!r}, not {detector_name!r}")
    fields = [
        item.get("field") if isinstance(item, Mapping) else item for item in recorded.get("features", [])
    ]
    if isinstance(recorded.get("windows"), Mapping):  # a windowed detector is sent its window columns
        from tickguard.detectors.spec import window_spec_from_canonical

        fields = list(window_spec_from_canonical(recorded["windows"]).columns(tuple(fields)))
    if list(card.get("features", [])) != fields:
        differences.append(f"features differ from the recorded spec's fields {fields}")
    return differences


def save_model(
    estimator: Any, card: dict, model_dir: Path | str, detector: DetectorSpec | None = None
) -> dict:
    """Write the estimator and its card (with the file's sha256 filled in); return the card.

    With `detector`, the card records the detector's spec and hash, and a card whose features are not
    the detector's fields is refused before anything is written.
    """
    import joblib

    card = dict(card)
    if detector is not None:
        card.update(detector_card_fields(detector))
        differences = card_detector_differences(card, detector)
        if differences:
            raise ModelIntegrityError(
                f"model {card.get('version')} does not fit detector {detector.name}: {'; '.join(differences)}"
            )
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model_path = model_dir / MODEL_FILE
    joblib.dump(estimator, model_path, compress=3)
    card["model_sha256"] = sha256_of(model_path)
    card["model_size_bytes"] = model_path.stat().st_size
    (model_dir / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return card


def promote(models_dir: Path | str, version: str) -> Path:
    """Point `<models_dir>/production` at a version directory (atomically replacing the old link).

    `models_dir` is one detector's directory (`models/<detector>`).
    """
    models_dir = Path(models_dir)
    read_card(models_dir / version)
    link = models_dir / PRODUCTION
    tmp = models_dir / f".{PRODUCTION}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version, tmp)
    os.replace(tmp, link)
    return link
