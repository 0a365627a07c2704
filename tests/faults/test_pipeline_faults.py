"""Faults injected mid-stream into the real local pipeline; after recovery, points out = points in, all scored.

One stack for the module (the faults are injected one after another; each test uses its own time range):
  1. the REST scoring service is killed (SIGKILL) and restarted: the UDF agent keeps emitting the points,
     marked unscored, and a backfill re-scores them;
  2. the UDF agent is killed and restarted: the watchdog re-enables the stopped task and its heal hook
     (tickguard.ops.backfill.heal_hook) backfills the points Kapacitor never handed to the agent;
  3. kapacitord is restarted: the points InfluxDB could not forward meanwhile are backfilled;
  4. InfluxDB is down for 10 s during generation: the generator retries; points whose scored copy could
     not be written back are backfilled.

What each fault cost (points lost before the backfill, points emitted unscored, the gap in live
scoring, the time to recover) is measured from the pipeline itself and written to
benchmarks/results/faults.json (rendered into benchmarks/README.md by `python -m benchmarks.report`).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.pipeline import Pipeline, start_pipeline, stop_pipeline
from tickguard.ops.backfill import Backfiller, heal_hook

pytestmark = [pytest.mark.faults, pytest.mark.tick, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
RATE = 300.0  # points/s: enough to have points in flight at every moment, cheap on 2 shared cores
_results_lock = threading.Lock()


@pytest.fixture(scope="module")
def fault_pipeline(tick_binaries, service_models_dir: Path, tmp_path_factory):
    running = start_pipeline(tmp_path_factory.mktemp("faults"), service_models_dir)
    yield running
    stop_pipeline(running)


def record(name: str, measured: dict) -> None:
    """Merge one fault's measurements into benchmarks/results/faults.json."""
    with _results_lock:
        try:
            data = json.loads(RESULTS.read_text())
        except (OSError, ValueError):
            data = {}
        data.setdefault("faults", {})[name] = measured
        data["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        data["rate_points_per_s"] = RATE
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nfault {name}: {json.dumps(measured)}")


def live_gap_s(pipeline: Pipeline, start_ns: int, end_ns: int) -> float:
    """Longest stretch of point time with no point scored live (by the stream task, not backfilled)."""
    rows = pipeline.query(
        f'SELECT "score", "backfilled" FROM "transactions_scored" WHERE time >= {start_ns} AND time <= {end_ns}'
    )
    times = np.array(
        sorted(r["time"] for r in rows if r.get("score") is not None and not r.get("backfilled"))
    )
    if times.size < 2:
        return (end_ns - start_ns) / 1e9
    edges = np.concatenate(([start_ns], times, [end_ns]))
    return round(float(np.diff(edges).max()) / 1e9, 2)


def first_live_score_after(pipeline: Pipeline, mark: int, after_ns: int) -> float | None:
    """Seconds from `after_ns` until the probe saw the first write holding a live-scored point."""
    for arrival in pipeline.probe.arrivals(mark):
        if (
            arrival.received_ns >= after_ns
            and arrival.timestamps.size > arrival.unscored + arrival.backfilled
        ):
            return round((arrival.received_ns - after_ns) / 1e9, 2)
    return None


def run_with_fault(pipeline: Pipeline, rows, fault, fault_at_s: float = 3.0) -> dict:
    """Replay `rows` at RATE, call fault() after `fault_at_s`, and wait for the generator to finish."""
    mark = pipeline.probe.mark()
    thread, outcome = pipeline.replay_in_background(rows, RATE)
    time.sleep(fault_at_s)
    fault_started = time.time_ns()
    restored_ns = fault()
    thread.join(timeout=180)
    assert not thread.is_alive(), "the generator did not finish"
    if "error" in outcome:
        raise outcome["error"]
    report = outcome["report"]
    return {
        "mark": mark,
        "report": report,
        "fault_started_ns": fault_started,
        "restored_ns": restored_ns,
        "start_ns": report.first_time_ns,
        "end_ns": report.last_time_ns,
        "written": report.written,
    }


def finish(pipeline: Pipeline, name: str, run: dict, backfill_report, before: dict, extra: dict) -> dict:
    """Counts after recovery, the shared assertions, and the record in faults.json."""
    start, end = run["start_ns"], run["end_ns"]
    after = pipeline.wait_settled(start, end, quiet_s=2.0)
    latencies = pipeline.probe.latencies_ms(run["mark"], min_ts=start, max_ts=end)
    measured = {
        "points_in": after["in"],
        "points_out": after["out"],
        "points_scored": after["scored"],
        "lost_before_backfill": before["in"] - before["out"],
        "unscored_emitted": before["unscored"],
        "backfilled": backfill_report.written if backfill_report else 0,
        "scoring_gap_s": live_gap_s(pipeline, start, end),
        "recovery_s": first_live_score_after(pipeline, run["mark"], run["restored_ns"]),
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "latency_max_ms": round(float(latencies.max()), 1) if latencies.size else None,
        "outage_s": round((run["restored_ns"] - run["fault_started_ns"]) / 1e9, 2),
        "generator_retried": run["report"].retried,
        "generator_failed": run["report"].failed,
        "out_equals_in": after["out"] == after["in"],
        **extra,
    }
    record(name, measured)
    assert run["report"].failed == 0, "the generator gave up on a batch"
    assert after["in"] == run["written"], "InfluxDB does not hold every generated point"
    assert after["out"] == after["in"], f"points out != points in after recovery: {after}"
    assert after["scored"] == after["in"], f"not every point is scored after the backfill: {after}"
    return measured


def rows_for(replay_rows, index: int, count: int):
    """A distinct slice of the holdout for each test (distinct txids)."""
    return replay_rows.iloc[index * 10_000 : index * 10_000 + count]


def test_scoring_service_killed_and_restarted(fault_pipeline: Pipeline, replay_rows) -> None:
    pipeline = fault_pipeline

    def fault() -> int:
        pipeline.kill_api()
        time.sleep(3.0)
        pipeline.start_api()
        return time.time_ns()

    rows = rows_for(replay_rows, 0, 6600)
    run = run_with_fault(pipeline, rows.iloc[:3000], fault)
    # Scoring resumes by itself: the breaker half-opens after its cooldown and closes on the first
    # success. Feed small chunks until one comes out fully scored (bounded wait), then a longer tail
    # that must be scored entirely.
    spare = rows.iloc[3000:6000]
    deadline = time.monotonic() + 30.0
    offset = 0
    while True:
        chunk = pipeline.replay(spare.iloc[offset : offset + 100], RATE)
        offset += 100
        run["end_ns"] = chunk.last_time_ns
        run["written"] += chunk.written
        pipeline.wait_settled(chunk.first_time_ns, chunk.last_time_ns)
        if pipeline.count("transactions_scored", "score", chunk.first_time_ns, chunk.last_time_ns) == 100:
            break
        assert time.monotonic() < deadline and offset < len(spare), (
            "scoring did not resume within 30 s of the service coming back"
        )
    tail = pipeline.replay(rows.iloc[6000:6600], RATE)
    run["end_ns"] = tail.last_time_ns
    run["written"] += tail.written
    before = pipeline.wait_settled(run["start_ns"], run["end_ns"])
    resumed = pipeline.count("transactions_scored", "score", tail.first_time_ns, tail.last_time_ns)
    if resumed != 600:
        reasons = pipeline.query(
            f'SELECT "error", "latency_ms" FROM "transactions_scored" WHERE time >= {tail.first_time_ns} '
            f"AND time <= {tail.last_time_ns} AND scored = false LIMIT 3"
        )
        pytest.fail(f"scoring fell back after it had resumed: {resumed}/600 scored; {reasons}")
    # The agent never drops a point: during the outage it emits them marked unscored, with the reason.
    assert before["out"] == before["in"], f"points were lost while the service was down: {before}"
    assert before["unscored"] > 0, "the outage left no point unscored: was the service really down?"
    errors = pipeline.query(
        f'SELECT "error" FROM "transactions_scored" WHERE time >= {run["start_ns"]} AND time <= {run["end_ns"]} '
        "AND scored = false LIMIT 5"
    )
    assert errors and all(row["error"] for row in errors)
    report = Backfiller(pipeline.backfill_settings()).run(run["start_ns"], run["end_ns"])
    assert report.unscored_counterparts == before["unscored"]
    finish(pipeline, "scoring service killed, restarted after 3 s", run, report, before, {})
    leftover = pipeline.query(
        f'SELECT count("error") FROM "transactions_scored" WHERE time >= {run["start_ns"]} '
        f"AND time <= {run['end_ns']} AND \"error\" != ''"
    )
    assert not leftover or leftover[0]["count"] == 0, "a re-scored point still carries its old error"


def test_udf_agent_killed_and_restarted_watchdog_heals_and_backfills(
    fault_pipeline: Pipeline, replay_rows
) -> None:
    from tickguard.agent.watchdog import Watchdog

    pipeline = fault_pipeline
    reports: list = []
    done = threading.Event()
    watchdog = Watchdog(pipeline.stack.kapacitor_url, ["tickguard"], interval_s=0.5)
    watchdog.add_callback(
        heal_hook(
            pipeline.backfill_settings(),
            kapacitor_url=pipeline.stack.kapacitor_url,  # backfill as the healed task writes (its definition)
            settle_s=3.0,
            lookback_s=30.0,
            on_done=lambda r: (reports.append(r), done.set()),
        )
    )
    watchdog.start()
    try:

        def fault() -> int:
            pipeline.kill_udf()
            time.sleep(2.0)
            pipeline.start_udf()
            return time.time_ns()

        run = run_with_fault(pipeline, rows_for(replay_rows, 1, 3000), fault)
        assert done.wait(60), f"no heal + backfill within 60 s (heals: {watchdog.healed})"
    finally:
        watchdog.stop()
    assert watchdog.healed and watchdog.healed[0].task_id == "score"
    heal = watchdog.healed[0]
    # Counts "before" = what the live pipeline delivered: everything minus what the backfill wrote.
    after = pipeline.wait_settled(run["start_ns"], run["end_ns"])
    backfilled_here = pipeline.count(
        "transactions_scored", "backfilled", run["start_ns"], run["end_ns"], "backfilled = true"
    )
    before = {"in": after["in"], "out": after["out"] - backfilled_here, "unscored": 0}
    assert backfilled_here > 0, "the agent's death lost no point: the fault did not bite"
    finish(
        pipeline,
        "UDF agent killed, restarted after 2 s",
        run,
        reports[0],
        before,
        {
            "watchdog_heal_attempts": heal.attempts,
            # Kapacitor 1.5 accepts the re-enable while the agent is still down and keeps dialling its
            # socket, so the task can be re-enabled before the agent is back.
            "task_reenabled_after_kill_s": round(
                (heal.healed_at.timestamp() * 1e9 - run["fault_started_ns"]) / 1e9, 2
            ),
        },
    )


def test_kapacitord_restarted(fault_pipeline: Pipeline, replay_rows) -> None:
    pipeline = fault_pipeline

    def fault() -> int:
        pipeline.stack.runtime.kapacitor.restart()
        return time.time_ns()

    run = run_with_fault(pipeline, rows_for(replay_rows, 2, 3000), fault)
    before = pipeline.wait_settled(run["start_ns"], run["end_ns"])
    tasks = {task.id: task for task in pipeline.stack.runtime.kapacitor_client().list_tasks()}
    assert tasks["score"].executing, f"score task not running after the restart: {tasks['score'].error}"
    report = Backfiller(pipeline.backfill_settings()).run(run["start_ns"], run["end_ns"])
    assert report.missing == before["in"] - before["out"]
    finish(pipeline, "kapacitord restarted", run, report, before, {})


def test_influxdb_down_for_10_seconds_during_generation(fault_pipeline: Pipeline, replay_rows) -> None:
    pipeline = fault_pipeline
    influx = pipeline.stack.runtime.influx

    def fault() -> int:
        influx.stop()
        time.sleep(10.0)
        influx.start()
        return time.time_ns()

    run = run_with_fault(pipeline, rows_for(replay_rows, 3, 3000), fault, fault_at_s=2.0)
    assert run["report"].retried > 0, "the generator never had to retry: was InfluxDB really down?"
    before = pipeline.wait_settled(run["start_ns"], run["end_ns"])
    report = Backfiller(pipeline.backfill_settings()).run(run["start_ns"], run["end_ns"])
    finish(
        pipeline,
        "InfluxDB down 10 s during generation",
        run,
        report,
        before,
        {
            "generation_s": round(run["report"].elapsed_s, 1),
            "generation_s_without_fault": round(3000 / RATE, 1),
        },
    )
