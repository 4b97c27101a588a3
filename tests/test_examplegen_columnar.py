"""The columnar ExampleGen engine gives exactly what the row engine gives (issue 14).

For each format (csv, tsv, jsonl, parquet) a hostile log holds every reason code the
format can produce, plus valid rows in every shape the dialect allows that a columnar
reader might read differently (quoting, CR/CRLF, BOM, blank lines, non-ASCII, escapes,
-0, float32 edges, native Parquet/JSON types...). Both engines run the real executor;
the examples (per split, as parsed tf.Examples), the quarantine and teacher quarantine
records and every count must be equal, and the accounting identities hold.
"""
import json
import math
import os
import random

import pyarrow as pa  # a core dependency: a broken install must fail, not skip
import pyarrow.parquet as pq
import pytest
from examplegen_helpers import assert_identities, read_split, run_click_log_executor

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components import logschema

COLUMNS = [("impression_id", "string"), ("timestamp", "int"), ("label", "int"),
           ("I1", "float"), ("I2", "float"), ("I3", "int"), ("C1", "string"), ("C2", "string"),
           ("note", "string")]
NAMES = [n for n, _ in COLUMNS]


def schema_for(fmt, header=True):
    return {"format": fmt, "header": header and fmt in ("csv", "tsv"),
            "columns": [{"name": n, "type": t} for n, t in COLUMNS],
            "label": "label", "impression_id": "impression_id", "timestamp": "timestamp",
            "numeric_features": ["I1", "I2", "I3"], "categorical_features": ["C1", "C2"]}


# Reason codes each format can produce.
ALL = set(logschema.REASON_CODES)
APPLICABLE = {
    "csv": ALL,
    "tsv": ALL - {"malformed_record", "unterminated_quote"},
    "jsonl": ALL - {"wrong_column_count", "unterminated_quote"},
    "parquet": ALL - {"wrong_column_count", "malformed_record", "unterminated_quote",
                      "line_too_large"},
}

GOOD_I1 = ["1.5", "-0", "-0.0", "+2", ".5", "1.", "1e3", "1E-2", "007", "3.4e38",
           "-3.4028234e38", "1e-46", "123456789012345678", "0.1", "", "3.40282356e38", "1e-40",
           "-12", "0", "2.5e-3"]
GOOD_I2 = ["3", "", "-1", "0", "42", "999999999999999", "1234567890123456"]
GOOD_I3 = ["3", "3.0", "3e2", "-0", "", "-0.0", "12", "+7"]
GOOD_C1 = ["a", "é", "", "x y", "  ", "\u3000", "日本"]
GOOD_LABEL = ["0", "1", "1", "0", "1.0", "+1", "0e0", "01"]
GOOD_TS = ["1700000000", "+17", "0017", "1.7e9", "-5", "1700000001"]


def good_cells(i):
    iid = f"imp{i}" if i % 11 else (f" imp{i} " if i % 2 else f"é{i}")
    return [iid, GOOD_TS[i % len(GOOD_TS)], GOOD_LABEL[i % len(GOOD_LABEL)],
            GOOD_I1[i % len(GOOD_I1)], GOOD_I2[i % len(GOOD_I2)], GOOD_I3[i % len(GOOD_I3)],
            f"{GOOD_C1[i % len(GOOD_C1)]}{i % 5}" if i % 3 else GOOD_C1[i % len(GOOD_C1)],
            f"b{i % 4}" if i % 5 else "", f"n{i}"]


def with_cells(i, **changes):
    cells = good_cells(i)
    for name, value in changes.items():
        cells[NAMES.index(name)] = value
    return cells


