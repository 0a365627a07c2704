"""Every numbered notebook runs top to bottom on the fast profile (TICKGUARD_FAST=1) without an error.

05, 06 and 07 have tests of their own (test_notebook_rest_api.py, test_e2e_notebook_live.py,
test_notebook_byod.py), which also check what they print; they are not run a second time here.
"""

from __future__ import annotations

import pytest

from tests._notebooks import DEDICATED, numbered_notebooks, run_notebook

GENERIC = [p for p in numbered_notebooks() if p.stem not in DEDICATED]


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", GENERIC, ids=[p.stem for p in GENERIC])
def test_notebook_runs_in_fast_mode(path, monkeypatch):
    monkeypatch.setenv("TICKGUARD_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    run_notebook(path)


def test_every_numbered_notebook_exists():
    stems = {p.stem for p in numbered_notebooks()}
    for prefix in ("01_", "02_", "03_", "04_"):
        assert any(s.startswith(prefix) for s in stems), f"notebook {prefix}* missing"
    assert stems >= DEDICATED, f"missing: {DEDICATED - stems}"
