"""The extras: each image installs only what its command runs, and a bare install still has a working CLI.

pyproject.toml keeps `tickguard` itself free of third-party dependencies and splits them into extras
(serve, agent, generate, train, notebooks); each Dockerfile installs one. These tests build tickguard's
wheel from the files the Dockerfiles copy, then
- install it without extras into a throwaway venv and run the CLI there: `--help` lists every command,
  `data fetch` works, and each command that needs an extra stops with the one line naming it;
- resolve with pip what the udf, generator and api images install, and hold it against the packages
  only training and the notebooks need (the images themselves run in tests/images).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tickguard.cli import build_parser
from tickguard.data.schema import COLUMNS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
DOCKERFILES = {
    "api": ROOT / "api" / "Dockerfile",
    "udf": ROOT / "udf" / "Dockerfile",
    "generator": ROOT / "compose" / "generator" / "Dockerfile",
    "jupyter": ROOT / "compose" / "jupyter" / "Dockerfile",
}
# What only training, tuning, the plots and the notebooks need.
TRAINING_ONLY = {
    "optuna",
    "lightgbm",
    "numba",
    "llvmlite",
    "matplotlib",
    "imbalanced-learn",
    "jupyterlab",
    "notebook",
    "ipykernel",
}
NOT_IN_IMAGE = {
    "udf": TRAINING_ONLY | {"numpy", "pandas", "scipy", "scikit-learn"},
    "generator": TRAINING_ONLY | {"scipy", "scikit-learn"},
    "api": {"optuna", "matplotlib", "jupyterlab", "notebook", "ipykernel", "pandas", "influxdb-client"},
}
# Every command that needs an extra, as a bare install must answer it (one line on stderr, exit 1).
NEEDS_EXTRAS = {
    ("serve",): "tickguard serve needs the 'serve' extra: pip install 'tickguard[serve]'",
    ("udf",): "tickguard udf needs the 'agent' extra: pip install 'tickguard[agent]'",
    ("watchdog", "--once"): "tickguard watchdog needs the 'agent' extra: pip install 'tickguard[agent]'",
    ("backfill", "--from=-1m"): "tickguard backfill needs the 'agent' extra: pip install 'tickguard[agent]'",
    ("generate",): "tickguard generate needs the 'generate' extra: pip install 'tickguard[generate]'",
    ("train", "--fast"): "tickguard train needs the 'train' extra: pip install 'tickguard[train]'",
    ("data", "info"): "tickguard data info needs the 'train' extra: pip install 'tickguard[train]'",
    ("evaluate",): (
        "tickguard evaluate needs the 'train' and 'serve' extras: pip install 'tickguard[train,serve]'"
    ),
    ("up", "--local"): (
        "tickguard up needs the 'serve', 'agent' and 'generate' extras: "
        "pip install 'tickguard[serve,agent,generate]'"
    ),
    ("models", "import", "v1", "m.joblib", "--detector", "fraud"): (
        "tickguard models needs the 'serve' extra: pip install 'tickguard[serve]'"
    ),
    (
        "deploy",
        "--detector",
        "fraud",
    ): "tickguard deploy needs the 'agent' extra: pip install 'tickguard[agent]'",
    ("undeploy", "--detector", "fraud"): (
        "tickguard undeploy needs the 'agent' extra: pip install 'tickguard[agent]'"
    ),
}
# `data fetch`, `detectors` and `dashboards` (without --influx-url) run on a bare install (tests below);
# `data info` is listed above
LIGHT_COMMANDS = {"data", "detectors", "dashboards"}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_extras(dockerfile: Path) -> list[str]:
    """The extras of the image's `pip install ".[a,b]"` line."""
    found = re.findall(r"pip install [\"']?\.\[([\w,-]+)\]", dockerfile.read_text())
    assert len(found) == 1, f'{dockerfile}: expected one `pip install ".[extra]"` line, found {found}'
    return found[0].split(",")


def pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Scratch space for the wheel and the venv, removed as soon as this module is done (~30 MB)."""
    path = tmp_path_factory.mktemp("extras")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(workdir: Path) -> Path:
    """tickguard's wheel, built from a copy of what the Dockerfiles copy (the checkout stays untouched)."""
    context = workdir / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "detectors", context / "detectors")  # installed as share/tickguard/detectors
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(workdir), str(context))
    shutil.rmtree(context)
    (built,) = workdir.glob("tickguard-*.whl")
    return built


