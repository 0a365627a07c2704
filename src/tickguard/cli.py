"""The `tickguard` command line: one subcommand per capability, each registered by its own module.

Installed without extras, tickguard has no third-party dependencies: each image installs only the extra
its command runs (pyproject.toml). So registration imports light modules only, and a command whose extra
is missing stops here with one line naming it, instead of an ImportError from deep inside the command.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import re
import sys
from collections.abc import Sequence

from tickguard import __version__
from tickguard.errors import TickguardError

# Each module named here defines `register(subparsers)`, which adds its subcommands and sets `func`
# on them, and `extras` (names of pyproject extras) on those that need more than the standard library.
# Kept as names so `tickguard --help` imports only what it lists.
COMMAND_MODULES: list[str] = [
    "tickguard.service.cli",
    "tickguard.data.fetch",
    "tickguard.detectors.cli",
    "tickguard.training.commands",
    "tickguard.stack.commands",
    "tickguard.agent.cli",
    "tickguard.ops.commands",
    "tickguard.models_cli",
]


# A Requires-Dist line that belongs to one extra, e.g. `numpy<3,>=1.26; extra == "serve"`. Lines with
# other markers do not match and are not checked: pip decided on them when it installed the extra.
_EXTRA_REQUIREMENT = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;\s*extra\s*==\s*[\"'](?P<extra>[\w.-]+)[\"']\s*"
)


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def missing_extras(extras: Sequence[str]) -> list[str]:
    """The extras among `extras` with a requirement that is not installed, in the order given."""
    try:
        requirements = importlib.metadata.requires("tickguard") or []
    except importlib.metadata.PackageNotFoundError:
        return []  # a source tree on sys.path, not installed: no metadata to hold the environment to
    incomplete = set()
    for requirement in requirements:
        match = _EXTRA_REQUIREMENT.fullmatch(requirement)
        if match and match["extra"] in extras and not _installed(match["name"]):
            incomplete.add(match["extra"])
    return [extra for extra in extras if extra in incomplete]


def extras_hint(command: str, extras: Sequence[str]) -> str:
    """One line telling what to install, e.g. "tickguard train needs the 'train' extra: pip install ..."."""
    quoted = [f"'{extra}'" for extra in extras]
    names = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
    noun = "extra" if len(extras) == 1 else "extras"
    return f"tickguard {command} needs the {names} {noun}: pip install 'tickguard[{','.join(extras)}]'"


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="tickguard",
        description="Real-time fraud/anomaly scoring for InfluxDB + Kapacitor, with Grafana dashboards.",
    )
    parser.add_argument("--version", action="version", version=f"tickguard {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `tickguard` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    missing = missing_extras(getattr(args, "extras", ()))
    if missing:
        print(extras_hint(args.command, missing), file=sys.stderr)
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except TickguardError as exc:
        print(f"tickguard {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
