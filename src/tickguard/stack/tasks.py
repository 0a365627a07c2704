"""tickguard's Kapacitor tasks: the TICKscripts in compose/kapacitor/tasks/ and how they are loaded.

Compose and local mode load the same files through Kapacitor's load directory (`[load] dir`, scripts in
`<dir>/tasks/*.tick`, each naming its database with a `dbrp` statement; the task id is the file name).
Before loading, a `var <name> = <value>` line may be overridden by TICKVAR_<name>=<value> from the
environment; compose/kapacitor/entrypoint.sh does the same substitution in the container.

The fraud detector's score task is compose/kapacitor/tasks/score.tick (task id `score`, with the alert
tasks that read its output). Every other detector's score task (`score_<name>`) is rendered from its
detector file by `render_score_task`: source database, retention policy, measurement and tag filter,
`.model()`, the label field, the kept fields and the output measurement, with the field names and
types of tickguard.agent.schema. One Kapacitor then runs several detectors through one agent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tickguard.errors import TickguardError

if TYPE_CHECKING:
    from tickguard.detectors.spec import DetectorSpec

TASK_IDS = ("score", "fraud_alert", "anomaly_rate", "scoring_errors", "kapacitor_stats")
FRAUD_DETECTOR = "fraud"
# The fraud detector's tasks (score.tick and the alerts on its output); kapacitor_stats serves them all.
FRAUD_TASK_IDS = ("score", "fraud_alert", "anomaly_rate", "scoring_errors")
SHARED_TASK_IDS = ("kapacitor_stats",)
UDF_NAME = "tickguard"
TICKVAR_PREFIX = "TICKVAR_"


def repo_root() -> Path:
    """The checkout this package runs from ($TICKGUARD_ROOT wins)."""
    if env := os.environ.get("TICKGUARD_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parents[3]


def alert_line_script() -> Path:
    """compose/kapacitor/alert-line.sh: the tasks' `.exec()` handler writing one log line per alert."""
    return repo_root() / "compose" / "kapacitor" / "alert-line.sh"


def alert_output_vars(alert_log: Path, alert_json: Path) -> dict[str, str]:
    """TICKscript overrides sending every alert as one line to `alert_log` and as a JSON record to `alert_json`.

    Compose keeps the scripts' defaults (under /var/lib/kapacitor, handler script mounted in /etc/tickguard);
    local mode and the tests point them at their own files with this.
    """
    paths = {
        "alert_log": alert_log,
        "alert_json": alert_json,
        "alert_line": alert_line_script(),
    }
    for name, path in paths.items():
        if "'" in str(path) or "\\" in str(path):
            raise TickguardError(
                f"{name}: {path} cannot be written as a TICKscript string (quote or backslash)"
            )
    return {name: f"'{path}'" for name, path in paths.items()}


def tasks_dir() -> Path:
    """Where the TICKscripts live: $TICKGUARD_TASKS_DIR or <repo>/compose/kapacitor/tasks."""
    path = Path(os.environ.get("TICKGUARD_TASKS_DIR") or repo_root() / "compose" / "kapacitor" / "tasks")
    if not path.is_dir():
        raise TickguardError(f"TICKscript directory {path} not found (set TICKGUARD_TASKS_DIR)")
    return path


def read_scripts(directory: Path | None = None) -> dict[str, str]:
    """Task id -> TICKscript text, for every *.tick file (sorted by name)."""
    directory = directory or tasks_dir()
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(directory.glob("*.tick"))}


def vars_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """TICKVAR_<name>=<value> variables from the environment, as {name: value}."""
    env = os.environ if env is None else env
    return {key[len(TICKVAR_PREFIX) :]: value for key, value in env.items() if key.startswith(TICKVAR_PREFIX)}


def render_script(script: str, overrides: Mapping[str, str]) -> str:
    """The script with each overridden `var <name> = ...` line replaced by `var <name> = <value>`."""
    for name, value in overrides.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise TickguardError(f"TICKVAR_{name}: not a TICKscript variable name")
        script = re.sub(
            rf"^var {name} = .*$", lambda _m, n=name, v=value: f"var {n} = {v}", script, flags=re.M
        )
    return script


def declared_vars(script: str) -> dict[str, str]:
    """The `var <name> = <literal>` defaults a script declares at the top level."""
    return dict(re.findall(r"^var (\w+) = (.+)$", script, flags=re.M))


