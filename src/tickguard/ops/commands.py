"""`tickguard backfill`: the command line of tickguard.ops.backfill.

Registration stays apart from the backfill itself so `tickguard --help` lists the command on an install
without the agent extra (requests, orjson); `run_backfill` imports the work when it runs.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from typing import Any

from tickguard.agent.config import OUTPUTS
from tickguard.errors import TickguardError
from tickguard.ops.config import backfill_settings

log = logging.getLogger(__name__)

DEFAULT_TASK = "score"  # compose/kapacitor/tasks/score.tick


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `backfill` subcommand."""
    parser = subparsers.add_parser(
        "backfill",
        help="score points the stream task missed (or re-score history into another measurement)",
        description=(
            "Find the points of the source measurement in [--from, --to] without a scored counterpart "
            "(same timestamp, and txid when present) and score them through the REST service, writing "
            "them with backfilled=true. Times: now, now-10m, -10m, RFC 3339, or epoch s/ms/ns. "
            "Settings default to TICKGUARD_INFLUXDB_* and TICKGUARD_SCORING_URL. When Kapacitor is known "
            "(--kapacitor-url or TICKGUARD_KAPACITOR_URL), the live task's definition (--task, default score) "
            "decides the threshold, label field, output fields and shape, source and target, so backfilled "
            "points equal live ones; options given here still win."
        ),
    )
    parser.add_argument("--from", dest="start", required=True, help="start of the range (inclusive)")
    parser.add_argument("--to", dest="end", default="now-10s", help="end of the range (default %(default)s)")
    parser.add_argument("--url", help="InfluxDB URL (TICKGUARD_INFLUXDB_URL)")
    parser.add_argument("--database", help="database (TICKGUARD_INFLUXDB_DATABASE, default fraud)")
    parser.add_argument("--api-url", help="scoring service URL (TICKGUARD_SCORING_URL)")
    parser.add_argument(
        "--detector",
        metavar="NAME",
        help="take source, output measurement, id, kept and label fields and model from detectors/NAME.toml "
        "(default: the environment's settings, which are the fraud detector's)",
    )
    parser.add_argument(
        "--kapacitor-url", help="Kapacitor URL to read the live task from (TICKGUARD_KAPACITOR_URL)"
    )
    parser.add_argument(
        "--task",
        help="the live scoring task whose points are backfilled (TICKGUARD_BACKFILL_TASK; default score when "
        "Kapacitor is known; a named task that cannot be read is an error)",
    )
    parser.add_argument("--source", help="measurement of the raw points (default transactions)")
    parser.add_argument(
        "--measurement", help="where scored points go (default transactions_scored; name another to re-score)"
    )
    parser.add_argument("--batch-size", type=int, help="rows per /predict request (default 1000)")
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        help="lean: results, txid/tags and the TICKGUARD_UDF_KEEP_FIELDS inputs, like the live pipeline's "
        "default; full: every input field too (default: TICKGUARD_UDF_OUTPUT, else lean)",
    )
    parser.add_argument(
        "--all", action="store_true", help="re-score every point, even those already scored in the target"
    )
    parser.add_argument(
        "--keep-unscored",
        action="store_true",
        help="leave points the pipeline emitted with scored=false alone (default: re-score them)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be backfilled, write nothing"
    )
    parser.add_argument(
        "--follow",
        metavar="INTERVAL",
        help="keep running: repeat every INTERVAL (e.g. 1m), re-reading relative --from/--to each time; "
        "catches what no watchdog sees (kapacitord or InfluxDB restarts)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_backfill, extras=("agent",))


def run_backfill(args: argparse.Namespace) -> int:
    """Run one backfill from the command line."""
    import orjson

    from tickguard.influx import parse_duration_ns, parse_time
    from tickguard.ops.backfill import Backfiller
    from tickguard.ops.livetask import settings_for_task

    settings = backfill_settings()
    if args.detector:
        from tickguard.detectors import load_detector
        from tickguard.ops.config import apply_detector

        settings = apply_detector(settings, load_detector(args.detector))
    if args.kapacitor_url:
        settings = replace(settings, kapacitor_url=args.kapacitor_url.rstrip("/"))
    task_id = args.task or settings.task_id
    if task_id:
        settings = settings_for_task(settings, task_id)  # named: it must be readable
    elif settings.kapacitor_url:
        try:
            settings = settings_for_task(settings, DEFAULT_TASK)
        except TickguardError as exc:
            log.warning(
                "backfill: not reading task %r (%s); using the environment's settings", DEFAULT_TASK, exc
            )
    overrides: dict[str, Any] = {}
    if args.url:
        overrides["influx_url"] = args.url.rstrip("/")
    if args.database:
        overrides["database"] = args.database
    if args.api_url:
        overrides["api_url"] = args.api_url.rstrip("/")
    if args.source:
        overrides["source_measurement"] = args.source
    if args.batch_size is not None:
        if not 1 <= args.batch_size <= 100_000:
            raise TickguardError(f"--batch-size must be between 1 and 100000, got {args.batch_size}")
        overrides["batch_size"] = args.batch_size
    if args.output:
        overrides["output"] = args.output
    settings = replace(settings, **overrides)
    if settings.output not in OUTPUTS:
        raise TickguardError(f"TICKGUARD_UDF_OUTPUT={settings.output!r}: choose one of {', '.join(OUTPUTS)}")
    interval_s = parse_duration_ns(args.follow) / 1e9 if args.follow else None
    if interval_s is not None and interval_s < 1:
        raise TickguardError(f"--follow {args.follow}: the interval must be at least 1s")
    parse_time(args.start), parse_time(args.end)  # report a bad time before any work
    backfiller = Backfiller(
        settings,
        target=args.measurement,
        rescore_unscored=not args.keep_unscored,
        rescore_all=args.all,
        dry_run=args.dry_run,
        progress=lambda r: log.info("backfill: %s", r.summary()),
    )
    while True:
        now = time.time_ns()
        report = backfiller.run(parse_time(args.start, now), parse_time(args.end, now))
        if args.json:
            print(orjson.dumps(report.as_dict()).decode(), flush=True)
        elif interval_s is None or report.to_score:
            print(f"backfill: {report.summary()}", flush=True)
        if interval_s is None:
            return 0
        time.sleep(interval_s)
