"""The Flask app through its test client: every route, every error status, headers, metrics."""

from __future__ import annotations

import json
import re

import pytest

from tests.fixtures.service import (
    FEATURES_WITH_TIME,
    FEATURES_WITHOUT_TIME,
    FRAUD,
    LR_MODEL,
    NO_TIME,
    NO_TIME_MODEL,
)
from tickguard.service.app import create_app
from tickguard.service.config import ServiceConfig

TOKEN = "test-admin-token"


@pytest.fixture
def app(service_models_dir, tmp_path):
    """An app serving the fixture models (fraud and notime), with small limits and an admin token."""
    config = ServiceConfig(
        models_dir=service_models_dir,
        max_rows=100,
        max_body_bytes=200_000,
        admin_token=TOKEN,
        log_level="WARNING",
    )
    return create_app(config)


@pytest.fixture
def client(app):
    """Flask test client."""
    return app.test_client()


def test_single_record_scores_with_threshold_and_version(client, holdout_records, production_card):
    response = client.post("/predict", json=holdout_records[0])
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"score", "anomaly", "threshold", "model_version"}
    assert 0.0 <= body["score"] <= 1.0
    assert body["anomaly"] == (body["score"] >= body["threshold"])
    assert body["model_version"] == production_card["version"]


def test_batch_forms_agree_and_keep_input_order(client, holdout_records):
    records = holdout_records[:50]
    by_instances = client.post("/predict", json={"instances": records}).get_json()
    data = [[row[name] for name in FEATURES_WITH_TIME] for row in records]
    by_columns = client.post("/predict", json={"columns": FEATURES_WITH_TIME, "data": data}).get_json()
    singles = [client.post("/predict", json=row).get_json()["score"] for row in records[:5]]
    assert by_instances["predictions"] == by_columns["predictions"]
    assert len(by_instances["predictions"]) == 50
    assert [p["score"] for p in by_instances["predictions"][:5]] == pytest.approx(singles, rel=1e-12)


def test_v2_infer_matches_predict(client, holdout_records, production_card):
    records = holdout_records[:20]
    features = production_card["features"]
    version = production_card["version"]
    flat = [row[name] for row in records for name in features]
    request = {
        "id": "abc",
        "inputs": [{"name": "features", "shape": [20, len(features)], "datatype": "FP64", "data": flat}],
    }
    response = client.post("/v2/models/fraud/infer", json=request)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == "abc" and body["model_name"] == "fraud" and body["model_version"] == version
    outputs = {out["name"]: out for out in body["outputs"]}
    predicted = client.post("/predict", json={"instances": records}).get_json()["predictions"]
    assert outputs["score"]["data"] == pytest.approx([p["score"] for p in predicted], rel=1e-12)
    assert outputs["anomaly"]["data"] == [p["anomaly"] for p in predicted]
    per_feature = [
        {"name": name, "shape": [20], "datatype": "FP64", "data": [row[name] for row in records]}
        for name in FEATURES_WITH_TIME
    ]
    again = client.post(f"/v2/models/fraud/versions/{version}/infer", json={"inputs": per_feature}).get_json()
    assert again["outputs"][0]["data"] == outputs["score"]["data"]


def test_v2_health_metadata_and_readiness(client, production_card):
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").get_json() == {
        "ready": True,
        "models": {FRAUD: True, NO_TIME: True},
    }
    assert client.get("/v2/models/fraud/ready").status_code == 200
    assert client.get(f"/v2/models/{NO_TIME}/ready").get_json()["model_version"] == NO_TIME_MODEL
    meta = client.get("/v2/models/fraud").get_json()
    assert meta["inputs"][0]["shape"] == [-1, len(production_card["features"])]
    assert {out["name"] for out in meta["outputs"]} == {"score", "anomaly"}
    assert client.get("/v2").get_json()["name"] == "tickguard"


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other",
        "/v2/models/other/ready",
        "/v2/models/fraud/versions/v999",
        "/v2/models/fraud/versions/v999/ready",
    ],
)
def test_unknown_model_name_or_version_is_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.is_json and "error" in response.get_json()


def test_unknown_model_infer_is_404(client):
    response = client.post("/v2/models/other/infer", json={"inputs": []})
    assert response.status_code == 404
    assert response.get_json()["code"] == "model_not_found"


