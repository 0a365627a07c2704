"""Two Kapacitor shards on one machine: one influxd, two kapacitord each with its own UDF agent, one
scoring service -- the Helm chart's `shards: 2` (deploy/helm/tickguard), without a cluster.

The producer (the product's generator, tickguard.stack.generator with `shards=2`) tags every point with
`shard` = crc32(txid) % 2; InfluxDB pushes every point to both Kapacitors; each shard's tasks are defined
as the chart's tasks sidecar defines them (`tickguard deploy --shard i --shards 2`: tickguard.stack.deploy
with `shard=(i, 2)`), so shard i's score task keeps the points tagged i and only shard 0 alerts. Proven here: every point is scored by exactly one shard
(Kapacitor's own node counters), points out = points in, per shard too; and when one kapacitord is
SIGKILLed mid-stream and comes back, the watchdog reports its outage and the backfill re-scores that
shard's lost points -- only that shard's.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from tests.fixtures.udf import ScoringServiceThread
from tickguard.agent.watchdog import Watchdog
from tickguard.influx import InfluxClient, iter_rows, quote_ident
from tickguard.ops.backfill import heal_hook
from tickguard.ops.config import backfill_settings
from tickguard.runtime import KapacitorServer
from tickguard.stack.generator import InfluxWriter, ReplayPlan, replay
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

    def __init__(self, runtime, kapacitors: list[KapacitorServer], service: ScoringServiceThread):
        self.runtime = runtime
        self.kapacitors = kapacitors
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


@pytest.fixture
def sharded_stack(tick_runtime_factory, udf_agent_factory, udf_model_dir, tick_binaries, tmp_path_factory):
    service = ScoringServiceThread(udf_model_dir).start()
    agents = [udf_agent_factory(url=service.url) for _ in range(SHARDS)]
    runtime = tick_runtime_factory(udfs={"tickguard": (agents[0].socket_path, UDF_TIMEOUT)})
    second = KapacitorServer(
        tick_binaries.kapacitord,
        tmp_path_factory.mktemp("kapacitor-shard1"),
        influx=runtime.influx,
        udfs={"tickguard": (agents[1].socket_path, UDF_TIMEOUT)},
    )
    second.start()
    try:
        runtime.create_database(DATABASE)
        runtime.influx.create_database("chronograf")  # the alert history the alert tasks write
        for server in (runtime.kapacitor, second):
            runtime.influx.wait_for_subscription(DATABASE, server.port, 15)
        stack = ShardedStack(runtime, [runtime.kapacitor, second], service)
        stack.tasks = stack.define_tasks(tmp_path_factory.mktemp("alerts"))
        yield stack
    finally:
        second.stop()
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
    server = sharded_stack.kapacitors[victim]
    settings = replace(
        backfill_settings({}),
        influx_url=sharded_stack.runtime.influx_url,
        username="",
        password="",
        database=DATABASE,
        source_measurement=SOURCE,
        scored_measurement=SCORED,
        api_url=sharded_stack.service.url,
        label_field="Class",
        id_field="txid",
        where=shard_influxql(victim, SHARDS),  # the shard's agent has this from TICKGUARD_BACKFILL_WHERE
    )
    backfills = []
    done = threading.Event()
    events = []
    watchdog = Watchdog(
        server.url,
        ["tickguard"],
        interval_s=0.3,
        on_healed=[
            events.append,
            heal_hook(settings, settle_s=2.0, on_done=lambda r: (backfills.append(r), done.set())),
        ],
    )
    watchdog.start()
    try:
        rows = replay_rows.iloc[3000:7000]
        outcome: dict = {}
        producer = threading.Thread(
            target=lambda: outcome.update(report=sharded_stack.replay(rows, rate=400))
        )
        producer.start()
        time.sleep(3)
        server.kill()  # the shard's Kapacitor crashes; InfluxDB's pushes to it fail meanwhile
        time.sleep(3)
        server.start()  # ... and comes back (a StatefulSet restarts the pod) with its task stored
        producer.join(60)
        report = outcome["report"]
        assert report.written == 4000 and report.failed == 0
        assert done.wait(60), f"no backfill after the heal; heal events: {events}"
    finally:
        watchdog.stop()
    assert [e.task_id for e in events] == [TASK_ID] and "unreachable" in events[0].error
    points_in, points_out = sharded_stack.wait_settled(report.first_time_ns, report.last_time_ns)
    assert sum(points_in.values()) == 4000
    assert points_out == points_in  # every point of both shards left scored, the lost ones backfilled
    backfilled = sharded_stack.counts_by_shard(
        SCORED, "backfilled", report.first_time_ns, report.last_time_ns, "backfilled = true"
    )
    # Only the killed shard's points were backfilled (its outage: ~3 s at ~200 points/s per shard).
    assert set(backfilled) == {str(victim)} and backfilled[str(victim)] >= 200, backfilled
    assert backfills[0].written == backfilled[str(victim)]
    assert sharded_stack.distinct_scored_txids(report.first_time_ns, report.last_time_ns) == 4000
