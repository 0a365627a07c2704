"""The shard tag (tickguard.stack.sharding) and the generator writing it (tickguard.stack.generator)."""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pytest

from tickguard.errors import TickguardError
from tickguard.stack.generator import LineEncoder, ReplayFormat
from tickguard.stack.sharding import check_shards, series_key, shard_condition, shard_influxql, shard_of

FMT = ReplayFormat(measurement="transactions", feature_fields=("V1", "V2"), label_field="Class")


def test_shard_of_is_crc32_modulo_the_shard_count():
    # A fixed value: the same in every process, on every machine (Python's hash() is salted per process).
    assert zlib.crc32(b"tx000001") == 1_832_667_804
    assert shard_of("tx000001", 4) == 1_832_667_804 % 4 == 0
    assert shard_of("tx000001", 1) == 0


def test_ids_spread_evenly_over_the_shards():
    counts = Counter(shard_of(f"tx{i:06d}", 4) for i in range(20_000))
    assert set(counts) == {0, 1, 2, 3}
    assert max(counts.values()) / min(counts.values()) < 1.1


def test_series_key_leaves_the_shard_tag_out_and_sorts_tags():
    assert series_key("m", {"b": "2", "a": "1", "shard": "3"}) == "m,a=1,b=2"


def test_filters_name_the_shard():
    assert shard_condition(1, 2) == "\"shard\" == '1'"
    assert shard_influxql(1, 2) == "\"shard\" = '1'"


@pytest.mark.parametrize(
    ("shards", "shard", "message"),
    [(0, None, "shards must be >= 1, got 0"), (2, 2, "shard must be in 0..1 for 2 shards, got 2")],
)
def test_bad_shard_numbers_are_refused(shards, shard, message):
    with pytest.raises(TickguardError, match=message):
        check_shards(shards, shard)


def test_generator_writes_the_shard_of_each_txid():
    encoder = LineEncoder("transactions", "replay", FMT, shards=4)
    for i in range(50):
        txid = f"tx{i:06d}"
        line, _ts = encoder.encode(np.array([1.0, 2.0]), 0, txid)
        assert line.startswith(
            f"transactions,shard={shard_of(txid, 4)},source=replay V1=1.0,V2=2.0,Class=0i,"
        )


def test_generator_by_series_key_puts_every_point_of_a_series_on_one_shard():
    encoder = LineEncoder("transactions", "replay", FMT, shards=4, shard_key="series")
    shard = shard_of(series_key("transactions", {"source": "replay"}), 4)
    lines = [encoder.encode(np.array([1.0, 2.0]), 0, f"tx{i}")[0] for i in range(20)]
    assert all(line.startswith(f"transactions,shard={shard},source=replay ") for line in lines)


def test_unsharded_generator_writes_no_shard_tag():
    line, _ts = LineEncoder("transactions", "replay", FMT).encode(np.array([1.0, 2.0]), 1, "tx1")
    assert line.startswith('transactions,source=replay V1=1.0,V2=2.0,Class=1i,txid="tx1" ')


def test_generator_refuses_an_unknown_shard_key():
    with pytest.raises(TickguardError, match="shard_key must be one of auto, series, id"):
        LineEncoder("transactions", "replay", FMT, shards=2, shard_key="card")


def test_deploy_plans_the_shard_filter_and_alerts_on_shard_zero_only():
    from tickguard.detectors import load_detector
    from tickguard.stack.deploy import plan

    spec = load_detector("fraud")
    unsharded = {task.task_id: task for task in plan(spec)}
    first = {task.task_id: task for task in plan(spec, shard=(0, 2))}
    second = {task.task_id: task for task in plan(spec, shard=(1, 2))}
    assert unsharded["score"].vars["where_filter"]["value"] == "TRUE"
    assert first["score"].vars["where_filter"]["value"] == "\"shard\" == '0'"
    assert second["score"].vars["where_filter"]["value"] == "\"shard\" == '1'"
    assert (
        set(first) == set(unsharded) == {"score", "fraud_alert", "fraud_anomaly_rate", "fraud_scoring_errors"}
    )
    assert set(second) == {"score"}


def test_deploy_keeps_a_detector_tag_filter_and_adds_the_shard(tmp_path):
    from dataclasses import replace

    from tickguard.detectors import load_detector
    from tickguard.stack.deploy import plan

    spec = load_detector("fraud")
    tagged = replace(spec, source=replace(spec.source, tags={"site": "eu"}))
    (score, *_rest) = plan(tagged, shard=(1, 4))
    assert score.vars["where_filter"]["value"] == "\"site\" == 'eu' AND \"shard\" == '1'"
