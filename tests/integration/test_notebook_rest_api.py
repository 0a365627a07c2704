"""Runs notebooks/05_rest_api.ipynb top to bottom (it starts and stops its own service)."""

from __future__ import annotations

import os

import pytest

from tests._deps import require
from tests._notebooks import NOTEBOOK_DIR, run_notebook
from tickguard.data.dataset import default_csv_path

NOTEBOOK = NOTEBOOK_DIR / "05_rest_api.ipynb"


@pytest.mark.notebooks
@pytest.mark.slow
def test_rest_api_notebook_runs(service_models_dir, monkeypatch):
    require(default_csv_path().is_file(), "creditcard.csv missing: run `tickguard data fetch`")
    monkeypatch.setenv("TICKGUARD_FAST", "1")
    monkeypatch.setenv("TICKGUARD_MODELS_DIR", str(service_models_dir))
    monkeypatch.delenv("TICKGUARD_API_URL", raising=False)
    outputs = run_notebook(NOTEBOOK)
    assert "largest difference from /predict: 0.0" in outputs
    assert "local service stopped" in outputs
    assert os.environ.get("TICKGUARD_API_URL") is None
