"""TFT `preprocessing_fn` for click logs: vocabularies with OOV buckets, normalised numerics.

Per example (custom_config names the columns, see `transform_custom_config`):

    numeric x:      x' = 0 if missing else x;  x'' = sign(x') log(1 + |x'|)
                    out = (x'' - mean(x'')) / std(x'')          # tft.scale_to_z_score
    categorical c:  out = vocabulary id of c in [0, V) (top_k most frequent values seen
                    at least `frequency_threshold` times); anything else hashes into one of
                    `oov_buckets` ids in [V, V + oov_buckets); a missing value is "".
    label -> float32; teacher_logit (float32) and has_teacher (int64) pass through.

The vocabulary of feature c is written as the TFT asset `c` (read by the Trainer, which
sizes the embedding table as V + oov_buckets via `vocabulary_size_by_name`).
"""
import tensorflow as tf
import tensorflow_transform as tft

import matta_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)


def transform_custom_config(log_schema, oov_buckets: int = 2, top_k: int | None = 10_000,
                            frequency_threshold: int = 1) -> dict:
    return {"numeric": list(log_schema.numeric_features),
            "categorical": list(log_schema.categorical_features),
            "label": log_schema.label, "oov_buckets": int(oov_buckets),
            "top_k": top_k, "frequency_threshold": int(frequency_threshold)}


def _dense(x, default):
    """[B] tensor from a dense [B, 1] / [B] tensor or a [B, <=1] SparseTensor (missing->default)."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    if x.shape.rank == 2:
        x = tf.squeeze(x, axis=1)
    return x


def preprocessing_fn(inputs, custom_config):
    out = {}
    for name in custom_config["numeric"]:
        x = tf.cast(_dense(inputs[name], tf.constant(0.0, inputs[name].dtype)), tf.float32)
        x = tf.sign(x) * tf.math.log1p(tf.abs(x))
        out[name] = tft.scale_to_z_score(x)
    for name in custom_config["categorical"]:
        x = _dense(inputs[name], "")
        out[name] = tft.compute_and_apply_vocabulary(
            x, top_k=custom_config.get("top_k"),
            frequency_threshold=custom_config.get("frequency_threshold", 1),
            num_oov_buckets=custom_config["oov_buckets"], vocab_filename=name)
    label = custom_config["label"]
    out["label"] = tf.cast(_dense(inputs[label], tf.constant(0, tf.int64)), tf.float32)
    if "teacher_logit" in inputs:
        out["teacher_logit"] = tf.cast(_dense(inputs["teacher_logit"], float("nan")), tf.float32)
        out["has_teacher"] = _dense(inputs["has_teacher"], tf.constant(0, tf.int64))
    return out
