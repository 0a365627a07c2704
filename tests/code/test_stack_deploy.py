"""`tickguard deploy`: a detector's tasks from Kapacitor task templates, checked by the real kapacitord.

The plan (ids, vars, overrides) is tested without servers; then the same kapacitord the suite runs
defines the templates, makes every detector's tasks from them and starts them with our UDF agent in
echo mode (in process, no model needed), redeploys without restarting anything and undeploys.
"""

from __future__ import annotations

import time

import pytest

from tests.code.test_stack_tasks import awkward_detector
from tickguard.detectors import load_detector
from tickguard.stack import deploy


def _by_id(spec, overrides=None) -> dict[str, deploy.PlannedTask]:
    return {task.task_id: task for task in deploy.plan(spec, overrides)}


def _value(task: deploy.PlannedTask, name: str):
    var = task.vars[name]
    return [item["value"] for item in var["value"]] if var["type"] == "list" else var["value"]


def test_each_detector_gets_four_tasks_named_after_it() -> None:
    assert deploy.task_ids("fraud") == ("score", "fraud_alert", "fraud_anomaly_rate", "fraud_scoring_errors")
    assert deploy.task_ids("shuttle")[0] == "score_shuttle"
    planned = _by_id(load_detector("shuttle"))
    assert list(planned) == list(deploy.task_ids("shuttle"))
    assert [t.template_id for t in planned.values()] == list(deploy.TEMPLATE_IDS)
    for task in planned.values():
        assert task.dbrps == (("shuttle", "autogen"),)
    # The alert history's alertName is the task id: it names the detector.
    for task_id in deploy.task_ids("shuttle")[1:]:
        assert _value(planned[task_id], "alert_name") == task_id


def test_templates_write_chronograf_alert_history_schema() -> None:
    scripts = deploy.read_templates()
    for template_id in deploy.TEMPLATE_IDS[1:]:
        script = scripts[template_id]
        for needle in (
            ".idTag('alertID')",
            ".levelTag('level')",
            ".messageField('message')",
            ".durationField('duration')",
            ".database('chronograf')",
            ".retentionPolicy('autogen')",
            ".measurement('alerts')",
            ".tag('alertName', alert_name)",
            ".tag('triggerType', 'threshold')",
            ".log(alert_json)",
            ".exec('/bin/sh', alert_line, alert_log)",
        ):
            assert needle in script, f"{template_id} lacks {needle}"


def test_point_alert_message_and_history_come_from_the_id_and_display_fields() -> None:
    fraud = _by_id(load_detector("fraud"))["fraud_alert"]
    assert _value(fraud, "message") == (
        'fraud flagged: txid {{ index .Fields "txid" }}, Amount {{ index .Fields "Amount" }}, '
        'score {{ index .Fields "score" | printf "%.3f" }}'
    )
    assert _value(fraud, "history_fields") == ["value", "message", "duration", "txid", "Amount"]
    assert _value(fraud, "alert_key") == 'string("txid")'
    assert _value(fraud, "alert_id") == '{{ .TaskName }}:{{ index .Tags "alert_key" }}'
    # shuttle: no id field, no display fields, and its label is called `anomaly`, so the flag is `flagged`.
    shuttle = _by_id(load_detector("shuttle"))
    alert = shuttle["shuttle_alert"]
    assert _value(alert, "message") == 'shuttle flagged: score {{ index .Fields "score" | printf "%.3f" }}'
    assert _value(alert, "alert_id") == "{{ .TaskName }}"
    assert _value(alert, "flagged_filter") == '"scored" == TRUE AND "flagged" == TRUE'
    assert _value(shuttle["shuttle_anomaly_rate"], "flag_value") == 'if("flagged" == TRUE, 1.0, 0.0)'
    score = shuttle["score_shuttle"]
    assert (_value(score, "label_field"), _value(score, "flag_field")) == ("anomaly", "flagged")


