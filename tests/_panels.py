"""Every Grafana panel query of a running local stack's dashboards, interpolated as Grafana would."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from tests._wait import poll
from tickguard.stack import dashboards

ROOT = Path(__file__).resolve().parents[1]
STATS_WAIT_S = 90


def datasource_min_interval() -> str:
    """The provisioned datasource's timeInterval (Grafana's floor for $__interval)."""
    provisioning = ROOT / "grafana" / "provisioning" / "datasources" / "influxdb.yaml"
    (source,) = yaml.safe_load(provisioning.read_text())["datasources"]
    return source["jsonData"]["timeInterval"]


def stack_dashboards(stack) -> list[dict]:
    """What Grafana shows for the stack's detectors: each one's live dashboard and Pipeline health."""
    specs = list(stack.detectors.values())
    return [*(dashboards.detector_live(spec) for spec in specs), dashboards.pipeline_health(specs)]


def panels_without_data(stack, since_ns: int) -> list[str]:
    """'<dashboard> / <panel>: <query>' for each query of the stack's dashboards that returns no value,
    over the dashboards' range (now-15m .. now), once Kapacitor's statistics after `since_ns` are in."""

    def stats_ready() -> bool:
        # Rate panels use non_negative_derivative, which needs two samples of each series taken after the
        # replay; Kapacitor samples its statistics every 10 s. Wait for three to be safe.
        rows = stack.query(
            f'SELECT count("num_tasks") FROM "kapacitor" WHERE time > {since_ns}', database="_kapacitor"
        )
        return bool(rows) and rows[0]["count"] >= 3

    assert poll(stats_ready, STATS_WAIT_S, 2), "Kapacitor statistics did not reach _kapacitor"
    empty = []
    interval = datasource_min_interval()
    for board in stack_dashboards(stack):
        assert board["time"] == {"from": "now-15m", "to": "now"}
        now_ms = int(time.time() * 1000)
        start_ms = now_ms - 15 * 60 * 1000
        for title, query in dashboards.panel_queries(board, start_ms, now_ms, interval):
            rows = stack.query(query)
            values = [v for row in rows for k, v in row.items() if k != "time" and v is not None]
            if not values:
                empty.append(f"{board['title']} / {title}: {query}")
    return empty
