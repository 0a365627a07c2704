"""Generated server configs and binary discovery of tickguard.runtime (no servers started)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tickguard.runtime import (
    InfluxAuth,
    InfluxServer,
    KapacitorServer,
    SocketUdf,
    find_tick_binaries,
    load_settings,
)
from tickguard.runtime.toml import deep_merge, dumps


def test_toml_writer_round_trips_nested_tables_and_table_arrays() -> None:
    document = {
        "hostname": "127.0.0.1",
        "quote": 'a "b" \\ c',
        "http": {"bind-address": "127.0.0.1:1", "log-enabled": False},
        "influxdb": [{"urls": ["http://x:1"], "excluded-subscriptions": {"_kapacitor": ["autogen"]}}],
        "udf": {"functions": {"score-tx": {"socket": "/tmp/a b.sock", "timeout": "10s"}}},
        "ratio": 0.5,
    }
    assert tomllib.loads(dumps(document)) == document


def test_toml_writer_rejects_values_it_cannot_write() -> None:
    with pytest.raises(TypeError, match="udf.bad"):
        dumps({"udf": {"bad": object()}})


def test_deep_merge_overrides_leaves_and_keeps_siblings() -> None:
    merged = deep_merge(
        {"task": {"dir": "/d", "snapshot-interval": "60s"}, "x": 1}, {"task": {"snapshot-interval": "5s"}}
    )
    assert merged == {"task": {"dir": "/d", "snapshot-interval": "5s"}, "x": 1}


def test_kapacitor_config_has_udfs_subscription_and_stats(tmp_path: Path) -> None:
    influx = InfluxServer(Path("/bin/true"), tmp_path / "influxd", auth=InfluxAuth("admin", "pw"))
    kapacitor = KapacitorServer(
        Path("/bin/true"),
        tmp_path / "kapacitord",
        influx=influx,
        udfs={"score": "/run/score.sock", "slow": ("/run/slow.sock", "30s"), "obj": SocketUdf("/run/o.sock")},
        config_overrides={"task": {"snapshot-interval": "5s"}},
    )
    config = tomllib.loads(kapacitor.write_config().read_text())
    assert config["udf"]["functions"] == {
        "score": {"socket": "/run/score.sock", "timeout": "10s"},
        "slow": {"socket": "/run/slow.sock", "timeout": "30s"},
        "obj": {"socket": "/run/o.sock", "timeout": "10s"},
    }
    (section,) = config["influxdb"]
    assert section["urls"] == [influx.url]
    assert (section["username"], section["password"]) == ("admin", "pw")
    assert section["subscription-protocol"] == "http" and section["kapacitor-hostname"] == "127.0.0.1"
    assert config["http"]["bind-address"] == f"127.0.0.1:{kapacitor.port}"
    assert config["stats"]["database"] == "_kapacitor"
    assert config["task"]["snapshot-interval"] == "5s"
    assert config["reporting"]["enabled"] is False


def test_kapacitor_influxdb_overrides_merge_into_the_one_section(tmp_path: Path) -> None:
    influx = InfluxServer(Path("/bin/true"), tmp_path / "influxd")
    kapacitor = KapacitorServer(
        Path("/bin/true"),
        tmp_path / "kapacitord",
        influx=influx,
        config_overrides={"influxdb": {"excluded-subscriptions": {"fraud": ["scored"]}}},
    )
    (section,) = tomllib.loads(kapacitor.write_config().read_text())["influxdb"]
    assert section["urls"] == [influx.url]
    assert section["excluded-subscriptions"] == {"_kapacitor": ["autogen"], "fraud": ["scored"]}


def test_daemon_environment_adds_extra_variables_and_drops_config_overrides(monkeypatch) -> None:
    from tickguard.runtime.process import _server_environment

    monkeypatch.setenv("KAPACITOR_HOSTNAME", "x")
    env = _server_environment({"GOGC": "400"})
    assert env["GOGC"] == "400" and "KAPACITOR_HOSTNAME" not in env


def test_influx_config_turns_auth_on_only_with_credentials(tmp_path: Path) -> None:
    open_config = tomllib.loads(InfluxServer(Path("/bin/true"), tmp_path / "a").write_config().read_text())
    secured = InfluxServer(Path("/bin/true"), tmp_path / "b", auth=InfluxAuth("admin", "pw"))
    assert open_config["http"]["auth-enabled"] is False
    assert tomllib.loads(secured.write_config().read_text())["http"]["auth-enabled"] is True
    assert "pw" not in repr(secured.auth)


def test_binaries_are_found_in_tickguard_tick_bin_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("influxd", "kapacitord"):
        executable = tmp_path / name
        executable.write_text("#!/bin/sh\n")
        executable.chmod(0o755)
    monkeypatch.setenv("TICKGUARD_TICK_BIN", str(tmp_path))
    binaries = find_tick_binaries(load_settings())
    assert binaries.influxd == tmp_path / "influxd" and binaries.kapacitord == tmp_path / "kapacitord"
    assert binaries.searched[0] == tmp_path


def test_start_timeout_setting_must_be_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKGUARD_START_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="TICKGUARD_START_TIMEOUT"):
        load_settings()
