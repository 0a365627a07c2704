"""A series' recent history read back from InfluxDB, to rebuild its window state.

A windowed detector's features depend on the points before the one being scored (tickguard.windows). The
agent keeps that state in memory per series; when it starts (or Kapacitor reconnects a task after a
restart) the state is empty, and so is a backfill's when it scores a gap. Both rebuild it from the same
place the live points went: the source measurement in InfluxDB. For each series the reader asks for the
last `limit` points before the first point to be scored (optionally no older than `since_ns` before it),
one InfluxQL statement per series, many statements per HTTP request.

Only points whose value fields are all numbers and finite come back: those are the only points the live
agent pushes into a window (a point missing a value leaves unscored and does not enter the state), so a
rebuilt state holds what a state kept since the beginning would hold.

InfluxDB access goes through tickguard.influx (the one InfluxDB module); this module only builds the
statements and reads their answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tickguard.influx import InfluxClient, qualified, quote_ident, tag_conditions

STATEMENTS_PER_REQUEST = 200  # one request stays small; 10,000 new series take 50 requests


@dataclass(frozen=True)
class SeriesSource:
    """Where a series' points are stored: database, retention policy, measurement and its key tags."""

    database: str
    retention_policy: str
    measurement: str
    tags: tuple[tuple[str, str], ...]  # (tag, value) of the series key; value '' = the point lacks the tag


def history_statement(
    source: SeriesSource, fields: Sequence[str], before_ns: int, limit: int, since_ns: int | None = None
) -> str:
    """The InfluxQL of the last `limit` points of one series strictly before `before_ns` (newest first)."""
    columns = ", ".join(quote_ident(name) for name in fields)
    conditions = tag_conditions(source.tags)
    conditions.append(f"time < {int(before_ns)}")
    if since_ns is not None:
        conditions.append(f"time >= {int(since_ns)}")
    where = " AND ".join(conditions)
    target = qualified(source.measurement, source.database, source.retention_policy)
    return f"SELECT {columns} FROM {target} WHERE {where} ORDER BY time DESC LIMIT {max(1, int(limit))}"


def _usable(row: Sequence, count: int) -> tuple[float, ...] | None:
    values = []
    for value in row[1 : 1 + count]:
        if value is None or isinstance(value, bool | str):
            return None
        number = float(value)
        if not math.isfinite(number):
            return None
        values.append(number)
    return tuple(values)


class HistoryReader:
    """Reads recent points of many series with few requests (see the module doc)."""

    def __init__(self, client: InfluxClient, statements_per_request: int = STATEMENTS_PER_REQUEST) -> None:
        self.client = client
        self.statements_per_request = max(1, statements_per_request)
        self.requests = 0  # HTTP requests made, for logs and tests

    def recent(
        self,
        wanted: Iterable[tuple[SeriesSource, int]],
        fields: Sequence[str],
        limit: int,
        horizon_ns: int | None = None,
    ) -> dict[SeriesSource, list[tuple[int, tuple[float, ...]]]]:
        """Series -> its last `limit` usable points before the given time (and within `horizon_ns` of it),
        oldest first, as (time_ns, values in `fields` order). Raises tickguard.influx.InfluxError."""
        asked = list(dict(wanted).items())
        found: dict[SeriesSource, list[tuple[int, tuple[float, ...]]]] = {}
        step = self.statements_per_request
        for offset in range(0, len(asked), step):
            chunk = asked[offset : offset + step]
            by_database: dict[str, list[tuple[SeriesSource, int]]] = {}
            for source, before in chunk:
                by_database.setdefault(source.database, []).append((source, before))
            for database, items in by_database.items():
                statements = [
                    history_statement(
                        source,
                        fields,
                        before,
                        limit,
                        None if horizon_ns is None else before - horizon_ns,
                    )
                    for source, before in items
                ]
                self.requests += 1
                results = self.client.results("; ".join(statements), database=database or None)
                for (source, _before), result in zip(items, results, strict=False):
                    points: list[tuple[int, tuple[float, ...]]] = []
                    for series in result.get("series") or []:
                        for row in series.get("values") or []:
                            values = _usable(row, len(fields))
                            if values is not None:
                                points.append((int(row[0]), values))
                    points.sort(key=lambda point: point[0])
                    found[source] = points
        return found
