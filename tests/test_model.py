"""MatTARanker: loss math vs float64 NumPy, missing teachers, stop-gradient, warm-up,
training quality on planted crosses vs logistic regression, serialization."""
import matta_tf  # noqa: F401

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from matta_tf.config import LossWeights, RankerConfig, SubmodelSpec
from matta_tf.datasets import (
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    table_to_dataset,
)
from matta_tf.metrics import roc_auc
from matta_tf.model import (
    MatTARanker,
    build_logistic_regression,
    evaluate_submodels,
    matta_loss_terms,
    teacher_mask_and_logits,
    warmup_ramp,
)

LOGS = SyntheticLogConfig(num_numeric=4, num_categorical=6, cardinalities=(10, 20, 50, 10, 30, 100),
                          num_crosses=6)
FEATURES = default_feature_spec(LOGS)


def tiny_config(**overrides) -> RankerConfig:
    kwargs = dict(features=FEATURES, student=SubmodelSpec(4, 2, (), (16, 8)),
                  ta=SubmodelSpec(8, 3, (), (32, 16, 8)), warmup_steps=100)
    kwargs.update(overrides)
    return RankerConfig(**kwargs)


def batch(rows=64, seed=3):
    table = generate_click_logs(rows, seed=seed, config=LOGS)
    return next(iter(table_to_dataset(table, FEATURES, batch_size=rows)))


# ---------------------------------------------------------------- loss math


def _np_bce(z, y):
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def _np_kd(z, target, t):
    p = 1 / (1 + np.exp(-target / t))
    return t * t * _np_bce(z / t, p)


def test_loss_terms_match_float64_reference():
    rng = np.random.default_rng(1)
    n = 32
    y = (rng.random(n) < 0.3).astype(np.float64)
    s, ta, teacher = rng.normal(0, 2, n), rng.normal(0, 2, n), rng.normal(0, 2, n)
    teacher_in = teacher.copy()
    teacher_in[::4] = np.nan  # a quarter of the rows have no teacher
    weights = LossWeights(student=0.7, ta=1.3, teacher=0.4, ta_to_student=2.0)
    temperature, ramp = 2.5, 0.3
    mask, safe = teacher_mask_and_logits({"teacher_logit": tf.constant(teacher_in, tf.float32)}, n)
    terms = matta_loss_terms(tf.constant(y, tf.float32), tf.constant(s, tf.float32), tf.constant(ta, tf.float32),
                             safe, mask, tf.constant(ramp), weights, temperature)
    has = ~np.isnan(teacher_in)
    expected = {
        "student_bce": _np_bce(s, y).mean(),
        "ta_bce": _np_bce(ta, y).mean(),
        "teacher_kd_student": _np_kd(s[has], teacher[has], temperature).mean(),
        "teacher_kd_ta": _np_kd(ta[has], teacher[has], temperature).mean(),
        "ta_kd_student": _np_kd(s, ta, temperature).mean(),
    }
    expected["loss"] = (0.7 * expected["student_bce"] + 1.3 * expected["ta_bce"]
                        + 0.4 * (expected["teacher_kd_student"] + expected["teacher_kd_ta"])
                        + 2.0 * ramp * expected["ta_kd_student"])
    for name, value in expected.items():
        assert abs(float(terms[name]) - value) < 1e-5 * max(1.0, abs(value)), name


def test_warmup_ramp():
    np.testing.assert_allclose([float(warmup_ramp(s, 4)) for s in (0, 1, 2, 4, 9)], [0, 0.25, 0.5, 1, 1])
    assert float(warmup_ramp(0, 0)) == 1.0


# ---------------------------------------------------------------- missing teacher


