"""Open Inference Protocol (KServe/MLServer "V2") request parsing and response building."""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from tickguard.scoring.errors import ScoringError, problem
from tickguard.scoring.payloads import FeatureSchema, value_problem

FLOAT_TYPES = {"FP32": np.float32, "FP64": np.float64}
OUTPUT_NAMES = ("score", "anomaly")
BATCH_TENSOR_NAME = "features"

_NUMBER_TYPES = frozenset({float, int})


def model_metadata(name: str, version: str, schema: FeatureSchema, threshold: float) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the batch tensor as input, score and anomaly as outputs."""
    return {
        "name": name,
        "versions": [version],
        "platform": "sklearn",
        "inputs": [{"name": BATCH_TENSOR_NAME, "datatype": "FP64", "shape": [-1, len(schema.features)]}],
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "anomaly", "datatype": "BOOL", "shape": [-1]},
        ],
        # Not in the protocol's required fields; clients that do not know them ignore them.
        "parameters": {
            "feature_names": list(schema.features),
            "ignored_inputs": sorted(schema.ignored),
            "threshold": threshold,
            "per_feature_inputs": "also accepted: one tensor per feature name, shape [n] or [n, 1]",
        },
    }


def parse_infer(body: Any, schema: FeatureSchema) -> tuple[np.ndarray, list[str]]:
    """An inference request -> (matrix in feature order, requested output names)."""
    if not isinstance(body, dict):
        raise ScoringError(400, "the inference request must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ScoringError(
            400, "'inputs' must be a non-empty array of tensors", [problem(None, "inputs", "invalid")]
        )
    outputs = _requested_outputs(body.get("outputs"))
    tensors = [_check_tensor(index, tensor) for index, tensor in enumerate(inputs)]
    if len(tensors) == 1 and tensors[0]["name"] not in schema.accepted:
        return _batch_tensor(tensors[0], schema), outputs
    return _feature_tensors(tensors, schema), outputs


def infer_response(
    name: str, version: str, request_id: str, scores: np.ndarray, anomalies: np.ndarray, outputs: list[str]
) -> dict[str, Any]:
    """The inference response with the requested outputs, in row order."""
    rows = int(scores.shape[0])
    tensors = {
        "score": {"name": "score", "datatype": "FP64", "shape": [rows], "data": scores.tolist()},
        "anomaly": {"name": "anomaly", "datatype": "BOOL", "shape": [rows], "data": anomalies.tolist()},
    }
    return {
        "model_name": name,
        "model_version": version,
        "id": request_id,
        "outputs": [tensors[output] for output in outputs],
    }


def _requested_outputs(requested: Any) -> list[str]:
    """Names from the optional `outputs` list; both outputs when absent."""
    if requested is None:
        return list(OUTPUT_NAMES)
    if not isinstance(requested, list) or not all(isinstance(item, dict) for item in requested):
        raise ScoringError(400, "'outputs' must be an array of {\"name\": ...} objects")
    names = [item.get("name") for item in requested]
    unknown = [str(name) for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise ScoringError(
            400,
            f"unknown output(s) {unknown}; this model has {list(OUTPUT_NAMES)}",
            [problem(None, name, "unknown output") for name in unknown],
        )
    return list(dict.fromkeys(names)) or list(OUTPUT_NAMES)


def _check_tensor(index: int, tensor: Any) -> dict[str, Any]:
    """Structural checks of one input tensor (name, shape, datatype, data)."""
    where = f"inputs[{index}]"
    if not isinstance(tensor, dict):
        raise ScoringError(400, f"{where} must be an object", [problem(None, where, "not an object")])
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ScoringError(400, f"{where}.name must be a non-empty string", [problem(None, where, "no name")])
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > 2
        or not all(type(dim) is int and dim >= 0 for dim in shape)
    ):
        raise ScoringError(
            400,
            f"tensor {name!r}: shape must be [n] or [n, k] with non-negative integers",
            [problem(None, name, "invalid shape")],
        )
    datatype = tensor.get("datatype")
    if datatype not in FLOAT_TYPES:
        raise ScoringError(
            400,
            f"tensor {name!r}: datatype must be FP32 or FP64, got {datatype!r}",
            [problem(None, name, "unsupported datatype")],
        )
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ScoringError(
            400, f"tensor {name!r}: data must be an array", [problem(None, name, "invalid data")]
        )
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _flat_values(tensor: dict[str, Any], expected: int) -> list[Any]:
    """Tensor data as a flat row-major list (nested arrays are flattened), checked for size."""
    data = tensor["data"]
    if data and isinstance(data[0], list):
        if set(map(type, data)) != {list}:
            raise ScoringError(400, f"tensor {tensor['name']!r}: mixed nested and flat data")
        data = list(chain.from_iterable(data))
    if len(data) != expected:
        raise ScoringError(
            400,
            f"tensor {tensor['name']!r}: shape {tensor['shape']} needs {expected} values, got {len(data)}",
            [problem(None, tensor["name"], "data size does not match shape")],
        )
    return data


def _to_array(tensor: dict[str, Any], values: list[Any], names: list[str], width: int) -> np.ndarray:
    """Flat JSON values -> float64 vector, naming row and field of each bad value."""
    array = None
    if set(map(type, values)) <= _NUMBER_TYPES:
        try:
            with np.errstate(over="ignore"):  # FP32 overflow becomes inf, reported below per value
                array = np.array(values, dtype=FLOAT_TYPES[tensor["datatype"]]).astype(np.float64, copy=False)
        except (ValueError, OverflowError):
            array = None
    if array is not None and np.isfinite(array).all():
        return array
    problems = []
    for position, value in enumerate(values):
        issue = value_problem(value)
        if issue is None and array is not None and not np.isfinite(array[position]):
            issue = f"does not fit in {tensor['datatype']}"
        if issue:
            problems.append(problem(position // width, names[position % width], issue))
    raise ScoringError(400, f"tensor {tensor['name']!r} has invalid values; see 'problems'", problems)


def _batch_tensor(tensor: dict[str, Any], schema: FeatureSchema) -> np.ndarray:
    """One [n, features] tensor, columns in the model card's feature order."""
    width = len(schema.features)
    shape = tensor["shape"]
    if len(shape) != 2 or shape[1] != width:
        raise ScoringError(
            400,
            f"tensor {tensor['name']!r}: expected shape [n, {width}] (columns in the order of "
            f"GET /model 'features'), got {shape}; or send one tensor per feature name",
            [problem(None, tensor["name"], "wrong shape")],
        )
    schema.check_row_count(shape[0])
    values = _flat_values(tensor, shape[0] * width)
    return _to_array(tensor, values, list(schema.features), width).reshape(shape[0], width)


