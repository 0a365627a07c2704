"""What a live scoring task writes, read from its definition in Kapacitor, so a backfill writes the same.

A backfilled point must equal the point the live task would have written. The agent applies a task's
`@tickguard()` options (threshold, label, flag and score fields, output shape, kept fields, the field
mapping, the scoring URL) on top of its environment; reading only the environment, a backfill flagged
with the service's threshold while the task used its own, and added tp/fp/fn/tn where the task said
`.labelField('')`. So the backfill reads the task from Kapacitor's task API (GET /kapacitor/v1/tasks/ID),
parses its TICKscript — variables, `dbrp`, `|from().measurement()`, the UDF node's options and
`|influxDBOut()` — and applies what it finds to its settings.

The parser reads the TICKscript subset that scoring tasks use: `var` declarations of literals, chains of
`|node()` / `@udf()` with `.property(args)`; lambdas and expressions are skipped, not evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from tickguard.agent.schema import FieldListError, parse_field_map, parse_names
from tickguard.errors import TickguardError
from tickguard.influx import parse_duration_ns
from tickguard.ops.config import BackfillSettings

DEFAULT_UDF_NAMES = ("tickguard", "tickguard_batch")

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<tstring>'''.*?''')
  | (?P<string>'(?:\\.|[^'\\])*')
  | (?P<ident_q>"(?:\\.|[^"\\])*")
  | (?P<duration>\d+(?:\.\d+)?(?:ns|us|µs|u|µ|ms|s|m|h|d|w)\b)
  | (?P<number>\d+(?:\.\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<regex>/(?:\\.|[^/\\\n])+/)
  | (?P<op>\|\||&&|==|!=|<=|>=|=~|!~|[|@.(),=<>+\-*/!%\[\]{}:])
    """,
    re.X | re.S,
)


@dataclass(frozen=True)
class Node:
    """One `|name()` or `@name()` node of a chain, with its `.property(args)` calls in script order."""

    kind: str  # "|" or "@"
    name: str
    calls: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def last(self, prop: str) -> tuple[Any, ...] | None:
        """Arguments of the last `.prop(...)` call (None when the node has none)."""
        found = None
        for name, args in self.calls:
            if name == prop:
                found = args
        return found

    def all(self, prop: str) -> list[tuple[Any, ...]]:
        """Arguments of every `.prop(...)` call, in order (`.fields()` may be repeated)."""
        return [args for name, args in self.calls if name == prop]


@dataclass(frozen=True)
class LiveTask:
    """The parts of a scoring task a backfill needs."""

    task_id: str
    database: str
    retention_policy: str
    source_measurement: str | None
    udf: str  # the scoring UDF's name as called in the script
    options: Node  # the UDF node with its option calls
    output_database: str | None = None
    output_retention_policy: str | None = None
    output_measurement: str | None = None
    variables: dict[str, Any] = field(default_factory=dict, repr=False)


class TaskScriptError(TickguardError):
    """A task's TICKscript lacks what a backfill needs (no scoring UDF node, an unreadable option)."""


def _literal(kind: str, text: str) -> Any:
    if kind == "tstring":
        return text[3:-3]
    if kind in ("string", "ident_q"):
        # As Kapacitor reads it (tick/ast newString): only a backslash before the quote character is an
        # escape; any other backslash is part of the value.
        quote = text[0]
        return text[1:-1].replace("\\" + quote, quote)
    if kind == "duration":
        return parse_duration_ns(text)
    if kind == "number":
        return float(text) if "." in text else int(text)
    if kind == "word" and text in ("TRUE", "FALSE"):
        return text == "TRUE"
    return None


