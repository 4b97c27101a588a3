"""Budget-aware students (matta_tf.frontier): the enumeration nests in the TA, candidate
logits equal the extracted standalone models, the front and the selection respect
every budget kind, the random training pool is seeded and distinct."""
import matta_tf  # noqa: F401

# isort: split
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from helpers import randomised_model

from matta_tf import frontier
from matta_tf.config import LossWeights, RankerConfig, SubmodelSpec
from matta_tf.datasets import (
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    table_to_dataset,
)
from matta_tf.extract import cost, extract
from matta_tf.metrics import binary_metrics
from matta_tf.model import MatTARanker

LOGS = SyntheticLogConfig(num_numeric=3, num_categorical=4, cardinalities=(10, 20, 40, 300), num_crosses=3,
                          vocabulary_max_size=100)
FEATURES = default_feature_spec(LOGS)
CONFIG = RankerConfig(features=FEATURES, student=SubmodelSpec(2, 2, (3, 2), (8, 4)),
                      ta=SubmodelSpec(5, 3, (6, 5, 4), (20, 9, 7)))
FULL_RANK = RankerConfig(features=FEATURES, student=SubmodelSpec(3, 1, (), (12,)),
                         ta=SubmodelSpec(6, 2, (), (24, 10)))


@pytest.mark.parametrize("config", [CONFIG, FULL_RANK], ids=["low_rank", "full_rank"])
def test_candidates_nest_in_the_ta_and_include_arms_and_heuristic_line(config):
    cands = frontier.candidate_specs(config, grid_points=3, random_specs=20, seed=3, mixnmatch=2)
    assert len(cands) > 15
    for label, cand in cands.items():
        config.check_spec(cand.spec)  # raises if not nested
        assert frontier.spec_label(cand.spec) == label
        assert frontier.parse_spec_label(label) == cand.spec
    by_tag = {}
    for cand in cands.values():
        for tag in cand.tags:
            by_tag.setdefault(tag, []).append(cand.spec)
    assert by_tag["student"] == [config.student] and by_tag["ta"] == [config.ta]
    assert set(config.mixnmatch_specs(2).values()) <= set(by_tag["heuristic"]) | {
        s for k, v in by_tag.items() if k.startswith("mix_") for s in v}
    assert "grid" in by_tag and "random" in by_tag
    # The grid moves the groups independently: some spec has the TA's embedding width
    # with the Student's MLP (not on the Student-TA line).
    assert any(s.embedding_dim == config.ta.embedding_dim and s.mlp_widths == config.student.mlp_widths
               for s in by_tag["grid"])
    # Same seed, same candidates.
    again = frontier.candidate_specs(config, grid_points=3, random_specs=20, seed=3, mixnmatch=2)
    assert list(again) == list(cands)


def test_bad_search_settings_are_errors():
    with pytest.raises(ValueError, match="grid_points"):
        frontier.candidate_specs(CONFIG, grid_points=1)
    with pytest.raises(ValueError, match="random_specs"):
        frontier.candidate_specs(CONFIG, random_specs=-1)
    with pytest.raises(ValueError, match="not a spec label"):
        frontier.parse_spec_label("student")


def test_candidate_logits_equal_extracted_models():
    model = randomised_model(CONFIG)
    table = generate_click_logs(300, seed=4, config=LOGS)
    batches = list(table_to_dataset(table, FEATURES, 128))
    cands = frontier.candidate_specs(CONFIG, grid_points=2, random_specs=6, seed=1)
    logits, labels = frontier.candidate_logits(model, batches, {k: c.spec for k, c in cands.items()}, chunk=5)
    assert labels.shape == (300,)
    rng = np.random.default_rng(0)
    for label in rng.choice(sorted(cands), size=6, replace=False):
        small = extract(model, cands[label].spec)
        want = np.concatenate([small(f).numpy() for f, _ in batches])
        np.testing.assert_allclose(logits[label], want, atol=1e-5, rtol=1e-5)
    records = frontier.evaluate_candidates(model, batches, cands)
    for label, rec in records.items():
        assert rec["params"] == cost(CONFIG, cands[label].spec)["params"]
        ref = binary_metrics(logits[label], labels)
        assert rec["auc"] == pytest.approx(ref["auc"], abs=1e-12)


def _records():
    # label, auc, madds, params, p99
    rows = [("a", 0.70, 100, 1000, 0.5, ["student"]), ("b", 0.72, 150, 900, 0.6, ["grid"]),
            ("c", 0.71, 160, 1500, 0.7, ["heuristic"]), ("d", 0.75, 300, 2000, 1.2, ["ta", "heuristic"]),
            ("e", 0.74, 200, 1800, None, ["random"]), ("f", 0.72, 150, 950, 0.9, ["random"])]
    return [{"label": lab, "auc": a, "madds_per_example": m, "params": p, "p99_ms": t, "tags": g}
            for lab, a, m, p, t, g in rows]


def test_pareto_front_by_each_cost():
    recs = _records()
    assert [r["label"] for r in frontier.pareto_front(recs, "madds")] == ["a", "b", "e", "d"]
    assert [r["label"] for r in frontier.pareto_front(recs, "params")] == ["b", "e", "d"]
    # e has no latency: left out of the latency front
    assert [r["label"] for r in frontier.pareto_front(recs, "p99_ms")] == ["a", "b", "d"]
    for kind in ("madds", "params", "p99_ms"):
        front = frontier.pareto_front(recs, kind)
        for r in recs:  # nothing outside the front beats a member on both
            for f in front:
                if r.get(frontier.COST_KEYS[kind]) is None:
                    continue
                assert not (frontier.cost_of(r, kind) <= frontier.cost_of(f, kind) and r["auc"] > f["auc"])


