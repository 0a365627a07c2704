"""Open Inference Protocol (KServe/MLServer/Triton "V2") payloads: the one home of their parsing and building.

Transports (REST here, gRPC beside it) hand this module decoded JSON-like requests plus the raw bytes
of binary tensors, so every transport names a bad field the same way:
- `parse_infer(body, schema, raw_inputs)`: inputs -> feature matrix, requested outputs;
- the binary tensor data extension of the REST protocol (what tritonclient.http sends by default):
  `split_infer_body` cuts the JSON header from the binary part (`Inference-Header-Content-Length`),
  `binary_inputs` hands each input its `binary_data_size` bytes, `binary_outputs` reads which outputs
  the client wants as bytes, `encode_infer_response` appends them after the JSON header;
- Triton's model configuration and repository index documents, which its clients fetch before
  inferring (`model_config`, `repository_index`);
- the client's side of binary inference (the UDF agent's batches): `binary_infer_request` packs rows
  as one FP64 tensor asking for binary outputs, `parse_binary_infer_response` reads them back.
Binary tensors are little-endian, row-major, with no padding (the extension's layout); BOOL is one
byte per value.

The client side runs where numpy is not installed (the UDF agent's image): numpy is imported by the
server-side functions only, the module itself needs orjson and the standard library.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from tickguard.scoring.errors import ScoringError, problem
from tickguard.scoring.payloads import FeatureSchema, PayloadError, decode_json, value_problem

if TYPE_CHECKING:
    import numpy as np

# numpy dtype strings (numpy accepts them wherever it takes a dtype) and their sizes in bytes.
FLOAT_TYPES = {"FP32": "<f4", "FP64": "<f8"}
FLOAT_SIZES = {"FP32": 4, "FP64": 8}
OUTPUT_NAMES = ("score", "anomaly")
OUTPUT_TYPES = {"score": ("FP64", "<f8"), "anomaly": ("BOOL", "?")}
BATCH_TENSOR_NAME = "features"
HEADER_LENGTH = "Inference-Header-Content-Length"
# The protocol extensions this service implements, as Triton names them in its server metadata.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository")

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


def parse_infer(
    body: Any, schema: FeatureSchema, raw_inputs: Sequence[bytes | memoryview | None] | None = None
) -> tuple[np.ndarray, list[str]]:
    """An inference request -> (matrix in feature order, requested output names).

    `raw_inputs[i]`, when not None, holds input i's values as bytes (the binary extension's part of the
    body, or gRPC's `raw_input_contents`); the tensor then carries no `data`.
    """
    if not isinstance(body, dict):
        raise ScoringError(400, "the inference request must be a JSON object with 'inputs'")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ScoringError(
            400, "'inputs' must be a non-empty array of tensors", [problem(None, "inputs", "invalid")]
        )
    outputs = _requested_outputs(body.get("outputs"))
    raw_inputs = raw_inputs or [None] * len(inputs)
    if len(raw_inputs) != len(inputs):
        raise ScoringError(
            400,
            f"{len(raw_inputs)} raw input contents for {len(inputs)} inputs; send one per input",
            [problem(None, "raw_input_contents", "count does not match inputs")],
        )
    tensors = [_check_tensor(index, tensor, raw_inputs[index]) for index, tensor in enumerate(inputs)]
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


def split_infer_body(raw: bytes, header_length: str | None) -> tuple[Any, memoryview]:
    """A REST inference body -> (decoded JSON header, the binary tensor data after it).

    Without the `Inference-Header-Content-Length` header the whole body is JSON.
    """
    if header_length is None:
        return decode_json(raw), memoryview(b"")
    text = header_length.strip()
    if not text.isdigit():
        raise ScoringError(
            400,
            f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}",
            [problem(None, HEADER_LENGTH, "not an integer")],
        )
    length = int(text)
    if length > len(raw):
        raise ScoringError(
            400,
            f"{HEADER_LENGTH} is {length} bytes but the body has only {len(raw)}",
            [problem(None, HEADER_LENGTH, "beyond the end of the body")],
        )
    return decode_json(raw[:length]), memoryview(raw)[length:]


def binary_inputs(body: Any, binary: memoryview) -> list[memoryview | None] | None:
    """Each input's slice of the binary part, in input order, by its `parameters.binary_data_size`."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list):
        if len(binary):
            raise ScoringError(400, f"{len(binary)} bytes of binary data follow a header without 'inputs'")
        return None
    sizes: list[int | None] = []
    for index, tensor in enumerate(inputs):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None and (type(size) is not int or size < 0):
            field = f"inputs[{index}].parameters.binary_data_size"
            raise ScoringError(
                400,
                f"{field} must be a non-negative integer, got {size!r}",
                [problem(None, field, "invalid")],
            )
        sizes.append(size)
    declared = sum(size for size in sizes if size is not None)
    if declared != len(binary):
        named = [
            f"{tensor.get('name')!r}: {size}"
            for tensor, size in zip(inputs, sizes, strict=True)
            if size is not None and isinstance(tensor, dict)
        ]
        if not len(binary) and declared:
            where = f"but no binary data follows the JSON (is the {HEADER_LENGTH} header missing?)"
        else:
            where = f"but {len(binary)} bytes follow the JSON header"
        raise ScoringError(
            400,
            f"the inputs declare {declared} bytes of binary data ({', '.join(named) or 'none'}) {where}",
            [problem(None, "binary_data_size", "declared size does not match the binary data present")],
        )
    if not declared and all(size is None for size in sizes):
        return None
    slices: list[memoryview | None] = []
    offset = 0
    for size in sizes:
        if size is None:
            slices.append(None)
        else:
            slices.append(binary[offset : offset + size])
            offset += size
    return slices


