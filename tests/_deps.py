"""Skip-or-fail for missing test dependencies: locally a missing binary or data set skips, in CI it fails."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """True when running under CI (CI=true), where a missing dependency is an error, not a skip."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(condition: bool, reason: str) -> None:
    """Skip the calling test when `condition` is false, or fail it under CI."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"missing test dependency (CI=true, so this fails instead of skipping): {reason}")
    pytest.skip(reason)
