"""A short per-size fine-tune of an extracted (standalone) model.

After `matta_tf.extract.extract` has cut a size out of a trained MatTA ranker, the
standalone model can be trained on its own for a few steps with the loss its
independently trained KD twin uses:

    L = w_bce BCE(z, y) + w_teacher KD(teacher -> z)

with KD(z_t -> z) = T^2 CE(sigmoid(z_t / T), sigmoid(z / T)) averaged over the rows that
have a teacher logit (`matta_tf.model.distillation_loss`, `teacher_mask_and_logits`).
The architecture and parameter count do not change, so the result is exported like the
extracted model.

Example:

```python
small = extract(model, config.student)
history = finetune(small, train_dataset, steps=30, optimizer=tf.keras.optimizers.Adam(5e-4),
                   weights=FinetuneWeights(bce=1.0, teacher=12.0))
```
"""
from __future__ import annotations

import dataclasses
import math
import time

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf

from matta_tf.model import (
    binary_cross_entropy,
    distillation_loss,
    masked_mean,
    teacher_mask_and_logits,
)


@dataclasses.dataclass(frozen=True)
class FinetuneWeights:
    """L = bce * BCE(z, y) + teacher * KD(teacher -> z) at `temperature`."""

    bce: float = 1.0
    teacher: float = 1.0
    temperature: float = 1.0

    def __post_init__(self):
        for name in ("bce", "teacher"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"FinetuneWeights.{name} must be a finite number >= 0, got {v!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"FinetuneWeights.temperature must be a finite number > 0, got {t!r}")


def finetune_loss_terms(logits, labels, features, weights: FinetuneWeights) -> dict:
    """{"bce", "teacher_kd", "loss"} (means over the batch; KD over rows with a teacher)."""
    labels = tf.reshape(tf.cast(labels, logits.dtype), [-1])
    has_teacher, teacher = teacher_mask_and_logits(features, tf.shape(labels)[0], logits.dtype)
    bce = tf.reduce_mean(binary_cross_entropy(logits, labels))
    kd = masked_mean(distillation_loss(logits, teacher, weights.temperature), has_teacher)
    return {"bce": bce, "teacher_kd": kd, "loss": weights.bce * bce + weights.teacher * kd}


def finetune(model: tf.keras.Model, dataset, steps: int, optimizer, weights: FinetuneWeights = FinetuneWeights(),
             log_every: int = 0, log=print) -> dict:
    """Trains `model` (features -> logits [B], e.g. a `StandaloneRanker`) in place for
    `steps` batches of `dataset` ((features, label) batches; it must yield at least
    `steps` of them, e.g. `repeat=True`) with `finetune_loss_terms`.

    Returns {"steps", "seconds", "loss": [per-step losses], "bce": [...], "teacher_kd": [...]}.
    `steps=0` leaves the model untouched."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"finetune: steps must be an int >= 0, got {steps!r}")
    history = {"steps": steps, "seconds": 0.0, "loss": [], "bce": [], "teacher_kd": []}
    if steps == 0:
        return history
    variables = model.trainable_variables
    if not variables:
        raise ValueError("finetune: the model has no trainable variables (call it once to build it?)")

    @tf.function
    def step(features, labels):
        with tf.GradientTape() as tape:
            logits = model(features, training=True)
            terms = finetune_loss_terms(logits, labels, features, weights)
        grads = tape.gradient(terms["loss"], variables)
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return terms

    start = time.perf_counter()
    it = iter(dataset)
    for i in range(steps):
        try:
            features, labels = next(it)[:2]
        except StopIteration:
            raise ValueError(f"finetune: the dataset ran out after {i} of {steps} steps "
                             "(use a repeating dataset)") from None
        terms = step(features, labels)
        for k in ("loss", "bce", "teacher_kd"):
            history[k].append(float(terms[k]))
        if log_every and (i + 1) % log_every == 0:
            log(f"finetune step {i + 1}/{steps}: loss {history['loss'][-1]:.4f}")
    history["seconds"] = time.perf_counter() - start
    return history
