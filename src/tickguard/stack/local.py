"""The whole pipeline without Docker: `tickguard up --local` (or `python -m tickguard.stack.local`).

Starts, in order, the REST model service (`tickguard serve`), the native influxd from `make tick`
(tickguard.runtime), the socket UDF agent (`tickguard udf`, told influxd's URL: a windowed detector's
series are rebuilt from InfluxDB after an agent restart), then kapacitord with Kapacitor loading the
same shared TICKscripts as compose (load directory), deploys each detector's tasks from the task
templates (`tickguard deploy`, tickguard.stack.deploy), and finally starts the holdout generator. Ctrl-C
stops them all in reverse order. Grafana and Chronograf are not part of local mode (they only run as their
official images under Docker); point them at the printed URLs if you have them.

Several detectors run at once (`--detector fraud --detector shuttle`): one service serves their
production models, one agent scores for all, and one Kapacitor runs each detector's four tasks (score,
per-point alert, anomaly rate, scoring errors); the generator replays each detector's holdout into its
own source measurement.

`LocalStack` is also what the end-to-end test and notebook 06 use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from tickguard.errors import TickguardError
from tickguard.stack import tasks as stack_tasks
from tickguard.stack.config import DATABASE, SCORED_MEASUREMENT, InfluxSettings, influx_settings

FRAUD = stack_tasks.FRAUD_DETECTOR

log = logging.getLogger(__name__)

UDF_NAME = "tickguard"
STATUS_EVERY_S = 10.0
WATCH_EVERY_S = 0.5
ARRIVAL_WAIT_S = 15.0  # how long the end-of-replay report waits for the last points to be scored


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _socket_accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ChildProcess:
    """A tickguard subcommand in its own process, logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch `python -m tickguard.cli <argv>` with output to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tickguard.cli", *self.argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
            )

    def running(self) -> bool:
        """True while the process has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def fail(self, what: str) -> TickguardError:
        """An error carrying the tail of this process's log."""
        return TickguardError(
            f"{self.name} {what}; last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds."""
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


SERVER_GOGC = "200"
SUPERVISE_EVERY_S = 1.0


class LocalStack:
    """API, UDF agent, influxd and kapacitord (with tickguard's tasks) on loopback ports."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        models_dir: Path | str | None = None,
        model: str = "production",
        task_vars: dict[str, str] | None = None,
        api_workers: int = 1,
        start_timeout: float = 90.0,
        watchdog: bool = True,
        env: dict[str, str] | None = None,
        influx_config: dict | None = None,
        kapacitor_config: dict | None = None,
        influx_env: dict[str, str] | None = None,
        kapacitor_env: dict[str, str] | None = None,
        detectors: tuple[str, ...] | list[str] = (FRAUD,),
    ):
        from tickguard.detectors import load_detector

        # Detector specs by name (validated now: a typo fails before anything starts).
        self.detectors = {spec.name: spec for spec in map(load_detector, dict.fromkeys(detectors))}
        if not self.detectors:
            raise TickguardError("the local stack needs at least one detector")
        self.workdir = Path(workdir).resolve()
        # Where `tickguard train` and `serve` put and find models: $TICKGUARD_MODELS_DIR or <repo>/models.
        self.models_dir = Path(
            models_dir or os.environ.get("TICKGUARD_MODELS_DIR") or stack_tasks.repo_root() / "models"
        )
        self.model = model
        self.task_vars = dict(task_vars or {})
        self.api_workers = api_workers
        self.start_timeout = start_timeout
        self.with_watchdog = watchdog
        self.env = dict(env or {})  # extra environment of the API, agent and watchdog processes
        # Deep-merged into the generated server configs / added to the daemons' environment (e.g. GOGC).
        self.influx_config = dict(influx_config or {})
        self.kapacitor_config = dict(kapacitor_config or {})
        # GOGC=200: the servers collect garbage half as often (more points/s for ~1.5x memory), as in compose.
        self.influx_env = {"GOGC": SERVER_GOGC, **(influx_env or {})}
        self.kapacitor_env = {"GOGC": SERVER_GOGC, **(kapacitor_env or {})}
        self.api_port = _free_port()
        # Unix socket paths are limited to ~107 bytes, so the socket lives in a short /tmp directory.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="tg-udf-", dir="/tmp"))
        self.socket_path = self._socket_dir / "udf.sock"
        self.alert_log = self.workdir / "alerts.log"  # one human-readable line per alert
        self.alert_json = self.workdir / "alerts.json"  # the same alerts as Kapacitor's JSON records
        self.load_dir = self.workdir / "kapacitor-load"
        self.api: ChildProcess | None = None
        self.udf: ChildProcess | None = None
        self.watchdog: ChildProcess | None = None
        self._supervising = threading.Event()  # set = stop supervising the servers
        self._supervisor: threading.Thread | None = None
        self.runtime = None  # tickguard.runtime.TickRuntime once started

    # -- addresses ------------------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        """Base URL of the REST model service."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def influx_url(self) -> str:
        """Base URL of influxd."""
        return self._runtime().influx_url

    @property
    def kapacitor_url(self) -> str:
        """Base URL of kapacitord (API under /kapacitor/v1)."""
        return self._runtime().kapacitor_url

    def influx_settings(self) -> InfluxSettings:
        """Where the generator writes (local mode runs InfluxDB without authentication, on loopback only)."""
        from dataclasses import replace

        return replace(influx_settings(), url=self.influx_url, username="", password="")

    def _runtime(self):
        if self.runtime is None:
            raise TickguardError("the local stack is not started")
        return self.runtime

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> LocalStack:
        """Start every part, in dependency order; on failure stop what was started and raise."""
        from tickguard.runtime import TickRuntime, find_tick_binaries

        binaries = find_tick_binaries()
        if not binaries.servers_found:
            raise TickguardError(binaries.describe_missing())
        from tickguard.modelstore import PRODUCTION, detector_models_dir

        for name in self.detectors:
            model_path = detector_models_dir(self.models_dir, name) / self.model
            if not (model_path.exists() or model_path.is_symlink()):
                train = (
                    "make train` (or `make train-fast`)"
                    if name == FRAUD
                    else f"tickguard train --detector {name}`"
                )
                raise TickguardError(
                    f"no model {model_path} (models/<detector>/{PRODUCTION}) for detector {name}: run `{train} first"
                )
        self.workdir.mkdir(parents=True, exist_ok=True)
        logs = self.workdir / "logs"
        try:
            self._start_api(logs)
            overrides = {
                **stack_tasks.alert_output_vars(self.alert_log, self.alert_json),
                **stack_tasks.vars_from_env(),
                **self.task_vars,
            }
            stack_tasks.write_load_dir(self.load_dir, overrides)
            self.alert_log.touch()  # `tail -f` works before the first alert
            tick_dir = self.workdir / "tick"
            shutil.rmtree(tick_dir, ignore_errors=True)  # fresh servers: no stale tasks or subscriptions
            self.runtime = TickRuntime(
                tick_dir,
                udfs={UDF_NAME: (self.socket_path, "10s")},
                binaries=binaries,
                kapacitor_config={
                    **self.kapacitor_config,
                    "load": {"enabled": True, "dir": str(self.load_dir)},
                },
                influx_config=self.influx_config,
                influx_env=self.influx_env,
                kapacitor_env=self.kapacitor_env,
                start_timeout=self.start_timeout,
            )
            # influxd before the agent, so the agent is told the URL it has (a windowed detector's series
            # are rebuilt from InfluxDB after an agent restart); kapacitord after it (it dials the agent).
            self.runtime.influx.start()
            self._start_udf(logs)
            self.runtime.start()
            for database in dict.fromkeys(
                [DATABASE, *(spec.source.database for spec in self.detectors.values())]
            ):
                self.runtime.create_database(database)
            self.deploy(overrides)
            self._wait_for_tasks()
            self._start_supervisor()
            if self.with_watchdog:
                self._start_watchdog(logs)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_api(self, logs: Path) -> None:
        self.api = ChildProcess(
            "API (tickguard serve)",
            [
                "serve",
                "--port",
                str(self.api_port),
                "--workers",
                str(self.api_workers),
                "--models-dir",
                str(self.models_dir),
                "--model",
                self.model,
                *(arg for name in self.detectors for arg in ("--detector", name)),
            ],
            logs / "api.log",
            env=self.env,
        )
        self.api.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.api.running():
                raise self.api.fail("exited during start")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.api_url}/v2/health/ready", timeout=2).ok:
                    log.info("API ready on %s", self.api_url)
                    return
            time.sleep(0.3)
        raise self.api.fail(f"not ready after {self.start_timeout:.0f} s")

    def _start_udf(self, logs: Path) -> None:
        # The agent reads a windowed series' history from InfluxDB at the series' first point after a
        # (re)start; local mode's InfluxDB has no authentication.
        influx = {
            "TICKGUARD_INFLUXDB_URL": self.influx_url,
            "TICKGUARD_INFLUXDB_USER": "",
            "TICKGUARD_INFLUXDB_PASSWORD": "",
        }
        self.udf = ChildProcess(
            "UDF agent (tickguard udf)",
            ["udf", "--socket", str(self.socket_path), "--url", self.api_url, "--metrics-port", "0"],
            logs / "udf.log",
            env={**self.env, **influx},
        )
        self.udf.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.udf.running():
                raise self.udf.fail("exited during start")
            if self.socket_path.exists() and _socket_accepts(self.socket_path):
                log.info("UDF agent listening on %s", self.socket_path)
                return
            time.sleep(0.2)
        raise self.udf.fail(f"did not listen on {self.socket_path} within {self.start_timeout:.0f} s")

    def _start_watchdog(self, logs: Path) -> None:
        # The agent starts before kapacitord (Kapacitor dials it at start), so it cannot know Kapacitor's
        # port: a separate watchdog heals tasks after an agent restart and backfills what they missed.
        self.watchdog = ChildProcess(
            "watchdog (tickguard watchdog)",
            ["watchdog", "--kapacitor-url", self.kapacitor_url],
            logs / "watchdog.log",
            env={
                **self.env,
                "TICKGUARD_INFLUXDB_URL": self.influx_url,
                "TICKGUARD_SCORING_URL": self.api_url,
            },
        )
        self.watchdog.start()

    def _start_supervisor(self) -> None:
        """Start influxd or kapacitord again when it exits on its own, as compose's restart policy does.

        Kapacitor 1.5.9 can panic ("send on closed channel" in UDFNode) when a UDF task is restarted
        while the agent is answering, e.g. when its load service re-applies the task files just after
        a restart. Deliberate stop() and kill() calls are left alone.
        """
        self._supervising.clear()
        runtime = self._runtime()

        def supervise() -> None:
            while not self._supervising.wait(SUPERVISE_EVERY_S):
                for server in (runtime.influx, runtime.kapacitor):
                    try:
                        server.recover()
                    except Exception as exc:  # keep supervising: the next round tries again
                        log.error("could not start %s again: %s", server.name, exc)

        self._supervisor = threading.Thread(target=supervise, name="tick-supervisor", daemon=True)
        self._supervisor.start()

    def deploy(self, overrides: dict[str, str] | None = None) -> None:
        """`tickguard deploy` for every detector of the stack: its databases (no reader to grant: local
        mode has no Grafana and no authentication), then its tasks from the templates, over HTTP."""
        from tickguard.stack.deploy import deploy, ensure_databases

        client = self._runtime().kapacitor_client()
        with self._runtime().influx.client() as influx:
            for spec in self.detectors.values():
                ensure_databases(influx, spec, overrides)
                deploy(client, spec, overrides)

    def _wait_for_tasks(self, timeout: float = 30.0) -> None:
        """Wait until Kapacitor has loaded and enabled every task from the load directory."""
        client = self._runtime().kapacitor_client()
        deadline = time.monotonic() + timeout
        while True:
            loaded = {task.id: task for task in client.list_tasks()}
            missing = [t for t in self.task_ids() if t not in loaded or not loaded[t].enabled]
            if not missing:
                return
            if time.monotonic() > deadline:
                errors = {
                    t: loaded[t].error for t in missing if t in loaded and getattr(loaded[t], "error", "")
                }
                raise TickguardError(f"Kapacitor did not load/enable tasks {missing} {errors or ''}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop everything that runs, in reverse order."""
        self._supervising.set()
        if self._supervisor is not None:  # let a start in progress finish, so nothing outlives stop()
            self._supervisor.join(timeout=60)
        if self.runtime is not None:
            with contextlib.suppress(Exception):
                self.runtime.stop()
        for child in (self.watchdog, self.udf, self.api):
            if child is not None:
                with contextlib.suppress(Exception):
                    child.stop()
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def process_ids(self) -> dict[str, int]:
        """Name -> pid of every process of the stack running now (each leads its own session)."""
        running = {
            child.name: child.proc.pid
            for child in (self.api, self.udf, self.watchdog)
            if child is not None and child.proc is not None and child.running()
        }
        if self.runtime is not None:
            for server in (self.runtime.influx, self.runtime.kapacitor):
                if server is not None and server.pid is not None:
                    running[server.name] = server.pid
        return running

    # -- looking at the data --------------------------------------------------------------------------
    def task_ids(self) -> tuple[str, ...]:
        """The Kapacitor tasks this stack runs: each detector's (tickguard.stack.deploy) and the shared ones."""
        from tickguard.stack.deploy import task_ids

        return (*(t for name in self.detectors for t in task_ids(name)), *stack_tasks.SHARED_TASK_IDS)

    def query(self, influxql: str, database: str = DATABASE) -> list[dict]:
        """Rows of an InfluxQL query as dicts (column -> value)."""
        return self._runtime().influx.select(influxql, database)

    def scored_count(self, detector: str = FRAUD) -> int:
        """How many points have reached the detector's scored measurement (fraud: transactions_scored)."""
        from tickguard.agent.schema import SCORED
        from tickguard.influx import quote_ident

        spec = self.detectors[detector]
        rows = self.query(
            f"SELECT count({quote_ident(SCORED)}) FROM {quote_ident(spec.output.measurement)}",
            spec.source.database,
        )
        return int(rows[0]["count"]) if rows else 0

    def generator(
        self, rate: float, count: int | None, loop: bool, logs: Path | None = None, detector: str = FRAUD
    ) -> ChildProcess:
        """Start `tickguard generate --detector NAME` against this stack's InfluxDB (not started yet: call
        .start())."""
        # --json: the last line of its log is the final report, which run_local_stack reads back.
        argv = [
            "generate",
            "--detector",
            detector,
            "--url",
            self.influx_url,
            "--rate",
            str(rate),
            "--shuffle",
        ]
        argv += ["--json", *(["--count", str(count)] if count else ["--duration", "87600h"])]
        if loop:
            argv.append("--loop")
        name = "generator" if detector == FRAUD else f"generator ({detector})"
        log_name = "generator.log" if detector == FRAUD else f"generator-{detector}.log"
        # Its own environment: a TICKGUARD_INFLUXDB_DATABASE meant for fraud must not redirect another detector.
        env = {
            "TICKGUARD_INFLUXDB_DATABASE": "",
            "TICKGUARD_INFLUXDB_RP": "",
            "TICKGUARD_GENERATOR_MEASUREMENT": "",
        }
        return ChildProcess(
            name, argv, (logs or self.workdir / "logs") / log_name, env=None if detector == FRAUD else env
        )


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all stop the stack cleanly (a shell's background job ignores SIGINT
    unless the handler is set explicitly)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)


