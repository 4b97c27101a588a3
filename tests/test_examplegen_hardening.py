"""ClickLogExampleGen against hostile input (issue 12): every case runs the real Beam
executor, checks that only the offending line is quarantined (with a one-line message
naming file, line, column and value) and asserts the accounting identities:

    lines_in        == header_lines + blank_lines + rows_in   (== physical lines in the files)
    rows_in         == rows_written + rows_quarantined
    teacher_rows_in == teacher_rows_joined + teacher_rows_unmatched + teacher_rows_invalid
"""
import json
import math
import os

import pyarrow as pa  # a core dependency: a broken install must fail, not skip
import pyarrow.parquet as pq
import pytest
from examplegen_helpers import (
    HEADER,
    SCHEMA,
    assert_identities,
    good_row,
    read_quarantine,
    read_split,
)
from test_examplegen import run_executor

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components import logschema

TSV_SCHEMA = dict(SCHEMA, format="tsv")
JSONL_SCHEMA = dict(SCHEMA, format="jsonl", header=False)
PARQUET_SCHEMA = dict(SCHEMA, format="parquet", header=False)
# Criteo-like: no impression id column, ids are derived from file and row.
DERIVED_SCHEMA = {
    "format": "tsv", "header": False,
    "columns": [{"name": "label", "type": "int"}, {"name": "I1", "type": "float"},
                {"name": "C1", "type": "string"}],
    "label": "label", "numeric_features": ["I1"], "categorical_features": ["C1"],
}


def props_of(artifact) -> dict:
    return {k: v.int_value for k, v in artifact.mlmd_artifact.custom_properties.items()
            if v.HasField("int_value")}


def physical_lines(*paths) -> int:
    n = 0
    for p in paths:
        data = open(p, "rb").read()
        n += data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return n


def assert_one_line_message(rec, path, line, column=None):
    """The quarantine record names file, line (and column) in a single-line detail."""
    assert rec["source"] == str(path) and rec["line"] == line
    assert "\n" not in rec["detail"] and "\r" not in rec["detail"]
    where = f"{path}, line {line}" + ("" if column is None else f", column {column!r}")
    assert rec["detail"].startswith(where + f": {rec['reason']}: "), rec["detail"]
    assert len(rec["detail"]) < 600


def write_lines(path, lines: list[bytes], ending=b"\n"):
    path.write_bytes(ending.join(lines) + ending)


def csv_line(cells, delimiter=","):
    return delimiter.join(cells).encode()


def json_line(i):
    return json.dumps({"impression_id": f"imp{i}", "timestamp": 1_700_000_000 + i,
                       "label": i % 2, "I1": i * 0.5, "I2": 3, "C1": f"a{i % 5}",
                       "C2": "b"}).encode()


def data_lines(fmt, n):
    if fmt == "jsonl":
        return [json_line(i) for i in range(n)]
    delim = "\t" if fmt == "tsv" else ","
    return [csv_line(HEADER, delim)] + [csv_line(good_row(i), delim) for i in range(n)]


def schema_for(fmt):
    return {"csv": SCHEMA, "tsv": TSV_SCHEMA, "jsonl": JSONL_SCHEMA}[fmt]


