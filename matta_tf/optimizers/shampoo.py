"""Shampoo for tf_keras: blocked Kronecker-factored preconditioning with grafting.

The math lives in `shampoo_math` (pure functions); this module is the stateful wrapper:
slot variables, the step counter, `tf.cond` around the inverse roots, sparse rows.

Usage::

    import matta_tf  # before TensorFlow
    import tensorflow as tf
    from matta_tf.optimizers import Shampoo, ShampooConfig

    model.compile(optimizer=Shampoo(learning_rate=1e-3, precondition_frequency=10),
                  loss="binary_crossentropy")
    # or Shampoo(1e-3, config=ShampooConfig(block_size=256, graft="adagrad"))

One step for a variable ``W`` with gradient ``G`` (t = 1-based step)::

    A      = grafted diagonal step of G                   (shampoo_math.graft_step)
    L, R  += G G^T, G^T G  per block                      (every step)
    P_L, P_R = (L + eps_L)^{-1/p}, (R + eps_R)^{-1/p}     (only when t >= start and
                                                          (t - start) % frequency == 0)
    U      = graft(P_L G P_R, A)  if t >= start else A    (per-block norm of A)
    D      = momentum(U)                                  (beta1, optional Nesterov)
    W     -= lr * (D + weight_decay * W)                  (decoupled weight decay)

Sparse gradients (`tf.IndexedSlices`, e.g. embedding tables) never touch the Kronecker
factors: the touched rows get the grafted diagonal method (row-wise Adam/Adagrad/...),
lazy momentum and lazy weight decay, all by gather/scatter on those rows only, so a
million-row table is never densified and untouched rows stay bit-identical.

Distribution strategies (tests/test_shampoo.py, tests/test_distribute*.py).
MirroredStrategy and MultiWorkerMirroredStrategy: gradients arrive all-reduced, every
replica applies the same update to its copy (2 workers reproduce one process's weights).
ParameterServerStrategy with sharded embedding tables (`ShardedVariable`, rows split over
the parameter servers): Keras hands Shampoo each shard as its own variable with the
shard's gradient (row-sparse, shard-local row ids); the diagonal (row-wise) update, its
slots (created per shard, colocated with it, checkpointed as ShardedVariables by the base
class) and the non-finite checks are row-/element-wise, so the result equals the
unsharded table's. A shard that would get Kronecker factors is refused with a ValueError
in `build`: per-shard statistics are not the whole variable's (keep such variables whole
or list them in `diagonal_only`). Parameter-server steps are asynchronous: workers update
the shared statistics and slots without locks, like Adam's. Optimizer checkpoints restore
into the same sharding only (the slots are tracked per shard index; the model's weights
restore into any sharding).

Non-finite gradients (issue 12). A gradient is *non-finite* when ``sum(G^2)`` is not
finite: an entry is NaN/inf, or the entries are so large that ``G G^T`` would overflow
(`shampoo_math.finite_squared_norm`, one reduction per gradient). Such a step is skipped
for that variable: no statistics, graft-state, momentum, root or weight update, all of it
bit-identical to before the step (the other variables of the step are updated normally).
Row-sparse gradients are checked per row: only the non-finite rows are skipped, the finite
rows of the same step are updated (a NaN example only blocks the embedding rows it looked
up). `skipped_nonfinite` counts the steps in which anything was skipped, and with
``max_consecutive_nonfinite=N`` the step after N consecutive skips of one variable raises
`tf.errors.InvalidArgumentError` naming it. The global step still advances on a skipped
step, so later bias corrections use the global step count. Invariant: the statistics and
roots never become non-finite -- statistics only take finite gradients and a block whose
accumulation would overflow keeps its previous value; a root that comes out non-finite
keeps the previous root (counted in `root_failures`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import tensorflow as tf

from matta_tf.optimizers import shampoo_math as sm


@dataclasses.dataclass(frozen=True)
class ShampooConfig:
    """Hyper-parameters of `Shampoo` (all but the learning rate).

    Attributes:
      block_size: preconditioned dimensions longer than this are cut into blocks of this
        length, each with its own ``block_size x block_size`` factor. Bounds the root cost
        (O(block_size^3)) and statistics memory.
      max_preconditioner_dim: dimensions longer than this get no Kronecker factor
        (identity); if no dimension of a tensor is preconditioned it uses the grafted
        diagonal method alone ("diagonal fallback"). Keeps e.g. 1M-row tables cheap.
      precondition_frequency: recompute the inverse roots every this many steps.
      start_preconditioning_step: first step (1-based) that computes roots and uses the
        Shampoo direction; before it the update is the grafted direction. Statistics are
        accumulated from step 1.
      beta1: momentum (EMA) on the grafted update; 0 disables momentum.
      nesterov: Nesterov-style momentum.
      beta2: statistics EMA decay; 1.0 accumulates the sum (Adagrad-style).
      epsilon: epsilon of the grafted diagonal method (Adam's epsilon).
      graft_beta2: second-moment decay of the "adam"/"rmsprop" graft.
      matrix_eps: damping of each factor relative to its largest eigenvalue.
      exponent_override: root order p (``X^{-1/p}``); default ``2 *`` the number of
        preconditioned dimensions (4 for a 2-D tensor).
      graft: "adam" | "adagrad" | "rmsprop" | "sgd" | None (raw Shampoo direction).
      weight_decay: decoupled weight decay, ``W -= lr * weight_decay * W``.
      inverse_root: "eigh" (float64 eigendecomposition) or "newton" (coupled Newton in
        float64).
      use_bias_correction: bias-correct the momentum (like Adam's first moment).
      newton_max_iters: iteration cap of the coupled Newton root.
      newton_tolerance: stop criterion ``max|M - I|`` of the coupled Newton root.
      diagonal_only: regular expressions; variables whose name matches one get no
        Kronecker factors, only the grafted diagonal method. The default matches Keras /
        TFRS embedding tables (``.../embeddings``): their gradients are sparse rows, and
        Kronecker statistics for a tall ``[vocab, d]`` table would cost ``vocab *
        block_size`` floats for nothing.
      max_consecutive_nonfinite: None (default) skips non-finite gradients forever; an
        int N >= 0 raises `tf.errors.InvalidArgumentError` naming the variable when one
        variable's gradient has been non-finite in more than N consecutive steps (0: on
        the first one, i.e. fail fast instead of skipping).
    """

    block_size: int = 128
    max_preconditioner_dim: int = 4096
    precondition_frequency: int = 10
    start_preconditioning_step: int = 10
    beta1: float = 0.9
    nesterov: bool = False
    beta2: float = 1.0
    epsilon: float = 1e-8
    graft_beta2: float = 0.999
    matrix_eps: float = 1e-6
    exponent_override: int | None = None
    graft: str | None = "adam"
    weight_decay: float = 0.0
    inverse_root: str = "eigh"
    use_bias_correction: bool = True
    newton_max_iters: int = 100
    newton_tolerance: float = 1e-6
    diagonal_only: tuple[str, ...] = ("embeddings",)
    max_consecutive_nonfinite: int | None = None

    def __post_init__(self):
        # Lists come back from JSON configs; keep the dataclass hashable.
        object.__setattr__(self, "diagonal_only", tuple(self.diagonal_only or ()))
        def check(ok: bool, field: str, requirement: str):
            if not ok:
                raise ValueError(
                    f"ShampooConfig.{field} must be {requirement}, got {getattr(self, field)!r}")

        check(isinstance(self.block_size, int) and self.block_size >= 1, "block_size",
              "a positive int")
        check(isinstance(self.max_preconditioner_dim, int) and self.max_preconditioner_dim >= 1,
              "max_preconditioner_dim", "a positive int")
        check(isinstance(self.precondition_frequency, int) and self.precondition_frequency >= 1,
              "precondition_frequency", "a positive int")
        check(isinstance(self.start_preconditioning_step, int)
              and self.start_preconditioning_step >= 1, "start_preconditioning_step",
              "an int >= 1 (1-based step)")
        check(0.0 <= self.beta1 < 1.0, "beta1", "in [0, 1)")
        check(0.0 < self.beta2 <= 1.0, "beta2", "in (0, 1]")
        check(0.0 < self.graft_beta2 < 1.0, "graft_beta2", "in (0, 1)")
        check(self.epsilon >= 0.0, "epsilon", ">= 0")
        check(self.matrix_eps >= 0.0, "matrix_eps", ">= 0")
        check(self.weight_decay >= 0.0, "weight_decay", ">= 0")
        check(self.exponent_override is None
              or (isinstance(self.exponent_override, int) and self.exponent_override >= 1),
              "exponent_override", "None or a positive int")
        check(self.graft in sm.GRAFT_TYPES, "graft", f"one of {sm.GRAFT_TYPES}")
        check(self.inverse_root in sm.INVERSE_ROOT_METHODS, "inverse_root",
              f"one of {sm.INVERSE_ROOT_METHODS}")
        check(isinstance(self.newton_max_iters, int) and self.newton_max_iters >= 1,
              "newton_max_iters", "a positive int")
        check(self.newton_tolerance > 0.0, "newton_tolerance", "> 0")
        check(self.max_consecutive_nonfinite is None
              or (isinstance(self.max_consecutive_nonfinite, int)
                  and not isinstance(self.max_consecutive_nonfinite, bool)
                  and self.max_consecutive_nonfinite >= 0),
              "max_consecutive_nonfinite", "None or an int >= 0")
        for pattern in self.diagonal_only:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as err:
                raise ValueError(
                    f"ShampooConfig.diagonal_only: bad pattern {pattern!r}: {err}") from err

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        config["diagonal_only"] = list(self.diagonal_only)
        return config


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ShampooConfig))


@tf.keras.utils.register_keras_serializable(package="matta")
class Shampoo(tf.keras.optimizers.Optimizer):
    """Shampoo optimizer (tf_keras 2 API) with grafting, blocking and sparse rows.

    Args:
      learning_rate: float or `tf.keras.optimizers.schedules.LearningRateSchedule`.
      config: a `ShampooConfig`; keyword arguments named like its fields override it.
      name, clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum,
        ema_overwrite_frequency, jit_compile: as in every tf_keras optimizer.
        `jit_compile` defaults to False (the float64 roots inside `tf.cond` are not
        meant for XLA; it only matters on GPU anyway).
      **kwargs: `ShampooConfig` fields.

    Attributes:
      config: the effective `ShampooConfig`.
      root_failures: int64 variable, number of (block, factor) roots that came out
        non-finite (or, for Newton, did not converge) and were skipped, keeping the
        previous preconditioner.
      skipped_nonfinite: int64 variable, number of steps in which at least one variable's
        update (or, for row-sparse gradients, at least one row's) was skipped because its
        gradient was non-finite. `nonfinite_streak(variable)` is that variable's current
        run of consecutive skipped steps.
    """

    def __init__(
        self,
        learning_rate=0.001,
        config: ShampooConfig | None = None,
        name: str = "Shampoo",
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        jit_compile=False,
        **kwargs,
    ):
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in _CONFIG_FIELDS}
        if config is not None and not isinstance(config, ShampooConfig):
            raise TypeError(f"config must be a ShampooConfig, got {type(config).__name__}")
        self.config = dataclasses.replace(config or ShampooConfig(), **overrides)
        super().__init__(
            name=name,
            weight_decay=None,  # decoupled decay is done in update_step (lazily for rows)
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            jit_compile=jit_compile,
            **kwargs,
        )
        self._learning_rate = self._build_learning_rate(learning_rate)

    # ------------------------------------------------------------------------------------
    def build(self, var_list):
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        cfg = self.config
        self._layouts = self._no_dependency([])
        # One dict of slot variables keyed "<var index>_<slot>", tracked for checkpoints.
        self._slots = {}
        with tf.init_scope():
            self._root_failures = self.add_variable(
                shape=[], dtype=tf.int64, initializer="zeros", name="root_failures")
        for i, var in enumerate(var_list):
            layout = sm.make_layout(var.shape, cfg.block_size, cfg.max_preconditioner_dim,
                                    cfg.exponent_override)
            if any(re.search(p, var.name) for p in cfg.diagonal_only):
                layout = sm.diagonal_layout(var.shape)
            if layout.is_kronecker and hasattr(var, "_sharded_container"):
                shards = len(var._sharded_container().variables)
                raise ValueError(
                    f"Shampoo: variable `{var.name}` is one of {shards} shards of a "
                    "ShardedVariable (a parameter-server partitioner split it) and would get "
                    "Kronecker factors; statistics of one shard are not those of the whole "
                    "variable, so Shampoo does not precondition sharded variables. Partition "
                    "only the embedding tables (matta_tf.distribute `partition: embeddings`), "
                    "or give it the diagonal (row-wise) update by matching its name with "
                    "ShampooConfig.diagonal_only.")
            self._layouts.append(layout)
            if cfg.beta1 > 0.0:
                self._slots[f"{i}_momentum"] = self.add_variable_from_reference(
                    var, "shampoo_momentum")
            if sm.graft_needs_state(cfg.graft):
                self._slots[f"{i}_graft"] = self.add_variable_from_reference(
                    var, f"shampoo_graft_{cfg.graft}")
            if layout.is_kronecker:
                for dim, side in enumerate(("left", "right")):
                    if not layout.preconditioned[dim]:
                        continue
                    shape = layout.statistics_shape(dim)
                    self._slots[f"{i}_{side}_stats"] = self.add_variable_from_reference(
                        var, f"shampoo_{side}_stats", shape=shape)
                    self._slots[f"{i}_{side}_root"] = self.add_variable_from_reference(
                        var, f"shampoo_{side}_root", initial_value=tf.eye(
                            shape[1], batch_shape=[shape[0]], dtype=var.dtype))
        # Non-finite bookkeeping, created last: checkpoints track `_variables` by position,
        # so checkpoints written before these existed still restore (they start at 0).
        with tf.init_scope():
            self._skipped_nonfinite = self.add_variable(
                shape=[], dtype=tf.int64, initializer="zeros", name="skipped_nonfinite")
            self._nonfinite_streaks = self.add_variable(
                shape=[len(var_list)], dtype=tf.int64, initializer="zeros",
                name="nonfinite_streaks")
            for i, var in enumerate(var_list):  # this step's gradient was non-finite
                self._slots[f"{i}_nonfinite"] = self.add_variable(
                    shape=[], dtype=tf.bool, initializer="zeros",
                    name=f"nonfinite/{var._shared_name}")

    @property
    def root_failures(self) -> tf.Variable:
        return self._root_failures

    @property
    def skipped_nonfinite(self) -> tf.Variable:
        return self._skipped_nonfinite

    def nonfinite_streak(self, variable) -> tf.Tensor:
        """int64 scalar: consecutive steps (up to the last one) in which `variable`'s
        gradient was non-finite (any row, for row-sparse gradients); 0 after a good step."""
        return self._nonfinite_streaks[self._index_dict[self._var_key(variable)]]

    def preconditioner_layout(self, variable) -> sm.BlockLayout:
        """The `BlockLayout` used for a model variable (after `build`)."""
        return self._layouts[self._index_dict[self._var_key(variable)]]

    def _slot(self, index: int, name: str):
        return self._slots.get(f"{index}_{name}")

    # ------------------------------------------------------------------------------------
    def update_step(self, gradient, variable):
        cfg = self.config
        index = self._index_dict[self._var_key(variable)]
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step_int = self.iterations + 1
        step = tf.cast(step_int, dtype)
        use_decay = cfg.weight_decay > 0.0 and self._use_weight_decay(variable)
        if isinstance(gradient, tf.IndexedSlices):
            skipped = self._sparse_update(gradient, variable, index, lr, step, use_decay)
        else:
            grad = tf.cast(gradient, dtype)
            finite = sm.finite_squared_norm(grad)

            def update():
                self._dense_update(grad, variable, index, lr, step, step_int, use_decay)
                return tf.constant(True)

            # A non-finite gradient skips the whole update of this variable.
            tf.cond(finite, update, lambda: tf.constant(False))
            skipped = tf.logical_not(finite)
        # One small write per variable; the counting is done once per step for all of
        # them in `_distributed_apply_gradients_fn`.
        self._slot(index, "nonfinite").assign(skipped)

    def _dense_update(self, grad, variable, index, lr, step, step_int, use_decay):
        cfg = self.config
        dtype = variable.dtype
        graft_state = self._slot(index, "graft")
        grafted, new_graft_state = sm.graft_step(
            grad, graft_state, cfg.graft, step, cfg.graft_beta2, cfg.epsilon)
        if new_graft_state is not None:
            graft_state.assign(new_graft_state)
        layout = self._layouts[index]
        if layout.is_kronecker:
            update = self._shampoo_direction(grad, grafted, index, layout, step_int)
        else:
            update = grafted
        momentum = self._slot(index, "momentum")
        direction, new_m = sm.apply_momentum(
            update, momentum, cfg.beta1, cfg.nesterov, cfg.use_bias_correction, step)
        if new_m is not None:
            momentum.assign(new_m)
        if use_decay:
            direction = direction + tf.cast(cfg.weight_decay, dtype) * variable
        variable.assign_sub(lr * direction)

    def _shampoo_direction(self, grad, grafted, index, layout, step_int):
        cfg = self.config
        blocks = sm.to_blocks(tf.reshape(grad, layout.matrix_shape), layout)
        roots = []
        stats_and_roots = []
        for dim, side in enumerate(("left", "right")):
            if not layout.preconditioned[dim]:
                roots.append(None)
                continue
            stats = self._slot(index, f"{side}_stats")
            root = self._slot(index, f"{side}_root")
            old = stats.read_value()
            stats.assign(sm.keep_finite_blocks(
                sm.update_statistics(old, blocks, cfg.beta2, dim), old))
            stats_and_roots.append((stats, root))
            roots.append(root)

        start = tf.constant(cfg.start_preconditioning_step, tf.int64)
        recompute = tf.logical_and(
            step_int >= start,
            tf.equal(tf.math.floormod(step_int - start, cfg.precondition_frequency), 0))

        def compute_roots():
            failed = tf.constant(0, tf.int64)
            for stats, root in stats_and_roots:
                new_root, ok = sm.inverse_pth_root(
                    stats, layout.exponent, cfg.matrix_eps, cfg.inverse_root,
                    **self._newton_kwargs())
                root.assign(tf.where(ok[:, None, None], new_root, root))
                failed += tf.reduce_sum(tf.cast(tf.logical_not(ok), tf.int64))
            self._root_failures.assign_add(failed)
            return tf.constant(True)

        # The roots are the expensive part: only run them on recompute steps.
        tf.cond(recompute, compute_roots, lambda: tf.constant(False))

        def preconditioned():
            left = roots[0].read_value() if roots[0] is not None else None
            right = roots[1].read_value() if roots[1] is not None else None
            direction = sm.precondition_blocks(blocks, left, right)
            if cfg.graft is not None:
                direction = sm.graft_blocks(
                    direction, tf.reshape(grafted, layout.matrix_shape), layout)
            return tf.reshape(sm.from_blocks(direction, layout), layout.shape)

        return tf.cond(step_int >= start, preconditioned, lambda: tf.identity(grafted))

    def _newton_kwargs(self):
        if self.config.inverse_root != "newton":
            return {}
        return {"max_iters": self.config.newton_max_iters,
                "tolerance": self.config.newton_tolerance}

    def _sparse_update(self, gradient, variable, index, lr, step, use_decay):
        """Row-wise grafted update of the touched rows only (indices are deduplicated by
        the base class before `update_step`, so a row's value is the sum over its
        lookups). Rows whose gradient is non-finite are skipped: their weights, graft
        state and momentum are written back unchanged (bit-identical), the other rows are
        updated. Returns a bool scalar: whether any row was skipped."""
        rows = gradient.indices
        values = tf.cast(gradient.values, variable.dtype)
        flat = values if values.shape.rank == 2 else tf.reshape(
            values, [tf.shape(values)[0], -1])
        row_ok = sm.finite_squared_norm(flat, axis=1)
        all_ok = tf.reduce_all(row_ok)
        if self.jit_compile:  # XLA wants static shapes: mask the bad rows
            mask = tf.reshape(row_ok, [-1] + [1] * (variable.shape.rank - 1))
            self._sparse_rows_update(values, rows, mask, variable, index, lr, step, use_decay)
        else:  # drop the bad rows (the row count is dynamic anyway after deduplication)
            keep = tf.where(row_ok)[:, 0]
            self._sparse_rows_update(tf.gather(values, keep), tf.gather(rows, keep), None,
                                     variable, index, lr, step, use_decay)
        return tf.logical_not(all_ok)

    def _sparse_rows_update(self, values, rows, ok, variable, index, lr, step, use_decay):
        """The row update; with a bool mask `ok` (rows x 1...) the rows where it is False
        keep their weights and state (masks rather than `boolean_mask` keep static shapes)."""
        cfg = self.config

        def keep(new, old):
            return new if ok is None else tf.where(ok, new, old)

        zero = tf.constant(0, values.dtype)
        values = keep(values, zero)
        graft_state = self._slot(index, "graft")
        state_rows = tf.gather(graft_state, rows) if graft_state is not None else None
        update, new_state_rows = sm.graft_step(
            values, state_rows, cfg.graft, step, cfg.graft_beta2, cfg.epsilon)
        if new_state_rows is not None:
            graft_state.scatter_update(tf.IndexedSlices(keep(new_state_rows, state_rows), rows))
        momentum = self._slot(index, "momentum")
        m_rows = tf.gather(momentum, rows) if momentum is not None else None
        direction, new_m_rows = sm.apply_momentum(
            update, m_rows, cfg.beta1, cfg.nesterov, cfg.use_bias_correction, step)
        if new_m_rows is not None:
            momentum.scatter_update(tf.IndexedSlices(keep(new_m_rows, m_rows), rows))
        if use_decay:
            direction = direction + tf.cast(cfg.weight_decay, variable.dtype) * tf.gather(
                variable, rows)
        direction = keep(direction, zero)  # w - lr * 0 == w exactly
        variable.scatter_sub(tf.IndexedSlices(lr * direction, rows))

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        """The base class's per-variable updates, then the step's non-finite bookkeeping
        for all variables at once (outside the per-variable functions, so it also holds
        under `jit_compile`, where XLA would drop an assertion)."""
        iteration = super()._distributed_apply_gradients_fn(
            distribution, grads_and_vars, **kwargs)
        variables = [var for _, var in grads_and_vars]
        indices = [self._index_dict[self._var_key(var)] for var in variables]
        flags = tf.stack([self._slot(i, "nonfinite").read_value() for i in indices])
        all_streaks = self._nonfinite_streaks.read_value()
        every = indices == list(range(len(self._layouts)))
        previous = all_streaks if every else tf.gather(all_streaks, indices)
        streaks = tf.where(flags, previous + 1, tf.constant(0, tf.int64))
        self._nonfinite_streaks.assign(streaks if every else tf.tensor_scatter_nd_update(
            all_streaks, tf.constant(indices)[:, None], streaks))
        self._skipped_nonfinite.assign_add(tf.cast(tf.reduce_any(flags), tf.int64))
        limit = self.config.max_consecutive_nonfinite
        if limit is None:
            return iteration

        def fail():
            checks = []
            for var, value in zip(variables, tf.unstack(streaks), strict=True):
                name = var.name.replace("{", "(").replace("}", ")")
                message = tf.strings.format(
                    f"Shampoo: the gradient of variable `{name}` was non-finite in {{}} "
                    "consecutive steps (NaN/inf, or its squared norm overflowed), more than "
                    f"max_consecutive_nonfinite={limit}; those updates were skipped. Check "
                    "the inputs and the loss for NaN/inf, or lower the learning rate.",
                    value)
                checks.append(tf.debugging.Assert(value <= limit, [message]))
            with tf.control_dependencies(checks):
                return tf.constant(False)

        with tf.control_dependencies([tf.cond(tf.reduce_all(streaks <= limit),
                                              lambda: tf.constant(True), fail)]):
            return tf.identity(iteration)

    # ------------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(self.config.to_dict())
        config["learning_rate"] = self._serialize_hyperparameter(self._learning_rate)
        return config