BAD_CELLS = {  # reason -> rows of cells (text formats)
    "wrong_column_count": [["w1", "1", "1", "1"], good_cells(0) + ["extra"]],
    "unparsable_number": [with_cells(1001, I1="abc"), with_cells(1002, I1="1_000"),
                          with_cells(1003, I2=" 1"), with_cells(1004, I1="0x10"),
                          with_cells(1005, I1="\u0661\u0662"), with_cells(1006, I3="3.5"),
                          with_cells(1007, I1="1e"), with_cells(1008, I1="--1")],
    "non_finite_number": [with_cells(1011, I1="inf"), with_cells(1012, I1="nan"),
                          with_cells(1013, I1="1e39"), with_cells(1014, I2="-3.5e38"),
                          with_cells(1015, I1="9" * 50), with_cells(1016, I3="1e400")],
    "missing_label": [with_cells(1021, label="")],
    "invalid_label": [with_cells(1022, label="2"), with_cells(1023, label="yes"),
                      with_cells(1024, label="0.5"), with_cells(1025, label=" 1")],
    "missing_impression_id": [with_cells(1031, impression_id=""),
                              with_cells(1032, impression_id="   "),
                              with_cells(1033, impression_id="\u3000")],
    "invalid_timestamp": [with_cells(1041, timestamp="yesterday"),
                          with_cells(1042, timestamp=str(2**63)),
                          with_cells(1043, timestamp="1.5"), with_cells(1044, timestamp="")],
    "cell_too_large": [with_cells(1051, C2="z" * 200_000)],
}


def delimited(cells, fmt):
    return ("\t" if fmt == "tsv" else ",").join(cells).encode()


def text_log(fmt, part):
    """Lines (bytes, without the line ending) and their endings for one csv/tsv file."""
    d = "\t" if fmt == "tsv" else ","
    lines = [delimited(NAMES, fmt)]
    base = 300 * part
    rows = [good_cells(base + i) for i in range(120)]
    lines += [delimited(r, fmt) for r in rows]
    for rs in BAD_CELLS.values():
        lines += [delimited(r, fmt) for r in rs]
    # duplicates: within this file, and (part 1) of a part-0 id
    lines.append(delimited(good_cells(base + 5), fmt))
    if part == 1:
        lines.append(delimited(good_cells(7), fmt))
    # teacher targets (joined below)
    lines += [delimited(with_cells(2000 + k + 10 * part, impression_id=f"t{part}_{k}"), fmt)
              for k in range(8)]
    # valid shapes a columnar reader could misread
    lines.append(b"")  # blank
    lines.append(delimited(with_cells(base + 150, C1="a\rb"), fmt))  # a lone CR is data
    lines.append(delimited(with_cells(base + 151, impression_id=f"\ufeffimp{base + 151}"), fmt))
    lines.append(delimited(with_cells(base + 152, C2="q" * 70_000, note="r" * 70_000), fmt))
    lines.append(b"\xff\xfe" + delimited(good_cells(base + 153), fmt))  # invalid_encoding
    lines.append(delimited(with_cells(base + 154, C1="caf\xe9"), fmt).replace(
        "caf\xe9".encode(), b"caf\xe9"))  # invalid_encoding in a cell
    lines.append(b"y" * (logschema.MAX_LINE_BYTES + 5))  # line_too_large
    if fmt == "csv":
        q = good_cells(base + 160)
        lines.append(d.join(f'"{c}"' for c in q).encode())  # every cell quoted
        lines.append(delimited(with_cells(base + 161, C1='"a,b"'), fmt))  # quoted delimiter
        lines.append(delimited(with_cells(base + 162, C1='"a""b"'), fmt))  # doubled quote
        lines.append(delimited(with_cells(base + 163, C2='""'), fmt))  # quoted empty
        lines.append(delimited(with_cells(base + 164, C1='"a"x'), fmt))  # malformed
        lines.append(delimited(with_cells(base + 165, C1='a"b'), fmt))  # malformed
        lines.append(delimited(with_cells(base + 166, note='"open'), fmt))  # unterminated
        lines.append(delimited(with_cells(base + 167, C1='"', C2='"'), fmt))  # one-quote cells
    else:
        lines.append(delimited(with_cells(base + 160, C1='"quoted"', C2='a"b'), fmt))
    endings = [b"\r\n" if k % 9 == 4 else b"\n" for k in range(len(lines))]
    endings[-1] = b""  # no newline at the end of the file
    return lines, endings


