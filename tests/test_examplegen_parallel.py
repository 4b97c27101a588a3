"""ClickLogExampleGen on Beam's DirectRunner: 2 worker processes write what 1 worker writes.

The same click logs (several files, bad rows of several reason codes, a duplicate id across
files, teacher rows that are non-finite, conflicting or unmatched) go through
`ClickLogExecutor` once in-process with one worker and once with
`--direct_running_mode=multi_processing --direct_num_workers=2`. Each split must hold the
same tf.Examples (compared as deterministic serializations of the parsed protos: file
sharding and record order may differ with parallelism, the examples may not), the
quarantine files the same records, and the artifacts the same counts.
"""
import csv
import json
import logging
import os

import pyarrow as pa  # a core dependency: a broken install must fail, not skip
import pyarrow.parquet as pq
from examplegen_helpers import HEADER, SCHEMA, run_click_log_executor

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

SPLIT = {"method": "hash", "names": ["train", "eval", "test"], "buckets": [6, 2, 1]}


def _row(i):
    return [f"imp{i}", str(1_700_000_000 + i), str(i % 2), f"{i * 0.25}",
            "" if i % 7 == 0 else str(i % 13), f"a{i % 17}", "" if i % 3 == 0 else f"b{i % 11}"]


def write_logs(root, files=4, rows_per_file=600):
    """CSV logs with bad rows in every file, a duplicate across files, and a teacher table."""
    os.makedirs(root / "logs")
    i = 0
    for k in range(files):
        rows = []
        for _ in range(rows_per_file):
            rows.append(_row(i))
            i += 1
        rows.insert(17, [f"bad{k}a", "1700000000", "1", "abc", "1", "x", "y"])  # unparsable
        rows.insert(90, [f"bad{k}b", "1700000000", "2", "1", "1", "x", "y"])  # invalid label
        rows.insert(200, [f"bad{k}c", "1700000000", "1", "1"])  # wrong column count
        rows.insert(300, ["", "1700000000", "1", "1", "1", "x", "y"])  # missing id
        rows.append(_row(k * 50 + 5))  # a duplicate of a row in file 0 or an earlier file
        with open(root / "logs" / f"part-{k}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows)
    ids = [f"imp{j}" for j in range(0, i, 2)] + ["imp1", "imp3", "imp3", "ghost"]
    logits = [j / 500.0 - 1.0 for j in range(0, i, 2)] + [float("nan"), 0.5, 0.7, 1.0]
    os.makedirs(root / "logs" / "teacher")
    pq.write_table(pa.table({"impression_id": ids, "teacher_logit": logits}),
                   root / "logs" / "teacher" / "t.parquet")
    return root / "logs"


def run_executor(out, input_base, beam_args):
    examples, quarantine, _ = run_click_log_executor(out, input_base, "part-*.csv", SCHEMA, "teacher/*.parquet",
                                                     SPLIT, 1.0, beam_args=beam_args)
    return examples, quarantine


def read_outputs(examples, quarantine):
    """{split: sorted deterministic serializations}, {file: sorted JSON lines}, counts."""
    import tensorflow as tf

    splits = {}
    for name in SPLIT["names"]:
        files = tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{name}", "*"))
        assert files, f"no files in Split-{name}"
        records = []
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            parsed = tf.train.Example.FromString(rec.numpy())
            records.append(parsed.SerializeToString(deterministic=True))
        splits[name] = sorted(records)
    quarantined = {}
    for name in sorted(os.listdir(quarantine.uri)):
        if name.endswith(".jsonl"):
            with open(os.path.join(quarantine.uri, name)) as f:
                quarantined[name] = sorted(line.rstrip("\n") for line in f if line.strip())
    counts = {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
              if v.HasField("int_value")}
    return splits, quarantined, counts


def _harness_starts(caplog) -> int:
    """SDK worker processes the run started (each logs this through Beam's log service)."""
    return sum("Python sdk harness starting" in r.getMessage() for r in caplog.records)


def test_two_direct_runner_processes_write_what_one_writes(tmp_path, caplog):
    # Beam >= 2.6x's DirectRunner first tries the Prism runner, downloading its binary from
    # GitHub (no network here: it fails at once). Pointing --prism_location at a missing
    # file makes that fail the same way everywhere, so DirectRunner always falls back to
    # its FnApiRunner, the engine `direct_running_mode` / `direct_num_workers` configure.
    no_prism = f"--prism_location={tmp_path / 'no-prism'}"
    data = write_logs(tmp_path)
    with caplog.at_level(logging.INFO, logger="apache_beam"):
        one = read_outputs(*run_executor(
            tmp_path / "one", data,
            ["--direct_running_mode=in_memory", "--direct_num_workers=1", no_prism]))
        assert _harness_starts(caplog) == 0  # in the test process
        caplog.clear()
        two = read_outputs(*run_executor(
            tmp_path / "two", data,
            ["--direct_running_mode=multi_processing", "--direct_num_workers=2", no_prism]))
        assert _harness_starts(caplog) == 2  # two worker processes
    splits, quarantined, counts = one
    # The data exercise what could go wrong in parallel: every split non-empty, quarantine
    # records of several reasons (a duplicate across files, teacher conflicts) in both files.
    assert all(len(v) > 100 for v in splits.values()), {k: len(v) for k, v in splits.items()}
    reasons = {json.loads(line)["reason"] for line in quarantined["quarantine.jsonl"]}
    assert {"unparsable_number", "invalid_label", "wrong_column_count", "missing_impression_id",
            "duplicate_impression_id", "non_finite_teacher_logit",
            "conflicting_teacher_logit"} <= reasons, reasons
    assert counts["rows_in"] == 4 * 605 and counts["rows_quarantined"] == len(
        quarantined["quarantine.jsonl"])
    assert sum(len(v) for v in splits.values()) == counts["rows_written"]
    assert two[2] == counts
    assert two[1] == quarantined
    for name in SPLIT["names"]:
        assert len(two[0][name]) == len(splits[name]), name
        assert two[0][name] == splits[name], f"split {name}: examples differ"
