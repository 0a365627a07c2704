"""`tickguard train` and `tickguard evaluate` for any labelled detector (`--detector NAME`, default fraud)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from tickguard.errors import TickguardError
from tickguard.training import config


def _influx_client(args):
    from dataclasses import replace

    from tickguard.influx import InfluxClient
    from tickguard.stack.config import influx_settings

    settings = influx_settings()
    if args.influx_url:
        settings = replace(settings, url=args.influx_url)
    return InfluxClient.from_settings(settings, timeout_s=60.0)


def cmd_train(args) -> int:
    """Handler of `tickguard train`."""
    from tickguard.detectors import load_detector
    from tickguard.training.train import train

    if args.from_influx and (args.data is not None):
        raise TickguardError("train: give either --csv or --from-influx, not both")
    if args.from_influx and not (args.start and args.end):
        raise TickguardError("train --from-influx needs --start and --end (e.g. --start=-7d --end now)")
    if not args.from_influx and (args.start or args.end):
        raise TickguardError("train: --start and --end go with --from-influx")
    spec = load_detector(args.detector)
    base = config.FAST if args.fast else config.FULL
    profile = base.with_overrides(
        n_trials=args.trials,
        seed=args.seed,
        precision_target=args.precision_target,
        timeout_s=args.timeout,
        sample_rows=args.sample_rows,
        n_jobs=args.jobs,
    )
    if args.timeout == 0:
        profile = replace(profile, timeout_s=None)
    if spec.label is None and spec.anomaly is not None:
        return _train_unsupervised(args, spec, profile)
    frame = source = None
    if args.from_influx:
        import tempfile

        from tickguard.training.source import load_source_frame

        with _influx_client(args) as client, tempfile.TemporaryDirectory(prefix="tickguard-train-") as work:
            frame, source = load_source_frame(spec, client, args.start, args.end, Path(work), page=args.page)
    out = train(
        profile,
        detector=spec,
        out_dir=args.out,
        data_path=args.data,
        promote=args.promote or (not args.fast),
        frame=frame,
        data_source=source,
    )
    print(out)
    return 0


def _train_unsupervised(args, spec, profile) -> int:
    """An unlabelled detector ([anomaly]): tickguard.training.unsupervised (window features, injected
    validation anomalies, a contamination or alert-rate threshold)."""
    from tickguard import modelstore
    from tickguard.training.unsupervised import train_detector

    if args.from_influx:
        raise TickguardError(
            f"train --from-influx is not supported for the unlabelled detector {spec.name} yet"
        )
    models_root = modelstore.detector_models_dir(config.models_dir(), spec.name)
    out = train_detector(
        spec,
        n_trials=profile.n_trials,
        seed=profile.seed,
        models_root=models_root,
        out_dir=args.out,
        data_path=args.data,
        promote=args.promote or (not args.fast),
        timeout_s=profile.timeout_s,
    )
    print(out)
    return 0


def cmd_evaluate(args) -> int:
    """Handler of `tickguard evaluate`: re-score the time-ordered holdout with a stored model."""
    from tickguard.training.evaluate import evaluate

    report = evaluate(args.model, detector=args.detector, data_path=args.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        hold = report["holdout"]
        cm = hold["confusion_matrix"]
        print(
            f"model {report['version']} ({report['path']}) for detector {report['detector']}, "
            f"threshold {hold['threshold']:.4f}"
        )
        print(
            f"holdout ({hold['rows']} rows, {hold['positives']} anomalies): AUPRC {hold['auprc']:.4f}  "
            f"ROC-AUC {hold['roc_auc']:.4f}  recall@P>=0.90 {hold['recall_at_precision_0.90']:.3f}"
        )
        print(
            f"  at threshold: precision {hold['precision']:.3f} recall {hold['recall']:.3f} F1 {hold['f1']:.3f} "
            f"(tp {cm['tp']} fp {cm['fp']} fn {cm['fn']} tn {cm['tn']})"
        )
        strat = report.get("stratified_from_card")
        if strat:
            print(
                f"stratified split (from the card): AUPRC {strat['auprc']:.4f} ROC-AUC {strat['roc_auc']:.4f}"
            )
        print("matches the card: " + ("yes" if report["matches_card"] else "NO"))
        for name, ok in report["targets_met"].items():
            print(f"  target {name}: {'met' if ok else 'MISSED'}")
    if args.check_targets and not all(report["targets_met"].values()):
        print("some targets missed", file=sys.stderr)
        return 1
    return 0 if report["matches_card"] else 1


def register(subparsers) -> None:
    """Add `tickguard train` and `tickguard evaluate`."""
    train_p = subparsers.add_parser(
        "train",
        help="tune and train a detector's model (writes models/<detector>/<version>)",
        description=(
            "Tune and train the detector's model on its CSV (default: the detector's file in data/raw), "
            "or on its source measurement read from InfluxDB (--from-influx --start T --end T; URL and "
            "credentials from TICKGUARD_INFLUXDB_*). Rows are split in time order by the detector's time "
            "column; the holdout (last 20%%) is only reported. A full run becomes the detector's production "
            "model when its validation AUPRC is at least the served model's."
        ),
    )
    train_p.add_argument("--detector", default="fraud", metavar="NAME", help="detector name or file (fraud)")
    train_p.add_argument(
        "--fast",
        action="store_true",
        help="small stratified sample, few trials (CI); writes models/<detector>/_scratch/",
    )
    train_p.add_argument("--trials", type=int, default=None, help="Optuna trials (full: 40, fast: 3)")
    train_p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop starting new trials after this many seconds (full default 1200; 0 = no limit)",
    )
    train_p.add_argument(
        "--sample-rows", type=int, default=None, help="train on a stratified sample of this many rows"
    )
    train_p.add_argument("--seed", type=int, default=None, help="random seed (default 42)")
    train_p.add_argument(
        "--jobs", type=int, default=None, help="parallel jobs while fitting forests (default 2)"
    )
    train_p.add_argument(
        "--precision-target",
        type=float,
        default=None,
        help="precision the threshold aims at (default: the detector's [threshold] target)",
    )
    train_p.add_argument(
        "--out", type=Path, default=None, help="output directory (default models/<detector>/<version>)"
    )
    train_p.add_argument(
        "--csv", "--data", dest="data", type=Path, default=None, help="CSV (default: the detector's file)"
    )
    train_p.add_argument(
        "--from-influx", action="store_true", help="read the detector's source measurement from InfluxDB"
    )
    train_p.add_argument(
        "--start",
        help="with --from-influx: start (RFC 3339, epoch, now-30d; a leading minus needs --start=-30d)",
    )
    train_p.add_argument("--end", help="with --from-influx: end, exclusive (e.g. now)")
    train_p.add_argument(
        "--page", default="1h", help="with --from-influx: time span read per query page (default 1h)"
    )
    train_p.add_argument("--influx-url", metavar="URL", help="InfluxDB URL (TICKGUARD_INFLUXDB_URL)")
    train_p.add_argument(
        "--promote",
        action="store_true",
        help="let a --fast run become production too (full runs always may; both only when at least as "
        "good as the served model on validation)",
    )
    train_p.set_defaults(func=cmd_train, extras=("train",))

    eval_p = subparsers.add_parser("evaluate", help="score the time-ordered holdout with a model")
    eval_p.add_argument("model", nargs="?", default="production", help="version, path or 'production'")
    eval_p.add_argument("--detector", default="fraud", metavar="NAME", help="detector name or file (fraud)")
    eval_p.add_argument(
        "--csv", "--data", dest="data", type=Path, default=None, help="CSV (default: the detector's file)"
    )
    eval_p.add_argument("--json", action="store_true", help="print the report as JSON")
    eval_p.add_argument("--check-targets", action="store_true", help="exit 1 if a quality target is missed")
    eval_p.set_defaults(func=cmd_evaluate, extras=("train", "serve"))
