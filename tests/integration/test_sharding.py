"""Two Kapacitor shards on one machine: one influxd, two kapacitord each with its own UDF agent, one
scoring service -- the Helm chart's `shards: 2` (deploy/helm/tickguard), without a cluster.

Each shard is set up as the chart's Kapacitor pod is: the agent is `tickguard udf` in its own process,
started before its kapacitord, with the chart's environment (its Kapacitor's URL, so its built-in
watchdog heals that Kapacitor's tasks; InfluxDB's URL, so it backfills after a heal; and
TICKGUARD_BACKFILL_WHERE = its shard's points), and the shard's tasks are defined as the chart's tasks
sidecar defines them (`tickguard deploy --shard i --shards 2`, tickguard.stack.deploy with shard=(i, 2)).
The producer (the product's generator with `shards=2`) tags every point with `shard` = crc32(txid) % 2.

Proven here: every point is scored by exactly one shard (Kapacitor's own node counters), points out =
points in, per shard too; and when one kapacitord is SIGKILLed mid-stream and comes back, its agent's
watchdog reports the outage and the backfill re-scores that shard's lost points -- only that shard's.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import replace

import pytest

from tests._wait import poll
from tests.fixtures.udf import ScoringServiceThread, short_socket_dir
from tickguard.influx import InfluxClient, iter_rows, quote_ident
from tickguard.runtime import KapacitorServer, TickRuntime
from tickguard.stack.generator import InfluxWriter, ReplayPlan, replay
from tickguard.stack.local import ChildProcess, _socket_accepts
from tickguard.stack.sharding import SHARD_TAG, shard_influxql

pytestmark = pytest.mark.tick

SHARDS = 2
DATABASE = "fraud"
SOURCE = "transactions"
SCORED = "transactions_scored"
TASK_ID = "score"
UDF_TIMEOUT = "10s"


class ShardedStack:
    """influxd + two kapacitord (one per shard), each dialing its own in-process UDF agent."""

    def __init__(
        self,
        runtime,
        kapacitors: list[KapacitorServer],
        agents: list[ChildProcess],
        service: ScoringServiceThread,
    ):
        self.runtime = runtime
        self.kapacitors = kapacitors
        self.agents = agents
        self.service = service
        self.influx = InfluxClient(runtime.influx_url, database=DATABASE)
        self.tasks: dict[int, list[str]] = {}  # shard -> the task ids deployed on it

    def define_tasks(self, workdir) -> dict[int, list[str]]:
        """Each shard's tasks, as `tickguard deploy --detector fraud --shard i --shards 2` defines them."""
        from tickguard.detectors import load_detector
        from tickguard.kapacitor_client import KapacitorClient
        from tickguard.stack.deploy import deploy
        from tickguard.stack.tasks import alert_output_vars

        overrides = alert_output_vars(workdir / "alerts.log", workdir / "alerts.json")
        defined = {}
        for shard, server in enumerate(self.kapacitors):
            tasks = deploy(
                KapacitorClient(server.url), load_detector("fraud"), overrides, shard=(shard, SHARDS)
            )
            assert all(task.executing for task in tasks), [(t.id, t.error) for t in tasks]
            defined[shard] = sorted(task.id for task in tasks)
        return defined

    def replay(self, rows, rate: float) -> object:
        writer = InfluxWriter(replace(self.runtime_settings()))
        try:
            return replay(rows, ReplayPlan(rate=rate, batch_size=50, shards=SHARDS), writer)
        finally:
            writer.close()

    def runtime_settings(self):
        from tickguard.stack.config import influx_settings

        return replace(
            influx_settings(), url=self.runtime.influx_url, username="", password="", database=DATABASE
        )

    def counts_by_shard(
        self, measurement: str, field: str, start_ns: int, end_ns: int, where: str = ""
    ) -> dict:
        """shard -> count(field) of a measurement over [start_ns, end_ns]."""
        extra = f" AND {where}" if where else ""
        series = self.influx.query(
            f"SELECT count({quote_ident(field)}) FROM {quote_ident(measurement)} "
            f"WHERE time >= {start_ns} AND time <= {end_ns}{extra} GROUP BY {quote_ident(SHARD_TAG)}"
        )
        return {tags[SHARD_TAG]: int(row["count"]) for tags, row in iter_rows(series)}

    def distinct_scored_txids(self, start_ns: int, end_ns: int) -> int:
        series = self.influx.query(
            f'SELECT count(distinct("txid")) FROM {quote_ident(SCORED)} WHERE time >= {start_ns} AND time <= {end_ns}'
        )
        return next((int(row["count"]) for _tags, row in iter_rows(series)), 0)

    def wait_settled(self, start_ns: int, end_ns: int, timeout_s: float = 60.0) -> tuple[dict, dict]:
        """Wait until every shard's scored count equals its raw count (or stops moving); both counts."""
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while True:
            points_in = self.counts_by_shard(SOURCE, "Amount", start_ns, end_ns)
            points_out = self.counts_by_shard(SCORED, "scored", start_ns, end_ns)
            if points_in == points_out or time.monotonic() > deadline or time.monotonic() - since > 8:
                return points_in, points_out
            if (points_in, points_out) != last:
                last, since = (points_in, points_out), time.monotonic()
            time.sleep(0.3)

    def udf_points(self, shard: int) -> int:
        """How many points shard `shard`'s score task passed from its filter into the UDF (Kapacitor's counter)."""
        from tickguard.kapacitor_client import KapacitorClient

        task = KapacitorClient(self.kapacitors[shard].url).get_task(TASK_ID)
        from_node = next(name for name in task.stats.get("node-stats", {}) if name.startswith("from"))
        return int(task.node_stats(from_node)["emitted"])


