"""Pure functions behind `matta_tf.optimizers.Shampoo`.

Everything here maps tensors to tensors: no variables, no optimizer state, so each piece is
tested alone against float64 NumPy (tests/test_shampoo_math.py), in the style of optax.
The stateful tf_keras wrapper (`shampoo.py`) only wires these to slot variables.

Shampoo (Gupta et al. 2018, Anil et al. 2020) preconditions the gradient ``G`` of an
``m x n`` matrix with two Kronecker factors::

    L_t = beta2 * L_{t-1} + (1 - beta2) * G G^T      (beta2 = 1: L_t = L_{t-1} + G G^T)
    R_t = beta2 * R_{t-1} + (1 - beta2) * G^T G
    D_t = (L_t + lambda_L I)^{-1/p} G (R_t + lambda_R I)^{-1/p},   p = 2 * rank (4 for 2-D)

with damping ``lambda = matrix_eps * lambda_max`` relative to each factor's largest
eigenvalue, so the condition number of the damped factor is at most ``1 / matrix_eps`` in
any unit. Large dimensions are cut into blocks of at most ``block_size`` (each block is its own
small Shampoo problem); dimensions above ``max_preconditioner_dim`` are not preconditioned
at all (identity factor), and a tensor with no preconditioned dimension (biases, 1-D
vectors) uses the grafted diagonal method alone.

Grafting (Agarwal et al. 2020) takes the *direction* from Shampoo and the *step length*
per block from a diagonal method (Adam, Adagrad, RMSProp or SGD)::

    U_block = D_block * ||A_block||_F / ||D_block||_F,   A = grafted diagonal step

so a learning rate tuned for Adam transfers to Shampoo.

Blocked layout: a matrix view ``[m, n]`` is zero-padded to ``[Mb * bm, Nb * bn]`` and
rearranged to ``[Mb * Nb, bm, bn]`` (block ``(i, j)`` at index ``i * Nb + j``), so the
statistics, roots and preconditioning of all blocks are single batched ops. The padding is
exact: a padded row of ``G`` is zero, so it adds zero rows/columns to ``L``, its root is
block-diagonal and the real part of the direction equals the unpadded block's.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import tensorflow as tf

GRAFT_TYPES = ("adam", "adagrad", "rmsprop", "sgd", None)
INVERSE_ROOT_METHODS = ("eigh", "newton")


# ----------------------------------------------------------------------------------------
# Shapes and blocking
# ----------------------------------------------------------------------------------------
def merge_small_dims(shape: Sequence[int], max_dim: int) -> list[int]:
    """Merges adjacent dimensions while their product stays <= `max_dim` (as in optax).

    >>> merge_small_dims([3, 3, 16, 64], 256)
    [144, 64]
    """
    if shape and all(d == 1 for d in shape):
        return [1]
    merged: list[int] = []
    product = 1
    for d in shape:
        if product * d <= max_dim:
            product *= d
        else:
            if product > 1:
                merged.append(product)
            product = d
    if product > 1:
        merged.append(product)
    return merged


def matrix_view_shape(shape: Sequence[int], block_size: int) -> tuple[int, ...]:
    """The rank <= 2 view Shampoo preconditions for a tensor of `shape`.

    Size-1 dimensions are dropped. Rank <= 2 tensors are kept as they are (merging a
    small ``[8, 16]`` kernel into a vector would throw away its Kronecker structure).
    Higher-rank tensors have small adjacent dimensions merged and, if still above rank 2,
    all but the last dimension folded into rows (a conv kernel ``[k, k, c_in, c_out]``
    becomes ``[k * k * c_in, c_out]``).
    """
    squeezed = [int(d) for d in shape if int(d) != 1]
    if len(squeezed) <= 2:
        return tuple(squeezed)
    merged = merge_small_dims(squeezed, block_size)
    if len(merged) > 2:
        merged = [math.prod(merged[:-1]), merged[-1]]
    return tuple(merged)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """How one variable is viewed, blocked and preconditioned.

    Attributes:
      shape: the variable's shape.
      matrix_shape: its rank <= 2 view (see `matrix_view_shape`).
      preconditioned: per matrix dimension, whether it gets a Kronecker factor.
      block_shape: per matrix dimension, the block length (the full length when that
        dimension is not preconditioned or fits in one block).
      num_blocks: per matrix dimension, the number of blocks.
      exponent: p in ``X^{-1/p}``.
    """

    shape: tuple[int, ...]
    matrix_shape: tuple[int, ...]
    preconditioned: tuple[bool, ...]
    block_shape: tuple[int, ...]
    num_blocks: tuple[int, ...]
    exponent: int

    @property
    def is_kronecker(self) -> bool:
        """True when at least one dimension of a 2-D view is preconditioned."""
        return len(self.matrix_shape) == 2 and any(self.preconditioned)

    @property
    def total_blocks(self) -> int:
        return math.prod(self.num_blocks)

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(b * k for b, k in zip(self.block_shape, self.num_blocks, strict=True))

    def statistics_shape(self, dim: int) -> tuple[int, int, int]:
        """Shape of the stacked factor statistics for matrix dimension `dim` (0 = left)."""
        return (self.total_blocks, self.block_shape[dim], self.block_shape[dim])


def make_layout(
    shape: Sequence[int],
    block_size: int,
    max_preconditioner_dim: int,
    exponent_override: int | None = None,
) -> BlockLayout:
    """Builds the `BlockLayout` for a variable of `shape`.

    A matrix dimension ``d`` is preconditioned iff ``d <= max_preconditioner_dim``; if it
    is also ``> block_size`` it is split into ``k = ceil(d / block_size)`` blocks of equal
    length ``ceil(d / k) <= block_size`` (the last one zero-padded), which wastes less
    padding and root work than ``k`` blocks of ``block_size``. The default exponent is ``p = 2 k`` for
    ``k`` preconditioned dimensions: ``X^{-1/4}`` for a full 2-D Shampoo, ``X^{-1/2}``
    (full-matrix Adagrad on that side) when only one side is preconditioned.
    """
    shape = tuple(int(d) for d in shape)
    matrix_shape = matrix_view_shape(shape, block_size)
    if len(matrix_shape) < 2:
        preconditioned = tuple(False for _ in matrix_shape)
    else:
        preconditioned = tuple(d <= max_preconditioner_dim for d in matrix_shape)
    block_shape = []
    num_blocks = []
    for d, pre in zip(matrix_shape, preconditioned, strict=True):
        if pre and d > block_size:
            count = -(-d // block_size)
            block_shape.append(-(-d // count))  # balanced: 429 -> 4 x 108, not 4 x 128
            num_blocks.append(count)
        else:
            block_shape.append(d)
            num_blocks.append(1)
    exponent = exponent_override or max(1, 2 * sum(preconditioned))
    return BlockLayout(
        shape=shape,
        matrix_shape=matrix_shape,
        preconditioned=preconditioned,
        block_shape=tuple(block_shape),
        num_blocks=tuple(num_blocks),
        exponent=int(exponent),
    )


def diagonal_layout(shape: Sequence[int]) -> BlockLayout:
    """A layout with no preconditioned dimension (grafted diagonal method only)."""
    shape = tuple(int(d) for d in shape)
    return BlockLayout(shape=shape, matrix_shape=shape, preconditioned=(False,) * len(shape),
                       block_shape=shape, num_blocks=(1,) * len(shape), exponent=1)


def _pad_to_blocks(x: tf.Tensor, layout: BlockLayout) -> tf.Tensor:
    (m, n), (pm, pn) = layout.matrix_shape, layout.padded_shape
    if (pm, pn) != (m, n):
        x = tf.pad(x, [[0, pm - m], [0, pn - n]])
    return x


def to_blocks(x: tf.Tensor, layout: BlockLayout) -> tf.Tensor:
    """Matrix ``[m, n]`` -> stacked blocks ``[Mb * Nb, bm, bn]`` (zero-padded)."""
    (mb, nb), (bm, bn) = layout.num_blocks, layout.block_shape
    x = _pad_to_blocks(x, layout)
    if nb == 1:  # row blocks are contiguous: a reshape, no transpose
        return tf.reshape(x, [mb, bm, bn])
    x = tf.reshape(x, [mb, bm, nb, bn])
    return tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [mb * nb, bm, bn])


def from_blocks(blocks: tf.Tensor, layout: BlockLayout) -> tf.Tensor:
    """Inverse of `to_blocks`: ``[Mb * Nb, bm, bn]`` -> ``[m, n]`` (padding dropped)."""
    (m, n), (mb, nb), (bm, bn) = layout.matrix_shape, layout.num_blocks, layout.block_shape
    if nb == 1:
        x = tf.reshape(blocks, [mb * bm, bn])
    else:
        x = tf.reshape(blocks, [mb, nb, bm, bn])
        x = tf.reshape(tf.transpose(x, [0, 2, 1, 3]), [mb * bm, nb * bn])
    if layout.padded_shape != (m, n):
        x = x[:m, :n]
    return x


def block_squared_norms(x: tf.Tensor, layout: BlockLayout) -> tf.Tensor:
    """Squared Frobenius norm of each block of matrix `x`, ``[Mb * Nb]``, in block order."""
    (mb, nb), (bm, bn) = layout.num_blocks, layout.block_shape
    sq = _pad_to_blocks(tf.square(x), layout)
    return tf.reshape(tf.reduce_sum(tf.reshape(sq, [mb, bm, nb, bn]), axis=[1, 3]), [-1])


# ----------------------------------------------------------------------------------------
# Statistics and preconditioning
# ----------------------------------------------------------------------------------------
def update_statistics(
    statistics: tf.Tensor, blocks: tf.Tensor, beta2: float, dim: int
) -> tf.Tensor:
    """``beta2 * S + (1 - beta2) * G G^T`` (dim 0) or ``... G^T G`` (dim 1), per block.

    ``beta2 == 1`` accumulates the plain sum ``S + G G^T`` (Adagrad-style Shampoo).
    """
    if dim == 0:
        outer = tf.matmul(blocks, blocks, transpose_b=True)
    else:
        outer = tf.matmul(blocks, blocks, transpose_a=True)
    if beta2 == 1.0:
        return statistics + outer
    return beta2 * statistics + (1.0 - beta2) * outer


def precondition_blocks(
    blocks: tf.Tensor, left_root: tf.Tensor | None, right_root: tf.Tensor | None
) -> tf.Tensor:
    """``L^{-1/p} G R^{-1/p}`` per block; a missing factor is the identity."""
    out = blocks
    if left_root is not None:
        out = tf.matmul(left_root, out)
    if right_root is not None:
        out = tf.matmul(out, right_root)
    return out


def graft_blocks(direction_blocks: tf.Tensor, graft_step: tf.Tensor,
                 layout: BlockLayout) -> tf.Tensor:
    """Rescales each block of the Shampoo direction to the grafted step's block norm.

    A block whose direction is exactly zero stays zero (no division by zero).
    """
    graft_norm = tf.sqrt(block_squared_norms(graft_step, layout))
    direction_norm = tf.sqrt(tf.reduce_sum(tf.square(direction_blocks), axis=[1, 2]))
    scale = tf.math.divide_no_nan(graft_norm, direction_norm)
    return direction_blocks * scale[:, None, None]


def finite_squared_norm(x: tf.Tensor, axis=None) -> tf.Tensor:
    """True where ``sum(x^2)`` (over `axis`; all of `x` by default) is finite.

    This is the optimizer's non-finite gradient test: one reduction, as cheap as
    ``reduce_all(is_finite(x))``, and False both when an entry is NaN/inf and when the
    entries are finite but so large that ``||x||^2`` overflows -- the case in which
    ``G G^T``, ``G^T G`` and the graft's ``g^2`` would overflow to inf (every entry of
    ``G G^T`` is at most ``||G||_F^2`` in magnitude). Half-precision input is checked in
    float32.
    """
    if x.dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    return tf.math.is_finite(tf.reduce_sum(tf.square(x), axis=axis))


def keep_finite_blocks(new: tf.Tensor, old: tf.Tensor) -> tf.Tensor:
    """``new`` per matrix ``[..., n, n]``, except where it has a non-finite entry: ``old``.

    Guards the statistics against overflow of a long (``beta2 = 1``) accumulation: a
    saturated block keeps its previous value instead of becoming inf. The common case
    costs one sum (finite sum => every entry finite); only when the sum is not finite is
    the per-block check and select run.
    """
    def per_block():
        ok = tf.reduce_all(tf.math.is_finite(new), axis=[-2, -1])
        return tf.where(ok[..., None, None], new, old)

    return tf.cond(tf.math.is_finite(tf.reduce_sum(new)), lambda: tf.identity(new), per_block)


# ----------------------------------------------------------------------------------------
# Inverse p-th roots
# ----------------------------------------------------------------------------------------
def _symmetric_float64(matrices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Symmetrised float64 copy, with non-finite matrices replaced by I, and their mask."""
    a = tf.cast(matrices, tf.float64)
    a = 0.5 * (a + tf.linalg.matrix_transpose(a))
    finite = tf.reduce_all(tf.math.is_finite(a), axis=[-2, -1])
    eye = tf.eye(tf.shape(a)[-1], batch_shape=tf.shape(a)[:-2], dtype=tf.float64)
    # LAPACK on NaN input is undefined behaviour; such blocks are reported as failed.
    a = tf.where(finite[..., None, None], a, eye)
    return a, finite, eye


