"""The pure Shampoo functions against float64 NumPy references."""
import matta_tf  # noqa: F401  (before TensorFlow)

# isort: split

import numpy as np
import pytest
import tensorflow as tf
from helpers import np_inverse_root, rel_err

from matta_tf.optimizers import shampoo_math as sm


def spd_with_condition(n, condition, rng):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = np.logspace(0.0, -np.log10(condition), n)
    return (q * lam) @ q.T


def balanced_block_starts(d, block_size):
    """Independent statement of the blocking rule: k = ceil(d / block_size) blocks of
    length ceil(d / k), the last one shorter."""
    k = int(np.ceil(d / block_size))
    length = int(np.ceil(d / k))
    return [(s, min(s + length, d)) for s in range(0, d, length)]


def ragged_blocks(m, n, block_size):
    """Index slices of each block (row-major block order), without padding."""
    return [(slice(r0, r1), slice(c0, c1)) for r0, r1 in balanced_block_starts(m, block_size)
            for c0, c1 in balanced_block_starts(n, block_size)]


# ---------------------------------------------------------------------------- layout
def test_make_layout_shapes():
    big = sm.make_layout([1_000_000, 16], 128, 4096)
    assert big.matrix_shape == (1_000_000, 16)
    assert big.preconditioned == (False, True) and big.block_shape == (1_000_000, 16)
    assert big.is_kronecker and big.exponent == 2  # one-sided: full-matrix Adagrad side

    blocked = sm.make_layout([300, 200], 128, 4096)
    assert blocked.num_blocks == (3, 2) and blocked.block_shape == (100, 100)
    assert blocked.padded_shape == (300, 200) and blocked.exponent == 4
    assert blocked.statistics_shape(0) == (6, 100, 100)
    ragged = sm.make_layout([429, 64], 128, 4096)
    assert ragged.num_blocks == (4, 1) and ragged.block_shape == (108, 64)
    assert ragged.padded_shape == (432, 64)

    conv = sm.make_layout([3, 3, 16, 64], 256, 4096)
    assert conv.matrix_shape == (144, 64) and conv.num_blocks == (1, 1)

    assert not sm.make_layout([64], 128, 4096).is_kronecker
    assert not sm.make_layout([], 128, 4096).is_kronecker
    assert sm.make_layout([64, 1], 128, 4096).matrix_shape == (64,)
    assert sm.make_layout([300, 200], 128, 4096, exponent_override=2).exponent == 2
    assert sm.merge_small_dims([3, 3, 16, 64], 256) == [144, 64]


@pytest.mark.parametrize("shape,block", [((37, 53), 16), ((64, 20), 16), ((20, 64), 16),
                                         ((10, 12), 128), ((33, 50), 16)])
def test_blocks_roundtrip_and_norms(shape, block):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    layout = sm.make_layout(shape, block, 4096)
    blocks = sm.to_blocks(tf.constant(x), layout).numpy()
    assert blocks.shape == (layout.total_blocks, *layout.block_shape)
    np.testing.assert_array_equal(sm.from_blocks(tf.constant(blocks), layout).numpy(), x)
    norms = sm.block_squared_norms(tf.constant(x), layout).numpy()
    for k, (rs, cs) in enumerate(ragged_blocks(*shape, block)):
        bm, bn = x[rs, cs].shape
        np.testing.assert_array_equal(blocks[k, :bm, :bn], x[rs, cs])
        assert np.all(blocks[k, bm:, :] == 0) and np.all(blocks[k, :, bn:] == 0)
        np.testing.assert_allclose(norms[k], np.sum(x[rs, cs].astype(np.float64) ** 2),
                                   rtol=1e-5)


# ---------------------------------------------------------------------------- roots
@pytest.mark.parametrize("method", ["eigh", "newton"])
@pytest.mark.parametrize("p", [2, 4])
def test_inverse_root_condition_1e6(method, p):
    rng = np.random.default_rng(1)
    mats = np.stack([spd_with_condition(48, 1e6, rng) * s for s in (1.0, 1e-3, 1e4)])
    roots, ok = sm.inverse_pth_root(tf.constant(mats), p, 0.0, method)
    assert ok.numpy().all()
    for a, x in zip(mats, roots.numpy(), strict=True):
        reference = np_inverse_root(a, p, 0.0)
        assert rel_err(x, reference) < 1e-3
        # residual of the defining equation X^p A = I
        residual = np.linalg.matrix_power(x, p) @ a - np.eye(len(a))
        assert np.linalg.norm(residual) / np.sqrt(len(a)) < 1e-3


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_inverse_root_float32_damped_matches_float64(method):
    rng = np.random.default_rng(2)
    g = rng.standard_normal((5, 32, 20))
    mats = (g @ np.swapaxes(g, 1, 2)).astype(np.float32)  # rank 20 of 32: singular
    roots, ok = sm.inverse_pth_root(tf.constant(mats), 4, 1e-4, method)
    assert roots.dtype == tf.float32 and ok.numpy().all()
    for a, x in zip(mats.astype(np.float64), roots.numpy(), strict=True):
        assert rel_err(x, np_inverse_root(a, 4, 1e-4)) < 1e-4


