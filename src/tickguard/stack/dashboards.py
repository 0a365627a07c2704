"""The Grafana dashboards, built from code so every panel's query is written once and testable.

`python -m tickguard.stack.dashboards` rewrites grafana/dashboards/*.json; a test checks the committed
files equal what this module builds. All queries are InfluxQL against the provisioned InfluxDB 1.8
datasource, referenced by its fixed uid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tickguard.agent.schema import CONFUSION, FLAG_FIELD, LATENCY_MS, SCORE_FIELD
from tickguard.agent.schema import SCORED as SCORED_FIELD
from tickguard.influx import quote_ident

DATASOURCE_UID = "tickguard-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
LIVE_UID = "tickguard-fraud-live"
HEALTH_UID = "tickguard-pipeline-health"
TIME_RANGE = {"from": "now-15m", "to": "now"}
REFRESH = "5s"
SCHEMA_VERSION = 39

SCORED = '"fraud"."autogen"."transactions_scored"'
INCOMING = '"fraud"."autogen"."transactions"'
KAPACITOR = '"_kapacitor"."autogen"'
ALERTS = '"chronograf"."autogen"."alerts"'
OUR_TASKS = "/^(score|fraud_alert|anomaly_rate|scoring_errors)$/"
# The scored point's fields (tickguard.agent.schema), quoted for InfluxQL.
SCORE, FLAG, IS_SCORED, LATENCY = map(quote_ident, (SCORE_FIELD, FLAG_FIELD, SCORED_FIELD, LATENCY_MS))
TP, FP, FN, TN = map(quote_ident, CONFUSION)


def target(ref: str, query: str, alias: str = "", fmt: str = "time_series") -> dict[str, Any]:
    """A raw InfluxQL query target."""
    return {
        "refId": ref,
        "datasource": DATASOURCE,
        "query": query,
        "rawQuery": True,
        "resultFormat": fmt,
        "alias": alias,
    }


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to new rows."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> dict[str, int]:
        """Grid position of the next panel of this size."""
        if self.x + width > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.x += width
        self.row_height = max(self.row_height, height)
        return pos

    def panel(
        self,
        kind: str,
        title: str,
        targets: list[dict[str, Any]],
        width: int,
        height: int,
        description: str,
        unit: str = "short",
        options: dict[str, Any] | None = None,
        interval: str | None = None,
        extra_defaults: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One panel dict with a fresh id."""
        panel: dict[str, Any] = {
            "id": self.next_id,
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DATASOURCE,
            "gridPos": self.place(width, height),
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, **(extra_defaults or {})}, "overrides": []},
            "options": options or {},
        }
        if interval:
            panel["interval"] = interval  # Grafana's "min interval": never group finer than this
        self.next_id += 1
        return panel


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], tags: list[str]) -> dict:
    """A complete dashboard model for file provisioning (id null: Grafana assigns its own)."""
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tickguard", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": TIME_RANGE,
        "refresh": REFRESH,
        "timepicker": {},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [
            {"title": "Fraud detection — live", "type": "link", "url": f"/d/{LIVE_UID}"},
            {"title": "Pipeline health", "type": "link", "url": f"/d/{HEALTH_UID}"},
        ],
        "panels": panels,
    }


