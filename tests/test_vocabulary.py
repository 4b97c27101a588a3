"""Exact vocabularies from a table (`matta_tf.config.feature_spec_from_table`): min-count,
OOV rows, the hashing cap, and unseen values through training, export and serving."""
import math

import numpy as np
import pyarrow as pa
import pytest

import matta_tf  # noqa: F401
from matta_tf.config import feature_spec_from_table


def _table():
    return pa.table({"c": ["a", "b", "a", None, "", "c", "a", "b"],
                     "k": pa.array([3, 3, 5, 5, 5, 9, None, 1], pa.int64()),
                     "x": [1.0, None, 10.0, 100.0, -3.0, 0.0, 2.0, 5.0]})


def test_min_count_order_and_missing():
    lines = []
    spec = feature_spec_from_table(_table(), ["x"], ["c", "k"], log=lines.append)
    c, k = spec.categorical
    assert c.vocabulary == ("a", "b") and c.oov_buckets == 1  # c seen once, null/"" are missing
    assert k.vocabulary == ("5", "3")  # most frequent first; ints by their string form
    assert c.input_dim == 3
    one = feature_spec_from_table(_table(), ["x"], ["c", "k"], min_count=1)
    assert one.categorical[0].vocabulary == ("a", "b", "c") and one.categorical[1].vocabulary == ("5", "3", "1", "9")
    assert "2 of 2 categorical features with exact vocabularies (min_count 2" in lines[-1]
    # Missing numerics are filled with the raw value that normalises to 0.
    f = spec.numeric[0]
    assert f.log1p and math.isclose((math.copysign(math.log1p(abs(f.fill_value)), f.fill_value) - f.mean) / f.std,
                                    0.0, abs_tol=1e-9)
    with pytest.raises(ValueError, match="min_count"):
        feature_spec_from_table(_table(), [], ["c"], min_count=0)


def test_hashing_only_past_the_cap_and_said_so():
    lines = []
    spec = feature_spec_from_table(_table(), [], ["c", "k"], min_count=1, max_vocabulary=3, log=lines.append)
    assert spec.categorical[0].vocabulary == ("a", "b", "c")  # 3 <= cap: exact
    assert spec.categorical[1].hash_buckets == 3 and spec.categorical[1].vocabulary is None
    assert any("k has 4 values" in line and "hashed into 3 buckets" in line for line in lines)


def test_unseen_values_train_export_and_serve(tmp_path):
    """Rare train values and unseen eval/serving values map to the OOV row: training runs,
    and the exported SavedModel returns finite logits for unseen and missing categories."""
    import tensorflow as tf

    from matta_tf.config import SubmodelSpec
    from matta_tf.datasets import table_to_dataset
    from matta_tf.export import export_saved_model, make_examples
    from matta_tf.model import StandaloneRanker

    rng = np.random.default_rng(0)
    n = 512
    c = rng.integers(0, 40, n)
    table = pa.table({"label": pa.array((c % 3 == 0).astype(np.int64)),
                      "x": pa.array(rng.normal(size=n)),
                      "c": [f"v{v}" if v < 35 else f"rare{i}" for i, v in enumerate(c)]})
    features = feature_spec_from_table(table, ["x"], ["c"])
    assert not any(v.startswith("rare") for v in features.categorical[0].vocabulary)
    model = StandaloneRanker(features, SubmodelSpec(embedding_dim=4, cross_layers=1, mlp_widths=(8,)))
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
    history = model.fit(table_to_dataset(table, features, batch_size=64, shuffle_seed=0, repeat=True),
                        steps_per_epoch=20, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    export_saved_model(model, str(tmp_path / "m"), features)
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    rows = {"x": [0.5, None, 1.0, 2.0], "c": ["never-seen", "v3", None, "rare7"]}
    served = loaded.signatures["serving_default"](examples=tf.constant(make_examples(rows)))["logit"].numpy()
    raw = loaded.signatures["predict_raw"](x=tf.constant([0.5, np.nan, 1.0, 2.0], tf.float32),
                                           c=tf.constant(["never-seen", "v3", "", "rare7"]))["logit"].numpy()
    assert served.shape == (4,) and np.isfinite(served).all()
    np.testing.assert_allclose(served, raw, rtol=1e-5, atol=1e-6)
    # Unseen, missing and rare values all share the OOV row: same embedding, so with the
    # same numeric value they get the same logit.
    same_x = loaded.signatures["predict_raw"](x=tf.constant([1.0, 1.0, 1.0], tf.float32),
                                              c=tf.constant(["never-seen", "", "rare7"]))["logit"].numpy()
    assert np.ptp(same_x) < 1e-6


def test_teacher_export_serves_unseen_categories(tmp_path):
    import tensorflow as tf

    from components.teacher import fit_teacher_table
    from matta_tf.export import make_examples

    rng = np.random.default_rng(1)
    n = 300
    table = pa.table({"impression_id": [f"i{i}" for i in range(n)], "label": pa.array(rng.integers(0, 2, n)),
                      "x": pa.array(rng.normal(size=n)), "c": [f"v{v}" for v in rng.integers(0, 20, n)]})
    fit_teacher_table(table, ["x"], ["c"], str(tmp_path / "t"), steps=3, batch_size=64, folds=2,
                      spec={"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [8]})
    serve = tf.saved_model.load(str(tmp_path / "t")).signatures["serving_default"]
    out = serve(examples=tf.constant(make_examples({"x": [1.0, None], "c": ["brand-new", None]})))
    assert np.isfinite(out["logit"].numpy()).all() and np.isfinite(out["probability"].numpy()).all()
