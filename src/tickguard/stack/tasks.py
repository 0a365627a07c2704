"""tickguard's Kapacitor tasks: the shared TICKscripts in compose/kapacitor/tasks/, how they are loaded,
and the naming and quoting rules the detectors' tasks share.

The tasks every stack runs whatever its detectors (kapacitor_stats: Kapacitor's statistics into
InfluxDB) are files loaded through Kapacitor's load directory (`[load] dir`, scripts in
`<dir>/tasks/*.tick`, each naming its database with a `dbrp` statement; the task id is the file name),
in compose and in local mode alike. Before loading, a `var <name> = <value>` line may be overridden by
TICKVAR_<name>=<value> from the environment; compose/kapacitor/entrypoint.sh does the same substitution
in the container.

Each detector's own tasks (score, alerts) are not files: `tickguard deploy` defines them from task
templates through Kapacitor's HTTP API (tickguard.stack.deploy), with the same TICKVAR_ overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from tickguard.errors import TickguardError

FRAUD_DETECTOR = "fraud"
# The tasks of the load directory, shared by every detector.
SHARED_TASK_IDS = ("kapacitor_stats",)
UDF_NAME = "tickguard"
TICKVAR_PREFIX = "TICKVAR_"


def repo_root() -> Path:
    """The checkout this package runs from ($TICKGUARD_ROOT wins)."""
    if env := os.environ.get("TICKGUARD_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parents[3]


def kapacitor_file(*parts: str) -> Path:
    """A file under compose/kapacitor/: in $TICKGUARD_ROOT's checkout if it has one, else in the checkout
    this package runs from (a workspace set as TICKGUARD_ROOT holds detectors and models, not compose/)."""
    for root in dict.fromkeys((repo_root(), Path(__file__).resolve().parents[3])):
        path = root.joinpath("compose", "kapacitor", *parts)
        if path.exists():
            return path
    return repo_root().joinpath("compose", "kapacitor", *parts)


def alert_line_script() -> Path:
    """compose/kapacitor/alert-line.sh: the tasks' `.exec()` handler writing one log line per alert."""
    return kapacitor_file("alert-line.sh")


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
    path = Path(os.environ.get("TICKGUARD_TASKS_DIR") or kapacitor_file("tasks"))
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


def write_load_dir(load_dir: Path, overrides: Mapping[str, str] | None = None) -> list[Path]:
    """Fill `<load_dir>/tasks/` with the shared scripts (old *.tick files removed); returns the paths."""
    target = load_dir / "tasks"
    target.mkdir(parents=True, exist_ok=True)
    for stale in target.glob("*.tick"):
        stale.unlink()
    written = []
    for task_id, script in read_scripts().items():
        path = target / f"{task_id}.tick"
        path.write_text(render_script(script, overrides or {}), encoding="utf-8")
        written.append(path)
    return written
