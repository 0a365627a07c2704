"""The OpenAPI 3 description of the service, built from the served models' feature lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tickguard import __version__


def _error_responses(*codes: int) -> dict[str, Any]:
    """Standard JSON error responses for the given status codes."""
    reasons = {
        400: "Malformed JSON or invalid input; `problems` names each offending row and field.",
        401: "Missing or wrong bearer token.",
        404: "Unknown model name, version or route.",
        405: "Method not allowed on this route.",
        413: "Body larger than TICKGUARD_MAX_BODY_BYTES or batch larger than TICKGUARD_MAX_ROWS.",
        415: "Content-Type is not JSON (no Content-Type is read as JSON), or Content-Encoding is not gzip or deflate.",
        422: "The requested model failed validation; the old model keeps serving.",
        503: "No model loaded, or the admin endpoint is disabled.",
    }
    return {
        str(code): {
            "description": reasons[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    """A JSON request body with the given schema."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    """A 200 JSON response."""
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def _record(model: str, features: Sequence[str], ignored: Sequence[str]) -> dict[str, Any]:
    """The /predict record schema of one model."""
    accepted = f" `{'`, `'.join(ignored)}` is accepted and ignored." if ignored else ""
    return {
        "type": "object",
        "description": f"One record for model `{model}`.{accepted}",
        "properties": {name: {"type": "number"} for name in [*features, *ignored]},
        "required": list(features),
        "additionalProperties": False,
    }


def build_openapi(
    models: Mapping[str, tuple[Sequence[str], Sequence[str]]], default_model: str | None
) -> dict[str, Any]:
    """OpenAPI 3.0 document for every route; `models` maps each served model to (features, ignored inputs).

    `Record` is the default model's record; every other model's is `Record_<name>`.
    """
    number = {"type": "number"}
    default_model = default_model if default_model in models else next(iter(models), None)
    features, ignored = models.get(default_model, ([], ["Time"])) if default_model else ([], ["Time"])
    record = _record(default_model or "(none loaded)", features, ignored)
    other_records = {
        f"Record_{name}": _record(name, *schema) for name, schema in models.items() if name != default_model
    }
    record_refs = [{"$ref": "#/components/schemas/Record"}] + [
        {"$ref": f"#/components/schemas/{key}"} for key in other_records
    ]
    model_query = {
        "name": "model",
        "in": "query",
        "required": False,
        "description": "served model name (GET /models); default: the only model, or `fraud`",
        "schema": {"type": "string", "enum": sorted(models)} if models else {"type": "string"},
    }
    reload_body = _json_body(
        {
            "type": "object",
            "properties": {
                "version": {"type": "string", "default": "production"},
                "model": {"type": "string", "description": "older spelling of `version`"},
            },
            "additionalProperties": False,
        },
        required=False,
    )
    reload_responses = {
        **_ok({"type": "object"}, "The new version serves; old and new versions are returned."),
        **_error_responses(400, 401, 404, 415, 422, 503),
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 1,
                "maxItems": 2,
            },
            "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
            "data": {"type": "array", "items": {}},
            "parameters": {"type": "object"},
        },
    }
    ref = "#/components/schemas/"
    v2_name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "example": default_model or "fraud"},
    }
    v2_version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    model_meta = _ok({"$ref": ref + "V2ModelMetadata"})
    model_meta.update(_error_responses(404, 503))
    infer = {
        "summary": "Open Inference Protocol inference (JSON, or the binary tensor data extension: the JSON "
        "header's length in Inference-Header-Content-Length, tensors' bytes after it)",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": ref + "V2InferRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {**_ok({"$ref": ref + "V2InferResponse"}), **_error_responses(400, 404, 413, 415, 503)},
    }
    config = {
        "summary": "Triton model configuration (max_batch_size, input/output dims and data types)",
        "responses": {**_ok({"type": "object"}), **_error_responses(404, 503)},
    }
    ready = {
        "summary": "Is the model ready?",
        "responses": {**_ok({"type": "object"}), **_error_responses(404, 503)},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tickguard scoring API",
            "version": __version__,
            "description": "Scores records with the served models (one per detector). Errors are JSON objects "
            "whose `error` string also satisfies the Open Inference Protocol error format.",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Score one record or a batch (instances, or columns + data)",
                    "parameters": [model_query],
                    "requestBody": _json_body(
                        {
                            "oneOf": [
                                *record_refs,
                                {"$ref": ref + "InstancesBatch"},
                                {"$ref": ref + "ColumnsBatch"},
                            ]
                        }
                    ),
                    "responses": {
                        **_ok(
                            {
                                "oneOf": [
                                    {"$ref": ref + "SinglePrediction"},
                                    {"$ref": ref + "BatchPrediction"},
                                ]
                            },
                            "A single prediction for a record; `predictions` in input order for a batch.",
                        ),
                        **_error_responses(400, 404, 413, 415, 503),
                    },
                }
            },
            "/model": {
                "get": {
                    "summary": "A served model's card (version, features in order, threshold, metrics, detector)",
                    "parameters": [model_query],
                    "responses": {**_ok({"type": "object"}), **_error_responses(400, 404, 503)},
                }
            },
            "/models": {
                "get": {
                    "summary": "Every served model: name, detector, version, features, threshold, detector hash",
                    "responses": _ok({"type": "object"}),
                }
            },
            "/admin/reload": {
                "post": {
                    "summary": "Load another version of the default model; verified and test-scored before it serves",
                    "security": [{"bearer": []}],
                    "requestBody": reload_body,
                    "responses": reload_responses,
                }
            },
            "/admin/reload/{name}": {
                "post": {
                    "summary": "Load another version of model {name}; verified and test-scored before it serves",
                    "security": [{"bearer": []}],
                    "parameters": [v2_name],
                    "requestBody": reload_body,
                    "responses": reload_responses,
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "text exposition format", "content": {"text/plain": {}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": _ok({"type": "object"})},
            },
            "/v2": {"get": {"summary": "V2 server metadata", "responses": _ok({"type": "object"})}},
            "/v2/health/live": {"get": {"summary": "Liveness", "responses": _ok({"type": "object"})}},
            "/v2/health/ready": {
                "get": {
                    "summary": "Readiness (a model is loaded)",
                    "responses": {**_ok({"type": "object"}), **_error_responses(503)},
                }
            },
            "/v2/models/{name}": {
                "get": {"summary": "Model metadata", "parameters": [v2_name], "responses": model_meta}
            },
            "/v2/models/{name}/versions/{version}": {
                "get": {
                    "summary": "Model metadata",
                    "parameters": [v2_name, v2_version],
                    "responses": model_meta,
                }
            },
            "/v2/models/{name}/ready": {"get": {**ready, "parameters": [v2_name]}},
            "/v2/models/{name}/versions/{version}/ready": {
                "get": {**ready, "parameters": [v2_name, v2_version]}
            },
            "/v2/models/{name}/config": {"get": {**config, "parameters": [v2_name]}},
            "/v2/models/{name}/versions/{version}/config": {
                "get": {**config, "parameters": [v2_name, v2_version]}
            },
            "/v2/repository/index": {
                "post": {
                    "summary": "Triton repository index: every served model with version and state",
                    "requestBody": _json_body({"type": "object"}, required=False),
                    "responses": {
                        **_ok({"type": "array", "items": {"type": "object"}}),
                        **_error_responses(400),
                    },
                }
            },
            "/v2/repository/models/{name}/{action}": {
                "post": {
                    "summary": "Triton model load/unload: refused (400); models are served from the start",
                    "parameters": [
                        v2_name,
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": ["load", "unload"]},
                        },
                    ],
                    "responses": _error_responses(400, 404),
                }
            },
            "/v2/models/{name}/infer": {"post": {**infer, "parameters": [v2_name]}},
            "/v2/models/{name}/versions/{version}/infer": {
                "post": {**infer, "parameters": [v2_name, v2_version]}
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Record": record,
                **other_records,
                "InstancesBatch": {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {"instances": {"type": "array", "items": {"oneOf": record_refs}}},
                    "additionalProperties": False,
                },
                "ColumnsBatch": {
                    "type": "object",
                    "required": ["columns", "data"],
                    "properties": {
                        "columns": {
                            "type": "array",
                            "items": {"type": "string"},
                        },
                        "data": {"type": "array", "items": {"type": "array", "items": number}},
                    },
                    "additionalProperties": False,
                },
                "SinglePrediction": {
                    "type": "object",
                    "properties": {
                        "score": number,
                        "anomaly": {"type": "boolean"},
                        "threshold": number,
                        "model_version": {"type": "string"},
                    },
                },
                "BatchPrediction": {
                    "type": "object",
                    "properties": {
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"score": number, "anomaly": {"type": "boolean"}},
                            },
                        },
                        "threshold": number,
                        "model_version": {"type": "string"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string"},
                        "problems": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "row": {"type": "integer", "nullable": True},
                                    "field": {"type": "string", "nullable": True},
                                    "problem": {"type": "string"},
                                },
                            },
                        },
                        "problem_count": {"type": "integer"},
                    },
                },
                "V2Tensor": tensor,
                "V2InferRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "inputs": {"type": "array", "items": {"$ref": ref + "V2Tensor"}, "minItems": 1},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"name": {"type": "string", "enum": ["score", "anomaly"]}},
                            },
                        },
                        "parameters": {"type": "object"},
                    },
                },
                "V2InferResponse": {
                    "type": "object",
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "V2ModelMetadata": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array", "items": {"type": "object"}},
                        "outputs": {"type": "array", "items": {"type": "object"}},
                    },
                },
            },
        },
    }
