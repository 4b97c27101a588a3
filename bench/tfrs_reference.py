"""A reference arm built from plain TFRS/Keras layers: the Student's architecture (DCN-V2,
stacked: cross layers then a ReLU MLP) from `tfrs.layers.dcn.Cross`, `Dense`,
`StringLookup` / `Hashing` + `Embedding` and `Normalization` - none of matta's nested
layers. Same features (vocabularies, numeric statistics), data, steps, batch and Adam
learning rate as the bench's labels-only Student, so the two should agree within seed
noise; a gap would point at matta's model code.

    x0 = [Normalization(sign(v) log1p|v|) for numerics | Embedding(lookup(c)) for categoricals]
    x_{l+1} = Cross(projection_dim=r_l)(x0, x_l);  h = Dense(w, relu)...;  logit = Dense(1)(h)

Keras defaults throughout (Embedding uniform(-0.05, 0.05), Cross kernels truncated normal
(stddev 0.05), Dense Glorot-uniform, zero biases).
"""
from __future__ import annotations

import time

import numpy as np

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf
import tensorflow_recommenders as tfrs

from matta_tf.config import FeatureSpec, SubmodelSpec


class TFRSStudent(tf.keras.Model):
    """raw features dict -> logit [B] (features as `matta_tf.datasets.table_to_dataset` yields them)."""

    def __init__(self, features: FeatureSpec, spec: SubmodelSpec, head_fan_in: int | None = None, **kwargs):
        """`head_fan_in` (diagnostics): initialise the logit layer as Glorot-uniform for that
        many inputs instead of its real width (matta's nested head has max(x0 width, widths) rows)."""
        super().__init__(**kwargs)
        self.feature_spec = features
        self.numeric_names = [f.name for f in features.numeric]
        self.fills = [f.fill_value for f in features.numeric]
        self.log1p = [f.log1p for f in features.numeric]
        self.normalize = (tf.keras.layers.Normalization(
            axis=-1, mean=[f.mean for f in features.numeric], variance=[f.std ** 2 for f in features.numeric])
            if features.numeric else None)
        self.lookups, self.embeddings = [], []
        for f in features.categorical:
            if f.hash_buckets is not None:
                lookup = tf.keras.layers.Hashing(num_bins=f.hash_buckets)
            elif f.num_ids is not None:
                raise ValueError(f"TFRS reference: num_ids feature {f.name!r} is not supported")
            else:
                lookup = tf.keras.layers.StringLookup(vocabulary=list(f.vocabulary_values()),
                                                      num_oov_indices=f.oov_buckets, mask_token=None)
            self.lookups.append((f.name, lookup))
            self.embeddings.append(tf.keras.layers.Embedding(f.input_dim, spec.embedding_dim))
        self.crosses = [tfrs.layers.dcn.Cross(projection_dim=spec.cross_ranks[i] if spec.low_rank else None)
                        for i in range(spec.cross_layers)]
        self.mlp = [tf.keras.layers.Dense(w, activation="relu") for w in spec.mlp_widths]
        head_init = "glorot_uniform"
        if head_fan_in is not None:
            limit = (6.0 / (head_fan_in + 1)) ** 0.5
            head_init = tf.keras.initializers.RandomUniform(-limit, limit)
        self.logit = tf.keras.layers.Dense(1, kernel_initializer=head_init)

    def call(self, features, training=None):
        parts = []
        if self.numeric_names:
            cols = []
            for name, fill, log1p in zip(self.numeric_names, self.fills, self.log1p, strict=True):
                x = tf.cast(tf.reshape(features[name], [-1]), tf.float32)
                x = tf.where(tf.math.is_nan(x), tf.constant(fill, tf.float32), x)
                cols.append(tf.sign(x) * tf.math.log1p(tf.abs(x)) if log1p else x)
            parts.append(self.normalize(tf.stack(cols, axis=1)))
        for (name, lookup), emb in zip(self.lookups, self.embeddings, strict=True):
            parts.append(emb(lookup(tf.reshape(features[name], [-1]))))
        x0 = tf.concat(parts, axis=1)
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)
        for dense in self.mlp:
            x = dense(x)
        return self.logit(x)[:, 0]


def train_and_eval(features: FeatureSpec, spec: SubmodelSpec, train_ds, eval_batches, labels,
                   steps: int, learning_rate: float, seed: int, **model_kwargs):
    """(metrics of the trained reference on the eval batches, params, train seconds)."""
    from bench.quality import binary_metrics

    tf.keras.utils.set_random_seed(seed)
    model = TFRSStudent(features, spec, **model_kwargs)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    ds = train_ds.map(lambda f, y: ({k: v for k, v in f.items() if k not in ("teacher_logit", "has_teacher")}, y))
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    logits = np.concatenate([model(f, training=False).numpy() for f, _ in eval_batches])
    return binary_metrics(logits, labels), int(model.count_params()), seconds
