"""Runs notebooks/05_rest_api.ipynb top to bottom (it starts and stops its own service)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests._deps import require
from tickguard.data.dataset import default_csv_path

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "05_rest_api.ipynb"


@pytest.mark.notebooks
@pytest.mark.slow
def test_rest_api_notebook_runs(service_models_dir, monkeypatch):
    require(default_csv_path().is_file(), "creditcard.csv missing: run `tickguard data fetch`")
    monkeypatch.setenv("TICKGUARD_FAST", "1")
    monkeypatch.setenv("TICKGUARD_MODELS_DIR", str(service_models_dir))
    monkeypatch.delenv("TICKGUARD_API_URL", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit it with outputs cleared"
    )
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    outputs = "".join(
        str(output.get("text", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "largest difference from /predict: 0.0" in outputs
    assert "local service stopped" in outputs
    assert os.environ.get("TICKGUARD_API_URL") is None
