"""The `/predict` contract, both sides: what a client sends and reads back, what the server accepts.

One module for the request and the response, so the agent, the backfill, the notebooks and the
service cannot drift apart:
- clients build bodies with `columns_request` / `instances_request`, address a model with
  `predict_path` / `card_path` (`?model=NAME`; no name = the server's default model) and read answers
  with `parse_predict_response` / `parse_card` / `card_model_name`;
- the service turns decoded bodies into a float feature matrix with `FeatureSchema` (or says exactly
  what is wrong) and answers with `predict_response_body`.

Every server-side parser has a fast path (one C-level pass to gather values, one `np.array` call) and,
only when that path meets something odd, a slow path that walks the input and names each offending
field and row. Valid batches never pay for the error reporting.

Clients run where numpy is not installed (the UDF agent's image), so numpy is imported by the
server-side functions only; the module itself needs orjson and the standard library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from tickguard.scoring.errors import ScoringError, problem

if TYPE_CHECKING:
    import numpy as np

# Features a client may send that some models do not use (the data set's `Time` column is an
# offset from the first transaction, which a model may or may not have been trained on).
OPTIONAL_INPUTS = ("Time",)

_NUMBER_TYPES = frozenset({float, int})


def decode_json(raw: bytes) -> Any:
    """Decode a request body; NaN/Infinity literals are kept so validation can name their field."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as fast_error:
        # orjson rejects the NaN/Infinity literals (and 1e999) that Python's json module writes.
        # Python's parser accepts them; the feature validation then reports them per field.
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise ScoringError(400, f"malformed JSON: {fast_error}", code="malformed_json") from None


def value_problem(value: Any) -> str | None:
    """Why a JSON value is not a usable feature value, or None if it is a finite number."""
    kind = type(value)
    if kind is float:
        if math.isnan(value):
            return "NaN is not a valid value"
        if math.isinf(value):
            return "infinite values are not valid"
        return None
    if kind is int:
        try:
            float(value)
        except OverflowError:
            return "number is out of the float range"
        return None
    if kind is bool:
        return "expected a number, got a boolean"
    if value is None:
        return "expected a number, got null"
    if kind is str:
        return "expected a number, got a string"
    if kind is list:
        return "expected a number, got an array"
    if kind is dict:
        return "expected a number, got an object"
    return f"expected a number, got {kind.__name__}"


def _to_matrix(rows: Sequence[Sequence[Any]], width: int) -> np.ndarray | None:
    """Rows of plain finite numbers -> float64 matrix; None when anything needs a closer look."""
    if not set(map(type, chain.from_iterable(rows))) <= _NUMBER_TYPES:
        return None
    import numpy as np

    try:
        matrix = np.array(rows, dtype=np.float64)
    except (ValueError, OverflowError):
        return None
    if matrix.shape != (len(rows), width) or not np.isfinite(matrix).all():
        return None
    return matrix


