"""Runs notebooks/06_live_deployment.ipynb top to bottom on the local stack (it starts and stops it)."""

from __future__ import annotations

import pytest

from tests._deps import require
from tests._notebooks import NOTEBOOK_DIR, run_notebook
from tickguard.data.dataset import default_csv_path
from tickguard.runtime import find_tick_binaries

NOTEBOOK = NOTEBOOK_DIR / "06_live_deployment.ipynb"


@pytest.mark.notebooks
@pytest.mark.tick
@pytest.mark.slow
def test_live_deployment_notebook_runs(service_models_dir, monkeypatch) -> None:
    binaries = find_tick_binaries()
    require(binaries.servers_found, binaries.describe_missing())
    require(default_csv_path().is_file(), "creditcard.csv missing: run `make data`")
    monkeypatch.setenv("TICKGUARD_FAST", "1")
    monkeypatch.setenv("TICKGUARD_MODELS_DIR", str(service_models_dir))
    for name in ("TICKGUARD_INFLUXDB_URL", "TICKGUARD_INFLUXDB_USER", "TICKGUARD_INFLUXDB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    text = run_notebook(NOTEBOOK)
    assert "(local stack started here)" in text
    assert "scored points: 600 of 600 expected" in text
    assert "live precision" in text and "nan" not in text.split("live precision")[1].split("\n")[0]
    assert "0 latest alerts" not in text
    assert "local stack stopped" in text