def _finalize_roots(roots64: tf.Tensor, finite_input: tf.Tensor, dtype) -> tuple:
    roots = tf.cast(roots64, dtype)
    ok = tf.logical_and(finite_input,
                        tf.reduce_all(tf.math.is_finite(roots), axis=[-2, -1]))
    return roots, ok


def inverse_pth_root_eigh(matrices: tf.Tensor, p: float, matrix_eps: float
                          ) -> tuple[tf.Tensor, tf.Tensor]:
    """``(A + matrix_eps * lambda_max(A) I)^{-1/p}`` for a batch of symmetric PSD `A`.

    Computed by a float64 eigendecomposition ``A = Q diag(lambda) Q^T``:
    ``Q diag((max(lambda, 0) + matrix_eps * lambda_max)^{-1/p}) Q^T``. Negative
    eigenvalues (float32 round-off of a PSD sum) are clipped to 0. An all-zero matrix
    (nothing seen yet) maps to the identity.

    Args:
      matrices: ``[..., n, n]`` symmetric PSD (float32 or float64).
      p: root order (> 0).
      matrix_eps: relative damping (>= 0).

    Returns:
      ``(roots, ok)``: roots in the input dtype and a bool ``[...]`` mask, False where the
      input or the result was not finite (the caller keeps its previous root there).
    """
    a, finite, eye = _symmetric_float64(matrices)
    eigenvalues, eigenvectors = tf.linalg.eigh(a)
    lambda_max = tf.reduce_max(eigenvalues, axis=-1, keepdims=True)
    damped = tf.maximum(eigenvalues, 0.0) + matrix_eps * lambda_max
    inv_root = tf.pow(damped, -1.0 / p)  # a zero eigenvalue with matrix_eps=0 gives inf
    roots = tf.matmul(eigenvectors * inv_root[..., None, :], eigenvectors, transpose_b=True)
    roots = tf.where((lambda_max[..., 0] <= 0.0)[..., None, None], eye, roots)
    return _finalize_roots(roots, finite, matrices.dtype)


