"""The Grafana dashboards, built from code so every panel's query is written once and testable.

`python -m tickguard.stack.dashboards` rewrites grafana/dashboards/*.json; a test checks the committed
files equal what this module builds. All queries are InfluxQL against the provisioned InfluxDB 1.8
datasource, referenced by its fixed uid, and name their database and retention policy in full, so one
datasource serves every detector.

One live dashboard per detector, generated from its detector file (`<name>-live.json`, uid
`tickguard-<name>-live`), rather than one dashboard with a `detector` template variable. Why: what a
panel reads differs per detector in more than one value — database, retention policy, source and scored
measurements, the flag's name, the id and display columns of the flagged-points table, and whether
there is a label at all. A variable would need a hidden, hand-kept variable for each of those, kept in
step in Grafana's UI, and a table's columns cannot follow a variable; a detector without a label would
still show empty precision panels. Generated, each panel's query is exact and tested against the live
stack, the detector file stays the one place to edit, and a label-based panel of an unlabelled detector
is generated as the words "no label". A windowed detector (tickguard.windows) also gets its series with the
expected range its window gave each point, the flagged points and the score, per series, and its
flagged-points table names the series, the value and that range: a person sees why a point was flagged.
Every detector file in the repository's detectors/ gets its
committed dashboard (DASHBOARDS); a detector kept elsewhere gets its own with
`python -m tickguard.stack.dashboards --detector NAME --out DIR` (or `tickguard deploy --dashboards DIR`)
into a folder Grafana's file provider reads. *Pipeline health* is one dashboard for all detectors: it
reads Kapacitor's statistics of every tickguard task, tagged with the task ids that name the detectors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tickguard.agent.schema import CONFUSION, EXPECTED_HIGH, EXPECTED_LOW, LATENCY_MS
from tickguard.agent.schema import SCORED as SCORED_FIELD
from tickguard.influx import qualified, quote_ident

if TYPE_CHECKING:
    from tickguard.detectors.spec import DetectorSpec

DATASOURCE_UID = "tickguard-influxdb"
DATASOURCE = {"type": "influxdb", "uid": DATASOURCE_UID}
HEALTH_UID = "tickguard-pipeline-health"
TIME_RANGE = {"from": "now-15m", "to": "now"}
REFRESH = "5s"
SCHEMA_VERSION = 39

KAPACITOR = '"_kapacitor"."autogen"'
ALERTS = '"chronograf"."autogen"."alerts"'
# Every detector's tasks (tickguard.stack.deploy.task_ids): score / score_<name>, <name>_alert, ...
OUR_TASKS = "/^(score|score_.+|.+_alert|.+_anomaly_rate|.+_scoring_errors)$/"
SCORE_TASKS = "/^score(_.+)?$/"
# Kapacitor's own databases: not a detector's points.
NOT_DETECTOR_DATABASES = "/^(_kapacitor|_internal|chronograf)$/"
# The scored point's fields (tickguard.agent.schema), quoted for InfluxQL.
IS_SCORED, LATENCY = map(quote_ident, (SCORED_FIELD, LATENCY_MS))
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
        # Every tickguard dashboard, wherever it was generated from, is one click away (Grafana's tag links).
        "links": [
            {
                "title": "tickguard dashboards",
                "type": "dashboards",
                "tags": ["tickguard"],
                "asDropdown": True,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


def live_uid(detector: str) -> str:
    """The uid of a detector's live dashboard: /d/tickguard-<name>-live."""
    return f"tickguard-{detector}-live"


def live_file(detector: str) -> str:
    """The file name of a detector's live dashboard."""
    return f"{detector}-live.json"


def live_title(detector: str) -> str:
    """`Fraud detection — live`, `Shuttle detection — live`, ..."""
    return f"{detector[:1].upper()}{detector[1:]} detection — live"


def _no_label_panel(lay: Layout, title: str, width: int, height: int, detector: str) -> dict[str, Any]:
    """What a label-based panel shows for a detector without a label: the words "no label", no query."""
    panel = lay.panel(
        "text",
        title,
        [],
        width,
        height,
        f"Detector {detector} has no [label]: live precision, recall and confusion counts need one.",
        options={"mode": "markdown", "content": f"## no label\n\nDetector `{detector}` has no `[label]`."},
    )
    del panel["datasource"], panel["fieldConfig"]
    return panel


