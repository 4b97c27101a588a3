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


# -- issue 12: strict numbers, dialect, limits (pure functions; the executor tests are in
# test_examplegen_hardening.py) ---------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("0", 0.0), ("-12", -12.0), ("+3", 3.0), ("007", 7.0), ("1.", 1.0), (".5", 0.5),
    ("-2.5e-3", -0.0025), ("1E10", 1e10), ("3.4e38", 3.4e38), ("-3.4028234e38", -3.4028234e38),
])
def test_numbers_accepted(text, want):
    assert logschema.parse_number(text) == want


@pytest.mark.parametrize("text, reason", [
    ("1_000", "unparsable_number"), ("\u0661\u0662", "unparsable_number"),
    (" 1", "unparsable_number"), ("1 ", "unparsable_number"), ("\t1", "unparsable_number"),
    (" ", "unparsable_number"), ("0x10", "unparsable_number"), ("1e", "unparsable_number"),
    ("e5", "unparsable_number"), ("--1", "unparsable_number"), ("1.2.3", "unparsable_number"),
    ("\uff11", "unparsable_number"), ("1\n", "unparsable_number"), ("TRUE", "unparsable_number"),
    ("nan", "non_finite_number"), ("-NaN", "non_finite_number"), ("inf", "non_finite_number"),
    ("-Infinity", "non_finite_number"), ("1e39", "non_finite_number"),
    ("-3.5e38", "non_finite_number"), ("1e400", "non_finite_number"),
    ("9" * 50, "non_finite_number"), (1e39, "non_finite_number"), (10**39, "non_finite_number"),
    (float("nan"), "non_finite_number"), (True, "unparsable_number"), ([1], "unparsable_number"),
])
def test_numbers_rejected(text, reason):
    with pytest.raises(RowError) as err:
        logschema.parse_number(text, column="x")
    assert err.value.reason == reason and err.value.column == "x"


def test_integer_columns_and_float32_edge():
    assert logschema.parse_number("3.0", integer=True) == 3
    assert logschema.parse_number("3e2", integer=True) == 300
    assert logschema.parse_number(2**62, integer=True) == 2**62
    with pytest.raises(RowError, match="unparsable_number"):
        logschema.parse_number("3.5", integer=True)
    below = 2.0**128 - 2.0**104  # the largest float64 below the limit that is exact
    assert logschema.is_float32_finite(below) and not logschema.is_float32_finite(
        logschema.FLOAT32_LIMIT)
    import numpy as np

    with np.errstate(over="ignore"):
        assert np.isfinite(np.float32(below)) and not np.isfinite(
            np.float32(logschema.FLOAT32_LIMIT))


@pytest.mark.parametrize("line, cells", [
    ('a,b,,c', ["a", "b", "", "c"]),
    ('"a,b","",c,', ["a,b", "", "c", ""]),
    ('"say ""hi""",x', ['say "hi"', "x"]),
    ('"",""', ["", ""]),
])
def test_csv_line_splitting(line, cells):
    assert logschema.split_line(line, ",", quoting=True) == cells


@pytest.mark.parametrize("line, reason, index", [
    ('a,"b,c', "unterminated_quote", 1), ('"a""', "unterminated_quote", 0),
    ('a,"b"c', "malformed_record", 1), ('a,b"c', "malformed_record", 1),
])
def test_csv_line_errors(line, reason, index):
    with pytest.raises(RowError) as err:
        logschema.split_line(line, ",", quoting=True)
    assert err.value.reason == reason and err.value.column == index


def test_tsv_quotes_are_data():
    assert logschema.split_line('a\t"b\tc"', "\t", quoting=False) == ["a", '"b', 'c"']


def test_validate_row_new_reasons_and_verbatim_strings():
    schema = load_log_schema(YAML)
    with pytest.raises(RowError) as err:
        validate_row(schema, ["x", "1", "2", "d" * (logschema.MAX_CELL_BYTES + 1)], "f.csv", 1)
    assert err.value.reason == "cell_too_large" and err.value.column == "country"
    with pytest.raises(RowError, match="cell_too_large"):
        validate_row(schema, {"id": "x", "label": 1, "country": "\u00e9" * 70_000}, "f", 1)
    bad = logschema.parse_delimited_line(schema, b'x,1,"2')
    with pytest.raises(RowError) as err:
        validate_row(schema, bad, "f.csv", 1)
    assert err.value.reason == "unterminated_quote" and err.value.column == "price"
    with pytest.raises(RowError, match="invalid_label"):
        validate_row(schema, ["x", " 1", "2", "d"], "f.csv", 1)
    with pytest.raises(RowError, match="missing_impression_id"):
        validate_row(schema, ["  ", "1", "2", "d"], "f.csv", 1)
    rec = validate_row(schema, [" x ", "1", "2", " d"], "f.csv", 1)
    assert rec["impression_id"] == " x " and rec["country"] == " d"
    with pytest.raises(RowError, match="invalid_encoding"):
        validate_row(schema, {"id": "x", "label": 1, "country": b"\xff"}, "f", 1)


