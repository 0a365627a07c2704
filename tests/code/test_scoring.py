"""The Flask-free scoring layer: payload parsing, validation messages, V2 tensors, model swaps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.fixtures.service import (
    FEATURES_WITH_TIME,
    FEATURES_WITHOUT_TIME,
    FRAUD,
    LR_MODEL,
    NO_TIME,
    NO_TIME_MODEL,
)
from tickguard.modelstore import CARD_FILE, MODEL_FILE
from tickguard.scoring import FeatureSchema, ModelHolder, Predictor, ScoringError, decode_json
from tickguard.scoring.v2 import infer_response, parse_infer

SCHEMA = FeatureSchema(FEATURES_WITHOUT_TIME, max_rows=50)


def record(value: float = 0.5, with_time: bool = True) -> dict:
    """A well-formed record (all features, Time optional)."""
    row = {name: value + index for index, name in enumerate(FEATURES_WITHOUT_TIME)}
    if with_time:
        row["Time"] = 12.0
    return row


def problems_of(exc: pytest.ExceptionInfo[ScoringError]) -> set[tuple]:
    """(row, field, problem) triples of a raised ScoringError."""
    return {(item["row"], item["field"], item["problem"]) for item in exc.value.problems}


def test_single_record_keeps_feature_order_and_ignores_time():
    matrix, single = SCHEMA.parse_predict(record())
    assert single is True
    assert matrix.shape == (1, 29)
    assert matrix[0].tolist() == [0.5 + index for index in range(29)]


def test_instances_and_columns_give_the_same_matrix():
    rows = [record(1.0), record(2.0, with_time=False)]
    from_instances, single = SCHEMA.parse_predict({"instances": rows})
    assert single is False
    columns = ["Amount", "Time", *FEATURES_WITHOUT_TIME[:-1]]  # a different column order on purpose
    data = [[row["Amount"], 0.0, *(row[name] for name in FEATURES_WITHOUT_TIME[:-1])] for row in rows]
    from_columns, _ = SCHEMA.parse_predict({"columns": columns, "data": data})
    np.testing.assert_array_equal(from_instances, from_columns)


def test_integers_are_numbers_but_booleans_and_strings_are_not():
    row = record()
    row["V1"] = 3
    assert SCHEMA.parse_predict(row)[0][0, 0] == 3.0
    row.update(V2=True, V3="1.5", V4=None, V5=[1.0])
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict(row)
    assert exc.value.status == 400
    assert problems_of(exc) == {
        (0, "V2", "expected a number, got a boolean"),
        (0, "V3", "expected a number, got a string"),
        (0, "V4", "expected a number, got null"),
        (0, "V5", "expected a number, got an array"),
    }


def test_every_bad_row_and_field_is_named():
    good, missing, extra, nan = record(), record(), record(), record()
    del missing["V7"]
    extra["colour"] = 1.0
    nan["Amount"] = float("nan")
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict({"instances": [good, missing, extra, nan, "not a row"]})
    assert problems_of(exc) == {
        (1, "V7", "missing"),
        (2, "colour", "unknown field"),
        (3, "Amount", "NaN is not a valid value"),
        (4, None, "expected an object, got a string"),
    }


def test_nan_and_infinity_literals_are_reported_per_field_not_as_malformed_json():
    body = json.dumps({"instances": [record(), {**record(), "V9": float("inf"), "V10": float("-inf")}]})
    assert "Infinity" in body
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict(decode_json(body.encode()))
    assert problems_of(exc) == {
        (1, "V9", "infinite values are not valid"),
        (1, "V10", "infinite values are not valid"),
    }


def test_malformed_json_is_a_400():
    with pytest.raises(ScoringError) as exc:
        decode_json(b'{"V1": 1.0,')
    assert (exc.value.status, exc.value.code) == (400, "malformed_json")


def test_columns_form_names_missing_unknown_and_duplicate_columns():
    columns = [*FEATURES_WITHOUT_TIME[1:], "V2", "Colour"]
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_columns(columns, [[0.0] * len(columns)])
    assert problems_of(exc) == {
        (None, "V1", "missing column"),
        (None, "V2", "duplicate column"),
        (None, "Colour", "unknown field"),
    }


def test_columns_form_names_short_rows_and_bad_cells():
    columns = FEATURES_WITHOUT_TIME
    data = [[0.0] * 29, [0.0] * 28, [0.0] * 28 + ["x"]]
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_columns(columns, data)
    assert problems_of(exc) == {
        (1, None, "expected 29 values (one per column), got 28"),
        (2, "Amount", "expected a number, got a string"),
    }


def test_an_ignored_time_column_may_hold_anything():
    columns = ["Time", *FEATURES_WITHOUT_TIME]
    matrix = SCHEMA.parse_columns(columns, [["yesterday", *range(29)]])
    assert matrix[0].tolist() == list(map(float, range(29)))


def test_row_limit_is_a_413():
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict({"instances": [record()] * 51})
    assert exc.value.status == 413
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict({"columns": FEATURES_WITHOUT_TIME, "data": [[0.0] * 29] * 51})
    assert exc.value.status == 413


def test_error_bodies_are_capped_but_count_everything():
    with pytest.raises(ScoringError) as exc:
        SCHEMA.parse_predict({"instances": [{}] * 50})
    body = exc.value.to_dict()
    assert body["problem_count"] == 50 * 29
    assert len(body["problems"]) == 100
    assert body["problems_truncated"] is True
    assert isinstance(body["error"], str)  # the Open Inference Protocol error shape


def test_v2_batch_tensor_flat_and_nested():
    flat = {
        "inputs": [{"name": "x", "shape": [2, 29], "datatype": "FP64", "data": [float(i) for i in range(58)]}]
    }
    nested = {
        "inputs": [
            {**flat["inputs"][0], "data": [list(map(float, range(29))), list(map(float, range(29, 58)))]}
        ]
    }
    a, outputs = parse_infer(flat, SCHEMA)
    b, _ = parse_infer(nested, SCHEMA)
    assert outputs == ["score", "anomaly"]
    np.testing.assert_array_equal(a, b)
    assert a[1, 0] == 29.0


def test_v2_per_feature_tensors_in_any_order_with_time_ignored():
    names = ["Time", *reversed(FEATURES_WITHOUT_TIME)]
    inputs = [{"name": name, "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]} for name in names]
    inputs[1]["shape"] = [2, 1]
    matrix, outputs = parse_infer({"inputs": inputs, "outputs": [{"name": "score"}]}, SCHEMA)
    assert matrix.shape == (2, 29)
    assert outputs == ["score"]


def test_v2_errors_name_row_and_feature():
    data = [0.0] * 58
    data[29 + 3] = "oops"  # row 1, fourth feature
    with pytest.raises(ScoringError) as exc:
        parse_infer({"inputs": [{"name": "x", "shape": [2, 29], "datatype": "FP64", "data": data}]}, SCHEMA)
    assert problems_of(exc) == {(1, "V4", "expected a number, got a string")}
    with pytest.raises(ScoringError) as exc:
        parse_infer({"inputs": [{"name": "x", "shape": [2, 29], "datatype": "INT64", "data": data}]}, SCHEMA)
    assert "FP32 or FP64" in exc.value.message
    with pytest.raises(ScoringError) as exc:
        parse_infer({"inputs": [{"name": "x", "shape": [2, 28], "datatype": "FP64", "data": data}]}, SCHEMA)
    assert "[n, 29]" in exc.value.message
    fp32_overflow = [0.0] * 29
    fp32_overflow[0] = 1e300
    with pytest.raises(ScoringError) as exc:
        parse_infer(
            {"inputs": [{"name": "x", "shape": [1, 29], "datatype": "FP32", "data": fp32_overflow}]}, SCHEMA
        )
    assert problems_of(exc) == {(0, "V1", "does not fit in FP32")}


def test_v2_response_shape():
    body = infer_response(
        "fraud", "v1", "req-1", np.array([0.1, 0.9]), np.array([False, True]), ["score", "anomaly"]
    )
    assert body["outputs"][1] == {"name": "anomaly", "datatype": "BOOL", "shape": [2], "data": [False, True]}


@pytest.mark.parametrize(
    "version", [f"{FRAUD}/production", f"{FRAUD}/{LR_MODEL}", f"{NO_TIME}/{NO_TIME_MODEL}"]
)
def test_predictor_scores_real_rows_consistently(service_models_dir, service_data, version):
    predictor = Predictor.load(service_models_dir / version, max_rows=10_000)
    rows = service_data.head(500)
    matrix = rows[list(predictor.schema.features)].to_numpy(dtype=np.float64)
    labels = rows["Class"].to_numpy()
    scores, anomalies = predictor.predict(matrix)
    assert scores.shape == (500,)
    assert np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_array_equal(anomalies, scores >= predictor.threshold)
    # The models are real: frauds score higher than normal transactions on average.
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    # Batch scoring equals one-by-one scoring (vectorization changes nothing).
    one_by_one = [predictor.predict(matrix[i : i + 1])[0][0] for i in range(5)]
    np.testing.assert_allclose(scores[:5], one_by_one, rtol=1e-12)


def test_reload_refuses_a_tampered_model_and_keeps_the_old_one(service_models_dir, tmp_path):
    import shutil

    models = tmp_path / "models" / NO_TIME
    shutil.copytree(service_models_dir / NO_TIME / NO_TIME_MODEL, models / NO_TIME_MODEL)
    shutil.copytree(service_models_dir / NO_TIME / NO_TIME_MODEL, models / "tampered")
    with open(models / "tampered" / MODEL_FILE, "ab") as fh:
        fh.write(b"\0")
    holder = ModelHolder(models, max_rows=100)
    holder.load_initial(NO_TIME_MODEL)
    assert holder.current.version == NO_TIME_MODEL
    with pytest.raises(ScoringError) as exc:
        holder.reload("tampered")
    assert exc.value.status == 422
    assert "sha256" in exc.value.message and NO_TIME_MODEL in exc.value.message
    assert holder.current.version == NO_TIME_MODEL
    with pytest.raises(ScoringError) as exc:
        holder.reload("no-such-version")
    assert exc.value.status == 404


def test_reload_refuses_a_model_that_cannot_predict(service_models_dir, tmp_path):
    import shutil

    from tickguard.modelstore import save_model

    models = tmp_path / "models" / NO_TIME
    shutil.copytree(service_models_dir / NO_TIME / NO_TIME_MODEL, models / NO_TIME_MODEL)
    card = json.loads((service_models_dir / NO_TIME / NO_TIME_MODEL / CARD_FILE).read_text())
    card.update(version="wrong-width", features=FEATURES_WITH_TIME)  # the estimator expects 29 columns
    estimator = Predictor.load(service_models_dir / NO_TIME / NO_TIME_MODEL, 10).artifact.estimator
    save_model(estimator, card, models / "wrong-width")
    holder = ModelHolder(models, max_rows=100)
    holder.load_initial(NO_TIME_MODEL)
    with pytest.raises(ScoringError) as exc:
        holder.reload("wrong-width")
    assert "test prediction" in exc.value.message
    assert holder.current.version == NO_TIME_MODEL


def test_workers_follow_a_reload_through_the_shared_pointer(service_models_dir, production_card, tmp_path):
    pointer = tmp_path / "active_model.fraud.json"
    fraud = service_models_dir / FRAUD
    first = ModelHolder(fraud, 100, shared_pointer=pointer)
    second = ModelHolder(fraud, 100, shared_pointer=pointer)
    first.load_initial("production")
    second.load_initial("production")
    second.sync()  # a check just before the reload: the next one is rate-limited
    first.reload(LR_MODEL)
    assert second.current.version == production_card["version"]
    # reload() answers only after the check interval, so the very next sync sees the new pointer.
    second.sync()
    assert second.current.version == LR_MODEL
    # A worker started after the reload serves the reloaded model, not the start-up default.
    late = ModelHolder(fraud, 100, shared_pointer=pointer)
    late.load_initial("production")
    assert late.current.version == LR_MODEL


def test_a_model_using_time_requires_it(service_models_dir, production_card):
    assert "Time" in production_card["features"]
    predictor = Predictor.load(service_models_dir / FRAUD / "production", max_rows=10)
    with pytest.raises(ScoringError) as exc:
        predictor.schema.parse_predict(record(with_time=False))
    assert problems_of(exc) == {(0, "Time", "missing")}
    body, rows = predictor.predict_response(record())
    assert rows == 1 and 0.0 <= body["score"] <= 1.0 and not math.isnan(body["score"])


def test_the_committed_fraud_model_fits_its_detector():
    """models/fraud/production records detectors/fraud.toml's spec and hash (editing either shows here)."""
    from tickguard.detectors import load_detector
    from tickguard.modelstore import (
        card_detector_differences,
        detector_models_dir,
        production_models,
        read_card,
        resolve_model_dir,
    )
    from tickguard.training.config import models_dir

    assert "fraud" in production_models(models_dir())
    card = read_card(resolve_model_dir(detector_models_dir(models_dir(), "fraud")))
    spec = load_detector("fraud")
    assert card["detector_sha256"] == spec.sha256 and card["detector"] == spec.to_dict()
    assert card_detector_differences(card, spec) == []