def json_value(text, kind):
    """A JSON value for a text cell: numbers mostly as JSON numbers."""
    if text == "":
        return None
    if kind in ("int", "float"):
        try:
            v = json.loads(text)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
        except ValueError:
            pass
    return text


def json_line(cells, **raw):
    obj = {n: json_value(c, t) for (n, t), c in zip(COLUMNS, cells, strict=True)}
    obj.update(raw)
    return json.dumps(obj, ensure_ascii=bool(len(cells) % 2)).encode()


def jsonl_log(part):
    base = 300 * part
    lines = [json_line(good_cells(base + i)) for i in range(120)]
    for reason, rs in BAD_CELLS.items():
        if reason != "wrong_column_count":
            lines += [json_line(r) for r in rs]
    lines.append(json_line(good_cells(base + 5)))
    if part == 1:
        lines.append(json_line(good_cells(7)))
    lines += [json_line(with_cells(2000 + k + 10 * part, impression_id=f"t{part}_{k}"))
              for k in range(8)]
    g = good_cells(base + 170)
    lines += [
        b"", b"   ", b"\t",  # blank
        json_line(g, label=1.0), json_line(good_cells(base + 171), label="1"),
        json_line(good_cells(base + 172), label=True),  # invalid_label
        json_line(good_cells(base + 173), I1="1.5"), json_line(good_cells(base + 174), I1=-0),
        json_line(good_cells(base + 175), I1=1e300),  # non-finite in float32
        json_line(good_cells(base + 176), I1=10**40),  # non-finite
        json_line(good_cells(base + 177), I1=123456789012345678901),
        json_line(good_cells(base + 178), I1=True), json_line(good_cells(base + 179), I1=[1]),
        json_line(good_cells(base + 180), C1=5), json_line(good_cells(base + 181), C1=1.5),
        json_line(good_cells(base + 182), C1=True), json_line(good_cells(base + 183), C1={"x": 1}),
        json_line(good_cells(base + 184), C1="\U0001f600"),
        json_line(good_cells(base + 185), impression_id=12345 + part),
        json_line(good_cells(base + 186), impression_id=None),
        json_line(good_cells(base + 187), timestamp=1.7e9),
        json_line(good_cells(base + 188), timestamp="17"),
        json_line(good_cells(base + 189), extra={"label": 0}, more=[1, 2]),
        json_line(good_cells(base + 190), I2=None, C2=None),
        b'{"impression_id": "dupkey%d", "label": 0, "label": 1, "timestamp": 5}' % part,
        b'{"impression_id": "esc%d", "l\\u0061bel": 1, "timestamp": 5, "C1": "\\u00e9\\/"}' % part,
        b'{"impression_id": "sur%d", "label": 1, "timestamp": 5, "C1": "\\udcff"}' % part,
        b'{"impression_id": "cr%d",\r"label": 1, "timestamp": 5}' % part,  # CR is whitespace
        b'{"impression_id": "tab%d", "label": 1, "timestamp": 5, "C1": "a\tb"}' % part,
        b'{"impression_id": "mz%d", "label": 1, "timestamp": 5, "I1": -0, "I2": -0.0}' % part,
        b'{"impression_id": "mzi%d", "label": 0, "timestamp": -0, "I3": -0.0, "C1": "-0"}' % part,
        b'{"impression_id": "nan%d", "label": 1, "timestamp": 5, "I1": NaN}' % part,
        b'{"impression_id": "inf%d", "label": 1, "timestamp": 5, "I2": -Infinity}' % part,
        b'{"impression_id": "big%d", "label": 1, "timestamp": 5, "I1": 1e400}' % part,
        b"{not json", b"[1, 2]", b"{}{}", b'"text"',
        b"\xff" + json_line(good_cells(base + 191)),  # invalid_encoding
        json_line(good_cells(base + 192)).replace(b'"C2": ', b'"C2": "caf\xe9", "x": '),
        json_line(good_cells(base + 193), C2="q" * 70_000, note="r" * 70_000),
        b"y" * (logschema.MAX_LINE_BYTES + 5),
    ]
    endings = [b"\r\n" if k % 9 == 4 else b"\n" for k in range(len(lines))]
    return lines, endings


