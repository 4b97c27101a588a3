"""Nested layers against float64 NumPy references and TFRS's DCN-V2 Cross."""
import matta_tf  # noqa: F401

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from matta_tf.config import CategoricalFeature, FeatureSpec, NumericFeature
from matta_tf.layers import FeaturePreprocessor, NestedCross, NestedDense, NestedEmbedding

RNG = np.random.default_rng(0)


def _randomise(layer, scale=0.3):
    for w in layer.weights:
        w.assign(RNG.normal(0, scale, w.shape).astype(np.float32))


def test_nested_dense_uses_leading_slices():
    layer = NestedDense(units=6, input_dim=10, activation="relu")
    layer.build(None)
    _randomise(layer)
    k, b = layer.kernel.numpy().astype(np.float64), layer.bias.numpy().astype(np.float64)
    x = RNG.normal(size=(5, 10))
    full = layer(tf.constant(x, tf.float32)).numpy()
    np.testing.assert_allclose(full, np.maximum(x @ k + b, 0), atol=1e-5)
    small = layer(tf.constant(x[:, :4], tf.float32), units=3).numpy()
    np.testing.assert_allclose(small, np.maximum(x[:, :4] @ k[:4, :3] + b[:3], 0), atol=1e-5)
    with pytest.raises(ValueError, match="exceed"):
        layer(tf.zeros([2, 11]))


@pytest.mark.parametrize("projection_dim,diag_scale", [(None, 0.0), (4, 0.0), (3, 0.5)])
def test_nested_cross_full_width_equals_tfrs_cross(projection_dim, diag_scale):
    d = 12
    ours = NestedCross(input_dim=d, projection_dim=projection_dim, diag_scale=diag_scale)
    ours.build(None)
    _randomise(ours)
    ref = tfrs.layers.dcn.Cross(projection_dim=projection_dim, diag_scale=diag_scale)
    x0 = tf.constant(RNG.normal(size=(7, d)), tf.float32)
    x1 = tf.constant(RNG.normal(size=(7, d)), tf.float32)
    ref(x0, x1)  # build
    if projection_dim is None:
        ref._dense.kernel.assign(ours.kernel)
        ref._dense.bias.assign(ours.bias)
    else:
        ref._dense_u.kernel.assign(ours.kernel_u)
        ref._dense_v.kernel.assign(ours.kernel_v)
        ref._dense_v.bias.assign(ours.bias)
    np.testing.assert_allclose(ours(x0, x1).numpy(), ref(x0, x1).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours(x0).numpy(), ref(x0).numpy(), atol=1e-6)


def test_nested_cross_low_rank_slice_matches_numpy():
    d, r = 10, 5
    layer = NestedCross(input_dim=d, projection_dim=r, diag_scale=0.25)
    layer.build(None)
    _randomise(layer)
    u, v, b = (w.numpy().astype(np.float64) for w in (layer.kernel_u, layer.kernel_v, layer.bias))
    w, rank = 6, 2
    x0, x = RNG.normal(size=(4, w)), RNG.normal(size=(4, w))
    expected = x0 * ((x @ u[:w, :rank]) @ v[:rank, :w] + b[:w] + 0.25 * x) + x
    got = layer(tf.constant(x0, tf.float32), tf.constant(x, tf.float32), rank=rank).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        layer(tf.constant(x0, tf.float32), rank=6)


def test_nested_embedding_slices_columns():
    emb = NestedEmbedding(input_dim=9, output_dim=4)
    emb.build(None)
    table = emb.embeddings.numpy()
    ids = tf.constant([0, 8, 3], tf.int64)
    np.testing.assert_array_equal(emb(ids).numpy(), table[[0, 8, 3]])
    np.testing.assert_array_equal(emb(ids, output_dim=2).numpy(), table[[0, 8, 3], :2])
    with pytest.raises(ValueError, match="output_dim"):
        emb(ids, output_dim=5)


