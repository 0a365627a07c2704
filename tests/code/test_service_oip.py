"""Open Inference Protocol extensions through the app's test client, with bodies built byte by byte.

What tritonclient sends (no Content-Type, compressed bodies, the binary tensor data extension) and what
it fetches (model config, repository index, versioned routes) are built here by hand, so each rule of
the wire format is pinned down on its own; tests/integration/test_oip_http_clients.py runs the real
client against a real server.
"""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import pytest

from tests.fixtures.service import FEATURES_WITH_TIME, FRAUD, NO_TIME, NO_TIME_MODEL
from tickguard.service.app import create_app
from tickguard.service.config import ServiceConfig

MAX_BODY = 200_000


@pytest.fixture
def client(service_models_dir):
    """The fixture models (fraud, notime) with a 200 KB body limit and 100 rows at most."""
    config = ServiceConfig(
        models_dir=service_models_dir, max_rows=100, max_body_bytes=MAX_BODY, log_level="WARNING"
    )
    return create_app(config).test_client()


@pytest.fixture
def rows(holdout_records) -> np.ndarray:
    """40 real rows, columns in the fraud card's order (Time first)."""
    return np.array([[record[name] for name in FEATURES_WITH_TIME] for record in holdout_records[:40]])


def predicted(client, rows: np.ndarray) -> list[float]:
    """/predict's scores for the same rows."""
    body = {"columns": FEATURES_WITH_TIME, "data": rows.tolist()}
    return [p["score"] for p in client.post("/predict", json=body).get_json()["predictions"]]