@pytest.mark.parametrize("method", ["eigh", "newton"])
def test_inverse_root_flags_nonfinite_and_zero_is_identity(method):
    rng = np.random.default_rng(3)
    good = spd_with_condition(8, 10.0, rng)
    bad = good.copy()
    bad[2, 3] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    mats = np.stack([good, bad, inf, np.zeros((8, 8))]).astype(np.float32)
    roots, ok = sm.inverse_pth_root(tf.constant(mats), 4, 1e-6, method)
    np.testing.assert_array_equal(ok.numpy(), [True, False, False, True])
    np.testing.assert_allclose(roots.numpy()[3], np.eye(8))
    # a singular matrix without damping has an infinite root: reported, not returned as ok
    singular = np.diag([1.0, 0.0]).astype(np.float32)[None]
    _, ok = sm.inverse_pth_root_eigh(tf.constant(singular), 4, 0.0)
    assert not ok.numpy()[0]


# ---------------------------------------------------------------------------- direction
@pytest.mark.parametrize("shape,block", [((24, 40), 128), ((46, 67), 16)])
def test_preconditioned_direction_matches_numpy(shape, block):
    """Statistics over several steps, roots, L^-1/4 G R^-1/4 and grafting, with and
    without (ragged) blocking, against a per-block float64 loop."""
    rng = np.random.default_rng(4)
    layout = sm.make_layout(shape, block, 4096)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    beta2, eps = 0.9, 1e-5
    left = tf.zeros(layout.statistics_shape(0))
    right = tf.zeros(layout.statistics_shape(1))
    for g in grads:
        blocks = sm.to_blocks(tf.constant(g), layout)
        left = sm.update_statistics(left, blocks, beta2, 0)
        right = sm.update_statistics(right, blocks, beta2, 1)
    left_root, ok_l = sm.inverse_pth_root_eigh(left, 4, eps)
    right_root, ok_r = sm.inverse_pth_root_eigh(right, 4, eps)
    assert ok_l.numpy().all() and ok_r.numpy().all()
    g = grads[-1]
    graft = np.sign(g) * np.abs(g) ** 0.5  # any grafting target works for the test
    direction = sm.precondition_blocks(sm.to_blocks(tf.constant(g), layout), left_root,
                                       right_root)
    grafted = sm.from_blocks(sm.graft_blocks(direction, tf.constant(graft), layout), layout)
    ungrafted = sm.from_blocks(direction, layout)

    ref = np.zeros(shape)
    ref_grafted = np.zeros(shape)
    for rs, cs in ragged_blocks(*shape, block):
        lb = sum(beta2 ** (len(grads) - 1 - t) * (1 - beta2)
                 * grads[t][rs, cs].astype(np.float64) @ grads[t][rs, cs].T.astype(np.float64)
                 for t in range(len(grads)))
        rb = sum(beta2 ** (len(grads) - 1 - t) * (1 - beta2)
                 * grads[t][rs, cs].T.astype(np.float64) @ grads[t][rs, cs].astype(np.float64)
                 for t in range(len(grads)))
        d = np_inverse_root(lb, 4, eps) @ g[rs, cs] @ np_inverse_root(rb, 4, eps)
        ref[rs, cs] = d
        ref_grafted[rs, cs] = d * np.linalg.norm(graft[rs, cs]) / np.linalg.norm(d)
    assert rel_err(ungrafted.numpy(), ref) < 1e-4
    assert rel_err(grafted.numpy(), ref_grafted) < 1e-4


def test_graft_zero_direction_stays_zero():
    layout = sm.make_layout((4, 6), 128, 4096)
    zero = tf.zeros((1, 4, 6))
    out = sm.graft_blocks(zero, tf.ones((4, 6)), layout)
    assert np.all(out.numpy() == 0)


