"""`tickguard serve`: run the REST service under gunicorn for local use.

One service serves every detector's production model (`models/<detector>/production`), or the
detectors named with `--detector`. The arguments are checked here, before gunicorn starts, so a
missing model is one line on the terminal rather than a worker log.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from tickguard.errors import TickguardError
from tickguard.modelstore import (
    PRODUCTION,
    detector_models_dir,
    production_models,
    read_card,
    resolve_model_dir,
)
from tickguard.service.config import DEFAULT_MODELS_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the REST scoring service (gunicorn)",
        description="Serve /predict, the Open Inference Protocol V2 routes, /models, /model and /metrics "
        "with gunicorn, for every detector with a production model (or those named with --detector).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the Open Inference Protocol over gRPC on this port, same host (default: no gRPC)",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument(
        "--detector",
        action="append",
        default=None,
        metavar="NAME",
        help="serve this detector's model (repeatable; default: every models/<detector>/production)",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("TICKGUARD_MODEL_DIR") or PRODUCTION,
        help="with one detector: its version name, 'production' or a model directory (default production)",
    )
    parser.add_argument(
        "--models-dir",
        default=os.environ.get("TICKGUARD_MODELS_DIR") or DEFAULT_MODELS_DIR,
        help="directory of models/<detector>/<version> (default models)",
    )
    parser.set_defaults(func=serve, extras=("serve",))


def served_models(models_dir: Path, detectors: list[str] | None, model: str) -> dict[str, dict]:
    """The card each served detector starts with, or a TickguardError naming what is missing."""
    names = list(dict.fromkeys(detectors or ())) or list(production_models(models_dir))
    if not names:
        raise TickguardError(
            f"no model to serve: no {models_dir}/<detector>/{PRODUCTION} "
            "(run `make train`, or `tickguard models import`)"
        )
    if model != PRODUCTION and len(names) > 1:
        raise TickguardError(f"--model {model} needs exactly one --detector (serving {', '.join(names)})")
    return {
        name: read_card(resolve_model_dir(detector_models_dir(models_dir, name), model)) for name in names
    }


def grpc_bind(host: str, grpc_port: int, rest_port: int) -> str:
    """TICKGUARD_GRPC_BIND for --grpc-port: checked here, because each worker binds it with SO_REUSEPORT
    (tickguard.service.grpc_server) and would otherwise share a port another server already holds."""
    if not 0 < grpc_port < 65536 or grpc_port == rest_port:
        raise TickguardError(f"--grpc-port {grpc_port} is not a TCP port other than --port")
    if not port_is_free(host, grpc_port):
        raise TickguardError(f"--grpc-port {grpc_port}: {host}:{grpc_port} is already in use")
    return f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (bound without SO_REUSEPORT, so a running server counts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def serve(args: argparse.Namespace) -> int:
    """Check the models are there, then replace this process with gunicorn."""
    models_dir = Path(args.models_dir).resolve()
    cards = served_models(models_dir, args.detector, args.model)
    if not 0 < args.port < 65536:
        raise TickguardError(f"--port {args.port} is not a TCP port")
    if args.workers < 1 or args.threads < 1:
        raise TickguardError("--workers and --threads must be at least 1")
    env = dict(os.environ, TICKGUARD_MODELS_DIR=str(models_dir), TICKGUARD_DETECTORS=",".join(cards))
    grpc_note = ""
    if args.grpc_port is not None:
        env["TICKGUARD_GRPC_BIND"] = grpc_bind(args.host, args.grpc_port, args.port)
        grpc_note = f", gRPC on {args.host}:{args.grpc_port}"
    env["TICKGUARD_MODEL_DIR"] = args.model
    if args.model != PRODUCTION:
        (name,) = cards
        env["TICKGUARD_MODEL_DIR"] = str(resolve_model_dir(detector_models_dir(models_dir, name), args.model))
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:tickguard.service.gunicorn_conf",
        "--bind",
        f"{args.host}:{args.port}",
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
    ]
    served = ", ".join(f"{name} {card['version']}" for name, card in cards.items())
    print(
        f"tickguard serve: {served} on http://{args.host}:{args.port} "
        f"({args.workers} workers x {args.threads} threads){grpc_note}",
        file=sys.stderr,
        flush=True,
    )
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve replaces the process
