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


# ---- score tasks rendered from detector files -------------------------------------------------------


def _effective_options(script: str):
    """The agent's options for a script's @tickguard() node, as the agent would apply them (env defaults)."""
    from tickguard.agent import udf_pb2 as pb
    from tickguard.agent.config import agent_settings
    from tickguard.agent.options import defaults, parse_options
    from tickguard.ops.livetask import live_task

    task = live_task("t", script)
    options = []
    for name, args in task.options.calls:
        option = pb.Option(name=name)
        option.values.add(type=pb.STRING, stringValue=str(args[0]))
        options.append(option)
    return task, parse_options(options, defaults(agent_settings({})))


def test_the_rendered_fraud_task_does_what_score_tick_does() -> None:
    """score.tick (compose's file) and the task rendered from detectors/fraud.toml read, score and write alike."""
    from tickguard.detectors import load_detector

    spec = load_detector("fraud")
    file_task, file_options = _effective_options(tasks.read_scripts()["score"])
    rendered_task, rendered_options = _effective_options(tasks.render_score_task(spec))
    for attribute in (
        "database",
        "retention_policy",
        "source_measurement",
        "output_database",
        "output_measurement",
    ):
        assert getattr(file_task, attribute) == getattr(rendered_task, attribute), attribute
    assert file_options.model == rendered_options.model == "fraud"
    assert file_options.label_field == rendered_options.label_field == "Class"
    assert (file_options.flag_field, file_options.score_field) == (rendered_options.flag_field, "score")
    # txid is a string field: a lean point keeps it whether or not it is named.
    assert set(file_options.keep_fields) == set(rendered_options.keep_fields) - {"txid"}


def test_detector_scripts_add_a_score_task_per_other_detector() -> None:
    scripts = tasks.detector_scripts(("fraud", "shuttle"))
    assert set(scripts) == {*tasks.TASK_IDS, "score_shuttle"}
    shuttle = scripts["score_shuttle"]
    for needle in ('dbrp "shuttle"."autogen"', "var source_measurement = 'readings'", ".model('shuttle')"):
        assert needle in shuttle
    assert ".labelField('anomaly')" in shuttle and ".flagField('flagged')" in shuttle
    # Only shuttle: fraud's tasks (and its alerts on transactions_scored) are left out.
    assert set(tasks.detector_scripts(("shuttle",))) == {"score_shuttle", "kapacitor_stats"}


def test_tick_strings_escape_quotes_and_refuse_what_kapacitor_cannot_read() -> None:
    from tickguard.errors import TickguardError

    assert tasks.tick_string("it's") == "'it\\'s'"
    assert tasks.tick_string('say "hi"', '"') == '"say \\"hi\\""'
    assert tasks.tick_string("a\\b") == "'a\\b'"  # Kapacitor keeps a backslash that precedes no quote
    with pytest.raises(TickguardError, match="backslash"):
        tasks.tick_string("ends\\")


def awkward_detector(directory: Path):
    """A detector whose names need quoting everywhere: spaces, dots, quotes, a tag filter."""
    from tickguard.detectors import load_detector

    path = directory / "odd-one.toml"
    path.write_text(
        'name = "odd-one"\n'
        'features = ["sensor one", "it\'s.two", \'say "3"\']\n'
        '[source]\ndatabase = "odd db"\nmeasurement = "read ings"\ntags = { "site id" = "north\'s" }\n'
        '[data]\ncsv = "odd.csv"\n[time]\ncolumn = ""\nsynthetic_step_seconds = 1\n'
        '[label]\nfield = "is bad"\npositive = ["yes"]\n'
        '[output]\nmeasurement = "read ings scored"\nid_field = "row id"\ndisplay_fields = ["it\'s.two"]\n'
        '[threshold]\npolicy = "fixed"\ntarget = 0.5\n'
    )
    return load_detector(path)


@pytest.mark.tick
def test_kapacitor_starts_rendered_score_tasks(
    tick_runtime_factory, echo_agent: Path, tmp_path: Path
) -> None:
    runtime = tick_runtime_factory(udfs={"tickguard": echo_agent})
    client = runtime.kapacitor_client()
    odd = awkward_detector(tmp_path)
    for spec_name, script in (
        ("shuttle", tasks.detector_scripts(("shuttle",))["score_shuttle"]),
        ("odd-one", tasks.render_score_task(odd, renames={"sensor one": "sensor 1", "it's.two": "two\\b"})),
    ):
        task = client.define_task(tasks.score_task_id(spec_name), script, dbrps=[], enabled=True)
        assert task.enabled and task.executing, f"{spec_name}: {task.error}"
        assert task.type == "stream"
    assert client.get_task("score_odd-one").dbrps == [("odd db", "autogen")]
    from tickguard.ops.livetask import live_task

    # The quoted names survive TICKscript: backfill's reader gets the same mapping and kept fields back.
    read = live_task("score_odd-one", client.get_task("score_odd-one").script)
    assert read.source_measurement == "read ings" and read.output_measurement == "read ings scored"
    # Kapacitor keeps a backslash that precedes no quote, and so does backfill's reader.
    assert read.options.last("fields") == ("it's.two=two\\b,sensor one=sensor 1",)
    _task, options = _effective_options(client.get_task("score_odd-one").script)
    assert options.fields == (("it's.two", "two\\b"), ("sensor one", "sensor 1"))
    assert options.keep_fields == ("row id", "it's.two", "is bad") and options.label_field == "is bad"
