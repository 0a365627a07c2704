"""`tickguard deploy` / `tickguard undeploy`: a detector's Kapacitor tasks, from task templates and vars.

Why templates: the alert scripts used to hard-code fraud's database, measurement and fields, so a copied
script logged `<no value>` for another data set. A Kapacitor task template is a TICKscript whose `var`s
are declared with a type and possibly no value; each detector's task is the template plus its values,
taken from the detector file. It is Kapacitor's own mechanism, so the API, the `kapacitor` CLI and
Chronograf's Manage Tasks all list the templates and the tasks made from them, and updating a template
reloads every detector's task at once.

Four templates (src/tickguard/stack/templates/*.tick) give each detector four tasks:

    task id                       template                    what
    score (fraud) / score_<name>  tickguard_score             the @tickguard() scoring task
    <name>_alert                  tickguard_point_alert       one alert per flagged point, message from
                                                              the id and display fields
    <name>_anomaly_rate           tickguard_anomaly_rate      flagged share of scored points (the flag,
                                                              not the label)
    <name>_scoring_errors         tickguard_scoring_errors    points that left the UDF unscored

Every alert goes to `alerts.log` (one line), `alerts.json` and Chronograf's alert history
(chronograf.autogen.alerts) with alertName = the task id, which names the detector. Deploying again
changes nothing that is already as planned (a running task is not restarted), so `up --local`, compose's
`deploy` service and a user can all run it; `undeploy` deletes the detector's tasks and every template
no task uses any more.

InfluxDB (`ensure_databases`, when deploy is given an InfluxDB): the detector's databases -- source, scored
points, alert history -- are created when InfluxDB lacks them, and Grafana's read-only user is granted READ
on each it cannot read yet, through tickguard.influx. Compose's InfluxDB init does that only for the detector
files present when its volume is first created; doing it on every deploy (compose's `deploy` service is
InfluxDB's admin) means a detector added later needs no step by hand. After creating a source database,
`wait_for_subscriptions` waits for Kapacitor to subscribe to it (at its next sync, every minute by
default): points written before would never reach the score task.

Overrides (`TICKVAR_<var>=<TICKscript literal>` in the environment, or `--var NAME=VALUE`) replace a
template var's value in every task whose template declares it, typed as the template declares it.

Sharded (`shard=(i, N)`, `--shard I --shards N`; the Helm chart's Kapacitor pods, tickguard.stack.sharding):
the score task also keeps only the points tagged `shard == i`, and the three alert tasks run on shard 0
only -- every Kapacitor receives every scored point, so alerting on each shard would alert N times.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickguard.errors import TickguardError
from tickguard.stack.tasks import score_task_id, tick_string, vars_from_env

if TYPE_CHECKING:
    from tickguard.detectors.spec import DetectorSpec
    from tickguard.influx import InfluxClient
    from tickguard.kapacitor_client import KapacitorClient, Task

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
SCORE_TEMPLATE = "tickguard_score"
POINT_ALERT_TEMPLATE = "tickguard_point_alert"
ANOMALY_RATE_TEMPLATE = "tickguard_anomaly_rate"
SCORING_ERRORS_TEMPLATE = "tickguard_scoring_errors"
TEMPLATE_IDS = (SCORE_TEMPLATE, POINT_ALERT_TEMPLATE, ANOMALY_RATE_TEMPLATE, SCORING_ERRORS_TEMPLATE)
# Alert history: what Chronograf reads (tick-facts: database chronograf, rp autogen, measurement alerts).
ALERT_HISTORY = ("chronograf", "autogen", "alerts")
# The constant grouping key of a detector without an id field: all its flagged points share one alert ID.
NO_ID_KEY = "all"

_VAR_DECLARATION = re.compile(r"^var (\w+)(?: (\w+)|\s*=\s*(.+))$", re.M)


class DeployError(TickguardError):
    """A detector could not be deployed or undeployed; the message says which task or var and why."""


@dataclass(frozen=True)
class PlannedTask:
    """One task of a detector: its id, template, dbrps and typed vars as Kapacitor's API takes them."""

    task_id: str
    template_id: str
    dbrps: tuple[tuple[str, str], ...]
    vars: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- templates ----------------------------------------------------------------------------------------