# ---------------------------------------------------------------------------- grafting
@pytest.mark.parametrize("graft", ["adam", "adagrad", "rmsprop", "sgd", None])
def test_graft_step_matches_numpy(graft):
    rng = np.random.default_rng(5)
    state = np.abs(rng.standard_normal((6, 3))).astype(np.float32) if graft in (
        "adam", "adagrad", "rmsprop") else None
    g = rng.standard_normal((6, 3)).astype(np.float32)
    t, b2, eps = 7.0, 0.99, 1e-8
    out, new_state = sm.graft_step(tf.constant(g), None if state is None else tf.constant(state),
                                   graft, tf.constant(t), b2, eps)
    g64 = g.astype(np.float64)
    if graft in ("sgd", None):
        expected, expected_state = g64, None
    elif graft == "adagrad":
        expected_state = state + g64 ** 2
        expected = g64 / (np.sqrt(expected_state) + eps)
    else:
        expected_state = b2 * state + (1 - b2) * g64 ** 2
        denom = expected_state / (1 - b2 ** t) if graft == "adam" else expected_state
        expected = g64 / (np.sqrt(denom) + eps)
    assert rel_err(out.numpy(), expected) < 1e-6
    if expected_state is None:
        assert new_state is None
    else:
        assert rel_err(new_state.numpy(), expected_state) < 1e-6


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_matches_numpy(nesterov):
    rng = np.random.default_rng(6)
    u, m = rng.standard_normal((2, 5)).astype(np.float32)
    b1, t = 0.9, 3.0
    d, new_m = sm.apply_momentum(tf.constant(u), tf.constant(m), b1, nesterov, True,
                                 tf.constant(t))
    em = b1 * m + (1 - b1) * u
    mhat = em / (1 - b1 ** t)
    expected = b1 * mhat + (1 - b1) * u if nesterov else mhat
    assert rel_err(new_m.numpy(), em) < 1e-6 and rel_err(d.numpy(), expected) < 1e-6
    passthrough, state = sm.apply_momentum(tf.constant(u), None, 0.0, nesterov, True,
                                           tf.constant(t))
    assert state is None and np.array_equal(passthrough.numpy(), u)


def test_max_eigenvalue_close_gap():
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    lam = np.concatenate([[5.0, 4.99], np.linspace(1.0, 0.0, 38)])
    a = np.stack([(q * lam) @ q.T, np.zeros((40, 40))])
    est = sm.max_eigenvalue(tf.constant(a)).numpy()
    # 2^10 power steps with a 0.2% gap: the Rayleigh quotient is well within 1e-4
    assert abs(est[0] - 5.0) < 1e-4 * 5.0 and est[1] == 0.0


# ---------------------------------------------------------------------------- non-finite
F32_MAX = float(np.finfo(np.float32).max)


def test_finite_squared_norm_matches_float64_overflow_rule():
    """True iff every entry is finite and ||x||^2 (float64) fits in float32 -- checked away
    from the boundary (float32 summation order only matters within round-off of it)."""
    rng = np.random.default_rng(8)
    cases = {
        "normal": rng.standard_normal((7, 5)),
        "one_nan": np.where(np.arange(35).reshape(7, 5) == 17, np.nan, 1.0),
        "one_inf": np.where(np.arange(35).reshape(7, 5) == 3, -np.inf, 1.0),
        "huge_entry": np.where(np.arange(35).reshape(7, 5) == 0, 2e19, 1.0),  # 4e38
        "big_but_fits": np.full((7, 5), 3e18),  # 35 * 9e36 = 3.2e38 < 3.4e38
        "overflowing_sum": np.full((7, 5), 4e18),  # 35 * 1.6e37 = 5.6e38
        "zeros": np.zeros((7, 5)),
    }
    for name, x in cases.items():
        x32 = x.astype(np.float32)
        x64 = x32.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            expected = bool(np.isfinite(x64).all() and np.sum(x64 ** 2) <= F32_MAX)
        assert bool(sm.finite_squared_norm(tf.constant(x32)).numpy()) == expected, name
        assert bool(sm.finite_squared_norm(tf.constant(x64)).numpy()) == bool(
            np.isfinite(x64).all()), name  # float64 input: nothing here overflows float64
    # per row, on a half-precision tensor (checked in float32: 300^2 * 5 overflows fp16)
    rows = np.array([[1.0] * 5, [300.0] * 5, [np.nan] + [1.0] * 4, [np.inf] * 5])
    out = sm.finite_squared_norm(tf.constant(rows, tf.float16), axis=1).numpy()
    assert out.tolist() == [True, True, False, False]


def test_keep_finite_blocks():
    rng = np.random.default_rng(9)
    old = rng.standard_normal((4, 3, 3)).astype(np.float32)
    new = rng.standard_normal((4, 3, 3)).astype(np.float32)
    new[1, 2, 0] = np.inf
    new[3, 0, 0] = np.nan
    out = sm.keep_finite_blocks(tf.constant(new), tf.constant(old)).numpy()
    np.testing.assert_array_equal(out[[0, 2]], new[[0, 2]])
    np.testing.assert_array_equal(out[[1, 3]], old[[1, 3]])
