"""Quality benchmark arms (Q1-Q3): does MatTA beat independently trained / KD-only
students, at every size, with Adam and with Shampoo?

Every arm uses the same data, step budget, batch size and eval split; only the loss
weights, the TA and the optimizer differ. Baselines are the *same code path*
(`MatTARanker`) with the TA set equal to the model being trained:

* ``alone``   labels only: loss_weights(student=1, ta=0, teacher=0, ta_to_student=0).
* ``kd``      labels + KD from the teacher. With ta == student the model's teacher term
              ``w_t [KD(T->s) + KD(T->ta)]`` counts the same KD twice, so w_t = 0.5 gives
              exactly ``BCE + KD(T->s)``.
* ``matta``   the full recipe: the configured Student nested in the configured TA.

Extracted Mix'n'Match sizes of the one MatTA run are compared with ``alone`` and ``kd``
models trained from scratch at exactly that size.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

import matta_tf  # noqa: F401
from matta_tf.config import LossWeights, RankerConfig, SubmodelSpec
from matta_tf.metrics import binary_metrics

ALONE = LossWeights(student=1.0, ta=0.0, teacher=0.0, ta_to_student=0.0, mixnmatch=0.0)
KD = LossWeights(student=1.0, ta=0.0, teacher=0.5, ta_to_student=0.0, mixnmatch=0.0)


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    steps: int = 600
    batch_size: int = 512
    adam_lr: float = 2e-3
    shampoo_lr: float = 2e-3
    warmup_steps: int = 150


def make_optimizer(name: str, settings: TrainSettings, precondition_frequency: int = 10):
    import tensorflow as tf

    if name == "adam":
        return tf.keras.optimizers.Adam(settings.adam_lr)
    if name == "shampoo":
        from matta_tf.optimizers import Shampoo

        return Shampoo(learning_rate=settings.shampoo_lr, graft="adam",
                       precondition_frequency=precondition_frequency)
    raise ValueError(f"unknown optimizer {name!r}; use adam or shampoo")


def arm_config(base: RankerConfig, student: SubmodelSpec, ta: SubmodelSpec, weights: LossWeights,
               seed: int, settings: TrainSettings, mixnmatch_train_specs: int = 0) -> RankerConfig:
    return dataclasses.replace(base, student=student, ta=ta, ta_expansion=None, loss_weights=weights,
                               seed=seed, warmup_steps=settings.warmup_steps,
                               mixnmatch_train_specs=mixnmatch_train_specs)


def train(config: RankerConfig, train_ds, optimizer: str, settings: TrainSettings,
          head_init_scale: float | None = None):
    """Trains a MatTARanker for settings.steps steps; returns (model, seconds).
    `head_init_scale` (diagnostics, bench/parity.py) multiplies the logit head's initial kernel."""
    import tensorflow as tf

    from matta_tf.model import MatTARanker

    tf.keras.utils.set_random_seed(config.seed)
    model = MatTARanker(config)
    if head_init_scale is not None:
        model.network.head.kernel.assign(model.network.head.kernel * head_init_scale)
    model.compile(optimizer=make_optimizer(optimizer, settings))
    start = time.perf_counter()
    model.fit(train_ds, steps_per_epoch=settings.steps, epochs=1, verbose=0)
    return model, time.perf_counter() - start


def eval_spec(model, spec: SubmodelSpec, eval_batches, labels: np.ndarray) -> dict[str, float]:
    """Metrics of the standalone model extracted at `spec` (what would be served)."""
    from matta_tf.extract import extract

    small = extract(model, spec)
    logits = np.concatenate([small(features).numpy() for features, _ in eval_batches])
    return binary_metrics(logits, labels)