# -- invalid UTF-8 ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_invalid_utf8_byte_quarantines_only_its_line(tmp_path, fmt):
    data = tmp_path / "logs"
    data.mkdir()
    lines = data_lines(fmt, 30)
    header = 0 if fmt == "jsonl" else 1
    # Line (1-based) 8 gets a Latin-1 byte inside C1, line 20 a truncated UTF-8 sequence.
    # (C1 = "a<k>" holds the first "a" of a line.)
    for idx, bad in ((7, b"caf\xe9"), (19, b"x\xe2\x82")):
        lines[idx] = lines[idx].replace(b"a", bad, 1) if fmt != "jsonl" else (
            lines[idx].replace(b'"a', b'"' + bad, 1))
    path = data / f"x.{fmt}"
    write_lines(path, lines)
    examples, quarantine, _ = run_executor(tmp_path, data, f"*.{fmt}", schema_for(fmt))
    props = props_of(examples)
    assert_identities(props, physical_lines(path))
    assert props["rows_in"] == 30 and props["quarantined_invalid_encoding"] == 2
    assert props["rows_written"] == 28
    q = sorted(read_quarantine(quarantine), key=lambda r: r["line"])
    assert [r["line"] for r in q] == [8, 20] and [r["row"] for r in q] == [8 - header, 20 - header]
    for rec in q:
        assert rec["reason"] == "invalid_encoding" and rec["column"] == "C1"
        assert_one_line_message(rec, path, rec["line"], "C1")
    assert "\\xe9" in q[0]["value"] and "0xe9" in q[0]["detail"]
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    bad_ids = {f"imp{7 - header}", f"imp{19 - header}"}
    assert set(written) == {f"imp{i}" for i in range(30)} - bad_ids


# -- oversized cells and lines ------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_cell_over_128k_quarantines_only_its_line(tmp_path, fmt):
    data = tmp_path / "logs"
    data.mkdir()
    lines = data_lines(fmt, 20)
    big = "z" * 200_000
    if fmt == "jsonl":
        rec = json.loads(lines[4])
        rec["C2"] = big
        lines[4] = json.dumps(rec).encode()
        line = 5
    else:
        cells = good_row(3)
        cells[6] = big
        lines[4] = csv_line(cells, "\t" if fmt == "tsv" else ",")
        line = 5
    # A cell at the limit (128 KiB of UTF-8) is fine.
    ok = "y" * logschema.MAX_CELL_BYTES
    if fmt == "jsonl":
        rec = json.loads(lines[10])
        rec["C2"] = ok
        lines[10] = json.dumps(rec).encode()
    else:
        cells = good_row(9 if fmt != "jsonl" else 10)
        cells[6] = ok
        lines[10] = csv_line(cells, "\t" if fmt == "tsv" else ",")
    path = data / f"x.{fmt}"
    write_lines(path, lines)
    examples, quarantine, _ = run_executor(tmp_path, data, f"*.{fmt}", schema_for(fmt))
    props = props_of(examples)
    assert_identities(props, physical_lines(path))
    assert props["rows_in"] == 20 and props["quarantined_cell_too_large"] == 1
    assert props["rows_written"] == 19
    (rec,) = read_quarantine(quarantine)
    assert rec["reason"] == "cell_too_large" and rec["column"] == "C2" and rec["line"] == line
    assert_one_line_message(rec, path, line, "C2")
    assert len(rec["value"]) < 200 and "200000" in rec["value"]  # truncated, says how long
    assert len(json.dumps(rec)) < 50_000  # the raw row is truncated too
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    long_id = "imp10" if fmt == "jsonl" else "imp9"
    assert written[long_id]["C2"].bytes_list.value[0] == ok.encode()


