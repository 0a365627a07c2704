"""Shared pytest setup: fixtures live in tests/fixtures/, one plugin module per area."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # lets tests import `tests._deps` and `tests.fixtures.*`
    sys.path.insert(0, str(ROOT))

# Each plugin is owned by the area it serves; add a line, don't merge files.
pytest_plugins = [
    "tests.fixtures.tmp_hygiene",
    "tests.fixtures.runtime",
    "tests.fixtures.model",
    "tests.fixtures.service",
    "tests.fixtures.udf",
    "tests.fixtures.pipeline",
]