def test_derived_id_source():
    schema = load_log_schema("criteo")
    cells = ["1"] + [""] * 39
    assert validate_row(schema, cells, "/d/day=1/p.tsv", 4)["impression_id"] == "p.tsv:4"
    assert validate_row(schema, cells, "/d/day=1/p.tsv", 4,
                        id_source="day=1/p.tsv")["impression_id"] == "day=1/p.tsv:4"
    assert logschema.relative_source("/d/day=1/p.tsv", "/d") == "day=1/p.tsv"
    assert logschema.relative_source("/d/day=1/p.tsv", "/d/") == "day=1/p.tsv"
    assert logschema.relative_source("gs://b/d/x/p.tsv", "gs://b/d") == "x/p.tsv"
    assert logschema.relative_source("/e/p.tsv", "/d") == "p.tsv"
    assert logschema.relative_source("/d/p.tsv", None) == "p.tsv"


def test_teacher_rows_and_logits():
    assert logschema.check_teacher_logits([3.0e38]) == 3.0e38
    for v in (1e300, -1e39, float("nan"), None):
        with pytest.raises(RowError, match="non_finite_teacher_logit"):
            logschema.check_teacher_logits([v])
    assert logschema.validate_teacher_row(7, 0.5) == ("7", 0.5)
    assert logschema.validate_teacher_row(b"r1", None)[0] == "r1"
    for iid, reason in ((None, "null_teacher_id"), ("", "null_teacher_id"),
                        ("  ", "null_teacher_id"), (b"\xff", "invalid_encoding")):
        with pytest.raises(RowError) as err:
            logschema.validate_teacher_row(iid, 0.5)
        assert err.value.reason == reason and reason in logschema.TEACHER_REASON_CODES


def test_reader_dialect(tmp_path):
    """BOM, CRLF, blank lines, a lone CR as data, physical line numbers, invalid UTF-8."""
    schema = load_log_schema(YAML)
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbfid,label,price,country\r\n"
                     b"a,1,2,de\r\n\r\n"
                     b"b,0,,f\rr\n"
                     b"c,0,,\xff\n"
                     b"d,1,3,x")
    stats = logschema.FileStats()
    got = list(logschema.iter_records(schema, str(path), stats))
    assert [(row, line) for row, line, _ in got] == [(1, 2), (2, 4), (3, 5), (4, 6)]
    assert got[0][2] == ["a", "1", "2", "de"] and got[1][2] == ["b", "0", "", "f\rr"]
    assert got[2][2].error.reason == "invalid_encoding"
    assert got[2][2].error.column == "country"
    assert stats == logschema.FileStats(lines=6, header_lines=1, blank_lines=1, rows=4)
    path.write_bytes(b"id,label,cost,country\n")
    with pytest.raises(ValueError, match=r"x\.csv, line 1: header"):
        list(logschema.iter_records(schema, str(path)))


def test_error_message_is_one_bounded_line():
    msg = logschema.error_message("/f.csv", 7, "cell_too_large", "too big", "C1",
                                  "a\nb" + "x" * 10_000)
    assert "\n" not in msg and len(msg) < 300
    assert msg.startswith("/f.csv, line 7, column 'C1': cell_too_large: too big (value 'a\\nb")


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_synthetic_presets_read_generate_logs_output(tmp_path, fmt):
    from matta_tf.datasets import write_click_logs

    path = str(tmp_path / f"logs.{fmt}")
    # csv needs the teacher logits apart (a log may not have a teacher_logit column)
    write_click_logs(path, 40, seed=1, fmt=fmt, teacher_path=str(tmp_path / "t.parquet") if fmt == "csv" else None)
    schema = load_log_schema(f"synthetic-{fmt}")
    rows = [validate_row(schema, raw, path, row) for row, raw in logschema.iter_raw_rows(schema, path)]
    assert len(rows) == 40 and rows[0]["impression_id"] == "s1-0"
    assert logschema.preset_name(schema) == f"synthetic-{fmt}"
    assert logschema.presets_that_read(path) == [f"synthetic-{fmt}"]
    assert logschema.presets_that_read(path, exclude=schema) == []