def binary_outputs(body: Any, outputs: list[str]) -> set[str]:
    """The requested outputs the client wants as binary data: each output's `parameters.binary_data`,
    else the request's `parameters.binary_data_output` (default false)."""
    parameters = body.get("parameters") if isinstance(body, dict) else None
    default = parameters.get("binary_data_output", False) if isinstance(parameters, dict) else False
    if type(default) is not bool:
        raise ScoringError(
            400,
            f"parameters.binary_data_output must be true or false, got {default!r}",
            [problem(None, "parameters.binary_data_output", "not a boolean")],
        )
    chosen = dict.fromkeys(outputs, default)
    requested = body.get("outputs") if isinstance(body, dict) else None
    for index, item in enumerate(requested or []):
        options = item.get("parameters")
        if options is None:
            continue
        flag = options.get("binary_data") if isinstance(options, dict) else None
        if flag is None:
            continue
        if type(flag) is not bool:
            field = f"outputs[{index}].parameters.binary_data"
            raise ScoringError(
                400, f"{field} must be true or false, got {flag!r}", [problem(None, field, "not a boolean")]
            )
        chosen[item["name"]] = flag
    return {name for name, binary in chosen.items() if binary}


def encode_infer_response(
    name: str,
    version: str,
    request_id: str,
    scores: np.ndarray,
    anomalies: np.ndarray,
    outputs: list[str],
    binary: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[bytes, int | None]:
    """The inference response as bytes, and the JSON header's length when binary outputs follow it."""
    import numpy as np

    body = infer_response(name, version, request_id, scores, anomalies, outputs)
    if not binary:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), None
    values = {"score": scores, "anomaly": anomalies}
    blobs = []
    for tensor in body["outputs"]:
        if tensor["name"] in binary:
            blob = np.ascontiguousarray(
                values[tensor["name"]], dtype=OUTPUT_TYPES[tensor["name"]][1]
            ).tobytes()
            del tensor["data"]
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
    header = orjson.dumps(body)
    return b"".join([header, *blobs]), len(header)


def model_config(name: str, version: str, schema: FeatureSchema, threshold: float) -> dict[str, Any]:
    """Triton's model configuration (`GET /v2/models/{name}/config`), as its clients read it.

    The first dimension is the batch (`max_batch_size` rows, TICKGUARD_MAX_ROWS), so `dims` leave it
    out; the outputs are one value per row (`dims` [1] reshaped to [], Triton's spelling of shape [n]).
    """
    return {
        "name": name,
        "platform": "sklearn",
        "backend": "tickguard",
        "version_policy": {"specific": {"versions": [version]}},
        "max_batch_size": schema.max_rows,
        "input": [
            {
                "name": BATCH_TENSOR_NAME,
                "data_type": "TYPE_FP64",
                "format": "FORMAT_NONE",
                "dims": [len(schema.features)],
            }
        ],
        "output": [
            {
                "name": output,
                "data_type": f"TYPE_{OUTPUT_TYPES[output][0]}",
                "dims": [1],
                "reshape": {"shape": []},
            }
            for output in OUTPUT_NAMES
        ],
        "parameters": {
            "feature_names": {"string_value": ",".join(schema.features)},
            "threshold": {"string_value": repr(threshold)},
        },
    }


def repository_index(entries: Sequence[tuple[str, str | None, str | None]], ready_only: bool) -> list[dict]:
    """Triton's repository index: (name, version or None, reason it is not loaded or None) per model."""
    index = []
    for name, version, reason in sorted(entries, key=lambda entry: entry[0]):
        if version is not None:
            index.append({"name": name, "version": version, "state": "READY"})
        elif not ready_only:
            index.append(
                {"name": name, "version": "", "state": "UNAVAILABLE", "reason": reason or "not loaded"}
            )
    return index


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


