"""tickguard's shared TICKscripts (the load directory): rendering, overrides, quoting.

Each detector's own tasks come from the task templates: tests/code/test_stack_deploy.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tickguard.stack import tasks


def test_the_load_directory_holds_only_the_shared_tasks_each_with_a_dbrp() -> None:
    scripts = tasks.read_scripts()
    assert set(scripts) == set(tasks.SHARED_TASK_IDS)
    assert 'dbrp "_kapacitor"."autogen"' in scripts["kapacitor_stats"]


SCRIPT_WITH_VARS = "var warn_rate = 0.01\nvar crit_rate = 0.05\nstream\n    |from()\n"


def test_render_overrides_declared_vars_only() -> None:
    rendered = tasks.render_script(SCRIPT_WITH_VARS, {"warn_rate": "0.2", "not_declared": "1"})
    assert tasks.declared_vars(rendered)["warn_rate"] == "0.2"
    assert tasks.declared_vars(rendered)["crit_rate"] == "0.05"
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
    assert sorted(p.stem for p in written) == sorted(tasks.SHARED_TASK_IDS)
    assert not (tmp_path / "tasks" / "old.tick").exists()


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