def test_overrides_are_typed_as_the_template_declares_them() -> None:
    overrides = {"warn_rate": "0.2", "alert_log": "'/tmp/it\\'s.log'", "group_idle": "1s", "where": "x"}
    planned = _by_id(load_detector("fraud"), overrides)
    assert planned["fraud_anomaly_rate"].vars["warn_rate"] == {"type": "float", "value": 0.2}
    assert planned["fraud_alert"].vars["group_idle"] == {"type": "duration", "value": "1s"}
    for task_id in ("fraud_alert", "fraud_anomaly_rate", "fraud_scoring_errors"):
        assert planned[task_id].vars["alert_log"] == {"type": "string", "value": "/tmp/it's.log"}
    assert "warn_rate" not in planned["fraud_alert"].vars  # only where the template declares it
    assert "where" not in planned["score"].vars
    with pytest.raises(deploy.DeployError, match="var warn_rate: 'lots' is not a TICKscript float"):
        deploy.plan(load_detector("fraud"), {"warn_rate": "lots"})
    with pytest.raises(deploy.DeployError, match="var period: '5 minutes' is not a TICKscript duration"):
        deploy.plan(load_detector("fraud"), {"period": "5 minutes"})


def test_var_options_need_a_name_and_a_value() -> None:
    assert deploy.parse_var_options(["warn_rate=0.02", "alert_log='/a=b'"]) == {
        "warn_rate": "0.02",
        "alert_log": "'/a=b'",
    }
    with pytest.raises(deploy.DeployError, match="NAME=VALUE"):
        deploy.parse_var_options(["warn_rate"])


# ---- against the real kapacitord -----------------------------------------------------------------------


@pytest.fixture
def kapacitor(tick_runtime_factory, udf_agent_factory):
    """A fresh influxd + kapacitord whose `tickguard` UDF is our agent in echo mode; (runtime, client)."""
    agent = udf_agent_factory(mode="echo")
    runtime = tick_runtime_factory(udfs={"tickguard": agent.socket_path})
    return runtime, runtime.kapacitor_client()


@pytest.mark.tick
def test_kapacitor_makes_and_starts_every_detectors_tasks_from_the_templates(kapacitor, tmp_path) -> None:
    from tickguard.agent.schema import parse_names
    from tickguard.ops.config import backfill_settings
    from tickguard.ops.livetask import fetch_live_task

    runtime, client = kapacitor
    odd = awkward_detector(tmp_path)
    overrides = {"alert_log": f"'{tmp_path / 'alerts.log'}'", "alert_json": f"'{tmp_path / 'alerts.json'}'"}
    for spec in (load_detector("fraud"), load_detector("shuttle"), odd):
        tasks = deploy.deploy(client, spec, overrides)
        assert [t.id for t in tasks] == list(deploy.task_ids(spec.name))
        for task in tasks:
            assert task.enabled and task.executing, f"{task.id}: {task.error}"
            assert task.type == "stream"
            assert task.dbrps == [(spec.source.database, spec.source.retention_policy)]
    # Templates and the tasks made from them, as Kapacitor (and so Chronograf's Manage Tasks) lists them.
    made = deploy.template_task_ids(client)
    for index, template_id in enumerate(deploy.TEMPLATE_IDS):
        template = client.get_template(template_id)
        assert template is not None and template.error == "", template_id
        # The committed file is what Kapacitor stores (its formatter's form): redeploys compare equal.
        assert template.script == deploy.read_templates()[template_id]
        assert sorted(made[template_id]) == sorted(
            deploy.task_ids(name)[index] for name in ("fraud", "shuttle", "odd-one")
        )
    assert client.get_template("tickguard_score").vars["model"]["type"] == "string"
    assert "tickguard" in client.get_task("score").dot
    # Backfill reads a templated score task through its vars: the quoted names come back intact.
    settings = backfill_settings({"TICKGUARD_KAPACITOR_URL": runtime.kapacitor_url})
    read = fetch_live_task(settings, "score_odd-one")
    assert (read.database, read.source_measurement) == ("odd db", "read ings")
    assert (read.output_database, read.output_measurement) == ("odd db", "read ings scored")
    (keep,) = read.options.last("keep")
    assert parse_names(keep) == ("row id", "it's.two", "is bad")
    assert read.options.last("labelField") == ("is bad",)
    fraud = fetch_live_task(settings, "score")
    assert (fraud.source_measurement, fraud.output_measurement) == ("transactions", "transactions_scored")
    assert fraud.options.last("model") == ("fraud",) and fraud.options.last("labelField") == ("Class",)


