"""A minimal TOML writer for the servers' generated config files (tomllib only reads)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string (same escapes).
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(item, where) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML value at {where}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum() and name.isascii()
    return name if bare else json.dumps(name)


def _write_table(lines: list[str], path: list[str], table: Mapping[str, Any], header: str | None) -> None:
    if header is not None:
        lines.append("")
        lines.append(header)
    for name, value in table.items():
        if isinstance(value, Mapping) or _is_table_array(value):
            continue
        lines.append(f"{_key(name)} = {_scalar(value, '.'.join([*path, name]))}")
    for name, value in table.items():
        sub_path = [*path, name]
        dotted = ".".join(_key(part) for part in sub_path)
        if isinstance(value, Mapping):
            _write_table(lines, sub_path, value, f"[{dotted}]")
        elif _is_table_array(value):
            for item in value:
                _write_table(lines, sub_path, item, f"[[{dotted}]]")


def dumps(document: Mapping[str, Any]) -> str:
    """Render nested dicts as TOML: dicts become tables, lists of dicts arrays of tables."""
    lines: list[str] = []
    _write_table(lines, [], document, None)
    return "\n".join(lines).lstrip("\n") + "\n"


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return `base` with `overrides` applied: nested dicts merge key by key, anything else replaces."""
    merged: dict[str, Any] = dict(base)
    for name, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = deep_merge(merged[name], value)
        else:
            merged[name] = value
    return merged