def _check_tensor(index: int, tensor: Any, raw: bytes | memoryview | None = None) -> dict[str, Any]:
    """Structural checks of one input tensor (name, shape, datatype, data or raw bytes)."""
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
    if raw is not None:
        if data is not None:
            raise ScoringError(
                400,
                f"tensor {name!r} has both 'data' and binary data; send one",
                [problem(None, name, "data and binary data")],
            )
        needed = math.prod(shape) * FLOAT_SIZES[datatype]
        if len(raw) != needed:
            raise ScoringError(
                400,
                f"tensor {name!r}: shape {shape} of {datatype} needs {needed} bytes, got {len(raw)} bytes "
                "of binary data",
                [problem(None, name, "binary data size does not match shape and datatype")],
            )
        return {"name": name, "shape": shape, "datatype": datatype, "data": None, "raw": raw}
    if not isinstance(data, list):
        raise ScoringError(
            400, f"tensor {name!r}: data must be an array", [problem(None, name, "invalid data")]
        )
    return {"name": name, "shape": shape, "datatype": datatype, "data": data, "raw": None}


def _values(tensor: dict[str, Any], expected: int, names: list[str], width: int) -> np.ndarray:
    """A tensor's values as a flat float64 vector (row-major), each bad value named by row and field."""
    import numpy as np

    if tensor["raw"] is None:
        return _to_array(tensor, _flat_values(tensor, expected), names, width)
    array = np.frombuffer(tensor["raw"], dtype=FLOAT_TYPES[tensor["datatype"]]).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        problems = [
            problem(
                int(position) // width, names[int(position) % width], value_problem(float(array[position]))
            )
            for position in bad[:1000]
        ]
        raise ScoringError(400, f"tensor {tensor['name']!r} has invalid values; see 'problems'", problems)
    return array


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
    import numpy as np

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
    return _values(tensor, shape[0] * width, list(schema.features), width).reshape(shape[0], width)


def _feature_tensors(tensors: list[dict[str, Any]], schema: FeatureSchema) -> np.ndarray:
    """One tensor per feature, each [n] or [n, 1], all with the same n."""
    import numpy as np

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
            columns.append(_values(tensor, rows, [name], 1))
        except ScoringError as exc:
            errors.extend(exc.problems or [problem(None, name, exc.message)])
    if errors:
        raise ScoringError(400, "invalid values in the input tensors; see 'problems'", errors)
    return np.column_stack(columns) if columns else np.empty((rows, 0))


# ---- the client's side: binary inference without numpy ----------------------------------------------


def infer_path(name: str) -> str:
    """Path of the REST inference endpoint of model `name`."""
    return f"/v2/models/{quote(name, safe='')}/infer"


class BinaryBatch:
    """Feature rows packed as the binary body of one inference request: one [rows, columns] FP64
    tensor, score and anomaly asked for as binary outputs. `feature_rows` unpacks them again, for a
    client that has to send the same rows another way."""

    __slots__ = ("body", "columns", "header_length", "rows")

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[float]]) -> None:
        values = array("d", chain.from_iterable(rows))
        if sys.byteorder != "little":
            values.byteswap()
        blob = values.tobytes()
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": BATCH_TENSOR_NAME,
                        "datatype": "FP64",
                        "shape": [len(rows), len(columns)],
                        "parameters": {"binary_data_size": len(blob)},
                    }
                ],
                "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in OUTPUT_NAMES],
            }
        )
        self.columns = tuple(columns)
        self.rows = len(rows)
        self.header_length = len(header)
        self.body = header + blob

    def feature_rows(self) -> list[list[float]]:
        """The packed rows, as lists of floats."""
        values = array("d")
        values.frombytes(self.body[self.header_length :])
        if sys.byteorder != "little":
            values.byteswap()
        flat = values.tolist()
        width = len(self.columns)
        return [flat[start : start + width] for start in range(0, len(flat), width)]


def parse_binary_infer_response(
    content: bytes, header_length: str | None, rows: int
) -> tuple[list[float], list[bool], str]:
    """Read an inference answer with binary score and anomaly outputs -> (scores, flags, model version).

    PayloadError when it is not one, or not `rows` values long.
    """
    try:
        length = int(header_length)  # type: ignore[arg-type]
        header = orjson.loads(content[:length])
        version = str(header["model_version"])
        offset = length
        blobs: dict[str, bytes] = {}
        for tensor in header["outputs"]:
            size = int(tensor["parameters"]["binary_data_size"])
            blobs[tensor["name"]] = content[offset : offset + size]
            offset += size
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise PayloadError("the scoring service returned an unexpected binary inference answer") from None
    if offset != len(content):
        raise PayloadError(
            f"binary inference answer: outputs declare {offset} bytes, body has {len(content)}"
        )
    score_blob, flag_blob = blobs.get("score"), blobs.get("anomaly")
    if score_blob is None or flag_blob is None or len(score_blob) != 8 * rows or len(flag_blob) != rows:
        raise PayloadError(
            f"the scoring service did not return {rows} binary score and anomaly values "
            f"(got outputs {sorted(blobs)})"
        )
    scores = array("d")
    scores.frombytes(score_blob)
    if sys.byteorder != "little":
        scores.byteswap()
    return scores.tolist(), list(map(bool, flag_blob)), version