def test_line_over_limit_is_skipped_to_its_end(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    lines = data_lines("tsv", 10)
    lines[3] = b"y" * (logschema.MAX_LINE_BYTES + 10)  # one 16 MiB cell, then a LF
    path = data / "x.tsv"
    write_lines(path, lines)
    examples, quarantine, _ = run_executor(tmp_path, data, "*.tsv", TSV_SCHEMA)
    props = props_of(examples)
    assert_identities(props, physical_lines(path))
    assert props["quarantined_line_too_large"] == 1 and props["rows_written"] == 9
    (rec,) = read_quarantine(quarantine)
    assert_one_line_message(rec, path, 4)


# -- quoting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_unterminated_quote_loses_only_its_own_line(tmp_path, ending):
    data = tmp_path / "logs"
    data.mkdir()
    lines = [csv_line(HEADER)] + [csv_line(good_row(i)) for i in range(80)]
    lines[5] = lines[5].replace(b",a", b',"a', 1)  # opens a quote never closed: line 6
    lines[30] = lines[30].replace(b",a", b',"a"x', 1)  # text after the closing quote: line 31
    lines[50] = lines[50].replace(b",a", b",a\"b", 1)  # a bare quote in a cell: line 51
    # RFC 4180 quoting that is fine: a quoted delimiter, a doubled quote, a blank line.
    cells = good_row(70)
    lines[71] = (",".join(cells[:5]) + ',"a,""q"""' + "," + cells[6]).encode()
    lines.insert(60, b"")
    path = data / "x.csv"
    write_lines(path, lines, ending)
    examples, quarantine, _ = run_executor(tmp_path, data, "*.csv", SCHEMA)
    props = props_of(examples)
    assert_identities(props, physical_lines(path))
    assert props["lines_in"] == 82 and props["header_lines"] == 1 and props["blank_lines"] == 1
    assert props["rows_in"] == 80
    assert props["quarantined_unterminated_quote"] == 1
    assert props["quarantined_malformed_record"] == 2
    assert props["rows_written"] == 77
    q = {r["line"]: r for r in read_quarantine(quarantine)}
    assert sorted(q) == [6, 31, 51]
    assert q[6]["reason"] == "unterminated_quote" and q[6]["row"] == 5
    for line, rec in q.items():
        assert rec["column"] == "C1"
        assert_one_line_message(rec, path, line, "C1")
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    assert set(written) == {f"imp{i}" for i in range(80)} - {"imp4", "imp29", "imp49"}
    assert written["imp70"]["C1"].bytes_list.value[0] == b'a,"q"'


# -- float32 overflow -------------------------------------------------------------------------
def teacher_table(path, ids, logits):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"impression_id": pa.array(ids, pa.string()),
                             "teacher_logit": pa.array(logits, pa.float64())}), path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_values_beyond_float32_are_non_finite(tmp_path, fmt):
    data = tmp_path / "logs"
    data.mkdir()
    n = 20
    i1 = [i * 0.5 for i in range(n)]
    i1[2], i1[3], i1[4] = 1e39, -3.5e38, 3.4e38  # the last one is finite in float32
    i2 = [3.0] * n
    i2[5] = 1e300
    if fmt == "parquet":
        pq.write_table(pa.table({
            "impression_id": [f"imp{i}" for i in range(n)],
            "timestamp": pa.array([1_700_000_000 + i for i in range(n)], pa.int64()),
            "label": pa.array([i % 2 for i in range(n)], pa.int64()),
            "I1": pa.array(i1, pa.float64()), "I2": pa.array(i2, pa.float64()),
            "C1": ["a"] * n, "C2": ["b"] * n}), data / "x.parquet")
        schema = PARQUET_SCHEMA
    elif fmt == "jsonl":
        (data / "x.jsonl").write_text("".join(json.dumps({
            "impression_id": f"imp{i}", "timestamp": 1_700_000_000 + i, "label": i % 2,
            "I1": i1[i], "I2": i2[i], "C1": "a", "C2": "b"}) + "\n" for i in range(n)))
        schema = JSONL_SCHEMA
    else:
        rows = [good_row(i) for i in range(n)]
        rows[2][3], rows[3][3], rows[4][3], rows[5][4] = "1e39", "-3.5e38", "3.4e38", "1e300"
        write_lines(data / "x.csv", [csv_line(HEADER)] + [csv_line(r) for r in rows])
        schema = SCHEMA
    teacher_table(str(data / "teacher" / "t.parquet"), ["imp7", "imp8", "imp9", "imp10"],
                  [1e300, -1e39, 3.0e38, 0.5])
    examples, quarantine, _ = run_executor(tmp_path, data, f"x.{fmt}", schema,
                                           teacher_pattern="teacher/*.parquet")
    props = props_of(examples)
    assert_identities(props, physical_lines(data / "x.csv") if fmt == "csv" else n)
    assert props["quarantined_non_finite_number"] == 3  # imp2, imp3, imp5
    assert props["quarantined_non_finite_teacher_logit"] == 2  # imp7, imp8
    assert props["rows_written"] == n - 5
    assert props["teacher_rows_in"] == props["teacher_rows_joined"] == 4
    q = {r["row"]: r for r in read_quarantine(quarantine)}  # data row of imp<i> is i + 1
    assert sorted(q) == [3, 4, 6, 8, 9]
    header = 1 if fmt == "csv" else 0
    for i, column in ((2, "I1"), (3, "I1"), (5, "I2")):
        rec = q[i + 1]
        assert rec["reason"] == "non_finite_number" and rec["column"] == column
        assert_one_line_message(rec, data / f"x.{fmt}", i + 1 + header, column)
    for i in (7, 8):
        assert q[i + 1]["reason"] == "non_finite_teacher_logit"
        assert_one_line_message(q[i + 1], data / f"x.{fmt}", i + 1 + header, "teacher_logit")
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    assert "imp7" not in written and "imp8" not in written
    assert written["imp4"]["I1"].float_list.value[0] == pytest.approx(3.4e38, rel=1e-6)
    assert written["imp9"]["has_teacher"].int64_list.value[0] == 1
    for f in written.values():
        for name in ("I1", "I2", "teacher_logit"):
            assert all(math.isfinite(v) for v in f[name].float_list.value)


