"""Budget-aware students: the quality/cost frontier of one trained MatTA model.

A trained `MatTARanker` contains every `SubmodelSpec` nested in its TA; extraction is a
slice (`matta_tf.extract`). This module searches that space instead of exporting a fixed
rule of thumb:

1. `candidate_specs(config, ...)` enumerates nested specs: a grid that moves three groups
   of sizes independently between the Student's and the TA's (embedding width; cross depth
   and ranks; MLP depth and widths), optional random per-layer specs (Mix'n'Match, every
   layer's size drawn on its own), the named sizes (`student`, `mix_k`, `ta`) and the
   *heuristic line* `interpolate_spec(t)` - every size the same fraction t of the way from
   Student to TA, which is how `mixnmatch_specs` places its sizes (the paper's fixed rule).
2. `evaluate_candidates(model, dataset, candidates)` scores all of them on a validation
   split in one pass over the data (features embedded once per batch; each spec's logits
   through its own slice, the same function `extract` exports - tested to 1e-5).
3. `pareto_front(records, cost)` keeps the specs no other spec beats on both quality and
   cost; `select(records, budget)` returns the best spec within a `Budget`:

       select = argmax_{c : cost(c) <= limit} auc_val(c)     (ties: lower cost, then label)

   with cost one of `madds` (multiply-adds per example), `params`, or `p99_ms` (measured
   serving latency at a batch size; see `serving.latency`). The heuristic's pick for the
   same budget is the *largest* line spec within it (`heuristic_pick`): the rule of thumb
   that knows cost but not quality. `select_over_rule` (what `matta students select` and
   StudentExtractor use) keeps the rule's pick unless the search's beats it on the
   validation rows at 95% confidence (paired bootstrap of the AUC gain): many nested
   specs are nearly equal, and the best of them on validation is partly noise.

Selection must use a validation split carved from train; report the picks on eval.

Example:

```python
model, _ = trainer_module.load_trained(model_dir)
cands = candidate_specs(model.config, grid_points=3, random_specs=32, mixnmatch=1)
records = evaluate_candidates(model, validation_ds, cands)   # {label: record}
front = pareto_front(records.values(), "madds")
pick = select(records.values(), Budget("madds", 30_000))
heuristic = heuristic_pick(records.values(), Budget("madds", 30_000))
```
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping

import numpy as np

from matta_tf.config import RankerConfig, SubmodelSpec
from matta_tf.metrics import binary_metrics

BUDGET_KINDS = ("madds", "params", "p99_ms")
# Record keys of each budget kind's cost.
COST_KEYS = {"madds": "madds_per_example", "params": "params", "p99_ms": "p99_ms"}
HEURISTIC_TAG = "heuristic"


# --------------------------------------------------------------------------- specs


def spec_label(spec: SubmodelSpec) -> str:
    """A short, unique, version-label-safe name: e<dim>_x<layers>[r<ranks>]_m<widths>.

    e.g. SubmodelSpec(8, 2, (16, 16), (128, 64)) -> "e8_x2r16-16_m128-64"."""
    cross = f"x{spec.cross_layers}"
    if spec.cross_ranks:
        cross += "r" + "-".join(str(r) for r in spec.cross_ranks)
    mlp = "m" + ("-".join(str(w) for w in spec.mlp_widths) if spec.mlp_widths else "0")
    return f"e{spec.embedding_dim}_{cross}_{mlp}"


_LABEL = re.compile(r"^e(\d+)_x(\d+)(?:r([\d-]+))?_m([\d-]+)$")


def parse_spec_label(label: str) -> SubmodelSpec:
    """Inverse of `spec_label`."""
    m = _LABEL.match(label)
    if not m:
        raise ValueError(f"{label!r} is not a spec label like e8_x2r16-16_m128-64")
    ranks = tuple(int(r) for r in m.group(3).split("-")) if m.group(3) else ()
    widths = () if m.group(4) == "0" else tuple(int(w) for w in m.group(4).split("-"))
    return SubmodelSpec(embedding_dim=int(m.group(1)), cross_layers=int(m.group(2)),
                        cross_ranks=ranks, mlp_widths=widths)


def _lerp(a: int, b: int, t: float) -> int:
    return int(round(a + t * (b - a)))


def axis_spec(config: RankerConfig, t_embedding: float, t_cross: float, t_mlp: float) -> SubmodelSpec:
    """The spec whose embedding width, cross stack and MLP are each a separate fraction of
    the way from the Student's to the TA's (t = 0: the Student's, 1: the TA's). Layers the
    Student does not have start at size 1 (as in `RankerConfig.interpolate_spec`)."""
    s, ta = config.student, config.ta
    cross_layers = _lerp(s.cross_layers, ta.cross_layers, t_cross)
    ranks = ()
    if ta.low_rank and cross_layers:
        ranks = tuple(max(1, _lerp(s.cross_ranks[i] if i < s.cross_layers else 1, ta.cross_ranks[i], t_cross))
                      for i in range(cross_layers))
    depth = _lerp(len(s.mlp_widths), len(ta.mlp_widths), t_mlp)
    widths = tuple(max(1, _lerp(s.mlp_widths[i] if i < len(s.mlp_widths) else 1, ta.mlp_widths[i], t_mlp))
                   for i in range(depth))
    return SubmodelSpec(embedding_dim=max(1, _lerp(s.embedding_dim, ta.embedding_dim, t_embedding)),
                        cross_layers=cross_layers, cross_ranks=ranks, mlp_widths=widths)


@dataclasses.dataclass(frozen=True)
class Candidate:
    label: str
    spec: SubmodelSpec
    tags: tuple[str, ...] = ()  # "student", "mix_k", "ta", "heuristic", "grid", "random"


def candidate_specs(config: RankerConfig, grid_points: int = 3, random_specs: int = 0, seed: int = 0,
                    mixnmatch: int = 1, heuristic_points: int = 11) -> dict[str, Candidate]:
    """Nested specs to search, by label (see the module docstring). Every one nests in the
    TA (`config.check_spec`). `grid_points` >= 2 values per axis group (3 groups: up to
    grid_points**3 specs); `random_specs` per-layer random specs (`RankerConfig.random_spec`,
    seeded); `mixnmatch`: the named `mix_k` sizes to include; `heuristic_points` values of t
    on the heuristic line."""
    for name, value, low in (("grid_points", grid_points, 2), ("random_specs", random_specs, 0),
                             ("mixnmatch", mixnmatch, 0), ("heuristic_points", heuristic_points, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"candidate_specs: {name} must be an int >= {low}, got {value!r}")
    tagged: dict[SubmodelSpec, list[str]] = {}

    def add(spec: SubmodelSpec, tag: str) -> None:
        config.check_spec(spec, tag)
        tags = tagged.setdefault(spec, [])
        if tag not in tags:
            tags.append(tag)

    add(config.student, "student")
    for name, spec in config.mixnmatch_specs(mixnmatch).items():
        add(spec, name)
    add(config.ta, "ta")
    for t in np.linspace(0.0, 1.0, heuristic_points):
        add(config.interpolate_spec(float(t)), HEURISTIC_TAG)
    ts = [float(t) for t in np.linspace(0.0, 1.0, grid_points)]
    for te in ts:
        for tc in ts:
            for tm in ts:
                add(axis_spec(config, te, tc, tm), "grid")
    rng = np.random.default_rng(seed)
    for _ in range(random_specs):
        add(config.random_spec(rng), "random")
    return {spec_label(spec): Candidate(spec_label(spec), spec, tuple(tags)) for spec, tags in tagged.items()}


# --------------------------------------------------------------------------- quality


def candidate_logits(model, dataset, specs: Mapping[str, SubmodelSpec], chunk: int = 32):
    """({label: logits [N] float32}, labels [N]) of every spec over `dataset` ((features,
    label) batches), features encoded once per batch; specs traced `chunk` at a time."""
    import tensorflow as tf

    for label, spec in specs.items():
        model.config.check_spec(spec, label)
    names = list(specs)
    groups = [names[i:i + chunk] for i in range(0, len(names), chunk)]

    def group_fn(group):
        @tf.function
        def run(encoded):
            return [model.network.logits_at(encoded, specs[n]) for n in group]
        return run

    fns = [group_fn(g) for g in groups]
    encode = tf.function(model.network.encode)
    out = {n: [] for n in names}
    labels = []
    for features, y in dataset:
        encoded = encode(features)
        labels.append(np.reshape(np.asarray(y, np.float32), [-1]))
        for group, fn in zip(groups, fns, strict=True):
            for n, logits in zip(group, fn(encoded), strict=True):
                out[n].append(logits.numpy())
    if not labels:
        raise ValueError("candidate_logits: the dataset is empty")
    return {n: np.concatenate(v) for n, v in out.items()}, np.concatenate(labels)


def evaluate_candidates(model, dataset, candidates: Mapping[str, Candidate], chunk: int = 32,
                        return_logits: bool = False):
    """{label: record}: spec, tags, validation metrics (`auc`, `logloss`, `calibration`),
    `params` and `madds_per_example` (`matta_tf.extract.cost`); with `return_logits`,
    (records, {label: logits}, labels) for `select_over_rule`."""
    from matta_tf.extract import cost

    logits, labels = candidate_logits(model, dataset, {k: c.spec for k, c in candidates.items()}, chunk)
    records = {}
    for label, cand in candidates.items():
        records[label] = {"label": label, "spec": cand.spec.to_dict(), "tags": list(cand.tags),
                          **binary_metrics(logits[label], labels), **cost(model.config, cand.spec)}
    return (records, logits, labels) if return_logits else records


def paired_auc_gain(labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray, n_boot: int = 500,
                    confidence: float = 0.95, seed: int = 0) -> dict:
    """AUC(candidate) - AUC(baseline) on the same rows, with a one-sided lower bound from a
    paired bootstrap over rows: {"gain", "lower", "confidence", "n_boot"}; `lower` is the
    (1 - confidence) quantile of the resampled gains."""
    from matta_tf.metrics import roc_auc

    labels, candidate, baseline = (np.asarray(x) for x in (labels, candidate, baseline))
    if not 0.5 <= confidence < 1 or n_boot < 10:
        raise ValueError(f"paired_auc_gain: confidence in [0.5, 1) and n_boot >= 10, got {confidence}, {n_boot}")
    rng = np.random.default_rng(seed)
    gains = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, labels.size, labels.size)
        gains[i] = roc_auc(labels[idx], candidate[idx]) - roc_auc(labels[idx], baseline[idx])
    return {"gain": roc_auc(labels, candidate) - roc_auc(labels, baseline),
            "lower": float(np.nanquantile(gains, 1 - confidence)), "confidence": confidence, "n_boot": n_boot}


# --------------------------------------------------------------------------- frontier and budgets


def cost_of(record: Mapping, kind: str) -> float:
    if kind not in COST_KEYS:
        raise ValueError(f"unknown cost kind {kind!r}; use one of {list(BUDGET_KINDS)}")
    value = record.get(COST_KEYS[kind])
    if value is None:
        raise ValueError(f"record {record.get('label')!r} has no {COST_KEYS[kind]} (not measured)")
    return float(value)


def pareto_front(records: Iterable[Mapping], kind: str = "madds", quality: str = "auc") -> list[dict]:
    """The records no other record dominates (cost <= and quality >=, one strictly), by
    increasing cost. Records without the cost (e.g. latency not measured) are left out."""
    rows = [dict(r) for r in records if r.get(COST_KEYS.get(kind, kind)) is not None
            and math.isfinite(r[quality])]
    rows.sort(key=lambda r: (cost_of(r, kind), -r[quality], r["label"]))
    front, best = [], -math.inf
    for r in rows:
        if r[quality] > best:
            front.append(r)
            best = r[quality]
    return front


@dataclasses.dataclass(frozen=True)
class Budget:
    """A serving budget: `kind` (madds | params | p99_ms) <= `limit`; `batch` is the request
    batch size a latency budget is measured at. `label` names the pick (default e.g.
    `madds_30000`, `p99_2ms`)."""

    kind: str
    limit: float
    batch: int | None = None
    label: str | None = None

    def __post_init__(self):
        if self.kind not in BUDGET_KINDS:
            raise ValueError(f"budget kind must be one of {list(BUDGET_KINDS)}, got {self.kind!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, (int, float)) \
                or not math.isfinite(self.limit) or self.limit <= 0:
            raise ValueError(f"budget {self.kind}: limit must be a number > 0, got {self.limit!r}")
        if self.kind == "p99_ms":
            if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
                raise ValueError(f"a p99_ms budget needs batch: an int >= 1, got {self.batch!r}")
        elif self.batch is not None:
            raise ValueError(f"batch applies to p99_ms budgets only, not {self.kind}")
        if self.label is None:
            object.__setattr__(self, "label", default_budget_label(self.kind, self.limit))

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "budget") -> Budget:
        """From {max_madds: N} | {max_params: N} | {max_p99_ms: X, batch: B}, optional label."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a mapping like {{max_madds: 30000}}, got {data!r}")
        kinds = [k for k in data if k.startswith("max_")]
        unknown = set(data) - {"max_madds", "max_params", "max_p99_ms", "batch", "label"}
        if unknown or len(kinds) != 1:
            raise ValueError(f"{where}: give exactly one of max_madds, max_params, max_p99_ms "
                             f"(+ batch for max_p99_ms, optional label); got keys {sorted(data)}")
        try:
            return cls(kinds[0][4:], data[kinds[0]], data.get("batch"), data.get("label"))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def to_dict(self) -> dict:
        out = {f"max_{self.kind}": self.limit, "label": self.label}
        if self.batch is not None:
            out["batch"] = self.batch
        return out


