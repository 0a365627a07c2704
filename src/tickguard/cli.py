"""The `tickguard` command line: one subcommand per capability, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tickguard import __version__
from tickguard.errors import TickguardError

# Each module named here defines `register(subparsers)`, which adds its subcommands and sets
# `func` on them. Kept as names so `tickguard --help` imports only what it lists.
COMMAND_MODULES: list[str] = [
    "tickguard.service.cli",
    "tickguard.data.fetch",
    "tickguard.training.commands",
    "tickguard.stack.commands",
    "tickguard.agent.cli",
    "tickguard.ops.backfill",
]


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except TickguardError as exc:
        print(f"tickguard {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
