"""Training any detector: shuttle from its CSV and from a real influxd, string labels, clear refusals.

The shuttle set (7.2% anomalies) is the one the absolute SMOTE ratio of 0.05 crashed on; a fast shuttle
model must train in well under a minute (CI trains it for the serving and agent tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tests.fixtures.model import shuttle_csv
from tickguard import modelstore
from tickguard.detectors import load_detector
from tickguard.influx import encode_line

TICKGUARD = [sys.executable, "-m", "tickguard.cli"]
SHUTTLE_ROWS, SHUTTLE_ANOMALIES = 49_097, 3_511


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TICKGUARD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_fast_shuttle_model_trains_in_well_under_a_minute_and_records_its_detector(shuttle_fast_model_dir):
    spec = load_detector("shuttle")
    card = modelstore.read_card(shuttle_fast_model_dir)
    assert card["training"]["seconds"] < 40
    assert card["detector"] == spec.to_dict() and card["detector_sha256"] == spec.sha256
    assert card["features"] == [f"f{i}" for i in range(1, 10)] and card["label"]["field"] == "anomaly"
    assert card["data"]["rows"] == SHUTTLE_ROWS and card["data"]["positives"] == SHUTTLE_ANOMALIES
    split = card["split"]
    assert split["train_rows"] == 20_000 and split["holdout_rows"] == SHUTTLE_ROWS - int(0.8 * SHUTTLE_ROWS)
    assert card["model"]["params"]["sampler"] == "none"  # 7.2% anomalies: nothing to resample
    assert card["tuning"]["trials_failed"] == []
    holdout = card["metrics"]["holdout"]
    assert holdout["auprc"] > 0.95 and holdout["precision"] >= 0.9 and holdout["recall"] > 0.9
    production = modelstore.resolve_model_dir(shuttle_fast_model_dir.parent)
    assert production == shuttle_fast_model_dir.resolve()


def test_fast_shuttle_model_is_served_compiled(shuttle_fast_model_dir):
    from tickguard.data import load_detector_frame
    from tickguard.scoring.predictor import Predictor

    spec = load_detector("shuttle")
    predictor = Predictor.load(shuttle_fast_model_dir, max_rows=50_000, detector=spec)
    assert predictor.scored_by == "compiled"
    X = load_detector_frame(spec)[list(spec.feature_fields)].to_numpy()
    np.testing.assert_allclose(predictor.score(X), predictor.reference_score(X), rtol=0, atol=1e-12)


def test_evaluate_rescores_the_shuttle_holdout_as_the_card_says(shuttle_fast_model_dir):
    root = shuttle_fast_model_dir.parent.parent
    result = run_cli("evaluate", "--detector", "shuttle", "--json", env={"TICKGUARD_MODELS_DIR": str(root)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    card = modelstore.read_card(shuttle_fast_model_dir)
    assert report["matches_card"] and report["detector"] == "shuttle"
    assert report["holdout"]["confusion_matrix"] == card["metrics"]["holdout"]["confusion_matrix"]
    assert report["targets_met"] == {}  # shuttle has no targets: figures are reported only


def test_detector_features_reproduce_fraud_features_on_the_real_rows(dataset):
    from tickguard.features import DetectorFeatures, FraudFeatures

    spec = load_detector("fraud")
    X = dataset[list(spec.feature_fields)].to_numpy()
    generic = DetectorFeatures.from_spec(spec).fit(X).transform(X)
    np.testing.assert_array_equal(generic, FraudFeatures().fit(X).transform(X))


def test_the_committed_pickled_fraud_model_still_unpickles_through_the_alias(production_model):
    # Models pickled before the move name tickguard.training.features.FraudFeatures (or the new class).
    pipeline = production_model.estimator.pipeline
    step = pipeline.named_steps["features"]
    assert type(step).__name__ in {"FraudFeatures", "DetectorFeatures"}
    import tickguard.training.features as alias

    assert alias.FraudFeatures.__module__ == "tickguard.features"


def detector_file(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(body)
    return path


STRING_LABEL_DETECTOR = """
name = "{name}"
features = ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"]
[source]
database = "{name}"
measurement = "readings"
[data]
csv = "{csv}"
[time]
column = ""
synthetic_step_seconds = 1
[label]
field = "state"
positive = ["fault", "bypass"]
[output]
measurement = "readings_scored"
[model]
name = "{name}"
[threshold]
policy = "precision"
target = 0.9
"""


def test_a_string_label_with_several_positive_values_trains_as_0_1(tmp_path: Path):
    source = pd.read_csv(shuttle_csv()).iloc[:12_000]
    rng = np.random.default_rng(0)
    anomalous = source.pop("anomaly").to_numpy() == 1
    source["state"] = np.where(anomalous, rng.choice(["fault", "bypass"], len(source)), "normal")
    csv_path = tmp_path / "shuttle-states.csv"
    source.to_csv(csv_path, index=False)
    detectors = tmp_path / "detectors"
    detectors.mkdir()
    detector_file(detectors, "states", STRING_LABEL_DETECTOR.format(name="states", csv=csv_path))
    env = {"TICKGUARD_DETECTORS_DIR": str(detectors), "TICKGUARD_MODELS_DIR": str(tmp_path / "models")}
    result = run_cli("train", "--detector", "states", "--fast", "--trials", "2", env=env)
    assert result.returncode == 0, result.stderr
    card = modelstore.read_card(Path(result.stdout.strip().splitlines()[-1]))
    assert card["data"]["positives"] == int(anomalous.sum()) and card["label"]["positive"] == [
        "fault",
        "bypass",
    ]
    assert card["split"]["holdout_positives"] == int(anomalous[int(0.8 * len(source)) :].sum())
    assert card["metrics"]["holdout"]["auprc"] > 0.9


def test_too_few_anomalies_is_refused_in_one_line_naming_the_counts(tmp_path: Path):
    source = pd.read_csv(shuttle_csv()).iloc[:3000]
    source["anomaly"] = 0
    source.loc[[100, 900, 2900], "anomaly"] = 1
    csv_path = tmp_path / "few.csv"
    source.to_csv(csv_path, index=False)
    env = {"TICKGUARD_MODELS_DIR": str(tmp_path / "models")}
    result = run_cli("train", "--detector", "shuttle", "--fast", "--csv", str(csv_path), env=env)
    assert result.returncode == 1
    assert "too few anomalies to tune" in result.stderr and "has 2 in 2400 rows" in result.stderr
    assert "at least 3 in each of its 3 time blocks" in result.stderr and "Traceback" not in result.stderr


def test_train_from_influx_reads_the_source_in_pages_and_equals_training_on_the_csv(
    influx_server, tmp_path: Path, shuttle_fast_model_dir
):
    """The shuttle rows written to a real influxd (one a second, as the detector says), read back paged
    by time, train the same model as the CSV does: same rows, same split, same figures."""
    spec = load_detector("shuttle")
    frame = pd.read_csv(shuttle_csv())
    database = "shuttle_train_from_influx"
    influx_server.create_database(database)
    start_ns = 1_700_000_000 * 10**9
    fields = list(frame.columns)
    lines = (
        encode_line(
            spec.source.measurement,
            {"source": "test"},
            dict(zip(fields, row, strict=True)),
            start_ns + i * 10**9,
            types={"anomaly": "integer"},
        )
        for i, row in enumerate(frame.itertuples(index=False, name=None))
    )
    influx_server.write_lines(lines, database)

    detectors = tmp_path / "detectors"
    detectors.mkdir()
    text = spec.path.read_text().replace('database = "shuttle"', f'database = "{database}"')
    detector_file(detectors, "shuttle", text)
    env = {
        "TICKGUARD_DETECTORS_DIR": str(detectors),
        "TICKGUARD_MODELS_DIR": str(tmp_path / "models"),
        "TICKGUARD_INFLUXDB_URL": influx_server.url,
    }
    end = "2023-11-15T12:00:00Z"  # the last row (49,096 s after the first) is at 2023-11-15T11:51:36Z
    result = run_cli(
        "train", "--detector", "shuttle", "--fast", "--from-influx",
        "--start", "2023-11-14T22:13:20Z", "--end", end, "--page", "2h", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("train: read")]
    assert len(progress) == 7 and progress[-1].startswith(f"train: read {SHUTTLE_ROWS:,} rows of readings")
    card = modelstore.read_card(Path(result.stdout.strip().splitlines()[-1]))
    assert card["data"]["source"] == "influxdb" and card["data"]["database"] == database
    assert card["data"]["rows"] == SHUTTLE_ROWS and card["data"]["positives"] == SHUTTLE_ANOMALIES
    from_csv = modelstore.read_card(shuttle_fast_model_dir)
    assert card["split"]["holdout_positives"] == from_csv["split"]["holdout_positives"]
    assert card["threshold"] == from_csv["threshold"]
    assert card["metrics"]["holdout"] == from_csv["metrics"]["holdout"]

    result = run_cli(
        "train", "--detector", "shuttle", "--fast", "--from-influx",
        "--start", "2020-01-01T00:00:00Z", "--end", "2020-01-02T00:00:00Z", env=env,
    )  # fmt: skip
    assert result.returncode == 1 and "no rows of 'readings'" in result.stderr
