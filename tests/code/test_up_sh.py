"""up.sh for a newcomer: what it says without Docker, `--local --help`, compose commands from the repository
root, and the diagnosis of an unhealthy service.

The scripts run for real (bash, the real docker CLI when installed, Debian's docker-compose). This machine
has no Docker Engine, so the one test that needs containers in given states gets them from a docker
command double on PATH that answers like the CLI does (see FAKE_DOCKER); everything else is real.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests._deps import require
from tests.code.test_compose import ENV_EXAMPLE, EXPECTED_SERVICES, ROOT, compose_command

LOCAL_MODE_HINTS = ("./up.sh --local", "gcc", "Go", "cargo", "Python 3.11", "several minutes")


def copy_scripts(target: Path) -> Path:
    """up.sh, .env.example and compose/ in a scratch checkout (so no test touches the real .env)."""
    target.mkdir()
    shutil.copy(ROOT / "up.sh", target / "up.sh")
    shutil.copy(ENV_EXAMPLE, target / ".env.example")
    shutil.copytree(ROOT / "compose", target / "compose", ignore=shutil.ignore_patterns(".env"))
    return target


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without compose/docker settings that would change what the scripts see."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return {**env, **extra}


def path_without_docker(shadow: Path) -> str:
    """A PATH of links to every command on the current PATH except docker and docker-compose."""
    shadow.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            if entry.name.startswith("docker") or (shadow / entry.name).exists():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                (shadow / entry.name).symlink_to(entry.path)
    return str(shadow)


def run_up(
    checkout: Path, *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(checkout / "up.sh"), *args],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_points_to_local_mode(result: subprocess.CompletedProcess, reason: str) -> None:
    assert result.returncode != 0, result.stdout
    assert reason in result.stderr, result.stderr
    for hint in LOCAL_MODE_HINTS:
        assert hint in result.stderr, f"{hint!r} missing from:\n{result.stderr}"


def test_without_a_docker_cli_up_sh_explains_local_mode(tmp_path: Path) -> None:
    checkout = copy_scripts(tmp_path / "repo")
    env = clean_env(PATH=path_without_docker(tmp_path / "bin"))
    assert subprocess.run(["bash", "-c", "command -v docker"], env=env, check=False).returncode != 0
    result = run_up(checkout, env=env)
    assert_points_to_local_mode(result, "docker not found")
    assert not (checkout / ".env").exists(), "up.sh must stop before creating anything"


def test_without_a_docker_daemon_up_sh_explains_local_mode(tmp_path: Path) -> None:
    """The real docker CLI against a socket nobody listens on; without the CLI, the no-CLI message."""
    checkout = copy_scripts(tmp_path / "repo")
    env = clean_env(DOCKER_HOST=f"unix://{tmp_path}/no-daemon.sock")
    result = run_up(checkout, env=env)
    if shutil.which("docker"):
        assert_points_to_local_mode(result, "the Docker daemon is not reachable")
    else:
        assert_points_to_local_mode(result, "docker not found")
    assert not (checkout / ".env").exists()


def test_local_help_is_the_commands_usage_without_make_output() -> None:
    tickguard = ROOT / ".venv" / "bin" / "tickguard"
    require(tickguard.is_file() and (ROOT / ".venv" / ".installed").is_file(), ".venv missing: make venv")
    result = run_up(ROOT, "--local", "--help", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: tickguard up --local [-h]"), result.stdout
    assert result.stderr == ""
    direct = subprocess.run(
        [str(tickguard), "up", "--local", "--help"], capture_output=True, text=True, check=True
    )
    assert result.stdout == direct.stdout, "up.sh printed more than the usage (make or preparation output)"
    assert "--count" in result.stdout and "--rate" in result.stdout


def test_compose_commands_work_from_the_repo_root_and_from_compose(tmp_path: Path) -> None:
    """After up.sh's .env, plain `docker-compose config` (no -f, no --env-file) resolves the project from the
    repository root and from compose/ alike (README: `docker compose logs|exec ...` from the root)."""
    command = compose_command()
    require(command is not None, "neither `docker compose` nor `docker-compose` installed (make sysdeps)")
    checkout = copy_scripts(tmp_path / "repo").resolve()
    init = run_up(checkout, "--init-env", env=clean_env())
    assert init.returncode == 0, init.stderr
    env_lines = (checkout / ".env").read_text().splitlines()
    assert f"COMPOSE_FILE={checkout}/compose/docker-compose.yml" in env_lines
    again = run_up(checkout, "--init-env", env=clean_env())
    assert (checkout / ".env").read_text().splitlines() == env_lines, "a second run must change nothing"
    for cwd in (checkout, checkout / "compose"):
        result = subprocess.run(
            [*command, "config"], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"from {cwd}: {result.stderr}"
        resolved = yaml.safe_load(result.stdout)
        assert set(resolved["services"]) == EXPECTED_SERVICES, cwd
        # Relative paths still resolve against compose/, whichever directory the command ran in.
        assert f"{checkout}/compose/kapacitor/kapacitor.conf" in result.stdout, result.stdout
        assert f"{checkout}/compose/kapacitor/alert-line.sh" in result.stdout
    assert again.returncode == 0


# A docker CLI double: `docker info` succeeds, compose builds, `compose up -d` fails the way Docker Compose does
# when a dependency never becomes healthy, and `ps`/`inspect`/`logs` report every service healthy except
# kapacitor, whose state comes from $FAKE_KAPACITOR_STATE ("missing" = no container).
FAKE_DOCKER = r"""#!/bin/sh
case "$1" in
  info) exit 0 ;;
  inspect) case "$4" in
      id-kapacitor) echo "$FAKE_KAPACITOR_STATE" ;;
      *) echo healthy ;;
    esac ;;
  compose)
    shift
    while [ $# -gt 0 ]; do case "$1" in --env-file|-f) shift 2 ;; *) break ;; esac; done
    case "$1" in
      version) echo "Docker Compose version v2.29.7" ;;
      build) ;;
      up) echo "dependency failed to start: container tickguard-kapacitor-1 is unhealthy" >&2; exit 1 ;;
      ps) if [ "$3" != kapacitor ] || [ "$FAKE_KAPACITOR_STATE" != missing ]; then echo "id-$3"; fi ;;
      logs) eval "service=\${$#}"
        echo "$service-1  | invalid configuration: slack: stateChangesOnly may only be assigned ..." ;;
      *) echo "fake docker: unexpected compose command: $*" >&2; exit 64 ;;
    esac ;;
  *) echo "fake docker: unexpected command: $*" >&2; exit 64 ;;