# -- derived ids ------------------------------------------------------------------------------
def test_derived_ids_use_the_path_relative_to_the_input_base(tmp_path):
    data = tmp_path / "logs"
    for day in (1, 2):
        (data / f"day={day}").mkdir(parents=True)
        write_lines(data / f"day={day}" / "part-0.tsv",
                    [f"{i % 2}\t{i}\tc{day}".encode() for i in range(50)])
    teacher_table(str(data / "teacher" / "t.parquet"),
                  ["day=2/part-0.tsv:3", "day=1/part-0.tsv:3", "part-0.tsv:3"], [0.25, -0.5, 9.0])
    examples, quarantine, _ = run_executor(tmp_path, data, "day=*/part-*.tsv", DERIVED_SCHEMA,
                                           teacher_pattern="teacher/*.parquet")
    props = props_of(examples)
    assert_identities(props, 100)
    assert props["rows_written"] == 100 and props["quarantined_duplicate_impression_id"] == 0
    assert props["teacher_rows_joined"] == 2 and props["teacher_rows_unmatched"] == 1
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    assert set(written) == {f"day={d}/part-0.tsv:{r}" for d in (1, 2) for r in range(1, 51)}
    assert written["day=2/part-0.tsv:3"]["teacher_logit"].float_list.value[0] == 0.25
    assert written["day=1/part-0.tsv:3"]["teacher_logit"].float_list.value[0] == -0.5
    assert written["day=2/part-0.tsv:3"]["C1"].bytes_list.value[0] == b"c2"


