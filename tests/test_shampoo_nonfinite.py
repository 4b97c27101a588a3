"""Shampoo survives non-finite gradients (issue 12).

A step whose gradient for a variable is NaN/inf is skipped for that variable (no
statistics, graft, momentum or weight update); for row-sparse (embedding) gradients only
the non-finite rows are skipped. Each test trains a real tf_keras model twice from the same
initial weights, once clean (run A) and once with one bad step (run B), and checks that
the bad step changed nothing it should not, changed everything else exactly as in run A,
and that training goes on as well as in run A.
"""
import matta_tf  # noqa: F401  (before TensorFlow)

# isort: split

import numpy as np
import pytest
import tensorflow as tf

from matta_tf.optimizers import Shampoo, ShampooConfig

VOCAB, DIM, FEATURES, HIDDEN = 40, 4, 12, 24
CFG = dict(block_size=8, precondition_frequency=2, start_preconditioning_step=2,
           weight_decay=1e-3)


def _model(seed=0, activation="relu"):
    tf.keras.utils.set_random_seed(seed)
    ids = tf.keras.Input((1,), dtype="int64", name="ids")
    x = tf.keras.Input((FEATURES,), name="x")
    e = tf.keras.layers.Flatten()(tf.keras.layers.Embedding(VOCAB, DIM, name="emb")(ids))
    h = tf.keras.layers.Dense(HIDDEN, activation=activation, name="hidden")(
        tf.keras.layers.Concatenate()([x, e]))
    return tf.keras.Model([ids, x], tf.keras.layers.Dense(1, name="head")(h))


