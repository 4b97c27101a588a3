"""The YAML log-schema contract and the row validator."""
import pytest

from components import logschema
from components.logschema import RowError, load_log_schema, validate_row

YAML = """
format: csv
header: true
columns:
  - {name: id, type: string}
  - {name: label, type: int}
  - {name: price, type: float}
  - {name: country, type: string}
label: label
impression_id: id
numeric_features: [price]
categorical_features: [country]
"""


def test_yaml_file_and_string_round_trip(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(YAML)
    a, b = load_log_schema(str(path)), load_log_schema(YAML)
    assert a == b
    assert a.field_delimiter == "," and a.feature_names == ("price", "country")
    assert load_log_schema(a.to_dict()) == a


@pytest.mark.parametrize("change, message", [
    ("label: label\n", "label names column 'nope'"),
    ("numeric_features: [price]", "numeric feature 'country' has type string"),
    ("format: csv", "format 'xml'"),
])
def test_bad_schema_names_the_problem(change, message):
    bad = {
        "label: label\n": YAML.replace("label: label\n", "label: nope\n"),
        "numeric_features: [price]": YAML.replace("numeric_features: [price]",
                                                  "numeric_features: [country]"),
        "format: csv": YAML.replace("format: csv", "format: xml"),
    }[change]
    with pytest.raises(ValueError, match=message):
        load_log_schema(bad)


def test_unknown_preset_or_missing_file():
    with pytest.raises(ValueError, match="not a preset"):
        load_log_schema("criteo2")


@pytest.mark.parametrize("cells, reason, column", [
    (["a", "1", "2.5"], "wrong_column_count", None),
    (["a", "", "2.5", "de"], "missing_label", "label"),
    (["a", "3", "2.5", "de"], "invalid_label", "label"),
    (["a", "0.5", "2.5", "de"], "invalid_label", "label"),
    (["a", "1", "two", "de"], "unparsable_number", "price"),
    (["a", "1", "nan", "de"], "non_finite_number", "price"),
    (["", "1", "2.5", "de"], "missing_impression_id", "id"),
])
def test_row_errors_carry_reason_and_column(cells, reason, column):
    schema = load_log_schema(YAML)
    with pytest.raises(RowError) as err:
        validate_row(schema, cells, "f.csv", 3)
    assert err.value.reason == reason and err.value.column == column
    assert reason in logschema.REASON_CODES


def test_good_row_types_and_missing_values():
    schema = load_log_schema(YAML)
    rec = validate_row(schema, ["x", "1.0", "", "de"], "f.csv", 1)
    assert rec == {"label": 1, "impression_id": "x", "price": None, "country": "de"}
    rec = validate_row(schema, {"id": "y", "label": 0, "price": 3, "country": None}, "f", 1)
    assert rec["price"] == 3.0 and rec["country"] is None


def test_teacher_logit_checks():
    assert logschema.check_teacher_logits([0.5, 0.5]) == 0.5
    with pytest.raises(RowError, match="non_finite_teacher_logit"):
        logschema.check_teacher_logits([float("inf")])
    with pytest.raises(RowError, match="conflicting_teacher_logit"):
        logschema.check_teacher_logits([0.5, 0.25])
