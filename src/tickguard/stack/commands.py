"""`tickguard generate`, `tickguard up --local`, `tickguard deploy` and `tickguard undeploy`: the stack's
command-line entry points."""

from __future__ import annotations

import argparse
import json
import logging
import os

from tickguard.errors import TickguardError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` and `up` subcommands."""
    from tickguard.stack.config import generator_settings, influx_settings

    influx = influx_settings()
    defaults = generator_settings()
    gen = subparsers.add_parser(
        "generate",
        help="replay a detector's holdout rows into InfluxDB with timestamps of now",
        description=(
            "Replay the holdout rows (time-ordered last 20% of the detector's data set) into the detector's "
            "source measurement (fraud: database 'fraud', measurement 'transactions'). --database, "
            "--retention-policy and --measurement, else TICKGUARD_INFLUXDB_DATABASE / _RP / "
            "TICKGUARD_GENERATOR_MEASUREMENT, else the detector file decide where. Credentials come from "
            "TICKGUARD_INFLUXDB_USER/_PASSWORD."
        ),
    )
    gen.add_argument(
        "--detector",
        default="fraud",
        help="detector name or detectors/<name>.toml path (default %(default)s)",
    )
    gen.add_argument("--url", default=influx.url, help="InfluxDB URL (default %(default)s)")
    gen.add_argument("--database", help="database (default: the detector's)")
    gen.add_argument("--retention-policy", help="retention policy (default: the detector's)")
    gen.add_argument("--measurement", help="measurement (default: the detector's source measurement)")
    gen.add_argument(
        "--rate", type=float, default=defaults.rate, help="points/s, 0 = unpaced (default %(default)s)"
    )
    stop = gen.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, help="stop after this many points")
    stop.add_argument("--duration", help="stop after this long, e.g. 90s, 5m, 1h30m, 1d (InfluxQL units)")
    gen.add_argument("--shuffle", action="store_true", help="random order instead of file order")
    gen.add_argument("--seed", type=int, default=0, help="shuffle seed (default %(default)s)")
    gen.add_argument("--loop", action="store_true", help="start over when the holdout rows run out")
    gen.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    gen.add_argument(
        "--max-retries", type=int, default=defaults.max_retries, help="per batch (default %(default)s)"
    )
    gen.add_argument("--source-tag", default=defaults.source_tag, help="value of tag 'source'")
    gen.add_argument("--data", help="the detector's CSV (default: its file in data/raw, e.g. creditcard.csv)")
    gen.add_argument(
        "--shards", type=int, default=0, metavar="N",
        help="tag each point with shard = crc32(its id) %% N for N Kapacitor shards (default: no tag)",
    )  # fmt: skip
    gen.add_argument(
        "--shard-key", choices=("auto", "id", "series"), default="auto",
        help="hash the point's id or its series key (auto: the id when the detector has one)",
    )  # fmt: skip
    gen.add_argument("--json", action="store_true", help="print the final report as JSON")
    gen.set_defaults(func=run_generate, extras=("generate",))

    up = subparsers.add_parser(
        "up",
        help="run the whole pipeline (InfluxDB, Kapacitor, API, UDF, generator)",
        description=(
            "Without Docker: `tickguard up --local` (what `./up.sh --local` runs) starts the REST API, the UDF "
            "agent and the native influxd + kapacitord from `make tick`, then the generator; Ctrl-C stops all. "
            "The Docker stack is `./up.sh`."
        ),
        add_help=False,  # -h is added after --local, so the usage line reads `tickguard up --local [-h] ...`
    )
    up.add_argument("--local", action="store_true", required=True, help="native runtime (no Docker)")
    up.add_argument("-h", "--help", action="help", help="show this help message and exit")
    up.add_argument(
        "--detector",
        action="append",
        dest="detectors",
        metavar="NAME",
        help="detector to run live, repeatable: one service serves their models, one Kapacitor runs a score "
        "task each, one generator replays each (default: fraud)",
    )
    up.add_argument(
        "--rate", type=float, default=defaults.rate, help="generator points/s (default %(default)s)"
    )
    up.add_argument(
        "--count", type=int, help="generator stops after this many points (default: loop forever)"
    )
    up.add_argument("--no-generator", action="store_true", help="start the pipeline without replaying data")
    up.add_argument("--workdir", help="where the servers keep data and logs (default .tick/local-stack)")
    up.add_argument("--models-dir", help="model versions directory (default <repo>/models)")
    up.add_argument("--model", default="production", help="model version to serve (default %(default)s)")
    up.set_defaults(func=run_up, extras=("serve", "agent", "generate"))

    kapacitor_url = os.environ.get("TICKGUARD_KAPACITOR_URL") or "http://127.0.0.1:9092"
    dep = subparsers.add_parser(
        "deploy",
        help="define a detector's Kapacitor tasks (score, alert, anomaly rate, scoring errors) from templates",
        description=(
            "Define the detector's four tasks on a running Kapacitor through its HTTP API, from tickguard's "
            "task templates and the detector file's values (tickguard.stack.deploy): score, a per-point "
            "alert, the anomaly rate and scoring errors, alerting to the alert log and Chronograf's alert "
            "history. Idempotent: what is already as planned is left running. TICKVAR_<var> in the "
            "environment (or --var) overrides a template var, e.g. TICKVAR_warn_rate=0.02."
        ),
    )
    dep.add_argument(
        "--detector",
        action="append",
        dest="detectors",
        metavar="NAME",
        help="detector name or detectors/<name>.toml path (repeatable; default: the space-separated names "
        "in $TICKGUARD_DEPLOY_DETECTORS, else fraud)",
    )
    dep.add_argument(
        "--kapacitor-url", default=kapacitor_url, help="default $TICKGUARD_KAPACITOR_URL or %(default)s"
    )
    dep.add_argument(
        "--var", action="append", default=[], metavar="NAME=VALUE",
        help="override a template var with a TICKscript literal, e.g. --var warn_rate=0.02 (repeatable)",
    )  # fmt: skip
    dep.add_argument(
        "--wait", type=float, default=0.0, metavar="SECONDS",
        help="wait this long for Kapacitor to answer first (compose starts it in parallel)",
    )  # fmt: skip
    dep.add_argument(
        "--influx-url", default=os.environ.get("TICKGUARD_INFLUXDB_URL") or None, metavar="URL",
        help="also create the detector's databases InfluxDB lacks and grant --reader READ on them, as an "
        "admin (TICKGUARD_INFLUXDB_USER/_PASSWORD) (default $TICKGUARD_INFLUXDB_URL; unset: InfluxDB is "
        "left alone)",
    )  # fmt: skip
    dep.add_argument(
        "--reader", default=os.environ.get("TICKGUARD_INFLUXDB_READER_USER", ""), metavar="USER",
        help="Grafana's read-only InfluxDB user (default $TICKGUARD_INFLUXDB_READER_USER; empty: no grant)",
    )  # fmt: skip
    dep.add_argument(
        "--subscription-wait", type=float, default=90.0, metavar="SECONDS",
        help="after creating a source database, wait this long for Kapacitor's subscription to it "
        "(Kapacitor adds one every minute by default) (default %(default)s)",
    )  # fmt: skip
    dep.add_argument(
        "--shard", type=int, default=os.environ.get("TICKGUARD_SHARD") or None, metavar="I",
        help="this Kapacitor's shard: score only points tagged shard=I; alert tasks on shard 0 only "
        "(default $TICKGUARD_SHARD; needs --shards)",
    )  # fmt: skip
    dep.add_argument(
        "--shards", type=int, default=os.environ.get("TICKGUARD_SHARDS") or None, metavar="N",
        help="number of Kapacitor shards (default $TICKGUARD_SHARDS; 1 or unset = not sharded)",
    )  # fmt: skip
    dep.set_defaults(func=run_deploy, extras=("agent",))

    undep = subparsers.add_parser(
        "undeploy",
        help="delete a detector's Kapacitor tasks",
        description="Delete the detector's four tasks, and the templates no task uses any more.",
    )
    undep.add_argument("--detector", action="append", dest="detectors", metavar="NAME", required=True)
    undep.add_argument(
        "--kapacitor-url", default=kapacitor_url, help="default $TICKGUARD_KAPACITOR_URL or %(default)s"
    )
    undep.set_defaults(func=run_undeploy, extras=("agent",))

    dash = subparsers.add_parser(
        "dashboards",
        help="write a detector's Grafana dashboard; with --influx-url, show what each panel's query returns",
        description=(
            "Write the detector's live dashboard (<name>-live.json, generated from its detector file by "
            "tickguard.stack.dashboards) into --out, the folder compose's Grafana provisions from. With "
            "--influx-url, also run every panel query as Grafana would over the last 15 minutes and print how "
            "many values each returns (a check without Grafana, e.g. against `up --local`)."
        ),
    )
    dash.add_argument("--detector", action="append", dest="detectors", metavar="NAME", required=True)
    dash.add_argument("--out", help="default: <repo>/grafana/dashboards")
    dash.add_argument("--influx-url", help="an InfluxDB to run the panel queries against")
    dash.set_defaults(func=run_dashboards)


def run_generate(args: argparse.Namespace) -> int:
    """Replay holdout rows as configured on the command line."""
    import os
    from dataclasses import replace

    from tickguard.detectors import load_detector
    from tickguard.influx import parse_duration_s
    from tickguard.stack.config import influx_settings
    from tickguard.stack.generator import (
        InfluxWriter,
        ReplayPlan,
        load_holdout,
        log_progress,
        replay,
    )

    if args.batch_size <= 0:
        raise TickguardError(f"--batch-size must be positive, got {args.batch_size}")
    spec = load_detector(args.detector)
    source = spec.source
    env = os.environ
    settings = replace(
        influx_settings(),
        url=args.url,
        database=args.database or env.get("TICKGUARD_INFLUXDB_DATABASE") or source.database,
        retention_policy=args.retention_policy or env.get("TICKGUARD_INFLUXDB_RP") or source.retention_policy,
        measurement=args.measurement or env.get("TICKGUARD_GENERATOR_MEASUREMENT") or source.measurement,
    )
    plan = ReplayPlan(
        rate=args.rate,
        count=args.count,
        duration_s=parse_duration_s(args.duration) if args.duration else None,
        shuffle=args.shuffle,
        seed=args.seed,
        loop=args.loop,
        batch_size=args.batch_size,
        max_retries=args.max_retries,
        source_tag=args.source_tag,
        shards=args.shards,
        shard_key=args.shard_key,
    )
    rows = load_holdout(args.data, detector=spec)
    log.info(
        "replaying %d %s holdout rows into %s %s.%s at %s points/s",
        len(rows),
        spec.name,
        settings.url,
        settings.database,
        settings.measurement,
        args.rate or "unlimited",
    )
    writer = InfluxWriter(settings)
    try:
        report = replay(
            rows, plan, writer, measurement=settings.measurement, progress=log_progress, detector=spec
        )
    finally:
        writer.close()
    if args.json:
        summary = {k: v for k, v in vars(report).items() if k != "txids"} | {"rate": report.rate}
        print(json.dumps(summary))
    else:
        print(f"generate: {report.summary()}")
    return 0 if report.failed == 0 else 1


def run_up(args: argparse.Namespace) -> int:
    """Run the local stack until Ctrl-C."""
    from tickguard.stack.local import run_local_stack

    return run_local_stack(
        detectors=tuple(args.detectors or ("fraud",)),
        rate=args.rate,
        count=args.count,
        generator=not args.no_generator,
        workdir=args.workdir,
        models_dir=args.models_dir,
        model=args.model,
    )


def run_deploy(args: argparse.Namespace) -> int:
    """Deploy each detector's tasks and print them."""
    from tickguard.detectors import load_detector
    from tickguard.kapacitor_client import KapacitorClient
    from tickguard.stack.deploy import (
        default_overrides,
        deploy,
        detector_databases,
        ensure_databases,
        parse_var_options,
        wait_for_subscriptions,
    )

    names = args.detectors or (os.environ.get("TICKGUARD_DEPLOY_DETECTORS") or "fraud").split()
    specs = [load_detector(name) for name in dict.fromkeys(names)]
    overrides = {**default_overrides(), **parse_var_options(args.var)}
    shard = None
    if args.shards is not None and args.shards > 1:
        from tickguard.stack.sharding import check_shards

        if args.shard is None:
            raise TickguardError(
                f"--shards {args.shards} needs --shard (this Kapacitor's index, 0..{args.shards - 1})"
            )
        check_shards(args.shards, args.shard)
        shard = (args.shard, args.shards)
    client = KapacitorClient(args.kapacitor_url)
    if args.wait > 0:
        client.wait_until_up(args.wait)
    influx = _deploy_influx_client(args)
    created: list[str] = []
    try:
        for spec in specs:
            if influx is not None:
                existing = influx.databases()
                done = ensure_databases(influx, spec, overrides, args.reader)
                print(
                    f"deploy: {spec.name}: InfluxDB: {'; '.join(done) or _databases_in_place(spec, overrides, args.reader)}"
                )
                if spec.source.database not in existing:
                    created.append(spec.source.database)
            for task in deploy(client, spec, overrides, shard):
                state = "executing" if task.executing else f"NOT executing: {task.error}"
                print(f"deploy: {spec.name}: task {task.id} (template {task.raw.get('template-id')}) {state}")
        if influx is None:
            names = sorted({db for spec in specs for db in detector_databases(spec, overrides)})
            print(
                f"deploy: InfluxDB left alone (no --influx-url or TICKGUARD_INFLUXDB_URL): databases "
                f"{', '.join(names)} must exist and Grafana's reader may need READ on them"
            )
        elif created:
            missing = wait_for_subscriptions(influx, created, args.subscription_wait)
            for database in missing:
                print(
                    f"deploy: WARNING: no subscription on new database {database!r} after "
                    f"{args.subscription_wait:.0f} s: Kapacitor receives its points only once it subscribes"
                )
    finally:
        if influx is not None:
            influx.close()
    return 0


def _deploy_influx_client(args: argparse.Namespace):
    """The InfluxDB client `deploy` ensures databases with (admin credentials from the environment), or None
    without --influx-url / TICKGUARD_INFLUXDB_URL."""
    if not args.influx_url:
        return None
    from dataclasses import replace

    from tickguard.influx import InfluxClient
    from tickguard.stack.config import influx_settings

    return InfluxClient.from_settings(replace(influx_settings(), url=args.influx_url), retries=5)


def _databases_in_place(spec, overrides, reader: str) -> str:
    from tickguard.stack.deploy import detector_databases

    names = ", ".join(detector_databases(spec, overrides))
    return f"databases {names} exist" + (f" and {reader!r} may read them" if reader else "")


def run_undeploy(args: argparse.Namespace) -> int:
    """Delete each detector's tasks."""
    from tickguard.detectors import load_detector
    from tickguard.detectors.spec import NAME_PATTERN
    from tickguard.kapacitor_client import KapacitorClient
    from tickguard.stack.deploy import undeploy

    client = KapacitorClient(args.kapacitor_url)
    for name in dict.fromkeys(args.detectors):
        # A bare name needs no detector file: its tasks can go after the file did.
        detector = name if NAME_PATTERN.fullmatch(name) else load_detector(name).name
        deleted = undeploy(client, detector)
        print(f"undeploy: {detector}: deleted {', '.join(deleted) or 'nothing (no tasks)'}")
    return 0


def run_dashboards(args: argparse.Namespace) -> int:
    """Write each detector's live dashboard; optionally show what its panel queries return."""
    from pathlib import Path

    from tickguard.detectors import load_detector
    from tickguard.stack import dashboards
    from tickguard.stack.tasks import repo_root

    if args.influx_url:
        from tickguard.cli import extras_hint, missing_extras

        if missing_extras(("agent",)):  # writing the JSON needs nothing; querying InfluxDB needs requests
            raise TickguardError(extras_hint("dashboards --influx-url", ["agent"]))
    out = Path(args.out) if args.out else repo_root() / "grafana" / "dashboards"
    empty = 0
    for name in dict.fromkeys(args.detectors):
        spec = load_detector(name)
        path = dashboards.write_live(out, spec)
        print(f"dashboards: {spec.name}: wrote {path} (Grafana: /d/{dashboards.live_uid(spec.name)})")
        if not args.influx_url:
            continue
        from dataclasses import replace

        from tickguard.influx import InfluxClient
        from tickguard.stack.config import influx_settings

        with InfluxClient.from_settings(replace(influx_settings(), url=args.influx_url)) as client:
            board = dashboards.detector_live(spec)
            for title, _query, values in dashboards.check_panels(board, client.select, "1s"):
                empty += values == 0
                print(f"  {title:<32} {values:>6} values" + ("   <- EMPTY" if values == 0 else ""))
    return 1 if empty else 0
