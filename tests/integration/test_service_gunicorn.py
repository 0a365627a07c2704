"""The service as deployed: `tickguard serve` (gunicorn, 2 workers) over real loopback HTTP."""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.fixtures.service import FEATURES_WITH_TIME, FRAUD, LR_MODEL, NO_TIME, NO_TIME_MODEL
from tickguard.service.local import LocalService

TOKEN = "gunicorn-test-token"


@pytest.fixture(scope="module")
def served(service_models_dir, tmp_path_factory):
    """A running 2-worker server of both fixture models (fraud, notime) on a free port; its log is kept."""
    log_file = tmp_path_factory.mktemp("serve") / "serve.log"
    service = LocalService(
        model="production",
        models_dir=service_models_dir,
        workers=2,
        threads=2,
        env={
            "TICKGUARD_ADMIN_TOKEN": TOKEN,
            "TICKGUARD_MAX_ROWS": "2000",
            "TICKGUARD_MAX_BODY_BYTES": "1000000",
        },
        log_file=log_file,
    )
    service.start()
    yield service
    code = service.stop(timeout=40)
    tail = "\n".join(log_file.read_text().splitlines()[-15:])
    assert code == 0, f"gunicorn did not shut down cleanly on SIGTERM (exit {code}); log tail:\n{tail}"


def worker_pids(base_url: str) -> set[str]:
    """PIDs of workers that have reported tickguard_model_info."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    return set(re.findall(r'tickguard_model_info\{[^}]*pid="(\d+)"', text))


def test_batch_over_http_with_request_id(served, holdout_records, production_card):
    rows = [[record[name] for name in FEATURES_WITH_TIME] for record in holdout_records]
    response = requests.post(
        f"{served.url}/predict",
        json={"columns": FEATURES_WITH_TIME, "data": rows},
        headers={"X-Request-ID": "it-123"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "it-123"
    body = response.json()
    assert len(body["predictions"]) == len(rows) and body["model_version"] == production_card["version"]


def test_error_statuses_over_http(served):
    url = f"{served.url}/predict"
    assert (
        requests.post(url, data="{", headers={"Content-Type": "application/json"}, timeout=10).status_code
        == 400
    )
    assert requests.post(url, data="{}", headers={"Content-Type": "text/csv"}, timeout=10).status_code == 415
    big = json.dumps({"columns": FEATURES_WITH_TIME, "data": [[1.123456] * 30] * 4000})
    assert len(big) > 1_000_000
    assert (
        requests.post(url, data=big, headers={"Content-Type": "application/json"}, timeout=10).status_code
        == 413
    )
    rows = json.dumps({"columns": FEATURES_WITH_TIME, "data": [[1.0] * 30] * 2001})
    assert (
        requests.post(url, data=rows, headers={"Content-Type": "application/json"}, timeout=10).status_code
        == 413
    )
    assert requests.get(f"{served.url}/v2/models/nope", timeout=10).status_code == 404
    assert requests.put(url, timeout=10).status_code == 405


def test_metrics_are_summed_over_workers(served, holdout_records):
    # Enough concurrent requests that both workers serve some.
    import concurrent.futures

    def one(index):
        return requests.post(
            f"{served.url}/predict", json=holdout_records[index % 50], timeout=10
        ).status_code

    before = requests.get(f"{served.url}/metrics", timeout=10).text
    count_before = _sample(before, 'tickguard_rows_scored_total{endpoint="/predict",status="200"}')
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(200)))
    assert statuses == [200] * 200
    # A worker reports itself once its model is loaded (and compiled); the service is ready with one.
    deadline = time.monotonic() + 60
    while len(worker_pids(served.url)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(worker_pids(served.url)) == 2, "expected both gunicorn workers in the shared metrics"
    after = requests.get(f"{served.url}/metrics", timeout=10).text
    assert (
        _sample(after, 'tickguard_rows_scored_total{endpoint="/predict",status="200"}') == count_before + 200
    )


def test_reload_reaches_every_worker_and_bad_reload_keeps_serving(served, holdout_records, production_card):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = requests.post(
        f"{served.url}/admin/reload/{FRAUD}", json={"version": LR_MODEL}, headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    # New connections each time, so requests land on both workers; notime is not swapped.
    versions = {
        (
            requests.post(
                f"{served.url}/predict", json=holdout_records[0], headers={"Connection": "close"}, timeout=10
            ).json()["model_version"],
            requests.post(
                f"{served.url}/predict?model={NO_TIME}",
                json=holdout_records[0],
                headers={"Connection": "close"},
                timeout=10,
            ).json()["model_version"],
        )
        for _ in range(30)
    }
    assert versions == {(LR_MODEL, NO_TIME_MODEL)}
    failed = requests.post(
        f"{served.url}/admin/reload", json={"model": "does-not-exist"}, headers=headers, timeout=30
    )
    assert failed.status_code == 404 and "error" in failed.json()
    assert requests.get(f"{served.url}/model", timeout=10).json()["version"] == LR_MODEL
    back = requests.post(
        f"{served.url}/admin/reload", json={"model": "production"}, headers=headers, timeout=30
    )
    assert back.status_code == 200 and back.json()["model_version"] == production_card["version"]


def test_models_lists_both_models_with_their_features(served, production_card):
    listed = {
        entry["name"]: entry for entry in requests.get(f"{served.url}/models", timeout=10).json()["models"]
    }
    assert set(listed) == {FRAUD, NO_TIME}
    assert listed[FRAUD]["features"] == production_card["features"]
    assert listed[NO_TIME]["version"] == NO_TIME_MODEL
    assert requests.get(f"{served.url}/v2/models/{NO_TIME}/ready", timeout=10).status_code == 200


def test_logs_are_json_lines_with_request_ids(served, holdout_records):
    requests.post(
        f"{served.url}/predict", json=holdout_records[0], headers={"X-Request-ID": "log-check-7"}, timeout=10
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in served.log_path.read_text().splitlines() if line.startswith("{")]
        entries = [json.loads(line) for line in lines]
        if any(entry.get("request_id") == "log-check-7" for entry in entries):
            break
        time.sleep(0.2)
    match = [entry for entry in entries if entry.get("request_id") == "log-check-7"]
    assert match and match[0]["status"] == 200 and match[0]["path"] == "/predict"
    assert any(entry["logger"].startswith("gunicorn") for entry in entries)


def _sample(text: str, series: str) -> float:
    """Value of one exact series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