@pytest.mark.parametrize("make", [
    lambda: NestedDense(units=3, input_dim=5, activation="relu"),
    lambda: NestedCross(input_dim=5, projection_dim=2, diag_scale=0.1),
    lambda: NestedCross(input_dim=5),
    lambda: NestedEmbedding(input_dim=7, output_dim=3),
])
def test_layer_serialization_round_trip(make):
    layer = make()
    layer.build(None)
    _randomise(layer)
    config = tf.keras.layers.serialize(layer)
    clone = tf.keras.layers.deserialize(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    clone.build(None)
    clone.set_weights(layer.get_weights())
    if isinstance(layer, NestedEmbedding):
        x = tf.constant([1, 6, 2], tf.int64)
        np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())
    else:
        x = tf.constant(RNG.normal(size=(3, 5)), tf.float32)
        np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def _spec():
    return FeatureSpec(
        numeric=(NumericFeature("n1", mean=1.0, std=2.0, log1p=True, fill_value=3.0),
                 NumericFeature("n2")),
        categorical=(CategoricalFeature("vocab", vocabulary=("a", "b", "7"), oov_buckets=2),
                     CategoricalFeature("hashed", hash_buckets=16),
                     CategoricalFeature("ids", num_ids=5, oov_buckets=1)))


def test_feature_preprocessor_numeric_and_categorical():
    pre = FeaturePreprocessor(_spec())
    raw_n1 = np.array([0.0, 10.0, np.nan, -4.0])
    features = {
        "n1": tf.constant(raw_n1, tf.float32), "n2": tf.constant([1, 2, 3, 4], tf.int64),
        "vocab": tf.constant(["a", "zzz", "", "7"]), "hashed": tf.constant(["x", "y", "", "x"]),
        "ids": tf.constant([0, 4, 5, -3], tf.int64), "unused": tf.constant([1, 2, 3, 4]),
    }
    numeric, ids = pre(features)
    filled = np.where(np.isnan(raw_n1), 3.0, raw_n1)
    expected_n1 = (np.sign(filled) * np.log1p(np.abs(filled)) - 1.0) / 2.0
    np.testing.assert_allclose(numeric.numpy()[:, 0], expected_n1, atol=1e-6)
    np.testing.assert_allclose(numeric.numpy()[:, 1], [1, 2, 3, 4])
    # vocabulary: OOV ids first (2 buckets), then "a"=2, "b"=3, "7"=4
    vocab_ids = ids[0].numpy()
    assert vocab_ids[0] == 2 and vocab_ids[3] == 4
    assert 0 <= vocab_ids[1] < 2 and 0 <= vocab_ids[2] < 2
    hashed = ids[1].numpy()
    assert hashed[0] == hashed[3] and all(0 <= h < 16 for h in hashed)
    np.testing.assert_array_equal(ids[2].numpy(), [0, 4, 5, 5])  # out of range -> OOV row 5

    # Integer and [B, 1] categorical inputs are looked up by their string form.
    as_int = dict(features, vocab=tf.constant([[7], [7], [1], [7]], tf.int64))
    np.testing.assert_array_equal(pre(as_int)[1][0].numpy()[[0, 1, 3]], [4, 4, 4])


def test_feature_preprocessor_errors_name_the_feature():
    pre = FeaturePreprocessor(_spec())
    with pytest.raises(ValueError, match="missing input feature 'hashed'"):
        pre({"n1": tf.zeros([1]), "n2": tf.zeros([1]), "vocab": tf.constant(["a"]),
             "ids": tf.zeros([1], tf.int64)})
    with pytest.raises(ValueError, match="numeric feature 'n1' got a string"):
        pre({"n1": tf.constant(["1"]), "n2": tf.zeros([1]), "vocab": tf.constant(["a"]),
             "hashed": tf.constant(["a"]), "ids": tf.zeros([1], tf.int64)})


def test_feature_preprocessor_serialization_round_trip():
    pre = FeaturePreprocessor(_spec())
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(pre))
    assert clone.features == pre.features
    features = {"n1": tf.constant([np.nan, 2.0]), "n2": tf.constant([1.0, 2.0]), "vocab": tf.constant(["b", "q"]),
                "hashed": tf.constant(["x", "y"]), "ids": tf.constant([1, 9], tf.int64)}
    a, b = pre(features), clone(features)
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    for x, y in zip(a[1], b[1], strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
