"""tritonclient.http, as its users call it, against a real `tickguard serve` (gunicorn, 2 workers).

Every call the client offers for what the service implements, in each style it offers: binary tensors
(its default) and JSON, FP32 and FP64, compressed requests (gzip, deflate) and not, compressed
responses, with and without a model version. Scores must equal /predict's for the same rows, for
fraud and for shuttle (two detectors in one service).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import requests

from tests._deps import require
from tests.fixtures.model import shuttle_csv
from tests.fixtures.service import FEATURES_WITH_TIME, FRAUD
from tickguard.service.local import LocalService

SHUTTLE = "shuttle"


def tritonclient_http():
    """The real client (the dev extra installs it); missing: skip locally, fail under CI=true."""
    try:
        import tritonclient.http as client
    except ImportError:
        client = None
    require(client is not None, "tritonclient[http] is not installed (pip install -e '.[dev]')")
    return client


@pytest.fixture(scope="module")
def served(service_models_dir, shuttle_fast_model_dir, tmp_path_factory):
    """fraud (the fixture's production model) and shuttle in one 2-worker gunicorn server."""
    root = tmp_path_factory.mktemp("oip-models")
    shutil.copytree(service_models_dir / FRAUD, root / FRAUD, symlinks=True)
    shutil.copytree(shuttle_fast_model_dir.parent, root / SHUTTLE, symlinks=True)
    log_file = root.parent / "serve.log"
    service = LocalService(
        model="production",
        models_dir=root,
        workers=2,
        threads=2,
        env={"TICKGUARD_DETECTORS": f"{FRAUD},{SHUTTLE}", "TICKGUARD_MAX_ROWS": "2000"},
        log_file=log_file,
    )
    service.start()
    yield service
    assert service.stop(timeout=40) == 0, log_file.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(served):
    http = tritonclient_http()
    with http.InferenceServerClient(served.url.removeprefix("http://"), concurrency=2) as triton:
        yield triton


@pytest.fixture(scope="module")
def rows(served, service_data) -> dict[str, np.ndarray]:
    """Real rows per model, columns in each card's feature order: 300 fraud rows, 300 shuttle rows."""
    features = {
        m["name"]: m["features"] for m in requests.get(f"{served.url}/models", timeout=10).json()["models"]
    }
    assert features[FRAUD] == FEATURES_WITH_TIME
    shuttle = pd.read_csv(shuttle_csv()).sample(n=300, random_state=3)
    return {
        FRAUD: service_data.head(300)[FEATURES_WITH_TIME].to_numpy(np.float64),
        SHUTTLE: shuttle[features[SHUTTLE]].to_numpy(np.float64),
    }


def predict(served, name: str, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """/predict's scores and flags for the same rows (the columns form, as the agent sends them)."""
    card = requests.get(f"{served.url}/model", params={"model": name}, timeout=10).json()
    body = {"columns": card["features"], "data": matrix.tolist()}
    answer = requests.post(f"{served.url}/predict", params={"model": name}, json=body, timeout=30).json()
    predictions = answer["predictions"]
    return np.array([p["score"] for p in predictions]), np.array([p["anomaly"] for p in predictions])


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(FRAUD) and client.is_model_ready(SHUTTLE)
    assert not client.is_model_ready("no-such-model")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "tickguard"
    assert {"binary_tensor_data", "model_configuration", "model_repository"} <= set(metadata["extensions"])


def test_model_metadata_config_and_repository_index(client, served, rows):
    http = tritonclient_http()
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert set(index) == {FRAUD, SHUTTLE} and {e["state"] for e in index.values()} == {"READY"}
    for name in (FRAUD, SHUTTLE):
        version = index[name]["version"]
        width = rows[name].shape[1]
        for asked in ("", version):
            metadata = client.get_model_metadata(name, model_version=asked)
            assert metadata["versions"] == [version]
            assert metadata["inputs"][0]["shape"] == [-1, width]
            config = client.get_model_config(name, model_version=asked)
            assert config["input"][0]["dims"] == [width] and config["max_batch_size"] == 2000
            assert [o["name"] for o in config["output"]] == ["score", "anomaly"]
            assert client.is_model_ready(name, model_version=asked)
        with pytest.raises(http.InferenceServerException) as wrong:
            client.get_model_config(name, model_version="v0")
        assert wrong.value.status() == "404" and repr(version) in wrong.value.message()
    with pytest.raises(http.InferenceServerException) as refused:
        client.load_model(FRAUD)
    assert refused.value.status() == "400" and "not supported" in refused.value.message()
    with pytest.raises(http.InferenceServerException) as refused:
        client.unload_model(FRAUD)
    assert refused.value.status() == "400"


STYLES = [
    # (input datatype, binary input, binary outputs (None = the client's default: no outputs named),
    #  request compression, response compression, ask for the version)
    ("FP32", True, None, None, None, False),  # tritonclient's defaults
    ("FP64", True, None, None, None, True),
    ("FP64", False, False, None, None, False),
    ("FP32", False, True, "gzip", None, True),
    ("FP64", True, False, "deflate", "gzip", False),
    ("FP64", False, None, "gzip", "deflate", True),
    ("FP32", True, True, None, "gzip", False),
    ("FP64", True, True, "deflate", "deflate", True),
]


@pytest.mark.parametrize("name", [FRAUD, SHUTTLE])
@pytest.mark.parametrize("dtype, binary_in, binary_out, request_zip, response_zip, versioned", STYLES)
def test_infer_equals_predict(
    client, served, rows, name, dtype, binary_in, binary_out, request_zip, response_zip, versioned
):
    http = tritonclient_http()
    matrix = rows[name].astype(np.float32 if dtype == "FP32" else np.float64)
    expected_scores, expected_flags = predict(served, name, matrix.astype(np.float64))
    tensor = http.InferInput("features", list(matrix.shape), dtype)
    tensor.set_data_from_numpy(matrix, binary_data=binary_in)
    outputs = None
    if binary_out is not None:
        outputs = [
            http.InferRequestedOutput(output, binary_data=binary_out) for output in ("score", "anomaly")
        ]
    version = client.get_model_metadata(name)["versions"][0] if versioned else ""
    result = client.infer(
        name,
        [tensor],
        model_version=version,
        outputs=outputs,
        request_id="req-7",
        request_compression_algorithm=request_zip,
        response_compression_algorithm=response_zip,
    )
    response = result.get_response()
    assert response["model_name"] == name and response["id"] == "req-7"
    scores, flags = result.as_numpy("score"), result.as_numpy("anomaly")
    assert scores.dtype == np.float64 and flags.dtype == np.bool_ and scores.shape == (len(matrix),)
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(flags, expected_flags)


def test_per_feature_tensors_and_one_output(client, served, rows):
    http = tritonclient_http()
    card = requests.get(f"{served.url}/model", params={"model": SHUTTLE}, timeout=10).json()
    matrix = rows[SHUTTLE][:50]
    inputs = []
    for position, feature in enumerate(card["features"]):
        tensor = http.InferInput(feature, [len(matrix)], "FP64")
        tensor.set_data_from_numpy(np.ascontiguousarray(matrix[:, position]), binary_data=position % 2 == 0)
        inputs.append(tensor)
    result = client.infer(SHUTTLE, inputs, outputs=[http.InferRequestedOutput("score")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
    np.testing.assert_array_equal(result.as_numpy("score"), predict(served, SHUTTLE, matrix)[0])


def test_bad_input_is_a_400_naming_the_field(client, rows):
    http = tritonclient_http()
    matrix = rows[FRAUD][:3].copy()
    matrix[2, 5] = np.inf
    tensor = http.InferInput("features", list(matrix.shape), "FP64")
    tensor.set_data_from_numpy(matrix)
    with pytest.raises(http.InferenceServerException) as error:
        client.infer(FRAUD, [tensor])
    assert error.value.status() == "400" and "invalid values" in error.value.message()
    narrow = http.InferInput("features", [3, 4], "FP64")
    narrow.set_data_from_numpy(matrix[:, :4].copy())
    with pytest.raises(http.InferenceServerException) as error:
        client.infer(FRAUD, [narrow], request_compression_algorithm="gzip")
    assert error.value.status() == "400" and "[n, 30]" in error.value.message()