esac
"""


@pytest.mark.parametrize(
    ("kapacitor_state", "diagnosis"),
    [("unhealthy", "kapacitor is unhealthy"), ("missing", "kapacitor is not created (compose up failed")],
)
def test_up_sh_diagnoses_a_dependency_that_fails(
    tmp_path: Path, kapacitor_state: str, diagnosis: str
) -> None:
    checkout = copy_scripts(tmp_path / "repo")
    (checkout / "data" / "raw").mkdir(parents=True)
    (checkout / "data" / "raw" / "creditcard.csv").write_text("placeholder: up.sh only checks it exists\n")
    (checkout / "models" / "fraud" / "production").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(stat.S_IRWXU)
    env = clean_env(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_KAPACITOR_STATE=kapacitor_state,
        UP_TIMEOUT="20",
    )
    result = run_up(checkout, env=env, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    for service in ("influxdb", "api", "udf"):
        assert f"  {service}: healthy" in result.stdout
    assert "dependency failed to start" in result.stderr, "compose's own error must stay visible"
    assert diagnosis in result.stderr, result.stderr
    assert "kapacitor-1  | invalid configuration: slack" in result.stderr, (
        "the service's log lines are missing"
    )
    assert re.search(r"logs kapacitor' in .*README: Troubleshooting", result.stderr), result.stderr
    assert "chronograf" not in result.stdout, "up.sh must stop at the first failed service"