@pytest.mark.parametrize("mode", ["nan", "has_teacher", "absent", "all_nan"])
def test_missing_teacher_rows_get_no_teacher_term(mode):
    model = MatTARanker(tiny_config(warmup_steps=0))
    features, labels = batch(64)
    features = dict(features)
    n = 64
    teacher = features["teacher_logit"].numpy().copy()
    missing = np.zeros(n, bool)
    if mode == "nan":
        missing[::3] = True
        teacher[missing] = np.nan
        features["teacher_logit"] = tf.constant(teacher)
    elif mode == "has_teacher":
        missing[1::2] = True
        teacher[missing] = np.inf  # garbage in rows flagged absent must not matter
        features["teacher_logit"] = tf.constant(teacher)
        features["has_teacher"] = tf.constant((~missing).astype(np.int64))
    elif mode == "absent":
        missing[:] = True
        del features["teacher_logit"]
    else:
        missing[:] = True
        features["teacher_logit"] = tf.fill([n], float("nan"))
    with tf.GradientTape() as tape:
        _, logits, terms = model._matta_losses((features, labels), training=True)
    grads = tape.gradient(terms["loss"], model.trainable_variables)
    assert np.isfinite(float(terms["loss"]))
    for g in grads:
        values = g.values if isinstance(g, tf.IndexedSlices) else g
        assert np.all(np.isfinite(values.numpy()))
    s = logits["student"].numpy().astype(np.float64)
    has = ~missing
    expected = _np_kd(s[has], teacher[has], 1.0).mean() if has.any() else 0.0
    assert abs(float(terms["teacher_kd_student"]) - expected) < 1e-5
    # And a full train step stays finite.
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)  # eager: no tracing cost
    out = model.train_on_batch(features, labels, return_dict=True)
    assert np.isfinite(out["loss"])
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# ---------------------------------------------------------------- stop gradient


def test_ta_to_student_term_has_stop_gradient():
    config = tiny_config()
    model = MatTARanker(config)
    features, labels = batch(32)
    net = model.network
    with tf.GradientTape(persistent=True) as tape:
        encoded = net.encode(features)
        student = net.logits_at(encoded, config.student)
        ta = net.logits_at(encoded, config.ta)
        has, teacher = teacher_mask_and_logits(features, 32)
        terms = matta_loss_terms(labels, student, ta, teacher, has, 1.0, config.loss_weights, 1.0)
        term = terms["ta_kd_student"]
        no_stop = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(ta), logits=student))
    # No gradient reaches the TA's logit: the term cannot move the TA toward the Student.
    assert tape.gradient(term, ta) is None
    assert tape.gradient(no_stop, ta) is not None  # the check above can fail
    # Weights only the TA uses get exactly zero gradient.
    ta_only = [net.crosses[2].kernel, net.crosses[2].bias, net.mlp[2].kernel, net.mlp[2].bias]
    for g in tape.gradient(term, ta_only):
        assert g is None or not np.any(tf.convert_to_tensor(g).numpy())
    # ... and so do the TA-only slices of shared weights.
    w_s = config.student.x0_width(FEATURES)
    d_s = config.student.embedding_dim
    g_emb = tf.convert_to_tensor(tape.gradient(term, net.embeddings[0].embeddings)).numpy()
    g_cross = tape.gradient(term, net.crosses[0].kernel).numpy()
    g_mlp = tape.gradient(term, net.mlp[0].kernel).numpy()
    assert not np.any(g_emb[:, d_s:]) and np.any(g_emb[:, :d_s])
    assert not np.any(g_cross[w_s:, :]) and not np.any(g_cross[:, w_s:]) and np.any(g_cross[:w_s, :w_s])
    assert not np.any(g_mlp[w_s:, :]) and not np.any(g_mlp[:, 16:]) and np.any(g_mlp[:w_s, :16])
    del tape


def test_train_step_ramps_distillation_with_optimizer_iterations():
    weights = LossWeights(student=0, ta=0, teacher=0, ta_to_student=1.0)
    model = MatTARanker(tiny_config(loss_weights=weights, warmup_steps=10))
    model.compile(optimizer=tf.keras.optimizers.SGD(0.0), run_eagerly=True)
    features, labels = batch(32)
    _, _, terms = model._matta_losses((features, labels), training=False)
    kd = float(terms["ta_kd_student"])
    assert kd > 0
    first = model.train_on_batch(features, labels, return_dict=True)
    assert abs(first["loss"]) < 1e-7  # step 0: ramp 0
    model.optimizer.iterations.assign(5)
    model.reset_metrics()
    half = model.train_on_batch(features, labels, return_dict=True)
    assert abs(half["loss"] - 0.5 * kd) < 1e-5


# ---------------------------------------------------------------- training quality


