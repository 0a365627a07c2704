"""`tickguard models`: bring your own model (`import`) and see what is stored and served (`list`).

A model trained outside tickguard becomes servable when it has what every tickguard model has: a
version directory `models/<detector>/<version>/` with `model.joblib` and a card that records the
sha256, the features (the detector's fields, in order), the threshold and the detector's spec and
hash. `import` writes exactly that through the model store, after checking the estimator can do the
job: it must have `predict_proba`, and it must take as many columns as the detector has fields (and
the same names, when it was fitted on a data frame). The estimator receives the fields as they
arrive, so any transform the detector names is the estimator's own business (as in tickguard's own
pipelines). Loading a joblib file runs code from it: import only files you trust.

`import` needs the `serve` extra (joblib and scikit-learn unpickle the estimator); `list` reads cards
only and works on a bare install.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tickguard.errors import TickguardError
from tickguard.modelstore import (
    PRODUCTION,
    detector_models_dir,
    production_models,
    promote,
    read_card,
    resolve_model_dir,
    save_model,
    sha256_of,
)

DEFAULT_THRESHOLD = 0.5
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _models_dir_default() -> str:
    from tickguard.service.config import DEFAULT_MODELS_DIR

    return os.environ.get("TICKGUARD_MODELS_DIR") or DEFAULT_MODELS_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `models import` and `models list`."""
    parser = subparsers.add_parser(
        "models",
        help="import your own model, list stored models",
        description="Bring your own scikit-learn-compatible model, or list the models of each detector.",
    )
    commands = parser.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    imp = commands.add_parser(
        "import",
        help="store an estimator with predict_proba as a version of a detector's model",
        description="Write models/<detector>/<NAME>/ (model.joblib + card with sha256, features, threshold, "
        "detector spec and hash) and make it the detector's production model.",
    )
    imp.add_argument("name", metavar="NAME", help="the new version's name, e.g. rf-2026-12")
    imp.add_argument(
        "file", metavar="FILE.joblib", type=Path, help="a joblib file holding a fitted estimator"
    )
    imp.add_argument("--detector", required=True, metavar="NAME", help="the detector the model scores for")
    imp.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"score at or above which a point is an anomaly (default {DEFAULT_THRESHOLD})",
    )
    imp.add_argument("--no-promote", action="store_true", help="store it, but leave production where it is")
    imp.add_argument("--models-dir", default=_models_dir_default(), help="models directory (default models)")
    imp.set_defaults(func=import_command, extras=("serve",))
    listing = commands.add_parser("list", help="every stored version per detector; * marks production")
    listing.add_argument("--detector", metavar="NAME", help="only this detector")
    listing.add_argument(
        "--models-dir", default=_models_dir_default(), help="models directory (default models)"
    )
    listing.set_defaults(func=list_command, extras=())


def check_estimator(estimator: Any, fields: tuple[str, ...], detector: str) -> None:
    """Refuse, in one line naming the problem, an estimator that cannot score this detector's fields."""
    kind = type(estimator).__name__
    if not callable(getattr(estimator, "predict_proba", None)):
        raise TickguardError(f"{kind} has no predict_proba: tickguard serves anomaly probabilities")
    width = getattr(estimator, "n_features_in_", None)
    if width is None:
        raise TickguardError(f"{kind} has no n_features_in_: is it fitted?")
    if int(width) != len(fields):
        raise TickguardError(
            f"{kind} takes {int(width)} features but detector {detector} has {len(fields)} inputs: "
            f"{', '.join(fields)}"
        )
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and [str(name) for name in names] != list(fields):
        raise TickguardError(
            f"{kind} was fitted on columns {[str(n) for n in names]}, not detector {detector}'s inputs "
            f"{list(fields)} (same names, same order)"
        )


def import_model(
    name: str,
    file: Path,
    detector_name: str,
    models_root: Path,
    threshold: float = DEFAULT_THRESHOLD,
    promote_it: bool = True,
) -> tuple[Path, dict]:
    """Check and store an estimator as models/<detector>/<name>/; returns (directory, card)."""
    import joblib
    import sklearn

    from tickguard.detectors import load_detector
    from tickguard.scoring.predictor import Predictor

    if not _VERSION_NAME.fullmatch(name) or name == PRODUCTION:
        raise TickguardError(
            f"{name!r} is not a version name (letters, digits, '.', '_', '-'; not 'production')"
        )
    if not 0.0 <= threshold <= 1.0:
        raise TickguardError(f"--threshold {threshold} is not a probability in [0, 1]")
    spec = load_detector(detector_name)
    detector_dir = detector_models_dir(models_root, spec.name)
    target = detector_dir / name
    if target.exists():
        raise TickguardError(f"{target} exists: choose another version name")
    if not file.is_file():
        raise TickguardError(f"{file}: no such file")
    try:
        estimator = joblib.load(file)
    except Exception as exc:  # unpickling fails in many ways; all mean "not a model we can use"
        raise TickguardError(f"{file} is not a joblib file of an estimator: {exc!r}") from None
    fields = spec.feature_fields
    check_estimator(estimator, fields, spec.name)
    card = {
        "version": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": f"imported {type(estimator).__module__}.{type(estimator).__name__}",
        "features": list(fields),
        "threshold": threshold,
        "imported_from": {"file": str(file), "sha256": sha256_of(file)},
        "libraries": {"scikit-learn": sklearn.__version__, "joblib": joblib.__version__},
    }
    card = save_model(estimator, card, target, detector=spec)
    try:
        Predictor.load(
            target, max_rows=1, detector=spec
        )  # exactly what a server will do, test prediction included
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise TickguardError(f"the service could not use {file}: {exc}") from None
    if promote_it:
        promote(detector_dir, name)
    return target, card


def import_command(args: argparse.Namespace) -> int:
    """`tickguard models import NAME FILE --detector D`."""
    target, card = import_model(
        args.name, args.file, args.detector, Path(args.models_dir), args.threshold, not args.no_promote
    )
    where = "production" if not args.no_promote else "stored, not promoted"
    print(
        f"tickguard models import: {target} ({where}); {len(card['features'])} features, "
        f"threshold {card['threshold']}, detector sha256 {card['detector_sha256'][:12]}",
        file=sys.stderr,
    )
    return 0


def list_command(args: argparse.Namespace) -> int:
    """One line per stored version: detector, version, threshold, '*' for production."""
    root = Path(args.models_dir)
    detectors = (
        [args.detector]
        if args.detector
        else sorted(
            entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith((".", "_"))
        )
        if root.is_dir()
        else []
    )
    served = production_models(root)
    for detector in detectors:
        folder = detector_models_dir(root, detector)
        if not folder.is_dir():
            raise TickguardError(f"no models for detector {detector}: {folder} does not exist")
        production = resolve_model_dir(folder) if detector in served else None
        for version in sorted(
            p
            for p in folder.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith((".", "_"))
        ):
            try:
                card = read_card(version)
            except TickguardError:
                continue
            mark = "*" if production is not None and version.resolve() == production else " "
            print(f"{mark} {detector:<12} {card['version']:<28} threshold {float(card['threshold']):.4f}")
    return 0
