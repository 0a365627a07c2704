"""Two detectors live at once in one local stack (issues 14 and 16): fraud and shuttle served by one
scoring service, scored by one UDF agent, each with the four tasks `tickguard deploy` makes from the task
templates (score, per-point alert, anomaly rate, scoring errors) in one Kapacitor, each fed by the
product's generator. For each detector: points out = points in, every flag and score equals what the
service answers, alerts reach Chronograf's alert history and the alert log under the detector's name,
every panel query of its dashboards returns data, and a backfill after an agent kill brings points out
back to points in.

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
from tests._panels import panels_without_data
from tests._wait import poll
from tickguard.detectors import load_detector
from tickguard.influx import quote_ident
from tickguard.kapacitor_client import KapacitorError
from tickguard.stack import deploy
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


def test_both_detectors_tasks_run_from_the_templates_in_one_kapacitor(stack: LocalStack) -> None:
    client = stack.runtime.kapacitor_client()
    for name in ("fraud", "shuttle"):
        for task_id, template_id in zip(deploy.task_ids(name), deploy.TEMPLATE_IDS, strict=True):
            task = client.get_task(task_id)
            assert task.enabled and task.executing, f"{task_id}: {task.error}"
            assert task.raw["template-id"] == template_id
    assert client.get_task("score_shuttle").dbrps == [("shuttle", "autogen")]
    # What Chronograf's Manage Tasks lists: every task of both detectors (and the shared one), and the
    # templates they are made from.
    listed = requests.get(f"{stack.kapacitor_url}/kapacitor/v1/tasks", timeout=10).json()["tasks"]
    assert {t["id"] for t in listed} == set(stack.task_ids())
    templates = requests.get(f"{stack.kapacitor_url}/kapacitor/v1/templates", timeout=10).json()["templates"]
    assert {t["id"] for t in templates} == set(deploy.TEMPLATE_IDS)
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
    ("changes", "message"),
    [
        ({"model": "nosuch"}, "does not serve model 'nosuch'"),
        ({"keep": '"f1'}, "unclosed double quote"),
        ({"flag_field": "anomaly"}, "labelField 'anomaly' equals flagField 'anomaly'"),
        ({"score_field": "scored"}, "collides with a field the agent writes itself"),
    ],
)
def test_kapacitor_shows_why_the_agent_refused_a_task(stack, changes: dict, message: str) -> None:
    (score,) = [t for t in deploy.plan(stack.detectors["shuttle"]) if t.template_id == deploy.SCORE_TEMPLATE]
    task_vars = {**score.vars, **{name: {"type": "string", "value": v} for name, v in changes.items()}}
    client = stack.runtime.kapacitor_client()
    # Kapacitor starts the task, then its UDF node sends the init request: the refusal fails the task a
    # moment later, with the agent's message as the task's error.
    with contextlib.suppress(KapacitorError):
        client.define_task_from_template("refused", score.template_id, dbrps=score.dbrps, vars=task_vars)
    deadline = time.monotonic() + 15
    task = client.get_task("refused")
    while not task.error and time.monotonic() < deadline:
        time.sleep(0.2)
        task = client.get_task("refused")
    assert message in task.error
    assert not task.executing
    client.delete_task("refused")


def _flagged(stack: LocalStack, detector: str) -> list[dict]:
    from tickguard.agent.schema import schema_for

    spec = stack.detectors[detector]
    schema = schema_for(spec)
    return stack.query(
        f"SELECT * FROM {quote_ident(schema.measurement)} WHERE {quote_ident(schema.flag_field)} = true",
        spec.source.database,
    )


def _alert_history(stack: LocalStack, alert_name: str) -> list[dict]:
    try:
        return stack.query(
            f'SELECT * FROM "alerts" WHERE "alertName" = \'{alert_name}\'', database="chronograf"
        )
    except Exception:  # the chronograf database appears with the first alert
        return []


@pytest.mark.parametrize("detector", ["fraud", "shuttle"])
def test_each_flagged_point_alerts_under_the_detectors_name(stack, replayed, detector: str) -> None:
    flagged = _flagged(stack, detector)
    assert flagged, f"the {detector} rows should contain points the model flags"
    alert_name = f"{detector}_alert"
    history = poll(lambda: (h := _alert_history(stack, alert_name)) and len(h) >= len(flagged) and h, 30)
    assert history and len(history) == len(flagged), (len(history or []), len(flagged))
    id_field = stack.detectors[detector].output.id_field
    for row in history:
        assert row["level"] == "CRITICAL" and row["triggerType"] == "threshold"
        assert row["message"].startswith(f"{detector} flagged: ")
        if id_field:  # one alert per flagged id (fraud: txid), else one alert ID for the detector
            assert row["alertID"] == f"{alert_name}:{row[id_field]}" and row[id_field] in row["message"]
        else:
            assert row["alertID"] == alert_name
    assert sorted(r["value"] for r in history) == pytest.approx(sorted(p["score"] for p in flagged))

    # Chronograf's alert history page runs exactly this query (ui/src/alerts/apis) on database chronograf.
    lower = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    upper = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    shown = stack.query(
        f"SELECT host, value, level, alertName FROM alerts WHERE time >= '{lower}' AND time <= '{upper}' "
        "ORDER BY time desc LIMIT 1000",
        database="chronograf",
    )
    assert sum(r["alertName"] == alert_name for r in shown) == len(flagged)

    # The alert log: one line per alert, naming the detector's task; the JSON records beside it.
    def lines() -> list[str]:
        found = [x for x in stack.alert_log.read_text().splitlines() if f" CRITICAL {alert_name}" in x]
        return found if len(found) >= len(flagged) else []

    logged = poll(lines, 15)
    assert len(logged) == len(flagged) and all(f"  {detector} flagged: " in x for x in logged)


def test_every_dashboard_panel_query_returns_data_for_each_detector(stack, replayed) -> None:
    """fraud's and shuttle's live dashboards and Pipeline health, every query as Grafana interpolates it."""
    empty = panels_without_data(stack, time.time_ns())
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_backfill_after_an_agent_kill_leaves_points_out_equal_points_in_per_detector(stack, replayed) -> None:
    """Kill the agent, write to both detectors, restart it and heal the tasks, backfill each detector's
    score task: every point written meanwhile is scored exactly once."""
    from tests.fixtures.pipeline import Pipeline
    from tickguard.ops.backfill import Backfiller
    from tickguard.ops.config import backfill_settings
    from tickguard.ops.livetask import settings_for_task
    from tickguard.stack.generator import load_holdout

    faulty = Pipeline(stack, probe=None)
    client = stack.runtime.kapacitor_client()
    start_ns = time.time_ns()
    faulty.kill_udf()
    written = {}
    for name in ("fraud", "shuttle"):
        spec = stack.detectors[name]
        rows = load_holdout(detector=spec).iloc[-150:]
        writer = InfluxWriter(replace(stack.influx_settings(), database=spec.source.database))
        try:
            report = replay(rows, ReplayPlan(rate=0, batch_size=50), writer, detector=spec)
        finally:
            writer.close()
        written[name] = report.written
    faulty.start_udf()
    for name in ("fraud", "shuttle"):
        client.reload_task(deploy.task_ids(name)[0])  # what the watchdog does after an agent restart
    time.sleep(3)
    end_ns = time.time_ns()
    base = replace(
        backfill_settings({}),
        influx_url=stack.influx_url,
        api_url=stack.api_url,
        kapacitor_url=stack.kapacitor_url,
        username="",
        password="",
    )
    window = f"time >= {start_ns} AND time <= {end_ns}"
    for name in ("fraud", "shuttle"):
        spec = stack.detectors[name]
        settings = settings_for_task(base, deploy.task_ids(name)[0])
        assert settings.scored_measurement == spec.output.measurement
        report = Backfiller(settings).run(start_ns, end_ns)
        assert report.missing > 0, f"{name}: the agent's death lost no point: the fault did not bite"
        source = stack.query(
            f"SELECT count(*) FROM {quote_ident(spec.source.measurement)} WHERE {window}",
            spec.source.database,
        )
        scored = stack.query(
            f'SELECT count("score") AS scored, count("scored") AS total FROM '
            f"{quote_ident(spec.output.measurement)} WHERE {window}",
            spec.source.database,
        )
        points_in = max(v for k, v in source[0].items() if k != "time")
        assert points_in == written[name]
        # Every point written while the agent was dead is scored, once (backfilled points have no latency).
        assert scored[0]["scored"] == scored[0]["total"] == points_in, (name, scored, points_in)