def test_model_card_lists_the_features(client, production_card):
    card = client.get("/model").get_json()
    assert card == production_card
    assert card["features"] == FEATURES_WITH_TIME


def test_missing_extra_non_numeric_nan_infinite_fields_are_named(client, holdout_records):
    rows = [dict(holdout_records[i]) for i in range(5)]
    del rows[1]["V5"]
    rows[2]["Extra"] = 1
    rows[3]["V6"] = "abc"
    rows[4]["V7"] = float("nan")
    rows[0]["V8"] = float("inf")
    body = json.dumps({"instances": rows})  # Python writes NaN / Infinity literals
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400
    found = {(p["row"], p["field"]) for p in response.get_json()["problems"]}
    assert found == {(1, "V5"), (2, "Extra"), (3, "V6"), (4, "V7"), (0, "V8")}


def test_malformed_json_is_400(client):
    response = client.post("/predict", data=b'{"V1": 1,,}', content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["code"] == "malformed_json"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client, content_type):
    response = client.post("/predict", data=b'{"V1": 1}', headers={"Content-Type": content_type})
    assert response.status_code == 415
    assert response.get_json()["code"] == "unsupported_media_type"
    assert content_type in response.get_json()["error"]


def test_no_content_type_is_read_as_json(client, holdout_records):
    # tritonclient sends no Content-Type at all; the body is then read as JSON.
    response = client.post("/predict", data=json.dumps(holdout_records[0]).encode())
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == client.post("/predict", json=holdout_records[0]).get_json()
    malformed = client.post("/predict", data=b'{"V1": ')
    assert malformed.status_code == 400 and malformed.get_json()["code"] == "malformed_json"


def test_body_over_the_size_limit_is_413(client):
    big = {"columns": FEATURES_WITH_TIME, "data": [[1.0] * 30] * 5000}
    response = client.post("/predict", data=json.dumps(big), content_type="application/json")
    assert response.status_code == 413
    assert "TICKGUARD_MAX_BODY_BYTES" in response.get_json()["error"]


def test_batch_over_the_row_limit_is_413(client):
    response = client.post("/predict", json={"columns": FEATURES_WITH_TIME, "data": [[1.0] * 30] * 101})
    assert response.status_code == 413
    assert "TICKGUARD_MAX_ROWS" in response.get_json()["error"]
    tensor = {"name": "x", "shape": [101, 30], "datatype": "FP64", "data": [0.0] * (101 * 30)}
    assert client.post("/v2/models/fraud/infer", json={"inputs": [tensor]}).status_code == 413


def test_unknown_route_and_wrong_method_are_json(client):
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.is_json
    response = client.delete("/predict")
    assert response.status_code == 405 and response.is_json
    assert "POST" in response.headers["Allow"]


