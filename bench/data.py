"""Benchmark data: generated logs, Criteo TSV files, or any log with a log-schema file.

Every source ends as (train table, eval table, FeatureSpec) with a `teacher_logit`
column. When the data has no teacher logits, a large DCN teacher is fitted on the train
split with the project's teacher tooling and scores both splits.
"""
from __future__ import annotations

import dataclasses
import glob
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import matta_tf  # noqa: F401
from matta_tf.config import CategoricalFeature, FeatureSpec, NumericFeature


@dataclasses.dataclass
class BenchData:
    name: str
    train: pa.Table
    eval: pa.Table
    features: FeatureSpec
    teacher: str  # where the teacher logits came from


def generated(train_rows: int, eval_rows: int, seed: int = 0, small: bool = False) -> BenchData:
    """The default Criteo-like generator (13 numeric, 26 categorical); `small` (4 + 6
    features) only keeps the smoke run's graph tracing short."""
    from matta_tf.datasets import SyntheticLogConfig, default_feature_spec, generate_click_logs

    config = SyntheticLogConfig(num_numeric=4, num_categorical=6) if small else SyntheticLogConfig()
    table = generate_click_logs(train_rows + eval_rows, seed=seed, config=config)
    # Time split: the eval rows are the latest, as in production.
    return BenchData(name="generated", train=table.slice(0, train_rows), eval=table.slice(train_rows),
                     features=default_feature_spec(config), teacher="generator (noisy true logit)")


def _fit_features(table: pa.Table, numeric: list[str], categorical: list[str],
                  hash_buckets_per_value: int = 2, max_buckets: int = 100_000) -> FeatureSpec:
    """Numeric log1p moments and hash sizes from the train split only."""
    nums = []
    for name in numeric:
        v = table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        v = v[np.isfinite(v)]
        lv = np.sign(v) * np.log1p(np.abs(v)) if v.size else np.zeros(1)
        mean, std = float(lv.mean()), float(lv.std() or 1.0)
        nums.append(NumericFeature(name, mean=mean, std=std, log1p=True, fill_value=float(math.expm1(mean))))
    cats = []
    for name in categorical:
        distinct = len(pc.unique(table.column(name)))
        cats.append(CategoricalFeature(name, hash_buckets=int(min(max_buckets, max(8, hash_buckets_per_value * distinct)))))
    return FeatureSpec(numeric=tuple(nums), categorical=tuple(cats))


def logs(train_glob: str, eval_glob: str, schema_spec, name: str, teacher_steps: int) -> BenchData:
    """Reads logs with the project's log contract (invalid rows are counted and reported by
    `components.teacher.read_valid_rows`) and, if they carry no teacher logits, fits the
    project's teacher on the train split and scores both splits with it."""
    import tempfile

    import pyarrow.parquet as pq

    from components import logschema, teacher

    schema = logschema.load_log_schema(schema_spec)
    train, bad_train = teacher.read_valid_rows(schema, train_glob)
    ev, bad_eval = teacher.read_valid_rows(schema, eval_glob)
    if bad_train or bad_eval:
        print(f"bench data: {bad_train} train and {bad_eval} eval rows failed validation and are excluded")
    features = _fit_features(train, list(schema.numeric_features), list(schema.categorical_features))
    with tempfile.TemporaryDirectory() as tmp:
        fitted = teacher.fit_teacher(schema, train_glob, os.path.join(tmp, "teacher"), steps=teacher_steps)
        for split, pattern in (("train", train_glob), ("eval", eval_glob)):
            out = os.path.join(tmp, f"{split}.parquet")
            teacher.score_teacher(schema, pattern, os.path.join(tmp, "teacher"), out)
            scores = pq.read_table(out)
            table = train if split == "train" else ev
            assert scores.column("impression_id").equals(table.column("impression_id"))
            table = table.append_column("teacher_logit", scores.column("teacher_logit"))
            if split == "train":
                train = table
            else:
                ev = table
    source = (f"components.teacher.fit_teacher ({teacher_steps} steps on the train split, "
              f"train AUC {fitted['train_auc']:.3f})")
    return BenchData(name=name, train=train, eval=ev, features=features, teacher=source)


def data_name(spec: str) -> str:
    """The name `load(spec, ...)` gives its data (results go to a folder named after it)."""
    if spec == "generated":
        return "generated"
    if spec.startswith("criteo:"):
        return "criteo:" + os.path.basename(os.path.normpath(spec.split(":", 1)[1]))
    if spec.startswith("schema:") and len(spec.split(":")) == 4:
        return os.path.basename(spec.split(":")[1])
    raise ValueError(f"--data {spec!r}: use generated, criteo:DIR or schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB")


def load(spec: str, train_rows: int, eval_rows: int, teacher_steps: int, small: bool = False) -> BenchData:
    """`generated` | `criteo:DIR` | `schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB`."""
    if spec == "generated":
        return generated(train_rows, eval_rows, small=small)
    if spec.startswith("criteo:"):
        folder = spec.split(":", 1)[1]
        train_glob = os.path.join(folder, "train*")
        eval_glob = os.path.join(folder, "test*")
        if not glob.glob(train_glob) or not glob.glob(eval_glob):
            raise ValueError(f"criteo data dir {folder!r} needs train* and test* files")
        return logs(train_glob, eval_glob, "criteo", data_name(spec), teacher_steps)
    if spec.startswith("schema:"):
        parts = spec.split(":")
        if len(parts) != 4:
            raise ValueError(f"--data {spec!r}: use schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB")
        _, schema_file, train_glob, eval_glob = parts
        if not glob.glob(train_glob) or not glob.glob(eval_glob):
            raise ValueError(f"--data {spec!r}: no files match {train_glob!r} or {eval_glob!r}")
        return logs(train_glob, eval_glob, schema_file, data_name(spec), teacher_steps)
    raise ValueError(f"--data {spec!r}: use generated, criteo:DIR or schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB")
