"""tickguard's TICKscripts: rendering, and Kapacitor's own validation against the real kapacitord."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.tmp_hygiene import short_dir
from tickguard.kapacitor_client import KapacitorError
from tickguard.stack import tasks

TASK_FILES = sorted(tasks.tasks_dir().glob("*.tick"))


def test_every_expected_task_has_a_script_with_a_dbrp_statement() -> None:
    scripts = tasks.read_scripts()
    assert set(scripts) == set(tasks.TASK_IDS)
    for task_id, script in scripts.items():
        database = "_kapacitor" if task_id == "kapacitor_stats" else "fraud"
        assert f'dbrp "{database}"."autogen"' in script, task_id


def test_alerts_write_chronograf_alert_history_schema() -> None:
    for task_id in ("fraud_alert", "anomaly_rate", "scoring_errors"):
        script = tasks.read_scripts()[task_id]
        for needle in (
            ".idTag('alertID')",
            ".levelTag('level')",
            ".messageField('message')",
            ".durationField('duration')",
            ".database('chronograf')",
            ".retentionPolicy('autogen')",
            ".measurement('alerts')",
            f".tag('alertName', '{task_id}')",
            ".tag('triggerType', 'threshold')",
            ".log(alert_json)",
            ".exec('/bin/sh', alert_line, alert_log)",
        ):
            assert needle in script, f"{task_id} lacks {needle}"


def test_render_overrides_declared_vars_only() -> None:
    script = tasks.read_scripts()["anomaly_rate"]
    rendered = tasks.render_script(script, {"warn_rate": "0.2", "not_declared": "1"})
    assert tasks.declared_vars(rendered)["warn_rate"] == "0.2"
    assert tasks.declared_vars(rendered)["crit_rate"] == tasks.declared_vars(script)["crit_rate"]
    assert "not_declared" not in rendered


def test_vars_from_env_reads_only_tickvar_prefixed_names() -> None:
    assert tasks.vars_from_env({"TICKVAR_warn_rate": "0.3", "OTHER": "x"}) == {"warn_rate": "0.3"}


def test_bad_variable_names_are_refused() -> None:
    from tickguard.errors import TickguardError

    with pytest.raises(TickguardError, match="TICKVAR_a-b"):
        tasks.render_script("var x = 1", {"a-b": "2"})


def test_write_load_dir_replaces_stale_scripts(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "old.tick").write_text("stream")
    written = tasks.write_load_dir(tmp_path, {"alert_log": "'/tmp/a.log'"})
    assert sorted(p.stem for p in written) == sorted(tasks.TASK_IDS)
    assert not (tmp_path / "tasks" / "old.tick").exists()
    assert "var alert_log = '/tmp/a.log'" in (tmp_path / "tasks" / "fraud_alert.tick").read_text()


@pytest.fixture
def echo_agent() -> Iterator[Path]:
    """Our UDF agent in echo mode (no model needed) on a short socket path."""
    directory = short_dir("tasks-")
    path = directory / "udf.sock"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tickguard.cli",
            "udf",
            "--socket",
            str(path),
            "--mode",
            "echo",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(path))
                break
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"UDF agent did not listen: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.2)
    yield path
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.tick
def test_kapacitor_accepts_and_starts_every_task(
    tick_runtime_factory, echo_agent: Path, tmp_path: Path
) -> None:
    runtime = tick_runtime_factory(udfs={"tickguard": echo_agent})
    client = runtime.kapacitor_client()
    overrides = tasks.alert_output_vars(tmp_path / "alerts.log", tmp_path / "alerts.json")
    for task_id, script in tasks.read_scripts().items():
        task = client.define_task(task_id, tasks.render_script(script, overrides), dbrps=[], enabled=True)
        assert task.enabled and task.executing, f"{task_id}: {task.error}"
        database = "_kapacitor" if task_id == "kapacitor_stats" else "fraud"
        assert task.dbrps == [(database, "autogen")], task_id
        assert task.type == "stream"
    assert "tickguard" in client.get_task("score").dot


@pytest.mark.tick
def test_kapacitor_rejects_a_broken_script(tick_runtime_factory, echo_agent: Path) -> None:
    """The validation above is real: the same kapacitord refuses a script with an unknown option."""
    runtime = tick_runtime_factory(udfs={"tickguard": echo_agent})
    broken = tasks.read_scripts()["score"].replace("@tickguard()", "@tickguard().noSuchOption(1)")
    with pytest.raises(KapacitorError, match="noSuchOption"):
        runtime.kapacitor_client().define_task("broken", broken, dbrps=[], enabled=True)
