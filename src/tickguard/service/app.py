"""The Flask app: routes, error handling, request ids, logs and metrics around tickguard.scoring.

One app serves every detector's production model (`models/<detector>/production`): the V2 routes name
the model in the path, `/predict` and `GET /model` take `?model=NAME` (default: the only model, or
`fraud`), `GET /models` lists them and `POST /admin/reload/{name}` swaps one.
"""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from tickguard import __version__
from tickguard.scoring.errors import ScoringError
from tickguard.scoring.payloads import MODEL_PARAM, decode_json
from tickguard.scoring.predictor import ModelHolder, ModelRegistry, Predictor
from tickguard.scoring.v2 import (
    EXTENSIONS,
    HEADER_LENGTH,
    binary_inputs,
    binary_outputs,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_infer,
    repository_index,
    split_infer_body,
)
from tickguard.service.body import compress_response, read_body
from tickguard.service.config import ServiceConfig
from tickguard.service.jsonlog import configure_logging
from tickguard.service.metrics import ServiceMetrics
from tickguard.service.openapi import build_openapi

log = logging.getLogger("tickguard.service")

# Client-supplied request ids are echoed into logs and headers, so only plain tokens are kept.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Polled constantly by health checks and scrapers: logged at DEBUG, not INFO.
_QUIET_ENDPOINTS = {"live", "ready", "metrics", "model_ready", "models"}
_SCORING_ENDPOINTS = {"predict", "infer"}
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _json(body: Any, status: int = 200) -> Response:
    """A JSON response encoded by orjson (numpy arrays allowed)."""
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status=status, mimetype="application/json"
    )