def _data(seed=0, n=320, batch=32):
    """Batches where every batch uses each id at most once per example slot (ids are
    shuffled 0..39 so one example's row is not shared with others in its batch)."""
    rng = np.random.default_rng(seed)
    ids = np.concatenate([rng.permutation(VOCAB)[:batch] for _ in range(n // batch)])[:, None]
    x = rng.standard_normal((n, FEATURES)).astype(np.float32)
    y = (x[:, :1] + 0.05 * ids > 1.0).astype(np.float32)
    return ids.astype(np.int64), x, y


def _batches(ids, x, y, batch=32):
    return [((tf.constant(ids[i:i + batch]), tf.constant(x[i:i + batch])),
             tf.constant(y[i:i + batch])) for i in range(0, len(y), batch)]


def _loss(model, inputs, y):
    logits = model(inputs, training=False)
    return float(tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)))


def _snapshot(model, opt):
    return ({v.name: v.numpy().copy() for v in model.weights},
            {v.name: v.numpy().copy() for v in opt.variables})


class Trainer:
    """A tf.function train step that can poison the gradient: `kernel_mask` (bool, the
    hidden kernel's shape) puts NaN at the True entries; `bad_row` (int, -1 = none) puts
    +inf into one element of that embedding row's sparse gradient."""

    def __init__(self, model, opt):
        self.model, self.opt = model, opt
        kernel = model.get_layer("hidden").kernel
        self.names = [v.name for v in model.trainable_variables]
        self.kernel_index = self.names.index(kernel.name)

        @tf.function
        def step(inputs, y, kernel_mask, bad_row):
            with tf.GradientTape() as tape:
                logits = model(inputs, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
            grads = tape.gradient(loss, model.trainable_variables)
            out = []
            for i, g in enumerate(grads):
                if i == self.kernel_index:
                    g = tf.where(kernel_mask, tf.constant(np.nan, g.dtype), g)
                if isinstance(g, tf.IndexedSlices):
                    hit = tf.logical_and(
                        tf.equal(g.indices, tf.cast(bad_row, g.indices.dtype))[:, None],
                        tf.equal(tf.range(tf.shape(g.values)[1]), 1)[None, :])
                    g = tf.IndexedSlices(tf.where(hit, tf.constant(np.inf, g.values.dtype),
                                                  g.values), g.indices, g.dense_shape)
                out.append(g)
            opt.apply_gradients(zip(out, model.trainable_variables, strict=True))
            return loss

        self.step = step
        self.clean_mask = tf.zeros(kernel.shape, tf.bool)

    def run(self, batch, kernel_mask=None, bad_row=-1):
        (inputs, y) = batch
        mask = self.clean_mask if kernel_mask is None else kernel_mask
        return float(self.step(inputs, y, mask, tf.constant(bad_row, tf.int64)))


def _train_two_runs(batches, bad_step, **poison):
    """Run A (clean) and run B (poisoned at 1-based step `bad_step`, >= 2), both from the
    same initial weights: model, optimizer, snapshots after every step, losses."""
    runs = {}
    for name in ("A", "B"):
        model, opt = _model(), Shampoo(1e-2, **CFG)
        trainer = Trainer(model, opt)
        snaps, losses = [None], []  # snaps[t] = after step t (no optimizer state at t = 0)
        for t, batch in enumerate(batches, start=1):
            losses.append(trainer.run(batch, **(poison if name == "B" and t == bad_step
                                                else {})))
            snaps.append(_snapshot(model, opt))
        runs[name] = (model, opt, snaps, losses)
    return runs


def _opt_vars_of(opt, variable_name):
    """The optimizer state of one model variable (slots; not its this-step-skipped flag)."""
    suffix = "/" + variable_name
    return [v.name for v in opt.variables
            if v.name.endswith(suffix) and "nonfinite/" not in v.name]


# ------------------------------------------------------------------------ dense kernel NaN
def test_nan_in_one_dense_kernel_gradient_skips_only_that_variable():
    ids, x, y = _data(0)
    batches = _batches(ids, x, y)
    bad_step = 6  # a root recomputation step (start 2, every 2 steps)
    mask = np.zeros((FEATURES + DIM, HIDDEN), bool)
    mask[3, 7] = True  # one element
    runs = _train_two_runs(batches, bad_step, kernel_mask=tf.constant(mask))
    model_a, opt_a, snaps_a, losses_a = runs["A"]
    model_b, opt_b, snaps_b, losses_b = runs["B"]
    kernel = model_b.get_layer("hidden").kernel.name

    assert int(opt_b.skipped_nonfinite.numpy()) == 1
    assert int(opt_a.skipped_nonfinite.numpy()) == 0
    assert int(opt_b.root_failures.numpy()) == 0
    # Every weight and every optimizer variable finite at every step.
    for weights, opt_state in snaps_b[1:]:
        assert all(np.isfinite(w).all() for w in weights.values())
        assert all(np.isfinite(s).all() for s in opt_state.values())
    assert np.isfinite(losses_b).all()

    # The bad step: the poisoned kernel and all of its optimizer state are bit-identical
    # to before the step; every other variable moved exactly as in the clean run.
    before_w, before_s = snaps_b[bad_step - 1]
    after_w, after_s = snaps_b[bad_step]
    np.testing.assert_array_equal(after_w[kernel], before_w[kernel])
    kernel_slots = _opt_vars_of(opt_b, kernel)
    assert len(kernel_slots) >= 6  # momentum, graft, left/right stats and roots
    for name in kernel_slots:
        np.testing.assert_array_equal(after_s[name], before_s[name])
    clean_after, _ = snaps_a[bad_step]
    for name, value in after_w.items():
        if name != kernel:
            np.testing.assert_array_equal(value, clean_after[name])
            assert not np.array_equal(value, before_w[name]), name
    # Up to the bad step both runs are the same; after it training carries on: the loss
    # of each later step stays within 5% of the clean run's and keeps falling.
    np.testing.assert_array_equal(losses_b[:bad_step], losses_a[:bad_step])
    later_a, later_b = np.array(losses_a[bad_step:]), np.array(losses_b[bad_step:])
    assert np.max(np.abs(later_b - later_a) / later_a) < 0.05, (later_a, later_b)
    assert losses_b[-1] < 0.9 * losses_b[0]


# ------------------------------------------------------------------------ embedding row inf
def test_inf_in_one_embedding_row_skips_only_that_row():
    ids, x, y = _data(1)
    batches = _batches(ids, x, y)
    bad_step = 4
    bad_row = int(ids[(bad_step - 1) * 32 + 5, 0])  # an id of the bad batch (unique in it)
    runs = _train_two_runs(batches, bad_step, bad_row=bad_row)
    model_a, opt_a, snaps_a, losses_a = runs["A"]
    model_b, opt_b, snaps_b, losses_b = runs["B"]
    table = model_b.get_layer("emb").embeddings.name

    assert int(opt_b.skipped_nonfinite.numpy()) == 1
    for weights, opt_state in snaps_b[1:]:
        assert all(np.isfinite(w).all() for w in weights.values())
        assert all(np.isfinite(s).all() for s in opt_state.values())
    assert np.isfinite(losses_b).all()

    before_w, before_s = snaps_b[bad_step - 1]
    after_w, after_s = snaps_b[bad_step]
    clean_after, clean_state = snaps_a[bad_step]
    # The bad row and its momentum / graft rows: untouched.
    np.testing.assert_array_equal(after_w[table][bad_row], before_w[table][bad_row])
    slots = _opt_vars_of(opt_b, table)
    assert len(slots) >= 2
    for name in slots:
        if before_s[name].ndim == 2:
            np.testing.assert_array_equal(after_s[name][bad_row], before_s[name][bad_row])
    # The other rows of the table (touched or not) and every other variable: exactly the
    # clean run's step.
    others = np.arange(VOCAB) != bad_row
    np.testing.assert_array_equal(after_w[table][others], clean_after[table][others])
    touched = np.unique(ids[(bad_step - 1) * 32:bad_step * 32, 0])
    touched = touched[touched != bad_row]
    assert np.all(np.any(after_w[table][touched] != before_w[table][touched], axis=1))
    for name, value in after_w.items():
        if name != table:
            np.testing.assert_array_equal(value, clean_after[name])
    later_a, later_b = np.array(losses_a[bad_step:]), np.array(losses_b[bad_step:])
    assert np.max(np.abs(later_b - later_a) / later_a) < 0.05, (later_a, later_b)


# ------------------------------------------------------------------------ NaN input feature
def test_nan_input_feature_in_fit_skips_the_nonfinite_updates():
    """`model.fit` with one example's feature NaN in batch 5: the loss of that batch is
    NaN, so every variable whose gradient is non-finite is left as it was (for the table:
    only the NaN example's row), every other variable is updated, nothing becomes NaN,
    and the following batches' losses track the clean run's."""
    ids, x, y = _data(2)
    bad_batch, bad_example = 4, 9  # 0-based batch index, row within the batch
    bad_id = int(ids[bad_batch * 32 + bad_example, 0])
    x_bad = x.copy()
    x_bad[bad_batch * 32 + bad_example, 2] = np.nan
    clean_eval = ((tf.constant(ids), tf.constant(x)), tf.constant(y))

    class Probe:
        """What reached the optimizer in the last step, recorded before Shampoo sees it:
        per variable whether its gradient was all finite, and which table rows were not."""

        def __init__(self, model):
            self.finite = {v.name: tf.Variable(True) for v in model.trainable_variables}
            self.bad_rows = tf.Variable(tf.zeros([VOCAB], tf.bool))
            probe = self

            class ProbedShampoo(Shampoo):
                def apply_gradients(self, grads_and_vars, *args, **kwargs):
                    grads_and_vars = list(grads_and_vars)
                    for g, v in grads_and_vars:
                        if isinstance(g, tf.IndexedSlices):
                            row_bad = tf.logical_not(
                                tf.reduce_all(tf.math.is_finite(g.values), axis=1))
                            probe.bad_rows.assign(tf.math.unsorted_segment_max(
                                tf.cast(row_bad, tf.int32), g.indices, VOCAB) > 0)
                            g = g.values
                        probe.finite[v.name].assign(tf.reduce_all(tf.math.is_finite(g)))
                    return super().apply_gradients(grads_and_vars, *args, **kwargs)

            self.optimizer = ProbedShampoo(1e-2, **CFG)

    class Recorder(tf.keras.callbacks.Callback):
        def __init__(self, probe):
            super().__init__()
            self.probe, self.snaps, self.eval_losses, self.received = probe, [], [], None

        def on_train_batch_end(self, batch, logs=None):
            self.snaps.append({v.name: v.numpy().copy() for v in self.model.weights})
            self.eval_losses.append(_loss(self.model, *clean_eval))
            if batch == bad_batch:
                self.received = ({k: bool(v.numpy()) for k, v in self.probe.finite.items()},
                                 np.flatnonzero(self.probe.bad_rows.numpy()))

    results = {}
    for name, features in (("A", x), ("B", x_bad)):
        model = _model(activation="tanh")  # tanh' passes NaN back to the embedding row
        probe = Probe(model)
        model.compile(optimizer=probe.optimizer,
                      loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
        recorder = Recorder(probe)
        model.fit((ids, features), y, batch_size=32, epochs=1, shuffle=False, verbose=0,
                  callbacks=[recorder])
        results[name] = (model, probe.optimizer, recorder)

    model_b, opt_b, rec_b = results["B"]
    _, opt_a, rec_a = results["A"]
    assert int(opt_b.skipped_nonfinite.numpy()) == 1
    assert int(opt_a.skipped_nonfinite.numpy()) == 0
    assert all(np.isfinite(w.numpy()).all() for w in model_b.weights)
    assert all(np.isfinite(v.numpy()).all() for v in opt_b.variables)

    finite, bad_rows = rec_b.received
    table = model_b.get_layer("emb").embeddings.name
    # A NaN input reaches the loss: every dense gradient is non-finite, and the table's
    # gradient exactly in the NaN example's row.
    assert [k for k, ok in finite.items() if ok] == []
    assert list(bad_rows) == [bad_id]
    before, after = rec_b.snaps[bad_batch - 1], rec_b.snaps[bad_batch]
    for name in finite:
        if name != table:
            np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(after[table][bad_id], before[table][bad_id])
    good = np.unique(ids[bad_batch * 32:(bad_batch + 1) * 32, 0])
    good = good[good != bad_id]
    assert len(good) == 31
    assert np.all(np.any(after[table][good] != before[table][good], axis=1))
    # and the clean run changed all of them in that step
    assert all(not np.array_equal(rec_a.snaps[bad_batch][k], rec_a.snaps[bad_batch - 1][k])
               for k in finite)

    # The loss on the clean data after every batch: finite, equal to the clean run's
    # before the bad batch, and after it at most about one step behind the clean run
    # (measured: B after batch t within 0.2% of A after batch t - 1).
    eval_a, eval_b = np.array(rec_a.eval_losses), np.array(rec_b.eval_losses)
    assert np.isfinite(eval_b).all()
    np.testing.assert_array_equal(eval_b[:bad_batch], eval_a[:bad_batch])
    lag = slice(bad_batch, None)
    assert np.all(eval_b[lag] > eval_a[lag])
    assert np.all(eval_b[lag] < 1.02 * eval_a[bad_batch - 1:-1]), (eval_a, eval_b)
    assert eval_b[-1] < 0.9 * _loss(_model(activation="tanh"), *clean_eval)


# ------------------------------------------------------------------------ raise after N
def _kernel_steps(opt, pattern, var=None, shape=(6, 5)):
    var = var if var is not None else tf.Variable(tf.ones(shape), name="w")

    @tf.function
    def step(g):
        opt.apply_gradients([(g, var)])

    for t, bad in enumerate(pattern):
        g = tf.random.stateless_normal(shape, seed=[7, t])
        if bad:
            g = tf.tensor_scatter_nd_update(g, [[1, 2]], [np.nan if bad == "nan" else np.inf])
        step(g)
    return var


def test_max_consecutive_nonfinite_raises_naming_the_variable():
    opt = Shampoo(1e-2, max_consecutive_nonfinite=2)
    # A finite step resets the run of skips: 2 + 2 non-finite steps never exceed 2 in a row.
    var = _kernel_steps(opt, [0, "nan", "inf", 0, "nan", "nan", 0])
    assert int(opt.skipped_nonfinite.numpy()) == 4
    assert int(opt.nonfinite_streak(var).numpy()) == 0
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"gradient of variable `w:0` was non-finite in 3 consecutive "
                             r"steps.*max_consecutive_nonfinite=2"):
        _kernel_steps(opt, ["nan", "nan", "inf"], var=var)
    assert np.isfinite(var.numpy()).all()

    eager = Shampoo(1e-2, max_consecutive_nonfinite=0)  # fail fast, also outside tf.function
    w = tf.Variable(tf.ones((3, 2)), name="fail_fast")
    eager.apply_gradients([(tf.ones((3, 2)), w)])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="`fail_fast:0` was non-finite in 1 consecutive"):
        eager.apply_gradients([(tf.fill((3, 2), np.nan), w)])

    unlimited = Shampoo(1e-2)  # default None: skip forever, never raise
    _kernel_steps(unlimited, ["nan"] * 5)
    assert int(unlimited.skipped_nonfinite.numpy()) == 5


def test_max_consecutive_nonfinite_is_validated_and_serialized():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="max_consecutive_nonfinite"):
            ShampooConfig(max_consecutive_nonfinite=bad)
    opt = Shampoo(1e-3, max_consecutive_nonfinite=3)
    config = opt.get_config()
    assert config["max_consecutive_nonfinite"] == 3
    assert Shampoo.from_config(config).config.max_consecutive_nonfinite == 3
    assert ShampooConfig().max_consecutive_nonfinite is None