@pytest.fixture(scope="module")
def bare_cli(wheel: Path, workdir: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`tickguard` from a venv holding the wheel and the base dependencies only (no extra)."""
    venv = workdir / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip("--python", python, "install", "--quiet", "--no-deps", str(wheel))
    if PROJECT["dependencies"]:
        pip("--python", python, "install", "--quiet", *PROJECT["dependencies"])
    home = workdir / "home"
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "COLUMNS": "120",
        "TICKGUARD_DATA_DIR": str(home / "raw"),
        "TICKGUARD_CACHE": str(home / "cache"),
    }

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(venv / "bin" / "tickguard"), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=home,
            env=env,
        )

    return run


def test_bare_install_lists_every_command(bare_cli) -> None:
    bare = bare_cli("--help")
    assert bare.returncode == 0, bare.stderr
    full = subprocess.run(
        [sys.executable, "-m", "tickguard.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert bare.stdout == full.stdout  # the same commands and help as an install with every extra
    listed = set(re.findall(r"^ {4}(\w[\w-]*) ", bare.stdout, re.M))
    assert listed == {argv[0] for argv in NEEDS_EXTRAS} | LIGHT_COMMANDS, (
        "a command is missing from the table"
    )


@pytest.mark.parametrize("argv", sorted(NEEDS_EXTRAS), ids=" ".join)
def test_a_command_without_its_extra_names_the_extra(bare_cli, argv: tuple[str, ...]) -> None:
    result = bare_cli(*argv)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [NEEDS_EXTRAS[argv]], result.stderr
    assert result.stdout == ""


def test_data_fetch_needs_no_extra(bare_cli, workdir: Path) -> None:
    raw = workdir / "home" / "raw"
    raw.mkdir(exist_ok=True)
    csv = raw / "creditcard.csv"
    csv.write_text(",".join(COLUMNS) + "\n" + ",".join(["0"] * len(COLUMNS)) + "\n")
    present = bare_cli("data", "fetch")
    assert present.returncode == 0, present.stderr
    assert "present (user-supplied" in present.stderr
    csv.write_text(",".join(c for c in COLUMNS if c != "Amount") + "\n")
    wrong = bare_cli("data", "fetch")
    assert wrong.returncode == 1
    assert wrong.stderr.splitlines() == [
        f"tickguard data fetch: error: {csv} is not the fraud data set (missing columns: Amount)"
    ]


def test_detectors_commands_need_no_extra(bare_cli) -> None:
    """The bundled detectors come with the wheel (share/tickguard/detectors), read by the bare install."""
    listed = bare_cli("detectors", "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["fraud", "shuttle", "waterflow"]
    assert "share/tickguard/detectors/fraud.toml" in listed.stdout
    shown = bare_cli("detectors", "show", "shuttle")
    assert shown.returncode == 0 and json.loads(shown.stdout)["spec"]["label"]["field"] == "anomaly"
    influx = bare_cli(
        "detectors", "new", "x", "--influx-url", "http://127.0.0.1:9", "--database", "d", "--measurement", "m",
        "--label", "y",
    )  # fmt: skip
    assert influx.returncode == 1
    assert influx.stderr.splitlines() == [
        "tickguard detectors new: error: tickguard detectors new --influx-url needs the 'agent' extra: "
        "pip install 'tickguard[agent]'"
    ]


def test_dashboards_are_written_on_a_bare_install(bare_cli, workdir: Path) -> None:
    """A detector's dashboard is JSON from its file; only checking it against InfluxDB needs `agent`."""
    out = workdir / "dashboards"
    written = bare_cli("dashboards", "--detector", "shuttle", "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert json.loads((out / "shuttle-live.json").read_text())["uid"] == "tickguard-shuttle-live"
    checked = bare_cli(
        "dashboards", "--detector", "shuttle", "--out", str(out), "--influx-url", "http://127.0.0.1:9"
    )
    assert checked.returncode == 1
    assert "tickguard dashboards --influx-url needs the 'agent' extra" in checked.stderr


def test_models_list_needs_no_extra(bare_cli, workdir: Path) -> None:
    """`models list` reads cards only; `models import` (unpickling) is in NEEDS_EXTRAS."""
    version = workdir / "home" / "models" / "fraud" / "v1"
    version.mkdir(parents=True)
    card = {"version": "v1", "features": ["a"], "threshold": 0.25, "model_sha256": "0" * 64}
    (version / "model_card.json").write_text(json.dumps(card))
    (version.parent / "production").symlink_to("v1")
    listed = bare_cli("models", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == ["*", "fraud", "v1", "threshold", "0.2500"]


def test_every_declared_extra_exists_and_dev_holds_them_all() -> None:
    declared = {extra for argv in NEEDS_EXTRAS for extra in build_parser().parse_args(argv).extras}
    assert declared <= set(EXTRAS)
    (self_reference,) = [r for r in EXTRAS["dev"] if r.startswith("tickguard[")]
    assert declared <= set(self_reference[len("tickguard[") : -1].split(","))  # `make venv` runs them all


def test_each_image_installs_its_own_extra() -> None:
    installs = {image: dockerfile_extras(path) for image, path in DOCKERFILES.items()}
    assert installs == {
        "api": ["serve"],
        "udf": ["agent"],
        "generator": ["generate"],
        "jupyter": ["notebooks"],
    }


@pytest.mark.parametrize("image", sorted(NOT_IN_IMAGE))
def test_image_dependency_closure_leaves_out_the_training_stack(
    wheel: Path, workdir: Path, image: str
) -> None:
    extras = dockerfile_extras(DOCKERFILES[image])
    report = workdir / f"{image}-report.json"
    pip(
        "install",
        "--quiet",
        "--dry-run",
        "--ignore-installed",
        "--only-binary=:all:",
        "--report",
        str(report),
        f"{wheel}[{','.join(extras)}]",
    )
    closure = {normalized(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    direct = {normalized(re.match(r"[\w.-]+", r).group()) for extra in extras for r in EXTRAS[extra]}
    assert direct <= closure, "the resolution lost the extra's own requirements"
    assert not closure & NOT_IN_IMAGE[image], f"the {image} image would hold {closure & NOT_IN_IMAGE[image]}"