def score_task_id(detector: str) -> str:
    """The id of a detector's score task: `score` for fraud (today's id), `score_<name>` for the others."""
    return "score" if detector == FRAUD_DETECTOR else f"score_{detector}"


def tick_string(value: str, quote: str = "'") -> str:
    """`value` as a TICKscript string literal (quote="'") or quoted reference (quote='"').

    Kapacitor unescapes only a backslash before the quote character (tick/ast newString), so every
    other backslash stays as it is; a value whose backslash would precede the closing or an escaped
    quote cannot be written and is refused.
    """
    if value.endswith("\\") or "\\" + quote in value:
        raise TickguardError(f"{value!r} cannot be written in a TICKscript (a backslash before {quote})")
    return quote + value.replace(quote, "\\" + quote) + quote


def render_score_task(spec: DetectorSpec, renames: Mapping[str, str] | None = None) -> str:
    """The score task of a detector, from its spec (`renames`: model feature -> point field, when the
    measurement's field names differ from the model's features)."""
    from tickguard.agent.schema import FLAG_FIELD, SCORE_FIELD, format_field_map, format_names, schema_for

    schema = schema_for(spec)
    source = spec.source
    options = [f".model({tick_string(spec.model.name)})"]
    if renames:
        options.append(f".fields({tick_string(format_field_map(sorted(renames.items())))})")
    options.append(f".labelField({tick_string(schema.label_field)})")
    if schema.flag_field != FLAG_FIELD:
        options.append(f".flagField({tick_string(schema.flag_field)})")
    if schema.score_field != SCORE_FIELD:
        options.append(f".scoreField({tick_string(schema.score_field)})")
    options.append(f".keep({tick_string(format_names(schema.keep_fields))})")
    where = ""
    if source.tags:
        condition = " AND ".join(
            f"{tick_string(key, chr(34))} == {tick_string(value)}"
            for key, value in sorted(source.tags.items())
        )
        where = f"\n        .where(lambda: {condition})"
    option_lines = "".join(f"\n        {option}" for option in options)
    task_id = score_task_id(spec.name)
    return f"""// {task_id}: rendered by tickguard.stack.tasks from {spec.path.name} (detector {spec.name}).
// Every point of {source.database}.{source.retention_policy}.{source.measurement} goes through the tickguard
// socket UDF, which scores it with the served model {spec.model.name!r} and writes it to
// {schema.measurement} with the same timestamp (see tickguard.agent.schema for the fields it adds).
dbrp {tick_string(source.database, chr(34))}.{tick_string(source.retention_policy, chr(34))}

var source_measurement = {tick_string(source.measurement)}
var scored_measurement = {tick_string(schema.measurement)}
var scored_retention_policy = {tick_string(source.retention_policy)}
var flush_interval = 100ms
var write_buffer = 1000

stream
    |from()
        .measurement(source_measurement){where}
    @{UDF_NAME}(){option_lines}
    |influxDBOut()
        .database({tick_string(source.database)})
        .retentionPolicy(scored_retention_policy)
        .measurement(scored_measurement)
        .precision('ns')
        .buffer(write_buffer)
        .flushInterval(flush_interval)
"""


def detector_scripts(detectors: Sequence[str] = (FRAUD_DETECTOR,)) -> dict[str, str]:
    """Task id -> TICKscript of everything the detectors need: fraud's files (score.tick and its alerts)
    when fraud is among them, a rendered score task for each other detector, and the shared tasks."""
    from tickguard.detectors import load_detector

    files = read_scripts()
    scripts: dict[str, str] = {}
    for name in dict.fromkeys(detectors):
        spec = load_detector(name)
        if spec.name == FRAUD_DETECTOR:
            scripts.update({task_id: files[task_id] for task_id in FRAUD_TASK_IDS})
        else:
            scripts[score_task_id(spec.name)] = render_score_task(spec)
    scripts.update({task_id: files[task_id] for task_id in SHARED_TASK_IDS})
    return scripts


def write_load_dir(
    load_dir: Path, overrides: Mapping[str, str] | None = None, detectors: Sequence[str] = (FRAUD_DETECTOR,)
) -> list[Path]:
    """Fill `<load_dir>/tasks/` with the rendered scripts of `detectors` (old *.tick files removed);
    returns the paths."""
    target = load_dir / "tasks"
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.tick"):
        stale.unlink()
    written = []
    for task_id, script in detector_scripts(detectors).items():
        path = target / f"{task_id}.tick"
        path.write_text(render_script(script, overrides or {}), encoding="utf-8")
        written.append(path)
    return written
