"""Each image we build, started as compose starts it, without a Docker engine (tests/images/rootfs.py).

The images are the first thing a user runs, and two defects once stopped them on first start (the api
image lacked libgomp1, so LightGBM's model never loaded). These tests build every compose service that
has a `build:` section from its own Dockerfile and run it with the service's command, environment,
volumes and user from `docker compose config`, as the image's USER, until its healthcheck passes; then
each does the real work the service exists for. Services that listen get their own network namespace,
so the image's fixed ports (8000, 8890) and its healthchecks work as written and nothing clashes with
the host; `curl` reaches them from inside that namespace.
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
from tests.images import rootfs
from tickguard.agent import udf_pb2 as pb
from tickguard.agent.framing import FrameReader, frame
from tickguard.agent.options import DECLARED_OPTIONS

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


def test_api_image_loads_the_production_model_and_scores_a_holdout_record(
    compose_services: dict, service_image, replay_rows
) -> None:
    spec = compose_services["api"]
    models = [m for m in rootfs.service_mounts(spec, {}) if m.target == "/app/models"]
    assert models and models[0].read_only, "compose mounts ../models read-only at /app/models"
    record = replay_rows[replay_rows["Class"] == 1].iloc[0].drop("Class").astype(float).to_dict()

    with container(service_image("api"), spec) as api:
        api.wait_healthy()  # /v2/health/ready: the model is loaded (it never was without libgomp1)
        code, body = curl(
            api,
            "-H",
            "Content-Type: application/json",
            "-d",
            json.dumps(record),
            "http://127.0.0.1:8000/predict",
        )
        assert code == 200, body
        answer = json.loads(body)
        assert 0.0 <= answer["score"] <= 1.0, answer
        code, body = curl(api, "http://127.0.0.1:8000/model")
        assert code == 200, body
        # The model served is one of the repository's, read through the read-only mount.
        versions = {
            json.loads(card.read_text())["version"] for card in models[0].host.rglob("model_card.json")
        }
        assert json.loads(body)["version"] in versions


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
