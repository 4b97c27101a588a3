"""A small SavedModel that follows the export contract exactly, for tests and benchmarks.

docs/CONTRACTS.md ("Model"): signature `serving_default` takes `examples` (tf.string
[None], serialized tf.Example) and returns `logit` and `probability` (float32 [None]);
signature `predict_raw` takes the raw feature tensors and returns the same outputs.

This is NOT a MatTA student: it is a seeded two-layer MLP over hashed categoricals and
numeric features whose width sets its size, so that serving code can be exercised on
models of several sizes without training. Serving tests and the benchmark use the real
exported students (`matta_tf.export.export_saved_model`) whenever that module exists.

    export_reference_model("/tmp/m", hidden=64, seed=0)
    loaded = tf.saved_model.load("/tmp/m")
    loaded.signatures["serving_default"](examples=tf.constant([b"..."]))["probability"]
"""
from __future__ import annotations

from typing import Sequence

DEFAULT_NUMERIC = ("I1", "I2", "I3", "I4")
DEFAULT_CATEGORICAL = ("C1", "C2", "C3")


def export_reference_model(export_dir: str, hidden: int = 16, seed: int = 0,
                           numeric: Sequence[str] = DEFAULT_NUMERIC,
                           categorical: Sequence[str] = DEFAULT_CATEGORICAL,
                           hash_buckets: int = 100, embedding_dim: int = 4) -> str:
    import numpy as np
    import tensorflow as tf

    numeric, categorical = tuple(numeric), tuple(categorical)
    rng = np.random.default_rng(seed)
    in_dim = len(numeric) + len(categorical) * embedding_dim

    class ReferenceRanker(tf.Module):
        def __init__(self):
            super().__init__(name="reference_ranker")
            self.embeddings = [
                tf.Variable(rng.normal(0, 0.5, (hash_buckets, embedding_dim)).astype("float32"),
                            name=f"emb_{c}") for c in categorical]
            self.w1 = tf.Variable(rng.normal(0, 1 / np.sqrt(in_dim), (in_dim, hidden))
                                  .astype("float32"), name="w1")
            self.b1 = tf.Variable(np.zeros(hidden, "float32"), name="b1")
            self.w2 = tf.Variable(rng.normal(0, 1 / np.sqrt(hidden), (hidden,))
                                  .astype("float32"), name="w2")
            self.b2 = tf.Variable(np.float32(-1.0), name="b2")

        def _forward(self, features):
            parts = [tf.reshape(tf.cast(features[n], tf.float32), [-1, 1]) for n in numeric]
            for table, name in zip(self.embeddings, categorical, strict=True):
                ids = tf.strings.to_hash_bucket_fast(features[name], hash_buckets)
                parts.append(tf.gather(table, ids))
            x = tf.concat(parts, axis=1)
            h = tf.nn.relu(tf.matmul(x, self.w1) + self.b1)
            logit = tf.linalg.matvec(h, self.w2) + self.b2
            return {"logit": logit, "probability": tf.sigmoid(logit)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def serve_examples(self, examples):
            spec = {n: tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for n in numeric}
            spec.update({n: tf.io.FixedLenFeature([], tf.string, default_value="")
                         for n in categorical})
            return self._forward(tf.io.parse_example(examples, spec))

    raw_spec = {n: tf.TensorSpec([None], tf.float32, name=n) for n in numeric}
    raw_spec.update({n: tf.TensorSpec([None], tf.string, name=n) for n in categorical})
    module = ReferenceRanker()
    module.predict_raw = tf.function(lambda **f: module._forward(f)).get_concrete_function(
        **raw_spec)
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve_examples.get_concrete_function(),
        "predict_raw": module.predict_raw,
    })
    return export_dir


def reference_rows(num_rows: int, seed: int = 0, numeric: Sequence[str] = DEFAULT_NUMERIC,
                   categorical: Sequence[str] = DEFAULT_CATEGORICAL) -> list[dict]:
    """Random raw feature rows for the reference model (some values missing)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_rows):
        row: dict = {n: (None if rng.random() < 0.05 else float(rng.normal())) for n in numeric}
        row.update({n: (None if rng.random() < 0.05 else f"v{int(rng.integers(0, 30))}")
                    for n in categorical})
        rows.append(row)
    return rows
