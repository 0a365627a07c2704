"""`tickguard models import`: a real scikit-learn model trained on the shuttle data, served beside fraud.

The model is a random forest fitted here on the Statlog Shuttle readings (detectors/shuttle.toml,
data/raw/shuttle.csv from `make data`). It is imported with the command line, then one real
`tickguard serve` (gunicorn) serves it next to the committed fraud model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from tests._deps import require
from tickguard.cli import main
from tickguard.modelstore import CARD_FILE, PRODUCTION, detector_models_dir, read_card, resolve_model_dir
from tickguard.training.config import models_dir

SHUTTLE = "shuttle"


@pytest.fixture(scope="module")
def shuttle_frame():
    """The shuttle data set in file order (features f1..f9, label anomaly as 0/1)."""
    from tickguard.data.config import data_settings
    from tickguard.data.dataset import load_detector_frame
    from tickguard.detectors import load_detector

    spec = load_detector(SHUTTLE)
    require(data_settings().csv_for(spec).is_file(), "data/raw/shuttle.csv missing: run `make data`")
    return spec, load_detector_frame(spec)


@pytest.fixture(scope="module")
def shuttle_forest(shuttle_frame, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A random forest fitted on the first 80% of the shuttle rows, saved with joblib; plus the last 20%."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier

    spec, frame = shuttle_frame
    X = frame[list(spec.feature_fields)].to_numpy(dtype=np.float64)
    y = frame[spec.label.field].to_numpy()
    cut = int(0.8 * len(frame))
    forest = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1).fit(
        X[:cut], y[:cut]
    )
    path = tmp_path_factory.mktemp("byom") / "forest.joblib"
    joblib.dump(forest, path)
    return path, X[cut:], y[cut:]


def _fresh_models_dir(tmp_path: Path) -> Path:
    """A models dir holding a copy of the committed fraud model (and its production link)."""
    root = tmp_path / "models"
    shutil.copytree(detector_models_dir(models_dir(), "fraud"), root / "fraud", symlinks=True)
    return root


def test_import_writes_a_card_for_the_detector_and_promotes_it(
    shuttle_forest, shuttle_frame, tmp_path, capsys
):
    spec, _ = shuttle_frame
    root = _fresh_models_dir(tmp_path)
    path, _, _ = shuttle_forest
    argv = ["models", "import", "rf-1", str(path), "--detector", SHUTTLE, "--threshold", "0.4"]
    assert main([*argv, "--models-dir", str(root)]) == 0, capsys.readouterr().err
    card = read_card(resolve_model_dir(detector_models_dir(root, SHUTTLE), PRODUCTION))
    assert card["version"] == "rf-1" and card["threshold"] == 0.4
    assert card["features"] == [f"f{i}" for i in range(1, 10)] == list(spec.feature_fields)
    assert card["detector"] == spec.to_dict() and card["detector_sha256"] == spec.sha256
    assert card["kind"] == "imported sklearn.ensemble._forest.RandomForestClassifier"
    # A second version, not promoted: production stays on rf-1.
    assert main([*argv[:2], "rf-2", *argv[3:], "--no-promote", "--models-dir", str(root)]) == 0
    assert resolve_model_dir(detector_models_dir(root, SHUTTLE)).name == "rf-1"
    assert (detector_models_dir(root, SHUTTLE) / "rf-2" / CARD_FILE).is_file()
    capsys.readouterr()
    assert main(["models", "list", "--models-dir", str(root)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in listed if SHUTTLE in line] == [
        ["*", SHUTTLE, "rf-1"],
        [SHUTTLE, "rf-2", "threshold"],
    ]
    assert any(line.startswith("* fraud") for line in listed)


def test_import_refuses_what_cannot_serve_the_detector(shuttle_forest, shuttle_frame, tmp_path, capsys):
    import joblib
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    spec, frame = shuttle_frame
    X = frame[list(spec.feature_fields)].to_numpy(dtype=np.float64)[:2000]
    y = frame[spec.label.field].to_numpy()[:2000]
    no_proba = tmp_path / "svc.joblib"
    joblib.dump(LinearSVC(max_iter=50).fit(X, y), no_proba)
    narrow = tmp_path / "narrow.joblib"
    joblib.dump(LogisticRegression(max_iter=50).fit(X[:, :8], y), narrow)
    root = _fresh_models_dir(tmp_path)
    cases = [
        (no_proba, SHUTTLE, "LinearSVC has no predict_proba: tickguard serves anomaly probabilities"),
        (
            narrow,
            SHUTTLE,
            "LogisticRegression takes 8 features but detector shuttle has 9 inputs: f1, f2, f3, f4, f5, f6, f7, f8, f9",
        ),
        (
            shuttle_forest[0],
            "fraud",
            "RandomForestClassifier takes 9 features but detector fraud has 30 inputs: ",
        ),
    ]
    capsys.readouterr()
    for file, detector, message in cases:
        argv = ["models", "import", "bad", str(file), "--detector", detector, "--models-dir", str(root)]
        assert main(argv) == 1
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith(f"tickguard models: error: {message}"), line
    assert not (root / SHUTTLE / "bad").exists() and not (root / "fraud" / "bad").exists()


@pytest.mark.slow
def test_the_imported_model_is_served_next_to_fraud(shuttle_forest, tmp_path):
    from tickguard.service.local import LocalService

    root = _fresh_models_dir(tmp_path)
    path, X_holdout, y_holdout = shuttle_forest
    assert (
        main(["models", "import", "rf-1", str(path), "--detector", SHUTTLE, "--models-dir", str(root)]) == 0
    )
    with LocalService(models_dir=root, workers=1, threads=2, log_file=tmp_path / "serve.log") as service:
        listed = {
            entry["name"]: entry
            for entry in requests.get(f"{service.url}/models", timeout=10).json()["models"]
        }
        assert set(listed) == {"fraud", SHUTTLE}
        assert listed[SHUTTLE]["version"] == "rf-1" and listed[SHUTTLE]["features"] == [
            f"f{i}" for i in range(1, 10)
        ]
        assert (
            listed["fraud"]["version"]
            == read_card(detector_models_dir(models_dir(), "fraud") / PRODUCTION)["version"]
        )
        rows = X_holdout[:500]
        tensor = {
            "name": "features",
            "shape": list(rows.shape),
            "datatype": "FP64",
            "data": rows.ravel().tolist(),
        }
        shuttle = requests.post(
            f"{service.url}/v2/models/{SHUTTLE}/infer", json={"inputs": [tensor]}, timeout=30
        )
        assert shuttle.status_code == 200, shuttle.text
        scores = np.array(shuttle.json()["outputs"][0]["data"])
        # The served forest separates the anomalies of rows it never saw.
        assert scores[y_holdout[:500] == 1].mean() > 0.8 > 0.2 > scores[y_holdout[:500] == 0].mean()
        import joblib

        np.testing.assert_allclose(scores, joblib.load(path).predict_proba(rows)[:, 1], rtol=0, atol=1e-12)
        fraud_tensor = {"name": "features", "shape": [1, 30], "datatype": "FP64", "data": [0.0] * 30}
        fraud = requests.post(
            f"{service.url}/v2/models/fraud/infer", json={"inputs": [fraud_tensor]}, timeout=30
        )
        assert fraud.status_code == 200 and fraud.json()["model_name"] == "fraud"
        # /predict reaches each by name; without one it is fraud's.
        record = dict(zip([f"f{i}" for i in range(1, 10)], rows[0].tolist(), strict=True))
        named = requests.post(f"{service.url}/predict?model={SHUTTLE}", json=record, timeout=10).json()
        assert named["model_version"] == "rf-1" and named["score"] == pytest.approx(scores[0], abs=1e-12)
        wrong = requests.post(f"{service.url}/predict", json=record, timeout=10)
        assert wrong.status_code == 400 and "Time" in wrong.text


def test_a_model_fitted_on_a_dataframe_scores_arrays_without_a_warning(shuttle_frame, tmp_path, capsys):
    """A user's model fitted on pandas columns: served from arrays in card order, no per-request warning."""
    import warnings

    import joblib
    from sklearn.linear_model import LogisticRegression

    from tickguard.modelstore import load_model

    spec, frame = shuttle_frame
    columns = frame[list(spec.feature_fields)].iloc[:2000]
    fitted = LogisticRegression(max_iter=200).fit(columns, frame[spec.label.field].iloc[:2000])
    assert list(fitted.feature_names_in_) == list(spec.feature_fields)
    path = tmp_path / "named.joblib"
    joblib.dump(fitted, path)
    root = _fresh_models_dir(tmp_path)
    argv = ["models", "import", "named-1", str(path), "--detector", SHUTTLE, "--models-dir", str(root)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "feature names" not in capsys.readouterr().err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = load_model(resolve_model_dir(detector_models_dir(root, SHUTTLE), PRODUCTION))
        scores = artifact.score(columns.to_numpy(dtype=np.float64)[:50])
    assert np.allclose(scores, fitted.predict_proba(columns.iloc[:50])[:, 1])
    assert [str(w.message) for w in caught if "feature names" in str(w.message)] == []
