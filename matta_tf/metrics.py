"""Offline binary-classification metrics in float64 numpy: the one AUC and log-loss.

TensorFlow-free; the bench, the teacher and the A/B report's offline numbers all use these.

AUC is the Mann-Whitney statistic with tied scores sharing their average rank (as
`scipy.stats.rankdata(method="average")` and `sklearn.metrics.roc_auc_score` do), so a tie
between a positive and a negative counts one half:

    AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N)
        = P(s+ > s-) + P(s+ = s-) / 2,

with P positives and N negatives. It is NaN when one class is absent (no pairs to order).

Log-loss from logits z and labels y in {0, 1}: mean(max(z, 0) - z y + log(1 + e^-|z|)),
the form of `tf.nn.sigmoid_cross_entropy_with_logits`, exact for any |z|. From
probabilities p (a served model's output): mean(-y log p - (1 - y) log(1 - p)) with p
clipped to [eps, 1 - eps]. Both are NaN on zero rows. A NaN score (a diverged model)
makes every metric NaN, as with scipy's rankdata; NaN labels are a ValueError.
"""
from __future__ import annotations

import numpy as np


def _pair(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, np.float64).reshape(-1)
    s = np.asarray(scores, np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and {name} ({s.size}) differ in length")
    if np.isnan(y).any():
        raise ValueError(f"labels contain NaN at row(s) {np.flatnonzero(np.isnan(y))[:5].tolist()}")
    return y, s


def average_ranks(x) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks (float64)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    # start of each run of equal values in sorted order, and the run lengths
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    counts = np.diff(np.r_[starts, x.size])
    mean_rank = starts + (counts + 1) / 2.0  # ranks starts+1 .. starts+count, averaged
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties averaged); labels > 0.5 are positives."""
    y, s = _pair(labels, scores, "scores")
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss_from_logits(labels, logits) -> float:
    y, z = _pair(labels, logits, "logits")
    if z.size == 0:
        return float("nan")
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def log_loss_from_probabilities(labels, probabilities, eps: float = 1e-7) -> float:
    y, p = _pair(labels, probabilities, "probabilities")
    if p.size == 0:
        return float("nan")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def binary_metrics(logits, labels) -> dict:
    """{"auc", "logloss", "calibration", "rows"} of logits against 0/1 labels.

    calibration = mean predicted probability / observed click rate (1 = calibrated; NaN
    without clicks)."""
    y, z = _pair(labels, logits, "logits")
    rate = y.mean() if y.size else 0.0
    calibration = float(np.mean(1.0 / (1.0 + np.exp(-z))) / rate) if rate > 0 else float("nan")
    return {"auc": roc_auc(y, z), "logloss": log_loss_from_logits(y, z),
            "calibration": calibration, "rows": int(y.size)}
