"""bench/data.py: validation carved by time, MovieLens-100k parsing (from a planted wheel,
no download), the fitted (cross-fitted) teacher on generated logs, Criteo dev split."""
import random
import zipfile

import numpy as np
import pyarrow as pa

import matta_tf  # noqa: F401
from bench import data as bench_data

TINY = bench_data.DataOptions(teacher_steps=3, folds=2, teacher_batch_size=64,
                              teacher_spec={"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [8]})


def test_carve_validation_takes_the_latest_rows():
    table = pa.table({"timestamp": [5, 1, 4, 2, 3, 6, 8, 7, 9, 10], "v": list(range(10))})
    train, val = bench_data.carve_validation(table, 0.2, "timestamp")
    assert val.column("timestamp").to_pylist() == [9, 10]
    assert sorted(train.column("timestamp").to_pylist()) == list(range(1, 9))
    train, val = bench_data.carve_validation(table, 0.3)  # no time column: row order
    assert val.column("v").to_pylist() == [7, 8, 9]
    assert bench_data.carve_validation(table, 0.0)[1] is None


def _fake_wheel(path):
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    rng = random.Random(0)
    for u in range(1, 31):
        for i in rng.sample(range(1, 21), 6):
            inter.append(f"{u}\t{i}\t{rng.randint(1, 5)}\t{880000000 + rng.randint(0, 10**6)}")
    users = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    users += [f"{u}\t{20 + u % 7}\t{'MF'[u % 2]}\t{['student', 'writer', 'other'][u % 3]}\t{u % 9}{u % 4}71"
              for u in range(1, 31)]
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"{i}\tMovie {i}\t{1990 + i % 5}\t{['Drama Comedy', 'Action', ''][i % 3]}" for i in range(1, 21)]
    prefix = "recbole/dataset_example/ml-100k/ml-100k"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(prefix + ".inter", "\n".join(inter) + "\n")
        zf.writestr(prefix + ".user", "\n".join(users) + "\n")
        zf.writestr(prefix + ".item", "\n".join(items) + "\n")


def test_movielens_from_the_recbole_wheel(tmp_path, monkeypatch):
    (tmp_path / "recbole").mkdir()
    _fake_wheel(tmp_path / "recbole" / "recbole-1.2.1-py3-none-any.whl")
    table = bench_data.movielens_table(str(tmp_path), log=lambda m: None)
    assert table.num_rows == 180 and table.column_names[:3] == ["impression_id", "timestamp", "label"]
    assert np.all(np.diff(table.column("timestamp").to_numpy()) >= 0)
    row = table.slice(0, 1).to_pylist()[0]
    u, i = int(row["user"]), int(row["item"])
    assert row["impression_id"] == f"u{u}_i{i}"
    assert row["zip2"] == f"{u % 9}{u % 4}" and row["gender"] == "MF"[u % 2]
    assert row["release_year"] == str(1990 + i % 5)
    assert row["genre"] == {0: "Drama", 1: "Action", 2: None}[i % 3]  # first genre; none -> missing
    data = bench_data.movielens(TINY, cache_dir=str(tmp_path), log=lambda m: None)
    assert (data.train.num_rows, data.validation.num_rows, data.eval.num_rows) == (130, 14, 36)
    assert data.train.column("timestamp").to_numpy().max() <= data.validation.column("timestamp").to_numpy().min()
    assert data.validation.column("timestamp").to_numpy().max() <= data.eval.column("timestamp").to_numpy().min()
    assert data.teacher_metrics["folds"] == 2 and "oof_auc" in data.teacher_metrics
    assert not data.features.numeric and all(f.vocabulary for f in data.features.categorical)
    for t in (data.train, data.validation, data.eval):
        assert np.isfinite(t.column("teacher_logit").to_numpy()).all()
    assert (tmp_path / "movielens-100k" / "train.parquet").exists()  # cached for the next run


def test_generated_fitted_teacher_is_out_of_fold():
    data = bench_data.generated(600, 200, small=True, fitted=True, opts=TINY, log=lambda m: None)
    assert data.name == "generated:fitted" and data.validation.num_rows == 60
    m = data.teacher_metrics
    assert m["rows"] == 600 and m["cross_fitted"] and 0.0 <= m["oof_auc"] <= 1.0
    assert "cross-fitted" in data.teacher and "out-of-fold AUC" in data.teacher
    oracle = bench_data.generated(600, 200, small=True, opts=TINY, log=lambda m: None)
    # Same rows, different teacher: the fitted one is not the generator's.
    assert oracle.train.column("impression_id").equals(data.train.column("impression_id"))
    assert not np.allclose(oracle.train.column("teacher_logit").to_numpy(),
                           data.train.column("teacher_logit").to_numpy())
    # Features come from the train split: exact vocabularies, no hashing by default.
    assert all(f.vocabulary is not None for f in oracle.features.categorical)


def test_criteo_dir_uses_dev_as_validation(tmp_path):
    from test_criteo import criteo_line

    rng = random.Random(1)
    for name, n in (("train.csv", 120), ("dev.csv", 30), ("test.csv", 40)):
        (tmp_path / name).write_text("\n".join(criteo_line(rng) for _ in range(n)) + "\n")
    data = bench_data.load(f"criteo:{tmp_path}", 0, 0, TINY, log=lambda m: None)
    assert (data.train.num_rows, data.validation.num_rows, data.eval.num_rows) == (120, 30, 40)
    assert data.teacher_metrics["rows"] == 150  # fitted on train + validation, never on eval
    assert data.validation.column("impression_id").to_pylist()[0] == "dev.csv:1"


def test_tfrs_reference_has_the_students_architecture():
    """Same parameter count as matta's standalone Student (vocabulary and hashed features),
    finite logits for unseen and missing values."""
    import tensorflow as tf

    from bench.tfrs_reference import TFRSStudent
    from matta_tf.config import CategoricalFeature, FeatureSpec, NumericFeature, SubmodelSpec
    from matta_tf.model import StandaloneRanker

    features = FeatureSpec(numeric=(NumericFeature("x", mean=1.0, std=2.0, log1p=True),),
                           categorical=(CategoricalFeature("c", vocabulary=("a", "b", "c")),
                                        CategoricalFeature("h", hash_buckets=11)))
    spec = SubmodelSpec(embedding_dim=4, cross_layers=2, cross_ranks=(3, 3), mlp_widths=(8, 5))
    batch = {"x": tf.constant([1.0, np.nan, -2.0]), "c": tf.constant(["a", "unseen", ""]),
             "h": tf.constant(["p", "q", ""])}
    ref, matta = TFRSStudent(features, spec), StandaloneRanker(features, spec)
    out = ref(batch)
    matta(batch)
    assert out.shape == (3,) and np.isfinite(out.numpy()).all()
    assert ref.count_params() == matta.count_params()