class FeatureSchema:
    """The model's feature list and the rules for mapping request bodies onto it."""

    def __init__(self, features: Sequence[str], max_rows: int) -> None:
        self.features = tuple(features)
        self.max_rows = max_rows
        self.ignored = frozenset(name for name in OPTIONAL_INPUTS if name not in self.features)
        self.accepted = frozenset(self.features) | self.ignored
        self._getter = itemgetter(*self.features)
        self._single = len(self.features) == 1

    # ---- /predict ---------------------------------------------------------------------------

    def parse_predict(self, body: Any) -> tuple[np.ndarray, bool]:
        """Parse any /predict form; returns (matrix, is_single_record)."""
        if not isinstance(body, dict):
            raise ScoringError(
                400,
                'the body must be a JSON object: one record, {"instances": [...]} or '
                '{"columns": [...], "data": [[...]]}',
            )
        if "instances" in body:
            extra = sorted(set(body) - {"instances"})
            if extra:
                raise ScoringError(400, f"unexpected top-level keys next to 'instances': {extra}")
            return self.parse_instances(body["instances"]), False
        if "columns" in body or "data" in body:
            extra = sorted(set(body) - {"columns", "data"})
            if extra:
                raise ScoringError(400, f"unexpected top-level keys next to 'columns'/'data': {extra}")
            return self.parse_columns(body.get("columns"), body.get("data")), False
        return self.parse_instances([body]), True

    def check_row_count(self, count: int) -> None:
        """Refuse batches over the configured row limit with 413."""
        if count > self.max_rows:
            raise ScoringError(
                413,
                f"batch has {count} rows; the limit is {self.max_rows} (TICKGUARD_MAX_ROWS)",
                code="too_many_rows",
            )

    def parse_instances(self, rows: Any) -> np.ndarray:
        """A list of {feature: value} objects -> matrix in the model's feature order."""
        if not isinstance(rows, list):
            raise ScoringError(400, "'instances' must be an array of objects")
        self.check_row_count(len(rows))
        if not rows:
            import numpy as np

            return np.empty((0, len(self.features)), dtype=np.float64)
        width = len(self.features)
        plain = width + len(self.ignored)
        try:
            values = [self._getter(row) for row in rows]
        except (KeyError, TypeError):
            values = None
        if values is not None:
            if self._single:
                values = [(value,) for value in values]
            # All model features are present; anything beyond them must be an ignored input.
            if all(len(row) == width or (len(row) <= plain and row.keys() <= self.accepted) for row in rows):
                matrix = _to_matrix(values, width)
                if matrix is not None:
                    return matrix
        raise ScoringError(400, self._describe_rows(rows), self._instance_problems(rows))

    def _instance_problems(self, rows: list[Any]) -> list[dict[str, Any]]:
        """Every missing, unknown or non-numeric field of every row."""
        problems: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                problems.append(problem(index, None, f"expected an object, got {_json_kind(row)}"))
                continue
            for name in self.features:
                if name not in row:
                    problems.append(problem(index, name, "missing"))
                else:
                    issue = value_problem(row[name])
                    if issue:
                        problems.append(problem(index, name, issue))
            for name in row:
                if name not in self.accepted:
                    problems.append(problem(index, str(name), "unknown field"))
        return problems

    def parse_columns(self, columns: Any, data: Any) -> np.ndarray:
        """{"columns": [...], "data": [[...], ...]} -> matrix; columns may come in any order."""
        if not isinstance(columns, list) or not all(isinstance(name, str) for name in columns):
            raise ScoringError(
                400, "'columns' must be an array of feature names", [problem(None, "columns", "invalid")]
            )
        if not isinstance(data, list):
            raise ScoringError(
                400, "'data' must be an array of rows (arrays)", [problem(None, "data", "invalid")]
            )
        self.check_row_count(len(data))
        problems: list[dict[str, Any]] = []
        seen: set[str] = set()
        for name in columns:
            if name in seen:
                problems.append(problem(None, name, "duplicate column"))
            seen.add(name)
            if name not in self.accepted:
                problems.append(problem(None, name, "unknown field"))
        problems += [problem(None, name, "missing column") for name in self.features if name not in seen]
        if problems:
            raise ScoringError(
                400, "the columns do not match the model's features (row null = every row)", problems
            )
        width = len(columns)
        import numpy as np

        if not data:
            return np.empty((0, len(self.features)), dtype=np.float64)
        order = [columns.index(name) for name in self.features]
        matrix = _to_matrix(data, width) if set(map(type, data)) == {list} else None
        if matrix is None:
            problems = self._column_problems(columns, data)
            if problems:
                raise ScoringError(400, self._describe_rows(data), problems)
            # Only the ignored columns (e.g. Time) held odd values: drop them and use the rest.
            matrix = _to_matrix([[row[i] for i in order] for row in data], len(order))
            if matrix is None:  # unreachable when the problem scan is complete; never a 500
                raise ScoringError(400, self._describe_rows(data))
            return matrix
        if tuple(columns) == self.features:
            return matrix
        return np.ascontiguousarray(matrix[:, order])

    def _column_problems(self, columns: list[str], data: list[Any]) -> list[dict[str, Any]]:
        """Every short/long row and non-numeric cell, by row index and column name."""
        problems: list[dict[str, Any]] = []
        width = len(columns)
        for index, row in enumerate(data):
            if not isinstance(row, list):
                problems.append(
                    problem(index, None, f"expected an array of {width} values, got {_json_kind(row)}")
                )
                continue
            if len(row) != width:
                problems.append(
                    problem(index, None, f"expected {width} values (one per column), got {len(row)}")
                )
            for name, value in zip(columns, row, strict=False):
                issue = value_problem(value)
                if issue and name not in self.ignored:
                    problems.append(problem(index, name, issue))
        return problems

    @staticmethod
    def _describe_rows(rows: list[Any]) -> str:
        """Headline of a row-validation error."""
        return f"invalid input in a batch of {len(rows)} row(s); see 'problems' (row index, field)"

    # ---- helpers shared with the V2 protocol -----------------------------------------------

    def finite_matrix(self, matrix: np.ndarray, names: Sequence[str]) -> None:
        """Raise a per-cell error for NaN/inf cells of an already-numeric matrix."""
        import numpy as np

        bad_rows, bad_cols = np.nonzero(~np.isfinite(matrix))
        if bad_rows.size == 0:
            return
        problems = [
            problem(int(row), names[col], value_problem(float(matrix[row, col])) or "not finite")
            for row, col in zip(bad_rows[:1000].tolist(), bad_cols[:1000].tolist(), strict=True)
        ]
        raise ScoringError(400, "NaN or infinite values; see 'problems' (row index, field)", problems)