@pytest.mark.tick
def test_redeploy_changes_only_what_differs_and_undeploy_removes_the_tasks(kapacitor) -> None:
    _runtime, client = kapacitor
    fraud, shuttle = load_detector("fraud"), load_detector("shuttle")
    deploy.deploy(client, fraud)
    deploy.deploy(client, shuttle)
    before = {t.id: t.raw["modified"] for t in client.list_tasks()}
    time.sleep(0.05)
    deploy.deploy(client, fraud)  # nothing differs: nothing is redefined (no task restarts)
    assert {t.id: t.raw["modified"] for t in client.list_tasks()} == before
    assert deploy.ensure_templates(client) == []
    deploy.deploy(client, fraud, {"warn_rate": "0.2"})
    after = {t.id: t.raw["modified"] for t in client.list_tasks()}
    assert [t for t in after if after[t] != before[t]] == ["fraud_anomaly_rate"]
    assert client.get_task("fraud_anomaly_rate").raw["vars"]["warn_rate"]["value"] == 0.2
    assert client.get_task("fraud_anomaly_rate").executing

    assert deploy.undeploy(client, "shuttle") == list(deploy.task_ids("shuttle"))
    assert {t.id for t in client.list_tasks()} == set(deploy.task_ids("fraud"))
    assert all(client.get_template(t) is not None for t in deploy.TEMPLATE_IDS), "fraud still uses them"
    assert deploy.undeploy(client, "shuttle") == []  # again: nothing left to delete
    deploy.undeploy(client, "fraud")
    assert client.list_tasks() == []
    assert all(client.get_template(t) is None for t in deploy.TEMPLATE_IDS)


# ---- InfluxDB: a detector's databases and Grafana's read grant, on every deploy ---------------------------


def test_a_detectors_databases_are_its_source_its_output_and_the_alert_history(tmp_path) -> None:
    odd = awkward_detector(tmp_path)
    assert deploy.detector_databases(odd) == ("odd db", "chronograf")
    # An override that moves the scored points elsewhere adds that database.
    moved = deploy.detector_databases(odd, {"output_database": "'scored db'"})
    assert moved == ("odd db", "scored db", "chronograf")


