"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` beside the REST routes.

Why it lives inside the gunicorn workers: each worker already holds the models (one `ModelRegistry`,
loaded and verified once, following admin reloads). With `TICKGUARD_GRPC_BIND` set (`tickguard serve
--grpc-port N`), the gunicorn config's `post_worker_init` starts one gRPC server per worker on that
address with SO_REUSEPORT, so the kernel spreads gRPC connections over the workers as it does for
REST, and every gRPC call scores with the very `Predictor` objects the worker's REST routes use: no
second copy of a model, no second process to keep in step after a reload. `tickguard serve` checks
the port is free (without SO_REUSEPORT) before gunicorn starts, so two servers cannot share a port by accident.

Every request is parsed by `tickguard.scoring.v2.parse_infer`, the REST parser: inputs go to it as
bytes (`raw_input_contents` as they came, which tritonclient always sends; typed `contents` packed
once with numpy), so both transports name the same bad field and row in the same words. Scoring
errors map to gRPC codes: 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 413 -> RESOURCE_EXHAUSTED,
503 -> UNAVAILABLE; the status message carries the first problems (row, field, what).

Outputs come back as `raw_output_contents` when the request sent raw inputs or asks for binary output
(a requested output's `binary_data` parameter, the REST extension's name), else as typed `contents`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from concurrent import futures
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from tickguard import __version__
from tickguard.errors import TickguardError
from tickguard.proto import grpc_predict_v2_pb2 as pb
from tickguard.proto import triton_extensions_pb2 as triton
from tickguard.scoring.errors import ScoringError, problem
from tickguard.scoring.payloads import FeatureSchema
from tickguard.scoring.predictor import ModelRegistry, Predictor
from tickguard.scoring.v2 import FLOAT_TYPES, model_config, model_metadata, parse_infer, repository_index

log = logging.getLogger("tickguard.service.grpc")

SERVICE = "inference.GRPCInferenceService"
# Triton's names for the two extra calls answered here (ModelConfig, RepositoryIndex); the binary
# tensor extension is REST's, gRPC has raw_input_contents in the protocol itself.
EXTENSIONS = ("model_configuration", "model_repository")
BIND_ENV = "TICKGUARD_GRPC_BIND"
_CONTENTS_FIELDS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# How many per-field problems a status message lists (the REST body lists up to 100; a status line
# should stay readable).
_LISTED_PROBLEMS = 10


def status_details(exc: ScoringError) -> str:
    """The REST error's message, with its first problems (row, field, what) on the same line."""
    message = exc.message.replace("; see 'problems'", "")  # REST's pointer to its JSON list
    if not exc.problems:
        return message
    listed = []
    for item in exc.problems[:_LISTED_PROBLEMS]:
        where = f"field {item['field']!r}" if item.get("field") is not None else "every field"
        row = f"row {item['row']}, " if item.get("row") is not None else ""
        listed.append(f"{row}{where}: {item['problem']}")
    more = len(exc.problems) - len(listed)
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{message}: {'; '.join(listed)}{suffix}"


