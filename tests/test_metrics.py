"""matta_tf.metrics: the one AUC (ties averaged) and log-loss, against brute force."""
import itertools
import math

import numpy as np
import pytest

from matta_tf.metrics import (
    average_ranks,
    binary_metrics,
    log_loss_from_logits,
    log_loss_from_probabilities,
    roc_auc,
)


def brute_force_auc(labels, scores) -> float:
    """P(s+ > s-) + P(s+ = s-) / 2 over every positive/negative pair."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pair_count_on_small_inputs_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(2, 12))
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            labels[0] = 1 - labels[0]
        scores = rng.integers(0, 4, n).astype(np.float64)  # few distinct values: many ties
        assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12), trial


def test_known_values_and_one_class():
    assert roc_auc([0, 1], [0.3, 0.3]) == 0.5  # one tied pair counts one half
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([1, 0], [0.0, 1.0]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.2, 0.4])) and math.isnan(roc_auc([], []))
    assert math.isnan(roc_auc([0, 1], [0.2, float("nan")]))  # a diverged model: NaN, not a number
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="labels contain NaN"):
        roc_auc([0, float("nan")], [0.5, 0.5])


def test_average_ranks_match_the_definition():
    x = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    # sorted: 1,1 (ranks 1,2 -> 1.5), 2 (rank 3), 3,3,3 (ranks 4,5,6 -> 5)
    assert average_ranks(x).tolist() == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]
    assert average_ranks(np.array([])).tolist() == []


def test_auc_is_float64_exact_on_large_inputs():
    # Float32 scores that differ in the last bit must not tie: the ranks are float64.
    rng = np.random.default_rng(1)
    n = 20000
    labels = rng.integers(0, 2, n)
    scores = (rng.standard_normal(n) + labels).astype(np.float32)
    order = np.argsort(scores, kind="mergesort")
    # reference: count concordant pairs by sorting (float64, ties averaged)
    s, y = scores[order].astype(np.float64), labels[order]
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    ranks = np.repeat(first + (counts + 1) / 2.0, counts)
    n_pos = y.sum()
    ref = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))
    assert roc_auc(labels, scores) == pytest.approx(ref, abs=1e-12)
    assert 0.7 < ref < 0.8  # a separation of one standard deviation: AUC = Phi(1/sqrt 2) ~ 0.76


def test_log_losses():
    z = np.array([-2.0, 0.0, 3.0, 1000.0, -1000.0])
    y = np.array([0, 1, 1, 0, 0])
    direct = np.mean([-math.log(1 - 1 / (1 + math.exp(2.0))), math.log(2.0), -math.log(1 / (1 + math.exp(-3.0))),
                      1000.0, 0.0])
    assert log_loss_from_logits(y, z) == pytest.approx(direct, rel=1e-12)  # stable at |z| = 1000
    p = 1 / (1 + np.exp(-z[:3]))
    assert log_loss_from_probabilities(y[:3], p) == pytest.approx(log_loss_from_logits(y[:3], z[:3]), rel=1e-9)
    assert log_loss_from_probabilities([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped
    assert math.isnan(log_loss_from_logits([], []))


def test_binary_metrics():
    m = binary_metrics([0.0, 0.0, 2.0, -2.0], [0, 1, 1, 0])
    assert m["auc"] == 0.875 and m["rows"] == 4
    assert m["calibration"] == pytest.approx(0.5 / 0.5)  # mean sigmoid is 0.5 by symmetry
    assert math.isnan(binary_metrics([1.0], [0])["calibration"])
