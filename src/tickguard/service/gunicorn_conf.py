"""Gunicorn settings for the REST service (api/gunicorn.conf.py re-exports this module).

Tuned for a small machine: a few processes (the GIL makes threads useless for CPU-bound
scoring), each with a few threads so slow clients and keep-alive connections do not block a
process. Every value can be overridden on the gunicorn command line or by the env vars below.
"""

import logging
import os
import shutil
import tempfile

from gunicorn.glogging import Logger

wsgi_app = "tickguard.service.app:create_app()"
bind = os.environ.get("TICKGUARD_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("TICKGUARD_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("TICKGUARD_THREADS", "4"))
keepalive = 15  # seconds; the UDF agent and benchmarks reuse connections
timeout = 60
graceful_timeout = 20
max_requests = 0  # no periodic worker recycling: a model load is not free
accesslog = None  # the app writes one JSON line per request, with its request id
errorlog = "-"
loglevel = os.environ.get("TICKGUARD_LOG_LEVEL", "info").lower()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "tickguard.service.jsonlog.JsonFormatter"}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"handlers": ["stderr"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}


class JsonConfiguredLogger(Logger):
    """gunicorn's logger, minus the access-log work nobody reads.

    With `logconfig_dict` set, gunicorn builds the access-log atoms for every request (about 4% of a
    worker's CPU on single-record requests, measured with py-spy) even though `gunicorn.access` is
    at WARNING and drops them; this skips that unless the access logger would actually log.
    """

    def access(self, resp, req, environ, request_time):
        """Log the request only when gunicorn.access is enabled for INFO."""
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = JsonConfiguredLogger

_created_dirs: list[str] = []
_multiprocess: list = []  # prometheus_client.multiprocess, imported in on_starting


def on_starting(server):
    """Before any worker exists: give the workers shared directories for metrics and reloads."""
    # One BLAS/OpenMP thread per worker: the workers already use the cores, and thread pools
    # inside each request only add contention and latency.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    _remove_orphaned_dirs(server)
    for variable, prefix in (
        ("PROMETHEUS_MULTIPROC_DIR", "tickguard-metrics-"),
        ("TICKGUARD_RUNTIME_DIR", "tickguard-run-"),
    ):
        path = os.environ.get(variable)
        if path:
            # Stale metric files from an earlier run would be summed into this one's totals.
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path, exist_ok=True)
        else:
            path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
            _created_dirs.append(path)
            os.environ[variable] = path
        server.log.info("%s=%s", variable, path)
    # Import now, with the env var set: child_exit runs inside a SIGCHLD handler, and an import
    # started there can be interrupted by the next worker's exit ("partially initialized module").
    from prometheus_client import multiprocess

    _multiprocess.append(multiprocess)


def _remove_orphaned_dirs(server):
    """Delete the temporary dirs of earlier servers that died without on_exit (e.g. SIGKILL)."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        parts = name.split("-")
        if (
            len(parts) < 4
            or parts[0] != "tickguard"
            or parts[1] not in ("metrics", "run")
            or not parts[2].isdigit()
        ):
            continue
        if not os.path.exists(f"/proc/{parts[2]}"):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            server.log.info("removed %s, left behind by a server that no longer runs", name)


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the shared metrics."""
    for multiprocess in _multiprocess:
        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """With TICKGUARD_GRPC_BIND set, this worker also answers gRPC from its loaded models."""
    if os.environ.get("TICKGUARD_GRPC_BIND"):
        from tickguard.service.grpc_server import start_in_worker  # grpc only after the fork

        start_in_worker(worker)


def worker_exit(server, worker):
    """Stop this worker's gRPC server (if any) so in-flight calls finish before the process ends."""
    if os.environ.get("TICKGUARD_GRPC_BIND"):
        from tickguard.service.grpc_server import stop_in_worker

        stop_in_worker()


def on_exit(server):
    """Remove the temporary directories this config created."""
    for path in _created_dirs:
        shutil.rmtree(path, ignore_errors=True)