class InferenceServicer:
    """The protocol's six methods and Triton's ModelConfig and RepositoryIndex, from one `ModelRegistry`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    # ---- health and metadata ------------------------------------------------------------------

    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> Any:
        """The process answers."""
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> Any:
        """Ready when at least one model is loaded (as GET /v2/health/ready)."""
        self.registry.sync()
        return pb.ServerReadyResponse(ready=bool(self.registry.loaded()))

    def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext) -> Any:
        """Name and version of the server."""
        return pb.ServerMetadataResponse(name="tickguard", version=__version__, extensions=EXTENSIONS)

    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> Any:
        """Whether the named model (and version, if given) is loaded; NOT_FOUND for an unknown name."""
        self.registry.sync()
        holder = self.registry.get(_model_name(request.name, "name"))
        if holder.current is None:
            return pb.ModelReadyResponse(ready=False)
        _check_version(request.name, request.version, holder.current)
        return pb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext) -> Any:
        """Inputs and outputs of the served model (the REST metadata, in the protocol's message)."""
        predictor = self._serving(request.name, request.version, "name")
        meta = model_metadata(request.name, predictor.version, predictor.schema, predictor.threshold)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**spec) for spec in meta["inputs"]],
            outputs=[tensor(**spec) for spec in meta["outputs"]],
            # properties is map<string, string>: non-string values are written as JSON.
            properties={
                key: value if isinstance(value, str) else json.dumps(value)
                for key, value in meta["parameters"].items()
            },
        )

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Triton's model configuration (tritonclient's get_model_config), as REST's /config answers it."""
        predictor = self._serving(request.name, request.version, "name")
        config = model_config(request.name, predictor.version, predictor.schema, predictor.threshold)
        # Triton's version numbers are integers; tickguard's are names, which REST's JSON can carry
        # and this message cannot: ModelMetadata lists the version.
        config.pop("version_policy", None)
        return triton.ModelConfigResponse(
            config=json_format.ParseDict(config, triton.ModelConfig(), ignore_unknown_fields=True)
        )

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Every served model with its version and state (READY, or UNAVAILABLE with the reason)."""
        self.registry.sync()
        entries = [
            (holder.name, holder.current.version if holder.current else None, holder.last_error)
            for holder in self.registry.holders
        ]
        index = repository_index(entries, ready_only=request.ready)
        return triton.RepositoryIndexResponse(
            models=[triton.RepositoryIndexResponse.ModelIndex(**entry) for entry in index]
        )

    # ---- inference ------------------------------------------------------------------------------

    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> Any:
        """Score the request's rows; outputs in row order, raw when the client works in raw bytes."""
        predictor = self._serving(request.model_name, request.model_version, "model_name")
        matrix, outputs = read_inputs(request, predictor.schema)
        scores, anomalies = predictor.predict(matrix)
        return infer_response(request, predictor, scores, anomalies, outputs)

    def _serving(self, name: str, version: str, field: str) -> Predictor:
        """The loaded predictor for a request's model name and optional version."""
        self.registry.sync()
        predictor = self.registry.serving(_model_name(name, field))
        _check_version(name, version, predictor)
        return predictor


def _model_name(name: str, field: str) -> str:
    """The protocol requires a model name: an empty one is refused naming the field."""
    if not name:
        raise ScoringError(400, f"{field} is required; GET /models lists the served models")
    return name


def _check_version(name: str, version: str, predictor: Predictor) -> None:
    """An empty version means the served one; any other must be it (the same 404 as REST's)."""
    if version and version != predictor.version:
        raise ScoringError(
            404,
            f"model {name!r} version {version!r} is not served; the current version is {predictor.version!r}",
            code="model_version_not_found",
        )


def read_inputs(request: pb.ModelInferRequest, schema: FeatureSchema) -> tuple[np.ndarray, list[str]]:
    """(matrix in the model's feature order, requested output names), parsed by the REST parser.

    Every input reaches `parse_infer` as bytes: `raw_input_contents` as they came, typed `contents`
    packed once with numpy (cheaper than a list of Python floats). A datatype the model cannot take
    gets no bytes, and `parse_infer` names it.
    """
    raw = list(request.raw_input_contents)
    if raw:
        for index, tensor in enumerate(request.inputs):
            if tensor.HasField("contents"):
                raise ScoringError(
                    400,
                    f"inputs[{index}] {tensor.name!r}: data both in contents and in raw_input_contents",
                    [problem(None, tensor.name, "contents and raw_input_contents")],
                )
    else:
        raw = [_contents_bytes(index, tensor) for index, tensor in enumerate(request.inputs)]
    body: dict[str, Any] = {
        "inputs": [
            {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
            for tensor in request.inputs
        ]
    }
    if request.outputs:
        body["outputs"] = [{"name": output.name} for output in request.outputs]
    return parse_infer(body, schema, raw)


def _contents_bytes(index: int, tensor: Any) -> bytes | None:
    """A tensor's typed contents as little-endian bytes (None when its datatype is not FP32/FP64)."""
    field = _CONTENTS_FIELDS.get(tensor.datatype)
    if field is None:
        return None
    used = [descriptor.name for descriptor, _ in tensor.contents.ListFields()]
    if used and used != [field]:
        raise ScoringError(
            400,
            f"inputs[{index}] {tensor.name!r}: datatype {tensor.datatype} takes its values in "
            f"contents.{field}, got {', '.join(used)}",
            [problem(None, tensor.name, f"values not in contents.{field}")],
        )
    return np.asarray(getattr(tensor.contents, field), dtype=FLOAT_TYPES[tensor.datatype]).tobytes()


def infer_response(
    request: pb.ModelInferRequest,
    predictor: Predictor,
    scores: np.ndarray,
    anomalies: np.ndarray,
    outputs: list[str],
) -> pb.ModelInferResponse:
    """score (FP64) and anomaly (BOOL) per row, as raw bytes or typed contents (see the module doc)."""
    rows = int(scores.shape[0])
    raw = bool(request.raw_input_contents) or any(
        output.parameters["binary_data"].bool_param
        for output in request.outputs
        if "binary_data" in output.parameters
    )
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=predictor.version, id=request.id
    )
    for name in outputs:
        datatype = "FP64" if name == "score" else "BOOL"
        tensor = response.outputs.add(name=name, datatype=datatype, shape=[rows])
        values = scores if name == "score" else anomalies
        if raw:
            response.raw_output_contents.append(
                values.astype("<f8" if name == "score" else np.bool_).tobytes()
            )
        elif name == "score":
            tensor.contents.fp64_contents.extend(values.tolist())
        else:
            tensor.contents.bool_contents.extend(values.tolist())
    return response


