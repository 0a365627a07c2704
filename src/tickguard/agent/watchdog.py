"""Re-enable Kapacitor tasks that stopped because their tickguard UDF connection died.

Kapacitor never reconnects a socket UDF: when the agent restarts, every task using it stays stopped
with an error. The watchdog polls the task list, and for each enabled task whose script calls one of
our UDFs and which is no longer executing, it disables and re-enables it (which makes Kapacitor
reconnect), with exponential backoff per task while that fails. Each heal is logged and reported to
the `on_healed` callbacks, so a backfill can re-score the gap between `down_since` and `healed_at`.

When Kapacitor itself was unreachable (killed and restarted, e.g. a Kapacitor shard's pod), its tasks come
back executing from its own storage, but the points InfluxDB pushed to it meanwhile are lost. So when the
API answers again after failing, every executing task that uses our UDF is reported as healed too, down
since the first failed poll, and the backfill re-scores that outage.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from tickguard.kapacitor_client import KapacitorClient, KapacitorError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


@dataclass(frozen=True)
class HealEvent:
    """A task the watchdog brought back: it was seen down at `down_since` and re-enabled at `healed_at`."""

    task_id: str
    down_since: datetime
    healed_at: datetime
    error: str  # the task's error when it was found stopped
    attempts: int


@dataclass
class _Down:
    since: datetime
    error: str
    attempts: int = 0
    next_try: float = 0.0
    disabled_by_us: bool = False


def uses_udf(script: str, udf_names: Iterable[str]) -> bool:
    """Does a TICKscript call one of the named UDFs (`@name(`)?"""
    return any(re.search(rf"@{re.escape(name)}\s*\(", script) for name in udf_names)


class Watchdog:
    """Poll Kapacitor and heal stopped tasks that use our UDF."""

    def __init__(
        self,
        kapacitor_url: str,
        udf_names: Iterable[str],
        interval_s: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        on_healed: Iterable[Callable[[HealEvent], None]] = (),
        live_tasks: Callable[[], set[str]] | None = None,
        orphan_grace_s: float = 5.0,
    ) -> None:
        self.client = KapacitorClient(kapacitor_url, timeout=5.0, username=username, password=password)
        self.udf_names = tuple(udf_names)
        self.interval_s = interval_s
        self.on_healed: list[Callable[[HealEvent], None]] = list(on_healed)
        self.healed: list[HealEvent] = []
        self._down: dict[str, _Down] = {}
        # Inside the agent, `live_tasks` names the tasks connected to this agent process. A task that
        # Kapacitor reports as executing but that has no connection here was connected to a previous,
        # dead agent: Kapacitor only notices at its next point (and loses it), so heal it before that.
        self.live_tasks = live_tasks
        self.orphan_grace_s = orphan_grace_s
        self._orphan_since: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._api_error_logged = False
        self.api_error = ""  # why the last poll could not list the tasks ("" = it could)
        # The first failed poll of the current API outage; outages count only once the API has answered
        # (an agent starts before Kapacitor: not answering yet is no outage).
        self._unreachable_since: datetime | None = None
        self._api_answered = False

    def add_callback(self, callback: Callable[[HealEvent], None]) -> None:
        """Call `callback(event)` after every successful heal."""
        self.on_healed.append(callback)

    def check_once(self) -> list[HealEvent]:
        """One poll: find stopped tasks and try to heal those whose backoff has expired."""
        try:
            tasks = self.client.list_tasks()
        except (KapacitorError, ValueError) as exc:
            self.api_error = str(exc)
            if self._unreachable_since is None and self._api_answered:
                self._unreachable_since = datetime.now(UTC)
            if not self._api_error_logged:
                log.warning("watchdog: cannot list Kapacitor tasks: %s", exc)
                self._api_error_logged = True
            return []
        self._api_error_logged = False
        self.api_error = ""
        outage_since, self._unreachable_since = self._unreachable_since, None
        self._api_answered = True
        now = time.monotonic()
        healed: list[HealEvent] = []
        seen: set[str] = set()
        for task in tasks:
            task_id = task.id
            if not uses_udf(task.script, self.udf_names):
                continue
            down = self._down.get(task_id)
            stopped = task.status == "enabled" and not task.executing
            if outage_since is not None and not stopped and down is None and task.status == "enabled":
                healed.append(self._back_after_outage(task_id, outage_since))
                continue
            if outage_since is not None and stopped and down is None:
                down = self._down[task_id] = _Down(since=outage_since, error=task.error)
            if not stopped and down is None and self._orphaned(task, now):
                stopped = True
                down = self._down[task_id] = _Down(
                    since=datetime.now(UTC),
                    error="executing without a connection to this agent (agent restarted)",
                )
                log.warning("watchdog: task %s is not connected to this agent; reconnecting it", task_id)
            disabled_by_us = down is not None and down.disabled_by_us and task.status == "disabled"
            if not (stopped or disabled_by_us):
                self._down.pop(task_id, None)
                continue
            seen.add(task_id)
            if down is None:
                down = self._down[task_id] = _Down(since=datetime.now(UTC), error=task.error)
                log.warning(
                    "watchdog: task %s stopped (error: %s); re-enabling it", task_id, down.error or "none"
                )
            if now < down.next_try:
                continue
            event = self._heal(task_id, down)
            if event is not None:
                healed.append(event)
        for task_id in list(self._down):
            if task_id not in seen:
                del self._down[task_id]
        return healed

    def _orphaned(self, task, now: float) -> bool:
        """True once an executing task has had no connection to this agent for the grace period."""
        if self.live_tasks is None or task.status != "enabled" or not task.executing:
            self._orphan_since.pop(task.id, None)
            return False
        if task.id in self.live_tasks():
            self._orphan_since.pop(task.id, None)
            return False
        since = self._orphan_since.setdefault(task.id, now)
        if now - since < self.orphan_grace_s:
            return False
        del self._orphan_since[task.id]
        return True

    def _heal(self, task_id: str, down: _Down) -> HealEvent | None:
        down.attempts += 1
        try:
            if not down.disabled_by_us:
                self.client.disable_task(task_id)
                down.disabled_by_us = True
            task = self.client.enable_task(task_id)
            down.disabled_by_us = False
            if not task.executing:
                raise KapacitorError(
                    f"task {task_id} enabled but not executing: {task.error or 'no error given'}"
                )
        except KapacitorError as exc:
            backoff = min(MAX_BACKOFF_S, self.interval_s * (2 ** (down.attempts - 1)))
            down.next_try = time.monotonic() + backoff
            log.warning(
                "watchdog: task %s not healed yet (attempt %d, retry in %.0fs): %s",
                task_id,
                down.attempts,
                backoff,
                exc,
            )
            return None
        del self._down[task_id]
        event = HealEvent(task_id, down.since, datetime.now(UTC), down.error, down.attempts)
        log.warning(
            "watchdog: task %s healed (down since %s, healed at %s, %d attempt(s))",
            task_id,
            event.down_since.isoformat(),
            event.healed_at.isoformat(),
            event.attempts,
        )
        return self._report(event)

    def _back_after_outage(self, task_id: str, since: datetime) -> HealEvent:
        """A task Kapacitor runs again after its API was unreachable: report the outage as healed."""
        event = HealEvent(task_id, since, datetime.now(UTC), "Kapacitor was unreachable (restarted?)", 0)
        log.warning(
            "watchdog: Kapacitor answers again; task %s executing (unreachable since %s)",
            task_id,
            since.isoformat(),
        )
        return self._report(event)

    def _report(self, event: HealEvent) -> HealEvent:
        """Record a heal and call the on_healed callbacks (a failing one is logged, never raised)."""
        task_id = event.task_id
        self.healed.append(event)
        for callback in self.on_healed:
            try:
                callback(event)
            except Exception:  # a failing hook must not stop the watchdog
                log.exception("watchdog: on_healed callback failed for task %s", task_id)
        return event

    def run(self) -> None:
        """Poll until stop() is called."""
        log.info(
            "watchdog: watching Kapacitor at %s for tasks using @%s",
            self.client.api,
            ", @".join(self.udf_names),
        )
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        """Run the polling loop on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="udf-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
