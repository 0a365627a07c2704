"""The benchmark's Kapacitor baseline is what kapacitord computes: the TICKscript of
benchmarks/unsupervised.py (window().periodCount(N) -> mean, stddev, last joined -> z) on the real
kapacitord, fed through its /write endpoint (z written to a real influxd), gives the re-implementation's z for every point,
and its alert fires exactly where z > 3."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.unsupervised import SIGMA_K, SIGMA_RUNTIME_CONFIG, kapacitor_scores, rolling_sigma

pytestmark = pytest.mark.tick

HOUR = 3600 * 10**9


def test_kapacitord_z_equals_the_reimplementation(tick_runtime_factory) -> None:
    rng = np.random.default_rng(5)
    copies = []
    for series, (window, n) in {"a": (24, 200), "b": (12, 90)}.items():
        values = 100 + np.sin(np.arange(n) * 2 * np.pi / window) + rng.normal(0, 0.3, n)
        values[n // 2] += 6.0  # a spike the alert must catch
        values[n // 3 : n // 3 + 15] = values[n // 3 - 1]  # a stuck stretch: std 0 inside the window
        copies.append(
            {"set": f"s{series}", "kind": "mix", "seed": 0, "series": series, "times": np.arange(n) * HOUR,
             "values": values, "window": window}
        )  # fmt: skip
    rt = tick_runtime_factory(**SIGMA_RUNTIME_CONFIG)
    real = kapacitor_scores(copies, {c["set"]: c["window"] for c in copies}, rt)
    for c in copies:
        mine = rolling_sigma(c["values"], c["window"], include_current=True)
        theirs = real[(c["set"], "mix", "0", c["series"])]
        assert np.allclose(theirs, mine, rtol=1e-9, atol=1e-9), np.flatnonzero(~np.isclose(theirs, mine))
        assert (theirs > SIGMA_K).tolist() == (mine > SIGMA_K).tolist()
        assert theirs[len(c["values"]) // 2] > SIGMA_K  # the spike alerts
    alerts = (rt.workdir / "alerts.log").read_text().splitlines()
    assert len(alerts) >= 2  # at least the two spikes reached the alert handler