def test_a_card_that_disagrees_with_its_detector_names_each_difference():
    from tickguard.detectors import load_detector
    from tickguard.modelstore import card_detector_differences, detector_card_fields

    spec = load_detector("fraud")
    card = {"features": FEATURES_WITHOUT_TIME, **detector_card_fields(spec)}
    assert card_detector_differences(card, spec) == ["features differ (the card lacks ['Time'])"]
    card = {"features": list(reversed(FEATURES_WITH_TIME)), **detector_card_fields(spec)}
    assert card_detector_differences(card, spec) == ["features differ (same fields, another order)"]
    card = {"features": FEATURES_WITH_TIME, **detector_card_fields(spec)}
    card["detector"] = {**card["detector"], "label": {"field": "Class", "positive": [0]}}
    card["detector_sha256"] = "0" * 64
    differences = card_detector_differences(card, spec)
    assert len(differences) == 2
    assert differences[0].startswith("label differs") and "[0]" in differences[0]
    assert differences[1].startswith("detector spec hash differs (card 000000000000, fraud.toml ")


def test_the_payload_contract_round_trips_between_client_and_server():
    """What a client builds, the server parses; what the server answers, a client reads."""
    from tickguard.scoring.payloads import (
        PayloadError,
        card_path,
        columns_request,
        instances_request,
        parse_predict_response,
        predict_path,
        predict_response_body,
        record_request,
    )

    rows = [
        [record(1.0)[name] for name in FEATURES_WITHOUT_TIME],
        [record(2.0)[name] for name in FEATURES_WITHOUT_TIME],
    ]
    by_columns, _ = SCHEMA.parse_predict(decode_json(columns_request(FEATURES_WITHOUT_TIME, rows)))
    by_instances, single = SCHEMA.parse_predict(
        decode_json(instances_request([record(1.0), record(2.0, with_time=False)]))
    )
    assert single is False
    np.testing.assert_array_equal(by_columns, by_instances)
    body = predict_response_body(np.array([0.2, 0.8]), np.array([False, True]), 0.5, "v1", single=False)
    result = parse_predict_response(json.dumps(body).encode(), rows=2)
    assert (result.scores, result.flags, result.threshold, result.model_version) == (
        [0.2, 0.8],
        [False, True],
        0.5,
        "v1",
    )
    with pytest.raises(PayloadError, match="2 scores for 3 rows"):
        parse_predict_response(json.dumps(body).encode(), rows=3)
    single = predict_response_body(np.array([0.7]), np.array([True]), 0.5, "v1", single=True)
    assert parse_predict_response(json.dumps(single).encode(), rows=1).flags == [True]
    assert SCHEMA.parse_predict(decode_json(record_request(record(3.0))))[1] is True
    for broken in (b'{"score": 0.1}', b"[1, 2]", b"not json"):
        with pytest.raises(PayloadError, match="unexpected /predict body"):
            parse_predict_response(broken)
    assert predict_path() == "/predict" and predict_path("a b/c") == "/predict?model=a%20b%2Fc"
    assert card_path("shuttle") == "/model?model=shuttle"


def test_without_the_detector_file_a_card_is_checked_against_the_spec_it_recorded(
    service_models_dir, tmp_path
):
    """The api image may hold models but no detector files: the card's own record still guards the load."""
    import shutil

    lr = service_models_dir / FRAUD / LR_MODEL
    shutil.copytree(lr, tmp_path / FRAUD / LR_MODEL)
    shutil.copytree(lr, tmp_path / "shuttle" / LR_MODEL)  # a fraud model in the wrong detector's folder
    no_files = lambda name: None  # noqa: E731  (a host without detectors/*.toml)
    right = ModelHolder(tmp_path / FRAUD, 10, detector=FRAUD, detector_lookup=no_files)
    right.load_initial(LR_MODEL)
    assert right.current is not None and right.current.version == LR_MODEL
    wrong = ModelHolder(tmp_path / "shuttle", 10, detector="shuttle", detector_lookup=no_files)
    wrong.load_initial(LR_MODEL)
    assert wrong.current is None
    assert "the card was made for detector 'fraud', not 'shuttle'" in wrong.last_error
