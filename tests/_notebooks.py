"""Executing the numbered notebooks the way `make test` does: fast profile, committed without outputs."""

from __future__ import annotations

import re
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
# Notebooks with a test of their own (it prepares their environment and checks what they print).
DEDICATED = {"05_rest_api", "06_live_deployment", "07_bring_your_own_data"}


def numbered_notebooks() -> list[Path]:
    """notebooks/NN_*.ipynb, sorted."""
    return sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if re.match(r"\d\d_", p.name))


def run_notebook(path: Path, timeout: int = 300) -> str:
    """Execute a notebook top to bottom (raises on a failing cell); return its text outputs joined."""
    import nbclient
    import nbformat

    book = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), (
        f"{path.name} is committed with outputs; clear them"
    )
    nbclient.NotebookClient(
        book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()  # the kernel inherits the test's environment; CellExecutionError names the failing cell
    errors = [o for c in book.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: {errors}"
    return "".join(
        str(output.get("text", ""))
        for cell in book.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