def _matrix_power(x: tf.Tensor, p: int) -> tf.Tensor:
    """``x^p`` for a positive integer `p` by repeated squaring."""
    result = None
    base = x
    while p > 0:
        if p & 1:
            result = base if result is None else tf.matmul(result, base)
        p >>= 1
        if p:
            base = tf.matmul(base, base)
    return result


def max_eigenvalue(a: tf.Tensor, num_squarings: int = 10) -> tf.Tensor:
    """Largest eigenvalue ``[...]`` of symmetric PSD matrices ``[..., n, n]``.

    Power iteration by repeated squaring: ``B <- B^2 / ||B^2||_F`` for `num_squarings`
    steps is ``A^(2^k)`` normalised, i.e. ``2^k`` power-iteration steps for ``k`` matmuls
    (1024 steps by default), so even close top eigenvalues separate. Its largest column is
    then an eigenvector estimate and its Rayleigh quotient the eigenvalue.
    """
    b = a / tf.maximum(tf.norm(a, axis=[-2, -1], keepdims=True), 1e-300)
    for _ in range(num_squarings):
        b = tf.matmul(b, b)
        b = b / tf.maximum(tf.norm(b, axis=[-2, -1], keepdims=True), 1e-300)
    column = tf.argmax(tf.reduce_sum(tf.square(b), axis=-2), axis=-1)
    v = tf.gather(b, column, axis=-1, batch_dims=len(b.shape) - 2)[..., None]
    av = tf.matmul(a, v)
    return tf.math.divide_no_nan(tf.reduce_sum(v * av, axis=[-2, -1]),
                                 tf.reduce_sum(v * v, axis=[-2, -1]))