def test_short_training_beats_logistic_regression_on_planted_crosses():
    tf.keras.utils.set_random_seed(0)
    train = generate_click_logs(30000, seed=11, config=LOGS)
    test = generate_click_logs(15000, seed=12, config=LOGS)
    oracle = roc_auc(test.column("label").to_numpy(), test.column("click_prob").to_numpy())
    train_ds = table_to_dataset(train, FEATURES, 256, shuffle_seed=0)
    test_ds = table_to_dataset(test, FEATURES, 2048)

    model = MatTARanker(tiny_config())
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3))
    model.fit(train_ds, epochs=3, verbose=0)
    metrics = model.evaluate(test_ds, return_dict=True, verbose=0)
    per_spec = evaluate_submodels(model, test_ds, {"student": model.config.student,
                                                   **model.config.mixnmatch_specs(1), "ta": model.config.ta})
    assert abs(per_spec["student"]["auc"] - metrics["student_auc"]) < 1e-6
    assert abs(per_spec["ta"]["logloss"] - metrics["ta_logloss"]) < 1e-5
    assert per_spec["mix_1"]["auc"] >= 0.75  # cut out after training, never trained alone

    lr = build_logistic_regression(FEATURES)
    lr.compile(optimizer=tf.keras.optimizers.Adam(1e-2),
               loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
               metrics=[tf.keras.metrics.AUC(from_logits=True, num_thresholds=1000, name="auc")])
    lr.fit(train_ds, epochs=3, verbose=0)
    lr_auc = lr.evaluate(test_ds, return_dict=True, verbose=0)["auc"]
    print(f"oracle AUC {oracle:.4f}  student {metrics['student_auc']:.4f}  ta {metrics['ta_auc']:.4f}  "
          f"mix_1 {per_spec['mix_1']['auc']:.4f}  logistic regression {lr_auc:.4f}")
    assert metrics["student_auc"] >= 0.75
    assert metrics["ta_auc"] >= 0.75
    assert lr_auc <= oracle - 0.12, "the generator's crosses must be out of a linear model's reach"
    assert metrics["student_auc"] >= lr_auc + 0.1
    for prefix in ("student", "ta"):
        assert 0.8 < metrics[f"{prefix}_calibration"] < 1.25
        assert 0.2 < metrics[f"{prefix}_logloss"] < 0.6


def test_mixnmatch_sampling_and_other_optimizers():
    config = tiny_config(mixnmatch_train_specs=2, loss_weights=LossWeights(mixnmatch=0.5))
    model = MatTARanker(config)
    assert len(model.train_mixnmatch_specs) == 2
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), run_eagerly=True)  # eager: no tracing cost
    table = generate_click_logs(1024, seed=5, config=LOGS)
    history = model.fit(table_to_dataset(table, FEATURES, 128), epochs=1, verbose=0).history
    assert np.isfinite(history["mixnmatch_bce"][-1]) and history["mixnmatch_bce"][-1] > 0
    assert np.isfinite(history["loss"][-1])
    evaluated = model.evaluate(table_to_dataset(table, FEATURES, 512), return_dict=True, verbose=0)
    assert "mixnmatch_bce" not in evaluated and evaluated["student_auc"] > 0  # not sampled at eval
    # The sampled term really reaches weights: with only the Student's BCE and the
    # Mix'n'Match term (weighted like the Student's) on, a step changes embedding columns
    # beyond the Student's (used by both mixes).
    only_mix = MatTARanker(tiny_config(mixnmatch_train_specs=2, loss_weights=LossWeights(
        student=1.0, ta=0, teacher=0, ta_to_student=0, mixnmatch=1.0), warmup_steps=0))
    only_mix.compile(optimizer=tf.keras.optimizers.Adagrad(0.1), run_eagerly=True)
    before = only_mix.network.embeddings[0].embeddings.numpy().copy()
    features, labels = batch(64)
    only_mix.train_on_batch(features, labels)
    after = only_mix.network.embeddings[0].embeddings.numpy()
    assert np.any(after[:, 4:5] != before[:, 4:5])
    assert np.all(after[:, 7:] == before[:, 7:])  # no mix uses the TA's last column