def parquet_files(data):
    n = 60
    ids = [f"imp{i}" for i in range(n)]
    ids[3], ids[4], ids[5], ids[6] = None, "", "  ", "\u3000"
    ids[7] = "imp1"  # duplicate
    ids[10:18] = [f"t0_{k}" for k in range(8)]
    label = [i % 2 for i in range(n)]
    label[20], label[21] = None, 2
    i1 = [i * 0.5 for i in range(n)]
    i1[22], i1[23], i1[24], i1[25], i1[26] = math.nan, math.inf, 1e39, 3.4e38, -0.0
    i2 = [str(i) for i in range(n)]
    i2[27], i2[28], i2[29], i2[30], i2[31] = "1.5", "abc", "", None, " 1"
    c1 = [f"c{i % 4}" for i in range(n)]
    c1[32] = "z" * 200_000
    c2 = [b"b%d" % (i % 3) for i in range(n)]
    c2[33] = b"\xff"
    note = ["x"] * n
    note[34] = "w" * 200_000  # too large even in a column that is not a feature
    pq.write_table(pa.table({
        "impression_id": pa.array(ids, pa.string()),
        "timestamp": pa.array([1_700_000_000 + i for i in range(n)], pa.int64()),
        "label": pa.array(label, pa.int64()), "I1": pa.array(i1, pa.float64()),
        "I2": pa.array(i2, pa.string()), "I3": pa.array([None if i % 7 == 0 else 2**62 + i
                                                          for i in range(n)], pa.int64()),
        "C1": pa.array(c1, pa.string()), "C2": pa.array(c2, pa.binary()),
        "note": pa.array(note, pa.large_string())}), data / "a.parquet", row_group_size=25)
    m = 40
    ts = [1.7e9 + i for i in range(m)]
    ts[3], ts[4], ts[5] = 1.5, math.nan, 2.0**63
    lab = ["1" if i % 2 else "0" for i in range(m)]
    lab[6], lab[7], lab[8] = "1.0", "x", None
    i3 = [3.0] * m
    i3[9], i3[10] = 3.5, -0.0
    pq.write_table(pa.table({
        "impression_id": pa.array(list(range(m)), pa.int64()),  # "5" etc.
        "timestamp": pa.array(ts, pa.float64()), "label": pa.array(lab, pa.string()),
        "I1": pa.array(list(range(m)), pa.int32()),
        "I2": pa.array([i / 3 for i in range(m)], pa.float32()),
        "I3": pa.array(i3, pa.float64()),
        "C1": pa.array([f"d{i % 3}" for i in range(m)]).dictionary_encode(),
        "C2": pa.array([i - 20 for i in range(m)], pa.int64()),
        "note": pa.array([b"n"] * m, pa.binary())}), data / "b.parquet")
    k = 12
    import decimal

    pq.write_table(pa.table({
        "impression_id": pa.array([f"c{i}" for i in range(k)], pa.large_string()),
        "timestamp": pa.array(list(range(k)), pa.uint64()),
        "label": pa.array([i % 2 for i in range(k)], pa.int8()),
        "I1": pa.array([decimal.Decimal("1.25")] * k, pa.decimal128(5, 2)),
        "I2": pa.array([None] * k, pa.null()),
        "I3": pa.array([i for i in range(k)], pa.uint64()),
        "C1": pa.array([i * 0.5 for i in range(k)], pa.float64()),
        "C2": pa.array([bool(i % 2) for i in range(k)], pa.bool_()),
        "note": pa.array(["n"] * k)}), data / "c.parquet")
    pq.write_table(pa.table({  # booleans are not numbers
        "impression_id": ["d0", "d1", "d2"], "timestamp": pa.array([1, 2, 3], pa.int16()),
        "label": pa.array([True, False, True]), "I1": pa.array([1.0, 2.0, 3.0]),
        "I2": pa.array([1.0, 2.0, 3.0]), "I3": pa.array([True, None, False]),
        "C1": ["x", "y", "z"], "C2": ["x", "y", "z"], "note": ["n", "n", "n"]}),
        data / "d.parquet")


