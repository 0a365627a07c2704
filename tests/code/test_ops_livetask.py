"""Reading a live scoring task's TICKscript (tickguard.ops.livetask) and the empty-label setting.

The backfill takes what the live task decides from the task itself; these tests pin the parsing of the
project's own score task and of a task using every option, and that an explicitly empty
TICKGUARD_UDF_LABEL_FIELD means "no label" in the agent and the backfill alike. The end-to-end check
(live point = backfilled point, against real servers) is in tests/integration/test_backfill_pipeline.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tickguard.agent.config import agent_settings
from tickguard.errors import TickguardError
from tickguard.ops.config import backfill_settings
from tickguard.ops.livetask import TaskScriptError, apply_live_task, feature_pairs, live_task

ROOT = Path(__file__).resolve().parents[2]


def test_the_projects_score_task_is_read_with_its_variables() -> None:
    """fraud's score task as `tickguard deploy` defines it: the template's script plus the task's vars."""
    from tickguard.detectors import load_detector
    from tickguard.stack.deploy import SCORE_TEMPLATE, plan, read_templates

    (score,) = [t for t in plan(load_detector("fraud")) if t.template_id == SCORE_TEMPLATE]
    task_vars = {name: var["value"] for name, var in score.vars.items()}
    task = live_task("score", read_templates()[SCORE_TEMPLATE], score.dbrps, task_vars=task_vars)
    assert (task.database, task.retention_policy) == ("fraud", "autogen")
    assert (task.source_measurement, task.output_measurement) == ("transactions", "transactions_scored")
    assert task.output_retention_policy == "autogen"
    assert task.udf == "tickguard"
    settings = apply_live_task(backfill_settings({}), task)
    # No threshold, label or shape of its own: the environment decides those, as in the agent.
    assert (settings.threshold, settings.label_field, settings.output) == (None, "Class", "lean")
    assert settings.model in ("", "fraud")


SCRIPT = """
// every option the agent knows, some through variables
var th = 0.42
var out = 'scored here'
stream
    |from()
        .measurement('raw points')
        .where(lambda: "x" > 1.5 AND "y" =~ /a|b/)
    @tickguard()
        .threshold(th)
        .labelField('')
        .scoreField('p')
        .flagField('flag')
        .output('full')
        .keep('Amount, txid')
        .fields('v1=V 1, amount')
        .fields('it\\'s')
        .url('http://127.0.0.1:9/')
    |influxDBOut()
        .database('db')
        .retentionPolicy('rp')
        .measurement(out)
"""


def test_every_option_of_the_udf_node_reaches_the_backfill_settings() -> None:
    task = live_task("t", SCRIPT, dbrps=[("db", "autogen")])
    assert (task.source_measurement, task.output_measurement) == ("raw points", "scored here")
    settings = apply_live_task(backfill_settings({}), task)
    assert settings.threshold == 0.42
    assert settings.label_field == ""
    assert (settings.score_field, settings.flag_field, settings.output) == ("p", "flag", "full")
    assert settings.keep_fields == ("Amount", "txid")
    assert settings.features == (("v1", "V 1"), ("amount", "amount"), ("it's", "it's"))
    assert settings.api_url == "http://127.0.0.1:9"
    assert (settings.database, settings.retention_policy) == ("db", "rp")
    assert (settings.source_measurement, settings.scored_measurement) == ("raw points", "scored here")


def test_options_the_task_does_not_set_keep_the_environments() -> None:
    env = {"TICKGUARD_UDF_SCORE_FIELD": "s", "TICKGUARD_UDF_LABEL_FIELD": "label"}
    task = live_task("t", "stream|from().measurement('m')@tickguard().threshold(0.5)", [("db", "autogen")])
    settings = apply_live_task(backfill_settings(env), task)
    assert (settings.score_field, settings.label_field, settings.threshold) == ("s", "label", 0.5)


def test_a_task_without_the_scoring_udf_is_refused_naming_it() -> None:
    with pytest.raises(TaskScriptError, match="task 'alerts' calls no scoring UDF"):
        live_task("alerts", "stream|from().measurement('m')|alert()")


def test_an_option_that_is_not_a_literal_is_refused() -> None:
    task = live_task("t", "stream|from()@tickguard().threshold(x * 2)|influxDBOut()", [("db", "rp")])
    with pytest.raises(TaskScriptError, match=r"\.threshold\(\) of @tickguard\(\) is not a literal"):
        apply_live_task(backfill_settings({}), task)


def test_field_mapping_pairs() -> None:
    assert feature_pairs(["a=b, c", " d = e "]) == (("a", "b"), ("c", "c"), ("d", "e"))


@pytest.mark.parametrize(("env", "label"), [({}, "Class"), ({"TICKGUARD_UDF_LABEL_FIELD": ""}, "")])
def test_an_explicitly_empty_label_field_means_no_label(env: dict, label: str) -> None:
    """TICKGUARD_UDF_LABEL_FIELD="" was read as unset, so tp/fp/fn/tn appeared where no label was wanted."""
    assert backfill_settings(env).label_field == label
    assert agent_settings(env).label_field == label


def test_a_detector_gives_the_backfill_its_source_output_label_and_model() -> None:
    from tickguard.detectors import load_detector
    from tickguard.ops.config import apply_detector

    settings = apply_detector(backfill_settings({}), load_detector("shuttle"))
    assert (settings.database, settings.source_measurement) == ("shuttle", "readings")
    assert (settings.scored_measurement, settings.model, settings.label_field) == (
        "readings_scored",
        "shuttle",
        "anomaly",
    )
    fraud = apply_detector(backfill_settings({}), load_detector("fraud"))
    # The fraud detector is what the environment's defaults always were (plus the model's name).
    assert replace(fraud, model="", detector="") == backfill_settings({})


def test_a_label_the_flag_would_overwrite_is_refused() -> None:
    """Shuttle's label is `anomaly`, the default flag field: its task must name another flag field."""
    from tickguard.detectors import load_detector
    from tickguard.ops.backfill import Backfiller
    from tickguard.ops.config import apply_detector

    settings = apply_detector(backfill_settings({}), load_detector("shuttle"))
    with pytest.raises(TickguardError, match="label field 'anomaly' is also the flag field"):
        Backfiller(settings)
    task = live_task(
        "shuttle",
        "stream|from().measurement('readings')@tickguard().flagField('flagged')",
        [("shuttle", "autogen")],
    )
    assert apply_live_task(settings, task).flag_field == "flagged"


def test_a_templates_variables_win_over_the_scripts_defaults() -> None:
    script = "var th = 0.5\nstream|from().measurement('m')@tickguard().threshold(th)|influxDBOut()"
    task = live_task("t", script, [("db", "rp")], task_vars={"th": 0.8})
    assert apply_live_task(backfill_settings({}), task).threshold == 0.8