def default_budget_label(kind: str, limit: float) -> str:
    """madds_30000, params_250000, p99_2ms, p99_1p5ms (a TF Serving-safe version label)."""
    text = f"{limit:g}".replace(".", "p")
    return f"p99_{text}ms" if kind == "p99_ms" else f"{kind}_{text}"


def within(records: Iterable[Mapping], budget: Budget) -> list[Mapping]:
    return [r for r in records if r.get(COST_KEYS[budget.kind]) is not None
            and cost_of(r, budget.kind) <= budget.limit]


def select(records: Iterable[Mapping], budget: Budget, quality: str = "auc") -> Mapping | None:
    """The record with the best `quality` within `budget` (ties: lower cost, then label);
    None if nothing fits."""
    fits = [r for r in within(records, budget) if math.isfinite(r[quality])]
    if not fits:
        return None
    return min(fits, key=lambda r: (-r[quality], cost_of(r, budget.kind), r["label"]))


def heuristic_pick(records: Iterable[Mapping], budget: Budget, tags=(HEURISTIC_TAG,)) -> Mapping | None:
    """A fixed rule's choice: the most expensive record with one of `tags` within `budget`
    (it knows cost, not quality); None if none fits. tags=("heuristic",): the line of
    `interpolate_spec`; tags=("student", "mix_1", "ta"): the exported arms."""
    tags = set(tags)
    fits = [r for r in within(records, budget) if tags & set(r.get("tags", ()))]
    if not fits:
        return None
    return max(fits, key=lambda r: (cost_of(r, budget.kind), r["label"]))