def _snake(name: str) -> str:
    """'Request Entity Too Large' -> 'request_entity_too_large'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def create_app(config: ServiceConfig | None = None) -> Flask:
    """Build the service: load every served model once (for this process) and register every route."""
    config = config or ServiceConfig.from_env()
    configure_logging(config.log_level)
    app = Flask("tickguard.service")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # No HTML redirects: "/predict/" is "/predict", and "//" is a JSON 404, not a 308 to elsewhere.
    app.url_map.strict_slashes = False
    app.url_map.merge_slashes = False
    metrics = ServiceMetrics()
    registry = ModelRegistry.discover(
        config.models_dir,
        config.max_rows,
        detectors=config.detectors,
        model=config.model,
        runtime_dir=config.runtime_dir,
    )
    app.extensions["tickguard"] = {"config": config, "registry": registry, "metrics": metrics}
    noted: dict[str, Predictor] = {}
    # Generated request ids: a random per-process prefix and a counter, 32 hex digits like a uuid4
    # but without a getrandom() call per request.
    id_prefix = os.urandom(8).hex()
    id_counter = itertools.count()
    openapi_cache: dict[str, Any] = {}
    metric_children: dict[tuple[str, str, int], tuple] = {}

    def note_models() -> None:
        """Keep tickguard_model_info in step with the models this process serves."""
        for holder in registry.holders:
            predictor = holder.current
            previous = noted.get(holder.detector)
            if predictor is previous or predictor is None:
                continue
            if previous is not None and previous.version != predictor.version:
                metrics.model_info.labels(model=holder.name, version=previous.version).set(0)
            metrics.model_info.labels(model=holder.name, version=predictor.version).set(1)
            noted[holder.detector] = predictor

    note_models()

    def requested_model() -> str | None:
        """The model a /predict or GET /model request names (`?model=NAME`), None for the default."""
        return request.args.get(MODEL_PARAM) or None

    def body_bytes(binary_allowed: bool = False) -> bytes:
        """The (decompressed) body: 415 for content types other than JSON (or none, read as JSON; or
        octet-stream for a binary inference request), 413 over the size limit."""
        mimetype = request.mimetype
        if (
            mimetype
            and mimetype != "application/json"
            and not mimetype.endswith("+json")
            and not (binary_allowed and mimetype == "application/octet-stream")
        ):
            accepted = "application/json" + (
                f" (or application/octet-stream with {HEADER_LENGTH})" if binary_allowed else ""
            )
            raise ScoringError(
                415, f"Content-Type must be {accepted}, got {mimetype!r}", code="unsupported_media_type"
            )
        return read_body(request, config.max_body_bytes)

    def json_body(optional: bool = False) -> Any:
        """The decoded JSON body (None when optional and empty); 400 if malformed."""
        if optional and not request.content_length and not request.headers.get("Transfer-Encoding"):
            return None
        raw = body_bytes()
        if optional and not raw:
            return None
        return decode_json(raw)

    def check_model_name(name: str, version: str | None = None) -> Predictor:
        """404 unless `name` (and `version`, if given) is a served model."""
        predictor = registry.serving(name)
        if version is not None and version != predictor.version:
            raise ScoringError(
                404,
                f"model {name!r} version {version!r} is not served; the current version is {predictor.version!r}",
                code="model_version_not_found",
            )
        return predictor

    # ---- request bookkeeping ------------------------------------------------------------------

    @app.before_request
    def start_request() -> None:
        """Start the clock, settle the request id, follow other workers' reloads."""
        g.started = time.perf_counter()
        supplied = request.headers.get("X-Request-ID", "")
        g.request_id = supplied if _REQUEST_ID.fullmatch(supplied) else f"{id_prefix}{next(id_counter):016x}"
        g.rows = 0
        registry.sync()
        note_models()

    @app.after_request
    def finish_request(response: Response) -> Response:
        """Count, time and log the request; echo its id."""
        elapsed = time.perf_counter() - getattr(g, "started", time.perf_counter())
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _KNOWN_METHODS else "other"  # bounded label values
        key = (endpoint, method, response.status_code)
        children = metric_children.get(key)
        if children is None:  # labels() resolves a child per call; cache it per (route, method, status)
            status = str(response.status_code)
            scoring = request.endpoint in _SCORING_ENDPOINTS
            children = metric_children[key] = (
                metrics.requests.labels(endpoint=endpoint, method=method, status=status),
                metrics.latency.labels(endpoint=endpoint),
                metrics.rows.labels(endpoint=endpoint, status=status) if scoring else None,
                metrics.batch_rows.labels(endpoint=endpoint) if scoring else None,
            )
        children[0].inc()
        children[1].observe(elapsed)
        rows = getattr(g, "rows", 0)
        if children[2] is not None:
            children[2].inc(rows)
            if response.status_code == 200:
                children[3].observe(rows)
        request_id = getattr(g, "request_id", "")
        response.headers["X-Request-ID"] = request_id
        compress_response(request, response)
        level = (
            logging.DEBUG
            if request.endpoint in _QUIET_ENDPOINTS and response.status_code < 400
            else logging.INFO
        )
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "request_id": request_id,
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 3),
                    "rows": rows,
                },
            )
        return response

    # ---- errors: one handler for the scoring layer's error type, JSON for everything else -----

    @app.errorhandler(ScoringError)
    def scoring_error(exc: ScoringError) -> Response:
        """The scoring layer's errors, as JSON with their own status."""
        return _json(exc.to_dict(), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        """Werkzeug's HTTP errors (404, 405, 413, ...) as JSON instead of HTML."""
        message = exc.description or exc.name
        if isinstance(exc, RequestEntityTooLarge):
            message = f"request body exceeds {config.max_body_bytes} bytes (TICKGUARD_MAX_BODY_BYTES)"
        elif exc.code == 404:
            message = f"no route {request.path!r}; see GET /openapi.json"
        elif exc.code == 405:
            message = f"method {request.method} is not allowed on {request.path!r}"
        response = _json({"error": message, "code": _snake(exc.name)}, exc.code or 500)
        for key, value in exc.get_headers():
            if key.lower() == "allow":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        """A bug, not bad input: log the traceback, answer a JSON 500 with the request id."""
        log.exception("unhandled error", extra={"request_id": getattr(g, "request_id", "")})
        return _json(
            {
                "error": f"internal error (request id {getattr(g, 'request_id', '?')}); see the service log",
                "code": "internal_error",
            },
            500,
        )

    # ---- scoring --------------------------------------------------------------------------------

    @app.post("/predict", endpoint="predict")
    def predict() -> Response:
        """Score one record or a batch with the model named by ?model= (default: the only one, or fraud)."""
        predictor = registry.serving(requested_model())
        body, rows = predictor.predict_response(json_body())
        g.rows = rows
        return _json(body)

    @app.post("/v2/models/<name>/infer", endpoint="infer")
    @app.post("/v2/models/<name>/versions/<version>/infer", endpoint="infer")
    def infer(name: str, version: str | None = None) -> Response:
        """Open Inference Protocol inference."""
        predictor = check_model_name(name, version)
        header_length = request.headers.get(HEADER_LENGTH)
        payload, binary = split_infer_body(
            body_bytes(binary_allowed=header_length is not None), header_length
        )
        matrix, outputs = parse_infer(payload, predictor.schema, binary_inputs(payload, binary))
        as_binary = binary_outputs(payload, outputs)
        scores, anomalies = predictor.predict(matrix)
        g.rows = int(matrix.shape[0])
        request_id = payload.get("id") if isinstance(payload.get("id"), str) else g.request_id
        content, json_length = encode_infer_response(
            name, predictor.version, request_id, scores, anomalies, outputs, as_binary
        )
        if json_length is None:
            return Response(content, mimetype="application/json")
        response = Response(content, mimetype="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(json_length)
        return response

    # ---- V2 health and metadata ------------------------------------------------------------

    @app.get("/v2", endpoint="server_metadata")
    def server_metadata() -> Response:
        """V2 server metadata."""
        return _json({"name": "tickguard", "version": __version__, "extensions": list(EXTENSIONS)})

    @app.get("/v2/health/live", endpoint="live")
    def live() -> Response:
        """The process answers."""
        return _json({"live": True})

    @app.get("/v2/health/ready", endpoint="ready")
    def ready() -> Response:
        """Ready when at least one model is loaded; the body says which are and why others are not."""
        loaded = registry.loaded()
        models = {holder.name: holder.current is not None for holder in registry.holders}
        errors = registry.errors()
        if not loaded:
            return _json(
                {"ready": False, "models": models, "error": f"no model loaded: {'; '.join(errors)}"}, 503
            )
        body: dict[str, Any] = {"ready": True, "models": models}
        if len(registry.holders) == 1:
            body["model_version"] = loaded[0].current.version
        if errors:
            body["errors"] = errors
        return _json(body)

    @app.get("/v2/models/<name>", endpoint="model_metadata")
    @app.get("/v2/models/<name>/versions/<version>", endpoint="model_metadata")
    def v2_model_metadata(name: str, version: str | None = None) -> Response:
        """Inputs and outputs of the served model."""
        predictor = check_model_name(name, version)
        return _json(model_metadata(name, predictor.version, predictor.schema, predictor.threshold))

    @app.get("/v2/models/<name>/config", endpoint="model_config")
    @app.get("/v2/models/<name>/versions/<version>/config", endpoint="model_config")
    def v2_model_config(name: str, version: str | None = None) -> Response:
        """Triton's model configuration (its clients read it before inferring)."""
        predictor = check_model_name(name, version)
        return _json(model_config(name, predictor.version, predictor.schema, predictor.threshold))

    @app.post("/v2/repository/index", endpoint="repository_index")
    def v2_repository_index() -> Response:
        """Triton's repository index: every served model with its version and state."""
        body = json_body(optional=True) or {}
        if not isinstance(body, dict) or not isinstance(body.get("ready", False), bool):
            raise ScoringError(400, 'the body must be empty or {"ready": true|false}')
        entries = []
        for holder in registry.holders:
            predictor = holder.current
            entries.append((holder.name, predictor.version if predictor else None, holder.last_error or None))
        return _json(repository_index(entries, ready_only=body.get("ready", False)))

    @app.post("/v2/repository/models/<name>/<action>", endpoint="repository_control")
    def v2_repository_control(name: str, action: str) -> Response:
        """Loading and unloading through the protocol is refused: the served models are fixed at start."""
        if action not in ("load", "unload"):
            raise ScoringError(
                404, f"no repository action {action!r}; Triton's are load and unload", code="not_found"
            )
        raise ScoringError(
            400,
            f"model {action} is not supported: this service serves models/<detector>/production from its "
            f"start; swap a version with POST /admin/reload/{name}",
            code="not_supported",
        )

    @app.get("/v2/models/<name>/ready", endpoint="model_ready")
    @app.get("/v2/models/<name>/versions/<version>/ready", endpoint="model_ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        """Ready when the named model is loaded."""
        predictor = check_model_name(name, version)
        return _json({"name": name, "ready": True, "model_version": predictor.version})

    # ---- model card, admin, metrics, docs -----------------------------------------------------

    @app.get("/model", endpoint="model_card")
    def model_card() -> Response:
        """The card of the model named by ?model= (default: the only one, or fraud)."""
        return _json(registry.serving(requested_model()).artifact.card)

    @app.get("/models", endpoint="models")
    def models() -> Response:
        """Every served model: name, detector, version, features, threshold, detector hash (or its error)."""
        entries = [holder.describe() for holder in registry.holders]
        body: dict[str, Any] = {"models": sorted(entries, key=lambda entry: entry["name"])}
        if registry.discovery_error:
            body["error"] = registry.discovery_error
        return _json(body)

    @app.post("/admin/reload", endpoint="admin_reload")
    @app.post("/admin/reload/<name>", endpoint="admin_reload")
    def admin_reload(name: str | None = None) -> Response:
        """Swap in another version of one model after verifying it; the old one serves until then."""
        if not config.admin_token:
            raise ScoringError(
                503, "admin endpoint disabled: set TICKGUARD_ADMIN_TOKEN to enable it", code="admin_disabled"
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), config.admin_token.encode()
        ):
            response = _json({"error": "missing or wrong bearer token", "code": "unauthorized"}, 401)
            response.headers["WWW-Authenticate"] = 'Bearer realm="tickguard-admin"'
            return response
        body = json_body(optional=True) or {}
        if (
            not isinstance(body, dict)
            or not set(body) <= {"version", "model"}
            or not all(isinstance(value, str) for value in body.values())
        ):
            raise ScoringError(400, 'the body must be {"version": "<version or production>"} or empty')
        # "model" is the version's older spelling, from before several models were served.
        target = body.get("version") or body.get("model") or "production"
        try:
            holder = registry.get(name)
            new, old = holder.reload(target)
        except ScoringError:
            metrics.reloads.labels(result="failed").inc()
            raise
        metrics.reloads.labels(result="ok").inc()
        note_models()
        log.info(
            "model reloaded",
            extra={
                "model": holder.name,
                "model_version": new.version,
                "previous_version": old.version if old else None,
                "model_dir": str(new.path),
            },
        )
        return _json(
            {
                "status": "reloaded",
                "model": holder.name,
                "model_version": new.version,
                "previous_version": old.version if old else None,
                "model_dir": str(new.path),
            }
        )

    @app.get("/metrics", endpoint="metrics")
    def metrics_endpoint() -> Response:
        """Prometheus text exposition."""
        payload, content_type = metrics.render()
        return Response(payload, content_type=content_type)

    @app.get("/openapi.json", endpoint="openapi")
    def openapi() -> Response:
        """The OpenAPI 3 document (feature schemas of the models being served)."""
        loaded = [(holder.name, holder.current) for holder in registry.holders if holder.current is not None]
        key = tuple((name, predictor.version) for name, predictor in loaded)
        if key not in openapi_cache:
            openapi_cache.clear()
            try:
                default = registry.get(None).name
            except ScoringError:
                default = None
            schemas = {
                name: (list(predictor.schema.features), sorted(predictor.schema.ignored))
                for name, predictor in loaded
            }
            openapi_cache[key] = orjson.dumps(build_openapi(schemas, default))
        return Response(openapi_cache[key], mimetype="application/json")

    @app.get("/", endpoint="index")
    def index() -> Response:
        """Where to look next."""
        return _json(
            {
                "service": "tickguard",
                "version": __version__,
                "openapi": "/openapi.json",
                "models": "/models",
                "model": "/model",
            }
        )

    return app


def holder_of(app: Flask, name: str | None = None) -> ModelHolder:
    """The holder of model `name` (None = the default model) in an app (for tests and tools)."""
    return app.extensions["tickguard"]["registry"].get(name)


def model_dir_of(app: Flask, name: str | None = None) -> Path | None:
    """Directory of the model an app currently serves under `name` (for tests and tools)."""
    predictor = holder_of(app, name).current
    return predictor.path if predictor else None
