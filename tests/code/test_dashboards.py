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


def _tracked(pattern: str) -> list[Path]:
    """The files git tracks under `pattern` (a user's own detector or dashboard beside them is not ours)."""
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "--", pattern], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / name for name in listed]


def test_committed_dashboards_equal_the_generated_ones() -> None:
    from tickguard.detectors.spec import load_detector_file

    specs = [load_detector_file(path) for path in _tracked("detectors/*.toml")]
    generated = dashboards.committed_dashboards(specs)
    committed = _tracked("grafana/dashboards/*.json")
    assert sorted(p.name for p in committed) == sorted(generated)
    assert {"fraud-live.json", "shuttle-live.json", "pipeline-health.json"} <= set(generated)
    for path in committed:
        expected = dashboards.render(generated[path.name])
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
    live = {dashboards.live_uid(spec.name) for spec in dashboards.bundled_detectors()}
    assert board["uid"] in live | {dashboards.HEALTH_UID}
    panel_ids = [panel["id"] for panel in board["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in board["panels"]:
        if panel["type"] == "text":  # "no label": nothing to query
            continue
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


LIVE_PANELS = (
    "Incoming and scored points",
    "Anomaly rate",
    "Live precision / recall / F1",
    "Confusion counts",
    "Unscored points",
    "Flagged points",
    "Score distribution",
    "Scoring latency p50 / p99",
)


def _queries(board: dict) -> dict[str, list[str]]:
    return {panel["title"]: [t["query"] for t in panel["targets"]] for panel in board["panels"]}


def test_each_bundled_detector_has_a_live_dashboard_reading_its_own_measurements() -> None:
    from tickguard.detectors import load_detector

    fraud = dashboards.detector_live(load_detector("fraud"))
    assert (fraud["uid"], fraud["title"]) == ("tickguard-fraud-live", "Fraud detection — live")
    assert [p["title"] for p in fraud["panels"]] == list(LIVE_PANELS)
    queries = _queries(fraud)
    assert queries["Flagged points"] == [
        'SELECT "txid", "Amount", "score" FROM "fraud"."autogen"."transactions_scored" '
        'WHERE "anomaly" = true AND $timeFilter ORDER BY time DESC LIMIT 200'
    ]
    shuttle = dashboards.detector_live(load_detector("shuttle"))
    assert shuttle["uid"] == "tickguard-shuttle-live"
    queries = _queries(shuttle)
    text = " ".join(q for qs in queries.values() for q in qs)
    assert '"shuttle"."autogen"."readings_scored"' in text and '"shuttle"."autogen"."readings"' in text
    assert "fraud" not in text and "transactions" not in text
    # shuttle's label is called `anomaly`, so its flag is `flagged`: the rate and the table read the flag.
    assert all('"flagged" = true' in q for q in queries["Anomaly rate"][:1] + queries["Flagged points"])
    # The anomaly rate is the flagged share (not tp + fp): flagged / scored, joined on time by Grafana.
    assert all('"tp"' not in q for q in queries["Anomaly rate"])
    rate = next(p for p in shuttle["panels"] if p["title"] == "Anomaly rate")
    assert [t["id"] for t in rate["transformations"]] == ["joinByField", "calculateField"]
    binary = rate["transformations"][1]["options"]["binary"]
    assert (binary["left"], binary["right"]) == tuple(t["alias"] for t in rate["targets"])


def test_a_detector_without_a_label_gets_no_label_panels_and_every_other_panel(tmp_path) -> None:
    from tickguard.detectors import load_detector

    path = tmp_path / "meters.toml"
    path.write_text(
        'name = "meters"\nfeatures = ["flow", "pressure"]\n'
        '[source]\ndatabase = "water"\nmeasurement = "meters"\n'
        '[time]\ncolumn = ""\nsynthetic_step_seconds = 1\n'
        '[output]\nmeasurement = "meters_scored"\nid_field = "meter"\n'
        '[threshold]\npolicy = "fixed"\ntarget = 0.7\n'
    )
    board = dashboards.detector_live(load_detector(path))
    assert [p["title"] for p in board["panels"]] == list(LIVE_PANELS)
    for panel in board["panels"]:
        if panel["title"] in ("Live precision / recall / F1", "Confusion counts"):
            assert panel["type"] == "text" and panel["targets"] == []
            assert panel["options"]["content"].startswith("## no label")
        else:
            assert panel["targets"], panel["title"]
            for query in (t["query"] for t in panel["targets"]):
                assert '"tp"' not in query and '"water"."autogen"' in query, query
    written = dashboards.write_live(tmp_path / "out", load_detector(path))
    assert written.name == "meters-live.json" and load(written)["uid"] == "tickguard-meters-live"


def test_pipeline_health_reads_every_detectors_tasks() -> None:
    board = dashboards.pipeline_health()
    queries = " ".join(q for qs in _queries(board).values() for q in qs)
    assert '"_kapacitor"."autogen"."edges"' in queries and '"_kapacitor"."autogen"."nodes"' in queries
    assert "'fraud'" not in queries and "= 'score'" not in queries
    for spec in dashboards.bundled_detectors():
        assert f'"{spec.source.database}"."autogen"."{spec.output.measurement}"' in queries
    import re

    tasks = re.compile(dashboards.OUR_TASKS.strip("/"))
    from tickguard.stack.deploy import task_ids

    for name in ("fraud", "shuttle", "my-data"):
        assert all(tasks.fullmatch(task_id) for task_id in task_ids(name))
    assert not tasks.fullmatch("kapacitor_stats")


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_query_names_its_database_so_one_datasource_serves_every_detector(path: Path) -> None:
    import re

    for panel in load(path)["panels"]:
        for target in panel["targets"]:
            sources = re.findall(r'FROM ("[^"]+"\.("[^"]*")?\.)?', target["query"])
            assert sources and all(database for database, _rp in sources), (panel["title"], target["query"])
