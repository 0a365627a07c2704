"""A small client for Kapacitor's HTTP API (/kapacitor/v1): ping, tasks from TICKscript or from task templates,
and writing points to stream tasks directly (/write)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import requests

from tickguard.errors import TickguardError

DEFAULT_RETENTION_POLICY = "autogen"


class KapacitorError(TickguardError):
    """Kapacitor refused a request or could not be reached; the message carries Kapacitor's own error text."""

    def __init__(self, message: str, *, status_code: int | None = None, kapacitor_message: str = ""):
        super().__init__(message)
        self.status_code = status_code
        self.kapacitor_message = kapacitor_message


class TaskNotFoundError(KapacitorError):
    """The task id does not exist on this Kapacitor."""


@dataclass(frozen=True)
class Template:
    """A task template as Kapacitor reports it: its script (as Kapacitor formats it) and declared vars.

    Kapacitor 1.7.6 does not list the tasks made from a template here: each task names its `template-id`.
    """

    id: str
    type: str
    script: str
    vars: dict[str, Any]
    error: str = ""

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Template:
        """Build a Template from the JSON object of GET /kapacitor/v1/templates/ID."""
        return cls(
            id=body.get("id", ""),
            type=body.get("type", ""),
            script=body.get("script", ""),
            vars=body.get("vars") or {},
            error=body.get("error", "") or "",
        )


@dataclass(frozen=True)
class Task:
    """A task as Kapacitor reports it."""

    id: str
    type: str
    status: str
    executing: bool
    error: str
    dbrps: list[tuple[str, str]]
    script: str
    stats: dict[str, Any] = field(default_factory=dict)
    dot: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def enabled(self) -> bool:
        """True when the task's status is 'enabled' (it may still have failed: see `executing`/`error`)."""
        return self.status == "enabled"

    def node_stats(self, node: str) -> dict[str, Any]:
        """Counters of one node, e.g. node_stats('stream0') or node_stats('influxdb_out2') ({} if absent)."""
        return dict(self.stats.get("node-stats", {}).get(node, {}))

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Task:
        """Build a Task from the JSON object of GET /kapacitor/v1/tasks/ID."""
        return cls(
            id=body.get("id", ""),
            type=body.get("type", ""),
            status=body.get("status", ""),
            executing=bool(body.get("executing", False)),
            error=body.get("error", "") or "",
            dbrps=[(d.get("db", ""), d.get("rp", "")) for d in body.get("dbrps") or []],
            script=body.get("script", ""),
            stats=body.get("stats") or {},
            dot=body.get("dot", ""),
            raw=body,
        )


def _dbrps_json(dbrps: Iterable[tuple[str, str] | str]) -> list[dict[str, str]]:
    result = []
    for entry in dbrps:
        db, rp = (entry, DEFAULT_RETENTION_POLICY) if isinstance(entry, str) else entry
        result.append({"db": db, "rp": rp})
    return result