# -- teacher rows -----------------------------------------------------------------------------
def test_every_teacher_row_is_accounted_for(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    rows = [good_row(i) for i in range(10)]
    rows[6][2] = "7"  # invalid label: imp6 is quarantined, its teacher row cannot join
    write_lines(data / "x.csv", [csv_line(HEADER)] + [csv_line(r) for r in rows])
    teacher_table(str(data / "teacher" / "t.parquet"),
                  ["imp1", "imp2", "imp2", None, "", "  ", "ghost", "imp6", None],
                  [0.1, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, None])
    # A second file with a binary id column: UTF-8 ids join, others are invalid.
    pq.write_table(pa.table({"impression_id": pa.array([b"imp3", b"\xff"], pa.binary()),
                             "teacher_logit": [0.3, 0.1]}), data / "teacher" / "u.parquet")
    examples, quarantine, _ = run_executor(tmp_path, data, "*.csv", SCHEMA,
                                           teacher_pattern="teacher/*.parquet")
    props = props_of(quarantine)
    assert_identities(props, 11)
    assert props["teacher_rows_in"] == 11
    assert props["teacher_rows_joined"] == 4  # imp1, imp2 twice (same logit), imp3
    assert props["teacher_rows_unmatched"] == 2  # ghost, imp6
    assert props["teacher_quarantined_null_teacher_id"] == 4
    assert props["teacher_quarantined_invalid_encoding"] == 1
    assert props["teacher_rows_invalid"] == 5
    assert props["rows_written"] == 9 and props["quarantined_invalid_label"] == 1
    with open(os.path.join(quarantine.uri, "teacher_quarantine.jsonl")) as fh:
        tq = [json.loads(line) for line in fh if line.strip()]
    teacher_path = str(data / "teacher" / "t.parquet")
    nulls = [r for r in tq if r["source"] == teacher_path]
    assert sorted(r["line"] for r in nulls) == [4, 5, 6, 9]
    for rec in nulls:
        assert rec["reason"] == "null_teacher_id"
        assert_one_line_message(rec, teacher_path, rec["line"], "impression_id")
    (enc,) = [r for r in tq if r["source"] != teacher_path]
    assert enc["reason"] == "invalid_encoding" and enc["line"] == 2 and enc["value"] == "\\xff"
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    assert written["imp2"]["teacher_logit"].float_list.value[0] == pytest.approx(0.2)
    assert written["imp3"]["teacher_logit"].float_list.value[0] == pytest.approx(0.3)
    assert written["imp4"]["has_teacher"].int64_list.value[0] == 0


# -- strict numbers -----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_numbers_are_strict_ascii_decimal(tmp_path, fmt):
    data = tmp_path / "logs"
    data.mkdir()
    # Arabic-Indic "12", padded, hex, no exponent digits, a space, a fullwidth "1".
    bad_i1 = ["1_000", "\u0661\u0662", " 1", "1 ", "0x10", "1e", " ", "\uff11"]
    good_i1 = {"+1.5e3": 1500.0, "007": 7.0, ".5": 0.5, "-2.": -2.0, "1E-2": 0.01}
    n = 20
    rows = [good_row(i) for i in range(n)]
    for k, v in enumerate(bad_i1):
        rows[k][3] = v
    for k, v in enumerate(good_i1, start=10):
        rows[k][3] = v
    rows[16][2] = " 1"  # padded label
    rows[17][1] = "1_700_000_000"  # timestamp with separators
    rows[18][1] = str(2**63)  # timestamp beyond int64
    if fmt == "csv":
        write_lines(data / "x.csv", [csv_line(HEADER)] + [csv_line(r) for r in rows])
        schema = SCHEMA
    else:
        (data / "x.jsonl").write_text("".join(json.dumps(dict(zip(HEADER, r, strict=True))) + "\n"
                                              for r in rows))
        schema = JSONL_SCHEMA
    examples, quarantine, _ = run_executor(tmp_path, data, f"*.{fmt}", schema)
    props = props_of(examples)
    assert_identities(props, n + (1 if fmt == "csv" else 0))
    assert props["quarantined_unparsable_number"] == len(bad_i1)
    assert props["quarantined_invalid_label"] == 1
    assert props["quarantined_invalid_timestamp"] == 2
    assert props["rows_written"] == n - len(bad_i1) - 3
    q = {r["row"]: r for r in read_quarantine(quarantine)}
    for k, v in enumerate(bad_i1):
        assert q[k + 1]["reason"] == "unparsable_number" and q[k + 1]["value"] == v
        assert q[k + 1]["column"] == "I1"
    written = {**read_split(examples, "train"), **read_split(examples, "eval")}
    for k, want in enumerate(good_i1.values(), start=10):
        assert written[f"imp{k}"]["I1"].float_list.value[0] == pytest.approx(want)