def select_over_rule(records: Iterable[Mapping], budget: Budget, logits: Mapping[str, np.ndarray],
                     labels: np.ndarray, confidence: float = 0.95, n_boot: int = 500, seed: int = 0,
                     tags=(HEURISTIC_TAG,)) -> tuple[Mapping | None, dict]:
    """`select`, guarded by the fixed rule: the search's pick replaces the rule's pick
    (`heuristic_pick` with `tags`) only if its validation AUC gain over it is positive at
    `confidence` (`paired_auc_gain` lower bound > 0, same rows). With many near-equal
    nested specs the best validation AUC is partly noise; this keeps the rule's student
    unless the validation data say the search's is better.

    Returns (record, evidence) with evidence {"chosen": "search" | "rule" | "search (no
    rule pick)", "search", "rule", "gain", "lower", "confidence"}."""
    records = list(records)
    best = select(records, budget)
    rule = heuristic_pick(records, budget, tags=tags)
    evidence = {"search": best["label"] if best else None, "rule": rule["label"] if rule else None,
                "confidence": confidence}
    if best is None or rule is None or best["label"] == rule["label"]:
        evidence["chosen"] = "search (no rule pick)" if rule is None and best is not None else "rule"
        return (best if rule is None else rule), evidence
    test = paired_auc_gain(labels, logits[best["label"]], logits[rule["label"]], n_boot=n_boot,
                           confidence=confidence, seed=seed)
    evidence.update(gain=test["gain"], lower=test["lower"])
    evidence["chosen"] = "search" if test["lower"] > 0 else "rule"
    return (best if test["lower"] > 0 else rule), evidence
