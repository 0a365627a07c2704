"""Settings of the REST service, read from environment variables (nothing happens at import)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tickguard.errors import TickguardError

DEFAULT_MODELS_DIR = "models"
DEFAULT_MODEL = "production"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # ~25,000 rows of 30 features as JSON
DEFAULT_MAX_ROWS = 10_000
DEFAULT_LOG_LEVEL = "INFO"

# Environment variables, with what they mean (also listed in api/README.md).
ENV_VARS = {
    "TICKGUARD_MODELS_DIR": f"directory holding models/<detector>/<version> and models/<detector>/production (default {DEFAULT_MODELS_DIR})",
    "TICKGUARD_DETECTORS": "comma-separated detectors whose models are served (default: every <detector>/production)",
    "TICKGUARD_MODEL_DIR": f"version to serve at start when one detector is served: a version directory path or name (default {DEFAULT_MODEL})",
    "TICKGUARD_MAX_BODY_BYTES": f"largest accepted request body in bytes; larger gets 413 (default {DEFAULT_MAX_BODY_BYTES})",
    "TICKGUARD_MAX_ROWS": f"largest accepted batch in rows; larger gets 413 (default {DEFAULT_MAX_ROWS})",
    "TICKGUARD_ADMIN_TOKEN": "bearer token for POST /admin/reload; unset = admin endpoint disabled (no default)",
    "TICKGUARD_LOG_LEVEL": f"log level of the JSON logs (default {DEFAULT_LOG_LEVEL})",
    "TICKGUARD_RUNTIME_DIR": "directory shared by the worker processes (set by the gunicorn config; unset = one process)",
}


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to start; build it with `from_env()` or directly in tests."""

    models_dir: Path = Path(DEFAULT_MODELS_DIR)
    detectors: tuple[str, ...] = ()  # empty: every detector with a production model
    model: str = DEFAULT_MODEL
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_rows: int = DEFAULT_MAX_ROWS
    admin_token: str | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    runtime_dir: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceConfig:
        """Read the TICKGUARD_* variables, falling back to the defaults above."""
        env = os.environ if environ is None else environ
        level = env.get("TICKGUARD_LOG_LEVEL", DEFAULT_LOG_LEVEL).upper()
        if not isinstance(logging.getLevelName(level), int):
            raise TickguardError(
                f"TICKGUARD_LOG_LEVEL={level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)"
            )
        runtime_dir = env.get("TICKGUARD_RUNTIME_DIR") or None
        return cls(
            models_dir=Path(env.get("TICKGUARD_MODELS_DIR") or DEFAULT_MODELS_DIR),
            detectors=tuple(
                name.strip() for name in env.get("TICKGUARD_DETECTORS", "").split(",") if name.strip()
            ),
            model=env.get("TICKGUARD_MODEL_DIR") or DEFAULT_MODEL,
            max_body_bytes=_positive_int(env, "TICKGUARD_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            max_rows=_positive_int(env, "TICKGUARD_MAX_ROWS", DEFAULT_MAX_ROWS),
            admin_token=env.get("TICKGUARD_ADMIN_TOKEN") or None,  # empty string = unset
            log_level=level,
            runtime_dir=Path(runtime_dir) if runtime_dir else None,
        )


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    """A positive integer env var, with a one-line error naming it when it is not one."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TickguardError(f"{name}={raw!r} is not an integer") from None
    if value <= 0:
        raise TickguardError(f"{name}={raw!r} must be positive")
    return value
