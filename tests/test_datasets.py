"""Synthetic click logs: schema, determinism, ground truth, writers and the CLI."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from matta_tf.datasets import (
    BLOCK_ROWS,
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    write_click_logs,
)
from matta_tf.metrics import roc_auc

SMALL = SyntheticLogConfig(num_numeric=3, num_categorical=4, cardinalities=(5, 50, 2000, 7), num_crosses=3,
                           missing_rate=0.1)


def test_schema_and_contract_columns():
    table = generate_click_logs(1000, seed=0, config=SMALL)
    assert table.column_names == ["impression_id", "timestamp", "label", "I1", "I2", "I3",
                                  "C1", "C2", "C3", "C4", "click_prob", "teacher_logit"]
    types = {f.name: f.type for f in table.schema}
    assert types["impression_id"] == pa.string() and types["timestamp"] == pa.int64()
    assert types["label"] == pa.int64() and types["I1"] == pa.float64() and types["C1"] == pa.string()
    assert types["click_prob"] == pa.float64() and types["teacher_logit"] == pa.float64()
    ids = table.column("impression_id").to_pylist()
    assert len(set(ids)) == len(ids)
    ts = table.column("timestamp").to_numpy()
    assert np.all(np.diff(ts) > 0)
    assert set(np.unique(table.column("label").to_numpy())) <= {0, 1}
    for name in ("I1", "C2"):
        null_rate = table.column(name).null_count / 1000
        assert 0.05 < null_rate < 0.15
    assert table.column("click_prob").null_count == 0


def test_deterministic_by_seed_and_prefix_stable():
    a = generate_click_logs(BLOCK_ROWS + 100, seed=3, config=SMALL)
    b = generate_click_logs(BLOCK_ROWS + 100, seed=3, config=SMALL)
    assert a.equals(b)
    prefix = generate_click_logs(BLOCK_ROWS + 10, seed=3, config=SMALL)
    assert a.slice(0, BLOCK_ROWS + 10).equals(prefix)
    other = generate_click_logs(1000, seed=4, config=SMALL)
    assert not other.column("label").equals(a.slice(0, 1000).column("label"))


def test_ground_truth_ctr_teacher_and_crosses():
    config = SyntheticLogConfig(num_numeric=4, num_categorical=6, cardinalities=(10, 20, 50, 10, 30, 100))
    table = generate_click_logs(100_000, seed=1, config=config)
    y = table.column("label").to_numpy()
    p = table.column("click_prob").to_numpy()
    t = table.column("teacher_logit").to_numpy()
    assert abs(y.mean() - config.target_ctr) < 0.01
    assert abs(p.mean() - y.mean()) < 0.01  # labels are drawn from click_prob
    teacher_p = 1 / (1 + np.exp(-t))
    assert abs(teacher_p.mean() / y.mean() - 1) < 0.03  # calibrated on average
    oracle, teacher = roc_auc(y, p), roc_auc(y, t)
    assert oracle - 0.05 < teacher < oracle  # noisy but informative
    # Without the planted crosses the problem would be much easier to rank linearly:
    # the crosses carry most of the logit variance.
    no_cross = SyntheticLogConfig(num_numeric=4, num_categorical=6, cardinalities=(10, 20, 50, 10, 30, 100),
                                  num_crosses=0)
    flat = generate_click_logs(20_000, seed=1, config=no_cross)
    assert roc_auc(flat.column("label").to_numpy(), flat.column("click_prob").to_numpy()) < oracle - 0.1


def test_default_feature_spec_matches_columns():
    spec = default_feature_spec(SMALL)
    assert spec.names == ["I1", "I2", "I3", "C1", "C2", "C3", "C4"]
    assert spec.categorical[2].hash_buckets == 4000  # above vocabulary_max_size
    table = generate_click_logs(2000, seed=0, config=SMALL)
    seen = set(table.column("C2").drop_null().to_pylist())
    assert seen <= set(spec.categorical[1].vocabulary)
    assert all(f.log1p for f in spec.numeric)
    # Missing numerics, filled with fill_value, normalise to 0.
    f = spec.numeric[0]
    assert abs((np.log1p(f.fill_value) - f.mean) / f.std) < 1e-9


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_writers_stream_and_split_teacher(tmp_path, fmt):
    path = tmp_path / f"logs.{fmt}"
    teacher_path = tmp_path / "teacher.parquet"
    write_click_logs(str(path), 300, seed=2, fmt=fmt, teacher_path=str(teacher_path), config=SMALL)
    expected = generate_click_logs(300, seed=2, config=SMALL)
    if fmt == "csv":
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in ["impression_id", "C1", "C2", "C3", "C4"]},
            strings_can_be_null=True))
    elif fmt == "parquet":
        table = pq.read_table(path)
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        table = pa.Table.from_pylist(rows)
    assert "teacher_logit" not in table.column_names
    assert table.num_rows == 300
    assert table.column("impression_id").to_pylist() == expected.column("impression_id").to_pylist()
    assert table.column("C2").to_pylist() == expected.column("C2").to_pylist()
    np.testing.assert_allclose(np.array(table.column("I1").to_pylist(), dtype=float),
                               np.array(expected.column("I1").to_pylist(), dtype=float))
    teacher = pq.read_table(teacher_path)
    assert teacher.column_names == ["impression_id", "teacher_logit"]
    np.testing.assert_allclose(teacher.column("teacher_logit").to_numpy(),
                               expected.column("teacher_logit").to_numpy())


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        write_click_logs("/tmp/x.xml", 10, fmt="xml")
    with pytest.raises(ValueError, match="2 cardinalities for 3 categorical"):
        SyntheticLogConfig(num_categorical=3, cardinalities=(4, 5))
    with pytest.raises(ValueError, match="num_rows"):
        generate_click_logs(-1)


def test_cli_generate_logs(tmp_path):
    from matta_tf.cli import main

    out = tmp_path / "logs.parquet"
    spec_out = tmp_path / "spec.json"
    code = main(["generate-logs", "--rows", "500", "--seed", "1", "--format", "parquet", "--out", str(out),
                 "--num-numeric", "2", "--num-categorical", "2", "--cardinalities", "4,9",
                 "--feature-spec-out", str(spec_out)])
    assert code == 0
    table = pq.read_table(out)
    assert table.num_rows == 500 and "teacher_logit" in table.column_names
    assert [c["name"] for c in json.loads(spec_out.read_text())["categorical"]] == ["C1", "C2"]
    assert main(["generate-logs", "--rows", "5", "--out", str(out), "--cardinalities", "a,b"]) == 2


def test_partial_teacher_coverage_flows_into_the_dataset(tmp_path):
    from matta_tf.datasets import table_to_dataset

    config = SyntheticLogConfig(num_numeric=2, num_categorical=2, cardinalities=(4, 6), teacher_coverage=0.7)
    table = generate_click_logs(2000, seed=0, config=config)
    coverage = 1 - table.column("teacher_logit").null_count / 2000
    assert 0.65 < coverage < 0.75
    write_click_logs(str(tmp_path / "l.parquet"), 2000, seed=0, fmt="parquet",
                     teacher_path=str(tmp_path / "t.parquet"), config=config)
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 2000 - table.column("teacher_logit").null_count
    features, _ = next(iter(table_to_dataset(table, default_feature_spec(config), batch_size=2000)))
    teacher = features["teacher_logit"].numpy()
    assert np.isnan(teacher).sum() == table.column("teacher_logit").null_count
    with pytest.raises(ValueError, match=r"feature\(s\) \['C2'\] are not columns of the log table"):
        table_to_dataset(table.drop_columns(["C2"]), default_feature_spec(config))