def _series_panel(lay: Layout, spec: DetectorSpec, scored: str) -> dict[str, Any]:
    """A windowed detector's series with the range its window expected and the score beside it, per series
    (the detector's group_by tags): a flagged point is drawn where it left the expected range."""
    from tickguard.agent.schema import schema_for

    schema = schema_for(spec)
    value = quote_ident(spec.feature_fields[0])
    tags = spec.windows.group_by
    by = "".join(f", {quote_ident(tag)}" for tag in tags)
    prefix = "".join(f"$tag_{tag} " for tag in tags)
    columns = f'mean({value}) AS "value"'
    if schema.expected_range:
        columns += (
            f', mean({quote_ident(EXPECTED_LOW)}) AS "expected low", '
            f'mean({quote_ident(EXPECTED_HIGH)}) AS "expected high"'
        )
    score, flag = quote_ident(schema.score_field), quote_ident(schema.flag_field)
    panel = lay.panel(
        "timeseries",
        "Series, expected range and score",
        [
            target(
                "A",
                f"SELECT {columns} FROM {scored} WHERE $timeFilter GROUP BY time($__interval){by} fill(none)",
                f"{prefix}$col",
            ),
            target(
                "B",
                f'SELECT max({value}) AS "flagged" FROM {scored} WHERE $timeFilter AND {flag} = true '
                f"GROUP BY time($__interval){by} fill(none)",
                f"{prefix}$col",
            ),
            target(
                "C",
                f'SELECT max({score}) AS "score" FROM {scored} WHERE $timeFilter '
                f"GROUP BY time($__interval){by} fill(none)",
                f"{prefix}$col",
            ),
        ],
        24,
        9,
        f"{spec.feature_fields[0]} per series with the range its window expected (expected_low/high: "
        "centre -/+ k * spread of the declared rolling window, from the points before each one), the "
        "points the model flagged, and the score (right axis, 0-1). Points still warming up have no range "
        "and no score.",
        options={"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
    )

    def override(pattern: str, **properties: Any) -> dict[str, Any]:
        return {
            "matcher": {"id": "byRegexp", "options": pattern},
            "properties": [
                {"id": key.replace("__", "."), "value": value} for key, value in properties.items()
            ],
        }

    panel["fieldConfig"]["overrides"] = [
        override(".*expected (low|high)$", custom__lineStyle={"fill": "dash", "dash": [6, 4]}),
        override(
            ".*flagged$",
            custom__drawStyle="points",
            custom__pointSize=9,
            color={"mode": "fixed", "fixedColor": "red"},
        ),
        override(".*score$", custom__axisPlacement="right", min=0, max=1, unit="percentunit"),
    ]
    return panel


def detector_live(spec: DetectorSpec) -> dict:
    """<Name> detection — live: what the model sees and how well it does, from the detector's scored points.

    Everything a panel reads comes from the detector file and tickguard.agent.schema: the databases and
    measurements, the flag's name, the id and display fields of the flagged-points table; the label-based
    panels read the tp/fp/fn/tn the agent derives from the label, or say "no label" without one.
    """
    from tickguard.agent.schema import schema_for

    schema = schema_for(spec)
    source = spec.source
    scored = qualified(schema.measurement, source.database, source.retention_policy)
    incoming = qualified(source.measurement, source.database, source.retention_policy)
    score, flag = quote_ident(schema.score_field), quote_ident(schema.flag_field)
    shown = [name for name in (spec.output.id_field, *spec.output.display_fields) if name]
    if (
        spec.windows is not None
    ):  # which series, its value and the range it was expected in: why it was flagged
        shown += [*spec.windows.group_by, *spec.feature_fields]
        if schema.expected_range:
            shown += [EXPECTED_LOW, EXPECTED_HIGH]
    columns = ", ".join([*map(quote_ident, dict.fromkeys(shown)), score])
    # Incoming points: a count needs a field every source point has; the first feature is read by the model.
    any_input = quote_ident(spec.feature_fields[0])
    name = spec.name
    lay = Layout()
    timeseries = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    stat = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "value"}
    panels = [
        lay.panel(
            "timeseries",
            "Incoming and scored points",
            [
                target(
                    "A",
                    f"SELECT count({any_input}) / ($__interval_ms / 1000) FROM {incoming} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "incoming",
                ),
                target(
                    "B",
                    f"SELECT count({score}) / ($__interval_ms / 1000) FROM {scored} "
                    "WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    "scored",
                ),
            ],
            12,
            8,
            f"Points per second written to {source.measurement} and by Kapacitor's score task.",
            unit="reqps",
            options=timeseries,
        ),
    ]
    # The flagged share needs two counts (InfluxQL cannot average a boolean): flagged and scored points per
    # interval, divided by Grafana's binary calculation. It reads the model's flag, so it works unlabelled.
    rate = lay.panel(
        "timeseries",
        "Anomaly rate",
        [
            target(
                "A",
                f"SELECT count({score}) FROM {scored} WHERE $timeFilter AND {flag} = true "
                "GROUP BY time($__interval) fill(0)",
                "flagged",
            ),
            target(
                "B",
                f"SELECT count({score}) FROM {scored} WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                "scored",
            ),
        ],
        12,
        8,
        f"Share of scored points the model flags ({name}_anomaly_rate alerts on the same share).",
        unit="percentunit",
        options=timeseries,
    )
    # The two queries are two frames: joined on time first, then divided row by row.
    rate["transformations"] = [
        {"id": "joinByField", "options": {"byField": "Time", "mode": "outer"}},
        {
            "id": "calculateField",
            "options": {
                "mode": "binary",
                "binary": {"left": "flagged", "operator": "/", "right": "scored"},
                "alias": "flagged share",
                "replaceFields": True,
            },
        },
    ]
    panels.append(rate)
    if spec.windows is not None:
        panels.append(_series_panel(lay, spec, scored))
    if schema.label_field:
        panels += [
            lay.panel(
                "stat",
                "Live precision / recall / F1",
                [
                    target(
                        "A",
                        f'SELECT sum({TP}) / (sum({TP}) + sum({FP})) AS "precision", '
                        f'sum({TP}) / (sum({TP}) + sum({FN})) AS "recall", '
                        f'2 * sum({TP}) / (2 * sum({TP}) + sum({FP}) + sum({FN})) AS "F1" '
                        f"FROM {scored} WHERE $timeFilter",
                    )
                ],
                8,
                6,
                f"From the tp/fp/fn counts the UDF derives from the label {schema.label_field}, over the range.",
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
                        f"FROM {scored} WHERE $timeFilter",
                    )
                ],
                8,
                6,
                "True/false positives and negatives over the time range.",
                options=stat,
            ),
        ]
    else:
        panels += [
            _no_label_panel(lay, "Live precision / recall / F1", 8, 6, name),
            _no_label_panel(lay, "Confusion counts", 8, 6, name),
        ]
    panels += [
        lay.panel(
            "timeseries",
            "Unscored points",
            [
                target(
                    "A",
                    f"SELECT count({LATENCY}) - count({score}) FROM {scored} "
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
            "Flagged points",
            [
                target(
                    "A",
                    f"SELECT {columns} FROM {scored} "
                    f"WHERE {flag} = true AND $timeFilter ORDER BY time DESC LIMIT 200",
                    fmt="table",
                )
            ],
            12,
            10,
            f"The latest points the model flags (each also raised a {name}_alert alert in Kapacitor).",
            options={"showHeader": True, "sortBy": [{"displayName": "Time", "desc": True}]},
        ),
        lay.panel(
            "histogram",
            "Score distribution",
            [
                target(
                    "A",
                    f"SELECT {score} FROM {scored} WHERE $timeFilter AND {IS_SCORED} = true "
                    "ORDER BY time DESC LIMIT 20000",
                    "score",
                )
            ],
            12,
            10,
            "Scores of the latest (at most 20 000) scored points.",
            options={"bucketSize": 0.02, "bucketOffset": 0, "combine": False},
        ),
        lay.panel(
            "timeseries",
            "Scoring latency p50 / p99",
            [
                target(
                    "A",
                    f'SELECT percentile({LATENCY}, 50) AS "p50", percentile({LATENCY}, 99) AS "p99" '
                    f"FROM {scored} WHERE $timeFilter GROUP BY time($__interval)",
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
        live_uid(name),
        live_title(name),
        spec.description or f"Live scoring of {source.database}.{source.measurement} by detector {name}.",
        panels,
        [name],
    )


def pipeline_health(detectors: list[DetectorSpec] | None = None) -> dict:
    """Pipeline health: Kapacitor's own statistics (_kapacitor) for every tickguard task, and the scoring
    throughput and latency of each of `detectors` (default: the repository's)."""
    from tickguard.agent.schema import schema_for

    scored_series = []
    for spec in bundled_detectors() if detectors is None else detectors:
        schema = schema_for(spec)
        where = qualified(schema.measurement, spec.source.database, spec.source.retention_policy)
        scored_series.append((spec.name, where, quote_ident(schema.score_field)))
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
                    f'WHERE $timeFilter AND "database" !~ {NOT_DETECTOR_DATABASES} '
                    'GROUP BY time($__interval), "database", "measurement"',
                    "$tag_database.$tag_measurement",
                )
            ],
            12,
            8,
            "Points InfluxDB forwards to Kapacitor through its subscription, per database and measurement.",
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
                    f'WHERE $timeFilter AND "task" =~ {SCORE_TASKS} AND "child" =~ /^tickguard/ '
                    'GROUP BY time($__interval), "task"',
                    "$tag_task: into UDF",
                ),
                target(
                    "B",
                    f'SELECT non_negative_derivative(max("collected"), 1s) FROM {KAPACITOR}."edges" '
                    f'WHERE $timeFilter AND "task" =~ {SCORE_TASKS} AND "parent" =~ /^tickguard/ '
                    'GROUP BY time($__interval), "task"',
                    "$tag_task: out of UDF",
                ),
            ],
            12,
            8,
            "Points entering and leaving the tickguard UDF node of each detector's score task.",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Scoring throughput (API side, points/s)",
            [
                target(
                    ref,
                    f'SELECT count({score}) / ($__interval_ms / 1000) AS "scored", '
                    f'(count({LATENCY}) - count({score})) / ($__interval_ms / 1000) AS "unscored" '
                    f"FROM {scored} WHERE $timeFilter GROUP BY time($__interval) fill(0)",
                    f"{name} $col",
                )
                for ref, (name, scored, score) in zip(REFS, scored_series, strict=False)
            ],
            12,
            8,
            "Points the REST model service scored and left unscored, per detector (from each detector's "
            "scored measurement; no Prometheus needed).",
            unit="reqps",
            options=timeseries,
            interval=stats_interval,
        ),
        lay.panel(
            "timeseries",
            "Scoring latency (mean / p99, ms)",
            [
                target(
                    ref,
                    f'SELECT mean({LATENCY}) AS "mean", percentile({LATENCY}, 99) AS "p99" FROM {scored} '
                    "WHERE $timeFilter GROUP BY time($__interval)",
                    f"{name} $col",
                )
                for ref, (name, scored, _score) in zip(REFS, scored_series, strict=False)
            ],
            12,
            8,
            "Time points spend in the UDF, REST call included, per detector.",
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


REFS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # Grafana's target refIds


def bundled_detectors() -> list[DetectorSpec]:
    """The detector files of the repository's detectors/ folder (not $TICKGUARD_DETECTORS_DIR's)."""
    from tickguard.detectors.spec import load_detector_file, project_detectors_dir

    return [load_detector_file(path) for path in sorted(project_detectors_dir().glob("*.toml"))]


def _live_builder(spec: DetectorSpec):
    def build() -> dict:
        return detector_live(spec)

    build.__name__ = f"{spec.name}_live"
    return build


def committed_dashboards(specs: list[DetectorSpec] | None = None) -> dict[str, Any]:
    """File name -> builder of every committed dashboard: one live dashboard per bundled detector (or per
    one of `specs`), and Pipeline health."""
    specs = bundled_detectors() if specs is None else specs
    boards: dict[str, Any] = {live_file(spec.name): _live_builder(spec) for spec in specs}
    boards["pipeline-health.json"] = lambda: pipeline_health(specs)
    return boards


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


def check_panels(board: dict, query, min_interval: str | None = None) -> list[tuple[str, str, int]]:
    """(panel title, interpolated query, number of non-null values) for every target of `board` over its
    default range (the last 15 minutes), run through `query(influxql) -> rows`; what Grafana would show."""
    import time

    end_ms = int(time.time() * 1000)
    start_ms = end_ms - 15 * 60 * 1000
    results = []
    for title, influxql in panel_queries(board, start_ms, end_ms, min_interval):
        rows = query(influxql)
        values = sum(1 for row in rows for key, value in row.items() if key != "time" and value is not None)
        results.append((title, influxql, values))
    return results


def render(builder) -> str:
    """Dashboard JSON exactly as committed (sorted keys are not used: Grafana keeps panel order)."""
    return json.dumps(builder(), indent=2, ensure_ascii=False) + "\n"


def write_all(directory: Path) -> list[Path]:
    """Write every committed dashboard into `directory`; returns the paths written."""
    return _write(directory, committed_dashboards())


def write_live(directory: Path, spec: DetectorSpec) -> Path:
    """Write a detector's live dashboard into `directory` (e.g. a folder Grafana provisions from)."""
    (path,) = _write(directory, {live_file(spec.name): _live_builder(spec)})
    return path


def _write(directory: Path, builders: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, builder in builders.items():
        path = directory / name
        path.write_text(render(builder), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Rewrite the committed dashboard files, or write given detectors' live dashboards."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_dir = Path(__file__).resolve().parents[3] / "grafana" / "dashboards"
    parser.add_argument("--out", type=Path, default=default_dir, help="default %(default)s")
    parser.add_argument(
        "--detector",
        action="append",
        dest="detectors",
        metavar="NAME",
        help="write only this detector's live dashboard (name or .toml path; repeatable)",
    )
    args = parser.parse_args(argv)
    if args.detectors:
        from tickguard.detectors import load_detector

        written = [write_live(args.out, load_detector(name)) for name in args.detectors]
    else:
        written = write_all(args.out)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