def inverse_pth_root_newton(
    matrices: tf.Tensor,
    p: int,
    matrix_eps: float,
    max_iters: int = 100,
    tolerance: float = 1e-6,
    max_error: float = 1e-1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(A + matrix_eps * lambda_max I)^{-1/p}`` by the coupled Newton iteration.

    The iteration of Guo & Higham (2006) as used by Shampoo (Anil et al. 2020), in
    float64, for integer `p`::

        z = (1 + p) / (2 ||A||_F),   M_0 = z A,   H_0 = z^{1/p} I
        T_k = (1 + 1/p) I - M_k / p
        M_{k+1} = T_k^p M_k,   H_{k+1} = H_k T_k     (invariant: M_k = H_k^p A)

    ``H_k -> A^{-1/p}`` as ``M_k -> I``. Each matrix stops once ``max|M - I| <
    tolerance`` or when its error grows by more than 20% (round-off floor); a result
    with final error above `max_error` or non-finite is reported as failed.
    ``lambda_max`` comes from `max_eigenvalue`.
    """
    a, finite, eye = _symmetric_float64(matrices)
    lambda_max = max_eigenvalue(a)
    a = a + (matrix_eps * lambda_max)[..., None, None] * eye
    zero = lambda_max <= 0.0
    a = tf.where(zero[..., None, None], eye, a)
    z = (1.0 + p) / (2.0 * tf.norm(a, axis=[-2, -1]))
    m = a * z[..., None, None]
    h = eye * tf.pow(z, 1.0 / p)[..., None, None]
    error = tf.reduce_max(tf.abs(m - eye), axis=[-2, -1])
    active = error > tolerance

    def cond(i, m, h, error, active):
        return tf.logical_and(i < max_iters, tf.reduce_any(active))

    def body(i, m, h, error, active):
        t = (1.0 + 1.0 / p) * eye - m / p
        new_m = tf.matmul(_matrix_power(t, p), m)
        new_h = tf.matmul(h, t)
        new_error = tf.reduce_max(tf.abs(new_m - eye), axis=[-2, -1])
        step = tf.logical_and(active, new_error < 1.2 * error)
        m = tf.where(step[..., None, None], new_m, m)
        h = tf.where(step[..., None, None], new_h, h)
        error = tf.where(step, new_error, error)
        return i + 1, m, h, error, tf.logical_and(step, new_error > tolerance)

    _, m, h, error, _ = tf.while_loop(cond, body, (tf.constant(0), m, h, error, active))
    h = tf.where(zero[..., None, None], eye, h)
    roots, ok = _finalize_roots(h, finite, matrices.dtype)
    return roots, tf.logical_and(ok, tf.logical_or(zero, error <= max_error))


def inverse_pth_root(matrices: tf.Tensor, p: int, matrix_eps: float, method: str = "eigh",
                     **newton_kwargs) -> tuple[tf.Tensor, tf.Tensor]:
    """Dispatches to `inverse_pth_root_eigh` or `inverse_pth_root_newton`."""
    if method == "eigh":
        return inverse_pth_root_eigh(matrices, p, matrix_eps)
    if method == "newton":
        return inverse_pth_root_newton(matrices, p, matrix_eps, **newton_kwargs)
    raise ValueError(f"inverse_root must be one of {INVERSE_ROOT_METHODS}, got {method!r}")


# ----------------------------------------------------------------------------------------
# Grafting and momentum
# ----------------------------------------------------------------------------------------
def graft_needs_state(graft: str | None) -> bool:
    return graft in ("adam", "adagrad", "rmsprop")


def graft_step(grad: tf.Tensor, state: tf.Tensor | None, graft: str | None, step: tf.Tensor,
               beta2: float, epsilon: float) -> tuple[tf.Tensor, tf.Tensor | None]:
    """One step of the grafted diagonal method (without learning rate or momentum).

    - ``"adagrad"``: ``a += g^2``;  ``g / (sqrt(a) + eps)``
    - ``"rmsprop"``: ``v = b2 v + (1 - b2) g^2``;  ``g / (sqrt(v) + eps)``
    - ``"adam"``: as rmsprop with bias correction ``v / (1 - b2^t)`` (Adam's
      second-moment scaling; Adam's first moment is the optimizer's `beta1` momentum)
    - ``"sgd"`` / ``None``: ``g``

    Works equally on a whole tensor or on gathered embedding rows. `step` is the 1-based
    step count (float). Returns ``(step_direction, new_state)``.
    """
    if graft in ("sgd", None):
        return grad, None
    g2 = tf.square(grad)
    if graft == "adagrad":
        new_state = state + g2
        return grad / (tf.sqrt(new_state) + epsilon), new_state
    if graft in ("rmsprop", "adam"):
        new_state = beta2 * state + (1.0 - beta2) * g2
        denom = new_state
        if graft == "adam":
            denom = new_state / (1.0 - tf.pow(tf.cast(beta2, grad.dtype), step))
        return grad / (tf.sqrt(denom) + epsilon), new_state
    raise ValueError(f"graft must be one of {GRAFT_TYPES}, got {graft!r}")


def apply_momentum(update: tf.Tensor, momentum: tf.Tensor | None, beta1: float,
                   nesterov: bool, bias_correction: bool, step: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor | None]:
    """EMA momentum on the (grafted) update: ``m = b1 m + (1 - b1) u``.

    Returns ``(direction, new_m)`` with direction ``m_hat`` or, with Nesterov,
    ``b1 m_hat + (1 - b1) u``, where ``m_hat = m / (1 - b1^t)`` if `bias_correction`.
    With ``beta1 == 0`` the update passes through and no state is kept.
    """
    if beta1 == 0.0:
        return update, None
    new_m = beta1 * momentum + (1.0 - beta1) * update
    m_hat = new_m
    if bias_correction:
        m_hat = new_m / (1.0 - tf.pow(tf.cast(beta1, update.dtype), step))
    if nesterov:
        return beta1 * m_hat + (1.0 - beta1) * update, new_m
    return m_hat, new_m
