"""Per-size fine-tune of extracted models (matta_tf.finetune)."""
import matta_tf  # noqa: F401

# isort: split
import numpy as np
import pytest
import tensorflow as tf

from matta_tf.config import RankerConfig, SubmodelSpec
from matta_tf.datasets import (
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    table_to_dataset,
)
from matta_tf.extract import count_params, extract
from matta_tf.finetune import FinetuneWeights, finetune, finetune_loss_terms
from matta_tf.model import MatTARanker

LOGS = SyntheticLogConfig(num_numeric=3, num_categorical=4, cardinalities=(10, 20, 40, 60), num_crosses=3)
FEATURES = default_feature_spec(LOGS)
CONFIG = RankerConfig(features=FEATURES, student=SubmodelSpec(3, 1, (), (12,)),
                      ta=SubmodelSpec(6, 2, (), (24, 10)), size_heads="own", mixnmatch_train_specs=1,
                      mixnmatch_training="all", warmup_steps=0)


def _np_bce(z, y):
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


@pytest.fixture(scope="module")
def table():
    return generate_click_logs(2048, seed=5, config=LOGS)


def _trained_model(table):
    tf.keras.utils.set_random_seed(0)
    model = MatTARanker(CONFIG)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    model.fit(table_to_dataset(table, FEATURES, 256, shuffle_seed=0, repeat=True), steps_per_epoch=5, verbose=0)
    return model


def test_loss_terms_match_float64_reference(table):
    features, labels = next(iter(table_to_dataset(table, FEATURES, 128)))
    teacher = features["teacher_logit"].numpy().astype(np.float64).copy()
    teacher[::3] = np.nan  # rows without a teacher get no KD term
    features = {**features, "teacher_logit": tf.constant(teacher, tf.float32)}
    z = np.random.default_rng(0).normal(0, 1.5, 128)
    y = labels.numpy().astype(np.float64).reshape(-1)
    t = 2.0
    got = finetune_loss_terms(tf.constant(z, tf.float32), labels, features, FinetuneWeights(0.5, 3.0, t))
    has = np.isfinite(teacher)
    p = 1 / (1 + np.exp(-teacher[has] / t))
    kd = (t * t * _np_bce(z[has] / t, p)).mean()
    bce = _np_bce(z, y).mean()
    np.testing.assert_allclose(float(got["bce"]), bce, rtol=1e-5)
    np.testing.assert_allclose(float(got["teacher_kd"]), kd, rtol=1e-5)
    np.testing.assert_allclose(float(got["loss"]), 0.5 * bce + 3.0 * kd, rtol=1e-5)


def test_finetune_trains_the_extracted_model_in_place(table):
    model = _trained_model(table)
    for spec in (CONFIG.student, CONFIG.mixnmatch_specs(1)["mix_1"], CONFIG.ta):
        small = extract(model, spec)
        params = count_params(small)
        before = [w.numpy().copy() for w in small.weights]
        nested = model.submodel(spec)
        ds = table_to_dataset(table, FEATURES, 256, shuffle_seed=1, repeat=True)
        features = next(iter(table_to_dataset(table, FEATURES, 512)))[0]
        np.testing.assert_allclose(small(features).numpy(), nested(features).numpy(), rtol=1e-5, atol=1e-5)
        # steps=0: a no-op
        assert finetune(small, ds, 0, tf.keras.optimizers.Adam(1e-2))["loss"] == []
        for w, b in zip(small.weights, before, strict=True):
            np.testing.assert_array_equal(w.numpy(), b)
        history = finetune(small, ds, 40, tf.keras.optimizers.Adam(1e-2), FinetuneWeights(1.0, 2.0))
        assert len(history["loss"]) == 40 and history["seconds"] > 0
        assert np.all(np.isfinite(history["loss"]))
        assert np.mean(history["loss"][-10:]) < np.mean(history["loss"][:10])
        # the standalone model changed, the MatTA model it was cut from did not
        assert count_params(small) == params
        assert any(not np.array_equal(w.numpy(), b) for w, b in zip(small.weights, before, strict=True))
        np.testing.assert_allclose(extract(model, spec)(features).numpy(), nested(features).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_finetune_rejects_bad_arguments(table):
    small = extract(_trained_model(table), CONFIG.student)
    finite = table_to_dataset(table, FEATURES, 1024)  # 2 batches
    with pytest.raises(ValueError, match="ran out after 2 of 3"):
        finetune(small, finite, 3, tf.keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="steps"):
        finetune(small, finite, -1, tf.keras.optimizers.Adam(1e-3))
    with pytest.raises(ValueError, match="teacher"):
        FinetuneWeights(teacher=float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        FinetuneWeights(temperature=0.0)