def fraud_live() -> dict:
    """Fraud detection — live: what the model sees and how well it does, from transactions_scored."""
    lay = Layout()
    timeseries = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    stat = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    panels = [
        lay.panel(
            "timeseries",
            "Incoming and scored transactions",
            [
                target(
                    "A",
                    f'SELECT count("Amount") / ($__interval_ms / 1000) FROM {INCOMING} '
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "incoming",
                ),
                target(
                    "B",
                    f"SELECT count({SCORE}) / ($__interval_ms / 1000) FROM {SCORED} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "scored",
                ),
            ],
            12,
            8,
            "Points per second written by the generator (transactions) and by Kapacitor's score task.",
            unit="reqps",
            options=timeseries,
        ),
        lay.panel(
            "timeseries",
            "Anomaly rate",
            [
                target(
                    "A",
                    f"SELECT (sum({TP}) + sum({FP})) / count({SCORE}) FROM {SCORED} "
                    "WHERE $timeFilter GROUP BY time($__interval)",
                    "flagged share",
                )
            ],
            12,
            8,
            "Share of scored transactions the model flags (the anomaly_rate alert watches the same).",
            unit="percentunit",
            options=timeseries,
        ),
        lay.panel(
            "stat",
            "Live precision / recall / F1",
            [
                target(
                    "A",
                    f'SELECT sum({TP}) / (sum({TP}) + sum({FP})) AS "precision", '
                    f'sum({TP}) / (sum({TP}) + sum({FN})) AS "recall", '
                    f'2 * sum({TP}) / (2 * sum({TP}) + sum({FP}) + sum({FN})) AS "F1" '
                    f"FROM {SCORED} WHERE $timeFilter",
                )
            ],
            8,
            6,
            "From the tp/fp/fn counts the UDF derives from the ground-truth label Class, over the time range.",
            unit="percentunit",
            options=stat,
            extra_defaults={"decimals": 3, "min": 0, "max": 1},
        ),
        lay.panel(
            "stat",
            "Confusion counts",
            [
                target(
                    "A",
                    f'SELECT sum({TP}) AS "TP", sum({FP}) AS "FP", sum({FN}) AS "FN", sum({TN}) AS "TN" '
                    f"FROM {SCORED} WHERE $timeFilter",
                )
            ],
            8,
            6,
            "True/false positives and negatives over the time range.",
            options=stat,
        ),
        lay.panel(
            "timeseries",
            "Unscored points",
            [
                target(
                    "A",
                    f"SELECT count({LATENCY}) - count({SCORE}) FROM {SCORED} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "unscored",
                )
            ],
            8,
            6,
            "Points that left the UDF without a score (their 'error' field says why); should stay 0.",
            options=timeseries,
        ),
        lay.panel(
            "table",
            "Flagged transactions",
            [
                target(
                    "A",
                    f'SELECT "txid", "Amount", {SCORE} FROM {SCORED} '
                    f"WHERE {FLAG} = true AND $timeFilter ORDER BY time DESC LIMIT 200",
                    fmt="table",
                )
            ],
            12,
            10,
            "The latest transactions the model flags (each also raised a fraud_alert in Kapacitor).",
            options={"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]},
        ),
        lay.panel(
            "histogram",
            "Score distribution",
            [
                target(
                    "A",
                    f"SELECT {SCORE} FROM {SCORED} WHERE $timeFilter AND {IS_SCORED} = true "
                    "ORDER BY time DESC LIMIT 20000",
                    "score",
                )
            ],
            12,
            10,
            "Fraud scores of the latest (at most 20 000) scored transactions.",
            options={"bucketSize": 0.02, "bucketOffset": 0, "combine": False},
        ),
        lay.panel(
            "timeseries",
            "Scoring latency p50 / p99",
            [
                target(
                    "A",
                    f'SELECT percentile({LATENCY}, 50) AS "p50", percentile({LATENCY}, 99) AS "p99" '
                    f"FROM {SCORED} WHERE $timeFilter GROUP BY time($__interval)",
                    "$col",
                )
            ],
            24,
            8,
            "latency_ms as the UDF reports it: from the point's arrival at the UDF to its score "
            "(batching and the REST call included).",
            unit="ms",
            options=timeseries,
        ),
    ]
    return dashboard(
        LIVE_UID,
        "Fraud detection — live",
        "Live scoring of replayed credit-card transactions by the tickguard model.",
        panels,
        ["fraud"],
    )


def pipeline_health() -> dict:
    """Pipeline health: Kapacitor's own statistics (_kapacitor) and the scoring throughput."""
    lay = Layout()
    timeseries = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    stats_interval = "10s"  # Kapacitor writes its statistics every 10 s ([stats] stats-interval)
    panels = [
        lay.panel(
            "timeseries",
            "Kapacitor ingress (points/s)",
            [
                target(
                    "A",
                    f'SELECT non_negative_derivative(max("points_received"), 1s) FROM {KAPACITOR}."ingress" '
                    'WHERE $timeFilter AND "database" = \'fraud\' GROUP BY time($__interval), "measurement"',
                    "$tag_measurement",
                )
            ],
            12,
            8,
            "Points InfluxDB forwards to Kapacitor through its subscription, per measurement.",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Points per node (points/s)",
            [
                target(
                    "A",
                    f'SELECT non_negative_derivative(max("collected"), 1s) FROM {KAPACITOR}."edges" '
                    f'WHERE $timeFilter AND "task" =~ {OUR_TASKS} '
                    'GROUP BY time($__interval), "task", "parent", "child"',
                    "$tag_task: $tag_parent → $tag_child",
                )
            ],
            12,
            8,
            "Throughput of every edge of tickguard's tasks (Kapacitor's edges statistics).",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Node errors (per second)",
            [
                target(
                    "A",
                    f'SELECT non_negative_derivative(max("errors"), 1s) FROM {KAPACITOR}."nodes" '
                    f'WHERE $timeFilter AND "task" =~ {OUR_TASKS} GROUP BY time($__interval), "task", "node"',
                    "$tag_task/$tag_node",
                )
            ],
            12,
            8,
            "Errors counted by each node of tickguard's tasks; should stay 0.",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "UDF throughput (points/s)",
            [
                target(
                    "A",
                    f'SELECT non_negative_derivative(max("collected"), 1s) FROM {KAPACITOR}."edges" '
                    'WHERE $timeFilter AND "task" = \'score\' AND "child" =~ /^tickguard/ '
                    'GROUP BY time($__interval), "child"',
                    "into UDF",
                ),
                target(
                    "B",
                    f'SELECT non_negative_derivative(max("collected"), 1s) FROM {KAPACITOR}."edges" '
                    'WHERE $timeFilter AND "task" = \'score\' AND "parent" =~ /^tickguard/ '
                    'GROUP BY time($__interval), "parent"',
                    "out of UDF",
                ),
            ],
            12,
            8,
            "Points entering and leaving the tickguard UDF node of the score task.",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Scoring throughput (API side, points/s)",
            [
                target(
                    "A",
                    f"SELECT count({SCORE}) / ($__interval_ms / 1000) FROM {SCORED} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "scored by the API",
                ),
                target(
                    "B",
                    f"SELECT (count({LATENCY}) - count({SCORE})) / ($__interval_ms / 1000) FROM {SCORED} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "unscored",
                ),
            ],
            12,
            8,
            "Points the REST model service scored (derived from transactions_scored; no Prometheus needed).",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Scoring latency (mean / p99, ms)",
            [
                target(
                    "A",
                    f'SELECT mean({LATENCY}) AS "mean", percentile({LATENCY}, 99) AS "p99" FROM {SCORED} '
                    "WHERE $timeFilter GROUP BY time($__interval)",
                    "$col",
                )
            ],
            12,
            8,
            "Time points spend in the UDF, REST call included.",
            unit="ms",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "table",
            "Alerts by rule",
            [
                target(
                    "A",
                    f'SELECT count("value") AS "alerts" FROM {ALERTS} WHERE $timeFilter GROUP BY "alertName", "level"',
                    fmt="table",
                )
            ],
            12,
            8,
            "Alert events Kapacitor wrote to chronograf.autogen.alerts (Chronograf's alert history).",
            options={"showHeader": True},
        ),
        lay.panel(
            "stat",
            "Kapacitor tasks",
            [
                target(
                    "A",
                    f'SELECT last("num_enabled_tasks") AS "enabled tasks", last("num_subscriptions") AS '
                    f'"subscriptions" FROM {KAPACITOR}."kapacitor" WHERE $timeFilter',
                )
            ],
            12,
            8,
            "Enabled tasks and InfluxDB subscriptions Kapacitor reports.",
            options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        ),
    ]
    return dashboard(
        HEALTH_UID,
        "Pipeline health",
        "Kapacitor statistics and scoring throughput of the tickguard pipeline.",
        panels,
        ["kapacitor"],
    )


DASHBOARDS = {"fraud-live.json": fraud_live, "pipeline-health.json": pipeline_health}

# Grafana's interval rounding (kbn.roundInterval): (upper bound of the raw interval, rounded interval), ms.
_ROUNDING = (
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1_500, 1_000), (3_500, 2_000),
    (7_500, 5_000), (12_500, 10_000), (17_500, 15_000), (25_000, 20_000), (45_000, 30_000),
    (90_000, 60_000), (210_000, 120_000), (450_000, 300_000), (750_000, 600_000), (1_050_000, 900_000),
    (1_500_000, 1_200_000), (2_700_000, 1_800_000), (5_400_000, 3_600_000),
)  # fmt: skip