def agent_env(shard: int, kapacitor: KapacitorServer, runtime, service) -> dict[str, str]:
    """The agent sidecar's environment in the chart (deploy/helm/tickguard/templates/kapacitor.yaml)."""
    return {
        "TICKGUARD_SCORING_URL": service.url,
        "TICKGUARD_KAPACITOR_URL": kapacitor.url,
        "TICKGUARD_INFLUXDB_URL": runtime.influx_url,
        "TICKGUARD_INFLUXDB_USER": "",
        "TICKGUARD_INFLUXDB_PASSWORD": "",
        "TICKGUARD_BACKFILL_WHERE": shard_influxql(shard, SHARDS),
        "TICKGUARD_WATCHDOG_INTERVAL": "0.3",  # the chart keeps the 2 s default; the test is in a hurry
    }


@pytest.fixture
def sharded_stack(tick_binaries, udf_model_dir, tmp_path_factory):
    service = ScoringServiceThread(udf_model_dir).start()
    workdir = tmp_path_factory.mktemp("shards")
    runtime = TickRuntime(workdir / "influx", with_kapacitor=False, binaries=tick_binaries)
    kapacitors: list[KapacitorServer] = []
    agents: list[ChildProcess] = []
    try:
        runtime.start()
        for shard in range(SHARDS):
            socket_path = short_socket_dir() / "udf.sock"
            kapacitor = KapacitorServer(
                tick_binaries.kapacitord,
                workdir / f"kapacitord-{shard}",
                influx=runtime.influx,
                udfs={"tickguard": (socket_path, UDF_TIMEOUT)},
            )
            agent = ChildProcess(
                f"agent of shard {shard}",
                ["udf", "--socket", str(socket_path), "--url", service.url, "--metrics-port", "0"],
                workdir / f"agent-{shard}.log",
                env=agent_env(shard, kapacitor, runtime, service),
            )
            agents.append(agent)
            agent.start()  # before Kapacitor, which dials the socket at startup (the chart's native sidecar)
            assert poll(lambda path=socket_path: path.exists() and _socket_accepts(path), 30, 0.2), (
                agent.fail("")
            )
            kapacitors.append(kapacitor)
            kapacitor.start()
        runtime.influx.create_database(DATABASE)
        runtime.influx.create_database("chronograf")  # the alert history the alert tasks write
        for kapacitor in kapacitors:
            runtime.influx.wait_for_subscription(DATABASE, kapacitor.port, 15)
        stack = ShardedStack(runtime, kapacitors, agents, service)
        stack.tasks = stack.define_tasks(workdir)
        yield stack
    finally:
        for kapacitor in kapacitors:
            kapacitor.stop()
        for agent in agents:
            agent.stop()
        runtime.stop()
        service.stop()


