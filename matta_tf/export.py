"""Export a standalone ranker as a TF2 SavedModel that TensorFlow Serving loads.

Signatures (all outputs float32 [None]):

* `serving_default(examples: string [None])` - serialized `tf.Example`s, parsed with
  `tf.io.parse_example` against the feature spec (numeric: float, default NaN =
  missing; categorical: string, default "" = missing; `num_ids`: int64, default -1);
  -> `logit`, `probability`.
* `predict_raw(<one tensor [None] per raw feature>)` -> `logit`, `probability`.
* `predict_ids(numeric: float32 [None, n], ids: int64 [None, m])` (fused exports only) ->
  `logit`, `probability`, for clients that already hold categorical ids: `numeric` are the
  raw numeric values (as `predict_raw` takes them, NaN = missing) in the model's numeric
  order, `ids` the model's categorical ids in its categorical order - with a TFT layer the
  TFT-transformed ids (vocabulary line number, OOV buckets after it: what the Trainer
  trained on), without one the ids of the model's own lookups (`StringLookup` /
  `Hashing` / `num_ids`). An id outside a vocabulary/hash feature's rows is
  INVALID_ARGUMENT; `num_ids` features apply their out-of-range rule. The column order is
  `loaded.input_columns()` (`numeric`, `categorical` names).

Input path (`input_path`): "fused" computes the model inputs with one op per feature
*kind* (`matta_tf.input_path`: one parse, numerics as one matrix, one lookup table over
all vocabularies, one gather from one concatenated embedding table); "per_feature" is the
original graph (parse -> `preprocess` -> the model's per-feature lookups and gathers).
"fused" is the default; it needs a standalone ranker whose preprocessing is its own or a
TFT layer the fused path reproduces (else `UnsupportedInputPath`, naming the model and
why: pass `input_path="per_feature"` for anything else). Before a fused export is written
its outputs are compared with the per-feature graph's on probe inputs (every vocabulary
value, unknown and missing values, numeric special points, `check_examples`):
categorical ids must be equal, numeric inputs within 1e-6 and logits within 1e-4 (both
relative above 1; the logits sum many float32 terms in another order, so equal graphs differ
by 1e-6-4e-6 on the extreme probe values, while a wrong id or transform moves a logit by
~1e-2),
else `FusedCheckError` names the model, the export dir, the signature (or model input)
and the max |diff|, and nothing is written - there is no silent fallback to the slower
graph. `loaded.input_path_info()` says which path was exported.

Preprocessing (lookups, hashing, normalisation) is part of the Keras model, so clients
send raw values. An optional `preprocess` callable (e.g. `tft.TFTransformOutput.
transform_features_layer()`) runs first, mapping parsed raw features to model inputs;
it is tracked on the module so its tables/assets are saved too. In that case pass the
*raw* parse spec (`{name: tf.io.FixedLenFeature | VarLenFeature}`, e.g.
`tf_transform_output.raw_feature_spec()` without the label) as `feature_spec`.

Example:

```python
small = extract(model, config.student_spec())
export_saved_model(small, "/models/ranker/1", config.features)
loaded = tf.saved_model.load("/models/ranker/1")
loaded.signatures["serving_default"](examples=tf.constant([ex.SerializeToString()]))
```
"""
from __future__ import annotations

import json

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf

from matta_tf.config import FeatureSpec

INPUT_PATHS = ("fused", "per_feature")


class FusedCheckError(ValueError):
    """The fused input path's outputs differ from the per-feature graph's (see `check_fused`)."""


def parse_spec(feature_spec: FeatureSpec | dict) -> dict:
    """tf.io parse spec for the raw features (no label, no teacher)."""
    if isinstance(feature_spec, dict):
        return dict(feature_spec)
    if not isinstance(feature_spec, FeatureSpec):
        raise ValueError(f"feature_spec must be a FeatureSpec or a tf.io parse spec dict, got "
                         f"{type(feature_spec).__name__}")
    spec = {f.name: tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
            for f in feature_spec.numeric}
    for f in feature_spec.categorical:
        spec[f.name] = (tf.io.FixedLenFeature([], tf.int64, default_value=-1) if f.num_ids is not None
                        else tf.io.FixedLenFeature([], tf.string, default_value=""))
    return spec