def tokens(script: str) -> list[tuple[str, str]]:
    """(kind, text) tokens of a TICKscript, comments and blanks dropped."""
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(script):
        match = _TOKEN.match(script, position)
        if match is None:
            raise TaskScriptError(f"TICKscript: cannot read {script[position : position + 20]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            found.append((kind, match.group()))
        position = match.end()
    return found


def parse_script(
    script: str, task_vars: dict[str, Any] | None = None
) -> tuple[dict[str, Any], tuple[str, str] | None, list[Node]]:
    """(variables, dbrp, nodes) of a TICKscript: literal `var`s, the first `dbrp`, every chain node in order.

    `task_vars` are the values a task defined from a template gives its `var`s (they win over the script's).
    """
    toks = tokens(script)
    preset = dict(task_vars or {})
    variables: dict[str, Any] = dict(preset)
    dbrp: tuple[str, str] | None = None
    nodes: list[Node] = []
    current: dict[str, Any] | None = None
    i = 0

    def value_at(j: int) -> Any:
        kind, text = toks[j]
        if kind == "word" and text in variables:
            return variables[text]
        return _literal(kind, text)

    def close_current() -> None:
        nonlocal current
        if current is not None:
            nodes.append(Node(current["kind"], current["name"], tuple(current["calls"])))
            current = None

    def skip_parens(j: int) -> tuple[int, tuple[Any, ...]]:
        """From the '(' at j, the index after the matching ')' and the literal arguments."""
        depth, args, start = 0, [], j + 1
        k = j
        while k < len(toks):
            text = toks[k][1]
            if toks[k][0] == "op" and text == "(":
                depth += 1
            elif toks[k][0] == "op" and text == ")":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        inside = toks[start:k]
        if inside:
            parts: list[list[int]] = [[]]
            level = 0
            for offset, (kind, text) in enumerate(inside):
                if kind == "op" and text in "([{":
                    level += 1
                elif kind == "op" and text in ")]}":
                    level -= 1
                if kind == "op" and text == "," and level == 0:
                    parts.append([])
                else:
                    parts[-1].append(start + offset)
            for part in parts:
                args.append(value_at(part[0]) if len(part) == 1 else None)
        return k + 1, tuple(args)

    while i < len(toks):
        kind, text = toks[i]
        if kind == "word" and text == "var" and i + 3 < len(toks) and toks[i + 2][1] == "=":
            close_current()
            name = toks[i + 1][1]
            if name not in preset and (i + 4 >= len(toks) or toks[i + 4][1] not in ("|", "@", ".", "(")):
                variables[name] = value_at(i + 3)
            i += 3
            continue
        if kind == "word" and text == "dbrp" and i + 3 < len(toks):
            if dbrp is None:
                dbrp = (str(_literal(*toks[i + 1])), str(_literal(*toks[i + 3])))
            i += 4
            continue
        if kind == "op" and text in ("|", "@") and i + 1 < len(toks) and toks[i + 1][0] == "word":
            close_current()
            current = {"kind": text, "name": toks[i + 1][1], "calls": []}
            i += 2
            if i < len(toks) and toks[i][1] == "(":
                i, _ = skip_parens(i)
            continue
        if (
            kind == "op"
            and text == "."
            and current is not None
            and i + 2 < len(toks)
            and toks[i + 1][0] == "word"
            and toks[i + 2][1] == "("
        ):
            prop = toks[i + 1][1]
            i, args = skip_parens(i + 2)
            current["calls"].append((prop, args))
            continue
        i += 1
    close_current()
    return variables, dbrp, nodes


def live_task(
    task_id: str,
    script: str,
    dbrps: Iterable[tuple[str, str]] = (),
    udf_names: Iterable[str] = DEFAULT_UDF_NAMES,
    task_vars: dict[str, Any] | None = None,
) -> LiveTask:
    """Read a scoring task's TICKscript (and the dbrps and template vars Kapacitor reports for it)."""
    variables, dbrp, nodes = parse_script(script, task_vars)
    names = tuple(udf_names)
    udf_index = next((i for i, node in enumerate(nodes) if node.kind == "@" and node.name in names), None)
    if udf_index is None:
        raise TaskScriptError(f"task {task_id!r} calls no scoring UDF (@{', @'.join(names)}())")
    udf = nodes[udf_index]
    before, after = nodes[:udf_index], nodes[udf_index + 1 :]
    source = next((n for n in reversed(before) if n.name == "from"), None)
    out = next((n for n in after if n.name == "influxDBOut"), None)
    database, rp = dbrp or next(iter(dbrps), ("", ""))

    def first(node: Node | None, prop: str) -> str | None:
        args = node.last(prop) if node is not None else None
        return str(args[0]) if args and args[0] is not None else None

    return LiveTask(
        task_id=task_id,
        database=database,
        retention_policy=rp,
        source_measurement=first(source, "measurement"),
        udf=udf.name,
        options=udf,
        output_database=first(out, "database"),
        output_retention_policy=first(out, "retentionPolicy"),
        output_measurement=first(out, "measurement"),
        variables=variables,
    )


def fetch_live_task(
    settings: BackfillSettings, task_id: str, udf_names: Iterable[str] = DEFAULT_UDF_NAMES
) -> LiveTask:
    """GET the task from Kapacitor's task API and read it."""
    from tickguard.kapacitor_client import KapacitorClient

    client = KapacitorClient(
        settings.kapacitor_url,
        timeout=settings.timeout_s,
        username=settings.kapacitor_username or None,
        password=settings.kapacitor_password or None,
    )
    task = client.get_task(task_id)
    # A task made from a template carries its variables' values apart from the script: {"name": {"value": v}}.
    raw_vars = task.raw.get("vars") or {}
    task_vars = {name: spec.get("value") for name, spec in raw_vars.items() if isinstance(spec, dict)}
    return live_task(task.id, task.script, task.dbrps, udf_names, task_vars)


def _option(task: LiveTask, name: str) -> Any:
    args = task.options.last(name)
    if args is None:
        return None
    if len(args) != 1 or args[0] is None:
        raise TaskScriptError(
            f"task {task.task_id!r}: .{name}() of @{task.udf}() is not a literal or a variable holding one"
        )
    return args[0]


def feature_pairs(specs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """(model feature, point field) pairs of `.fields()` values: 'V1,V2' or 'amount=Amount,...' (the agent's
    grammar, tickguard.agent.schema, so quoted names read the same here)."""
    try:
        return tuple(pair for spec in specs for pair in parse_field_map(str(spec)))
    except FieldListError as exc:
        raise TaskScriptError(f".fields(): {exc}") from None


def apply_live_task(settings: BackfillSettings, task: LiveTask) -> BackfillSettings:
    """The settings with everything the live task decides taken from it (options it does not set keep the
    environment's values, as they do in the agent)."""
    changes: dict[str, Any] = {"task_id": task.task_id}
    if task.database:
        changes["database"] = task.database
    if task.source_measurement:
        changes["source_measurement"] = task.source_measurement
    if task.output_measurement:
        changes["scored_measurement"] = task.output_measurement
    if task.output_retention_policy:
        changes["retention_policy"] = task.output_retention_policy
    if task.output_database and task.output_database != (task.database or settings.database):
        raise TaskScriptError(
            f"task {task.task_id!r} writes to database {task.output_database!r} but reads "
            f"{task.database!r}: backfill reads and writes one database"
        )
    threshold = _option(task, "threshold")
    if threshold is not None:
        changes["threshold"] = float(threshold)
    for option, key in (("scoreField", "score_field"), ("flagField", "flag_field"), ("output", "output")):
        value = _option(task, option)
        if value is not None:
            changes[key] = str(value).strip()
    label = _option(task, "labelField")
    if label is not None:
        changes["label_field"] = str(label).strip()  # '' = no label: no tp/fp/fn/tn, as in the agent
    keep = _option(task, "keep")
    if keep is not None:
        try:
            changes["keep_fields"] = parse_names(str(keep))
        except FieldListError as exc:
            raise TaskScriptError(f"task {task.task_id!r}: .keep(): {exc}") from None
    write_features = _option(task, "writeFeatures")
    if write_features is not None:
        changes["write_features"] = bool(write_features)
    model = _option(task, "model")
    if model is not None:
        changes["model"] = str(model).strip()
    url = _option(task, "url")
    if url is not None:
        changes["api_url"] = str(url).rstrip("/")
    field_specs = task.options.all("fields")
    if field_specs:
        if any(len(args) != 1 or args[0] is None for args in field_specs):
            raise TaskScriptError(f"task {task.task_id!r}: .fields() of @{task.udf}() is not a literal")
        changes["features"] = feature_pairs(args[0] for args in field_specs)
    return replace(settings, **changes)


def settings_for_task(
    settings: BackfillSettings, task_id: str, udf_names: Iterable[str] = DEFAULT_UDF_NAMES
) -> BackfillSettings:
    """`settings` as the live task `task_id` would write its points (read from Kapacitor)."""
    if not settings.kapacitor_url:
        raise TickguardError(
            f"reading task {task_id!r} needs Kapacitor's URL: set TICKGUARD_KAPACITOR_URL or --kapacitor-url"
        )
    return apply_live_task(settings, fetch_live_task(settings, task_id, udf_names))