def test_all_mixnmatch_loss_terms_match_float64_reference():
    rng = np.random.default_rng(2)
    n = 16
    y = (rng.random(n) < 0.4).astype(np.float64)
    s, ta, teacher, m1, m2 = (rng.normal(0, 2, n) for _ in range(5))
    weights = LossWeights(student=0.7, ta=1.3, teacher=0.4, ta_to_student=2.0, mixnmatch=0.6)
    temperature, ramp = 2.0, 0.5
    mask = tf.constant(np.arange(n) % 3 > 0)
    f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
    base = matta_loss_terms(f32(y), f32(s), f32(ta), f32(teacher), mask, tf.constant(ramp), weights, temperature)
    terms = matta_loss_terms(f32(y), f32(s), f32(ta), f32(teacher), mask, tf.constant(ramp), weights, temperature,
                             mixnmatch={"mix_1": f32(m1), "mix_2": f32(m2)})
    has = np.arange(n) % 3 > 0
    extra = 0.0
    for name, m in (("mix_1", m1), ("mix_2", m2)):
        want = {f"{name}_bce": _np_bce(m, y).mean(), f"teacher_kd_{name}": _np_kd(m[has], teacher[has], 2.0).mean(),
                f"ta_kd_{name}": _np_kd(m, ta, 2.0).mean()}
        for key, value in want.items():
            assert abs(float(terms[key]) - value) < 1e-5 * max(1.0, value), key
        # Weighted like the Student's terms, times w_m.
        extra += 0.6 * (0.7 * want[f"{name}_bce"] + 0.4 * want[f"teacher_kd_{name}"]
                        + 2.0 * ramp * want[f"ta_kd_{name}"])
    assert abs(float(terms["loss"]) - float(base["loss"]) - extra) < 1e-4
    assert abs(float(terms["mixnmatch_bce"]) - (_np_bce(m1, y).mean() + _np_bce(m2, y).mean()) / 2) < 1e-5


@pytest.mark.parametrize("size_heads", ["shared", "own", "affine"])
def test_all_mixnmatch_training_trains_every_size_every_step(size_heads):
    config = tiny_config(mixnmatch_train_specs=2, mixnmatch_training="all", size_heads=size_heads,
                         loss_weights=LossWeights(mixnmatch=0.5), warmup_steps=0)
    model = MatTARanker(config)
    mixes = config.mixnmatch_specs(2)
    assert list(model.all_mixnmatch_specs) == ["mix_1", "mix_2"]
    features, labels = batch(64)
    with tf.GradientTape(persistent=True) as tape:
        _, _, terms = model._matta_losses((features, labels), training=True)
    for name in mixes:  # every size's three terms, every step (not sampled)
        for key in (f"{name}_bce", f"teacher_kd_{name}", f"ta_kd_{name}"):
            assert key in terms and float(terms[key]) > 0, key
    # ... and each size's BCE reaches the weights only that size (and bigger ones) use:
    # embedding column d of mix_k (d = the Student's dim) moves for mix_1's own term.
    d_s = config.student.embedding_dim
    g = tf.convert_to_tensor(tape.gradient(terms["mix_1_bce"], model.network.embeddings[0].embeddings)).numpy()
    assert np.any(g[:, d_s:mixes["mix_1"].embedding_dim]) and not np.any(g[:, mixes["mix_1"].embedding_dim:])
    if size_heads == "own":  # each trained size (but the TA) has its own, unshared head
        for name in ("student", "mix_1", "mix_2"):
            head = model.network.size_head(config.trained_specs()[name])[1]
            assert tape.gradient(terms[f"{name}_bce"], head.kernel) is not None
        assert tape.gradient(terms["mix_1_bce"], model.network.size_head(config.student)[1].kernel) is None
        assert model.network.size_head(config.ta) is None
    if size_heads == "affine":
        for name in ("student", "mix_1", "mix_2", "ta"):
            assert model.network.size_head(config.trained_specs()[name])[0] == "affine"
    del tape
    # Deterministic, so the terms are part of evaluation too; a compiled train step runs.
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
    logs = model.train_on_batch(features, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["mix_2_bce"] > 0
    evaluated = model.evaluate(table_to_dataset(generate_click_logs(256, seed=5, config=LOGS), FEATURES, 256),
                               return_dict=True, verbose=0)
    assert evaluated["mix_1_bce"] > 0 and evaluated["ta_kd_mix_2"] >= 0


def test_model_serialization_and_checkpoint(tmp_path):
    model = MatTARanker(tiny_config(), name="ranker")
    features, _ = batch(16)
    out = model(features)
    # Metric accumulators are not model weights (nor checkpointed / warm-started).
    assert all(w.trainable for w in model.weights)
    # Variable names are unique and stable across instances (warm starts match by name).
    names = [w.name for w in model.weights]
    assert len(set(names)) == len(names)
    assert "network/embedding_C1/embeddings:0" in names and "network/cross_2/kernel:0" in names
    assert names == [w.name for w in MatTARanker(tiny_config()).weights]
    clone = MatTARanker.from_config(model.get_config())
    clone(features)
    clone.set_weights([w + 0.01 for w in model.get_weights()])
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=clone).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    again = clone(features)
    for k in ("student", "ta"):
        np.testing.assert_array_equal(out[k].numpy(), again[k].numpy())
    serialized = tf.keras.utils.serialize_keras_object(model)
    restored = tf.keras.utils.deserialize_keras_object(serialized)
    assert isinstance(restored, MatTARanker) and restored.config == model.config