def _parse_interval_ms(text: str) -> int:
    units = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * units[unit]
    raise ValueError(f"interval {text!r}")


def format_interval(ms: int) -> str:
    """Grafana's textual form of an interval: 500ms, 10s, 2m, 1h."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def grafana_interval_ms(range_ms: int, max_data_points: int, min_interval: str | None) -> int:
    """$__interval as Grafana computes it: range / max data points, rounded, at least the min interval."""
    raw = range_ms / max(1, max_data_points)
    rounded = next((value for bound, value in _ROUNDING if raw <= bound), 3_600_000)
    floor = _parse_interval_ms(min_interval) if min_interval else 0
    return max(rounded, floor)


def interpolate(query: str, start_ms: int, end_ms: int, interval_ms: int) -> str:
    """Substitute Grafana's InfluxQL macros the way its InfluxDB datasource does."""
    return (
        query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
        .replace("$__interval_ms", str(interval_ms))
        .replace("$__interval", format_interval(interval_ms))
    )


def panel_queries(board: dict, start_ms: int, end_ms: int, datasource_min_interval: str | None = None):
    """(panel title, InfluxQL) for every target, interpolated for the range like Grafana would.

    maxDataPoints defaults to the panel's width in pixels; a dashboard column is about 80 px wide.
    """
    for panel in board["panels"]:
        width_px = panel["gridPos"]["w"] * 80
        interval = grafana_interval_ms(
            end_ms - start_ms,
            panel.get("maxDataPoints", width_px),
            panel.get("interval") or datasource_min_interval,
        )
        for target in panel["targets"]:
            yield panel["title"], interpolate(target["query"], start_ms, end_ms, interval)


def render(builder) -> str:
    """Dashboard JSON exactly as committed (sorted keys are not used: Grafana keeps panel order)."""
    return json.dumps(builder(), indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every dashboard into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, builder in DASHBOARDS.items():
        path = directory / name
        path.write_text(render(builder), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Rewrite the committed dashboard files."""
    parser = argparse.ArgumentParser(description=__doc__)
    default_dir = Path(__file__).resolve().parents[3] / "grafana" / "dashboards"
    parser.add_argument("--out", type=Path, default=default_dir, help="default %(default)s")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