def binary_request(rows: np.ndarray, dtype: str, outputs=None, parameters=None) -> tuple[bytes, dict]:
    """A binary-extension request: JSON header, then the tensor's little-endian bytes."""
    blob = rows.astype("<f4" if dtype == "FP32" else "<f8").tobytes()
    header = {
        "inputs": [
            {
                "name": "features",
                "shape": list(rows.shape),
                "datatype": dtype,
                "parameters": {"binary_data_size": len(blob)},
            }
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    if parameters is not None:
        header["parameters"] = parameters
    head = json.dumps(header).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def read_binary_response(response) -> dict[str, np.ndarray | list]:
    """Outputs of a binary-extension response by name (binary ones decoded from the bytes)."""
    length = int(response.headers["Inference-Header-Content-Length"])
    assert response.headers["Content-Type"] == "application/octet-stream"
    header = json.loads(response.data[:length])
    offset, found = length, {}
    for tensor in header["outputs"]:
        size = tensor.get("parameters", {}).get("binary_data_size")
        if size is None:
            found[tensor["name"]] = tensor["data"]
            continue
        dtype = "<f8" if tensor["datatype"] == "FP64" else "?"
        found[tensor["name"]] = np.frombuffer(response.data[offset : offset + size], dtype=dtype)
        offset += size
    assert offset == len(response.data)
    return found


# ---- item 1: no Content-Type, compressed request bodies, compressed responses --------------------


def v2_json(rows: np.ndarray) -> bytes:
    tensor = {
        "name": "features",
        "shape": list(rows.shape),
        "datatype": "FP64",
        "data": rows.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),  # the zlib format, as tritonclient sends it
        ("deflate", lambda data: zlib.compress(data)[2:-4]),  # a raw deflate stream, as some clients do
        ("identity", lambda data: data),
    ],
)
def test_compressed_bodies_without_content_type_score_like_predict(client, rows, encoding, compress):
    response = client.post(
        "/v2/models/fraud/infer", data=compress(v2_json(rows)), headers={"Content-Encoding": encoding}
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["outputs"][0]["data"] == pytest.approx(predicted(client, rows), rel=1e-12)


def test_decompressed_size_is_limited_and_a_bomb_gets_413(client, rows):
    bomb = gzip.compress(b" " * (50 * MAX_BODY))  # 10 MB of JSON whitespace in ~10 KB
    assert len(bomb) < MAX_BODY // 10
    response = client.post("/v2/models/fraud/infer", data=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert f"exceeds {MAX_BODY} bytes after gzip decompression" in response.get_json()["error"]
    # Just under the limit after decompression is fine (the limit is the same as for plain bodies).
    padded = v2_json(rows[:2]) + b" " * (MAX_BODY - len(v2_json(rows[:2])))
    ok = client.post(
        "/v2/models/fraud/infer", data=zlib.compress(padded), headers={"Content-Encoding": "deflate"}
    )
    assert ok.status_code == 200
    over = client.post("/predict", data=zlib.compress(padded + b" "), headers={"Content-Encoding": "deflate"})
    assert over.status_code == 413


def test_unknown_or_broken_encodings_are_refused(client, rows):
    response = client.post("/v2/models/fraud/infer", data=v2_json(rows), headers={"Content-Encoding": "br"})
    assert response.status_code == 415 and "'br'" in response.get_json()["error"]
    broken = client.post("/predict", data=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and "not valid gzip" in broken.get_json()["error"]
    truncated = client.post(
        "/predict", data=gzip.compress(v2_json(rows))[:-20], headers={"Content-Encoding": "gzip"}
    )
    assert truncated.status_code == 400 and "truncated" in truncated.get_json()["error"]


@pytest.mark.parametrize(
    "accept, expected", [("gzip", "gzip"), ("deflate", "deflate"), ("gzip;q=0, identity", None)]
)
def test_responses_are_compressed_when_the_client_accepts_it(client, rows, accept, expected):
    response = client.post("/v2/models/fraud/infer", data=v2_json(rows), headers={"Accept-Encoding": accept})
    assert response.status_code == 200
    assert response.headers.get("Content-Encoding") == expected
    data = response.data
    if expected == "gzip":
        data = gzip.decompress(data)
    elif expected == "deflate":
        data = zlib.decompress(data)
    assert json.loads(data)["outputs"][0]["data"] == pytest.approx(predicted(client, rows), rel=1e-12)
    # A tiny body stays as it is (the rule: compressed from 1 KiB on).
    small = client.get("/v2/health/live", headers={"Accept-Encoding": accept})
    assert "Content-Encoding" not in small.headers and small.get_json() == {"live": True}


# ---- item 2: the binary tensor data extension -------------------------------------------------


@pytest.mark.parametrize("dtype", ["FP32", "FP64"])
def test_binary_inputs_and_outputs(client, rows, dtype):
    body, headers = binary_request(rows, dtype, parameters={"binary_data_output": True})
    response = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert response.status_code == 200, response.data[:300]
    outputs = read_binary_response(response)
    expected = predicted(client, rows.astype(np.float32).astype(np.float64) if dtype == "FP32" else rows)
    np.testing.assert_allclose(outputs["score"], expected, rtol=1e-12)
    threshold = client.get("/model").get_json()["threshold"]
    np.testing.assert_array_equal(outputs["anomaly"], np.asarray(expected) >= threshold)


def test_binary_per_output_choice_and_json_default(client, rows):
    outputs = [
        {"name": "score", "parameters": {"binary_data": False}},
        {"name": "anomaly", "parameters": {"binary_data": True}},
    ]
    body, headers = binary_request(rows, "FP64", outputs=outputs)
    found = read_binary_response(client.post("/v2/models/fraud/infer", data=body, headers=headers))
    assert found["score"] == pytest.approx(predicted(client, rows), rel=1e-12)
    assert found["anomaly"].dtype == bool and len(found["anomaly"]) == len(rows)
    # Binary input, no binary output asked for: a plain JSON answer.
    body, headers = binary_request(rows, "FP64")
    plain = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert plain.mimetype == "application/json" and "Inference-Header-Content-Length" not in plain.headers
    assert plain.get_json()["outputs"][0]["data"] == pytest.approx(predicted(client, rows), rel=1e-12)


def test_per_feature_binary_tensors(client, rows):
    names = FEATURES_WITH_TIME[1:]  # Time is optional
    blobs = [rows[:, FEATURES_WITH_TIME.index(name)].astype("<f8").tobytes() for name in names]
    inputs = [
        {
            "name": name,
            "shape": [len(rows)],
            "datatype": "FP64",
            "parameters": {"binary_data_size": len(blob)},
        }
        for name, blob in zip(names, blobs, strict=True)
    ]
    head = json.dumps({"inputs": inputs}).encode()
    response = client.post(
        f"/v2/models/{NO_TIME}/infer",
        data=head + b"".join(blobs),
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.get_json()
    expected = client.post(
        f"/predict?model={NO_TIME}", json={"columns": FEATURES_WITH_TIME, "data": rows.tolist()}
    )
    assert response.get_json()["outputs"][0]["data"] == pytest.approx(
        [p["score"] for p in expected.get_json()["predictions"]], rel=1e-12
    )


def test_malformed_binary_requests_say_what_is_wrong(client, rows):
    body, headers = binary_request(rows[:2], "FP64")
    length = int(headers["Inference-Header-Content-Length"])

    def error(data, header_length, content_type=None):
        extra = {"Content-Type": content_type} if content_type else {}
        response = client.post(
            "/v2/models/fraud/infer",
            data=data,
            headers={"Inference-Header-Content-Length": header_length, **extra},
        )
        assert response.status_code == 400, response.data[:200]
        return response.get_json()["error"]

    assert "declare 480 bytes" in error(body[:-8], str(length)) and "472 bytes follow" in error(
        body[:-8], str(length)
    )
    assert "declare 480 bytes" in error(body + b"\0" * 8, str(length))
    assert f"{len(body) + 5} bytes but the body has only {len(body)}" in error(body, str(len(body) + 5))
    assert "non-negative integer" in error(body, "twelve")
    header = json.loads(body[:length])
    header["inputs"][0]["datatype"] = "FP8"
    head = json.dumps(header).encode()
    assert "'FP8'" in error(head + body[length:], str(len(head)), "application/octet-stream")
    header["inputs"][0].update(datatype="FP32")  # 480 bytes are 120 FP32 values, not 2 x 30
    head = json.dumps(header).encode()
    message = error(head + body[length:], str(len(head)))
    assert "needs 240 bytes, got 480" in message
    header["inputs"][0].update(datatype="FP64", parameters={"binary_data_size": "480"})
    head = json.dumps(header).encode()
    assert "binary_data_size must be a non-negative integer" in error(head + body[length:], str(len(head)))
    header["inputs"][0].update(parameters={"binary_data_size": 480}, data=[0.0] * 60)
    head = json.dumps(header).encode()
    assert "both 'data' and binary data" in error(head + body[length:], str(len(head)))
    # A binary NaN is named by row and feature, like a JSON one.
    bad = rows[:2].copy()
    bad[1, 4] = np.nan
    body, headers = binary_request(bad, "FP64")
    response = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["problems"] == [
        {"row": 1, "field": "V4", "problem": "NaN is not a valid value"}
    ]
    # binary_data_size without the header: the JSON parser sees the blob.
    no_header = client.post("/v2/models/fraud/infer", data=body)
    assert no_header.status_code == 400


def test_output_binary_flags_must_be_booleans(client, rows):
    body, headers = binary_request(rows[:1], "FP64", parameters={"binary_data_output": "yes"})
    response = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert response.status_code == 400 and "parameters.binary_data_output" in response.get_json()["error"]
    body, headers = binary_request(
        rows[:1], "FP64", outputs=[{"name": "score", "parameters": {"binary_data": 1}}]
    )
    response = client.post("/v2/models/fraud/infer", data=body, headers=headers)
    assert response.status_code == 400 and "outputs[0].parameters.binary_data" in response.get_json()["error"]


# ---- item 3: the endpoints clients probe ------------------------------------------------------


def test_model_config_repository_index_and_versions(client, production_card):
    version = production_card["version"]
    config = client.get("/v2/models/fraud/config").get_json()
    assert config["name"] == FRAUD and config["max_batch_size"] == 100
    assert config["input"] == [
        {"name": "features", "data_type": "TYPE_FP64", "format": "FORMAT_NONE", "dims": [30]}
    ]
    assert [(o["name"], o["data_type"]) for o in config["output"]] == [
        ("score", "TYPE_FP64"),
        ("anomaly", "TYPE_BOOL"),
    ]
    assert client.get(f"/v2/models/fraud/versions/{version}/config").get_json() == config
    assert client.get(f"/v2/models/{NO_TIME}/config").get_json()["input"][0]["dims"] == [29]

    index = client.post("/v2/repository/index").get_json()
    assert index == [
        {"name": FRAUD, "version": version, "state": "READY"},
        {"name": NO_TIME, "version": NO_TIME_MODEL, "state": "READY"},
    ]
    assert client.post("/v2/repository/index", json={"ready": True}).get_json() == index
    for action in ("load", "unload"):
        refused = client.post(f"/v2/repository/models/fraud/{action}")
        assert (
            refused.status_code == 400 and f"model {action} is not supported" in refused.get_json()["error"]
        )

    for path in ("config", "ready", "infer", ""):
        method = client.post if path == "infer" else client.get
        response = method(f"/v2/models/fraud/versions/v0/{path}".rstrip("/"), json={"inputs": []})
        assert response.status_code == 404
        assert f"the current version is {version!r}" in response.get_json()["error"]
    assert set(client.get("/v2").get_json()["extensions"]) >= {"binary_tensor_data", "model_configuration"}
