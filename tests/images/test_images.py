"""Each image we build, started as compose starts it, without a Docker engine (tests/images/rootfs.py).

The images are the first thing a user runs, and two defects once stopped them on first start (the api
image lacked libgomp1, so LightGBM's model never loaded). These tests build every compose service that
has a `build:` section from its own Dockerfile and run it with the service's command, environment,
volumes and user from `docker compose config`, as the image's USER, until its healthcheck passes; then
each does the real work the service exists for. Services that listen get their own network namespace,
so the image's fixed ports (8000, 8890) and its healthchecks work as written and nothing clashes with
the host; `curl` reaches them from inside that namespace.

Compose's one-shot `deploy` service runs the udf image too; its test runs it, with its command,
environment and detectors mount, against the suite's real kapacitord and influxd (authentication on),
Kapacitor's `tickguard` UDF being the udf image's agent on the shared socket volume.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests._deps import require
from tests.fixtures.udf import short_socket_dir
from tests.images import rootfs
from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import FrameReader, frame
from tickguard.agent.options import DECLARED_OPTIONS
from tickguard.detectors import load_detector
from tickguard.influx import InfluxClient
from tickguard.runtime import InfluxAuth
from tickguard.stack.deploy import detector_databases, task_ids

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(1800)]

SECRETS = ("INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_READER_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "JUPYTER_TOKEN")
HOST_UID = 4321  # a host user that is not the image's uid 1000


def compose_env() -> dict[str, str]:
    """.env as up.sh writes it: .env.example, random secrets, the (here: non-1000) host uid/gid."""
    env = {}
    for line in (rootfs.REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    for key in (*SECRETS, "TICKGUARD_ADMIN_TOKEN"):
        env[key] = secrets.token_hex(12)
    env["HOST_UID"] = env["HOST_GID"] = str(HOST_UID)
    return env


@pytest.fixture(scope="session")
def compose_services() -> dict:
    require(os.geteuid() == 0, "building image roots needs root (debootstrap, chroot, namespaces)")
    for tool in ("debootstrap", "unshare", "nsenter", "curl", "ip"):
        require(shutil.which(tool) is not None, f"{tool} not installed (scripts/install-sysdeps.sh)")
    return rootfs.compose_config(compose_env())["services"]


@pytest.fixture(scope="session")
def service_image(compose_services: dict) -> Callable[[str], rootfs.Image]:
    built: dict[str, rootfs.Image] = {}

    def image(service: str) -> rootfs.Image:
        if service not in built:
            built[service] = rootfs.build_service_image(service, compose_services[service])
        return built[service]

    return image


def container(
    image: rootfs.Image, spec: dict, *, named: dict | None = None, env: dict | None = None, **kwargs
) -> rootfs.Container:
    """A container of `image` configured like the compose service `spec` (command, env, user, volumes)."""
    return rootfs.Container(
        image,
        command=kwargs.pop("command", spec.get("command")),
        env={**{k: str(v) for k, v in (spec.get("environment") or {}).items()}, **(env or {})},
        user=spec.get("user"),
        mounts=kwargs.pop("mounts", None) or rootfs.service_mounts(spec, named or {}),
        healthcheck=rootfs.Healthcheck.from_compose(spec.get("healthcheck") or {}, image.config.healthcheck),
        **kwargs,
    )


def curl(running: rootfs.Container, *args: str) -> tuple[int, str]:
    result = running.host_command(["curl", "-sS", "-w", "\n%{http_code}", *args], timeout=60)
    assert result.returncode == 0, f"curl failed: {result.stderr}\n{running.logs()}"
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def production_versions(models_dir: Path) -> dict[str, str]:
    """Detector -> version of its production model: what the api serves when compose names none."""
    return {
        link.parent.name: json.loads((link / "model_card.json").read_text())["version"]
        for link in models_dir.glob("*/production")
    }


def test_api_image_serves_every_production_model_and_scores_a_record_with_each(
    compose_services: dict, service_image, replay_rows
) -> None:
    spec = compose_services["api"]
    models = [m for m in rootfs.service_mounts(spec, {}) if m.target == "/app/models"]
    assert models and models[0].read_only, "compose mounts ../models read-only at /app/models"
    # No TICKGUARD_DETECTORS: the api serves every <detector>/production of the mount.
    assert "TICKGUARD_DETECTORS" not in (spec.get("environment") or {}), spec.get("environment")
    production = production_versions(models[0].host)
    assert {"fraud", "shuttle", "waterflow"} <= set(production), production
    fraud = replay_rows[replay_rows["Class"] == 1].iloc[0].drop("Class").astype(float).to_dict()

    with container(service_image("api"), spec) as api:
        api.wait_healthy()  # /v2/health/ready: one model is loaded (none was without libgomp1)
        code, body = curl(api, "http://127.0.0.1:8000/models")
        assert code == 200, body
        served = {entry["name"]: entry for entry in json.loads(body)["models"]}
        # Every production model loaded in the image (ready needs only one): version, no error.
        assert set(served) == set(production), f"{served}\n{api.logs()}"
        for name, entry in served.items():
            assert entry.get("version") == production[name] and not entry.get("error"), entry
        for name, entry in served.items():
            record = fraud if name == "fraud" else dict.fromkeys(entry["features"], 1.0)
            code, body = curl(
                api,
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps(record),
                f"http://127.0.0.1:8000/predict?model={name}",
            )
            assert code == 200, f"{name}: {body}\n{api.logs()}"
            answer = json.loads(body)
            assert 0.0 <= answer["score"] <= 1.0 and answer["model_version"] == production[name], answer


def test_udf_image_listens_on_the_shared_socket_and_answers_info(
    compose_services: dict, service_image, tmp_path: Path
) -> None:
    spec = compose_services["udf"]
    socket_volume = tmp_path / "udf-socket"
    socket_volume.mkdir()
    with container(service_image("udf"), spec, named={"udf-socket": socket_volume}) as udf:
        udf.wait_healthy()
        path = socket_volume / "udf.sock"
        assert oct(path.stat().st_mode & 0o777) == "0o666", "Kapacitor's user must be able to connect"
        request = pb.Request()
        request.info.SetInParent()
        reader = FrameReader()
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(str(path))
            client.sendall(frame(request.SerializeToString()))
            frames: list[bytes] = []
            while not frames:
                chunk = client.recv(65536)
                assert chunk, f"the agent closed the socket without answering:\n{udf.logs()}"
                frames = reader.feed(chunk)
        response = pb.Response.FromString(frames[0])
        assert response.WhichOneof("message") == "info", response
        assert response.info.wants == pb.STREAM and response.info.provides == pb.STREAM
        assert set(response.info.options) == set(DECLARED_OPTIONS)


def test_generator_image_writes_holdout_points_into_influxdb(
    compose_services: dict, service_image, influx_server, replay_rows
) -> None:
    spec = compose_services["generator"]
    database = "images_generator"
    influx_server.create_database(database)
    command = [*spec["command"][:2], "--count", "20", "--rate", "100"]
    assert command[:2] == ["tickguard", "generate"], spec["command"]
    # The host's network: the generator reaches the test's influxd on the host loopback.
    with container(
        service_image("generator"),
        spec,
        command=command,
        env={"TICKGUARD_INFLUXDB_URL": influx_server.url, "TICKGUARD_INFLUXDB_DATABASE": database},
        host_network=True,
    ) as generator:
        assert generator.wait(timeout=300) == 0, generator.logs()
    rows = influx_server.select('SELECT count("Amount") FROM "transactions"', database)
    assert rows and rows[0]["count"] == 20, rows


def test_jupyter_image_saves_notebooks_for_a_host_user_that_is_not_uid_1000(
    compose_services: dict, service_image, tmp_path: Path
) -> None:
    spec = compose_services["jupyter"]
    assert spec.get("user") == f"{HOST_UID}:{HOST_UID}", "compose runs jupyter as HOST_UID:HOST_GID from .env"
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    os.chown(notebooks, HOST_UID, HOST_UID)
    mounts = [m for m in rootfs.service_mounts(spec, {}) if m.target != "/app/notebooks"]
    mounts.append(rootfs.Mount(notebooks, "/app/notebooks", read_only=False))
    token = spec["environment"]["JUPYTER_TOKEN"]
    notebook = {
        "type": "notebook",
        "format": "json",
        "content": {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {},
            "cells": [
                {"cell_type": "markdown", "id": "probe", "metadata": {}, "source": "saved by uid 4321"}
            ],
        },
    }
    with container(service_image("jupyter"), spec, mounts=mounts) as jupyter:
        jupyter.wait_healthy()
        code, body = curl(
            jupyter,
            "-X",
            "PUT",
            "-H",
            f"Authorization: token {token}",
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(notebook),
            "http://127.0.0.1:8890/api/contents/probe.ipynb",
        )
        assert code in (200, 201), f"{code} {body}\n{jupyter.logs()}"
    saved = notebooks / "probe.ipynb"
    assert saved.stat().st_uid == HOST_UID, "the notebook belongs to the host user"
    assert "".join(json.loads(saved.read_text())["cells"][0]["source"]) == "saved by uid 4321"


@pytest.mark.tick
@pytest.mark.parametrize("detectors", [None, "fraud shuttle waterflow"], ids=["default-env", "all-bundled"])
def test_deploy_service_defines_running_tasks_and_readable_databases(
    compose_services: dict, service_image, tick_runtime_factory, detectors: str | None
) -> None:
    """compose's one-shot `deploy`: the udf image's `tickguard deploy --wait 300` with compose's environment
    (the default .env, then one naming every bundled detector) and ../detectors at /app/detectors, against
    kapacitord 1.7.6 and influxd 1.8.10 with authentication, as InfluxDB's init left it (admin and reader
    users, no database). It exits 0; each detector's tasks exist and execute; its databases exist and
    Grafana's reader may read them."""
    services = (
        compose_services
        if detectors is None
        else rootfs.compose_config({**compose_env(), "DETECTORS": detectors})["services"]
    )
    spec, influxdb = services["deploy"], services["influxdb"]["environment"]
    assert spec["image"] == services["udf"]["image"], "deploy runs the udf image"
    assert spec["command"][:2] == ["tickguard", "deploy"], spec["command"]
    environment = {k: str(v) for k, v in spec["environment"].items()}
    # Compose's service names; the test's servers listen on host loopback ports instead.
    assert environment["TICKGUARD_KAPACITOR_URL"] == "http://kapacitor:9092"
    assert environment["TICKGUARD_INFLUXDB_URL"] == "http://influxdb:8086"
    names = environment["TICKGUARD_DEPLOY_DETECTORS"].split()
    assert names == (detectors or "fraud").split()

    # Kapacitor's `tickguard` UDF: the udf image's agent on the socket volume (Kapacitor dials it at start).
    socket_volume = short_socket_dir()
    udf_spec = services["udf"]
    with container(service_image("udf"), udf_spec, named={"udf-socket": socket_volume}) as udf:
        udf.wait_healthy()
        admin = InfluxAuth(influxdb["INFLUXDB_ADMIN_USER"], influxdb["INFLUXDB_ADMIN_PASSWORD"])
        runtime = tick_runtime_factory(udfs={"tickguard": socket_volume / "udf.sock"}, influx_auth=admin)
        influx = runtime.influx.client()
        reader_user, reader_password = influxdb["INFLUXDB_READER_USER"], influxdb["INFLUXDB_READER_PASSWORD"]
        influx.execute(f"CREATE USER \"{reader_user}\" WITH PASSWORD '{reader_password}'")
        urls = {
            "TICKGUARD_KAPACITOR_URL": runtime.kapacitor_url,
            "TICKGUARD_INFLUXDB_URL": runtime.influx_url,
        }
        with container(service_image("udf"), spec, env=urls, host_network=True) as deploy:
            code = deploy.wait(timeout=400)
            logs = deploy.logs()
        assert code == 0, logs

        client = runtime.kapacitor_client()
        with InfluxClient(
            runtime.influx_url, username=reader_user, password=reader_password, retries=0
        ) as reader:
            for name in names:
                for task_id in task_ids(name):
                    assert client.task_exists(task_id), f"{task_id} missing:\n{logs}"
                    task = client.get_task(task_id)
                    assert task.enabled and task.executing, f"{task_id}: {task.error}\n{logs}"
                for database in detector_databases(load_detector(name)):
                    assert database in influx.databases(), f"{database}:\n{logs}"
                    assert influx.privileges(reader_user).get(database) == "READ", database
                    reader.select('SELECT * FROM "nothing" LIMIT 1', database=database)  # raises if denied
