"""Property-based: random bodies, content types, methods and paths at every route never get a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.service import FEATURES_WITH_TIME, FEATURES_WITHOUT_TIME
from tickguard.service.app import create_app
from tickguard.service.config import ServiceConfig

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=6), children, max_size=5),
    max_leaves=30,
)
feature_names = st.sampled_from([*FEATURES_WITH_TIME, "Class", "", "v1", "V29"])


@st.composite
def near_valid_record(draw):
    """A record that is valid except for a few drawn changes (missing, extra or odd values)."""
    row = {name: draw(st.floats(-1e3, 1e3)) for name in FEATURES_WITH_TIME}
    for _ in range(draw(st.integers(0, 3))):
        name = draw(feature_names)
        if draw(st.booleans()):
            row.pop(name, None)
        else:
            row[name] = draw(scalars)
    return row


@st.composite
def near_valid_tensor(draw):
    """A V2 tensor with drawn name, shape, datatype and data."""
    rows = draw(st.integers(0, 4))
    width = draw(st.sampled_from([29, 30, 1]))
    size = rows * width + draw(st.sampled_from([0, 0, 0, 1, -1]))
    return {
        "name": draw(st.one_of(st.just("features"), feature_names, st.integers())),
        "shape": draw(
            st.one_of(st.just([rows, width]), st.just([rows]), st.lists(st.integers(-2, 40), max_size=3))
        ),
        "datatype": draw(st.sampled_from(["FP32", "FP64", "INT32", "BYTES", None])),
        "data": [draw(st.one_of(st.floats(-1e40, 1e40), scalars)) for _ in range(max(size, 0))],
    }


bodies = st.one_of(
    json_values,
    near_valid_record(),
    st.builds(lambda rows: {"instances": rows}, st.lists(near_valid_record(), max_size=4)),
    st.builds(
        lambda columns, data: {"columns": columns, "data": data},
        st.one_of(st.just(FEATURES_WITHOUT_TIME), st.lists(feature_names, max_size=31), json_values),
        st.one_of(st.lists(st.lists(st.one_of(st.floats(), scalars), max_size=31), max_size=4), json_values),
    ),
    st.builds(lambda tensors: {"inputs": tensors}, st.lists(near_valid_tensor(), max_size=3)),
    st.builds(
        lambda tensors, outputs: {"inputs": tensors, "outputs": outputs},
        st.lists(near_valid_tensor(), max_size=2),
        json_values,
    ),
    st.builds(lambda model: {"model": model}, json_values),
)
raw_bodies = st.one_of(st.builds(lambda value: json.dumps(value).encode(), bodies), st.binary(max_size=64))
content_types = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
        "application/problem+json",
        "",
        "multipart/form-data",
    ]
)
paths = st.one_of(
    st.sampled_from(
        [
            "/predict",
            "/model",
            "/metrics",
            "/openapi.json",
            "/admin/reload",
            "/v2",
            "/v2/health/live",
            "/v2/health/ready",
            "/v2/models/fraud",
            "/v2/models/fraud/ready",
            "/v2/models/fraud/infer",
            "/v2/models/fraud/versions/v1/infer",
            "/v2/models/x/infer",
        ]
    ),
    st.builds(lambda name: f"/v2/models/{name}/infer", st.text(alphabet="abcfrud%./-_ ", max_size=8)),
    # "//x" would be read by the test client as a host name, not sent as a path
    st.text(alphabet="/abcv2%.", max_size=12).map(lambda text: "/" + text.lstrip("/")),
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory, service_models_dir):
    """A test client with an admin token, so the reload route is reachable too."""
    config = ServiceConfig(models_dir=service_models_dir, admin_token="fuzz", max_rows=50, log_level="ERROR")
    return create_app(config).test_client()


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=paths,
    body=raw_bodies,
    content_type=content_types,
    authorized=st.booleans(),
)
def test_no_request_gets_a_server_error(fuzz_client, method, path, body, content_type, authorized):
    headers = {"Content-Type": content_type} if content_type else {}
    if authorized:
        headers["Authorization"] = "Bearer fuzz"
    response = fuzz_client.open(path, method=method, data=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True))
    if path != "/metrics" or response.status_code != 200:
        assert response.is_json, response.get_data(as_text=True)[:200]
    if response.status_code >= 400:
        assert isinstance(response.get_json()["error"], str)


@FUZZ
@given(body=bodies)
def test_scoring_routes_answer_200_or_a_named_4xx(fuzz_client, body):
    for path in ("/predict", "/v2/models/fraud/infer"):
        response = fuzz_client.post(path, data=json.dumps(body), content_type="application/json")
        assert response.status_code in (200, 400, 404, 413), response.get_data(as_text=True)
        if response.status_code == 400 and response.get_json().get("problems"):
            for item in response.get_json()["problems"]:
                assert set(item) == {"row", "field", "problem"}
