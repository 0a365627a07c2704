"""`tickguard udf` (the socket UDF agent) and `tickguard watchdog` (heals stopped tasks)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from dataclasses import replace
from pathlib import Path

from tickguard.errors import TickguardError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `udf` and `watchdog` subcommands."""
    udf = subparsers.add_parser(
        "udf",
        help="run the Kapacitor socket UDF agent",
        description="Serve the Kapacitor UDF protocol on Unix sockets; settings default to TICKGUARD_UDF_* env vars.",
    )
    udf.add_argument(
        "--socket",
        type=Path,
        help="Unix socket for stream tasks (@tickguard()); default: $TICKGUARD_UDF_SOCKET",
    )
    udf.add_argument(
        "--batch-socket", type=Path, help="optional second socket declaring batch edges, for |window() tasks"
    )
    udf.add_argument("--mode", choices=("score", "echo", "naive"), help="default mode (TICKGUARD_UDF_MODE)")
    udf.add_argument("--url", help="scoring service base URL (TICKGUARD_SCORING_URL)")
    udf.add_argument("--metrics-port", type=int, help="port of /metrics on the metrics host; 0 = off")
    udf.add_argument(
        "--kapacitor-url", help="also run the watchdog against this Kapacitor (TICKGUARD_KAPACITOR_URL)"
    )
    udf.set_defaults(func=run_udf, extras=("agent",))

    watchdog = subparsers.add_parser(
        "watchdog",
        help="re-enable Kapacitor tasks that stopped because the UDF agent died",
        description="Poll Kapacitor and disable/enable tasks that use the tickguard UDF and stopped with an error.",
    )
    watchdog.add_argument("--kapacitor-url", help="Kapacitor base URL (TICKGUARD_KAPACITOR_URL)")
    watchdog.add_argument(
        "--interval", type=float, help="seconds between polls (TICKGUARD_WATCHDOG_INTERVAL)"
    )
    watchdog.add_argument("--once", action="store_true", help="poll once and exit")
    watchdog.set_defaults(func=run_watchdog, extras=("agent",))


def _wait_for_signal(stop) -> None:
    done = threading.Event()

    def handler(signum, _frame):
        log.info("signal %d: stopping", signum)
        done.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    done.wait()
    stop()


def run_udf(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT."""
    from tickguard.agent import udf_pb2 as pb
    from tickguard.agent.config import agent_settings
    from tickguard.agent.metrics import AgentMetrics
    from tickguard.agent.server import Listener, UdfServer
    from tickguard.agent.watchdog import Watchdog

    settings = agent_settings()
    overrides = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.url:
        overrides["url"] = args.url.rstrip("/")
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port
    if args.kapacitor_url:
        overrides["kapacitor_url"] = args.kapacitor_url.rstrip("/")
    settings = replace(settings, **overrides)
    socket_path = args.socket or settings.socket_path
    batch_socket_path = args.batch_socket or settings.batch_socket_path
    if not socket_path:
        raise TickguardError("no socket: pass --socket PATH or set TICKGUARD_UDF_SOCKET")
    listeners = [Listener(Path(socket_path), pb.STREAM)]
    if batch_socket_path:
        listeners.append(Listener(Path(batch_socket_path), pb.BATCH))
    metrics = AgentMetrics()
    server = UdfServer(settings, listeners, metrics)
    server.start()
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            server.stop()
            raise TickguardError(
                f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port}: {exc}"
            ) from None
    metrics.start_log_thread(settings.log_interval_s)
    watchdog = None
    if settings.kapacitor_url:
        watchdog = Watchdog(
            settings.kapacitor_url,
            settings.udf_names,
            settings.watchdog_interval_s,
            settings.kapacitor_username or None,
            settings.kapacitor_password or None,
            live_tasks=server.live_tasks,
            orphan_grace_s=settings.orphan_grace_s,
        )
        watchdog.add_callback(lambda _event: metrics.tasks_healed.inc())
        _backfill_after_heals(watchdog, settings)
        watchdog.start()

    def stop() -> None:
        if watchdog is not None:
            watchdog.stop()
        server.stop()
        metrics.stop()

    _wait_for_signal(stop)
    return 0


def _backfill_after_heals(watchdog, settings) -> None:
    """Have the watchdog re-score what a task missed while it was down (stream tasks see live writes only)."""
    if not settings.backfill_on_heal:
        log.info("backfill after heal is off (set TICKGUARD_INFLUXDB_URL to turn it on)")
        return
    from tickguard.ops.backfill import heal_hook

    # The healed task's own options, source and output decide what the backfill writes (read from Kapacitor).
    watchdog.add_callback(heal_hook(kapacitor_url=watchdog.client.url, udf_names=watchdog.udf_names))
    log.info("backfill after heal is on: a healed task's outage is re-scored from InfluxDB")


def run_watchdog(args: argparse.Namespace) -> int:
    """Run the watchdog alone (or one poll with --once)."""
    from tickguard.agent.config import agent_settings
    from tickguard.agent.watchdog import Watchdog

    settings = agent_settings()
    url = (args.kapacitor_url or settings.kapacitor_url).rstrip("/")
    if not url:
        raise TickguardError("no Kapacitor URL: pass --kapacitor-url or set TICKGUARD_KAPACITOR_URL")
    interval = args.interval if args.interval is not None else settings.watchdog_interval_s
    watchdog = Watchdog(
        url,
        settings.udf_names,
        interval,
        settings.kapacitor_username or None,
        settings.kapacitor_password or None,
    )
    if args.once:
        healed = watchdog.check_once()
        if watchdog.api_error:
            raise TickguardError(watchdog.api_error)
        print(f"{len(healed)} task(s) healed")
        return 0
    _backfill_after_heals(watchdog, settings)
    watchdog.start()
    _wait_for_signal(watchdog.stop)
    return 0