class KapacitorClient:
    """Talks to one Kapacitor (base URL like http://127.0.0.1:9092); every failure raises KapacitorError."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        username: str | None = None,
        password: str | None = None,
        session: requests.Session | None = None,
    ):
        self.url = url.rstrip("/")
        self.api = self.url + "/kapacitor/v1"
        self.timeout = timeout
        self.session = session or requests.Session()
        if username is not None:
            self.session.auth = (username, password or "")

    # -- plumbing --------------------------------------------------------------------------------------
    def _request(
        self, method: str, path: str, *, expect: tuple[int, ...], **kwargs: Any
    ) -> requests.Response:
        url = self.api + path
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise KapacitorError(f"Kapacitor at {self.url} unreachable ({method} {path}): {exc}") from exc
        if response.status_code in expect:
            return response
        message = _error_text(response)
        error_type = TaskNotFoundError if response.status_code == 404 else KapacitorError
        raise error_type(
            f"Kapacitor {method} {path} failed ({response.status_code}): {message}",
            status_code=response.status_code,
            kapacitor_message=message,
        )

    # -- server ----------------------------------------------------------------------------------------
    def ping(self) -> str:
        """Check Kapacitor answers; return its version (X-Kapacitor-Version header)."""
        response = self._request("GET", "/ping", expect=(204,))
        return response.headers.get("X-Kapacitor-Version", "")

    def wait_until_up(self, timeout: float = 30.0) -> str:
        """Poll ping until Kapacitor answers (e.g. after a restart); return its version."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.ping()
            except KapacitorError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def write(
        self, lines: Iterable[str], *, database: str, retention_policy: str = DEFAULT_RETENTION_POLICY
    ) -> int:
        """POST line protocol straight to Kapacitor's /write (no InfluxDB subscription in between, so stream
        tasks see the points in exactly this order); returns how many lines were sent."""
        body = "\n".join(lines)
        if body:
            self._request(
                "POST",
                "/write",
                expect=(204,),
                params={"db": database, "rp": retention_policy, "precision": "ns"},
                data=body.encode("utf-8"),
            )
        return body.count("\n") + 1 if body else 0

    # -- tasks -----------------------------------------------------------------------------------------
    def define_task(
        self,
        task_id: str,
        tickscript: str,
        *,
        dbrps: Iterable[tuple[str, str] | str],
        task_type: str = "stream",
        enabled: bool = True,
        vars: dict[str, Any] | None = None,
    ) -> Task:
        """Create the task, or update its script/type/dbrps if it exists; returns the task as Kapacitor has it.

        `dbrps` are (database, retention policy) pairs or database names (retention policy 'autogen').
        An enabled task whose script fails to start raises KapacitorError with Kapacitor's message.
        """
        if task_type not in {"stream", "batch"}:
            raise ValueError(f"task_type must be 'stream' or 'batch', got {task_type!r}")
        body: dict[str, Any] = {
            "type": task_type,
            "dbrps": _dbrps_json(dbrps),
            "script": tickscript,
            "status": "enabled" if enabled else "disabled",
        }
        if vars is not None:
            body["vars"] = vars
        if self.task_exists(task_id):
            response = self._request("PATCH", f"/tasks/{task_id}", expect=(200,), json=body)
        else:
            response = self._request("POST", "/tasks", expect=(200,), json={"id": task_id, **body})
        return Task.from_json(response.json())

    def define_task_from_template(
        self,
        task_id: str,
        template_id: str,
        *,
        dbrps: Iterable[tuple[str, str] | str],
        vars: dict[str, Any],
        enabled: bool = True,
    ) -> Task:
        """Create the task from a template with typed `vars` ({"name": {"type": t, "value": v}}), or update
        an existing task to that template, dbrps and vars; returns the task as Kapacitor has it."""
        body: dict[str, Any] = {
            "template-id": template_id,
            "dbrps": _dbrps_json(dbrps),
            "vars": vars,
            "status": "enabled" if enabled else "disabled",
        }
        if self.task_exists(task_id):
            response = self._request("PATCH", f"/tasks/{task_id}", expect=(200,), json=body)
        else:
            response = self._request("POST", "/tasks", expect=(200,), json={"id": task_id, **body})
        return Task.from_json(response.json())

    def get_task(self, task_id: str) -> Task:
        """The task's status, executing flag, error, dbrps, script and stats; TaskNotFoundError if absent."""
        response = self._request("GET", f"/tasks/{task_id}", expect=(200,))
        return Task.from_json(response.json())

    def task_exists(self, task_id: str) -> bool:
        """True when a task with this id is defined."""
        try:
            self._request(
                "GET",
                f"/tasks/{task_id}",
                expect=(200,),
                params={"dot-view": "labels", "script-format": "raw"},
            )
        except TaskNotFoundError:
            return False
        return True

    def list_tasks(self, pattern: str | None = None) -> list[Task]:
        """All tasks (optionally only ids matching a glob `pattern`), in id order."""
        tasks: list[Task] = []
        offset, page = 0, 100
        while True:
            params: dict[str, Any] = {"offset": offset, "limit": page}
            if pattern:
                params["pattern"] = pattern
            batch = self._request("GET", "/tasks", expect=(200,), params=params).json().get("tasks") or []
            tasks.extend(Task.from_json(item) for item in batch)
            if len(batch) < page:
                return tasks
            offset += page

    def set_task_status(self, task_id: str, enabled: bool) -> Task:
        """Enable or disable a task; enabling a broken task raises KapacitorError with Kapacitor's message."""
        status = "enabled" if enabled else "disabled"
        response = self._request("PATCH", f"/tasks/{task_id}", expect=(200,), json={"status": status})
        return Task.from_json(response.json())

    def enable_task(self, task_id: str) -> Task:
        """Enable (start) a task."""
        return self.set_task_status(task_id, True)

    def disable_task(self, task_id: str) -> Task:
        """Disable (stop) a task."""
        return self.set_task_status(task_id, False)

    def reload_task(self, task_id: str) -> Task:
        """Disable then enable a task, e.g. to reconnect it to a restarted UDF agent."""
        self.disable_task(task_id)
        return self.enable_task(task_id)

    def delete_task(self, task_id: str, *, missing_ok: bool = True) -> bool:
        """Delete a task; return False if it did not exist (or raise TaskNotFoundError if not missing_ok)."""
        if not self.task_exists(task_id):
            if missing_ok:
                return False
            raise TaskNotFoundError(f"Kapacitor has no task {task_id!r}", status_code=404)
        self._request("DELETE", f"/tasks/{task_id}", expect=(204,))
        return True

    # -- templates -------------------------------------------------------------------------------------
    def get_template(self, template_id: str) -> Template | None:
        """The template, or None when Kapacitor has none with this id."""
        try:
            response = self._request("GET", f"/templates/{template_id}", expect=(200,))
        except TaskNotFoundError:
            return None
        return Template.from_json(response.json())

    def define_template(self, template_id: str, tickscript: str, *, task_type: str = "stream") -> Template:
        """Create the template, or update its script (Kapacitor then reloads every task made from it)."""
        body = {"type": task_type, "script": tickscript}
        if self.get_template(template_id) is None:
            response = self._request("POST", "/templates", expect=(200,), json={"id": template_id, **body})
        else:
            response = self._request("PATCH", f"/templates/{template_id}", expect=(200,), json=body)
        return Template.from_json(response.json())

    def delete_template(self, template_id: str) -> bool:
        """Delete a template; False if it did not exist."""
        if self.get_template(template_id) is None:
            return False
        self._request("DELETE", f"/templates/{template_id}", expect=(204,))
        return True


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    return response.text.strip()