def write_teacher(data, fmt):
    t = data / "teacher"
    t.mkdir()
    prefix = "t0_" if fmt != "parquet" else "t0_"
    ids = [f"{prefix}{k}" for k in range(8)] + [f"t1_{k}" for k in range(8)]
    logits = [0.1 * k for k in range(16)]
    logits[1], logits[2], logits[3], logits[4], logits[6] = math.nan, math.inf, 1e300, None, 0.6
    ids += [f"{prefix}5", f"{prefix}6", f"{prefix}6", "ghost", None, "", "  ", "\u3000",
            "imp2", "imp3"]
    logits += [0.7, 0.6, 0.6, 1.0, 0.3, 0.2, 0.1, 0.0, -1.5, 2.5]  # t0_5 conflicts
    pq.write_table(pa.table({"impression_id": pa.array(ids, pa.string()),
                             "teacher_logit": pa.array(logits, pa.float64())}), t / "a.parquet")
    pq.write_table(pa.table({"impression_id": pa.array([b"imp8", b"\xff", b"imp9"], pa.binary()),
                             "teacher_logit": pa.array([1, 2, 3], pa.int64())}), t / "b.parquet")
    pq.write_table(pa.table({"impression_id": pa.array([5, 6], pa.int64()),
                             "teacher_logit": pa.array([0.5, None], pa.float32())}),
                   t / "c.parquet")


def make_log(tmp_path, fmt):
    data = tmp_path / f"logs-{fmt}"
    data.mkdir()
    if fmt == "parquet":
        parquet_files(data)
        pattern = "*.parquet"
    else:
        for part in (0, 1):
            lines, endings = jsonl_log(part) if fmt == "jsonl" else text_log(fmt, part)
            body = b"".join(line + end for line, end in zip(lines, endings, strict=True))
            if part == 1:
                body = b"\xef\xbb\xbf" + body  # a BOM starts the second file
            (data / f"part-{part}.{fmt}").write_bytes(body)
        pattern = f"part-*.{fmt}"
    write_teacher(data, fmt)
    return data, pattern


def run_engine(tmp_path, name, data, pattern, schema, engine, split=None, **options):
    return run_click_log_executor(tmp_path / name, data, pattern, schema, "teacher/*.parquet", split, 1.0,
                                  engine=engine, **options)


def outputs(examples, quarantine, config):
    props = {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
             if v.HasField("int_value")}
    import tensorflow as tf

    splits = {}
    for name in config["split"]["names"]:
        files = tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{name}", "*.gz"))
        splits[name] = {}
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            ex = tf.train.Example.FromString(rec.numpy())
            iid = ex.features.feature["impression_id"].bytes_list.value[0]
            assert iid not in splits[name]
            splits[name][iid] = ex.SerializeToString(deterministic=True)
        assert len(splits[name]) == len(read_split(examples, name))
    records = {}
    for file in ("quarantine.jsonl", "teacher_quarantine.jsonl"):
        with open(os.path.join(quarantine.uri, file)) as fh:
            records[file] = sorted(json.dumps(json.loads(line), sort_keys=True)
                                   for line in fh if line.strip())
    return props, splits, records


