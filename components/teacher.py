"""`matta teacher fit|score`: a large DCN teacher for users without one, and its logit table.

fit:   read logs with a log-schema (invalid rows skipped and counted), train a standalone
       DCN (`matta_tf.model.StandaloneRanker`, hashed categoricals, log1p numerics) with
       binary cross-entropy, export it with `matta_tf.export.export_saved_model`.
score: run a teacher SavedModel (`serving_default`: serialized tf.Examples -> `logit`)
       over the logs and write the Parquet teacher table (`impression_id`, `teacher_logit`)
       that ClickLogExampleGen joins. Impression ids are derived exactly as ExampleGen does.
"""
from __future__ import annotations

import glob
import os

from components import logschema

DEFAULT_TEACHER_SPEC = {"embedding_dim": 16, "cross_layers": 3, "mlp_widths": [256, 128]}


def read_valid_rows(schema: logschema.LogSchema, pattern: str):
    """(pyarrow table of valid rows, number of skipped rows) for every file matching pattern."""
    import pyarrow as pa

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no log files match {pattern}")
    cols = {"impression_id": [], "label": [], **{n: [] for n in schema.feature_names}}
    skipped = 0
    for path in files:
        for row, raw in logschema.iter_raw_rows(schema, path):
            try:
                rec = logschema.validate_row(schema, raw, path, row)
            except logschema.RowError:
                skipped += 1
                continue
            cols["impression_id"].append(rec["impression_id"])
            cols["label"].append(rec[schema.label])
            for n in schema.feature_names:
                cols[n].append(rec[n])
    types = {"impression_id": pa.string(), "label": pa.int64(),
             **{n: pa.float64() for n in schema.numeric_features},
             **{n: pa.string() for n in schema.categorical_features}}
    return pa.table({k: pa.array(v, types[k]) for k, v in cols.items()}), skipped


def fit_teacher(schema, pattern: str, export_dir: str, steps: int = 2000, batch_size: int = 512,
                hash_buckets: int = 100_000, spec: dict | None = None, seed: int = 0) -> dict:
    import tensorflow as tf

    import matta_tf  # noqa: F401
    from matta_tf.config import CategoricalFeature, FeatureSpec, NumericFeature, SubmodelSpec
    from matta_tf.datasets import table_to_dataset
    from matta_tf.export import export_saved_model
    from matta_tf.model import StandaloneRanker

    schema = logschema.load_log_schema(schema)
    table, skipped = read_valid_rows(schema, pattern)
    features = FeatureSpec(
        numeric=tuple(NumericFeature(n, log1p=True) for n in schema.numeric_features),
        categorical=tuple(CategoricalFeature(n, hash_buckets=hash_buckets)
                          for n in schema.categorical_features))
    tf.keras.utils.set_random_seed(seed)
    model = StandaloneRanker(features, SubmodelSpec.from_dict(spec or DEFAULT_TEACHER_SPEC))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])
    ds = table_to_dataset(table, features, batch_size=batch_size, shuffle_seed=seed, repeat=True)
    ds = ds.map(lambda f, y: ({k: v for k, v in f.items() if k != "teacher_logit"}, y))
    history = model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=2)
    export_saved_model(model, export_dir, features)
    return {"rows": table.num_rows, "skipped": skipped, "export_dir": export_dir,
            "train_auc": float(history.history["auc"][-1])}


def score_teacher(schema, pattern: str, teacher_dir: str, output: str,
                  batch_size: int = 4096) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    import matta_tf  # noqa: F401
    from matta_tf.export import make_examples

    schema = logschema.load_log_schema(schema)
    table, skipped = read_valid_rows(schema, pattern)
    serve = tf.saved_model.load(teacher_dir).signatures["serving_default"]
    logits = []
    names = list(schema.feature_names)
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size).select(names).to_pydict()
        logits.append(serve(examples=tf.constant(make_examples(chunk)))["logit"].numpy())
    out = pa.table({"impression_id": table.column("impression_id"),
                    "teacher_logit": pa.array(np.concatenate(logits) if logits else [],
                                              pa.float64())})
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    pq.write_table(out, output)
    return {"rows": table.num_rows, "skipped": skipped, "output": output}
