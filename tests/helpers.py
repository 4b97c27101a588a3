"""Numeric helpers shared by several test modules (not a test module: not collected)."""
import numpy as np


def rel_err(actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64 (Frobenius norm)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def np_inverse_root(a, p, matrix_eps):
    """float64 reference of Shampoo's damped inverse p-th root of a symmetric PSD matrix:
    Q diag((max(lam, 0) + eps * lam_max) ** (-1/p)) Q^T; the identity when lam_max <= 0
    (a zero statistic, as the optimizer keeps it)."""
    a = 0.5 * (a + a.T)
    lam, q = np.linalg.eigh(a)
    if lam.max() <= 0:
        return np.eye(len(a))
    damped = np.maximum(lam, 0.0) + matrix_eps * lam.max()
    return (q * damped ** (-1.0 / p)) @ q.T


def randomised_model(config, seed: int = 0):
    """A MatTARanker with random non-zero weights everywhere (biases included), so every
    nested slice matters in extraction / frontier tests."""
    from matta_tf.model import MatTARanker

    model = MatTARanker(config)
    rng = np.random.default_rng(seed)
    for w in model.network.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
    return model
