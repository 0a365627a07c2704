"""`tickguard train` and `tickguard evaluate`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from tickguard.training import config


def cmd_train(args) -> int:
    """Handler of `tickguard train`."""
    from tickguard.training.train import train

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
    out = train(profile, out_dir=args.out, data_path=args.data, promote=args.promote or (not args.fast))
    print(out)
    return 0


def cmd_evaluate(args) -> int:
    """Handler of `tickguard evaluate`: re-score the time-ordered holdout with a stored model."""
    from tickguard.training.evaluate import evaluate

    report = evaluate(args.model, data_path=args.data)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        hold = report["holdout"]
        cm = hold["confusion_matrix"]
        print(f"model {report['version']} ({report['path']}), threshold {hold['threshold']:.4f}")
        print(
            f"holdout ({hold['rows']} rows, {hold['frauds']} frauds): AUPRC {hold['auprc']:.4f}  "
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
    train_p = subparsers.add_parser("train", help="tune and train the fraud model (writes models/<version>)")
    train_p.add_argument(
        "--fast",
        action="store_true",
        help="small stratified sample, few trials (CI); writes models/_scratch/",
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
        "--precision-target", type=float, default=None, help="precision the threshold aims at (0.90)"
    )
    train_p.add_argument("--out", type=Path, default=None, help="output directory (default models/<version>)")
    train_p.add_argument("--data", type=Path, default=None, help="CSV (default data/raw/creditcard.csv)")
    train_p.add_argument(
        "--promote", action="store_true", help="point models/production at the result (always for full runs)"
    )
    train_p.set_defaults(func=cmd_train, extras=("train",))

    eval_p = subparsers.add_parser("evaluate", help="score the time-ordered holdout with a model")
    eval_p.add_argument("model", nargs="?", default="production", help="version, path or 'production'")
    eval_p.add_argument("--data", type=Path, default=None, help="CSV (default data/raw/creditcard.csv)")
    eval_p.add_argument("--json", action="store_true", help="print the report as JSON")
    eval_p.add_argument("--check-targets", action="store_true", help="exit 1 if a quality target is missed")
    eval_p.set_defaults(func=cmd_evaluate, extras=("train", "serve"))