@pytest.mark.tick
def test_deploy_creates_a_new_detectors_databases_and_grants_grafanas_reader_once(
    tick_runtime_factory, udf_agent_factory, tmp_path, monkeypatch, capsys
) -> None:
    """compose's `deploy` service on a volume InfluxDB's init made before the detector existed: influxd
    1.8 with authentication, `tickguard deploy` with the environment compose gives it (admin user, reader
    name). The new detector's database is created, Kapacitor subscribes to it before deploy returns, the
    reader may read it (and still write nothing); fraud's database and grants, already there, are left as
    they are; a second deploy changes nothing; without admin credentials deploy fails naming why."""
    import secrets

    from tickguard.cli import main
    from tickguard.influx import InfluxClient, InfluxError
    from tickguard.runtime import InfluxAuth
    from tickguard.stack import dashboards

    admin = InfluxAuth("admin", secrets.token_hex(12))
    reader_password = secrets.token_hex(12)
    agent = udf_agent_factory(mode="echo")
    runtime = tick_runtime_factory(udfs={"tickguard": agent.socket_path}, influx_auth=admin)
    influx = runtime.influx.client()
    # What compose/influxdb/init/10-tickguard.sh left on the volume before the new detector's file came.
    for statement in (
        f"CREATE USER \"reader\" WITH PASSWORD '{reader_password}'",
        'CREATE DATABASE "fraud"',
        'CREATE DATABASE "chronograf"',
        'GRANT READ ON "fraud" TO "reader"',
        'GRANT READ ON "chronograf" TO "reader"',
    ):
        influx.execute(statement)
    odd = awkward_detector(tmp_path)  # odd-one.toml: database "odd db"
    assert "odd db" not in influx.databases()
    reader = InfluxClient(runtime.influx_url, username="reader", password=reader_password, retries=0)
    with pytest.raises(InfluxError):
        reader.select('SELECT * FROM "odd db"."autogen"."read ings scored"')
    environment = {
        "TICKGUARD_KAPACITOR_URL": runtime.kapacitor_url,
        "TICKGUARD_INFLUXDB_URL": runtime.influx_url,
        "TICKGUARD_INFLUXDB_USER": admin.username,
        "TICKGUARD_INFLUXDB_PASSWORD": admin.password,
        "TICKGUARD_INFLUXDB_READER_USER": "reader",
        "TICKVAR_alert_log": f"'{tmp_path / 'alerts.log'}'",
        "TICKVAR_alert_json": f"'{tmp_path / 'alerts.json'}'",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    argv = ["deploy", "--detector", "fraud", "--detector", str(tmp_path / "odd-one.toml")]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'odd-one: InfluxDB: created database "odd db"; granted READ on "odd db" to "reader"' in out
    assert "fraud: InfluxDB: databases fraud, chronograf exist and 'reader' may read them" in out
    assert {"fraud", "chronograf", "odd db"} <= influx.databases()
    assert influx.privileges("reader") == {"fraud": "READ", "chronograf": "READ", "odd db": "READ"}
    # Kapacitor subscribed to the new database before deploy returned: the first points reach its tasks.
    assert "odd db" in {row["database"] for row in influx.subscriptions()}
    assert client_task_ids(runtime) >= set(deploy.task_ids("odd-one"))
    # Grafana's reader runs every panel query of the new detector's dashboard, and writes nothing.
    for title, query, values in dashboards.check_panels(dashboards.detector_live(odd), reader.select, "1s"):
        assert isinstance(values, int), (title, query)  # ran: no permission error raised
    with pytest.raises(InfluxError):
        reader.write(["m v=1"], database="odd db")

    # Again, with everything in place: nothing created, nothing granted.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "created" not in out and "granted" not in out
    assert "odd-one: InfluxDB: databases odd db, chronograf exist and 'reader' may read them" in out
    assert influx.privileges("reader") == {"fraud": "READ", "chronograf": "READ", "odd db": "READ"}

    # A reader Grafana was given more than READ on keeps it (deploy only adds what is missing).
    influx.grant("ALL", "odd db", "reader")
    assert main(argv) == 0
    assert influx.privileges("reader")["odd db"] == "ALL PRIVILEGES"
    capsys.readouterr()

    # The reader's credentials instead of an admin's: refused, and the message says what is needed.
    monkeypatch.setenv("TICKGUARD_INFLUXDB_USER", "reader")
    monkeypatch.setenv("TICKGUARD_INFLUXDB_PASSWORD", reader_password)
    new_one = tmp_path / "new-one.toml"
    new_one.write_text(
        (tmp_path / "odd-one.toml").read_text().replace('"odd-one"', '"new-one"').replace("odd db", "new db")
    )
    assert main(["deploy", "--detector", str(new_one)]) == 1
    err = capsys.readouterr().err
    assert "InfluxDB database 'new db'" in err and "admin user" in err, err
    assert "new db" not in influx.databases()

    # No InfluxDB URL (e.g. a user's own Kapacitor): deploy defines the tasks and says InfluxDB was left alone.
    monkeypatch.delenv("TICKGUARD_INFLUXDB_URL")
    assert main(["deploy", "--detector", "fraud"]) == 0
    assert "InfluxDB left alone (no --influx-url or TICKGUARD_INFLUXDB_URL)" in capsys.readouterr().out


def client_task_ids(runtime) -> set[str]:
    return {task.id for task in runtime.kapacitor_client().list_tasks() if task.executing}
