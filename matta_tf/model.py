"""The MatTA ranker: a DCN-V2 (stacked: cross layers then MLP) whose Student is nested in a
Teaching Assistant, co-trained with distillation from stored Teacher logits.

Forward at a `SubmodelSpec` s (see `matta_tf.config` for the slicing convention):

    x0 = [numeric(n) | E_1[:, 0], ..., E_m[:, 0] | ... | E_1[:, d-1], ..., E_m[:, d-1]]
    x_{l+1} = x0 * (W_l x_l + b_l) + x_l          l < s.cross_layers
    h_{k+1} = relu(A_k h_k + c_k)                 k < len(s.mlp_widths), h_0 = x_L
    logit = w[:width(h_K)] . h_K + w_0

The embeddings are laid out dimension-major, so the Student's `x0` (dim d_s) is the
leading `n + m*d_s` columns of the TA's and every nested weight is a leading block.

Loss (`matta_loss_terms`), with y the click label, T the temperature, r(step) the linear
warm-up ramp 0 -> 1 and KD(z_t -> z) = T^2 * CE(sigmoid(z_t / T), sigmoid(z / T)):

    L = w_s BCE(s, y) + w_ta BCE(t, y) + w_t [KD(teacher -> s) + KD(teacher -> t)]
        + w_d r(step) KD(stop_gradient(t) -> s)
        + w_m [w_s BCE(m, y) + w_t KD(teacher -> m) + w_d r(step) KD(stop_gradient(t) -> m)]

(a Mix'n'Match size m is trained like the Student, scaled by w_m), where m is one
sampled Mix'n'Match size (`mixnmatch_training="sampled"`) or the bracket is summed over
every trained size `mix_k` (`"all"`). With `size_heads="own"` / `"affine"`
each trained size reads its logit through its own head / calibration (see
`RankerConfig`); the trunk stays nested.

Teacher terms average over the rows that have a teacher logit only. The T^2 factor keeps
the KD gradient scale independent of T (Hinton et al. 2015); at T = 1 it is plain CE.

Example:

```python
config = RankerConfig.from_yaml("matta_tf/configs/default_ranker.yaml")
model = MatTARanker(config)
model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
model.fit(dataset)  # yields ({"I1": ..., "C1": ..., "teacher_logit": ...}, label)
model.evaluate(eval_dataset)  # student_auc, ta_auc, student_logloss, ...
```
"""
from __future__ import annotations

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf

from matta_tf.config import FeatureSpec, RankerConfig, SubmodelSpec
from matta_tf.layers import (
    FeaturePreprocessor,
    LogitAffine,
    NestedCross,
    NestedDense,
    NestedEmbedding,
)

_serializable = tf.keras.utils.register_keras_serializable(package="matta")


# --------------------------------------------------------------------------- loss math


