"""SavedModel export: serving_default over serialized tf.Examples, predict_raw, preprocess hook."""
import matta_tf  # noqa: F401

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from matta_tf.config import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    RankerConfig,
    SubmodelSpec,
)
from matta_tf.datasets import (
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    table_to_dataset,
)
from matta_tf.export import export_saved_model, make_examples
from matta_tf.extract import extract
from matta_tf.input_path import UnsupportedInputPath
from matta_tf.model import MatTARanker

LOGS = SyntheticLogConfig(num_numeric=3, num_categorical=3, cardinalities=(10, 30, 400), num_crosses=2,
                          vocabulary_max_size=100, missing_rate=0.2)
FEATURES = default_feature_spec(LOGS)
CONFIG = RankerConfig(features=FEATURES, student=SubmodelSpec(3, 1, (2,), (8,)), warmup_steps=0)


def _trained_student():
    model = MatTARanker(CONFIG)
    rng = np.random.default_rng(0)
    for w in model.network.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
    return extract(model, CONFIG.student, name="student")


def test_saved_model_round_trip_through_serving_default(tmp_path):
    student = _trained_student()
    table = generate_click_logs(200, seed=9, config=LOGS)
    features, _ = next(iter(table_to_dataset(table, FEATURES, 200)))
    want = student(features).numpy()
    assert np.isnan(features["I1"].numpy()).any() and (features["C1"].numpy() == b"").any()

    export_dir = export_saved_model(student, str(tmp_path / "1"), FEATURES)
    del student
    loaded = tf.saved_model.load(export_dir)
    assert set(loaded.signatures) == {"serving_default", "predict_raw", "predict_ids"}
    serving = loaded.signatures["serving_default"]
    assert set(serving.structured_input_signature[1]) == {"examples"}
    # Raw log values (nulls left out of the Example = missing) in, same logits out.
    examples = make_examples({n: table.column(n).to_pylist() for n in FEATURES.names})
    out = serving(examples=tf.constant(examples))
    assert out["logit"].dtype == tf.float32 and out["logit"].shape == (200,)
    np.testing.assert_allclose(out["logit"].numpy(), want, atol=1e-5)
    np.testing.assert_allclose(out["probability"].numpy(), 1 / (1 + np.exp(-want)), atol=1e-6)

    raw = loaded.signatures["predict_raw"](**{n: features[n] for n in FEATURES.names})
    np.testing.assert_allclose(raw["logit"].numpy(), want, atol=1e-5)


def test_export_of_a_size_with_its_own_head(tmp_path):
    import dataclasses

    config = dataclasses.replace(CONFIG, mixnmatch_train_specs=1, size_heads="own")
    model = MatTARanker(config)
    rng = np.random.default_rng(1)
    for w in model.network.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
    table = generate_click_logs(64, seed=3, config=LOGS)
    features, _ = next(iter(table_to_dataset(table, FEATURES, 64)))
    want = model.submodel(config.student, features).numpy()
    loaded = tf.saved_model.load(export_saved_model(extract(model, config.student), str(tmp_path / "1"), FEATURES))
    raw = loaded.signatures["predict_raw"](**{n: features[n] for n in FEATURES.names})
    np.testing.assert_allclose(raw["logit"].numpy(), want, atol=1e-5)


def test_preprocess_hook_runs_inside_the_graph(tmp_path):
    """A TFT-style preprocess layer maps raw strings to integer ids for a `num_ids` model."""
    raw_vocab = ["red", "green", "blue"]
    model_features = FeatureSpec(numeric=(NumericFeature("x"),),
                                 categorical=(CategoricalFeature("color", num_ids=3, oov_buckets=1),))
    config = RankerConfig(features=model_features, student=SubmodelSpec(2, 1, (), (4,)))
    student = extract(MatTARanker(config), config.student)

    class Transform(tf.keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.lookup = tf.keras.layers.StringLookup(vocabulary=raw_vocab, mask_token=None)

        def call(self, raw):
            ids = self.lookup(tf.sparse.to_dense(raw["color"], default_value="")[:, 0])
            ids = tf.cast(ids, tf.int64)  # 0 = unknown, then the vocabulary
            return {"x": raw["x"] * 2.0, "color": tf.where(ids == 0, tf.constant(3, tf.int64), ids - 1)}

    raw_spec = {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
                "color": tf.io.VarLenFeature(tf.string)}
    with pytest.raises(UnsupportedInputPath, match="per_feature"):  # no silent fallback
        export_saved_model(student, str(tmp_path / "f"), raw_spec, preprocess=Transform())
    assert not (tmp_path / "f").exists()
    export_dir = export_saved_model(student, str(tmp_path / "m"), raw_spec, preprocess=Transform(),
                                    input_path="per_feature")
    loaded = tf.saved_model.load(export_dir)
    examples = make_examples({"x": [0.5, 1.0, -2.0], "color": ["blue", "red", "green"]})
    got = loaded.signatures["serving_default"](examples=tf.constant(examples))["logit"].numpy()
    want = student({"x": tf.constant([1.0, 2.0, -4.0]), "color": tf.constant([2, 0, 1], tf.int64)}).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    raw = loaded.signatures["predict_raw"](x=tf.constant([0.5, 1.0, -2.0]),
                                           color=tf.constant(["blue", "red", "green"]))
    np.testing.assert_allclose(raw["logit"].numpy(), want, atol=1e-6)


def test_export_refuses_the_nested_model(tmp_path):
    with pytest.raises(ValueError, match="extract"):
        export_saved_model(MatTARanker(CONFIG), str(tmp_path / "x"), FEATURES)
