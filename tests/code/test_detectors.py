"""The detector spec: the bundled files, strict validation with file:line: key errors, the canonical form.

Every error case edits the real detectors/fraud.toml text in one place and checks the message names the
line that was edited and the dotted key, so a wrong line finder or a lax check fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tickguard.data.schema import COLUMNS, FEATURES, TARGET, TIME
from tickguard.detectors import (
    DetectorError,
    detectors_dirs,
    list_detectors,
    load_detector,
    parse_detector,
)
from tickguard.detectors.locate import dotted, key_lines
from tickguard.detectors.new import Draft, render, toml_key, toml_string

ROOT = Path(__file__).resolve().parents[2]
FRAUD_TEXT = (ROOT / "detectors" / "fraud.toml").read_text()


def parse(text: str, name: str = "fraud"):
    return parse_detector(text, f"detectors/{name}.toml", Path(f"/x/{name}.toml"), expected_name=name)


def line_number(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle` (the line a test edited)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def edited(old: str, new: str, text: str = FRAUD_TEXT) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# ------------------------------------------------------------------------------------------ bundled


def test_fraud_detector_is_todays_model_contract() -> None:
    spec = load_detector("fraud")
    assert spec.feature_fields == FEATURES  # the order every fraud model so far was trained on
    assert (spec.features[0].transform, spec.features[-1].transform) == ("hour_of_day", "log1p")
    assert {f.transform for f in spec.features[1:-1]} == {"none"}
    assert spec.label.field == TARGET and spec.label.positive == (1,)
    assert spec.time.column == TIME and spec.time.unit == "s"
    assert (spec.source.database, spec.source.measurement) == ("fraud", "transactions")
    assert (spec.output.measurement, spec.output.id_field, spec.output.display_fields) == (
        "transactions_scored",
        "txid",
        ("Amount",),
    )
    assert (spec.threshold.policy, spec.threshold.target) == ("precision", 0.90)
    assert spec.model.name == "fraud"
    assert spec.model_columns[:2] == ("hour_sin(Time)", "hour_cos(Time)")
    assert spec.model_columns[-1] == "log1p(Amount)" and len(spec.model_columns) == 31
    assert (*spec.feature_fields, spec.label.field) == COLUMNS


def test_fraud_transforms_match_the_trained_pipeline() -> None:
    """hour_of_day and log1p in the spec mean what training's FraudFeatures computes."""
    np = pytest.importorskip("numpy")
    from tickguard.training.features import FraudFeatures

    raw = np.array([[3600.0 * 6, *([0.5] * 28), 99.0], [86_400.0 + 3600 * 18, *([-1.0] * 28), -3.0]])
    out = FraudFeatures().fit(raw).transform(raw)
    assert out.shape[1] == len(load_detector("fraud").model_columns)
    assert out[0, 0] == pytest.approx(1.0) and out[0, 1] == pytest.approx(0.0, abs=1e-12)  # 06:00
    assert out[1, 0] == pytest.approx(-1.0)  # 18:00 on day two: the time of day, not the day
    assert out[0, -1] == pytest.approx(np.log1p(99.0)) and out[1, -1] == 0.0  # log1p(max(x, 0))


def test_shuttle_detector_declares_its_synthetic_time() -> None:
    spec = load_detector("shuttle")
    assert spec.feature_fields == tuple(f"f{i}" for i in range(1, 10))
    assert spec.label.field == "anomaly" and spec.label.positive == (1,)
    assert spec.time.column == "" and spec.time.synthetic_step_seconds == 1.0
    assert "one row per second" in spec.description
    fetch = spec.data.fetch
    assert (fetch.package, fetch.version, fetch.gzip) == ("river", "0.26.1", True)
    assert fetch.wheel_sha256 == "6a11e1a9749beec3ea138efeb0205b2c5cea8d424e9deee306c8980faec01bef"
    assert fetch.member_sha256 == "1ed4bfa77233d95bff2c8ab2482725d2d800410daedf5919ad80ec6faf60ff59"
    assert (spec.source.database, spec.source.measurement, spec.output.measurement) == (
        "shuttle",
        "readings",
        "readings_scored",
    )


def test_list_finds_the_bundled_detectors_and_env_dir_comes_first(tmp_path: Path) -> None:
    assert [s.name for s in list_detectors(env={})] == ["fraud", "shuttle", "waterflow"]
    mine = tmp_path / "mine"
    mine.mkdir()
    override = edited('description = "Kaggle', 'description = "my own copy of Kaggle')
    (mine / "fraud.toml").write_text(override)
    env = {"TICKGUARD_DETECTORS_DIR": str(mine)}
    assert detectors_dirs(env)[0] == mine
    assert load_detector("fraud", env=env).description.startswith("my own copy")
    assert [s.name for s in list_detectors(env=env)] == ["fraud", "shuttle", "waterflow"]
    with pytest.raises(DetectorError, match=r"no detector 'nope' in .*\(known: fraud, shuttle, waterflow\)"):
        load_detector("nope", env=env)


