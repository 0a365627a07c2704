"""Runs notebooks/07_bring_your_own_data.ipynb: a CSV that is not in the repository (scikit-learn's
breast-cancer set) to a live detector with the README's commands; checks what the notebook prints."""

from __future__ import annotations

import re

import pytest

from tests._deps import require
from tests._notebooks import NOTEBOOK_DIR, run_notebook
from tickguard.runtime import find_tick_binaries

NOTEBOOK = NOTEBOOK_DIR / "07_bring_your_own_data.ipynb"


@pytest.mark.notebooks
@pytest.mark.tick
@pytest.mark.slow
def test_bring_your_own_data_notebook_goes_live(monkeypatch) -> None:
    binaries = find_tick_binaries()
    require(binaries.servers_found, binaries.describe_missing())
    monkeypatch.setenv("TICKGUARD_FAST", "1")
    for name in ("TICKGUARD_INFLUXDB_URL", "TICKGUARD_KAPACITOR_URL", "TICKGUARD_DEPLOY_DETECTORS"):
        monkeypatch.delenv(name, raising=False)
    text = run_notebook(NOTEBOOK, timeout=600)
    assert "wrote " in text and "cancer.toml: 30 features, label 'diagnosis'" in text
    scored = re.search(r"(\d+) of (\d+) points are in cancer\.cancer_scored", text)
    assert scored and scored.group(1) == scored.group(2) == "200", text[-3000:]
    for task in ("score_cancer", "cancer_alert", "cancer_anomaly_rate", "cancer_scoring_errors"):
        assert f"task {task} " in text and "NOT executing" not in text
    assert re.search(r"[1-9]\d* alert lines", text), "no alert in the alert log"
    assert "cancer_alert:s" in text and "cancer flagged: sample s" in text
    assert "cancer_alert " in text  # the alert history's alertName, grouped
    assert "<- EMPTY" not in text and "cancer-live.json" in text
    assert "everything stopped" in text and "exit status 0" in text