def assert_same(a, b):
    props_a, splits_a, rec_a = a
    props_b, splits_b, rec_b = b
    assert props_a == props_b
    assert splits_a.keys() == splits_b.keys()
    for name in splits_a:
        assert sorted(splits_a[name]) == sorted(splits_b[name]), name
        for iid, ex in splits_a[name].items():
            assert ex == splits_b[name][iid], (name, iid)
    for file in rec_a:
        assert rec_a[file] == rec_b[file], file


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_columnar_engine_equals_row_engine(tmp_path, fmt):
    data, pattern = make_log(tmp_path, fmt)
    schema = schema_for(fmt)
    split = {"method": "hash", "names": ["train", "eval", "test"], "buckets": [3, 1, 1]}
    rows = outputs(*run_engine(tmp_path, "rows", data, pattern, schema, "rows", split))
    columnar = outputs(*run_engine(tmp_path, "columnar", data, pattern, schema, "columnar", split))
    assert_same(columnar, rows)
    props = columnar[0]
    assert_identities(props)
    missing = {r for r in APPLICABLE[fmt] if not props[f"quarantined_{r}"]}
    assert not missing, f"{fmt} log lacks reason codes {missing}"
    assert props["teacher_quarantined_null_teacher_id"] and props[
        "teacher_quarantined_invalid_encoding"]
    assert props["teacher_rows_joined"] and props["teacher_rows_unmatched"]
    assert props["rows_written"] > 50


def test_columnar_small_chunks_shards_and_shuffle_join(tmp_path, monkeypatch):
    """Chunk boundaries inside and around every kind of line, 3 shards, the teacher join
    as a shuffle and as a lookup, a timestamp split: all equal to the row engine."""
    from components.click_log_example_gen import columnar

    data, pattern = make_log(tmp_path, "csv")
    schema = schema_for("csv")
    split = {"method": "timestamp", "names": ["old", "new"], "cutoffs": [1_700_000_000]}
    rows = outputs(*run_engine(tmp_path, "rows", data, pattern, schema, "rows", split))
    monkeypatch.setattr(columnar, "CHUNK_BYTES", 700)
    for join in ("shuffle", "lookup"):
        got = outputs(*run_engine(tmp_path, f"col-{join}", data, pattern, schema, "columnar",
                                  split, teacher_join=join, num_shards=3))
        assert_same(got, rows)