# ---- transport: handlers, errors, server -----------------------------------------------------------

_METHODS = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
    "ModelConfig": (triton.ModelConfigRequest, triton.ModelConfigResponse),
    "RepositoryIndex": (triton.RepositoryIndexRequest, triton.RepositoryIndexResponse),
}


def _answering(method: Any) -> Any:
    """Wrap a servicer method: ScoringError -> its gRPC status; anything else is logged as a bug."""

    def call(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(request, context)
        except ScoringError as exc:
            context.abort(_STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), status_details(exc))
        except Exception:
            log.exception("unhandled error in gRPC %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")

    return call


class _UnimplementedMethods(grpc.GenericRpcHandler):
    """Any other method (Triton's ModelConfig, ModelStreamInfer, ...): UNIMPLEMENTED, saying what is."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method.rsplit("/", 1)[-1]
        message = (
            f"{method} is not implemented by tickguard; {SERVICE} here answers "
            f"{', '.join(_METHODS)} (the Open Inference Protocol)"
        )

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        return grpc.unary_unary_rpc_method_handler(refuse)


def build_server(registry: ModelRegistry, bind: str, threads: int, max_message_bytes: int) -> grpc.Server:
    """A started gRPC server for `registry` on `bind` (host:port), sharing the port with sibling workers."""
    servicer = InferenceServicer(registry)
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _answering(getattr(servicer, name)),
            request_deserializer=request_type.FromString,
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in _METHODS.items()
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers), _UnimplementedMethods()],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    try:
        port = server.add_insecure_port(bind)
    except RuntimeError as exc:
        raise TickguardError(f"gRPC cannot listen on {bind}: {exc}") from exc
    if port == 0:  # older grpcio reports a failed bind this way
        raise TickguardError(f"gRPC cannot listen on {bind}")
    server.start()
    return server


# The running server of this worker process, stopped by the gunicorn config's worker_exit.
_servers: list[grpc.Server] = []


def start_in_worker(worker: Any) -> None:
    """gunicorn post_worker_init: serve gRPC from this worker's app, when TICKGUARD_GRPC_BIND is set."""
    bind = os.environ.get(BIND_ENV)
    if not bind:
        return
    state = worker.wsgi.extensions["tickguard"]
    config = state["config"]
    try:
        _servers.append(build_server(state["registry"], bind, worker.cfg.threads, config.max_body_bytes))
    except TickguardError as exc:
        worker.log.error("%s", exc)
        sys.exit(3)  # gunicorn's "worker failed to boot": the master stops instead of respawning
    worker.log.info("gRPC %s on %s (worker %s)", SERVICE, bind, os.getpid())


def stop_in_worker(grace: float = 5.0) -> None:
    """gunicorn worker_exit: let in-flight calls finish (up to `grace` seconds), then stop."""
    while _servers:
        _servers.pop().stop(grace).wait(grace + 1)


def ready(target: str, timeout: float = 2.0) -> bool:
    """True when the gRPC server at `target` (host:port) answers ServerReady with ready=true."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/ServerReady",
            request_serializer=pb.ServerReadyRequest.SerializeToString,
            response_deserializer=pb.ServerReadyResponse.FromString,
        )
        try:
            return call(pb.ServerReadyRequest(), timeout=timeout).ready
        except grpc.RpcError:
            return False


if __name__ == "__main__":  # compose's health check: python -m tickguard.service.grpc_server HOST:PORT
    sys.exit(0 if ready(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8001") else 1)
