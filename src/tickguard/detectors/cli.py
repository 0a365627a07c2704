"""`tickguard detectors list | show NAME | validate FILE | new NAME ...`: inspect and write detector files.

Light: registration and every subcommand but `new --influx-url` use the standard library only, so the
commands work on a bare install (and in every image) to check a detector before anything is deployed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tickguard.detectors.spec import (
    DIRS_ENV,
    DetectorError,
    detectors_dirs,
    list_detectors,
    load_detector,
    load_detector_file,
)


def cmd_list(args) -> int:
    """One line per detector: name, source, features, label, output, file."""
    specs = list_detectors()
    if not specs:
        print(f"no detectors in {', '.join(str(d) for d in detectors_dirs())}")
        return 0
    for spec in specs:
        label = f"{spec.label.field} in {list(spec.label.positive)}" if spec.label else "no label"
        if spec.anomaly is not None:
            label += (
                f" (unsupervised: {spec.anomaly.model}, {spec.threshold.policy} {spec.threshold.target:g})"
            )
        if spec.windows is not None:
            label += f"; window features by {list(spec.windows.group_by)}"
        source = f"{spec.source.database}.{spec.source.retention_policy}.{spec.source.measurement}"
        print(
            f"{spec.name:<16} {source} -> {spec.output.measurement}; {len(spec.features)} features; "
            f"{label}; {spec.path}"
        )
    return 0


def cmd_show(args) -> int:
    """The canonical form (every default filled in), its sha256 and the model's columns, as JSON."""
    spec = load_detector(args.name)
    shown = {
        "path": str(spec.path),
        "sha256": spec.sha256,
        "model_columns": list(spec.model_columns),
        "spec": spec.to_dict(),
    }
    if spec.windows is not None:
        # How the agent and training read [windows] (format: the tickguard.detectors.spec docstring).
        shown["windows"] = {
            "series_key": list(spec.windows.group_by) or "one series (no group_by tags)",
            "points_kept_per_series": spec.windows.capacity,
            "history_to_rebuild": f"the newest {spec.windows.capacity} points of each series",
            "unscored_statuses": ["warming up", "out of order"],
            "expected_range": None
            if spec.windows.expected_range is None
            else "expected_low/high = centre -/+ k * spread of rolling[window] of the first feature field",
        }
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def cmd_validate(args) -> int:
    """Exit 0 with a one-line summary when every file is valid; else the first error of each, exit 1."""
    failed = 0
    for file in args.files:
        try:
            spec = load_detector_file(Path(file))
        except DetectorError as exc:
            print(f"tickguard detectors validate: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{file}: ok ({spec.name}, {len(spec.features)} features, sha256 {spec.sha256[:12]})")
    return 1 if failed else 0


def cmd_new(args) -> int:
    """Write detectors/<name>.toml (or --out) from a CSV or a measurement's field keys."""
    from tickguard.detectors import new

    new.check_name(args.name)
    out = Path(args.out) if args.out else new.default_out(args.name, detectors_dirs())
    if out.suffix != ".toml" or out.stem != args.name:
        raise DetectorError(f"--out {out}: a detector file is named <name>.toml, here {args.name}.toml")
    if bool(args.csv) == bool(args.influx_url):
        raise DetectorError("give exactly one of --csv FILE and --influx-url URL")
    if args.csv:
        if not args.positive:
            raise DetectorError(
                "--positive VALUE is required with --csv (the label value(s) that are anomalous)"
            )
        draft = new.draft_from_csv(
            args.name,
            Path(args.csv),
            args.label,
            args.positive,
            time_column=args.time or "",
            time_unit=args.time_unit,
            id_column=args.id,
            database=args.database,
            measurement=args.measurement,
        )
    else:
        if args.time or args.time_unit:
            raise DetectorError(
                "--time and --time-unit are for --csv: InfluxDB points are ordered by their time"
            )
        if not (args.database and args.measurement):
            raise DetectorError("--influx-url needs --database and --measurement")
        tags = {}
        for item in args.tag or []:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise DetectorError(f"--tag {item!r}: expected KEY=VALUE")
            tags[key] = value
        field_types = new.influx_field_types(
            args.influx_url,
            args.database,
            args.measurement,
            username=os.environ.get("TICKGUARD_INFLUXDB_USER", ""),
            password=os.environ.get("TICKGUARD_INFLUXDB_PASSWORD", ""),
        )
        draft = new.draft_from_field_types(
            args.name,
            field_types,
            database=args.database,
            measurement=args.measurement,
            label=args.label,
            positive=args.positive or (),
            id_field=args.id,
            retention_policy=args.retention_policy,
            tags=tags,
        )
    spec = new.write_detector(draft, out, force=args.force)
    new.report(spec, draft, out)
    return 0


def register(subparsers) -> None:
    """Add `tickguard detectors list|show|validate|new`."""
    parser = subparsers.add_parser(
        "detectors", help="list, show, validate and write detector files (detectors/<name>.toml)"
    )
    sub = parser.add_subparsers(dest="detectors_command", metavar="ACTION", required=True)
    list_p = sub.add_parser("list", help=f"every detector found (${DIRS_ENV} first, then detectors/)")
    list_p.set_defaults(func=cmd_list, command="detectors list")
    show_p = sub.add_parser(
        "show",
        help="a detector's canonical form, sha256 and model columns (JSON); for [windows] also the series"
        " key and the points kept per series",
        description="The file format, including the [windows] and [anomaly] tables of unlabelled detectors,"
        " is described in tickguard.detectors.spec (python -m pydoc tickguard.detectors.spec).",
    )
    show_p.add_argument("name", metavar="NAME", help="detector name or path to its .toml")
    show_p.set_defaults(func=cmd_show, command="detectors show")
    validate_p = sub.add_parser("validate", help="check detector files; errors name the line and the key")
    validate_p.add_argument("files", nargs="+", metavar="FILE")
    validate_p.set_defaults(func=cmd_validate, command="detectors validate")
    new_p = sub.add_parser(
        "new",
        help="write a detector from a CSV's header or a measurement's field keys",
        description="Every numeric column (or float/integer field) other than the label, time and id "
        "becomes a feature. The file is validated before it is written.",
    )
    new_p.add_argument("name", metavar="NAME")
    new_p.add_argument("--csv", metavar="FILE", help="a labelled CSV with a header")
    new_p.add_argument("--influx-url", metavar="URL", help="an InfluxDB 1.x to read SHOW FIELD KEYS from")
    new_p.add_argument("--label", required=True, metavar="COLUMN", help="the label column or field")
    new_p.add_argument(
        "--positive",
        action="append",
        metavar="VALUE",
        help="a label value that counts as anomalous (repeatable; required with --csv)",
    )
    new_p.add_argument(
        "--time", metavar="COLUMN", help="the CSV column ordering the rows (default: none, one row a second)"
    )
    new_p.add_argument("--time-unit", choices=("s", "ms", "us", "ns", "rfc3339"), help="default: guessed")
    new_p.add_argument("--id", metavar="COLUMN", help="an id column/field scored points keep")
    new_p.add_argument("--database", metavar="DB", help="the source database (--csv default: NAME)")
    new_p.add_argument("--measurement", metavar="M", help="the source measurement (--csv default: NAME)")
    new_p.add_argument("--retention-policy", default="autogen", metavar="RP")
    new_p.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="tag filter on the source (repeatable)"
    )
    new_p.add_argument("--out", metavar="FILE", help="where to write (default: detectors/NAME.toml)")
    new_p.add_argument("--force", action="store_true", help="overwrite an existing file")
    new_p.set_defaults(func=cmd_new, command="detectors new")
