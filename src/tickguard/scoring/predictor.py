"""Scoring with a loaded model, and swapping models safely while requests keep arriving."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tickguard.errors import TickguardError
from tickguard.modelstore import ModelArtifact, load_model, resolve_model_dir
from tickguard.scoring.errors import ScoringError
from tickguard.scoring.payloads import FeatureSchema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictor:
    """A verified model plus the schema its requests are checked against; immutable once built."""

    artifact: ModelArtifact
    schema: FeatureSchema
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def load(cls, model_dir: Path | str, max_rows: int) -> Predictor:
        """Load (sha256-checked) and validate a model directory with one test prediction."""
        artifact = load_model(model_dir)
        predictor = cls(artifact=artifact, schema=FeatureSchema(artifact.features, max_rows))
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
    def path(self) -> Path:
        """Directory the model was loaded from."""
        return self.artifact.path

    def self_test(self) -> None:
        """Score one all-zero row; refuse the model unless it yields one probability in [0, 1]."""
        width = len(self.schema.features)
        if width == 0:
            raise TickguardError(f"model {self.version} has no features in its card")
        try:
            scores = self.artifact.score(np.zeros((2, width), dtype=np.float64))
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
        scores = self.artifact.score(matrix)  # the parsers already refused NaN and infinities
        return scores, scores >= self.threshold

    def predict_response(self, body: Any) -> tuple[dict[str, Any], int]:
        """Parse a /predict body, score it and build the JSON response; returns (response, rows)."""
        matrix, single = self.schema.parse_predict(body)
        scores, anomalies = self.predict(matrix)
        if single:
            return {
                "score": float(scores[0]),
                "anomaly": bool(anomalies[0]),
                "threshold": self.threshold,
                "model_version": self.version,
            }, 1
        predictions = [
            {"score": score, "anomaly": anomaly}
            for score, anomaly in zip(scores.tolist(), anomalies.tolist(), strict=True)
        ]
        return {"predictions": predictions, "threshold": self.threshold, "model_version": self.version}, len(
            predictions
        )


class ModelHolder:
    """The model a process serves. Requests read `current` once; a reload swaps it in one assignment.

    With several worker processes, the worker that performs a reload records the new model
    directory in a shared pointer file (`shared_pointer`); the others notice the change on their
    next request (`sync`) and load the same, hash-verified directory. `sync` looks at the file at
    most every POINTER_CHECK_INTERVAL_S, and `reload` returns only after that long, so once a
    reload has answered, every worker's next request sees the new pointer.
    """

    POINTER_CHECK_INTERVAL_S = 0.05

    def __init__(self, models_dir: Path, max_rows: int, shared_pointer: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.max_rows = max_rows
        self.shared_pointer = shared_pointer
        self.current: Predictor | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pointer_stamp: int | None = None
        self._next_pointer_check = 0.0

    def load_initial(self, model: Path | str) -> None:
        """Load the start-up model (or the one another worker switched to); keep serving on failure."""
        shared = self._read_pointer()
        target = shared or model
        try:
            self.current = Predictor.load(self._resolve(target), self.max_rows)
            self.last_error = None
            log.info(
                "model loaded",
                extra={
                    "model_version": self.current.version,
                    "model_dir": str(self.current.path),
                    "scored_by": self.current.artifact.scored_by,
                },
            )
        except Exception as exc:  # a broken model must not stop the service from starting
            self.last_error = str(exc)
            log.error("no model loaded: %s", exc)

    def _resolve(self, name: Path | str) -> Path:
        """Model directory for a version name, 'production' or a path (via the model store)."""
        try:
            return resolve_model_dir(self.models_dir, str(name))
        except TickguardError as exc:
            raise ScoringError(404, f"model {name!s} not found: {exc}", code="model_not_found") from exc

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
                candidate = Predictor.load(model_dir, self.max_rows)
            except Exception as exc:  # unpickling can fail in many ways; all mean "keep the old one"
                kept = previous.version if previous else "none"
                raise ScoringError(
                    422, f"reload refused, still serving model {kept}: {exc}", code="model_rejected"
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
                self.current = Predictor.load(target, self.max_rows)
                self.last_error = None
                log.info("model switched by another worker", extra={"model_version": self.current.version})
            except Exception as exc:  # keep serving the model this worker has
                self.last_error = str(exc)
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
