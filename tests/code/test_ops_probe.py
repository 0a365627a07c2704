"""The measurement probe behind the end-to-end benchmark and the fault tests (tickguard.ops.probe)."""

from __future__ import annotations

import os

import requests

from tickguard.ops.probe import RssSampler, WriteProbe, cpu_seconds, percentiles, tree_pids

SCORED = (
    b'transactions_scored,source=x Amount=1,score=0.1,scored=true,txid="a b" 1000\n'
    b'transactions_scored,source=x Amount=2,scored=false,error="service down: a b c" 2000\n'
    b"transactions_scored,source=x scored=false 3000\n"
    b"transactions_scored,source=x Amount=3,score=0.2,scored=true,backfilled=true 4000"
)


def test_feed_times_each_scored_line_and_counts_unscored_and_backfilled() -> None:
    probe = WriteProbe()
    probe.feed(b"transactions,source=x Amount=1 1000\ntransactions,source=x Amount=2 2000", 5_000)
    assert probe.count == 0  # raw points are not output
    probe.feed(SCORED, 10_000)
    assert (probe.count, probe.unscored, probe.backfilled) == (4, 2, 1)
    everything = probe.latencies_ms(live_only=False)
    assert sorted(everything.tolist()) == [0.006, 0.007, 0.008, 0.009]
    # A write holding backfilled points is a backfill's, not the pipeline's: left out of latencies.
    assert probe.latencies_ms().size == 0
    assert probe.latencies_ms(live_only=False, min_ts=2000, max_ts=3000).size == 2
    assert probe.count_between(10_000, 10_001) == 4 and probe.count_between(0, 10_000) == 0


def test_probe_receives_posts_like_influxdb_subscriptions_send_them() -> None:
    probe = WriteProbe().start()
    try:
        answer = requests.post(
            f"{probe.url}/write?db=fraud&rp=autogen", data=SCORED.split(b"\n")[0], timeout=5
        )
        assert answer.status_code == 204
        assert probe.wait_for(1, timeout_s=5)
    finally:
        probe.stop()


def test_percentiles_and_empty_input() -> None:
    import numpy as np

    result = percentiles(np.arange(1, 101, dtype=float))
    assert result["p50"] == 50.5 and result["max"] == 100.0
    assert percentiles(np.empty(0)) == {"p50": None, "p95": None, "p99": None, "max": None}


def test_memory_and_cpu_of_this_process() -> None:
    sampler = RssSampler({"me": os.getpid()}, interval_s=0.01).start()
    peaks = sampler.stop()
    assert peaks["me"] > 10  # MiB: a Python interpreter with numpy loaded
    assert os.getpid() in tree_pids(os.getpid())
    assert cpu_seconds(os.getpid(), tree=False) > 0