def _feature_tensors(tensors: list[dict[str, Any]], schema: FeatureSchema) -> np.ndarray:
    """One tensor per feature, each [n] or [n, 1], all with the same n."""
    by_name: dict[str, dict[str, Any]] = {}
    problems = []
    for tensor in tensors:
        name = tensor["name"]
        if name in by_name:
            problems.append(problem(None, name, "duplicate tensor"))
        elif name not in schema.accepted:
            problems.append(problem(None, name, "unknown feature"))
        by_name[name] = tensor
    problems += [problem(None, name, "missing tensor") for name in schema.features if name not in by_name]
    if problems:
        raise ScoringError(400, "the input tensors do not match the model's features", problems)
    lengths = {}
    for name in schema.features:
        shape = by_name[name]["shape"]
        if len(shape) == 2 and shape[1] != 1:
            problems.append(problem(None, name, f"shape {shape} is not [n] or [n, 1]"))
        lengths[name] = shape[0]
    if len(set(lengths.values())) > 1:
        problems += [
            problem(None, name, f"{count} rows; tensors disagree") for name, count in lengths.items()
        ]
    if problems:
        raise ScoringError(400, "the input tensors have inconsistent shapes", problems)
    rows = lengths[schema.features[0]]
    schema.check_row_count(rows)
    columns = []
    errors = []
    for name in schema.features:
        tensor = by_name[name]
        try:
            columns.append(_to_array(tensor, _flat_values(tensor, rows), [name], 1))
        except ScoringError as exc:
            errors.extend(exc.problems or [problem(None, name, exc.message)])
    if errors:
        raise ScoringError(400, "invalid values in the input tensors; see 'problems'", errors)
    return np.column_stack(columns) if columns else np.empty((rows, 0))