def test_request_id_is_echoed_or_generated(client, holdout_records):
    response = client.post("/predict", json=holdout_records[0], headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    generated = client.get("/v2/health/live").headers["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/v2/health/live").headers["X-Request-ID"] != generated
    unsafe = client.get("/v2/health/live", headers={"X-Request-ID": "bad id\twith spaces"}).headers[
        "X-Request-ID"
    ]
    assert unsafe != "bad id\twith spaces" and len(unsafe) == 32


def test_empty_batches_return_empty_predictions(client):
    assert client.post("/predict", json={"instances": []}).get_json()["predictions"] == []
    body = client.post("/predict", json={"columns": FEATURES_WITH_TIME, "data": []}).get_json()
    assert body["predictions"] == []


def test_metrics_count_requests_rows_and_model(client, holdout_records):
    client.post("/predict", json={"instances": holdout_records[:7]})
    client.post("/predict", data=b"nope", content_type="text/plain")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tickguard_http_requests_total{endpoint="/predict",method="POST",status="200"} 1.0' in text
    assert 'tickguard_http_requests_total{endpoint="/predict",method="POST",status="415"} 1.0' in text
    assert 'tickguard_rows_scored_total{endpoint="/predict",status="200"} 7.0' in text
    assert re.search(r'tickguard_model_info\{model="fraud",version="[^"]+"\} 1.0', text)
    assert f'tickguard_model_info{{model="{NO_TIME}",version="{NO_TIME_MODEL}"}} 1.0' in text
    assert "tickguard_http_request_duration_seconds_bucket" in text


def test_openapi_describes_every_route(app, client, production_card):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    documented = set(document["paths"])
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in documented or path == "/", f"{path} missing from /openapi.json"
    assert document["components"]["schemas"]["Record"]["required"] == production_card["features"]


def test_admin_reload_swaps_the_model_and_requires_the_token(client, holdout_records, production_card):
    assert client.post("/admin/reload", json={"model": NO_TIME_MODEL}).status_code == 401
    wrong = client.post("/admin/reload", json={}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # The older body spelling {"model": version} on the default model's route.
    response = client.post("/admin/reload", json={"model": LR_MODEL}, headers=headers)
    assert response.status_code == 200
    assert response.get_json()["previous_version"] == production_card["version"]
    assert client.post("/predict", json=holdout_records[0]).get_json()["model_version"] == LR_MODEL
    failed = client.post("/admin/reload", json={"model": "missing"}, headers=headers)
    assert failed.status_code == 404
    assert client.get("/model").get_json()["version"] == LR_MODEL
    outside = client.post("/admin/reload", json={"model": "/etc"}, headers=headers)
    assert outside.status_code in (400, 404)
    # An empty body means "whatever production points at".
    back = client.post("/admin/reload", headers=headers)
    assert back.status_code == 200 and back.get_json()["model_version"] == production_card["version"]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'tickguard_model_reloads_total{result="ok"} 2.0' in text
    assert 'tickguard_model_reloads_total{result="failed"} 2.0' in text


def test_reload_by_name_swaps_only_that_model(client, holdout_records, production_card):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post(f"/admin/reload/{FRAUD}", json={"version": LR_MODEL}).status_code == 401
    swapped = client.post(f"/admin/reload/{FRAUD}", json={"version": LR_MODEL}, headers=headers)
    assert swapped.status_code == 200
    assert swapped.get_json()["model"] == FRAUD and swapped.get_json()["model_version"] == LR_MODEL
    assert client.post(f"/predict?model={NO_TIME}", json=holdout_records[0]).get_json()["model_version"] == (
        NO_TIME_MODEL
    )
    # A version of another detector is not a version of this one.
    other = client.post(f"/admin/reload/{NO_TIME}", json={"version": LR_MODEL}, headers=headers)
    assert other.status_code == 404 and NO_TIME in other.get_json()["error"]
    unknown = client.post("/admin/reload/nope", headers=headers)
    assert unknown.status_code == 404 and "fraud, notime" in unknown.get_json()["error"]
    back = client.post(f"/admin/reload/{FRAUD}", headers=headers)  # empty body: production again
    assert back.get_json()["model_version"] == production_card["version"]


def test_predict_names_the_model_with_a_query_parameter(client, holdout_records, production_card):
    record = holdout_records[0]
    default = client.post("/predict", json=record).get_json()
    named = client.post(f"/predict?model={FRAUD}", json=record).get_json()
    assert default == named and named["model_version"] == production_card["version"]
    # notime does not use Time; the same record (with Time) is accepted and Time ignored.
    notime = client.post(f"/predict?model={NO_TIME}", json=record).get_json()
    without_time = {name: record[name] for name in FEATURES_WITHOUT_TIME}
    assert notime == client.post(f"/predict?model={NO_TIME}", json=without_time).get_json()
    assert notime["model_version"] == NO_TIME_MODEL and notime["score"] != named["score"]
    unknown = client.post("/predict?model=nope", json=record)
    assert unknown.status_code == 404
    assert unknown.get_json()["error"] == "unknown model 'nope'; this server serves fraud, notime"
    assert client.get(f"/model?model={NO_TIME}").get_json()["features"] == FEATURES_WITHOUT_TIME
    tensor = {"name": "features", "shape": [1, 29], "datatype": "FP64", "data": list(without_time.values())}
    infer = client.post(f"/v2/models/{NO_TIME}/infer", json={"inputs": [tensor]}).get_json()
    assert infer["model_name"] == NO_TIME and infer["outputs"][0]["data"] == [notime["score"]]


def test_models_lists_every_served_model(client, production_card):
    listed = {entry["name"]: entry for entry in client.get("/models").get_json()["models"]}
    assert set(listed) == {FRAUD, NO_TIME}
    fraud = listed[FRAUD]
    assert (fraud["version"], fraud["features"], fraud["threshold"]) == (
        production_card["version"],
        production_card["features"],
        production_card["threshold"],
    )
    assert fraud["detector"] == FRAUD and fraud["ready"] is True
    assert fraud["detector_sha256"] == production_card.get("detector_sha256")
    assert listed[NO_TIME]["features"] == FEATURES_WITHOUT_TIME and listed[NO_TIME]["detector_sha256"] is None


def _models_with_a_bad_fraud(service_models_dir, tmp_path, change):
    """A models dir: notime as in the fixture, and fraud/production = svc-lr with its card changed."""
    import shutil

    from tickguard.modelstore import CARD_FILE, promote

    root = tmp_path / "models"
    shutil.copytree(service_models_dir / NO_TIME, root / NO_TIME, symlinks=True)
    shutil.copytree(service_models_dir / FRAUD / LR_MODEL, root / FRAUD / LR_MODEL)
    card_path = root / FRAUD / LR_MODEL / CARD_FILE
    card = json.loads(card_path.read_text())
    change(card)
    card_path.write_text(json.dumps(card))
    promote(root / FRAUD, LR_MODEL)
    return root


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda card: card["detector"].update(label={"field": "Class", "positive": [0]}), "label differs"),
        (lambda card: card.update(detector_sha256="f" * 64), "detector spec hash differs (card ffffffffffff"),
        (lambda card: card.update(features=list(reversed(card["features"]))), "features differ"),
    ],
    ids=["label", "hash", "features"],
)
def test_a_model_that_disagrees_with_its_detector_is_refused_and_the_others_serve(
    service_models_dir, tmp_path, holdout_records, change, message
):
    root = _models_with_a_bad_fraud(service_models_dir, tmp_path, change)
    client = create_app(ServiceConfig(models_dir=root, log_level="WARNING")).test_client()
    listed = {entry["name"]: entry for entry in client.get("/models").get_json()["models"]}
    assert listed[NO_TIME]["ready"] is True and listed[FRAUD]["ready"] is False
    error = listed[FRAUD]["error"]
    assert error.startswith(f"model fraud: model {LR_MODEL} (") and "disagrees with detector fraud" in error
    assert message in error
    refused = client.post("/predict", json=holdout_records[0])  # the default is fraud, which is down
    assert refused.status_code == 503 and message in refused.get_json()["error"]
    served = client.post(f"/predict?model={NO_TIME}", json=holdout_records[0])
    assert served.status_code == 200 and served.get_json()["model_version"] == NO_TIME_MODEL
    ready = client.get("/v2/health/ready").get_json()
    assert ready["models"] == {FRAUD: False, NO_TIME: True} and message in ready["errors"][0]