def test_load_by_path_and_the_name_must_equal_the_file_stem(tmp_path: Path) -> None:
    copy = tmp_path / "fraud.toml"
    copy.write_text(FRAUD_TEXT)
    assert load_detector(str(copy)).sha256 == load_detector("fraud").sha256
    wrong = tmp_path / "other.toml"
    wrong.write_text(FRAUD_TEXT)
    with pytest.raises(DetectorError) as err:
        load_detector(str(wrong))
    assert f":{line_number(FRAUD_TEXT, 'name = ')}: name: 'fraud' must equal the file's name 'other'" in str(
        err.value
    )


# ------------------------------------------------------------------------------------------ errors

ERROR_CASES = {
    "unknown transform": (
        '{ field = "Amount", transform = "log1p" }',
        '{ field = "Amount", transform = "log2" }',
        "features[29].transform: unknown value 'log2' (choose from none, log1p, hour_of_day)",
    ),
    "unknown key in a table": (
        'name = "fraud"\n\n[threshold]',
        'name = "fraud"\nversion = 2\n\n[threshold]',
        "model.version: unknown key (allowed here: name)",
    ),
    "unknown key in a feature": (
        '{ field = "Amount", transform = "log1p" }',
        '{ field = "Amount", transfrom = "log1p" }',
        "features[29].transfrom: unknown key (allowed here: field, transform)",
    ),
    "unknown top-level key": (
        'name = "fraud"\ndescription',
        'name = "fraud"\nowner = "me"\ndescription',
        "owner: unknown key",
    ),
    "wrong type": ("target = 0.90", 'target = "0.9"', "threshold.target: must be a finite number, not '0.9'"),
    "out of range": (
        "target = 0.90",
        "target = 1.5",
        "threshold.target: a target precision is in (0, 1], not 1.5",
    ),
    "enum": (
        'policy = "precision"',
        'policy = "recall"',
        "threshold.policy: unknown value 'recall' (choose from precision, fixed)",
    ),
    "duplicate feature": ('"V9",', '"V8",', "features[9]: 'V8' is already features[8]"),
    "label among features": ('field = "Class"', 'field = "V3"', "label.field: 'V3' is also features[3]"),
    "label without positives": (
        "positive = [1]",
        "positive = []",
        "label.positive: must be a non-empty array",
    ),
    "output is the source": (
        'measurement = "transactions_scored"',
        'measurement = "transactions"',
        "output.measurement: 'transactions' is the source measurement",
    ),
    "display field is the label": (
        'display_fields = ["Amount"]',
        'display_fields = ["Amount", "Class"]',
        "output.display_fields[1]: 'Class' is the label field",
    ),
    "bad hash": (
        'wheel_sha256 = "afce3f39',
        'wheel_sha256 = "AFCE3F39',
        "data.fetch.wheel_sha256: must be 64 lower-case hex digits",
    ),
    "bad model name": (
        'name = "fraud"\n\n[threshold]',
        'name = "Fraud Model"\n\n[threshold]',
        "model.name: 'Fraud Model' is not a name",
    ),
    "tags not strings": (
        "tags = {}",
        "tags = { source = 3 }",
        "source.tags.source: tag filter values must be non-empty strings",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_name_the_line_and_the_dotted_key(case: str) -> None:
    old, new, message = ERROR_CASES[case]
    text = edited(old, new)
    changed_line = next(
        n
        for n, (a, b) in enumerate(zip(FRAUD_TEXT.splitlines(), text.splitlines(), strict=False), 1)
        if a != b
    )
    with pytest.raises(DetectorError) as err:
        parse(text)
    assert str(err.value).startswith(f"detectors/fraud.toml:{changed_line}: "), str(err.value)
    assert message in str(err.value)


def test_missing_required_key_points_at_its_table() -> None:
    text = edited('measurement = "transactions_scored"\n', "")
    with pytest.raises(DetectorError) as err:
        parse(text)
    assert str(err.value) == (
        f"detectors/fraud.toml:{line_number(text, '[output]')}: output.measurement: missing (a string is required)"
    )


def test_missing_table_and_invalid_toml() -> None:
    text = edited('[threshold]\npolicy = "precision"\ntarget = 0.90\n', "")
    with pytest.raises(DetectorError, match=r"^detectors/fraud.toml:1: threshold: missing table$"):
        parse(text)
    broken = edited("target = 0.90", "target = ")
    with pytest.raises(
        DetectorError, match=rf"^detectors/fraud.toml:{line_number(broken, 'target =')}: not valid TOML"
    ):
        parse(broken)


def test_a_key_inside_a_table_after_the_features_is_caught() -> None:
    """A `features = [...]` written after [time] belongs to [time] in TOML: refused, not ignored."""
    text = FRAUD_TEXT.replace(
        '[time]\ncolumn = "Time"\nunit = "s"\n', '[time]\ncolumn = "Time"\nunit = "s"\nfeatures = ["V1"]\n'
    )
    with pytest.raises(DetectorError, match=r"time\.features: unknown key"):
        parse(text)


def test_time_needs_a_column_or_a_synthetic_step() -> None:
    text = edited('column = "Time"\nunit = "s"', 'column = ""\nunit = "s"')
    with pytest.raises(DetectorError, match=r"time\.column: empty: then synthetic_step_seconds must give"):
        parse(text)
    both = edited('column = "Time"\nunit = "s"', 'column = "Time"\nsynthetic_step_seconds = 1')
    with pytest.raises(
        DetectorError, match=r"time\.synthetic_step_seconds: only for data without a time column"
    ):
        parse(both)


def test_line_finder_handles_arrays_of_tables_and_quoted_keys() -> None:
    text = """name = "x"
[[features]]
field = "a b"

[[features]]
field = 'c.d'
transform = "log2"
[source]
"tag.with dot" = 1
"""
    lines = key_lines(text)
    assert lines[("features", 1, "transform")] == 7
    assert lines[("features", 0, "field")] == 3
    assert lines[("source", "tag.with dot")] == 9
    assert dotted(("source", "tags", "a b")) == 'source.tags."a b"'
    assert dotted(("features", 3, "transform")) == "features[3].transform"


# ------------------------------------------------------------------------------------------ canonical form

AWKWARD = [
    "with space",
    "hy-phen",
    "dot.ted",
    'double"quote',
    "single'quote",
    "back\\slash",
    "tab\there",
    "ünï",
]


def test_awkward_field_names_round_trip_through_the_file() -> None:
    draft = Draft(
        name="awkward",
        description='quotes " and \\ and a\nnewline',
        database="db with space",
        measurement='m"q',
        features=AWKWARD,
        label="the label",
        positive=["yes", "oui"],
        id_field="id.x",
        tags={"tag key": "v=1,2"},
        csv="awk ward.csv",
    )
    spec = parse(render(draft), "awkward")
    assert spec.feature_fields == tuple(AWKWARD)
    assert spec.label.field == "the label" and spec.label.positive == ("yes", "oui")
    assert spec.source.tags == {"tag key": "v=1,2"}
    assert spec.description == 'quotes " and \\ and a\nnewline'
    assert spec.output.id_field == "id.x" and spec.source.measurement == 'm"q'
    assert toml_key("plain_key-1") == "plain_key-1" and toml_key("a.b") == '"a.b"'
    assert toml_string("\x7f") == '"\\u007F"'


def test_canonical_form_fills_defaults_and_its_hash_ignores_formatting() -> None:
    spec = load_detector("fraud")
    canonical = spec.to_dict()
    assert json.loads(json.dumps(canonical)) == canonical  # JSON-able
    assert canonical["model"] == {"name": "fraud"} and canonical["source"]["tags"] == {}
    assert canonical["features"][0] == {"field": "Time", "transform": "hour_of_day"}
    assert canonical["features"][1] == {"field": "V1", "transform": "none"}
    reformatted = FRAUD_TEXT.replace('"V1",', '{ field = "V1" },').replace("target = 0.90", "target = 0.9")
    reformatted = "# a comment\n" + reformatted.replace('[model]\nname = "fraud"\n', "")  # default model name
    assert parse(reformatted).sha256 == spec.sha256
    assert parse(edited("target = 0.90", "target = 0.91")).sha256 != spec.sha256
    assert len(spec.sha256) == 64


def test_label_positive_values_compare_by_type() -> None:
    label = load_detector("fraud").label
    assert label.is_positive(1) and label.is_positive(1.0)
    assert not label.is_positive(True) and not label.is_positive("1") and not label.is_positive(0)


@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True),
    label=st.text(min_size=1, max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_any_field_name_round_trips(names: list[str], label: str) -> None:
    """Whatever a CSV header or SHOW FIELD KEYS holds, `detectors new` writes it back unchanged."""
    assume(label not in names)
    draft = Draft(
        name="prop",
        description="",
        database="d",
        measurement="m",
        features=names,
        label=label,
        positive=[label],
        id_field=None,
    )
    spec = parse(render(draft), "prop")
    assert spec.feature_fields == tuple(names) and spec.label.field == label
    assert spec.label.positive == (label,)
