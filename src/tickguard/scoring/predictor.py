"""Scoring with loaded models, choosing how each is scored, and swapping models while requests arrive.

The model store hands over a verified estimator; this module decides how to score it: through the
compiled scorer when the estimator's structure allows and its compiled scores match the estimator's
on probe rows (TICKGUARD_COMPILED_SCORER=0 turns that off), else through the estimator itself. That is
a serving optimisation, so it lives here and not in the model store.

One service serves one model per detector (`models/<detector>/production`). Each has a `ModelHolder`;
the `ModelRegistry` maps served model names to holders and knows the default one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tickguard.errors import TickguardError
from tickguard.modelstore import (
    CARD_DETECTOR_SHA256,
    PRODUCTION,
    ModelArtifact,
    card_detector_differences,
    detector_models_dir,
    load_model,
    production_models,
    read_card,
    recorded_detector_differences,
    resolve_model_dir,
)
from tickguard.scoring.errors import ScoringError
from tickguard.scoring.payloads import FeatureSchema, card_model_name, predict_response_body

if TYPE_CHECKING:
    from tickguard.detectors import DetectorSpec

log = logging.getLogger(__name__)

# The model /predict scores when several are served and the request names none.
DEFAULT_MODEL_NAME = "fraud"


def probe_rows(features: Sequence[str], n: int = 2048, seed: int = 7) -> np.ndarray:
    """Deterministic synthetic rows to check a compiled scorer against its model.

    Values are drawn wide (several standard deviations) so the rows reach the trees' rare branches as
    well as the common ones; a `Time` column covers two days and an `Amount` column spans cents to
    thousands, the ranges of the credit-card fields.
    """
    rng = np.random.default_rng(seed)
    rows = rng.normal(0.0, 3.0, size=(n, len(features)))
    for column, name in enumerate(features):
        if name == "Time":
            rows[:, column] = rng.uniform(0.0, 2 * 86_400.0, n)
        elif name == "Amount":
            rows[:, column] = np.round(rng.lognormal(3.0, 1.6, n), 2)
    return rows


def choose_scorer(artifact: ModelArtifact) -> Any:
    """A compiled scorer that reproduces `artifact` on probe rows, or None to score with the estimator."""
    from tickguard.compiled_scorer import compile_if_possible  # numba: imported only when a model loads

    return compile_if_possible(artifact.estimator, probe_rows(artifact.features))


def find_detector(name: str) -> DetectorSpec | None:
    """The detector file `name` (tickguard.detectors), or None when no such file is installed here.

    The api image holds models but not necessarily detector files: a model is then checked against
    the spec its own card recorded. A detector file that exists but is invalid raises its error.
    """
    from tickguard.detectors import detectors_dirs, load_detector

    if not any((folder / f"{name}.toml").is_file() for folder in detectors_dirs()):
        return None
    return load_detector(name)


@dataclass(frozen=True)
class Predictor:
    """A verified model, how it is scored, and the schema its requests are checked against."""

    artifact: ModelArtifact
    schema: FeatureSchema
    compiled: Any = None  # a tickguard.compiled_scorer.CompiledScorer checked against the estimator
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(
        cls,
        model_dir: Path | str,
        max_rows: int,
        detector: DetectorSpec | None = None,
        compile_scorer: bool = True,
    ) -> Predictor:
        """Load (sha256-checked), check against `detector`, choose the scorer, and test one prediction."""
        artifact = load_model(model_dir)
        if detector is not None:
            differences = card_detector_differences(artifact.card, detector)
            if differences:
                raise TickguardError(
                    f"model {artifact.version} ({artifact.path}) disagrees with detector {detector.name} "
                    f"({getattr(detector, 'path', '?')}): {'; '.join(differences)}"
                )
        compiled = choose_scorer(artifact) if compile_scorer else None
        predictor = cls(
            artifact=artifact, schema=FeatureSchema(artifact.features, max_rows), compiled=compiled
        )
        predictor.self_test()
        return predictor

    @property
    def version(self) -> str:
        """Model version from the card."""
        return self.artifact.version

    @property
    def threshold(self) -> float:
        """Decision threshold from the card: score >= threshold is an anomaly."""
        return self.artifact.threshold

    @property
    def card(self) -> dict:
        """The model card."""
        return self.artifact.card

    @property
    def estimator(self) -> Any:
        """The fitted estimator the card describes."""
        return self.artifact.estimator

    @property
    def features(self) -> list[str]:
        """Feature names in the estimator's column order."""
        return self.artifact.features

    @property
    def path(self) -> Path:
        """Directory the model was loaded from."""
        return self.artifact.path

    @property
    def scored_by(self) -> str:
        """'compiled' when the compiled scorer serves this model, else 'pipeline'."""
        return "compiled" if self.compiled is not None else "pipeline"

    def score(self, X: np.ndarray) -> np.ndarray:
        """Anomaly probabilities for a 2-D array of finite floats with columns in `features` order."""
        if self.compiled is not None:
            return self.compiled.score(X)
        return self.artifact.score(X)

    def reference_score(self, X: np.ndarray) -> np.ndarray:
        """The estimator's own probabilities (what the compiled scorer must reproduce)."""
        return self.artifact.score(X)

    def self_test(self) -> None:
        """Score one all-zero row; refuse the model unless it yields one probability in [0, 1]."""
        width = len(self.schema.features)
        if width == 0:
            raise TickguardError(f"model {self.version} has no features in its card")
        try:
            scores = self.score(np.zeros((2, width), dtype=np.float64))
        except Exception as exc:  # any estimator failure makes the model unusable
            raise TickguardError(f"test prediction with model {self.version} failed: {exc!r}") from exc
        if scores.shape != (2,) or not np.all((scores >= 0.0) & (scores <= 1.0)):
            raise TickguardError(
                f"test prediction with model {self.version} returned {scores!r}, not two probabilities"
            )

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorized scores and anomaly flags for a [n, features] matrix."""
        if matrix.shape[0] == 0:
            return np.empty(0, dtype=np.float64), np.empty(0, dtype=bool)
        scores = self.score(matrix)  # the parsers already refused NaN and infinities
        return scores, scores >= self.threshold

    def predict_response(self, body: Any) -> tuple[dict[str, Any], int]:
        """Parse a /predict body, score it and build the JSON response; returns (response, rows)."""
        matrix, single = self.schema.parse_predict(body)
        scores, anomalies = self.predict(matrix)
        return predict_response_body(scores, anomalies, self.threshold, self.version, single), len(scores)


class ModelHolder:
    """The model a process serves for one detector. Requests read `current` once; a reload swaps it.

    With several worker processes, the worker that performs a reload records the new model
    directory in a shared pointer file (`shared_pointer`); the others notice the change on their
    next request (`sync`) and load the same, hash-verified directory. `sync` looks at the file at
    most every POINTER_CHECK_INTERVAL_S, and `reload` returns only after that long, so once a
    reload has answered, every worker's next request sees the new pointer.

    Every load checks the model's card against the detector file of the same name when one exists
    (`detector_lookup`): a model whose features, label or spec hash disagree is refused.
    """

    POINTER_CHECK_INTERVAL_S = 0.05

    def __init__(
        self,
        models_dir: Path,
        max_rows: int,
        shared_pointer: Path | None = None,
        detector: str | None = None,
        detector_lookup: Callable[[str], DetectorSpec | None] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)  # this detector's directory: models/<detector>
        self.detector = detector or self.models_dir.name
        self.max_rows = max_rows
        self.shared_pointer = shared_pointer
        self.detector_lookup = detector_lookup or find_detector
        self.current: Predictor | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pointer_stamp: int | None = None
        self._next_pointer_check = 0.0

    @property
    def name(self) -> str:
        """The served model name: the detector's `model.name` as the card records it, else the detector."""
        predictor = self.current
        return (card_model_name(predictor.artifact.card) if predictor else None) or self.detector

    def _load(self, model_dir: Path | str) -> Predictor:
        """Load one model directory, checked against this detector's file (or, without one, the spec
        its card recorded)."""
        try:
            spec = self.detector_lookup(self.detector)
        except TickguardError as exc:
            raise TickguardError(
                f"detector {self.detector} cannot be read, so its model is not loaded: {exc}"
            ) from exc
        if spec is None:
            differences = recorded_detector_differences(read_card(model_dir), self.detector)
            if differences:
                raise TickguardError(
                    f"model in {model_dir} disagrees with the detector spec its card records: "
                    f"{'; '.join(differences)}"
                )
        return Predictor.load(model_dir, self.max_rows, detector=spec)

    def load_initial(self, model: Path | str) -> None:
        """Load the start-up model (or the one another worker switched to); keep serving on failure."""
        shared = self._read_pointer()
        target = shared or model
        try:
            self.current = self._load(self._resolve(target))
            self.last_error = None
            log.info(
                "model loaded",
                extra={
                    "model": self.detector,
                    "model_version": self.current.version,
                    "model_dir": str(self.current.path),
                    "scored_by": self.current.scored_by,
                },
            )
        except Exception as exc:  # a broken model must not stop the service (or the other models)
            self.last_error = f"model {self.detector}: {exc}"
            log.error("model %s not loaded: %s", self.detector, exc)

    def _resolve(self, name: Path | str) -> Path:
        """Model directory for a version name, 'production' or a path (via the model store)."""
        try:
            return resolve_model_dir(self.models_dir, str(name))
        except TickguardError as exc:
            raise ScoringError(
                404, f"model {self.detector} version {name!s} not found: {exc}", code="model_not_found"
            ) from exc

    def reload(self, name: str) -> tuple[Predictor, Predictor | None]:
        """Load, verify and test `name`, then swap it in; on any failure the old model stays."""
        with self._lock:
            previous = self.current
            model_dir = self._resolve(name)
            models_root = self.models_dir.resolve()
            if not model_dir.is_relative_to(models_root):
                raise ScoringError(
                    400,
                    f"model {name!r} resolves to {model_dir}, outside the models directory {models_root}",
                    code="model_outside_models_dir",
                )
            try:
                candidate = self._load(model_dir)
            except Exception as exc:  # unpickling can fail in many ways; all mean "keep the old one"
                kept = previous.version if previous else "none"
                raise ScoringError(
                    422,
                    f"reload of model {self.detector} refused, still serving version {kept}: {exc}",
                    code="model_rejected",
                ) from exc
            self.current = candidate
            self.last_error = None
            self._write_pointer(candidate)
            if self.shared_pointer is not None:
                time.sleep(self.POINTER_CHECK_INTERVAL_S)  # see the class docstring
            return candidate, previous

    def sync(self) -> None:
        """Follow a reload done by another worker process (one stat per check interval)."""
        if self.shared_pointer is None:
            return
        now = time.monotonic()
        if now < self._next_pointer_check:
            return
        self._next_pointer_check = now + self.POINTER_CHECK_INTERVAL_S
        try:
            stamp = self.shared_pointer.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._pointer_stamp:
            return
        with self._lock:
            if stamp == self._pointer_stamp:
                return
            self._pointer_stamp = stamp
            target = self._read_pointer()
            if target is None or (self.current is not None and self.current.path == Path(target)):
                return
            try:
                self.current = self._load(target)
                self.last_error = None
                log.info(
                    "model switched by another worker",
                    extra={"model": self.detector, "model_version": self.current.version},
                )
            except Exception as exc:  # keep serving the model this worker has
                self.last_error = f"model {self.detector}: {exc}"
                log.error("could not follow another worker's reload to %s: %s", target, exc)

    def _read_pointer(self) -> str | None:
        """Model directory named in the shared pointer file, if there is one."""
        if self.shared_pointer is None:
            return None
        try:
            self._pointer_stamp = self.shared_pointer.stat().st_mtime_ns
            return str(json.loads(self.shared_pointer.read_text())["model_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_pointer(self, predictor: Predictor) -> None:
        """Record the served model for the other workers (atomic replace)."""
        if self.shared_pointer is None:
            return
        tmp = self.shared_pointer.with_name(f".{self.shared_pointer.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model_dir": str(predictor.path), "version": predictor.version}))
        os.replace(tmp, self.shared_pointer)
        self._pointer_stamp = self.shared_pointer.stat().st_mtime_ns

    def describe(self) -> dict[str, Any]:
        """One entry of GET /models: what is served under this name, or why nothing is."""
        predictor = self.current
        entry: dict[str, Any] = {"name": self.name, "detector": self.detector, "ready": predictor is not None}
        if predictor is None:
            entry["error"] = self.last_error or "not loaded"
            return entry
        card = predictor.artifact.card
        entry.update(
            version=predictor.version,
            features=list(predictor.schema.features),
            threshold=predictor.threshold,
            detector_sha256=card.get(CARD_DETECTOR_SHA256),
            scored_by=predictor.scored_by,
        )
        return entry


