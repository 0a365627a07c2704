"""Compose's configuration, checked by the real servers it configures rather than by reading YAML.

`docker compose config` proves the file interpolates; it cannot tell whether Kapacitor accepts the
environment compose hands it. The stack's first start failed exactly there: Kapacitor refused the Slack
settings of the default .env. So each service's environment is taken AS COMPOSE INTERPOLATES IT (the
project's `docker-compose config` helper in test_compose.py) for the default .env and for one with Slack
enabled, and given to the suite's own kapacitord and influxd (the versions compose pins, checked here too):

- `kapacitord config` must accept it, and every KAPACITOR_* variable must reach a real option (Kapacitor
  silently ignores a misspelt one);
- kapacitord is then started with the mounted kapacitor.conf in private mount and network namespaces, its
  two named volumes (data, UDF socket) bound from temporary directories at the paths compose mounts them,
  until it dials the UDF socket. server.New validates the configuration before any service opens, and the
  UDF service opens before the InfluxDB one, so a dial proves the real server accepted the configuration;
  the test stops it there (no InfluxDB is reachable in the empty network namespace);
- `influxd config` must accept the influxdb service's environment and show the values it sets.

Grafana and Chronograf are AGPL: they are never built or imported here. Their provisioning and resource
files are checked against the field names and types of their loaders, written below as data with the
source file each was read from.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests._deps import require
from tests.code.test_compose import env_example, run_compose_config, write_filled_env
from tickguard.agent.framing import KIND_INFO, FrameReader, classify
from tickguard.runtime import TickBinaries
from tickguard.runtime.binaries import binary_version

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
GRAFANA_PROVISIONING = ROOT / "grafana" / "provisioning"
CHRONOGRAF_RESOURCES = COMPOSE_DIR / "chronograf" / "resources"

# PATH of the official images (Docker's default; neither image sets its own).
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where the kapacitor image reads its configuration: kapacitor/1.7/Dockerfile of github.com/influxdata/
# influxdata-docker at the 1.7.6 release (e8f19ea) copies kapacitor.conf there and runs `kapacitord` without
# -config; kapacitord then finds /etc/kapacitor/kapacitor.conf (cmd/kapacitord/run/config_command.go).
KAPACITOR_CONF_TARGET = "/etc/kapacitor/kapacitor.conf"
# The same Dockerfile: ENTRYPOINT ["/entrypoint.sh"], CMD ["kapacitord"], VOLUME /var/lib/kapacitor.
KAPACITOR_IMAGE_ENTRYPOINT = "/entrypoint.sh"
KAPACITOR_IMAGE_DATA_VOLUME = "/var/lib/kapacitor"
# Variables of the influxdb service that are not influxd options: the image's init script reads these
# (influxdb/1.8/init-influxdb.sh of influxdata-docker, which creates the admin user on first start)...
INFLUXDB_IMAGE_INIT_VARIABLES = {"INFLUXDB_ADMIN_USER", "INFLUXDB_ADMIN_PASSWORD"}
# ... and the project's own init scripts read theirs (found in compose/influxdb/init/*.sh below).

# Slack settings with which Kapacitor must start as well as with the default .env (SLACK_ENABLED=false).
SLACK_ON = {
    "SLACK_ENABLED": "true",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0000/B0000/tickguardtest",
    "SLACK_CHANNEL": "#fraud-alerts",
}
VARIANTS = {"default-env": {}, "slack-enabled": SLACK_ON}


def resolved_compose(env_file: Path) -> dict:
    """The compose file as `docker compose config` interpolates it with `env_file`."""
    result = run_compose_config(env_file)
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def service_environment(resolved: dict, service: str) -> dict[str, str]:
    """A service's environment as strings, the way the container receives it."""
    environment = resolved["services"][service].get("environment") or {}
    if isinstance(environment, list):  # compose may print KEY=VALUE lines
        environment = dict(item.split("=", 1) for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def service_mounts(resolved: dict, service: str) -> dict[str, str]:
    """Container path -> source (a host path or a named volume) of a service, short or long syntax."""
    mounts = {}
    for volume in resolved["services"][service].get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = str(volume["source"])
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def kapacitor_container_environment(resolved: dict) -> dict[str, str]:
    """What kapacitord sees in the container: compose's environment plus what the entrypoints add.

    compose/kapacitor/entrypoint.sh only copies the TICKscripts; the image's /entrypoint.sh exports
    KAPACITOR_HOSTNAME=${KAPACITOR_HOSTNAME:-$HOSTNAME} (HOSTNAME = compose's `hostname:`).
    """
    env = {"PATH": IMAGE_PATH, "HOME": "/root", "HOSTNAME": resolved["services"]["kapacitor"]["hostname"]}
    env.update(service_environment(resolved, "kapacitor"))
    env["KAPACITOR_HOSTNAME"] = env.get("KAPACITOR_HOSTNAME") or env["HOSTNAME"]
    return env


def go_parse_bool(text: str) -> bool:
    """strconv.ParseBool, which both servers use for boolean overrides."""
    if text in {"1", "t", "T", "TRUE", "true", "True"}:
        return True
    if text in {"0", "f", "F", "FALSE", "false", "False"}:
        return False
    raise ValueError(f"{text!r} is not a Go boolean")


def option_for(variable: str, prefix: str, config: dict) -> tuple[str, Any] | None:
    """The option an environment override names, as (dotted path, value in the printed config), or None.

    Both servers derive the variable from the TOML name: PREFIX_SECTION_KEY, upper case, '-' -> '_',
    list elements by index (KAPACITOR_SLACK_0_URL = slack[0].url).
    """
    tokens = variable[len(prefix) + 1 :].lower().split("_")

    def walk(node: Any, index: int, path: list[str]) -> tuple[str, Any] | None:
        if index == len(tokens):
            return ".".join(path), node
        if isinstance(node, list):
            position = tokens[index]
            if position.isdigit() and int(position) < len(node):
                return walk(node[int(position)], index + 1, [*path, position])
            return None
        if isinstance(node, dict):
            for end in range(len(tokens), index, -1):
                for key in ("-".join(tokens[index:end]), "_".join(tokens[index:end])):
                    if key in node and (found := walk(node[key], end, [*path, key])):
                        return found
        return None

    return walk(config, 0, [])


def assert_overrides_applied(env: dict[str, str], prefix: str, config: dict, skip: set[str]) -> None:
    """Every PREFIX_* variable (not in `skip`) names an option of `config` and set it to its value."""
    checked = 0
    for variable, value in sorted(env.items()):
        if not variable.startswith(prefix + "_") or variable in skip:
            continue
        found = option_for(variable, prefix, config)
        assert found, f"{variable} names no {prefix.lower()} option: the server ignores it"
        path, actual = found
        checked += 1
        if value == "":  # both servers skip empty overrides and keep the file's value or the default
            continue
        if isinstance(actual, bool):
            assert actual is go_parse_bool(value), f"{variable}={value} but {path} = {actual}"
        elif isinstance(actual, int):
            assert actual == int(value, 0), f"{variable}={value} but {path} = {actual}"
        else:
            assert str(actual) == value, f"{variable}={value} but {path} = {actual!r}"
    assert checked, f"no {prefix}_* variable checked"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def resolved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The interpolated compose file for the default .env and for one with Slack enabled."""
    env_file = write_filled_env(tmp_path_factory.mktemp("compose-env") / ".env", VARIANTS[request.param])
    return resolved_compose(env_file)


@pytest.fixture(scope="module")
def resolved_default(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The interpolated compose file for the default .env (for checks Slack does not change)."""
    return resolved_compose(write_filled_env(tmp_path_factory.mktemp("compose-env") / ".env"))


@pytest.fixture(scope="module")
def kapacitor_conf(resolved: dict) -> Path:
    """The host file compose mounts as the container's kapacitor.conf."""
    source = Path(service_mounts(resolved, "kapacitor")[KAPACITOR_CONF_TARGET])
    assert source.resolve() == (COMPOSE_DIR / "kapacitor" / "kapacitor.conf").resolve()
    return source


def run_kapacitord_config(binary: Path, conf: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(binary), "config", "-config", str(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- Kapacitor ---------------------------------------------------------------------------------------


def test_kapacitord_config_accepts_the_compose_environment(
    resolved: dict, kapacitor_conf: Path, tick_binaries: TickBinaries
) -> None:
    env = kapacitor_container_environment(resolved)
    result = run_kapacitord_config(tick_binaries.kapacitord, kapacitor_conf, env)
    assert result.returncode == 0, f"kapacitord refuses compose's configuration:\n{result.stderr[-2000:]}"
    config = tomllib.loads(result.stdout)
    assert_overrides_applied(env, "KAPACITOR", config, skip=set())
    slack = config["slack"][0]
    enabled = go_parse_bool(env["KAPACITOR_SLACK_0_ENABLED"])
    # Kapacitor's rule (services/slack/config.go): state-changes-only needs a default AND global config.
    assert slack["default"] and slack["global"] is enabled and slack["state-changes-only"] is enabled
    assert config["hostname"] == "kapacitor"
    assert config["udf"]["functions"]["tickguard"]["socket"] == "/var/run/tickguard/udf.sock"


def test_kapacitord_refuses_slack_enabled_without_a_webhook_url(
    tmp_path: Path, tick_binaries: TickBinaries
) -> None:
    """With SLACK_ENABLED=true the .env must name a webhook: Kapacitor says so instead of starting."""
    resolved = resolved_compose(write_filled_env(tmp_path / ".env", {"SLACK_ENABLED": "true"}))
    conf = Path(service_mounts(resolved, "kapacitor")[KAPACITOR_CONF_TARGET])
    result = run_kapacitord_config(tick_binaries.kapacitord, conf, kapacitor_container_environment(resolved))
    assert result.returncode != 0
    assert "slack: must specify url" in result.stderr


def namespace_command(mounts: dict[str, Path], command: list[str]) -> list[str]:
    """`command` in private mount and network namespaces with host directories bound at container paths.

    Each container path gets a tmpfs on its parent (so nothing is created on the host), then a bind mount of
    the host directory. Root uses its own namespaces; anyone else a user namespace mapped to root.
    """
    unshare = shutil.which("unshare")
    require(unshare is not None, "unshare (util-linux) not installed")
    parents = sorted({str(PurePosixPath(target).parent) for target in mounts})
    for parent in parents:
        assert parent != "/" and Path(parent).is_dir(), f"cannot mount over {parent}"
        hidden = [
            source
            for source in mounts.values()
            if Path(source).resolve().is_relative_to(Path(parent).resolve())
        ]
        assert not hidden, f"the tmpfs on {parent} would hide {hidden}: put them elsewhere"
    lines = ["set -eu"]
    lines += [f"mount -t tmpfs tickguard-test {shlex.quote(parent)}" for parent in parents]
    for target, source in mounts.items():
        lines += [
            f"mkdir -p {shlex.quote(target)}",
            f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}",
        ]
    lines.append("exec " + shlex.join(command))
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return [unshare, *user, "--mount", "--net", "--fork", "--kill-child", "sh", "-c", "\n".join(lines)]


def namespaces_work() -> bool:
    probe = subprocess.run(namespace_command({}, ["true"]), capture_output=True, check=False, timeout=30)
    return probe.returncode == 0


@pytest.fixture
def udf_listener(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A directory standing in for the udf-socket volume, with a listening socket named like the agent's."""
    directory = tmp_path / "udf-socket"
    directory.mkdir()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "udf.sock"))
    listener.listen(1)
    yield directory, listener
    listener.close()


def test_kapacitord_starts_with_the_compose_configuration(
    resolved: dict,
    kapacitor_conf: Path,
    tick_binaries: TickBinaries,
    udf_listener: tuple[Path, socket.socket],
    tmp_path: Path,
) -> None:
    require(namespaces_work(), "cannot create mount/network namespaces (needs root or user namespaces)")
    conf = tomllib.loads(kapacitor_conf.read_text())
    socket_path = PurePosixPath(conf["udf"]["functions"]["tickguard"]["socket"])
    mounts_in_compose = service_mounts(resolved, "kapacitor")
    data_target = conf["data_dir"]
    # The named volumes compose gives kapacitor; the conf must write nowhere else.
    assert mounts_in_compose[data_target] == "kapacitor-data"
    assert mounts_in_compose[str(socket_path.parent)] == "udf-socket"
    for written in (
        conf["storage"]["boltdb"],
        conf["replay"]["dir"],
        conf["task"]["dir"],
        conf["load"]["dir"],
    ):
        assert PurePosixPath(written).is_relative_to(data_target), f"{written} is outside the data volume"

    socket_dir, listener = udf_listener
    data_dir = tmp_path / "kapacitor-data"
    data_dir.mkdir()
    log_path = tmp_path / "kapacitord.log"
    command = namespace_command(
        {data_target: data_dir, str(socket_path.parent): socket_dir},
        [str(tick_binaries.kapacitord), "-config", str(kapacitor_conf)],
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=kapacitor_container_environment(resolved),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        frames = accept_udf_dial(process, listener, log_path, timeout_s=60.0)
    finally:
        stop_process_group(process)
    log_text = log_path.read_text(errors="replace")
    assert "invalid configuration" not in log_text
    assert re.search(r"listing Kapacitor hostname.*hostname=kapacitor", log_text), log_text[-2000:]
    assert classify(frames[0]) == KIND_INFO, "Kapacitor's first UDF request is not Info"
    # server.New keeps its ids in the data volume (data_dir of the mounted conf) and logs them.
    server_id = (data_dir / "server.id").read_text().strip()
    assert f"server_id={server_id}" in log_text and (data_dir / "kapacitor.db").is_file()


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the session the test started (unshare, sh, kapacitord), SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def accept_udf_dial(
    process: subprocess.Popen, listener: socket.socket, log_path: Path, timeout_s: float
) -> list[bytes]:
    """Wait until kapacitord connects to the UDF socket and sends a request; return the frames read."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"kapacitord exited ({process.returncode}) before dialing the UDF socket:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        readable, _, _ = select.select([listener], [], [], 0.2)
        if not readable:
            continue
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(max(1.0, deadline - time.monotonic()))
            reader = FrameReader()
            while True:
                chunk = connection.recv(65536)
                assert chunk, "kapacitord closed the UDF connection without a request"
                if frames := reader.feed(chunk):
                    return frames
    pytest.fail(
        f"kapacitord did not dial the UDF socket within {timeout_s:.0f} s:\n" + log_path.read_text()[-3000:]
    )


# --- InfluxDB ----------------------------------------------------------------------------------------


def test_influxd_config_applies_the_compose_environment(
    resolved: dict, tick_binaries: TickBinaries, tmp_path: Path
) -> None:
    env = service_environment(resolved, "influxdb")
    # -config /dev/null: influxd's defaults, as in the image (whose influxdb.conf only moves the data dirs).
    result = subprocess.run(
        [str(tick_binaries.influxd), "config", "-config", os.devnull],
        env={"PATH": IMAGE_PATH, "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"influxd refuses compose's environment:\n{result.stderr[-2000:]}"
    config = tomllib.loads(result.stdout)
    init_variables = set(INFLUXDB_IMAGE_INIT_VARIABLES)
    for script in (COMPOSE_DIR / "influxdb" / "init").glob("*.sh"):
        init_variables |= set(re.findall(r"\$\{?(INFLUXDB_\w+)", script.read_text()))
    assert_overrides_applied(env, "INFLUXDB", config, skip=init_variables)
    assert config["http"]["auth-enabled"] is True
    assert config["reporting-disabled"] is True


@pytest.mark.tick
def test_influxdb_init_creates_every_detectors_database_for_grafanas_read_only_user(
    tick_binaries: TickBinaries, tmp_path: Path
) -> None:
    """compose/influxdb/init/10-tickguard.sh, run as the image runs it ($INFLUX_CMD logged in as the admin)
    on a real influxd with authentication: every detector file's database exists, and the reader Grafana
    uses can run every query of the dashboards and write nothing."""
    import secrets

    from tickguard.influx import InfluxClient, InfluxError
    from tickguard.runtime import InfluxAuth, TickRuntime
    from tickguard.stack import dashboards

    require(tick_binaries.influx is not None, "the influx CLI is missing: run `make tick`")
    admin = InfluxAuth("admin", secrets.token_hex(12))
    reader_password = secrets.token_hex(12)
    runtime = TickRuntime(tmp_path / "tick", binaries=tick_binaries, with_kapacitor=False, influx_auth=admin)
    runtime.start()
    try:
        influx = runtime.influx
        influx_cmd = shlex.join(
            [str(tick_binaries.influx), "-host", influx.host, "-port", str(influx.port)]
            + ["-username", admin.username, "-password", admin.password, "-execute"]
        )
        script = COMPOSE_DIR / "influxdb" / "init" / "10-tickguard.sh"
        result = subprocess.run(
            ["sh", "-c", f". {shlex.quote(str(script))}"],
            env={
                "PATH": os.environ["PATH"],
                "INFLUX_CMD": influx_cmd,
                "INFLUXDB_READER_USER": "reader",
                "INFLUXDB_READER_PASSWORD": reader_password,
                "TICKGUARD_DETECTORS_DIR": str(ROOT / "detectors"),  # compose mounts ../detectors there
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        specs = dashboards.bundled_detectors()
        databases = {row["name"] for row in influx.client().select("SHOW DATABASES")}
        assert {"chronograf", "_kapacitor", *(spec.source.database for spec in specs)} <= databases
        reader = InfluxClient(
            influx.url, username="reader", password=reader_password, timeout_s=10, retries=0
        )
        boards = [*(dashboards.detector_live(spec) for spec in specs), dashboards.pipeline_health(specs)]
        for board in boards:
            for title, query, _values in dashboards.check_panels(board, reader.select, "1s"):
                assert isinstance(_values, int), (title, query)  # ran: no permission error raised
        with pytest.raises(InfluxError):
            reader.execute(f'CREATE DATABASE "{specs[0].source.database}_x"')
    finally:
        runtime.stop()


# --- Versions: compose runs what the suite tests -------------------------------------------------------


def test_compose_pins_the_server_versions_the_suite_runs(tick_binaries: TickBinaries) -> None:
    pins = env_example()
    assert pins["KAPACITOR_IMAGE"] == f"kapacitor:{binary_version(tick_binaries.kapacitord)}"
    assert pins["INFLUXDB_IMAGE"] == f"influxdb:{binary_version(tick_binaries.influxd)}"


def test_compose_fits_the_kapacitor_image(resolved_default: dict) -> None:
    """compose's entrypoint wraps the image's, runs its command and mounts what the image reads."""
    kapacitor = resolved_default["services"]["kapacitor"]
    mounts = service_mounts(resolved_default, "kapacitor")
    wrapper = [target for target in mounts if target == kapacitor["entrypoint"][0]]
    assert wrapper, "compose's kapacitor entrypoint is not mounted"
    script = (COMPOSE_DIR / "kapacitor" / "entrypoint.sh").read_text()
    assert re.search(rf'^exec {re.escape(KAPACITOR_IMAGE_ENTRYPOINT)} "\$@"$', script, re.M)
    assert kapacitor["command"] == ["kapacitord"]
    assert KAPACITOR_CONF_TARGET in mounts and KAPACITOR_IMAGE_DATA_VOLUME in mounts


# --- Grafana provisioning ----------------------------------------------------------------------------

# Field -> type of one datasource in a provisioning file, apiVersion 1: upsertDataSourceFromConfigV1 in
# grafana/grafana pkg/services/provisioning/datasources/types.go (yaml tags). Access values and one default per
# org: validateAccessAndOrgID / validateDefaultUniqueness in the same package's config_reader.go.
GRAFANA_DATASOURCE_FIELDS = {
    "orgId": int,
    "orgName": str,
    "version": int,
    "name": str,
    "type": str,
    "access": str,
    "url": str,
    "user": str,
    "database": str,
    "basicAuth": bool,
    "basicAuthUser": str,
    "withCredentials": bool,
    "isDefault": bool,
    "correlations": list,
    "jsonData": dict,
    "secureJsonData": dict,
    "editable": bool,
    "uid": str,
}
GRAFANA_DATASOURCE_ACCESS = {"proxy", "direct"}
# Field -> type of one dashboard provider, apiVersion 1: `configs` in pkg/services/provisioning/dashboards/
# types.go; the file provider's options (path, foldersFromFilesStructure) are read in file_reader.go.
GRAFANA_PROVIDER_FIELDS = {
    "name": str,
    "type": str,
    "orgId": int,
    "folder": str,
    "folderUid": str,
    "editable": bool,
    "options": dict,
    "disableDeletion": bool,
    "updateIntervalSeconds": int,
    "allowUiUpdates": bool,
}
GRAFANA_FILE_PROVIDER_OPTIONS = {"path": str, "foldersFromFilesStructure": bool}


def assert_fields(document: dict, fields: dict[str, type], where: str) -> None:
    for key, value in document.items():
        assert key in fields, f"{where}: unknown field {key!r} (known: {sorted(fields)})"
        expected = fields[key]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        assert ok, f"{where}: {key} must be {expected.__name__}, got {value!r}"


def test_grafana_provisioning_files_match_grafanas_format(resolved_default: dict) -> None:
    datasources = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "influxdb.yaml").read_text())
    assert set(datasources) == {"apiVersion", "datasources"} and datasources["apiVersion"] == 1
    defaults = 0
    for index, source in enumerate(datasources["datasources"]):
        assert_fields(source, GRAFANA_DATASOURCE_FIELDS, f"datasources[{index}]")
        assert source["access"] in GRAFANA_DATASOURCE_ACCESS
        defaults += bool(source.get("isDefault"))
    assert defaults <= 1, "Grafana refuses more than one default datasource per org"

    providers = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "tickguard.yaml").read_text())
    assert set(providers) == {"apiVersion", "providers"} and providers["apiVersion"] == 1
    for index, provider in enumerate(providers["providers"]):
        assert_fields(provider, GRAFANA_PROVIDER_FIELDS, f"providers[{index}]")
        assert provider["type"] == "file"
        assert_fields(provider["options"], GRAFANA_FILE_PROVIDER_OPTIONS, f"providers[{index}].options")

    # The home dashboard compose names is one of the mounted dashboard files.
    grafana_env = service_environment(resolved_default, "grafana")
    mounts = service_mounts(resolved_default, "grafana")
    home = PurePosixPath(grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    # The deepest mount holding the path is the one the container sees (grafana-data holds a bind mount).
    dashboards_target = max((t for t in mounts if home.is_relative_to(t)), key=len)
    assert (Path(mounts[dashboards_target]) / home.relative_to(dashboards_target)).is_file()


def test_grafana_provisioning_variables_are_set_by_compose(resolved_default: dict) -> None:
    """Grafana expands $VAR / ${VAR} in provisioning values from its environment; unset expands to ''."""
    grafana_env = service_environment(resolved_default, "grafana")
    used = set()
    for path in sorted(GRAFANA_PROVISIONING.rglob("*.yaml")):
        for name in re.findall(r"\$\{?(\w+)\}?", path.read_text()):
            used.add(name)
            assert grafana_env.get(name), (
                f"{path.name} uses ${name}, empty or unset in compose's grafana service"
            )
    assert {"INFLUXDB_READER_USER", "INFLUXDB_READER_PASSWORD"} <= used


# --- Chronograf resources ----------------------------------------------------------------------------

# JSON fields of chronograf.Source (.src) and chronograf.Server (.kap) in github.com/influxdata/chronograf
# chronograf.go at the 1.10.3 release (fdc33d18d); "int-string" = `json:"...,string"`, an int written as a
# JSON string. filestore/filestore.go `load` renders each file with html/template (missingkey=error) over
# Chronograf's environment, then json.Unmarshal, which matches keys case-insensitively.
CHRONOGRAF_SOURCE_FIELDS = {
    "id": "int-string",
    "name": str,
    "type": str,
    "username": str,
    "password": str,
    "sharedSecret": str,
    "url": str,
    "metaUrl": str,
    "insecureSkipVerify": bool,
    "default": bool,
    "telegraf": str,
    "organization": str,
    "role": str,
    "defaultRP": str,
    "version": str,
}
CHRONOGRAF_SERVER_FIELDS = {
    "id": "int-string",
    "srcId": "int-string",
    "name": str,
    "username": str,
    "password": str,
    "url": str,
    "insecureSkipVerify": bool,
    "active": bool,
    "organization": str,
    "type": str,
    "metadata": dict,
}
# chronograf.go constants for Source.type; a Kapacitor server has an empty type (server/kapacitors.go
# lists only servers with Type == ""); the default organization's id is "default" (kv/organizations.go).
CHRONOGRAF_SOURCE_TYPES = {"influx", "influx-enterprise", "influx-relay", "influx-v2"}
# Characters Go's html/template escapes in text: a value holding one would reach JSON altered.
HTML_ESCAPED = set("&'<>\"+\x00")


def render_chronograf_resource(path: Path, env: dict[str, str]) -> dict:
    def value(match: re.Match) -> str:
        name = match.group(1)
        assert name in env, (
            f"{path.name}: {{{{ .{name} }}}} is not set in chronograf's environment (missingkey=error)"
        )
        assert not HTML_ESCAPED & set(env[name]), f"{name} holds a character html/template would escape"
        return env[name]

    text = path.read_text()
    assert re.sub(r"\{\{\s*\.\w+\s*\}\}", "", text).count("{{") == 0, (
        f"{path.name}: unsupported template action"
    )
    return json.loads(re.sub(r"\{\{\s*\.(\w+)\s*\}\}", value, text))


def assert_chronograf_fields(document: dict, fields: dict[str, Any], where: str) -> dict[str, Any]:
    """Type-check like json.Unmarshal into the struct; return the document under the struct's key names."""
    by_folded = {name.lower(): name for name in fields}
    normalised = {}
    for key, value in document.items():
        assert key.lower() in by_folded, f"{where}: unknown field {key!r} (Chronograf drops it)"
        name = by_folded[key.lower()]
        expected = fields[name]
        if expected == "int-string":
            assert isinstance(value, str) and re.fullmatch(r"-?\d+", value), (
                f"{where}: {key} must be a string id"
            )
            value = int(value)
        else:
            assert isinstance(value, expected), f"{where}: {key} must be {expected.__name__}, got {value!r}"
        normalised[name] = value
    return normalised


def test_chronograf_resources_load_like_chronograf(resolved_default: dict) -> None:
    env = service_environment(resolved_default, "chronograf")
    sources = [
        assert_chronograf_fields(render_chronograf_resource(p, env), CHRONOGRAF_SOURCE_FIELDS, p.name)
        for p in sorted(CHRONOGRAF_RESOURCES.glob("*.src"))
    ]
    servers = [
        assert_chronograf_fields(render_chronograf_resource(p, env), CHRONOGRAF_SERVER_FIELDS, p.name)
        for p in sorted(CHRONOGRAF_RESOURCES.glob("*.kap"))
    ]
    assert sources and servers
    assert sum(source.get("default", False) for source in sources) == 1
    for source in sources:
        assert source["type"] in CHRONOGRAF_SOURCE_TYPES and source["organization"] == "default"
    source_ids = {source["id"] for source in sources}
    for server in servers:
        assert server["srcId"] in source_ids, "the Kapacitor resource points at no source"
        assert server.get("type", "") == "", "a typed server is not listed as a Kapacitor"
        assert server["active"] is True and server["organization"] == "default"