def read_templates(directory: Path = TEMPLATES_DIR) -> dict[str, str]:
    """Template id -> TICKscript, one per templates/*.tick file."""
    scripts = {path.stem: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.tick"))}
    missing = [template for template in TEMPLATE_IDS if template not in scripts]
    if missing:
        raise DeployError(f"task templates {missing} not found in {directory}")
    return scripts


def declared_var_types(script: str) -> dict[str, str]:
    """Var name -> Kapacitor var type of every top-level `var` a template declares (typed or by default).

    Only literal values count as declarations of a template var; `var x = stream ...` is a pipeline."""
    types: dict[str, str] = {}
    for name, declared, default in _VAR_DECLARATION.findall(script):
        kind = declared or _literal_type(default.strip())
        if kind:
            types[name] = kind
    return types


def _literal_type(text: str) -> str | None:
    if text.startswith("lambda:"):
        return "lambda"
    if text.startswith("'"):
        return "string"
    if text.startswith("["):
        return "list"
    if text in ("TRUE", "FALSE"):
        return "bool"
    if re.fullmatch(r"-?\d+(\.\d+)?(ns|us|u|µs|µ|ms|s|m|h|d|w)", text):
        return "duration"
    if re.fullmatch(r"-?\d+", text):
        return "int"
    if re.fullmatch(r"-?\d+\.\d*([eE][-+]?\d+)?", text):
        return "float"
    return None


def typed_var(kind: str, value: Any) -> dict[str, Any]:
    """A var as Kapacitor's task API takes it ({"type": ..., "value": ...}); lists hold strings."""
    if kind == "list":
        return {"type": "list", "value": [{"type": "string", "value": str(item)} for item in value]}
    return {"type": kind, "value": value}


def var_from_literal(name: str, kind: str, text: str) -> dict[str, Any]:
    """An override written as a TICKscript literal (TICKVAR_warn_rate=0.02, alert_log='/x.log'), typed as
    the template declares var `name`."""
    text = text.strip()
    try:
        if kind == "string":
            if len(text) >= 2 and text[0] == text[-1] == "'":
                return typed_var(kind, text[1:-1].replace("\\'", "'"))
            return typed_var(kind, text)  # a bare value is taken as the string itself
        if kind == "float":
            return typed_var(kind, float(text))
        if kind == "int":
            return typed_var(kind, int(text))
        if kind == "bool":
            if text not in ("TRUE", "FALSE", "true", "false"):
                raise ValueError(text)
            return typed_var(kind, text.lower() == "true")
        if kind == "duration":
            if _literal_type(text) != "duration":
                raise ValueError(text)
            return typed_var(kind, text)
        if kind == "lambda":
            return typed_var(kind, text.removeprefix("lambda:").strip())
    except ValueError:
        pass
    raise DeployError(f"var {name}: {text!r} is not a TICKscript {kind} (TICKVAR_{name} or --var {name}=...)")


# ---- a detector's tasks ---------------------------------------------------------------------------------


def task_ids(detector: str) -> tuple[str, ...]:
    """The ids of a detector's tasks, score task first."""
    return (
        score_task_id(detector),
        f"{detector}_alert",
        f"{detector}_anomaly_rate",
        f"{detector}_scoring_errors",
    )


def _go_string(text: str) -> str:
    """`text` as a Go template string literal (JSON's escapes are Go's)."""
    return json.dumps(text)


def _field_ref(name: str) -> str:
    """A field reference inside a TICKscript lambda."""
    return tick_string(name, '"')


def point_alert_message(spec: DetectorSpec) -> str:
    """The per-point alert's message template: the detector, its id and display fields, the score; a
    windowed detector's also names the series (its group_by tags), the values and the expected range its
    window gave the point, so the alert says which series and why."""
    from tickguard.agent.schema import EXPECTED_HIGH, EXPECTED_LOW, schema_for

    schema = schema_for(spec)
    shown = [name for name in (spec.output.id_field, *spec.output.display_fields) if name]
    parts = [f"{tag} {{{{ index .Tags {_go_string(tag)} }}}}" for tag in _series_tags(spec)]
    parts += [f"{name} {{{{ index .Fields {_go_string(name)} }}}}" for name in shown]
    if spec.windows is not None:
        expected = ""
        if schema.expected_range:
            low, high = (
                f'{{{{ index .Fields {_go_string(n)} | printf "%.3f" }}}}'
                for n in (EXPECTED_LOW, EXPECTED_HIGH)
            )
            expected = f" (expected {low} .. {high})"
        parts += [
            f"{name} {{{{ index .Fields {_go_string(name)} }}}}{expected}" for name in spec.feature_fields
        ]
    parts.append(
        f'{schema.score_field} {{{{ index .Fields {_go_string(schema.score_field)} | printf "%.3f" }}}}'
    )
    return f"{spec.name} flagged: " + ", ".join(parts)


def _series_tags(spec: DetectorSpec) -> tuple[str, ...]:
    """The tags naming a windowed detector's series (its `[windows] group_by`), else none."""
    return tuple(spec.windows.group_by) if spec.windows is not None else ()


def _alert_key(spec: DetectorSpec) -> str | None:
    """The lambda giving a flagged point's alert key: its id field, else its series' tags joined by '/',
    else None (the detector's points share one alert ID)."""
    if spec.output.id_field:
        return f"string({_field_ref(spec.output.id_field)})"
    tags = _series_tags(spec)
    if tags:
        return " + '/' + ".join(f"string({_field_ref(tag)})" for tag in tags)
    return None


def plan(
    spec: DetectorSpec, overrides: Mapping[str, str] | None = None, shard: tuple[int, int] | None = None
) -> list[PlannedTask]:
    """The four tasks of a detector with their vars; `overrides` (var -> TICKscript literal) replace a var in
    every task whose template declares it; `shard` = (index, count) plans shard `index`'s tasks."""
    from tickguard.agent.schema import SCORED, format_names, schema_for

    schema = schema_for(spec)
    source = spec.source
    dbrps = ((source.database, source.retention_policy),)
    score_id, alert_id, rate_id, errors_id = task_ids(spec.name)
    where = " AND ".join(
        f"{_field_ref(key)} == {tick_string(value)}" for key, value in sorted(source.tags.items())
    )
    if shard is not None:
        from tickguard.stack.sharding import shard_condition

        where = " AND ".join(filter(None, (where, shard_condition(*shard))))
    flag = _field_ref(schema.flag_field)
    scored = f"{_field_ref(SCORED)} == TRUE"
    id_field = spec.output.id_field
    alert_key = _alert_key(spec)
    history = ["value", "message", "duration", *(n for n in (id_field, *spec.output.display_fields) if n)]
    values: dict[str, dict[str, Any]] = {
        score_id: {
            "source_measurement": source.measurement,
            "where_filter": ("lambda", where or "TRUE"),
            "model": spec.model.name,
            "label_field": schema.label_field,
            "flag_field": schema.flag_field,
            "score_field": schema.score_field,
            "keep": format_names(schema.keep_fields),
            "output_database": source.database,
            "output_retention_policy": source.retention_policy,
            "output_measurement": schema.measurement,
        },
        alert_id: {
            "scored_measurement": schema.measurement,
            "flagged_filter": ("lambda", f"{scored} AND {flag} == TRUE"),
            "alert_key": ("lambda", alert_key or f"'{NO_ID_KEY}'"),
            "alert_id": '{{ .TaskName }}:{{ index .Tags "alert_key" }}' if alert_key else "{{ .TaskName }}",
            "message": point_alert_message(spec),
            "score_value": ("lambda", f"float({_field_ref(schema.score_field)})"),
            "history_fields": ("list", history),
            "alert_name": alert_id,
        },
        rate_id: {
            "scored_measurement": schema.measurement,
            "flag_value": ("lambda", f"if({flag} == TRUE, 1.0, 0.0)"),
            "alert_name": rate_id,
            "message": f'{{{{ index .Fields "value" | printf "%.4f" }}}} of the points {spec.name} scored '
            "in the last window were flagged",
        },
        errors_id: {
            "scored_measurement": schema.measurement,
            "alert_name": errors_id,
            "message": f'{{{{ index .Fields "value" }}}} {spec.name} points left the scoring UDF unscored in '
            "the last window (is the model service up?)",
        },
    }
    templates = {
        score_id: SCORE_TEMPLATE,
        alert_id: POINT_ALERT_TEMPLATE,
        rate_id: ANOMALY_RATE_TEMPLATE,
        errors_id: SCORING_ERRORS_TEMPLATE,
    }
    scripts = read_templates()
    if shard is not None and shard[0] != 0:
        templates = {score_id: SCORE_TEMPLATE}  # the alert tasks run on shard 0
    planned = []
    for task_id, template_id in templates.items():
        declared = declared_var_types(scripts[template_id])
        task_vars: dict[str, dict[str, Any]] = {}
        for name, value in values[task_id].items():
            kind, value = value if isinstance(value, tuple) else ("string", value)
            if declared.get(name) != kind:
                raise DeployError(f"template {template_id}: var {name} is not declared as a {kind}")
            task_vars[name] = typed_var(kind, value)
        for name, text in (overrides or {}).items():
            if name in declared:
                task_vars[name] = var_from_literal(name, declared[name], text)
        planned.append(PlannedTask(task_id, template_id, dbrps, task_vars))
    return planned


def default_overrides(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The TICKVAR_<var> overrides of the environment."""
    return vars_from_env(os.environ if env is None else env)


# ---- talking to Kapacitor -------------------------------------------------------------------------------


def _same_vars(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether Kapacitor's vars of a task equal the planned ones (it reports durations in its own form)."""
    if set(current) != set(wanted):
        return False
    for name, var in wanted.items():
        have = current[name]
        if not isinstance(have, dict) or have.get("type") != var["type"]:
            return False
        if var["type"] == "duration":
            from tickguard.influx import parse_duration_ns

            got = have.get("value")
            got_ns = got if isinstance(got, int) else parse_duration_ns(str(got))
            if got_ns != parse_duration_ns(str(var["value"])):
                return False
        elif var["type"] == "list":
            if [item.get("value") for item in have.get("value") or []] != [i["value"] for i in var["value"]]:
                return False
        elif have.get("value") != var["value"]:
            return False
    return True


def ensure_templates(client: KapacitorClient) -> list[str]:
    """Define every template Kapacitor lacks or has with another script; returns the ids written.

    The template files are kept in the form Kapacitor stores (its TICKscript formatter's), so an
    unchanged template compares equal and is not rewritten (a rewrite reloads every task made from it)."""
    written = []
    for template_id, script in read_templates().items():
        current = client.get_template(template_id)
        if current is None or current.script != script:
            client.define_template(template_id, script)
            written.append(template_id)
    return written


def deploy(
    client: KapacitorClient,
    spec: DetectorSpec,
    overrides: Mapping[str, str] | None = None,
    shard: tuple[int, int] | None = None,
) -> list[Task]:
    """Define and enable the detector's tasks from the templates; a task already as planned and running is
    left alone. Returns the tasks as Kapacitor has them; a task that does not start raises DeployError.
    `shard` = (index, count): shard `index`'s tasks (an alert task left from before on a shard > 0 goes)."""
    from tickguard.kapacitor_client import KapacitorError

    planned = plan(spec, overrides, shard)
    ensure_templates(client)
    if shard is not None and shard[0] != 0:
        for task_id in task_ids(spec.name)[1:]:
            client.delete_task(task_id)
    tasks = []
    for task in planned:
        try:
            current = client.get_task(task.task_id) if client.task_exists(task.task_id) else None
            if (
                current is not None
                and current.raw.get("template-id") == task.template_id
                and current.dbrps == list(task.dbrps)
                and _same_vars(current.raw.get("vars") or {}, task.vars)
                and current.enabled
                and current.executing
            ):
                tasks.append(current)
                continue
            defined = client.define_task_from_template(
                task.task_id, task.template_id, dbrps=task.dbrps, vars=task.vars
            )
        except KapacitorError as exc:
            raise DeployError(f"detector {spec.name}: task {task.task_id}: {exc}") from exc
        if not defined.executing:
            raise DeployError(f"detector {spec.name}: task {task.task_id} did not start: {defined.error}")
        tasks.append(defined)
    return tasks


# ---- InfluxDB: the databases a detector's tasks read and write ------------------------------------------


def detector_databases(spec: DetectorSpec, overrides: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The databases a detector's tasks use: its source's, its scored points' (the score task's
    `output_database`, which an override may move elsewhere) and the alert history's."""
    score = plan(spec, overrides)[0]
    output = score.vars.get("output_database", {}).get("value") or spec.source.database
    return tuple(dict.fromkeys((spec.source.database, str(output), ALERT_HISTORY[0])))


def ensure_databases(
    influx: InfluxClient, spec: DetectorSpec, overrides: Mapping[str, str] | None = None, reader: str = ""
) -> list[str]:
    """Create the detector's databases InfluxDB lacks and let Grafana's read-only user `reader` READ each
    (tickguard.influx.InfluxClient.ensure_database); returns what was done, [] when all was in place.

    This is what compose's InfluxDB init does for the detector files present when its volume is created,
    done again on every deploy, so a detector added later needs no step by hand. With authentication on,
    `influx` must carry an admin user's credentials (DeployError otherwise); `reader` = '' grants nothing
    (local mode: InfluxDB without authentication, no Grafana)."""
    from tickguard.influx import InfluxError

    done = []
    for database in detector_databases(spec, overrides):
        try:
            done += influx.ensure_database(database, reader)
        except InfluxError as exc:
            need = (
                " (creating a database and granting READ need an InfluxDB admin user: "
                "TICKGUARD_INFLUXDB_USER / TICKGUARD_INFLUXDB_PASSWORD)"
                if exc.status in (401, 403) or "admin privilege" in str(exc)
                else ""
            )
            raise DeployError(f"detector {spec.name}: InfluxDB database {database!r}: {exc}{need}") from exc
    return done


def wait_for_subscriptions(influx: InfluxClient, databases: Iterable[str], timeout_s: float) -> list[str]:
    """Wait until each database has a subscription (Kapacitor adds one to a new database at its next sync,
    every minute by default; points written before it would never reach a task); returns the databases
    still without one after `timeout_s`."""
    import time

    waiting = set(databases)
    deadline = time.monotonic() + timeout_s
    while waiting:
        waiting -= {row["database"] for row in influx.subscriptions()}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return sorted(waiting)


def undeploy(client: KapacitorClient, detector: str) -> list[str]:
    """Delete the detector's tasks, then every tickguard template no task is made from any more; returns
    the task ids deleted."""
    deleted = [task_id for task_id in task_ids(detector) if client.delete_task(task_id)]
    in_use = {task.raw.get("template-id") for task in client.list_tasks()}
    for template_id in TEMPLATE_IDS:
        if template_id not in in_use:
            client.delete_template(template_id)
    return deleted


def template_task_ids(client: KapacitorClient) -> dict[str, list[str]]:
    """Template id -> ids of the tasks made from it (Kapacitor names a task's template, not the reverse)."""
    made: dict[str, list[str]] = {}
    for task in client.list_tasks():
        if task.raw.get("template-id"):
            made.setdefault(task.raw["template-id"], []).append(task.id)
    return made


def parse_var_options(items: Iterable[str]) -> dict[str, str]:
    """`--var NAME=VALUE` options as {name: TICKscript literal}."""
    found = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise DeployError(
                f"--var {item!r}: expected NAME=VALUE (a TICKscript literal, e.g. warn_rate=0.02)"
            )
        found[name] = value
    return found
