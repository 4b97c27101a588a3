"""Export a standalone ranker as a TF2 SavedModel that TensorFlow Serving loads.

Signatures (all outputs float32 [None]):

* `serving_default(examples: string [None])` - serialized `tf.Example`s, parsed with
  `tf.io.parse_example` against the feature spec (numeric: float, default NaN =
  missing; categorical: string, default "" = missing; `num_ids`: int64, default -1);
  -> `logit`, `probability`.
* `predict_raw(<one tensor [None] per raw feature>)` -> `logit`, `probability`.

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

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf

from matta_tf.config import FeatureSpec


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

    def _predict_raw(self, raw):
        features = {}
        for name, spec in self.parse_spec.items():
            x = raw[name]
            if isinstance(spec, tf.io.VarLenFeature):
                # Raw [B] values -> SparseTensor [B, 1]; "" / 0 count as missing.
                x = tf.sparse.from_dense(tf.expand_dims(x, 1))
            features[name] = x
        return self._outputs(features)


def export_saved_model(keras_model: tf.keras.Model, export_dir: str, feature_spec: FeatureSpec | dict,
                       preprocess=None) -> str:
    """Write `keras_model` (raw features -> logit [B]) as a SavedModel at `export_dir`."""
    module = RankerServingModule(keras_model, feature_spec, preprocess)
    signatures = {
        "serving_default": module.serve_examples.get_concrete_function(),
        "predict_raw": module.predict_raw.get_concrete_function(),
    }
    tf.saved_model.save(module, export_dir, signatures=signatures)
    return export_dir


def make_examples(features: dict) -> list[bytes]:
    """Serialize a dict of equal-length raw value lists/arrays as tf.Examples (None / NaN /
    "" = leave the feature out, i.e. missing). Helper for tests and clients."""
    import math

    names = list(features)
    n = len(features[names[0]]) if names else 0
    out = []
    for i in range(n):
        feature = {}
        for name in names:
            v = features[name][i]
            if hasattr(v, "item"):
                v = v.item()
            if v is None or v == "" or v == b"" or (isinstance(v, float) and math.isnan(v)):
                continue
            if isinstance(v, (bytes, str)):
                b = v if isinstance(v, bytes) else v.encode()
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
            elif isinstance(v, float):
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out