def _scored_count_command(stack: LocalStack, detector: str = FRAUD) -> str:
    """The curl command that counts a detector's scored points (what a user checks first)."""
    spec = stack.detectors[detector]
    return (
        f"curl -sG '{stack.influx_url}/query' --data-urlencode 'db={spec.source.database}' "
        f"--data-urlencode 'q=SELECT count(score) FROM \"{spec.output.measurement}\"'"
        if spec.output.measurement != SCORED_MEASUREMENT
        else f"curl -sG '{stack.influx_url}/query' --data-urlencode 'db={DATABASE}' "
        f"--data-urlencode 'q=SELECT count(score) FROM {SCORED_MEASUREMENT}'"
    )


def _generator_report(gen: ChildProcess) -> dict | None:
    """The generator's final report: the JSON object on the last line of its log (None if it has none)."""
    lines = _log_tail(gen.log_path, 1).splitlines()
    try:
        report = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def _report_generator_finished(stack: LocalStack, gen: ChildProcess, detector: str = FRAUD) -> None:
    """Say that the replay is over, how many points it wrote and reached the scored measurement, and what
    to look at next."""
    report = _generator_report(gen)
    code = gen.proc.returncode if gen.proc is not None else None
    label = "" if detector == FRAUD else f" ({detector})"
    if report is None:
        print(
            f"\ngenerator{label} exited (code {code}) without a report; its log: {gen.log_path}", flush=True
        )
        written = None
    else:
        written = int(report["written"])
        failed = f", {report['failed']} failed (see {gen.log_path})" if report.get("failed") else ""
        print(
            f"\ngenerator{label} finished: {written} points written in {float(report['elapsed_s']):.1f} s{failed}.",
            flush=True,
        )
    # Scored points trail the writes by the pipeline's latency (well under a second): wait a little.
    deadline = time.monotonic() + ARRIVAL_WAIT_S
    scored = stack.scored_count(detector)
    while written is not None and scored < written and time.monotonic() < deadline:
        time.sleep(0.5)
        scored = stack.scored_count(detector)
    of_written = f" of {written}" if written is not None else ""
    spec = stack.detectors[detector]
    more = "" if detector == FRAUD else f" --detector {detector}"
    print(
        f"""{scored}{of_written} points are in {spec.source.database}.{spec.output.measurement}. Look at:
  scored points  {_scored_count_command(stack, detector)}
  alerts         tail -f {stack.alert_log}   (JSON records: {stack.alert_json})
  more points    tickguard generate{more} --url {stack.influx_url} --count 1000 --loop
The stack keeps running: Ctrl-C (or kill -TERM {os.getpid()}) stops everything.""",
        flush=True,
    )