# -- pieces, without Beam -------------------------------------------------------------------
def test_frame_records_matches_tf_record_writer(tmp_path):
    import tensorflow as tf

    from components.click_log_example_gen import columnar

    rng = random.Random(0)
    records = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(200)]
    path = str(tmp_path / "x.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in records:
            w.write(r)
    with open(path, "rb") as f:
        assert columnar.frame_records(records) == f.read()
    gz = str(tmp_path / "x.gz")
    writer = columnar.TFRecordGzipWriter(gz)
    writer.write_all(records[:50])
    writer.write_all(records[50:])
    writer.close()
    got = [r.numpy() for r in tf.data.TFRecordDataset([gz], compression_type="GZIP")]
    assert got == records and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


VALUES = (["", "0", "1", "-0", "+0", "-0.0", "0.0", "1.0", "1.", ".5", "+1", "01", "0e0", "1e0",
           "2", "-1", "yes", " 1", "1 ", "\t1", "1_0", "0x1", "\u0661", "\uff11", "nan", "NaN",
           "-inf", "Infinity", "1e39", "-3.5e38", "3.4e38", "3.4028235e38", "3.40282356e38",
           "3.4028235677973366e38", "1e-46", "1e-40", "123456789012345", "1234567890123456",
           "123456789012345678", "9223372036854775807", "9223372036854775808",
           "-9223372036854775808", "9" * 39, "9" * 40, "1e400", "1e-400", "1e99999", "3.5",
           "3e2", "1.7e9", "--1", "1e", "e5", ".", "+", "-", "1.2.3", "é", "a", "  ", "\u3000",
           "x y", "\ufeff1", "1\r", "0" * 120 + "1"])


def test_vectorised_rules_only_accept_what_the_row_path_accepts():
    import numpy as np

    from components.click_log_example_gen import columnar

    arr = pa.array(VALUES, pa.string())
    ints = ["", "0", "-0", "+0", "+12", "-7", "007", "123456789012345", "-123456789012345"]
    for values_list, integer in ((VALUES, False), (VALUES, True), (ints, False), (ints, True)):
        good, values = columnar.number_values(pa.array(values_list, pa.string()), integer)
        for text, ok, v in zip(values_list, good, values.to_pylist(), strict=True):
            if not ok:
                continue
            want = logschema._parse_cell(logschema.Column("x", "int" if integer else "float"),
                                         text)
            got32 = np.float32(v) if v is not None else None
            want32 = np.float32(float(want)) if want is not None else None
            assert (got32 is None) == (want32 is None), text
            if got32 is not None:
                assert got32.tobytes() == want32.tobytes(), (text, got32, want32)
    good, values = columnar.label_values(arr)
    for text, ok, v in zip(VALUES, good, values.to_pylist(), strict=True):
        if ok:
            assert logschema.parse_number(text, True, "label") == v, text
    good, values = columnar.timestamp_values(arr)
    for text, ok, v in zip(VALUES, good, values.to_pylist(), strict=True):
        if ok:
            assert logschema.parse_number(text, True, "ts") == v, text
    good, values = columnar.id_values(arr)
    for text, ok, v in zip(VALUES, good, values.to_pylist(), strict=True):
        if ok:
            assert text.strip() and v == text, text
    # Most plain values take the fast path (not the row path).
    assert columnar.number_values(arr, False)[0].sum() >= 30


def test_split_and_shard_match_split_index():
    import hashlib

    from components import example_gen
    from components.click_log_example_gen import columnar

    split = {"method": "hash", "names": ["a", "b", "c"], "buckets": [3, 1, 2]}
    plan = columnar.Plan(logschema.load_log_schema(schema_for("csv")).to_dict(), split, 7)
    ids = [f"id{i}" for i in range(2000)] + ["é", "", "\U0001f600"]
    got_split, got_shard = plan.assign([i.encode() for i in ids], None)
    for iid, s, k in zip(ids, got_split, got_shard, strict=True):
        assert s == example_gen.split_index(split, iid, None)
        assert k == (int(hashlib.sha256(iid.encode()).hexdigest(), 16) >> 64) % 7
    assert set(got_shard) == set(range(7))
    assert (plan.shard_of([i.encode() for i in ids]) == got_shard).all()
    big = {"method": "hash", "names": ["a", "b"], "buckets": [2**40, 3]}
    plan = columnar.Plan(logschema.load_log_schema(schema_for("csv")).to_dict(), big, 1)
    got_split, _ = plan.assign([i.encode() for i in ids[:200]], None)
    assert [example_gen.split_index(big, i, None) for i in ids[:200]] == list(got_split)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_chunk_size_is_invisible(tmp_path, fmt):
    """The reader's output does not depend on where chunks end (FileReader, no Beam)."""
    from components.click_log_example_gen import columnar

    data, _ = make_log(tmp_path, fmt)
    plan = columnar.Plan(logschema.load_log_schema(schema_for(fmt)).to_dict(),
                         {"method": "hash", "names": ["a"], "buckets": [1]})
    path = str(data / f"part-1.{fmt}")

    def read(chunk):
        reader = columnar.FileReader(plan, path, 0, "p", chunk)
        good, bad = [], []
        for kind, item in reader.run():
            if kind == "good":
                good += item.to_pylist()
            else:
                bad.append(json.dumps(item, sort_keys=True))
        key = columnar.ROW
        return sorted(good, key=lambda r: r[key]), sorted(bad), reader.stats, reader.fallback_rows

    want = read(columnar.CHUNK_BYTES)
    assert want[2].rows == len(want[0]) + len(want[1])
    for chunk in (1, 97, 700, 5000, 131_073):
        got = read(chunk)
        assert got[:3] == want[:3], chunk
    # The row path decides only some rows (bad ones and unusual shapes).
    assert 0 < want[3] < want[2].rows
