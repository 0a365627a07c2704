"""Locate the influxd/kapacitord binaries built by `make tick` and read their versions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tickguard.runtime.config import RuntimeSettings, load_settings
from tickguard.runtime.process import TickRuntimeError

SERVER_NAMES = ("influxd", "kapacitord", "influx", "kapacitor")
_VERSION_PATTERN = re.compile(r"v?(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class TickBinaries:
    """Paths of the four TICK executables; a name is None when it was not found anywhere."""

    influxd: Path | None
    kapacitord: Path | None
    influx: Path | None = None
    kapacitor: Path | None = None
    searched: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def servers_found(self) -> bool:
        """True when both servers (influxd, kapacitord) were found."""
        return self.influxd is not None and self.kapacitord is not None

    def missing(self) -> list[str]:
        """Names of the servers (influxd, kapacitord) that were not found."""
        return [name for name in ("influxd", "kapacitord") if getattr(self, name) is None]

    def describe_missing(self) -> str:
        """A one-line explanation of what is missing and where it was looked for."""
        places = ", ".join(str(p) for p in self.searched) or "(nowhere)"
        return f"{', '.join(self.missing())} not found (searched {places} and PATH); run `make tick`"

    def require_servers(self) -> TickBinaries:
        """Return self, or raise TickRuntimeError naming the missing servers."""
        if not self.servers_found:
            raise TickRuntimeError(self.describe_missing())
        return self

    def influxd_version(self) -> str:
        """The version influxd reports, e.g. '1.8.10'."""
        return binary_version(self.require_servers().influxd)  # type: ignore[arg-type]

    def kapacitord_version(self) -> str:
        """The version kapacitord reports, e.g. '1.7.6'."""
        return binary_version(self.require_servers().kapacitord)  # type: ignore[arg-type]


def repo_tick_bin_candidates() -> list[Path]:
    """`.tick/bin` directories of the checkout this package runs from and of the working directory."""
    candidates: list[Path] = []
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for ancestor in start.parents if start.is_file() else (start, *start.parents):
            if (ancestor / "pyproject.toml").is_file():
                candidates.append(ancestor / ".tick" / "bin")
                break
    return list(dict.fromkeys(candidates))


def find_tick_binaries(settings: RuntimeSettings | None = None) -> TickBinaries:
    """Find the binaries in $TICKGUARD_TICK_BIN, then <repo>/.tick/bin, then on PATH."""
    settings = settings or load_settings()
    search_dirs = ([settings.tick_bin_dir] if settings.tick_bin_dir else []) + repo_tick_bin_candidates()
    found: dict[str, Path | None] = {}
    for name in SERVER_NAMES:
        found[name] = None
        for directory in search_dirs:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
                break
        if found[name] is None:
            on_path = shutil.which(name)
            found[name] = Path(on_path) if on_path else None
    return TickBinaries(**found, searched=tuple(search_dirs))


def binary_version(binary: Path) -> str:
    """Run `<binary> version` and return the first x.y.z it prints."""
    result = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=30, check=False)
    output = (result.stdout + result.stderr).strip()
    match = _VERSION_PATTERN.search(output)
    if result.returncode != 0 or not match:
        raise TickRuntimeError(f"`{binary} version` failed (exit {result.returncode}): {output[-500:]}")
    return match.group(1)