def _json_kind(value: Any) -> str:
    """JSON name of a decoded value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# ---- the response, and the client's side of the contract --------------------------------------

PREDICT_PATH = "/predict"
CARD_PATH = "/model"
# Query parameter naming the model (a body field could clash with a feature of that name).
MODEL_PARAM = "model"


class PayloadError(ValueError):
    """A /predict or /model answer a client cannot use (not the contract's shape)."""


@dataclass(frozen=True)
class PredictResult:
    """A batch /predict answer: scores and flags in input order, and the model that made them."""

    scores: list[float]
    flags: list[bool]
    threshold: float
    model_version: str


def predict_response_body(
    scores: np.ndarray, anomalies: np.ndarray, threshold: float, version: str, single: bool
) -> dict[str, Any]:
    """The /predict answer: a flat result for one record, `predictions` in input order for a batch."""
    if single:
        return {
            "score": float(scores[0]),
            "anomaly": bool(anomalies[0]),
            "threshold": threshold,
            "model_version": version,
        }
    predictions = [
        {"score": score, "anomaly": anomaly}
        for score, anomaly in zip(scores.tolist(), anomalies.tolist(), strict=True)
    ]
    return {"predictions": predictions, "threshold": threshold, "model_version": version}


def _with_model(path: str, model: str | None) -> str:
    return f"{path}?{MODEL_PARAM}={quote(model, safe='')}" if model else path


def predict_path(model: str | None = None) -> str:
    """Path of /predict for `model` (None = the server's default model)."""
    return _with_model(PREDICT_PATH, model)


def card_path(model: str | None = None) -> str:
    """Path of the model card (GET /model) of `model` (None = the server's default model)."""
    return _with_model(CARD_PATH, model)


def columns_request(columns: Sequence[str], rows: Sequence[Sequence[float]]) -> bytes:
    """A column-oriented batch body (the compact form): one list of names, one list of values per row."""
    return orjson.dumps({"columns": list(columns), "data": rows})


def instances_request(records: Sequence[dict[str, float]]) -> bytes:
    """A batch body of {feature: value} records."""
    return orjson.dumps({"instances": list(records)})


def record_request(record: dict[str, float]) -> bytes:
    """A single-record body: one {feature: value} object, answered by one flat result."""
    return orjson.dumps(record)


def parse_predict_response(content: bytes, rows: int | None = None) -> PredictResult:
    """Read a /predict answer (a batch's, or a single record's as one prediction); PayloadError when it
    is not one (or not `rows` predictions long)."""
    try:
        payload = orjson.loads(content)
        predictions = payload.get("predictions", [payload])
        result = PredictResult(
            [float(p["score"]) for p in predictions],
            [bool(p["anomaly"]) for p in predictions],
            float(payload["threshold"]),
            str(payload["model_version"]),
        )
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise PayloadError("the scoring service returned an unexpected /predict body") from None
    if rows is not None and len(result.scores) != rows:
        raise PayloadError(f"the scoring service returned {len(result.scores)} scores for {rows} rows")
    return result


def card_model_name(card: dict[str, Any]) -> str | None:
    """The served model name a card records (its detector's `model.name`; the service routes
    /v2/models/<name> by it), or None when the card does not say."""
    detector = card.get("detector")
    model = detector.get("model") if isinstance(detector, dict) else None
    name = model.get("name") if isinstance(model, dict) else None
    return name if isinstance(name, str) and name else None


def parse_card(content: bytes) -> dict[str, Any]:
    """Read a GET /model answer: the model card, with a usable `features` list (else PayloadError)."""
    try:
        card = orjson.loads(content)
        features = card["features"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise PayloadError("the scoring service did not return a model card with 'features'") from None
    if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
        raise PayloadError("the scoring service returned an unusable feature list")
    return card