# ------------------------------------------------------------------------ state invariants
def test_statistics_never_become_nonfinite():
    """A finite gradient whose outer product overflows a nearly saturated statistics
    block (beta2 = 1 accumulates forever): that block keeps its previous statistics, the
    other blocks and the weights are updated, and nothing becomes inf."""
    var = tf.Variable(tf.ones((16, 8)), name="w")
    opt = Shampoo(1e-2, block_size=8, beta2=1.0, precondition_frequency=1,
                  start_preconditioning_step=1)
    opt.apply_gradients([(tf.random.stateless_normal((16, 8), seed=[1, 1]), var)])
    stats = [v for v in opt.variables if "left_stats" in v.name][0]
    assert stats.shape == (2, 8, 8)
    saturated = stats.numpy()
    saturated[0] += np.float32(3.0e38) * np.eye(8, dtype=np.float32)
    stats.assign(saturated)
    g = np.full((16, 8), 0.5, np.float32)
    g[0, :] = 3.0e18  # row norm^2 = 7.2e37: finite, but 3e38 + 7.2e37 overflows float32
    before = var.numpy()
    opt.apply_gradients([(tf.constant(g), var)])
    after_stats = stats.numpy()
    assert np.isfinite(after_stats).all()
    np.testing.assert_array_equal(after_stats[0], saturated[0])  # kept
    assert not np.array_equal(after_stats[1], saturated[1])  # updated
    assert np.isfinite(var.numpy()).all() and not np.array_equal(var.numpy(), before)
    assert int(opt.skipped_nonfinite.numpy()) == 0
    assert all(np.isfinite(v.numpy()).all() for v in opt.variables
               if "root" in v.name or "stats" in v.name)