def test_every_point_is_scored_by_exactly_one_shard(sharded_stack, replay_rows):
    # Shard 0 runs the score task and the alert tasks, shard 1 its score task only.
    assert sharded_stack.tasks == {
        0: sorted([TASK_ID, "fraud_alert", "fraud_anomaly_rate", "fraud_scoring_errors"]),
        1: [TASK_ID],
    }
    rows = replay_rows.iloc[:3000]
    report = sharded_stack.replay(rows, rate=1000)
    assert report.written == 3000 and report.failed == 0
    points_in, points_out = sharded_stack.wait_settled(report.first_time_ns, report.last_time_ns)
    assert sum(points_in.values()) == 3000
    assert points_out == points_in  # points out = points in, shard by shard
    # Both shards carry a fair share of the stream (crc32 of the txid).
    assert set(points_in) == {"0", "1"} and min(points_in.values()) > 0.4 * 3000
    # Each shard's task passed exactly its own points into its UDF: no point was scored twice.
    for shard in range(SHARDS):
        assert sharded_stack.udf_points(shard) == points_in[str(shard)]
    assert sharded_stack.distinct_scored_txids(report.first_time_ns, report.last_time_ns) == 3000


def test_killed_shard_is_healed_by_the_watchdog_and_backfill(sharded_stack, replay_rows):
    victim = 1
    kapacitor = sharded_stack.kapacitors[victim]
    agent_log = sharded_stack.agents[victim].log_path
    rows = replay_rows.iloc[3000:7000]
    outcome: dict = {}
    producer = threading.Thread(target=lambda: outcome.update(report=sharded_stack.replay(rows, rate=400)))
    producer.start()
    time.sleep(3)
    # Only what the agent logs from the kill on counts: the module's stack is shared, and an earlier heal
    # (e.g. of the agent's start before its Kapacitor) may already have logged a backfill that wrote 0.
    log_offset = len(agent_log.read_text())
    kapacitor.kill()  # the shard's Kapacitor crashes; InfluxDB's pushes to it fail meanwhile
    time.sleep(3)
    kapacitor.start()  # ... and comes back (a StatefulSet restarts the pod) with its tasks stored
    producer.join(60)
    report = outcome["report"]
    assert report.written == 4000 and report.failed == 0
    # The agent's own watchdog saw its Kapacitor come back and backfilled the outage (after a 5 s settle).
    since_kill = lambda: agent_log.read_text()[log_offset:]  # noqa: E731
    done = poll(lambda: re.search(r"backfill after heal of score: .*wrote (\d+)", since_kill()), 60)
    assert done, since_kill()[-3000:]
    assert "Kapacitor answers again; task score executing" in since_kill()
    other_log = sharded_stack.agents[1 - victim].log_path.read_text()
    assert "backfill after heal of" not in other_log and "Kapacitor answers again" not in other_log
    points_in, points_out = sharded_stack.wait_settled(report.first_time_ns, report.last_time_ns)
    assert sum(points_in.values()) == 4000
    assert points_out == points_in  # every point of both shards left scored, the lost ones backfilled
    backfilled = sharded_stack.counts_by_shard(
        SCORED, "backfilled", report.first_time_ns, report.last_time_ns, "backfilled = true"
    )
    # Only the killed shard's points were backfilled (its outage: ~3 s at ~200 points/s per shard).
    assert set(backfilled) == {str(victim)} and backfilled[str(victim)] >= 200, backfilled
    assert int(done.group(1)) == backfilled[str(victim)]
    assert sharded_stack.distinct_scored_txids(report.first_time_ns, report.last_time_ns) == 4000
