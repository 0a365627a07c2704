"""Two detectors live at once (issue 14, item 9): fraud and shuttle served by one scoring service, scored
by one UDF agent in two tasks of one Kapacitor (fraud's score.tick and score_shuttle rendered from
detectors/shuttle.toml), each fed by the product's generator. Points out = points in for each detector,
and every flag and score equals what the service answers for the same rows.

The shuttle model is the training pipeline's fast model (`shuttle_fast_model_dir`) when that fixture
exists, else a small random forest fitted here on the shuttle training split and saved for the detector
with tickguard.modelstore. The fraud model is the committed production model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from tests._deps import require
from tickguard.detectors import load_detector
from tickguard.influx import quote_ident
from tickguard.kapacitor_client import KapacitorError
from tickguard.stack import tasks
from tickguard.stack.generator import InfluxWriter, ReplayPlan, load_holdout, replay
from tickguard.stack.local import LocalStack

pytestmark = [pytest.mark.tick, pytest.mark.slow]

FRAUD_POINTS = 400
SHUTTLE_POINTS = 300
ARRIVAL_TIMEOUT_S = 90
REPO = Path(__file__).resolve().parents[2]


def _shuttle_model(request: pytest.FixtureRequest, root: Path) -> None:
    """root/shuttle/production: the fast-trained model if the fixture exists, else a small forest."""
    from tickguard import modelstore

    try:
        model_dir = request.getfixturevalue("shuttle_fast_model_dir")
    except pytest.FixtureLookupError:
        model_dir = None
    if model_dir is not None:
        (root / "shuttle").symlink_to(Path(model_dir).parent, target_is_directory=True)
        return
    from sklearn.ensemble import RandomForestClassifier

    from tickguard.data import load_detector_frame, time_split

    spec = load_detector("shuttle")
    train, _holdout = time_split(load_detector_frame(spec))
    features = list(spec.feature_fields)
    forest = RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(train[features].to_numpy(), train[spec.label.field].to_numpy())
    card = {"version": "live-shuttle-1", "features": features, "threshold": 0.5, "kind": "test fixture"}
    modelstore.save_model(forest, card, root / "shuttle" / "live-shuttle-1", detector=spec)
    modelstore.promote(root / "shuttle", "live-shuttle-1")


@pytest.fixture(scope="module")
def models_root(request: pytest.FixtureRequest, tmp_path_factory) -> Path:
    """A models root with fraud (the committed production model) and shuttle."""
    from tickguard.data.config import data_settings

    for name in ("fraud", "shuttle"):
        csv = data_settings().csv_for(load_detector(name))
        require(csv.is_file(), f"{csv} missing: run `make data`")
    require((REPO / "models" / "fraud" / "production").exists(), "models/fraud/production missing")
    root = tmp_path_factory.mktemp("two-detectors") / "models"
    root.mkdir()
    (root / "fraud").symlink_to(REPO / "models" / "fraud", target_is_directory=True)
    _shuttle_model(request, root)
    return root


@pytest.fixture(scope="module")
def stack(tick_binaries, models_root: Path, tmp_path_factory) -> LocalStack:
    workdir = tmp_path_factory.mktemp("two-detectors-stack")
    local = LocalStack(workdir, models_dir=models_root, detectors=("fraud", "shuttle"), watchdog=False)
    local.start()
    yield local
    local.stop()


def _rows(detector: str, count: int) -> pd.DataFrame:
    """The first holdout rows plus positives from later in the holdout, so some points are surely flagged."""
    spec = load_detector(detector)
    holdout = load_holdout(detector=spec)
    label = holdout[spec.label.field]
    positive = label.map(spec.label.is_positive)
    later = holdout.iloc[count // 2 :][positive.iloc[count // 2 :]].head(count // 10)
    return pd.concat([holdout.iloc[: count - len(later)], later])


@pytest.fixture(scope="module")
def replayed(stack: LocalStack) -> dict[str, pd.DataFrame]:
    """Replay both detectors' rows (one after the other) and wait until every point is scored."""
    rows = {"fraud": _rows("fraud", FRAUD_POINTS), "shuttle": _rows("shuttle", SHUTTLE_POINTS)}
    for name, frame in rows.items():
        spec = stack.detectors[name]
        writer = InfluxWriter(replace(stack.influx_settings(), database=spec.source.database))
        try:
            report = replay(frame, ReplayPlan(rate=0, batch_size=100), writer, detector=spec)
        finally:
            writer.close()
        assert (report.written, report.failed) == (len(frame), 0), name
    deadline = time.monotonic() + ARRIVAL_TIMEOUT_S
    while time.monotonic() < deadline:
        if all(stack.scored_count(name) >= len(frame) for name, frame in rows.items()):
            break
        time.sleep(0.5)
    time.sleep(2)  # nothing more may arrive: exactly N, not N plus duplicates
    return rows


