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

Cost (issue 14): `tft.compute_and_apply_vocabulary` builds a chain of about a dozen Beam
transforms per feature (count, merge, prune, order, WriteToText, ...); with 26
categorical features the Beam graph (and its construction) dominated the demo's
Transform stage. `vocabularies()` computes every vocabulary in one analyzer (one pass,
one Beam combine of token counts, files written directly) and writes the same files
with the same registration as TFT's vocabulary analyzer: tokens that are empty or hold
a newline are dropped, `frequency_threshold` and `top_k` are applied, the order is
(count, token) descending, an empty vocabulary holds TFT's dummy token, and the
vocabulary name and size are registered the same way, so `vocabulary_file_by_name`,
`vocabulary_size_by_name` and the lookups (`tft.apply_vocabulary`) are unchanged
(tests/test_transform_module.py compares both against TFT's analyzer).
"""
import collections
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

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


# -- all vocabularies in one analyzer ------------------------------------------------------------
# TFT's constants (tensorflow_transform 1.21: analyzers.get_empy_vocabulary_dummy_value,
# analyzer_nodes.VocabularyOrderAndWrite's temporary asset value).
_EMPTY_VOCABULARY_DUMMY = b"49d0cd50-04bb-48c0-bc6f-5b575dce351a"
_TEMPORARY_ASSET_VALUE = b"TEMPORARY_ASSET_VALUE"


def _keep(token: bytes) -> bool:
    """TFT's text-vocabulary filter: no empty tokens, none with a newline or CR."""
    return bool(token) and b"\n" not in token and b"\r" not in token


def order_vocabulary(counts: dict, top_k: int | None, frequency_threshold: float | None):
    """(tokens to write, unfiltered size, filtered size) as TFT's vocabulary analyzer
    computes them from token counts (FREQUENCY ordering, text format)."""
    items = [(c, t) for t, c in counts.items() if _keep(t)]
    unfiltered = len(items)
    if frequency_threshold is not None and frequency_threshold > 0:
        items = [(c, t) for c, t in items if c >= frequency_threshold]
    items.sort(reverse=True)  # largest (count, token) first, as Top.Of / sort(reverse=True)
    if top_k is not None:
        items = items[:top_k] or [(1, _EMPTY_VOCABULARY_DUMMY)]  # TFT counts the dummy here
        filtered = len(items)
    else:
        filtered = len(items)
        items = items or [(1, _EMPTY_VOCABULARY_DUMMY)]
    return [t for _, t in items], unfiltered, filtered


class _CountTokens(beam.CombineFn):
    """Token counts of each input column (a batch is a tuple of 1-D bytes arrays)."""

    def __init__(self, n: int):
        self._n = n

    def create_accumulator(self):
        return [collections.Counter() for _ in range(self._n)]

    def add_input(self, acc, batch):
        for counter, values in zip(acc, batch, strict=True):
            counter.update(np.asarray(values).reshape(-1).tolist())
        return acc

    def merge_accumulators(self, accs):
        accs = iter(accs)
        total = next(accs)
        for acc in accs:
            for counter, other in zip(total, acc, strict=True):
                counter.update(other)
        return total

    def extract_output(self, acc):
        return acc


class _Vocabularies(tft_beam.experimental.PTransformAnalyzer):
    """One pass over the analysis data: every vocabulary file, with its sizes."""

    def __init__(self, names, top_k, frequency_threshold):
        super().__init__()
        self._names = list(names)
        self._top_k = top_k
        self._threshold = frequency_threshold

    def _write(self, counters):
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        out = []
        for name, counts in zip(self._names, counters, strict=True):
            tokens, unfiltered, filtered = order_vocabulary(counts, self._top_k, self._threshold)
            path = os.path.join(self.base_temp_dir, name)
            with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(b"".join(t + b"\n" for t in tokens))
            out.append((path, unfiltered, filtered))
        return out

    def expand(self, pcoll):
        written = (pcoll
                   | "CountTokens" >> beam.CombineGlobally(_CountTokens(len(self._names)))
                   | "OrderAndWrite" >> beam.Map(self._write))
        outputs = []
        for i, name in enumerate(self._names):
            for j, dtype in enumerate((object, np.int64, np.int64)):
                outputs.append(written | f"Output[{name}][{j}]" >> beam.Map(
                    lambda w, i=i, j=j, dtype=dtype: np.array(w[i][j], dtype=dtype)))
        return tuple(outputs)


def vocabularies(xs: dict, top_k: int | None, frequency_threshold: float | None) -> dict:
    """{name: vocabulary file path tensor} for dense string tensors `xs` (name -> [B]),
    registered like `tft.vocabulary(x, top_k, frequency_threshold, vocab_filename=name)`."""
    from tensorflow_transform import analyzers

    names = list(xs)
    for name in names:
        if analyzers.sanitized_vocab_filename(name) != name:
            raise ValueError(f"vocabulary name {name!r} is not a safe file name")
    if frequency_threshold is not None and frequency_threshold <= 1:
        frequency_threshold = None  # a no-op, as TFT treats it
    # tft.experimental.ptransform_analyzer, except that only the path outputs are assets
    # (TFT 1.21's wrapper turns every output into an asset once any is one).
    import importlib

    from tensorflow_transform import analyzer_nodes

    experimental = importlib.import_module("tensorflow_transform.experimental.analyzers")

    infos = []
    for _ in names:
        infos += [analyzer_nodes.TensorInfo(
                      tf.string, [], analyzer_nodes.TemporaryAssetInfo(_TEMPORARY_ASSET_VALUE,
                                                                       "text")),
                  analyzer_nodes.TensorInfo(tf.int64, [], None),
                  analyzer_nodes.TensorInfo(tf.int64, [], None)]
    with tf.compat.v1.name_scope("vocabularies"):
        outputs = experimental._apply_analyzer(
            _Vocabularies(names, top_k, frequency_threshold), *[xs[n] for n in names],
            output_tensor_info_list=infos)
    paths = {}
    for i, name in enumerate(names):
        path, unfiltered, filtered = outputs[3 * i:3 * i + 3]
        analyzers._maybe_annotate_vocab_metadata(name, unfiltered, filtered)
        analyzers.register_vocab(name, vocabulary_size=filtered, file_format="text")
        paths[name] = path
    return paths


def _numeric_features(inputs, custom_config) -> dict:
    """sign(x) log1p(|x|), z-scored (missing -> 0 first)."""
    out = {}
    for name in custom_config["numeric"]:
        x = tf.cast(_dense(inputs[name], tf.constant(0.0, inputs[name].dtype)), tf.float32)
        x = tf.sign(x) * tf.math.log1p(tf.abs(x))
        out[name] = tft.scale_to_z_score(x)
    return out


def _label_and_teacher(inputs, custom_config) -> dict:
    label = custom_config["label"]
    out = {"label": tf.cast(_dense(inputs[label], tf.constant(0, tf.int64)), tf.float32)}
    if "teacher_logit" in inputs:
        out["teacher_logit"] = tf.cast(_dense(inputs["teacher_logit"], float("nan")), tf.float32)
        out["has_teacher"] = _dense(inputs["has_teacher"], tf.constant(0, tf.int64))
    return out


def preprocessing_fn(inputs, custom_config):
    out = _numeric_features(inputs, custom_config)
    categorical = {name: _dense(inputs[name], "") for name in custom_config["categorical"]}
    if categorical:
        paths = vocabularies(categorical, custom_config.get("top_k"),
                             custom_config.get("frequency_threshold", 1))
        for name, x in categorical.items():
            out[name] = tft.apply_vocabulary(
                x, deferred_vocab_filename_tensor=paths[name],
                num_oov_buckets=custom_config["oov_buckets"])
    out.update(_label_and_teacher(inputs, custom_config))
    return out


def per_feature_preprocessing_fn(inputs, custom_config):
    """The same outputs with one `tft.compute_and_apply_vocabulary` per categorical feature
    (the preprocessing_fn before issue 14): the reference the one-pass `vocabularies` is
    tested against and the bench's baseline."""
    out = _numeric_features(inputs, custom_config)
    for name in custom_config["categorical"]:
        out[name] = tft.compute_and_apply_vocabulary(
            _dense(inputs[name], ""), top_k=custom_config.get("top_k"),
            frequency_threshold=custom_config.get("frequency_threshold", 1),
            num_oov_buckets=custom_config["oov_buckets"], vocab_filename=name)
    out.update(_label_and_teacher(inputs, custom_config))
    return out