def test_admin_is_disabled_without_a_token(service_models_dir):
    client = create_app(ServiceConfig(models_dir=service_models_dir, log_level="WARNING")).test_client()
    response = client.post("/admin/reload", json={}, headers={"Authorization": "Bearer "})
    assert response.status_code == 503
    assert "TICKGUARD_ADMIN_TOKEN" in response.get_json()["error"]


def test_without_a_model_the_service_runs_but_is_not_ready(tmp_path):
    client = create_app(ServiceConfig(models_dir=tmp_path, log_level="WARNING")).test_client()
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    response = client.post("/predict", json={"V1": 1.0})
    assert response.status_code == 503
    assert "no model loaded" in response.get_json()["error"]


def test_config_reads_env_and_rejects_bad_values():
    from tickguard.errors import TickguardError

    config = ServiceConfig.from_env(
        {
            "TICKGUARD_MAX_ROWS": "5",
            "TICKGUARD_ADMIN_TOKEN": "",
            "TICKGUARD_DETECTORS": "fraud, shuttle,",
            "TICKGUARD_LOG_LEVEL": "debug",
        }
    )
    assert (config.max_rows, config.admin_token, config.detectors, config.log_level) == (
        5,
        None,
        ("fraud", "shuttle"),
        "DEBUG",
    )
    with pytest.raises(TickguardError, match="TICKGUARD_MAX_BODY_BYTES"):
        ServiceConfig.from_env({"TICKGUARD_MAX_BODY_BYTES": "lots"})
    with pytest.raises(TickguardError, match="TICKGUARD_MAX_ROWS"):
        ServiceConfig.from_env({"TICKGUARD_MAX_ROWS": "0"})