class RankerServingModule(tf.Module):
    """tf.Module holding the Keras model (+ optional preprocess) and the two signatures."""

    def __init__(self, keras_model: tf.keras.Model, feature_spec, preprocess=None):
        super().__init__(name="ranker_serving")
        self.model = keras_model
        self.preprocess = preprocess
        self.parse_spec = parse_spec(feature_spec)
        raw_signature = {}
        for name, spec in self.parse_spec.items():
            dtype = spec.dtype
            raw_signature[name] = tf.TensorSpec([None], dtype, name=name)
        self._raw_names = sorted(raw_signature)
        self.serve_examples = tf.function(
            self._serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        self.predict_raw = tf.function(self._predict_raw, input_signature=[raw_signature])
        info = json.dumps({"input_path": "per_feature"})
        self.input_path_info = tf.function(lambda: tf.constant(info), input_signature=[])

    def _outputs(self, raw: dict) -> dict:
        features = self.preprocess(raw) if self.preprocess is not None else raw
        logit = self.model(features, training=False)
        if isinstance(logit, dict):
            raise ValueError("export_saved_model needs a single-logit model; extract one with "
                             "matta_tf.extract.extract(model, spec)")
        logit = tf.reshape(tf.cast(logit, tf.float32), [-1])
        return {"logit": logit, "probability": tf.sigmoid(logit)}

    def _serve_examples(self, examples):
        return self._outputs(tf.io.parse_example(examples, self.parse_spec))

    def _predict_raw_features(self, raw):
        features = {}
        for name, spec in self.parse_spec.items():
            x = raw[name]
            if isinstance(spec, tf.io.VarLenFeature):
                # Raw [B] values -> SparseTensor [B, 1]; "" / 0 count as missing.
                x = tf.sparse.from_dense(tf.expand_dims(x, 1))
            features[name] = x
        return features

    def _predict_raw(self, raw):
        return self._outputs(self._predict_raw_features(raw))

    def signatures(self) -> dict:
        return {"serving_default": self.serve_examples.get_concrete_function(),
                "predict_raw": self.predict_raw.get_concrete_function()}


class _Untracked:
    """Holds an object without making it part of the SavedModel's object graph."""

    def __init__(self, value):
        self.value = value


def _tracked_layers(network) -> list:
    """The network's sublayers except the per-feature embeddings and preprocessor (the
    fused path replaces them): every weight the logit computation reads."""
    from matta_tf.layers import FeaturePreprocessor, NestedEmbedding

    return [layer for layer in network._flatten_layers(include_self=False, recursive=False)
            if not isinstance(layer, (NestedEmbedding, FeaturePreprocessor))]


class FusedRankerServingModule(tf.Module):
    """The same signatures over the fused input path (`matta_tf.input_path`), plus
    `predict_ids`."""

    def __init__(self, keras_model: tf.keras.Model, plan, raw_parse_spec: dict):
        from matta_tf.input_path import FusedEncoder

        super().__init__(name="ranker_serving")
        network = keras_model.network
        self.encoder = FusedEncoder(plan, [e.embeddings for e in network.embeddings])
        self.layers = _tracked_layers(network)
        self._network = _Untracked(network)
        self._max_spec = network.max_spec
        self._plan = plan
        raw_signature = {name: tf.TensorSpec([None], spec.dtype, name=name)
                         for name, spec in raw_parse_spec.items()}
        self.serve_examples = tf.function(
            self._serve_examples, input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        self.predict_raw = tf.function(self._predict_raw, input_signature=[raw_signature])
        self.predict_ids = tf.function(self._predict_ids, input_signature=[
            tf.TensorSpec([None, len(plan.numeric)], tf.float32, name="numeric"),
            tf.TensorSpec([None, len(plan.categorical)], tf.int64, name="ids")])
        columns = {"numeric": plan.numeric_names, "categorical": plan.categorical_names}
        self.input_columns = tf.function(
            lambda: {k: tf.constant(v, tf.string, shape=[len(v)]) for k, v in columns.items()},
            input_signature=[])
        info = json.dumps({"input_path": "fused", **plan.describe()})
        self.input_path_info = tf.function(lambda: tf.constant(info), input_signature=[])

    def _logits(self, x0) -> dict:
        logit = self._network.value.logits_from_x0(x0, self._max_spec)
        logit = tf.reshape(tf.cast(logit, tf.float32), [-1])
        return {"logit": logit, "probability": tf.sigmoid(logit)}

    def _serve_examples(self, examples):
        return self._logits(self.encoder.encode_examples(examples, self._max_spec.embedding_dim))

    def _predict_raw(self, raw):
        return self._logits(self.encoder.encode_raw(raw, self._max_spec.embedding_dim))

    def _predict_ids(self, numeric, ids):
        return self._logits(self.encoder.encode_ids(numeric, ids, self._max_spec.embedding_dim))

    def signatures(self) -> dict:
        return {"serving_default": self.serve_examples.get_concrete_function(),
                "predict_raw": self.predict_raw.get_concrete_function(),
                "predict_ids": self.predict_ids.get_concrete_function()}


def _tft_output_of(preprocess):
    """The `TFTransformOutput` behind a `transform_features_layer()`, if it is one."""
    return getattr(preprocess, "_tft_output", None)


def make_plan(keras_model, feature_spec, preprocess=None, tft_output=None):
    """The fused input plan for this export; `UnsupportedInputPath` if there is none."""
    from matta_tf.input_path import UnsupportedInputPath, plan_from_feature_spec, plan_from_tft

    network = getattr(keras_model, "network", None)
    features = getattr(keras_model, "features", None)
    if network is None or features is None or not hasattr(network, "logits_from_x0") \
            or not hasattr(network, "embeddings") or network.nested_head:
        raise UnsupportedInputPath(f"{type(keras_model).__name__} is not a standalone ranker (cut one "
                                   "out with matta_tf.extract.extract(model, spec))")
    raw = parse_spec(feature_spec)
    if preprocess is None:
        if tft_output is not None:
            raise UnsupportedInputPath("tft_output given without its preprocess layer")
        plan = plan_from_feature_spec(features)
    else:
        tft_output = tft_output or _tft_output_of(preprocess)
        if tft_output is None:
            raise UnsupportedInputPath(f"preprocess {type(preprocess).__name__} is not a TFT "
                                       "transform layer the fused path knows")
        plan = plan_from_tft(tft_output, features, raw)
    names = set(plan.numeric_names) | set(plan.categorical_names)
    missing = sorted(names - set(raw))
    if missing:
        raise UnsupportedInputPath(f"model inputs {missing} are not raw features of the parse spec")
    for c in plan.categorical:
        want = tf.string if c.dtype == "string" else tf.int64
        if raw[c.name].dtype != want:
            raise UnsupportedInputPath(f"raw feature {c.name!r} is {raw[c.name].dtype.name}, "
                                       f"the plan wants {want.name}")
    return plan


def _probe_examples(columns: dict, raw_spec: dict, rows: int, empty_lists: bool) -> list[bytes]:
    """tf.Examples of the first `rows` probe rows; NaN / "" are left out of the Example or,
    with `empty_lists`, given as an empty list (as ClickLogExampleGen writes missing values)."""
    import math

    out = []
    names = list(columns)
    n = min(rows, len(columns[names[0]]))
    for i in range(n):
        feature = {}
        for name in names:
            v = columns[name][i]
            kind = raw_spec[name].dtype
            missing = (kind == tf.string and v == b"") or (kind == tf.float32 and math.isnan(v))
            if missing and not empty_lists:
                continue
            if kind == tf.string:
                f = tf.train.Feature(bytes_list=tf.train.BytesList(value=[] if missing else [v]))
            elif kind == tf.float32:
                f = tf.train.Feature(float_list=tf.train.FloatList(value=[] if missing else [float(v)]))
            else:
                f = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
            feature[name] = f
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


def check_fused(reference: RankerServingModule, fused: FusedRankerServingModule, raw_spec: dict,
                check_examples=(), tolerance: float = 1e-6, logit_tolerance: float = 1e-4,
                label: str = "model") -> dict:
    """Compares the fused module with the per-feature one on probe inputs: the categorical
    ids (exactly), the numeric model inputs (|diff| <= tolerance * max(1, |per-feature|))
    and the logits of every signature (the same with `logit_tolerance`). Raises
    `FusedCheckError` naming `label`, the signature or input and its max |diff|; returns
    the max |diff| of each."""
    import numpy as np

    from matta_tf.input_path import probe_columns

    def fail(what: str, detail: str):
        raise FusedCheckError(f"{label}: fused input path differs from the per-feature graph in "
                              f"{what}: {detail}; pass input_path='per_feature' to export the "
                              f"per-feature graph")

    plan = fused._plan
    columns = probe_columns(plan)
    rows = len(next(iter(columns.values())))
    for name, spec in raw_spec.items():  # raw features the model does not read
        if name not in columns:
            columns[name] = (np.full(rows, b"", object) if spec.dtype == tf.string
                             else np.zeros(rows, spec.dtype.as_numpy_dtype))
    raw = {k: tf.constant(v, raw_spec[k].dtype) for k, v in columns.items()}
    # 1. categorical ids, exactly: the per-feature graph's model inputs vs the fused rows.
    network = fused._network.value
    ref_features = {k: v for k, v in reference._predict_raw_features(raw).items()}
    if reference.preprocess is not None:
        ref_features = reference.preprocess(ref_features)
    ref_numeric, ref_ids = network.preprocessor(ref_features)
    numeric, strings, ints = fused.encoder.stack_raw(raw)
    got_rows = fused.encoder.rows(strings, ints).numpy()  # [B, m]
    for j, (col, want) in enumerate(zip(plan.categorical, ref_ids, strict=True)):
        got, want = got_rows[:, j] - fused.encoder._offsets[j], want.numpy()
        bad = np.flatnonzero(got != want)
        if bad.size:
            i = bad[0]
            fail(f"the ids of {col.name!r}",
                 f"{bad.size} of {len(got)} probe values differ, max |diff| "
                 f"{int(np.max(np.abs(got - want)))}, e.g. {columns[col.name][i]!r} -> {got[i]} "
                 f"(per-feature: {want[i]})")
    got_numeric = fused.encoder.transform_numeric(numeric).numpy()
    num_diff = float(np.nanmax(np.abs(got_numeric - ref_numeric.numpy()), initial=0.0))
    if not np.allclose(got_numeric, ref_numeric.numpy(), rtol=tolerance, atol=tolerance, equal_nan=True):
        fail("the numeric model inputs", f"max |diff| {num_diff:.3g} (tolerance {tolerance:g})")
    # 2. logits through all three entry points.
    diffs = {"numeric": num_diff}

    def compare(what, want, got):
        want, got = want["logit"].numpy(), got["logit"].numpy()
        err = np.abs(want - got) / np.maximum(1.0, np.abs(want))
        diffs[what] = float(np.max(np.abs(want - got), initial=0.0))
        if not (np.all(err <= logit_tolerance) or np.array_equal(want, got, equal_nan=True)):
            i = int(np.nanargmax(err))
            fail(f"signature {what}",
                 f"max |logit diff| {np.nanmax(np.abs(want - got)):.3g} (tolerance {logit_tolerance:g}, "
                 f"relative above 1), worst row {i}: {got[i]:.7g} vs {want[i]:.7g}")

    compare("predict_raw", reference.predict_raw(raw), fused.predict_raw(raw))
    batch = tf.constant(_probe_examples(columns, raw_spec, 256, empty_lists=False)
                        + list(check_examples))
    compare("serving_default", reference.serve_examples(batch), fused.serve_examples(batch))
    # Missing values as empty lists (ClickLogExampleGen's encoding): the per-feature graph
    # takes them with VarLen parse specs (a TFT export) and refuses them with FixedLen ones;
    # the fused path always reads them as missing.
    batch = tf.constant(_probe_examples(columns, raw_spec, 64, empty_lists=True))
    try:
        want = reference.serve_examples(batch)
    except tf.errors.InvalidArgumentError:
        want = None
    if want is not None:
        compare("serving_default (empty lists)", want, fused.serve_examples(batch))
    ids = np.stack([r.numpy() for r in ref_ids], axis=1) if ref_ids else np.zeros([rows, 0], np.int64)
    if plan.source == "tft":  # predict_ids takes the TFT ids (the preprocess outputs)
        ids = np.stack([ref_features[c.name].numpy().reshape(-1) for c in plan.categorical], axis=1) \
            if plan.categorical else ids
    nums = np.stack([columns[c.name] for c in plan.numeric], axis=1).astype(np.float32) \
        if plan.numeric else np.zeros([rows, 0], np.float32)
    compare("predict_ids", reference.predict_raw(raw),
            fused.predict_ids(tf.constant(nums), tf.constant(ids, tf.int64)))
    return diffs


def export_saved_model(keras_model: tf.keras.Model, export_dir: str, feature_spec: FeatureSpec | dict,
                       preprocess=None, *, input_path: str = "fused", tft_output=None,
                       check_examples=()) -> str:
    """Write `keras_model` (raw features -> logit [B]) as a SavedModel at `export_dir`.

    `input_path`: "fused" (default) | "per_feature" (see the module docstring): "fused"
    raises `UnsupportedInputPath` when the fused path does not apply and `FusedCheckError`
    when its outputs differ, writing nothing; `tft_output`: the `TFTransformOutput` of a
    TFT `preprocess` layer (found on the layer when not given); `check_examples`:
    serialized tf.Examples added to the fused path's equality check (e.g. the warm-up
    requests)."""
    from matta_tf.input_path import UnsupportedInputPath

    if input_path not in INPUT_PATHS:
        raise ValueError(f"input_path must be one of {list(INPUT_PATHS)}, got {input_path!r}")
    reference = RankerServingModule(keras_model, feature_spec, preprocess)
    if input_path == "per_feature":
        tf.saved_model.save(reference, export_dir, signatures=reference.signatures())
        return export_dir
    label = f"export of {keras_model.name!r} to {export_dir}"
    try:
        plan = make_plan(keras_model, feature_spec, preprocess, tft_output)
        fused = FusedRankerServingModule(keras_model, plan, reference.parse_spec)
    except UnsupportedInputPath as err:
        raise UnsupportedInputPath(f"{label}: the fused input path does not apply ({err}); pass "
                                   f"input_path='per_feature' to export the per-feature graph") from err
    check_fused(reference, fused, reference.parse_spec, check_examples, label=label)
    tf.saved_model.save(fused, export_dir, signatures=fused.signatures())
    return export_dir


def make_examples(features: dict) -> list[bytes]:
    """Serialize a dict of equal-length raw value lists/arrays as tf.Examples (None / NaN /
    "" = leave the feature out, i.e. missing): `matta_tf.contract.encode_examples`."""
    from matta_tf.contract import encode_examples

    return encode_examples(features)
