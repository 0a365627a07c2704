"""Unlabelled detectors offline: the seed-fixed injector, the event metrics, the unsupervised models and
their training into a servable model directory (real files, a real fit, the model store's checks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tickguard import modelstore
from tickguard.anomaly import IsolationForestModel, RobustResidualModel, threshold_for_share
from tickguard.data.inject import KINDS, InjectionError, inject, natural_anomalies, noise_scale
from tickguard.detectors import parse_detector
from tickguard.training import unsupervised as u
from tickguard.training.series_metrics import event_metrics, point_adjusted, segments_of

HOUR = 3600 * 10**9


def daily_series(n: int = 900, seed: int = 3) -> np.ndarray:
    """An hourly series with a daily pattern and jitter, like water flow."""
    rng = np.random.default_rng(seed)
    hours = np.arange(n)
    return 100 + 2 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 0.2, n)


# ------------------------------------------------------------------------------------------ injector


@pytest.mark.parametrize("kind", KINDS)
def test_injector_is_deterministic_and_labels_exactly_what_it_changed(kind: str) -> None:
    values = daily_series()
    one = inject(values, kind, seed=7, period=24, region=(200, 800))
    again = inject(values, kind, seed=7, period=24, region=(200, 800))
    other = inject(values, kind, seed=8, period=24, region=(200, 800))
    assert np.array_equal(one.values, again.values) and one.segments == again.segments
    assert one.segments != other.segments
    assert len(one.segments) == 3 and one.labels.sum() == sum(s.end - s.start for s in one.segments)
    changed = one.values != values
    assert not changed[one.labels == 0].any()  # nothing outside the labelled segments moved
    for a, b in zip(one.segments, one.segments[1:], strict=False):
        assert b.start - a.end >= 24  # at least one period apart
    assert all(s.start >= 200 and s.end <= 800 for s in one.segments)
    noise = noise_scale(values)
    for s in one.segments:
        part = slice(s.start, s.end)
        if kind == "spike":
            assert (
                s.end - s.start == 1 and 6 * noise <= abs(one.values[s.start] - values[s.start]) <= 10 * noise
            )
        elif kind == "level_shift":
            shift = one.values[part] - values[part]
            assert np.allclose(shift, shift[0]) and 4 * noise <= abs(shift[0]) <= 6 * noise
        elif kind == "stuck":
            assert np.all(one.values[part] == values[s.start - 1])
        elif kind == "seasonal_break":
            assert np.array_equal(one.values[part], values[s.start - 12 : s.end - 12])
        else:
            assert np.std(one.values[part] - values[part]) > 2 * noise


@pytest.mark.parametrize("kind", ["spike", "level_shift"])
def test_a_fixed_size_moves_by_that_many_noise_at_the_seeds_places(kind: str) -> None:
    values = daily_series()
    drawn = inject(values, kind, seed=7, period=24, region=(200, 800))
    fixed = inject(values, kind, seed=7, period=24, region=(200, 800), size=12.5)
    assert fixed.segments == drawn.segments and np.array_equal(fixed.labels, drawn.labels)
    noise = noise_scale(values)
    for s in fixed.segments:
        moved = fixed.values[s.start : s.end] - values[s.start : s.end]
        same_sign = np.sign(drawn.values[s.start] - values[s.start])
        np.testing.assert_allclose(moved, same_sign * 12.5 * noise, rtol=1e-12)


def test_injector_refuses_what_it_cannot_do() -> None:
    values = daily_series(200)
    with pytest.raises(InjectionError, match="seasonal_break needs a series with a seasonal period"):
        inject(values, "seasonal_break", 0)
    with pytest.raises(InjectionError, match=r"region \[0, 30\) has 30 points: too short for 3 level_shift"):
        inject(values, "level_shift", 0, period=24, region=(0, 30))
    with pytest.raises(InjectionError, match="unknown anomaly kind 'drift'"):
        inject(values, "drift", 0)
    with pytest.raises(InjectionError, match=r"size=0: a size is a positive amount in noise"):
        inject(values, "spike", 0, size=0)
    with pytest.raises(InjectionError, match=r"for spike, level_shift, variance_burst only \(not stuck\)"):
        inject(values, "stuck", 0, period=24, size=3.0)


def test_natural_anomalies_mark_an_outage_and_the_windows_it_spoils() -> None:
    values = daily_series(400)
    values[100:110] = 24.3  # an outage like waterflow's
    marked = natural_anomalies(values, 24)
    assert marked[100:110].all() and marked[110 : 109 + 48].all()
    assert marked[:100].sum() == 0 and marked[200:].sum() == 0


# ------------------------------------------------------------------------------------------- metrics


def test_event_metrics_by_hand() -> None:
    labels = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    scores = np.array([0.1, 0.2, 0.9, 0.3, 0.1, 0.8, 0.2, 0.3, 0.1, 0.1])
    assert segments_of(labels) == [(1, 4), (6, 8)]
    assert point_adjusted(labels, scores >= 0.5).tolist() == [0, 1, 1, 1, 0, 1, 0, 0, 0, 0]
    m = event_metrics(labels, scores, 0.5)
    # adjusted: tp 3 (first event), fp 1 (index 5), fn 2 (second event) -> P 3/4, R 3/5
    assert m["pa_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert (m["events"], m["events_found"], m["delay_points"]) == (2, 1, 1.0)
    assert m["false_alarm_rate"] == pytest.approx(1 / 5)


# -------------------------------------------------------------------------------------------- models

DETECTOR = """
name = "pipe"
features = ["flow"]
[source]
database = "pipe"
measurement = "flow"
[data]
csv = "pipe.csv"
[time]
column = "time"
unit = "ns"
[output]
measurement = "flow_scored"
[windows]
group_by = ["station"]
lags = [1]
differences = [1]
seasonal = 24
calendar = ["hour_of_day"]
expected_range = { window = 0 }
[[windows.rolling]]
points = 24
stats = ["mean", "std", "median", "mad"]
[[windows.rolling]]
points = 6
stats = ["std"]
[anomaly]
model = "auto"
contamination = 0.02
"""


def pipe_spec(tmp_path: Path):
    path = tmp_path / "pipe.toml"
    path.write_text(DETECTOR)
    return parse_detector(DETECTOR, str(path), path, expected_name="pipe")


def pipe_frame(n: int = 900) -> pd.DataFrame:
    return pd.DataFrame(
        {"time": np.arange(n, dtype=np.int64) * HOUR, "station": "a", "flow": daily_series(n)}
    )


@pytest.mark.parametrize("model_class", [RobustResidualModel, IsolationForestModel])
def test_models_score_injected_anomalies_above_ordinary_points(model_class, tmp_path: Path) -> None:
    spec = pipe_spec(tmp_path)
    case = u.cases_from_frame(pipe_frame(), spec)[0]
    X, ok = u.window_matrix(spec, case)
    train = np.flatnonzero(ok[:500])
    model = model_class(spec.model_columns).fit(X[train])
    for kind in ("spike", "level_shift", "stuck"):
        injected = inject(case.values, kind, seed=1, period=24, region=(550, 900))
        Xi, oki = u.window_matrix(spec, case, injected.values)
        rows = np.flatnonzero(oki & (np.arange(len(oki)) >= 550))
        scores = model.score(Xi[rows])
        labels = injected.labels[rows]
        assert np.all((scores > 0) & (scores < 1))
        assert event_metrics(labels, scores, threshold_for_share(model.score(X[train]), 0.02))["auprc"] > 0.3
        # every injected segment reaches a score above the 99th percentile of the clean series' same rows
        clean = np.quantile(model.score(X[rows]), 0.99)
        for segment in injected.segments:
            inside = (rows >= segment.start) & (rows < segment.end)
            assert scores[inside].max() > clean, (kind, segment)
    proba = model.predict_proba(X[train][:5])
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1.0)


def test_the_daily_profile_sees_a_broken_pattern_and_a_spike_does_not_echo_a_season_later(
    tmp_path: Path,
) -> None:
    # The lag of the season lets the model see whether a seasonal difference's reference was unusual.
    text = DETECTOR.replace("lags = [1]", "lags = [1, 24]")
    spec = parse_detector(text, "pipe.toml", tmp_path / "pipe.toml", expected_name="pipe")
    case = u.cases_from_frame(pipe_frame(), spec)[0]
    X, ok = u.window_matrix(spec, case)
    train = np.flatnonzero(ok[:500])
    model = RobustResidualModel(spec.model_columns).fit(X[train])
    names = list(model.evidence.names)
    profile, season = names.index("profile_hour(flow)"), names.index("season24(flow)")
    clean = model.evidence.transform(X[550:900])
    # Half a day out of phase: every value is in range, but not at its usual hour.
    broken = inject(case.values, "seasonal_break", seed=2, period=24, count=1, region=(600, 900))
    Xb, _ = u.window_matrix(spec, case, broken.values)
    (segment,) = broken.segments
    inside = model.evidence.transform(Xb[segment.start : segment.end])[:, profile]
    assert np.median(inside) > np.quantile(clean[:, profile], 0.99)
    # One day after a spike the spike is the seasonal reference: that difference is discounted.
    spiked = case.values.copy()
    spiked[700] += 3 * np.ptp(case.values)  # far beyond the daily swing
    Xs, _ = u.window_matrix(spec, case, spiked)
    echo = model.evidence.transform(Xs[724:725])[0, season]
    undiscounted = abs(Xs[724, spec.model_columns.index("sdiff24(flow)")] - model.evidence.centres_[season])
    assert echo < 0.5 * undiscounted / model.evidence.scales_[season]


def test_training_writes_a_servable_model_whose_card_fits_the_detector(tmp_path: Path) -> None:
    spec = pipe_spec(tmp_path)
    out = tmp_path / "models" / "pipe" / "v1"
    card = u.train_unsupervised(spec, out, pipe_frame(), period=24, n_trials=4, seed=0)
    assert card["features"] == list(spec.request_fields) == list(spec.model_columns)
    assert card["model"]["kind"] in ("robust_zscore", "isolation_forest")
    assert card["tuning"]["trials_run"] == 4
    assert set(card["metrics"]["holdout_by_kind"]) == set(KINDS)
    assert 0 < card["threshold"] < 1
    artifact = modelstore.load_model(out)  # hash-checked, as the service loads it
    assert modelstore.card_detector_differences(artifact.card, spec) == []
    stored = json.loads((out / modelstore.CARD_FILE).read_text())
    assert stored["threshold_rule"].startswith("contamination 0.02")
    # The declared contamination holds on the training rows (the threshold is their 98th percentile).
    case = u.cases_from_frame(pipe_frame(), spec)[0]
    prepared = u.prepare(spec, case, 24, valid_seeds=(), holdout_seeds=())
    flagged = artifact.estimator.predict_proba(prepared.X[prepared.train_rows])[:, 1] >= card["threshold"]
    assert 0.005 <= flagged.mean() <= 0.03


def test_the_bundled_waterflow_model_is_served_and_scores_training_features(tmp_path: Path) -> None:
    """models/waterflow/production through the real Flask service: its card fits detectors/waterflow.toml,
    and /predict on the window columns of real water-flow points answers the estimator's own scores."""
    import shutil

    from tests._deps import require
    from tickguard.data.config import data_settings
    from tickguard.detectors import load_detector
    from tickguard.service.app import create_app
    from tickguard.service.config import ServiceConfig

    spec = load_detector("waterflow")
    require(data_settings().csv_for(spec).is_file(), "data/raw/water-flow.csv missing: run `make data`")
    root = Path(__file__).resolve().parents[2] / "models" / "waterflow"
    models = tmp_path / "models"
    shutil.copytree(root, models / "waterflow", symlinks=True)
    artifact = modelstore.load_model(models / "waterflow" / "production")
    assert modelstore.card_detector_differences(artifact.card, spec) == []

    frame = u.detector_long_frame(spec)
    case = u.cases_from_frame(frame, spec)[0]
    X, ok = u.window_matrix(spec, case)
    rows = X[ok][:50]
    app = create_app(ServiceConfig(models_dir=models, log_level="WARNING", admin_token="t"))
    response = app.test_client().post(
        "/predict?model=waterflow",
        json={"columns": list(spec.request_fields), "data": rows.tolist()},
    )
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    scores = np.array([p["score"] for p in body["predictions"]])
    assert np.allclose(scores, artifact.estimator.score(rows), rtol=0, atol=1e-12)
    assert body["threshold"] == artifact.card["threshold"]
    assert [p["anomaly"] for p in body["predictions"]] == (scores >= body["threshold"]).tolist()