@pytest.mark.parametrize("kind,limit,want,heuristic", [
    ("madds", 99, None, None), ("madds", 100, "a", None), ("madds", 155, "b", None),
    ("madds", 250, "e", "c"), ("madds", 1e9, "d", "d"),
    ("params", 1000, "b", None), ("params", 1900, "e", "c"),
    ("p99_ms", 0.65, "b", None), ("p99_ms", 1.0, "b", "c"), ("p99_ms", 2.0, "d", "d"),
])
def test_select_respects_each_budget_kind(kind, limit, want, heuristic):
    recs = _records()
    budget = frontier.Budget(kind, limit, batch=64 if kind == "p99_ms" else None)
    pick = frontier.select(recs, budget)
    assert (pick["label"] if pick else None) == want
    if pick:
        assert frontier.cost_of(pick, kind) <= limit
        assert all(r["auc"] <= pick["auc"] for r in frontier.within(recs, budget))
    h = frontier.heuristic_pick(recs, budget)
    assert (h["label"] if h else None) == heuristic


def test_budget_parsing_and_labels():
    assert frontier.Budget.from_dict({"max_madds": 30000}).label == "madds_30000"
    b = frontier.Budget.from_dict({"max_p99_ms": 1.5, "batch": 64})
    assert (b.kind, b.limit, b.batch, b.label) == ("p99_ms", 1.5, 64, "p99_1p5ms")
    assert frontier.Budget.from_dict({"max_params": 2e5, "label": "small"}).label == "small"
    for bad, msg in [({"max_p99_ms": 2}, "batch"), ({"max_madds": 10, "max_params": 5}, "exactly one"),
                     ({"max_madds": -1}, "> 0"), ({"max_madds": 10, "batch": 8}, "p99_ms budgets only"),
                     ({"max_flops": 10}, "exactly one"), ([1], "mapping")]:
        with pytest.raises(ValueError, match=msg):
            frontier.Budget.from_dict(bad)


def test_random_pool_is_seeded_distinct_and_trained():
    config = dataclasses.replace(CONFIG, mixnmatch_train_specs=1, mixnmatch_random_specs=8,
                                 loss_weights=LossWeights(mixnmatch=1.0))
    pool = config.random_pool()
    assert len(pool) == 8 and len(set(pool)) == 8
    assert not {config.student, config.ta, *config.mixnmatch_specs(1).values()} & set(pool)
    assert pool == dataclasses.replace(config).random_pool()
    assert pool != dataclasses.replace(config, seed=1).random_pool()
    assert RankerConfig.from_dict(config.to_dict()).random_pool() == pool
    model = MatTARanker(config)
    assert model.train_mixnmatch_specs == [*config.mixnmatch_specs(1).values(), *pool]
    # Training draws its sampled size from the pool (one stateless draw per step).
    table = generate_click_logs(512, seed=2, config=LOGS)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    history = model.fit(table_to_dataset(table, FEATURES, 128), epochs=1, verbose=0).history
    assert np.isfinite(history["mixnmatch_bce"][0])
    with pytest.raises(ValueError, match="loss_weights.mixnmatch"):
        dataclasses.replace(CONFIG, mixnmatch_random_specs=2)
    with pytest.raises(ValueError, match="sampled"):
        dataclasses.replace(CONFIG, mixnmatch_random_specs=2, mixnmatch_training="all",
                            loss_weights=LossWeights(mixnmatch=1.0))


def test_select_over_rule_keeps_the_rule_unless_the_gain_is_clear():
    rng = np.random.default_rng(0)
    n = 4000
    labels = (rng.random(n) < 0.3).astype(np.float32)
    signal = labels * 1.0 + rng.normal(0, 1, n)
    logits = {"a": signal + rng.normal(0, 0.05, n),      # ~ the rule's pick, a bit noisier
              "b": signal + rng.normal(0, 0.05, n),      # the rule's pick
              "c": labels + rng.normal(0, 0.6, n)}       # clearly better: less noise
    def rec(label, madds, tags):
        m = binary_metrics(logits[label], labels)
        return {"label": label, "auc": m["auc"], "madds_per_example": madds, "params": madds, "tags": tags}

    close = [rec("a", 10, ["grid"]), rec("b", 20, ["heuristic"])]
    if close[0]["auc"] <= close[1]["auc"]:  # make "a" the raw best by a hair
        logits["a"], logits["b"] = logits["b"], logits["a"]
        close = [rec("a", 10, ["grid"]), rec("b", 20, ["heuristic"])]
    budget = frontier.Budget("madds", 30)
    assert frontier.select(close, budget)["label"] == "a"
    pick, ev = frontier.select_over_rule(close, budget, logits, labels)
    assert pick["label"] == "b" and ev["chosen"] == "rule" and ev["lower"] <= 0 < ev["gain"]
    clear = close + [rec("c", 25, ["random"])]
    pick, ev = frontier.select_over_rule(clear, budget, logits, labels)
    assert pick["label"] == "c" and ev["chosen"] == "search" and ev["lower"] > 0
    # No heuristic spec fits: the search's pick; nothing fits: None.
    pick, ev = frontier.select_over_rule([rec("a", 10, ["grid"])], budget, logits, labels)
    assert pick["label"] == "a" and ev["chosen"] == "search (no rule pick)"
    assert frontier.select_over_rule(close, frontier.Budget("madds", 5), logits, labels)[0] is None
    g = frontier.paired_auc_gain(labels, logits["c"], logits["b"], n_boot=200)
    assert g["gain"] > 0.01 and g["lower"] > 0