def binary_cross_entropy(logits, labels):
    """Per-row BCE(sigmoid(logits), labels), numerically stable."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def distillation_loss(student_logits, target_logits, temperature: float):
    """Per-row KD: T^2 * CE(sigmoid(target / T), sigmoid(student / T))."""
    t = tf.constant(temperature, student_logits.dtype)
    soft_target = tf.sigmoid(target_logits / t)
    return t * t * tf.nn.sigmoid_cross_entropy_with_logits(labels=soft_target, logits=student_logits / t)


def masked_mean(values, mask, count=None):
    """Mean of `values` over rows where `mask`; 0 if no row is selected. Masked-out rows
    are replaced (not multiplied) by zero, so NaN/inf there cannot leak into the sum.
    `count`: the denominator, if not the number of selected rows (see `matta_loss_terms`)."""
    values = tf.where(mask, values, tf.zeros_like(values))
    if count is None:
        count = tf.reduce_sum(tf.cast(mask, values.dtype))
    return tf.math.divide_no_nan(tf.reduce_sum(values), count)


def row_mean(values, rows=None):
    """Mean of `values` over the batch, or their sum over `rows` if given."""
    return tf.reduce_mean(values) if rows is None else tf.reduce_sum(values) / rows


def teacher_mask_and_logits(features: dict, batch_size, dtype=tf.float32):
    """(has_teacher bool [B], teacher logits [B] with missing rows set to 0 - finite).

    A row has a teacher iff `teacher_logit` is present, finite, and `has_teacher` (if
    given) is nonzero. Missing values are replaced before any arithmetic happens."""
    if "teacher_logit" not in features:
        return tf.zeros([batch_size], tf.bool), tf.zeros([batch_size], dtype)
    teacher = tf.reshape(tf.cast(features["teacher_logit"], dtype), [-1])
    mask = tf.math.is_finite(teacher)
    if "has_teacher" in features:
        mask = mask & (tf.reshape(tf.cast(features["has_teacher"], dtype), [-1]) > 0)
    return mask, tf.where(mask, teacher, tf.zeros_like(teacher))


def warmup_ramp(step, warmup_steps: int):
    """r(step) = min(1, step / warmup_steps); 1 when there is no warm-up."""
    if warmup_steps <= 0:
        return tf.constant(1.0)
    return tf.minimum(1.0, tf.cast(step, tf.float32) / float(warmup_steps))


def matta_loss_terms(labels, student, ta, teacher, has_teacher, ramp, weights, temperature,
                     mixnmatch=None, rows=None, teacher_rows=None):
    """All terms of the MatTA loss (unweighted means) and the weighted total `loss`.

    `mixnmatch`: None, the logits of one sampled Mix'n'Match size (terms `mixnmatch_bce`,
    `teacher_kd_mixnmatch`, `ta_kd_mixnmatch`), or a dict {name: logits} of sizes that
    are all trained (terms `<name>_bce`, `teacher_kd_<name>`, `ta_kd_<name>` each, each
    size weighted `weights.mixnmatch`; the `mixnmatch_*` terms are then their means).
    A Mix'n'Match size's terms are weighted like the Student's, times `weights.mixnmatch`.

    `rows` / `teacher_rows`: denominators of the row means / teacher means instead of this
    batch's counts. Under a distribution strategy with N replicas in sync they are the
    global batch's counts / N, so that the replicas' gradients (summed, each scaled by
    1/N) are those of the global batch's means even when the replicas' shares of the
    batch hold different numbers of rows with a teacher."""
    terms = {
        "student_bce": row_mean(binary_cross_entropy(student, labels), rows),
        "ta_bce": row_mean(binary_cross_entropy(ta, labels), rows),
        "teacher_kd_student": masked_mean(distillation_loss(student, teacher, temperature), has_teacher, teacher_rows),
        "teacher_kd_ta": masked_mean(distillation_loss(ta, teacher, temperature), has_teacher, teacher_rows),
        "ta_kd_student": row_mean(distillation_loss(student, tf.stop_gradient(ta), temperature), rows),
    }
    total = (weights.student * terms["student_bce"] + weights.ta * terms["ta_bce"]
             + weights.teacher * (terms["teacher_kd_student"] + terms["teacher_kd_ta"])
             + weights.ta_to_student * ramp * terms["ta_kd_student"])
    if isinstance(mixnmatch, dict):
        for name, logits in mixnmatch.items():
            terms[f"{name}_bce"] = row_mean(binary_cross_entropy(logits, labels), rows)
            terms[f"teacher_kd_{name}"] = masked_mean(distillation_loss(logits, teacher, temperature), has_teacher, teacher_rows)
            terms[f"ta_kd_{name}"] = row_mean(distillation_loss(logits, tf.stop_gradient(ta), temperature), rows)
            total += weights.mixnmatch * (weights.student * terms[f"{name}_bce"]
                                          + weights.teacher * terms[f"teacher_kd_{name}"]
                                          + weights.ta_to_student * ramp * terms[f"ta_kd_{name}"])
        if mixnmatch:
            for prefix, suffix in (("", "_bce"), ("teacher_kd_", ""), ("ta_kd_", "")):
                key = f"{prefix}mixnmatch{suffix}"
                terms[key] = tf.add_n([terms[f"{prefix}{n}{suffix}"] for n in mixnmatch]) / len(mixnmatch)
    elif mixnmatch is not None:
        terms["mixnmatch_bce"] = row_mean(binary_cross_entropy(mixnmatch, labels), rows)
        terms["teacher_kd_mixnmatch"] = masked_mean(
            distillation_loss(mixnmatch, teacher, temperature), has_teacher, teacher_rows)
        terms["ta_kd_mixnmatch"] = row_mean(
            distillation_loss(mixnmatch, tf.stop_gradient(ta), temperature), rows)
        total += weights.mixnmatch * (weights.student * terms["mixnmatch_bce"]
                                      + weights.teacher * terms["teacher_kd_mixnmatch"]
                                      + weights.ta_to_student * ramp * terms["ta_kd_mixnmatch"])
    terms["loss"] = total
    return terms


# --------------------------------------------------------------------------- metrics


@_serializable
class Calibration(tf.keras.metrics.Metric):
    """sum(sigmoid(logit)) / sum(label): 1.0 is calibrated on average, > 1 over-predicts."""

    def __init__(self, name="calibration", **kwargs):
        super().__init__(name=name, **kwargs)
        self.prediction_sum = self.add_weight("prediction_sum", initializer="zeros", dtype=tf.float64)
        self.label_sum = self.add_weight("label_sum", initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, logits, sample_weight=None):
        self.prediction_sum.assign_add(tf.reduce_sum(tf.cast(tf.sigmoid(logits), tf.float64)))
        self.label_sum.assign_add(tf.reduce_sum(tf.cast(y_true, tf.float64)))

    def result(self):
        return tf.cast(tf.math.divide_no_nan(self.prediction_sum, self.label_sum), tf.float32)


def evaluate_submodels(model, dataset, specs: dict) -> dict[str, dict[str, float]]:
    """AUC, log-loss and calibration of several nested submodels of a `MatTARanker` in one
    pass over `dataset` (features are preprocessed and embedded once per batch).

    Returns {name: {"auc": ..., "logloss": ..., "calibration": ...}}."""
    for spec in specs.values():
        model.config.check_spec(spec)
    metrics = {name: submodel_metrics(name) for name in specs}

    @tf.function
    def step(features, labels):
        encoded = model.network.encode(features)
        labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
        for name, spec in specs.items():
            logits = model.network.logits_at(encoded, spec)
            for metric in metrics[name]:
                metric.update_state(labels, logits)

    for features, labels in dataset:
        step(features, labels)
    return {name: {m.name[len(name) + 1:]: float(m.result()) for m in ms} for name, ms in metrics.items()}


def submodel_metrics(prefix: str) -> list:
    return [tf.keras.metrics.AUC(from_logits=True, num_thresholds=1000, name=f"{prefix}_auc"),
            tf.keras.metrics.BinaryCrossentropy(from_logits=True, name=f"{prefix}_logloss"),
            Calibration(name=f"{prefix}_calibration")]


# --------------------------------------------------------------------------- network


@_serializable
class RankerNetwork(tf.keras.layers.Layer):
    """Preprocessing + nested embeddings + nested cross stack + nested MLP + logit head,
    all built at `max_spec`; `call(features, specs=...)` returns one logit vector per spec.

    `nested_head=True` sizes the head for any depth <= max (rows = max(x0 width, widths));
    `nested_head=False` (standalone models) sizes it for `max_spec` exactly.

    `size_heads` / `head_specs` ({name: spec}, the trained sizes): with ``"own"`` every
    spec in `head_specs` except `max_spec` gets its own head `logit_<name>` (rows = the
    spec's last hidden width); with ``"affine"`` every spec in `head_specs` gets a
    `LogitAffine` `calibration_<name>` after the shared head. Other specs use the
    shared head unchanged.
    """

    def __init__(self, features, max_spec, nested_head: bool = True, cross_diag_scale: float = 0.0,
                 seed: int = 0, size_heads: str = "shared", head_specs=None,
                 head_init_fan_in: int | None = None, **kwargs):
        super().__init__(**kwargs)
        # The shared head has max(x0 width, MLP widths) rows, but the Student reads only its
        # leading rows: Glorot-scaling the kernel for all rows starts the Student's head at
        # about half the scale a plain model of its size gets (bench/parity.py measured
        # +0.003 AUC on the Criteo sample from this fix). `head_init_fan_in` = the width
        # the initial kernel is scaled for (default: all rows, i.e. plain Glorot).
        self.head_init_fan_in = None if head_init_fan_in is None else int(head_init_fan_in)
        self.features = features if isinstance(features, FeatureSpec) else FeatureSpec.from_dict(features)
        self.max_spec = max_spec if isinstance(max_spec, SubmodelSpec) else SubmodelSpec.from_dict(max_spec)
        self.nested_head = nested_head
        self.cross_diag_scale = float(cross_diag_scale)
        self.seed = int(seed)
        spec, feats = self.max_spec, self.features
        init = tf.keras.initializers
        base = self.seed * 10007  # distinct, reproducible seeds per weight
        x0_width = spec.x0_width(feats)
        self.preprocessor = FeaturePreprocessor(feats, name="preprocess")
        self.embeddings = [
            NestedEmbedding(f.input_dim, spec.embedding_dim, name=f"embedding_{f.name}",
                            embeddings_initializer=init.RandomUniform(-0.05, 0.05, seed=base + i))
            for i, f in enumerate(feats.categorical)]
        self.crosses = [
            NestedCross(x0_width, spec.cross_ranks[i] if spec.low_rank else None,
                        diag_scale=self.cross_diag_scale, name=f"cross_{i}",
                        kernel_initializer=init.TruncatedNormal(stddev=0.05, seed=base + 1000 + 2 * i))
            for i in range(spec.cross_layers)]
        widths = spec.mlp_widths
        self.mlp = [NestedDense(w, x0_width if i == 0 else widths[i - 1], activation="relu", name=f"mlp_{i}",
                                kernel_initializer=init.GlorotUniform(seed=base + 2000 + i))
                    for i, w in enumerate(widths)]
        head_rows = max((x0_width, *widths)) if nested_head else (widths[-1] if widths else x0_width)
        fan_in = head_rows if self.head_init_fan_in is None else self.head_init_fan_in
        limit = (6.0 / (fan_in + 1)) ** 0.5  # Glorot uniform for a [fan_in, 1] kernel
        self.head = NestedDense(1, head_rows, name="logit",
                                kernel_initializer=init.RandomUniform(-limit, limit, seed=base + 3000))
        if size_heads not in ("shared", "own", "affine"):
            raise ValueError(f"size_heads must be shared, own or affine, got {size_heads!r}")
        self.size_heads = size_heads
        self.head_specs = {name: s if isinstance(s, SubmodelSpec) else SubmodelSpec.from_dict(s)
                           for name, s in (head_specs or {}).items()}
        # spec -> (kind, layer); the first name of a spec wins (e.g. student == ta).
        # Untracked (Keras would sort its keys); the layers are tracked via size_head_layers.
        object.__setattr__(self, "_size_head", {})
        size_layers = []
        for k, (name, s) in enumerate(self.head_specs.items()):
            if s in self._size_head or size_heads == "shared" or (size_heads == "own" and s == spec):
                continue
            if size_heads == "own":
                rows = s.mlp_widths[-1] if s.mlp_widths else s.x0_width(feats)
                layer = NestedDense(1, rows, name=f"logit_{name}",
                                    kernel_initializer=init.GlorotUniform(seed=base + 3001 + k))
            else:
                layer = LogitAffine(name=f"calibration_{name}")
            self._size_head[s] = (size_heads, layer)
            size_layers.append(layer)
        self.size_head_layers = size_layers
        # Build every weight now, at full size, so no variable is ever created inside a
        # traced train step or a tf.switch_case branch.
        # Explicit name scopes give the variables unique, stable names
        # ("network/embedding_C1/embeddings:0"), which warm starts match on.
        with tf.name_scope(self.name):
            for layer in [*self.embeddings, *self.crosses, *self.mlp, self.head, *size_layers]:
                with tf.name_scope(layer.name):
                    layer.build(None)
        self.built = True

    def encode(self, features):
        """(numeric [B, n], embeddings [B, D, m]) at the maximum embedding dim."""
        numeric, ids = self.preprocessor(features)
        if ids:
            stacked = tf.stack([emb(i) for emb, i in zip(self.embeddings, ids, strict=True)], axis=2)
        else:
            stacked = tf.zeros([tf.shape(numeric)[0], self.max_spec.embedding_dim, 0])
        return numeric, stacked

    def logits_at(self, encoded, spec: SubmodelSpec):
        numeric, stacked = encoded
        d, m = spec.embedding_dim, len(self.features.categorical)
        if d > self.max_spec.embedding_dim:
            raise ValueError(f"embedding_dim {d} > this network's {self.max_spec.embedding_dim}")
        # Dimension-major flattening: [B, d, m] -> [B, d*m] (dim 0 of all features first).
        if m:
            x0 = tf.concat([numeric, tf.reshape(stacked[:, :d, :], [-1, d * m])], axis=1)
        else:  # numeric-only model (reshape cannot infer -1 with zero elements)
            x0 = numeric
        return self.logits_from_x0(x0, spec)

    def logits_from_x0(self, x0, spec: SubmodelSpec):
        """Logits from the cross-stack input x0 = [numeric | e_0 | ... | e_{d-1}] ([B, n + d*m],
        e_k = dim k of every feature's embedding, in feature order): what `logits_at` builds
        from `encode`'s output. The fused serving path (`matta_tf.input_path`) builds x0 itself."""
        if spec.cross_layers > len(self.crosses) or len(spec.mlp_widths) > len(self.mlp):
            raise ValueError(f"spec {spec} is deeper than this network's {self.max_spec}")
        x = x0
        for i in range(spec.cross_layers):
            x = self.crosses[i](x0, x, rank=spec.cross_ranks[i] if spec.low_rank else None)
        for i, width in enumerate(spec.mlp_widths):
            x = self.mlp[i](x, units=width)
        kind, layer = self._size_head.get(spec, ("shared", None))
        if kind == "own":
            return layer(x)[:, 0]
        logits = self.head(x)[:, 0]
        return layer(logits) if kind == "affine" else logits

    def size_head(self, spec: SubmodelSpec):
        """("own" | "affine", layer) for a spec with its own head/calibration, else None."""
        return self._size_head.get(spec)

    def call(self, features, specs=None):
        specs = (self.max_spec,) if specs is None else tuple(specs)
        encoded = self.encode(features)
        return [self.logits_at(encoded, s) for s in specs]

    def get_config(self):
        return {**super().get_config(), "features": self.features.to_dict(),
                "max_spec": self.max_spec.to_dict(), "nested_head": self.nested_head,
                "cross_diag_scale": self.cross_diag_scale, "seed": self.seed,
                "size_heads": self.size_heads, "head_init_fan_in": self.head_init_fan_in,
                "head_specs": {name: s.to_dict() for name, s in self.head_specs.items()}}


# --------------------------------------------------------------------------- models


@_serializable
class MatTARanker(tf.keras.Model):
    """TA-sized nested DCN; `model(features)` -> {"student": logits[B], "ta": logits[B]}."""

    def __init__(self, config: RankerConfig | dict, **kwargs):
        super().__init__(**kwargs)
        self.config = config if isinstance(config, RankerConfig) else RankerConfig.from_dict(config)
        self.network = RankerNetwork(self.config.features, self.config.ta, nested_head=True,
                                     cross_diag_scale=self.config.cross_diag_scale,
                                     seed=self.config.seed, size_heads=self.config.size_heads,
                                     head_specs=self.config.trained_specs(),
                                     head_init_fan_in=self.config.student.head_input_width(self.config.features),
                                     name="network")
        mixes = self.config.mixnmatch_specs(self.config.mixnmatch_train_specs)
        # The sampled pool: the trained mix_k plus `mixnmatch_random_specs` random sizes.
        self.train_mixnmatch_specs = list(mixes.values()) + self.config.random_pool()
        # "all": every trained mix_k, by name, every step (a deterministic term, so it is
        # part of the evaluation loss too).
        self.all_mixnmatch_specs = mixes if self.config.mixnmatch_training == "all" else {}
        if (self.config.mixnmatch_train_specs and not self.train_mixnmatch_specs
                and self.config.mixnmatch_training == "sampled"):
            # Student and TA too close for distinct intermediates: sample between the ends.
            self.train_mixnmatch_specs = [self.config.student, self.config.ta]
        # Keras fit reduces train_step's outputs over replicas with "sum" by default, but
        # they are metric results already aggregated over replicas: report the first.
        self.distribute_reduction_method = "first"
        names = ["loss", "student_bce", "ta_bce", "teacher_kd_student", "teacher_kd_ta", "ta_kd_student"]
        if self.train_mixnmatch_specs:
            names += ["mixnmatch_bce", "teacher_kd_mixnmatch", "ta_kd_mixnmatch"]
        for name in self.all_mixnmatch_specs:
            names += [f"{name}_bce", f"teacher_kd_{name}", f"ta_kd_{name}"]
        # Metrics are set with object.__setattr__ so Keras does not track them as sublayers:
        # their accumulators must not show up in model.weights, checkpoints or warm starts.
        object.__setattr__(self, "loss_trackers", {n: tf.keras.metrics.Mean(name=n) for n in names})
        object.__setattr__(self, "eval_metrics",
                           {"student": submodel_metrics("student"), "ta": submodel_metrics("ta")})

    # ---- forward
    def call(self, features, training=None):
        student, ta = self.network(features, specs=(self.config.student, self.config.ta))
        return {"student": student, "ta": ta}

    def submodel(self, spec: SubmodelSpec, features=None):
        """Logits of the nested submodel `spec` (or a function computing them)."""
        self.config.check_spec(spec)
        if features is None:
            return lambda f: self.network(f, specs=(spec,))[0]
        return self.network(features, specs=(spec,))[0]

    # ---- training
    @property
    def metrics(self):
        return [*self.loss_trackers.values(), *self.eval_metrics["student"], *self.eval_metrics["ta"]]

    def _distillation_step(self):
        optimizer = getattr(self, "optimizer", None)
        return optimizer.iterations if optimizer is not None else tf.constant(0, tf.int64)

    def _matta_losses(self, data, training: bool):
        features, labels, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError("MatTARanker does not support sample weights / class weights")
        if labels is None:
            raise ValueError("MatTARanker needs (features, label) batches")
        labels = tf.reshape(tf.cast(labels, tf.float32), [-1])
        encoded = self.network.encode(features)
        student = self.network.logits_at(encoded, self.config.student)
        ta = self.network.logits_at(encoded, self.config.ta)
        # The sampled Mix'n'Match term is a training regulariser only: evaluation losses
        # (val_loss) cover Student + TA terms, so they are comparable across steps.
        mixnmatch = None
        if self.all_mixnmatch_specs:
            mixnmatch = {name: self.network.logits_at(encoded, s) for name, s in self.all_mixnmatch_specs.items()}
        elif training and self.train_mixnmatch_specs and self.config.loss_weights.mixnmatch > 0:
            # One size per step for the whole (global) batch: a stateless draw keyed by
            # (seed, step) is the same on every replica and worker, and after a restart.
            seed = tf.stack([tf.constant(self.config.seed, tf.int64),
                             tf.cast(self._distillation_step(), tf.int64)])
            index = tf.random.stateless_uniform([], seed, 0, len(self.train_mixnmatch_specs), dtype=tf.int32)
            branches = [lambda s=s: self.network.logits_at(encoded, s) for s in self.train_mixnmatch_specs]
            mixnmatch = tf.switch_case(index, branches)
        has_teacher, teacher = teacher_mask_and_logits(features, tf.shape(labels)[0])
        ramp = warmup_ramp(self._distillation_step(), self.config.warmup_steps)
        rows, teacher_rows = self._replica_counts(labels, has_teacher)
        terms = matta_loss_terms(labels, student, ta, teacher, has_teacher, ramp,
                                 self.config.loss_weights, self.config.temperature, mixnmatch,
                                 rows=rows, teacher_rows=teacher_rows)
        return labels, {"student": student, "ta": ta}, terms

    @staticmethod
    def _replica_counts(labels, has_teacher):
        """(rows, rows with a teacher) of the global batch / replicas in sync, or (None,
        None) with one replica (see `matta_loss_terms`: the per-replica means then add up
        to the global batch's)."""
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        context = tf.distribute.get_replica_context()
        if replicas == 1 or context is None:
            return None, None
        local = tf.stack([tf.cast(tf.size(labels), tf.float32),
                          tf.reduce_sum(tf.cast(has_teacher, tf.float32))])
        total = context.all_reduce(tf.distribute.ReduceOp.SUM, local) / replicas
        return total[0], total[1]

    def _update_metrics(self, labels, logits, terms):
        for name, tracker in self.loss_trackers.items():
            if name in terms:
                tracker.update_state(terms[name])
        for name, metrics in self.eval_metrics.items():
            for metric in metrics:
                metric.update_state(labels, logits[name])
        # Terms not computed in this step (the sampled Mix'n'Match terms at eval) are left
        # out rather than reported as 0.
        return {m.name: m.result() for m in self.metrics
                if m.name in terms or m.name not in self.loss_trackers}

    def train_step(self, data):
        with tf.GradientTape() as tape:
            labels, logits, terms = self._matta_losses(data, training=True)
            loss = terms["loss"] + tf.add_n(self.losses) if self.losses else terms["loss"]
            # Gradients are summed over replicas under a distribution strategy; scale the
            # per-replica mean so the update is that of the global-batch mean.
            loss = loss / tf.distribute.get_strategy().num_replicas_in_sync
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        return self._update_metrics(labels, logits, terms)

    def test_step(self, data):
        labels, logits, terms = self._matta_losses(data, training=False)
        return self._update_metrics(labels, logits, terms)

    def get_config(self):
        return {"config": self.config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(RankerConfig.from_dict(config["config"]), name=config.get("name"))


@_serializable
class StandaloneRanker(tf.keras.Model):
    """A plain (non-nested) ranker at one `SubmodelSpec`: raw features in, logit [B] out.

    Made by `matta_tf.extract.extract` with weights sliced from a `MatTARanker`; its
    parameter count is that of the small architecture only.
    """

    def __init__(self, features, spec, cross_diag_scale: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.features = features if isinstance(features, FeatureSpec) else FeatureSpec.from_dict(features)
        self.spec = spec if isinstance(spec, SubmodelSpec) else SubmodelSpec.from_dict(spec)
        self.cross_diag_scale = float(cross_diag_scale)
        self.seed = int(seed)  # initial weights (extracted models get theirs from the TA)
        self.network = RankerNetwork(self.features, self.spec, nested_head=False,
                                     cross_diag_scale=self.cross_diag_scale, seed=self.seed,
                                     name="network")

    def call(self, features, training=None):
        return self.network(features)[0]

    def get_config(self):
        return {"features": self.features.to_dict(), "spec": self.spec.to_dict(),
                "cross_diag_scale": self.cross_diag_scale, "seed": self.seed, "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def build_logistic_regression(features: FeatureSpec, name: str = "logistic_regression") -> StandaloneRanker:
    """Logistic regression on the same preprocessed features: embedding dim 1, no cross or
    MLP layers, so logit = sum_i h_i E_i[v_i] + sum_j h_j x_j + b - linear in the one-hot
    categorical indicators and the numeric values (the function class of LR)."""
    return StandaloneRanker(features, SubmodelSpec(embedding_dim=1), name=name)