def _still_running(pid: int) -> bool:
    """True while process `pid` or any process of its group exists (gunicorn workers, alert handlers)."""
    for probe in (os.kill, os.killpg):
        try:
            probe(pid, 0)
        except ProcessLookupError:
            continue
        except PermissionError:
            return True
        return True
    return False


def _confirm_stopped(pids: dict[str, int]) -> bool:
    """Print, for each process the stack ran, whether it is gone; True when all are."""
    if not pids:
        return True
    left = {name: pid for name, pid in pids.items() if _still_running(pid)}
    for name, pid in pids.items():
        print(f"  {name} (pid {pid}): {'STILL RUNNING' if name in left else 'stopped'}", flush=True)
    if left:
        print(f"tickguard up --local: {len(left)} process(es) did not stop: kill them by pid", flush=True)
    else:
        print("tickguard up --local: everything stopped.", flush=True)
    return not left


def run_local_stack(
    rate: float = 50.0,
    count: int | None = None,
    generator: bool = True,
    workdir: str | None = None,
    models_dir: str | None = None,
    model: str = "production",
    detectors: tuple[str, ...] = (FRAUD,),
) -> int:
    """Run the local stack until Ctrl-C or SIGTERM, printing where to look and a status line now and then;
    on the way out, confirm that every process it started is gone (exit code 1 if one is not)."""
    workdir_path = Path(workdir) if workdir else stack_tasks.repo_root() / ".tick" / "local-stack"
    _stop_on_signals()
    stack = LocalStack(workdir_path, models_dir=models_dir, model=model, detectors=detectors)
    gens: dict[str, ChildProcess] = {}
    pids: dict[str, int] = {}
    try:
        print("tickguard up --local: starting API, InfluxDB, UDF agent and Kapacitor ...", flush=True)
        stack.start()
        if generator:
            for name in stack.detectors:
                # Always looping: --count N is N points even when the holdout is shorter (a small CSV's is).
                gens[name] = stack.generator(rate, count, loop=True, detector=name)
                gens[name].start()
        each = " each" if len(stack.detectors) > 1 else ""
        if count and generator:
            gen_text = f"{count} points{each} at {rate} points/s, then it stops (the stack keeps running)"
        elif generator:
            gen_text = f"{rate} points/s{each} until Ctrl-C"
        else:
            gen_text = f"off (run: tickguard generate --url {stack.influx_url})"
        databases = "\n".join(
            f"  InfluxDB    {stack.influx_url}   database {spec.source.database}: {spec.source.measurement}, "
            f"{spec.output.measurement}" + ("" if name == FRAUD else f" (detector {name})")
            for name, spec in stack.detectors.items()
        )
        print(
            f"""
tickguard local stack is running (loopback only, InfluxDB without authentication):
{databases}
  Kapacitor   {stack.kapacitor_url}/kapacitor/v1/tasks   tasks: {", ".join(stack.task_ids())}
  REST API    {stack.api_url}/models
  Alerts      tail -f {stack.alert_log}   (JSON records: {stack.alert_json}; InfluxDB chronograf.autogen.alerts)
  Logs        {stack.workdir / "logs"}  and {stack.workdir / "tick"}/*/ (server logs)
  Generator   {gen_text}
Try: {_scored_count_command(stack, next(iter(stack.detectors)))}
Ctrl-C (or kill -TERM {os.getpid()}) stops everything.""",
            flush=True,
        )
        _watch(stack, gens)
    except KeyboardInterrupt:
        print("\ntickguard up --local: stopping ...", flush=True)
    finally:
        pids = stack.process_ids()
        running = {gen.name: gen.proc.pid for gen in gens.values() if gen.running() and gen.proc is not None}
        pids = {**running, **pids}
        for gen in gens.values():
            gen.stop()
        stack.stop()
    return 0 if _confirm_stopped(pids) else 1


