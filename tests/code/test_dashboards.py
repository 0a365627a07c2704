"""Grafana: provisioning YAML and dashboard JSON (fixed uids, datasource by uid, id null, generated from code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tickguard.stack import dashboards

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def datasource_provisioning() -> dict:
    return yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yaml").read_text())


def test_committed_dashboards_equal_the_generated_ones() -> None:
    assert sorted(p.name for p in DASHBOARD_FILES) == sorted(dashboards.DASHBOARDS)
    for path in DASHBOARD_FILES:
        expected = dashboards.render(dashboards.DASHBOARDS[path.name])
        assert path.read_text(encoding="utf-8") == expected, (
            f"{path.name} is stale: run `python -m tickguard.stack.dashboards`"
        )


def test_datasource_has_a_fixed_uid_and_reads_with_the_reader_account() -> None:
    (source,) = datasource_provisioning()["datasources"]
    assert source["uid"] == dashboards.DATASOURCE_UID
    assert source["type"] == "influxdb" and source["access"] == "proxy"
    assert source["url"] == "http://influxdb:8086"
    assert source["jsonData"]["dbName"] == "fraud"
    assert source["user"] == "${INFLUXDB_READER_USER}"
    assert source["secureJsonData"]["password"] == "${INFLUXDB_READER_PASSWORD}"


def test_dashboard_provider_points_at_the_mounted_dashboard_directory() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "tickguard.yaml").read_text())
    (entry,) = provider["providers"]
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["../grafana/dashboards"] == entry["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_uids_ids_and_datasource_references(path: Path) -> None:
    board = load(path)
    assert board["id"] is None
    assert board["uid"] in {dashboards.LIVE_UID, dashboards.HEALTH_UID}
    panel_ids = [panel["id"] for panel in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "influxdb", "uid": dashboards.DATASOURCE_UID}, panel["title"]
        assert panel["targets"], f"panel {panel['title']} has no query"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == dashboards.DATASOURCE_UID
            assert target["rawQuery"] is True
            assert "$timeFilter" in target["query"], f"{panel['title']}: query ignores the time range"
    text = path.read_text()
    assert "${DS_" not in text and '"datasource": "' not in text, "datasource referenced by name"


def test_live_dashboard_covers_the_issue_panels() -> None:
    titles = {panel["title"] for panel in dashboards.fraud_live()["panels"]}
    for wanted in (
        "Incoming and scored transactions",
        "Anomaly rate",
        "Flagged transactions",
        "Score distribution",
        "Live precision / recall / F1",
        "Scoring latency p50 / p99",
        "Unscored points",
    ):
        assert wanted in titles
    queries = " ".join(t["query"] for p in dashboards.pipeline_health()["panels"] for t in p["targets"])
    assert '"_kapacitor"."autogen"."edges"' in queries and '"_kapacitor"."autogen"."nodes"' in queries