@pytest.mark.parametrize("kind", ["numeric_only", "categorical_only"])
def test_single_kind_feature_specs(kind):
    from matta_tf.config import FeatureSpec
    from matta_tf.extract import extract

    features = (FeatureSpec(numeric=FEATURES.numeric) if kind == "numeric_only"
                else FeatureSpec(categorical=FEATURES.categorical))
    config = RankerConfig(features=features, student=SubmodelSpec(2, 1, (), (4,)))
    model = MatTARanker(config)
    inputs, _ = batch(8)
    out = model(inputs)
    assert out["student"].shape == (8,) and np.all(np.isfinite(out["ta"].numpy()))
    np.testing.assert_allclose(extract(model, config.student)(inputs).numpy(), out["student"].numpy(), atol=1e-6)


MIRRORED_SCRIPT = """
import matta_tf
import numpy as np
import tensorflow as tf
cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.test_model import FEATURES, LOGS, tiny_config
from matta_tf.datasets import generate_click_logs, table_to_dataset
from matta_tf.model import MatTARanker
ds = table_to_dataset(generate_click_logs(128, seed=1, config=LOGS), FEATURES, 128)
single = MatTARanker(tiny_config(warmup_steps=0))
single.compile(optimizer=tf.keras.optimizers.SGD(0.5))
single.fit(ds, verbose=0)
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    multi = MatTARanker(tiny_config(warmup_steps=0))
    multi.compile(optimizer=tf.keras.optimizers.SGD(0.5))
multi.fit(ds, verbose=0)
moved = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), MatTARanker(tiny_config()).get_weights()))
diff = max(np.abs(a - b).max() for a, b in zip(single.get_weights(), multi.get_weights()))
print("RESULT", moved, diff)
"""


def test_mirrored_strategy_step_equals_single_device():
    """Two replicas on one global batch make the same SGD update as one device (the loss
    is scaled by 1/replicas because replica gradients are summed)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    moved, diff = map(float, line[0].split()[1:])
    assert moved > 0.1  # the step did something
    assert diff < 1e-5


@pytest.mark.parametrize("size_heads", ["own", "affine"])
def test_size_heads_serialization_and_checkpoint(size_heads, tmp_path):
    config = tiny_config(mixnmatch_train_specs=1, size_heads=size_heads)
    model = MatTARanker(config)
    features, _ = batch(16)
    names = [w.name for w in model.weights]
    assert len(set(names)) == len(names)
    prefix = "network/logit_student/kernel:0" if size_heads == "own" else "network/calibration_student/scale:0"
    assert prefix in names
    clone = MatTARanker.from_config(model.get_config())
    clone(features)
    clone.set_weights([w + 0.01 for w in model.get_weights()])
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=clone).read(str(tmp_path / "ckpt")).assert_existing_objects_matched()
    mix = config.mixnmatch_specs(1)["mix_1"]
    np.testing.assert_array_equal(model.submodel(mix, features).numpy(), clone.submodel(mix, features).numpy())
    restored = tf.keras.utils.deserialize_keras_object(tf.keras.utils.serialize_keras_object(model))
    assert restored.config == model.config


def test_shared_head_starts_at_the_students_glorot_scale():
    """The shared head has max(x0, widths) rows but the Student reads only its leading
    ones: its initial kernel is Glorot-scaled for the Student's head input (the plain
    Glorot scale for all rows started the Student at about half a plain model's scale)."""
    config = tiny_config()
    model = MatTARanker(config)
    kernel = model.network.head.kernel.numpy()
    fan_in = config.student.head_input_width(config.features)
    assert kernel.shape[0] > fan_in  # the head really is larger than what the Student reads
    limit = np.sqrt(6.0 / (fan_in + 1))
    assert np.abs(kernel).max() <= limit
    assert np.abs(kernel).max() > 0.8 * limit  # uniform over +-limit, not the all-rows scale
    assert np.sqrt(6.0 / (kernel.shape[0] + 1)) < 0.8 * limit