def test_gradient_whose_squared_norm_overflows_is_skipped():
    """Finite entries but ||G||^2 beyond float32: G G^T and the graft's g^2 would be inf,
    so it is handled as non-finite."""
    var = tf.Variable(tf.ones((6, 5)), name="w")
    opt = Shampoo(1e-2, start_preconditioning_step=1, precondition_frequency=1)
    opt.apply_gradients([(tf.fill((6, 5), 1e19), var)])  # 30 * 1e38 overflows
    np.testing.assert_array_equal(var.numpy(), np.ones((6, 5), np.float32))
    assert int(opt.skipped_nonfinite.numpy()) == 1
    assert all(np.isfinite(v.numpy()).all() for v in opt.variables)


def test_xla_path_masks_the_same_rows_and_variables():
    """With `jit_compile` (on by default only with a GPU; forced here on the CPU) each
    variable's update is one XLA function and bad rows are masked instead of dropped: the
    same steps and rows are skipped and the result matches the default path."""
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((12, 6)).astype(np.float32)
    t0 = rng.standard_normal((20, 4)).astype(np.float32)
    steps = []
    for t in range(4):
        g = rng.standard_normal((12, 6)).astype(np.float32)
        rows = np.array([1, 5, 7, 11])
        vals = rng.standard_normal((4, 4)).astype(np.float32)
        if t == 1:
            g[2, 3] = np.nan
        if t == 2:
            vals[1, 0] = np.inf  # row 5
        steps.append((g, rows, vals))
    results = {}
    for jit in (False, True):
        w = tf.Variable(w0, name="w")
        table = tf.Variable(t0, name="table/embeddings")
        opt = Shampoo(1e-2, block_size=4, precondition_frequency=1,
                      start_preconditioning_step=1, weight_decay=0.01)
        opt.jit_compile = jit  # the constructor turns it off without a GPU
        snaps = []
        for g, rows, vals in steps:
            opt.apply_gradients([
                (tf.constant(g), w),
                (tf.IndexedSlices(tf.constant(vals), tf.constant(rows), tf.constant([20, 4])),
                 table)])
            snaps.append((w.numpy().copy(), table.numpy().copy()))
        assert int(opt.skipped_nonfinite.numpy()) == 2
        np.testing.assert_array_equal(snaps[1][0], snaps[0][0])  # w skipped at t = 2
        np.testing.assert_array_equal(snaps[2][1][5], snaps[1][1][5])  # row 5 at t = 3
        assert not np.array_equal(snaps[2][1][[1, 7, 11]], snaps[1][1][[1, 7, 11]])
        results[jit] = snaps
    for (w_a, t_a), (w_b, t_b) in zip(results[False], results[True], strict=True):
        np.testing.assert_allclose(w_b, w_a, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t_b, t_a, rtol=1e-5, atol=1e-6)


