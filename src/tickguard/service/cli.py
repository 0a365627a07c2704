"""`tickguard serve`: run the REST service under gunicorn for local use."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tickguard.errors import TickguardError
from tickguard.modelstore import read_card, resolve_model_dir
from tickguard.service.config import DEFAULT_MODELS_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `serve` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="run the REST scoring service (gunicorn)",
        description="Serve /predict, the Open Inference Protocol V2 routes, /model and /metrics with gunicorn.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4)")
    parser.add_argument(
        "--model",
        default=os.environ.get("TICKGUARD_MODEL_DIR") or "production",
        help="model version name, 'production' or a model directory (default production)",
    )
    parser.add_argument(
        "--models-dir",
        default=os.environ.get("TICKGUARD_MODELS_DIR") or DEFAULT_MODELS_DIR,
        help="directory of model versions (default models)",
    )
    parser.set_defaults(func=serve, extras=("serve",))


def serve(args: argparse.Namespace) -> int:
    """Check the model is there, then replace this process with gunicorn."""
    models_dir = Path(args.models_dir).resolve()
    model_dir = resolve_model_dir(models_dir, args.model)
    card = read_card(model_dir)
    if not 0 < args.port < 65536:
        raise TickguardError(f"--port {args.port} is not a TCP port")
    if args.workers < 1 or args.threads < 1:
        raise TickguardError("--workers and --threads must be at least 1")
    env = dict(os.environ, TICKGUARD_MODELS_DIR=str(models_dir), TICKGUARD_MODEL_DIR=str(model_dir))
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
    print(
        f"tickguard serve: model {card['version']} on http://{args.host}:{args.port} "
        f"({args.workers} workers x {args.threads} threads)",
        file=sys.stderr,
        flush=True,
    )
    os.execve(sys.executable, command, env)
    return 0  # not reached: execve replaces the process
