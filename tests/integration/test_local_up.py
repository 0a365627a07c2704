"""`tickguard up --local` as a user runs it: a real short run with --count, then SIGTERM.

What the command must say: when the generator has written its points, how many and what to look at next;
when stopped, that every process it started (API, UDF agent, watchdog, influxd, kapacitord, generator)
is gone — checked here against the operating system, not only against the command's words.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests._deps import require

pytestmark = [pytest.mark.tick, pytest.mark.slow]

COUNT = 50
START_TIMEOUT_S = 180


class Output:
    """The lines a child process prints, collected by a thread so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, needle: str, timeout: float) -> str:
        """Every line so far, once a line containing `needle` arrived; fail with the output otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if needle in line:
                return "\n".join(self.lines)
        pytest.fail(f"no line with {needle!r} within {timeout:.0f} s; output:\n" + "\n".join(self.lines))

    def rest(self, timeout: float) -> str:
        """Every line up to the end of the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return "\n".join(self.lines)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_local_up_reports_the_finished_generator_and_confirms_every_process_stopped(
    tick_binaries, tmp_path: Path
) -> None:
    from tickguard.data.dataset import default_csv_path
    from tickguard.stack.tasks import repo_root

    require(default_csv_path().is_file(), f"{default_csv_path()} missing: run `make data`")
    # The committed production model, as a user's first run serves it.
    fraud_model = repo_root() / "models" / "fraud" / "production"
    require(fraud_model.exists(), "models/fraud/production missing: make train")
    workdir = tmp_path / "stack"
    command = [sys.executable, "-m", "tickguard.cli", "up", "--local", "--count", str(COUNT), "--rate", "200"]
    command += ["--workdir", str(workdir)]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL
    )
    output = Output(proc)
    try:
        output.wait_for("generator finished", START_TIMEOUT_S)
        report = output.wait_for("stops everything", 60)
    except BaseException:
        proc.kill()
        raise
    assert f"generator finished: {COUNT} points written" in report
    scored = re.search(r"^(\d+) of (\d+) points are in fraud\.transactions_scored", report, re.M)
    assert scored and scored.groups() == (str(COUNT), str(COUNT)), report
    assert "SELECT count(score) FROM transactions_scored" in report
    assert f"tail -f {workdir.resolve() / 'alerts.log'}" in report
    assert f"kill -TERM {proc.pid}" in report
    # The next command it suggests writes the count it names even past a short holdout (a user's CSV).
    assert re.search(
        r"^  more points +tickguard generate --url http://127\.0\.0\.1:\d+ --count 1000 --loop$", report, re.M
    )

    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    farewell = output.rest(10)
    assert code == 0, farewell
    stopped = dict(re.findall(r"^  (.+) \(pid (\d+)\): stopped$", farewell, re.M))
    names = " ".join(stopped)
    for part in ("API", "UDF agent", "watchdog", "influxd", "kapacitord"):
        assert part in names, f"{part} not confirmed stopped:\n{farewell}"
    assert "STILL RUNNING" not in farewell
    assert farewell.rstrip().endswith("tickguard up --local: everything stopped.")
    assert all(gone(int(pid)) for pid in stopped.values()), "a process reported stopped still exists"