class ModelRegistry:
    """Every model one service serves, by name: one holder per detector with a production model."""

    def __init__(self, holders: Sequence[ModelHolder], discovery_error: str | None = None) -> None:
        self.holders = list(holders)
        self.discovery_error = discovery_error

    @classmethod
    def discover(
        cls,
        models_root: Path | str,
        max_rows: int,
        detectors: Sequence[str] = (),
        model: str = PRODUCTION,
        runtime_dir: Path | None = None,
        detector_lookup: Callable[[str], DetectorSpec | None] | None = None,
    ) -> ModelRegistry:
        """Holders for `detectors` (default: every `models/*/production`), each loaded at start."""
        root = Path(models_root)
        error = None
        names = list(dict.fromkeys(detectors))
        if not names:
            try:
                names = list(production_models(root))
            except TickguardError as exc:
                error = str(exc)
            if not names and error is None:
                error = f"no model to serve: no {root}/<detector>/{PRODUCTION} found"
        if model != PRODUCTION and len(names) > 1:
            raise TickguardError(
                f"a model version ({model}) can be chosen only when one detector is served, not {names}"
            )
        holders = []
        for name in names:
            pointer = runtime_dir / f"active_model.{name}.json" if runtime_dir else None
            holder = ModelHolder(
                detector_models_dir(root, name),
                max_rows,
                pointer,
                detector=name,
                detector_lookup=detector_lookup,
            )
            holder.load_initial(model)
            holders.append(holder)
        return cls(holders, error)

    def by_name(self) -> dict[str, ModelHolder]:
        """Served model name -> holder (names come from the loaded cards, so they are read per call)."""
        return {holder.name: holder for holder in self.holders}

    def names(self) -> list[str]:
        """Served model names, sorted."""
        return sorted(self.by_name())

    def get(self, name: str | None) -> ModelHolder:
        """The holder of `name`, or of the default model when `name` is None; 404 naming the others."""
        holders = self.by_name()
        if name is None:
            if len(holders) == 1:
                return next(iter(holders.values()))
            if DEFAULT_MODEL_NAME in holders:
                return holders[DEFAULT_MODEL_NAME]
            if not holders:
                raise ScoringError(
                    503,
                    f"no model loaded: {self.discovery_error or 'none configured'}",
                    code="model_unavailable",
                )
            raise ScoringError(
                400,
                f"several models are served and none is named {DEFAULT_MODEL_NAME!r}: name one with "
                f"?model=NAME (available: {', '.join(sorted(holders))})",
                code="model_required",
            )
        holder = holders.get(name)
        if holder is None:
            raise ScoringError(
                404,
                f"unknown model {name!r}; this server serves {', '.join(sorted(holders)) or 'no model'}",
                code="model_not_found",
            )
        return holder

    def serving(self, name: str | None) -> Predictor:
        """The predictor for a request naming `name` (None = default), or 503 when it is not loaded."""
        holder = self.get(name)
        predictor = holder.current
        if predictor is None:
            raise ScoringError(
                503, f"no model loaded: {holder.last_error or 'unknown reason'}", code="model_unavailable"
            )
        return predictor

    def sync(self) -> None:
        """Follow other workers' reloads of any model."""
        for holder in self.holders:
            holder.sync()

    def loaded(self) -> list[ModelHolder]:
        """Holders with a model loaded."""
        return [holder for holder in self.holders if holder.current is not None]

    def errors(self) -> list[str]:
        """Why some models (or all) are not loaded."""
        problems = [
            holder.last_error or f"model {holder.detector}: not loaded"
            for holder in self.holders
            if holder.current is None
        ]
        if self.discovery_error:
            problems.append(self.discovery_error)
        return problems
