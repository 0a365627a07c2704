"""Sharding the scoring stream over several Kapacitors: which shard a point belongs to, and the filters.

Every Kapacitor subscribed to an InfluxDB database receives every point written to it: InfluxDB's
subscriptions have no filter. So with N Kapacitors ("shards", the Helm chart's `shards: N`), the producer
writes a `shard` tag on each point, and shard i's score task keeps only the points tagged i (a `where`
on the task's `from()`, evaluated before the UDF, so every point is scored by exactly one shard).

The tag value is `crc32(key) % N`: CRC-32 (zlib) because it is stable across processes, machines and
languages (Python's `hash()` is salted per process), cheap, and spreads keys evenly enough. The key is
either the point's series key (measurement and sorted tags, without `shard`) -- all points of a series
go to the same shard, which a detector with per-series state needs -- or, for detectors whose points
are independent (fraud: one transaction per point, all in one series), the point's id field (`txid`),
which spreads a single series over every shard. `shard_key="auto"` picks the id when the points have one.

Changing N means re-deploying the tasks with the new filters and restarting the producer with the new N;
points written under the old N in between are found by the backfill (they have no scored counterpart).
Points without a `shard` tag are scored by no shard of a sharded deployment, so producers of a sharded
deployment must write it (tickguard generate --shards N); unsharded deployments need nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from tickguard.errors import TickguardError

SHARD_TAG = "shard"
SHARD_KEYS = ("auto", "series", "id")


def check_shards(shards: int, shard: int | None = None) -> None:
    """Refuse a shard count below 1 or a shard index outside [0, shards), naming the value."""
    if shards < 1:
        raise TickguardError(f"shards must be >= 1, got {shards}")
    if shard is not None and not 0 <= shard < shards:
        raise TickguardError(f"shard must be in 0..{shards - 1} for {shards} shards, got {shard}")


def series_key(measurement: str, tags: Mapping[str, str]) -> str:
    """The series key a point's shard is derived from: measurement and sorted tags, `shard` left out."""
    return measurement + "".join(f",{k}={v}" for k, v in sorted(tags.items()) if k != SHARD_TAG)


def shard_of(key: str, shards: int) -> int:
    """The shard of a key: crc32(key) % shards (stable everywhere; see the module docstring)."""
    check_shards(shards)
    return zlib.crc32(key.encode("utf-8")) % shards


def shard_condition(shard: int, shards: int) -> str:
    """The TICKscript lambda body that keeps shard `shard`'s points, e.g. `"shard" == '1'`."""
    check_shards(shards, shard)
    return f"\"{SHARD_TAG}\" == '{shard}'"


def shard_influxql(shard: int, shards: int) -> str:
    """The InfluxQL condition selecting shard `shard`'s points (backfill, counts), e.g. `"shard" = '1'`."""
    check_shards(shards, shard)
    return f"\"{SHARD_TAG}\" = '{shard}'"