def _watch(stack: LocalStack, gens: dict[str, ChildProcess]) -> None:
    """Until interrupted: fail when the API or the agent dies, report each generator's end once, and print
    the scored counts every STATUS_EVERY_S while they change."""
    next_status = time.monotonic() + STATUS_EVERY_S
    last_counts = None
    reported: set[str] = set()
    while True:
        time.sleep(WATCH_EVERY_S)
        for child in (stack.api, stack.udf):
            if child is not None and not child.running():
                raise child.fail("stopped unexpectedly")
        for name, gen in gens.items():
            if name not in reported and not gen.running():
                reported.add(name)
                with contextlib.suppress(Exception):
                    _report_generator_finished(stack, gen, name)
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + STATUS_EVERY_S
            with contextlib.suppress(Exception):
                counts = {name: stack.scored_count(name) for name in stack.detectors}
                if counts != last_counts:
                    parts = []
                    for name, count in counts.items():
                        gen = gens.get(name)
                        state = "running" if gen and gen.running() else "finished" if gen else "off"
                        prefix = "" if len(counts) == 1 else f"{name}: "
                        parts.append(f"{prefix}{count} (generator {state})")
                    print(f"  scored points so far: {'; '.join(parts)}", flush=True)
                last_counts = counts


def main(argv: list[str] | None = None) -> int:
    """`python -m tickguard.stack.local [options]`: the same command as `tickguard up --local [options]`."""
    from tickguard.cli import main as cli_main

    return cli_main(["up", "--local", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
