"""The built-in `criteo` preset reads the Criteo TSV format (rows generated here)."""
import random

import pytest

import matta_tf  # noqa: F401
from components.logschema import load_log_schema, validate_row


def criteo_line(rng, label=None):
    ints = ["" if rng.random() < 0.2 else str(rng.randint(-1, 5000)) for _ in range(13)]
    cats = ["" if rng.random() < 0.1 else f"{rng.getrandbits(32):08x}" for _ in range(26)]
    label = rng.randint(0, 1) if label is None else label
    return "\t".join([str(label)] + ints + cats)


def test_preset_columns():
    s = load_log_schema("criteo")
    assert s.format == "tsv" and not s.header and s.impression_id is None
    assert s.column_names[0] == "label" and len(s.columns) == 40
    assert s.numeric_features == tuple(f"I{i}" for i in range(1, 14))
    assert s.categorical_features == tuple(f"C{i}" for i in range(1, 27))


def test_criteo_line_parses():
    s = load_log_schema("criteo")
    rng = random.Random(0)
    line = criteo_line(rng, label=1)
    cells = line.split("\t")
    rec = validate_row(s, cells, "/x/day_0.tsv", 17)
    assert rec["label"] == 1 and rec["impression_id"] == "day_0.tsv:17"
    for i in range(13):
        want = None if cells[1 + i] == "" else float(cells[1 + i])
        assert rec[f"I{i + 1}"] == want
    for i in range(26):
        want = None if cells[14 + i] == "" else cells[14 + i]
        assert rec[f"C{i + 1}"] == want


def test_criteo_files_through_example_gen(tmp_path):
    from test_examplegen import read_split, run_executor

    rng = random.Random(1)
    data = tmp_path / "criteo"
    data.mkdir()
    lines = [criteo_line(rng) for _ in range(400)]
    lines[10] = lines[10].rsplit("\t", 1)[0]  # 39 columns
    lines[20] = "\t".join(["x"] + lines[20].split("\t")[1:])  # bad label
    (data / "day_0.tsv").write_text("\n".join(lines[:200]) + "\n")
    (data / "day_1.tsv").write_text("\n".join(lines[200:]) + "\n")
    examples, _, _ = run_executor(tmp_path, data, "day_*.tsv", "criteo")
    props = {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
             if v.HasField("int_value")}
    assert props["rows_in"] == 400 and props["rows_written"] == 398
    assert props["quarantined_wrong_column_count"] == 1
    assert props["quarantined_invalid_label"] == 1
    rows = {**read_split(examples, "train"), **read_split(examples, "eval")}
    f = rows["day_1.tsv:5"]
    cells = lines[204].split("\t")
    assert f["label"].int64_list.value[0] == int(cells[0])
    got_c = [v.decode() for v in f["C1"].bytes_list.value]
    assert got_c == ([] if cells[14] == "" else [cells[14]])
    assert list(f["I1"].float_list.value) == ([] if cells[1] == "" else [pytest.approx(float(cells[1]))])