def _points(stack: LocalStack, detector: str, measurement: str) -> list[dict]:
    spec = stack.detectors[detector]
    return stack.query(f"SELECT * FROM {quote_ident(measurement)}", spec.source.database)


def test_both_score_tasks_run_in_one_kapacitor(stack: LocalStack) -> None:
    client = stack.runtime.kapacitor_client()
    for task_id in ("score", "score_shuttle", *tasks.FRAUD_TASK_IDS):
        task = client.get_task(task_id)
        assert task.enabled and task.executing, f"{task_id}: {task.error}"
    assert client.get_task("score_shuttle").dbrps == [("shuttle", "autogen")]
    served = {m["name"] for m in requests.get(f"{stack.api_url}/models", timeout=10).json()["models"]}
    assert served == {"fraud", "shuttle"}


@pytest.mark.parametrize("detector", ["fraud", "shuttle"])
def test_points_out_equal_points_in_for_each_detector(stack, replayed, detector: str) -> None:
    spec = stack.detectors[detector]
    sent = len(replayed[detector])
    assert len(_points(stack, detector, spec.source.measurement)) == sent
    scored = _points(stack, detector, spec.output.measurement)
    assert len(scored) == sent
    assert all(point["scored"] is True for point in scored), [
        p.get("error") for p in scored if not p["scored"]
    ][:3]


@pytest.mark.parametrize("detector", ["fraud", "shuttle"])
def test_flags_and_scores_equal_the_services_answers(stack, replayed, detector: str) -> None:
    from tickguard.agent.schema import CONFUSION, schema_for

    spec = stack.detectors[detector]
    schema = schema_for(spec)
    source = {p["time"]: p for p in _points(stack, detector, spec.source.measurement)}
    scored = _points(stack, detector, spec.output.measurement)
    features = requests.get(f"{stack.api_url}/model?model={spec.model.name}", timeout=10).json()["features"]
    times = [p["time"] for p in scored]
    body = {"columns": features, "data": [[float(source[t][name]) for name in features] for t in times]}
    answer = requests.post(f"{stack.api_url}/predict?model={spec.model.name}", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    flagged = 0
    for point, prediction in zip(scored, predictions, strict=True):
        assert point["score"] == pytest.approx(prediction["score"], abs=1e-9)
        assert point[schema.flag_field] is prediction["anomaly"]
        flagged += prediction["anomaly"]
        # The label is kept as written (shuttle's `anomaly` is not overwritten by the flag) and the
        # confusion cell follows the detector's positive values.
        label = point[schema.label_field]
        assert label == source[point["time"]][schema.label_field]
        expected_cell = (
            ("tp" if prediction["anomaly"] else "fn")
            if spec.label.is_positive(label)
            else ("fp" if prediction["anomaly"] else "tn")
        )
        assert {cell: point[cell] for cell in CONFUSION} == {c: int(c == expected_cell) for c in CONFUSION}
    assert flagged, f"the {detector} rows should contain points the model flags"
    assert np.isfinite([p["latency_ms"] for p in scored]).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (".model('nosuch')", "does not serve model 'nosuch'"),
        (".model('shuttle').fields('f10=x,f1=y')", "'f10' that model 'shuttle' does not have"),
        (".model('shuttle').labelField('anomaly')", "labelField 'anomaly' equals flagField 'anomaly'"),
        (".model('shuttle').labelField('anomaly').flagField('flagged').threshold(2.0)", "threshold(2.0)"),
    ],
)
def test_kapacitor_shows_why_the_agent_refused_a_task(stack, options: str, message: str) -> None:
    script = tasks.detector_scripts(("shuttle",))["score_shuttle"]
    rendered = ".model('shuttle')\n        .labelField('anomaly')\n        .flagField('flagged')"
    assert rendered in script
    script = script.replace(rendered, options)
    client = stack.runtime.kapacitor_client()
    # Kapacitor starts the task, then its UDF node sends the init request: the refusal fails the task a
    # moment later, with the agent's message as the task's error.
    with contextlib.suppress(KapacitorError):
        client.define_task("refused", script, dbrps=[], enabled=True)
    deadline = time.monotonic() + 15
    task = client.get_task("refused")
    while not task.error and time.monotonic() < deadline:
        time.sleep(0.2)
        task = client.get_task("refused")
    assert message in task.error
    assert not task.executing
    client.delete_task("refused")