def test_bookkeeping_variables_come_last_so_older_checkpoints_restore():
    """Checkpoints track the optimizer's `_variables` by position: the non-finite
    bookkeeping is created after every pre-existing slot, so a checkpoint written before
    it existed restores into the same positions (checked by hand against the previous
    version: all 14 saved values of a 2-layer model came back equal; the new variables
    start at zero)."""
    model = _model()
    opt = Shampoo(1e-2, **CFG)
    opt.build(model.trainable_variables)
    names = [v.name for v in opt.variables]
    n = len(model.trainable_variables)
    new = names[-(n + 2):]
    assert "skipped_nonfinite" in new[0] and "nonfinite_streaks" in new[1]
    assert all("/nonfinite/" in "/" + name for name in new[2:])
    assert "iteration" in names[0] and "root_failures" in names[1]
    assert not any("nonfinite" in name for name in names[:-(n + 2)])


def test_streaks_with_a_subset_of_variables_per_step():
    """Steps that update only some variables leave the others' streaks alone."""
    a, b = tf.Variable(tf.ones((4, 3)), name="a"), tf.Variable(tf.ones((5,)), name="b")
    opt = Shampoo(1e-2, max_consecutive_nonfinite=1)
    opt.build([a, b])
    nan_a, nan_b = tf.fill((4, 3), np.nan), tf.fill((5,), np.nan)
    opt.apply_gradients([(nan_b, b)])
    opt.apply_gradients([(tf.ones((4, 3)), a)])  # b not in this step: its streak stays 1
    assert [int(opt.nonfinite_streak(v).numpy()) for v in (a, b)] == [0, 1]
    opt.apply_gradients([(nan_a, a)])
    assert [int(opt.nonfinite_streak(v).numpy()) for v in (a, b)] == [1, 1]
    assert int(opt.skipped_nonfinite.numpy()) == 2
    opt.apply_gradients([(tf.ones((4, 3)), a), (tf.ones((5,)), b)])
    assert [int(opt.nonfinite_streak(v).numpy()) for v in (a, b)] == [0, 0]
    opt.apply_gradients([(nan_b, b)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="`b:0` was non-finite in 2"):
        opt.apply_gradients([(nan_b, b)])
