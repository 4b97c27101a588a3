"""ClickLogExampleGen: quarantine reason codes, exact accounting, teacher join, splits."""
import json
import math
import os

import pyarrow as pa  # a core dependency: a broken install must fail, not skip
import pyarrow.parquet as pq
import pytest
from examplegen_helpers import (
    HEADER,
    SCHEMA,
    good_row,
    read_quarantine,
    read_split,
    run_click_log_executor,
)

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components import logschema


def run_executor(tmp_path, input_base, pattern, schema, teacher_pattern=None, split=None,
                 max_rate=1.0):
    return run_click_log_executor(tmp_path / "out", input_base, pattern, schema, teacher_pattern, split,
                                  max_rate)


def test_every_reason_code_counted_exactly_and_good_rows_arrive(tmp_path):
    import csv

    data = tmp_path / "logs"
    data.mkdir()
    rows = [good_row(i) for i in range(300)]
    bad = {
        "wrong_column_count": [["bad1", "1700000000", "1", "1.0"]],
        "unparsable_number": [["bad2", "1700000000", "1", "abc", "1", "x", "y"],
                              ["bad2b", "1700000000", "0", "1", "1e", "x", "y"]],
        "non_finite_number": [["bad3", "1700000000", "1", "inf", "1", "x", "y"]],
        "missing_label": [["bad4", "1700000000", "", "1", "1", "x", "y"]],
        "invalid_label": [["bad5", "1700000000", "2", "1", "1", "x", "y"],
                          ["bad5b", "1700000000", "yes", "1", "1", "x", "y"]],
        "missing_impression_id": [["", "1700000000", "1", "1", "1", "x", "y"]],
        "invalid_timestamp": [["bad7", "yesterday", "1", "1", "1", "x", "y"]],
        # imp10 appears again later: the second copy is the duplicate.
        "duplicate_impression_id": [good_row(10), good_row(11)],
    }
    all_rows = rows[:150] + [r for rs in bad.values() for r in rs] + rows[150:]
    # two files, so the duplicate detection works across files
    for name, chunk in (("part-0.csv", all_rows[:170]), ("part-1.csv", all_rows[170:])):
        with open(data / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerows(chunk)
    # Teacher: every third good row has one; plus a non-finite, a conflicting, and rows
    # for impressions that are not in the log (ignored by the left join).
    teacher_ids, teacher_logits = [], []
    for i in range(0, 300, 3):
        teacher_ids.append(f"imp{i}")
        teacher_logits.append(i / 100.0 - 1.0)
    teacher_ids += ["imp1", "imp2", "imp2", "imp4", "imp4", "ghost1", "ghost2"]
    teacher_logits += [float("nan"), 0.5, 0.7, 0.25, 0.25, 1.0, 2.0]
    os.makedirs(data / "teacher")
    pq.write_table(pa.table({"impression_id": teacher_ids, "teacher_logit": teacher_logits}),
                   data / "teacher" / "t.parquet")

    examples, quarantine, config = run_executor(
        tmp_path, data, "part-*.csv", SCHEMA, teacher_pattern="teacher/*.parquet",
        split={"method": "hash", "names": ["train", "eval"], "buckets": [3, 1]})

    expected = {r: len(v) for r, v in bad.items()}
    expected["duplicate_impression_id"] = 2
    expected["non_finite_teacher_logit"] = 1  # imp1
    expected["conflicting_teacher_logit"] = 1  # imp2
    props = {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
             if v.HasField("int_value")}
    for reason in logschema.REASON_CODES:
        assert props[f"quarantined_{reason}"] == expected.get(reason, 0), reason
    n_in = len(all_rows)
    assert props["rows_in"] == n_in
    assert props["rows_quarantined"] == sum(expected.values())
    assert props["rows_in"] == props["rows_written"] + props["rows_quarantined"]
    assert props["rows_written"] == props["written_train"] + props["written_eval"] == 298

    q = read_quarantine(quarantine)
    assert len(q) == props["rows_quarantined"]
    by_reason = {}
    for rec in q:
        by_reason.setdefault(rec["reason"], []).append(rec)
        assert rec["source"].endswith(".csv") and rec["row"] >= 1
    assert by_reason["unparsable_number"][0]["column"] in ("I1", "I2")
    dup_ids = sorted(r["value"] for r in by_reason["duplicate_impression_id"])
    assert dup_ids == ["imp10", "imp11"]
    assert by_reason["non_finite_teacher_logit"][0]["row"] == 2  # imp1 is data row 2

    train, evl = read_split(examples, "train"), read_split(examples, "eval")
    assert not set(train) & set(evl)
    written = {**train, **evl}
    from components.example_gen import split_index

    good_ids = {f"imp{i}" for i in range(300)} - {"imp1", "imp2"}
    assert set(written) == good_ids
    for iid, f in written.items():
        i = int(iid[3:])
        expect_split = split_index(config["split"], iid, None)
        assert (iid in evl) == (expect_split == 1)
        assert f["label"].int64_list.value[0] == i % 2
        assert f["I1"].float_list.value[0] == pytest.approx(i * 0.5)
        assert list(f["I2"].float_list.value) == ([] if i % 7 == 0 else [3.0])
        assert f["timestamp"].int64_list.value[0] == 1_700_000_000 + i
        if i % 3 == 0 or i == 4:
            want = 0.25 if i == 4 else i / 100.0 - 1.0
            assert f["has_teacher"].int64_list.value[0] == 1
            assert f["teacher_logit"].float_list.value[0] == pytest.approx(want, abs=1e-6)
        else:
            assert f["has_teacher"].int64_list.value[0] == 0
    # hash split is roughly 3:1
    assert 0.15 < len(evl) / len(written) < 0.35


def test_max_quarantine_rate_fails_with_reasons(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    lines = [",".join(HEADER)] + [",".join(good_row(i)) for i in range(20)]
    lines += [f"x{i},1700000000,7,1,1,a,b" for i in range(5)]
    (data / "a.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"5 of 25 rows .*invalid_label=5"):
        run_executor(tmp_path, data, "*.csv", SCHEMA, max_rate=0.1)


def test_timestamp_split_and_jsonl_with_malformed_lines(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    schema = dict(SCHEMA, format="jsonl", header=False)
    lines = []
    for i in range(40):
        lines.append(json.dumps({"impression_id": f"j{i}", "timestamp": 100 + i, "label": i % 2,
                                 "I1": i, "I2": None, "C1": "u", "C2": "v"}))
    lines.insert(5, "{not json")
    lines.insert(9, "[1, 2]")
    (data / "x.jsonl").write_text("\n".join(lines) + "\n")
    examples, quarantine, _ = run_executor(
        tmp_path, data, "*.jsonl", schema,
        split={"method": "timestamp", "names": ["train", "eval"], "cutoffs": [130]})
    props = {k: v.int_value for k, v in quarantine.mlmd_artifact.custom_properties.items()}
    assert props["quarantined_malformed_record"] == 2
    assert props["rows_in"] == 42 and props["written_train"] == 30 and props["written_eval"] == 10
    train, evl = read_split(examples, "train"), read_split(examples, "eval")
    assert set(evl) == {f"j{i}" for i in range(30, 40)}
    assert list(train["j3"]["I2"].float_list.value) == []


def test_parquet_logs(tmp_path):
    data = tmp_path / "logs"
    data.mkdir()
    schema = dict(SCHEMA, format="parquet", header=False)
    n = 50
    table = pa.table({
        "impression_id": [f"p{i}" for i in range(n)],
        "timestamp": pa.array(range(n), pa.int64()),
        "label": pa.array([i % 2 if i != 7 else None for i in range(n)], pa.int64()),
        "I1": pa.array([float(i) for i in range(n)]),
        "I2": pa.array([None if i % 2 else 1.5 for i in range(n)], pa.float64()),
        "C1": ["a"] * n, "C2": [None] * n,
    })
    pq.write_table(table, data / "p.parquet")
    examples, _, _ = run_executor(tmp_path, data, "*.parquet", schema,
                                  split={"method": "hash", "names": ["all"], "buckets": [1]})
    props = {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
             if v.HasField("int_value")}
    assert props["quarantined_missing_label"] == 1 and props["written_all"] == n - 1
    got = read_split(examples, "all")
    assert math.isclose(got["p4"]["I2"].float_list.value[0], 1.5)
