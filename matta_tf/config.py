"""Configuration of a MatTA ranker: features, Student/TA sizes, loss weights.

Plain dataclasses, loadable from YAML/JSON (`RankerConfig.from_yaml`, `from_json`,
`from_dict`) and validated on construction: a bad config raises `ValueError` saying
which field is wrong and why. No TensorFlow import here, so configs can be checked
cheaply (e.g. by the CLI or a TFX component before training starts).

Nesting convention (used by `matta_tf.layers` and `matta_tf.model`): the TA holds one
set of weights; a `SubmodelSpec` selects *leading slices* of them:

* embedding dim `d`: every categorical feature's table is used as `table[:, :d]`;
* the interaction input `x0 = [numeric (n) | emb dim 0 of all m features | dim 1 | ...]`
  has width `n + m*d`, so a smaller `d` is a *leading* slice of the TA's `x0`;
* cross layers: the first `cross_layers` layers, each at width `n + m*d` and (low-rank)
  rank `cross_ranks[l]`;
* MLP: the first `len(mlp_widths)` layers with `mlp_widths[l]` units each.

Example:

```python
config = RankerConfig.from_yaml("matta_tf/configs/default_ranker.yaml")
config.student_spec(), config.ta_spec(), config.mixnmatch_specs(2)
```
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from matta_tf.contract import NON_FEATURE_COLUMNS

# --------------------------------------------------------------------------- helpers


def _check_keys(cls, data: dict, where: str) -> None:
    """Unknown keys are a typo more often than not: refuse them with the allowed set."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}: {data!r}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class NumericFeature:
    """A float feature. Model input value v (NaN = missing) is transformed as

    v' = fill_value if v is missing else v;  v'' = sign(v') * log1p(|v'|) if log1p else v';
    model value = (v'' - mean) / std.

    `fill_value` is in the raw domain (before log1p/normalisation), like an imputation
    done on the raw log; `sign * log1p(|v|)` equals `log1p(v)` for v >= 0 and keeps the
    negative sentinels Criteo-style logs contain finite.
    """

    name: str
    mean: float = 0.0
    std: float = 1.0
    log1p: bool = False
    fill_value: float = 0.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"numeric feature name must be a non-empty string, got {self.name!r}")
        if not (isinstance(self.std, (int, float)) and self.std > 0 and math.isfinite(self.std)):
            raise ValueError(f"numeric feature {self.name!r}: std must be > 0, got {self.std!r}")
        for attr in ("mean", "fill_value"):
            value = getattr(self, attr)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"numeric feature {self.name!r}: {attr} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class CategoricalFeature:
    """A categorical feature; exactly one of:

    * `vocabulary`: list of values; ids are `[0, oov_buckets)` for unknown values then the
      vocabulary in order (Keras `StringLookup` convention); table size V + oov_buckets.
    * `vocabulary_file`: one value per line, same layout.
    * `hash_buckets`: `Hashing(hash_buckets)` of the value's string form.
    * `num_ids`: the input already is an integer id in [0, num_ids) (e.g. from TFT);
      ids outside go to `oov_buckets` extra rows (`num_ids + |id| mod oov_buckets`).

    Values are looked up by their string form, so "7" and 7 are the same category.
    """

    name: str
    vocabulary: tuple[str, ...] | None = None
    vocabulary_file: str | None = None
    hash_buckets: int | None = None
    num_ids: int | None = None
    oov_buckets: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"categorical feature name must be a non-empty string, got {self.name!r}")
        given = [k for k in ("vocabulary", "vocabulary_file", "hash_buckets", "num_ids")
                 if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"categorical feature {self.name!r}: give exactly one of vocabulary, "
                f"vocabulary_file, hash_buckets, num_ids (got {given or 'none'})")
        if self.vocabulary is not None:
            vocab = tuple(str(v) for v in self.vocabulary)
            if not vocab:
                raise ValueError(f"categorical feature {self.name!r}: vocabulary is empty")
            dupes = sorted({v for v in vocab if vocab.count(v) > 1}) if len(set(vocab)) != len(vocab) else []
            if dupes:
                raise ValueError(f"categorical feature {self.name!r}: duplicate vocabulary values {dupes[:5]}")
            if "" in vocab:
                raise ValueError(f"categorical feature {self.name!r}: '' is reserved for missing values")
            object.__setattr__(self, "vocabulary", vocab)
        if self.hash_buckets is not None:
            _positive_int(self.hash_buckets, f"categorical feature {self.name!r}: hash_buckets")
        if self.num_ids is not None:
            _positive_int(self.num_ids, f"categorical feature {self.name!r}: num_ids")
        if isinstance(self.oov_buckets, bool) or not isinstance(self.oov_buckets, int) or self.oov_buckets < 0:
            raise ValueError(f"categorical feature {self.name!r}: oov_buckets must be an int >= 0, got {self.oov_buckets!r}")
        if (self.vocabulary is not None or self.vocabulary_file is not None) and self.oov_buckets < 1:
            raise ValueError(f"categorical feature {self.name!r}: a vocabulary needs oov_buckets >= 1 "
                             "(unknown and missing values go there)")

    def vocabulary_values(self) -> tuple[str, ...]:
        if self.vocabulary is not None:
            return self.vocabulary
        if self.vocabulary_file is None:
            raise ValueError(f"categorical feature {self.name!r} has no vocabulary")
        if not os.path.exists(self.vocabulary_file):
            raise ValueError(f"categorical feature {self.name!r}: vocabulary_file {self.vocabulary_file!r} does not exist")
        with open(self.vocabulary_file, encoding="utf-8") as f:
            return tuple(line.rstrip("\n") for line in f if line.rstrip("\n"))

    @property
    def input_dim(self) -> int:
        """Rows of this feature's embedding table."""
        if self.hash_buckets is not None:
            return self.hash_buckets
        if self.num_ids is not None:
            return self.num_ids + self.oov_buckets
        return len(self.vocabulary_values()) + self.oov_buckets

    def to_dict(self) -> dict:
        d = {"name": self.name, "oov_buckets": self.oov_buckets}
        for k in ("vocabulary_file", "hash_buckets", "num_ids"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.vocabulary is not None:
            d["vocabulary"] = list(self.vocabulary)
        return d


@dataclass(frozen=True)
class FeatureSpec:
    """The model's input features, in a fixed order (which fixes the `x0` layout)."""

    numeric: tuple[NumericFeature, ...] = ()
    categorical: tuple[CategoricalFeature, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "categorical", tuple(self.categorical))
        names = [f.name for f in self.numeric] + [f.name for f in self.categorical]
        if not names:
            raise ValueError("feature spec has no features")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature spec: duplicate feature name(s) {dupes}")
        # A feature of a reserved name would be dropped from the serving parse spec.
        reserved = set(NON_FEATURE_COLUMNS) & set(names)
        if reserved:
            raise ValueError(f"feature spec: {sorted(reserved)} are reserved names, not model features "
                             f"(reserved: {list(NON_FEATURE_COLUMNS)})")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.numeric] + [f.name for f in self.categorical]

    def check_columns(self, columns, where: str = "the data") -> None:
        """Raise ValueError naming every configured feature that `columns` lacks."""
        unknown = [n for n in self.names if n not in set(columns)]
        if unknown:
            raise ValueError(f"feature(s) {unknown} are not columns of {where}; it has {sorted(columns)}")

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        _check_keys(cls, data, "features")
        numeric = []
        for i, item in enumerate(data.get("numeric") or ()):
            if isinstance(item, str):
                item = {"name": item}
            _check_keys(NumericFeature, item, f"features.numeric[{i}]")
            numeric.append(NumericFeature(**item))
        categorical = []
        for i, item in enumerate(data.get("categorical") or ()):
            _check_keys(CategoricalFeature, item, f"features.categorical[{i}]")
            categorical.append(CategoricalFeature(**item))
        return cls(numeric=tuple(numeric), categorical=tuple(categorical))

    def to_dict(self) -> dict:
        return {"numeric": [dataclasses.asdict(f) for f in self.numeric],
                "categorical": [f.to_dict() for f in self.categorical]}


# --------------------------------------------------------------------------- sizes


def _int_list(value, name: str) -> tuple:
    """`value` as a tuple; it must be a list or tuple (YAML `mlp_widths: 128` is a scalar,
    and a string would silently split into characters)."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of ints, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class SubmodelSpec:
    """One nested granularity: which leading slices of the TA's weights are active.

    `cross_ranks` empty = full-rank cross layers; otherwise one rank per cross layer
    (`len(cross_ranks) == cross_layers`), each layer computing `W = U[:, :r] V[:r, :]`.
    `mlp_widths` may be empty (the logit is then read off the cross output).
    """

    embedding_dim: int
    cross_layers: int = 0
    cross_ranks: tuple[int, ...] = ()
    mlp_widths: tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "cross_ranks", _int_list(self.cross_ranks, "cross_ranks"))
        object.__setattr__(self, "mlp_widths", _int_list(self.mlp_widths, "mlp_widths"))
        _positive_int(self.embedding_dim, "embedding_dim")
        if isinstance(self.cross_layers, bool) or not isinstance(self.cross_layers, int) or self.cross_layers < 0:
            raise ValueError(f"cross_layers must be an int >= 0, got {self.cross_layers!r}")
        if self.cross_ranks and len(self.cross_ranks) != self.cross_layers:
            raise ValueError(f"cross_ranks has {len(self.cross_ranks)} entries but cross_layers is "
                             f"{self.cross_layers} (give one rank per layer, or none for full rank)")
        for i, r in enumerate(self.cross_ranks):
            _positive_int(r, f"cross_ranks[{i}]")
        for i, w in enumerate(self.mlp_widths):
            _positive_int(w, f"mlp_widths[{i}]")

    @property
    def low_rank(self) -> bool:
        return bool(self.cross_ranks)

    @classmethod
    def from_dict(cls, data: dict, where: str = "spec") -> SubmodelSpec:
        _check_keys(cls, data, where)
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None

    def to_dict(self) -> dict:
        return {"embedding_dim": self.embedding_dim, "cross_layers": self.cross_layers,
                "cross_ranks": list(self.cross_ranks), "mlp_widths": list(self.mlp_widths)}

    def x0_width(self, features: FeatureSpec) -> int:
        return len(features.numeric) + len(features.categorical) * self.embedding_dim

    def head_input_width(self, features: FeatureSpec) -> int:
        """Width of the vector the logit head reads: the last MLP width, else x0's."""
        return self.mlp_widths[-1] if self.mlp_widths else self.x0_width(features)


@dataclass(frozen=True)
class TAExpansion:
    """TA sizes derived from the Student's: widths times a factor, plus extra layers."""

    embedding_dim: float = 2.0
    cross_rank: float = 2.0
    mlp_width: float = 2.0
    extra_cross_layers: int = 0
    extra_mlp_layers: int = 0

    def __post_init__(self):
        for k in ("embedding_dim", "cross_rank", "mlp_width"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or v < 1:
                raise ValueError(f"ta_expansion.{k} must be a factor >= 1, got {v!r}")
        for k in ("extra_cross_layers", "extra_mlp_layers"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"ta_expansion.{k} must be an int >= 0, got {v!r}")

    def apply(self, student: SubmodelSpec) -> SubmodelSpec:
        def grow(x, f):
            return max(x, int(round(x * f)))
        ranks = tuple(grow(r, self.cross_rank) for r in student.cross_ranks)
        if ranks and self.extra_cross_layers:
            ranks = ranks + (ranks[-1],) * self.extra_cross_layers
        widths = tuple(grow(w, self.mlp_width) for w in student.mlp_widths)
        if self.extra_mlp_layers:
            last = widths[-1] if widths else grow(student.embedding_dim, self.embedding_dim)
            widths = widths + (last,) * self.extra_mlp_layers
        return SubmodelSpec(
            embedding_dim=grow(student.embedding_dim, self.embedding_dim),
            cross_layers=student.cross_layers + self.extra_cross_layers,
            cross_ranks=ranks, mlp_widths=widths)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the MatTA loss terms (0 disables a term):

    L = student*BCE(s, y) + ta*BCE(t, y) + teacher*[KD(T->s) + KD(T->t)]
        + ta_to_student*ramp(step)*KD(sg(t)->s)
        + mixnmatch*[student*BCE(m, y) + teacher*KD(T->m) + ta_to_student*ramp(step)*KD(sg(t)->m)]

    (a Mix'n'Match size m is trained like the Student, scaled by `mixnmatch`; with the
    default weights of 1 this is mixnmatch*[BCE + KD(T->m) + ramp*KD(sg(t)->m)]), where m
    is one sampled Mix'n'Match submodel (`mixnmatch_training="sampled"`) or the
    bracket is summed over every trained `mix_k` (`mixnmatch_training="all"`).
    """

    student: float = 1.0
    ta: float = 1.0
    teacher: float = 1.0
    ta_to_student: float = 1.0
    mixnmatch: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"loss_weights.{f.name} must be a finite number >= 0, got {v!r}")


# --------------------------------------------------------------------------- ranker

MIXNMATCH_TRAINING = ("sampled", "all")
SIZE_HEADS = ("shared", "own", "affine")


@dataclass(frozen=True)
class RankerConfig:
    """Everything needed to build a `MatTARanker`.

    `ta` is explicit or derived from `student` by `ta_expansion` (exactly one may be
    given; neither means the default 2x expansion). `temperature` T softens teacher
    targets (KD uses sigmoid(z/T), scaled by T^2); `warmup_steps` is the length of the
    linear 0 -> loss_weights.ta_to_student ramp.

    Mix'n'Match training: `mixnmatch_train_specs` = n > 0 trains the intermediate specs
    `mixnmatch_specs(n)` (`mix_1..mix_n`; export the same n so every exported size is
    trained). `mixnmatch_training` says how:

    * ``"sampled"`` (default): one of them, chosen at random, per step (slimmable /
      MatFormer style), with weight `loss_weights.mixnmatch`;
    * ``"all"``: every one of them every step, each with its own BCE + teacher-KD +
      ramped TA-KD terms, weighted like the Student's times `loss_weights.mixnmatch`
      (the encoding is shared, so the extra cost is one cross/MLP forward and backward
      per size).

    `mixnmatch_random_specs` = k > 0 (with ``"sampled"``) adds k random per-layer specs
    (`random_pool`) to the pool the sampled size is drawn from - the sizes a budget search
    (`matta_tf.frontier`) visits off the Student-TA line then get trained too.

    `size_heads` chooses the logit head of each *trained* size (Student, `mix_k`, TA):

    * ``"shared"`` (default): one head; a size reads the leading rows of its kernel;
    * ``"own"``: the Student and every trained `mix_k` get their own unshared head
      (kernel over the size's last hidden width + bias); the TA and any other spec use
      the shared head;
    * ``"affine"``: the shared head, then a per-size scale and bias
      (logit = a_size * head(h) + b_size, a = 1, b = 0 at init; other specs: a=1, b=0).

    Either way `matta_tf.extract.extract` gives the extracted model the size's own head
    (for ``"affine"`` folded into the kernel and bias), so extraction stays exact and
    the standalone model has the same architecture and parameter count.
    """

    features: FeatureSpec
    student: SubmodelSpec
    ta: SubmodelSpec | None = None
    ta_expansion: TAExpansion | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 1.0
    warmup_steps: int = 1000
    cross_diag_scale: float = 0.0
    mixnmatch_train_specs: int = 0
    mixnmatch_training: str = "sampled"
    mixnmatch_random_specs: int = 0
    size_heads: str = "shared"
    seed: int = 0

    def __post_init__(self):
        if self.ta is not None and self.ta_expansion is not None:
            raise ValueError("give either ta (explicit sizes) or ta_expansion (factors), not both")
        if self.ta is None:
            object.__setattr__(self, "ta", (self.ta_expansion or TAExpansion()).apply(self.student))
            object.__setattr__(self, "ta_expansion", None)
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not isinstance(self.cross_diag_scale, (int, float)) or self.cross_diag_scale < 0:
            raise ValueError(f"cross_diag_scale must be >= 0, got {self.cross_diag_scale!r}")
        if not isinstance(self.mixnmatch_train_specs, int) or self.mixnmatch_train_specs < 0:
            raise ValueError(f"mixnmatch_train_specs must be an int >= 0, got {self.mixnmatch_train_specs!r}")
        if (isinstance(self.mixnmatch_random_specs, bool) or not isinstance(self.mixnmatch_random_specs, int)
                or self.mixnmatch_random_specs < 0):
            raise ValueError(f"mixnmatch_random_specs must be an int >= 0, got {self.mixnmatch_random_specs!r}")
        if self.mixnmatch_random_specs and not self.loss_weights.mixnmatch > 0:
            raise ValueError("mixnmatch_random_specs trains sampled sizes with weight "
                             "loss_weights.mixnmatch, which is 0: set it > 0")
        if self.mixnmatch_random_specs and self.mixnmatch_training != "sampled":
            raise ValueError("mixnmatch_random_specs adds specs to the sampled pool: it needs "
                             f"mixnmatch_training 'sampled', not {self.mixnmatch_training!r}")
        if self.mixnmatch_training not in MIXNMATCH_TRAINING:
            raise ValueError(f"mixnmatch_training must be one of {list(MIXNMATCH_TRAINING)}, "
                             f"got {self.mixnmatch_training!r}")
        if self.size_heads not in SIZE_HEADS:
            raise ValueError(f"size_heads must be one of {list(SIZE_HEADS)}, got {self.size_heads!r}")
        if self.student.low_rank != self.ta.low_rank and self.student.cross_layers and self.ta.cross_layers:
            raise ValueError("student and ta must both use full-rank (no cross_ranks) or both low-rank cross layers")
        if self.student.cross_layers and not self.ta.low_rank and self.student.low_rank:
            raise ValueError("student uses low-rank cross layers but the ta is full rank")
        self.check_spec(self.student, "student")

    # ---- spec checks
    def check_spec(self, spec: SubmodelSpec, name: str = "spec") -> None:
        """Raise ValueError unless `spec` is nested inside the TA (every size <= the TA's)."""
        ta = self.ta
        problems = []
        if spec.embedding_dim > ta.embedding_dim:
            problems.append(f"embedding_dim {spec.embedding_dim} > ta {ta.embedding_dim}")
        if spec.cross_layers > ta.cross_layers:
            problems.append(f"cross_layers {spec.cross_layers} > ta {ta.cross_layers}")
        elif spec.cross_layers and spec.low_rank != ta.low_rank:
            problems.append("cross rank mode (low-rank vs full) differs from the ta's")
        else:
            for i, r in enumerate(spec.cross_ranks):
                if r > ta.cross_ranks[i]:
                    problems.append(f"cross_ranks[{i}] {r} > ta {ta.cross_ranks[i]}")
        if len(spec.mlp_widths) > len(ta.mlp_widths):
            problems.append(f"{len(spec.mlp_widths)} mlp layers > ta {len(ta.mlp_widths)}")
        else:
            for i, w in enumerate(spec.mlp_widths):
                if w > ta.mlp_widths[i]:
                    problems.append(f"mlp_widths[{i}] {w} > ta {ta.mlp_widths[i]}")
        if problems:
            label = "student is larger than the ta" if name == "student" else f"{name} is not nested in the ta"
            raise ValueError(f"{label}: " + "; ".join(problems))

    def student_spec(self) -> SubmodelSpec:
        return self.student

    def ta_spec(self) -> SubmodelSpec:
        return self.ta

    def interpolate_spec(self, t: float) -> SubmodelSpec:
        """The spec a fraction t in [0, 1] of the way from the Student to the TA, per layer."""
        s, ta = self.student, self.ta

        def lerp(a, b):
            return int(round(a + t * (b - a)))

        cross_layers = lerp(s.cross_layers, ta.cross_layers)
        ranks = ()
        if ta.low_rank and cross_layers:
            ranks = tuple(lerp(s.cross_ranks[i] if i < s.cross_layers else 1, ta.cross_ranks[i])
                          for i in range(cross_layers))
        depth = lerp(len(s.mlp_widths), len(ta.mlp_widths))
        widths = tuple(max(1, lerp(s.mlp_widths[i] if i < len(s.mlp_widths) else 1, ta.mlp_widths[i]))
                       for i in range(depth))
        return SubmodelSpec(embedding_dim=max(1, lerp(s.embedding_dim, ta.embedding_dim)),
                            cross_layers=cross_layers, cross_ranks=ranks, mlp_widths=widths)

    def random_spec(self, rng) -> SubmodelSpec:
        """A random Mix'n'Match spec: every size chosen independently and uniformly between
        the Student's and the TA's (`rng` is a `numpy.random.Generator`)."""
        s, ta = self.student, self.ta

        def pick(lo, hi):
            return int(rng.integers(lo, hi + 1))

        cross_layers = pick(s.cross_layers, ta.cross_layers)
        ranks = ()
        if ta.low_rank and cross_layers:
            ranks = tuple(pick(s.cross_ranks[i] if i < s.cross_layers else 1, ta.cross_ranks[i])
                          for i in range(cross_layers))
        depth = pick(len(s.mlp_widths), len(ta.mlp_widths))
        widths = tuple(pick(s.mlp_widths[i] if i < len(s.mlp_widths) else 1, ta.mlp_widths[i])
                       for i in range(depth))
        return SubmodelSpec(embedding_dim=pick(s.embedding_dim, ta.embedding_dim),
                            cross_layers=cross_layers, cross_ranks=ranks, mlp_widths=widths)

    def mixnmatch_specs(self, n: int) -> dict[str, SubmodelSpec]:
        """n intermediate Mix'n'Match specs, `mix_1` (closest to the Student) .. `mix_n`,
        evenly spaced per layer between Student and TA (duplicates of either end dropped)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"mixnmatch_specs: n must be an int >= 0, got {n!r}")
        out: dict[str, SubmodelSpec] = {}
        seen = {self.student, self.ta}
        for k in range(1, n + 1):
            spec = self.interpolate_spec(k / (n + 1))
            if spec not in seen:
                seen.add(spec)
                out[f"mix_{len(out) + 1}"] = spec
        return out

    def random_pool(self) -> list[SubmodelSpec]:
        """`mixnmatch_random_specs` distinct random Mix'n'Match specs (`random_spec`, every
        layer's size drawn on its own, seeded by `seed`), none equal to the Student, the TA
        or a `mix_k`: with `mixnmatch_training="sampled"` they join the pool one size is
        drawn from per step, so a budget search (`matta_tf.frontier`) finds trained sizes
        off the Student-TA line too. Fewer are returned if the space runs out."""
        import numpy as np

        rng = np.random.default_rng([self.seed, 0x4D4E4D])  # independent of other seeded draws
        taken = {self.student, self.ta, *self.mixnmatch_specs(self.mixnmatch_train_specs).values()}
        pool: list[SubmodelSpec] = []
        for _ in range(50 * self.mixnmatch_random_specs):
            if len(pool) == self.mixnmatch_random_specs:
                break
            spec = self.random_spec(rng)
            if spec not in taken:
                taken.add(spec)
                pool.append(spec)
        return pool

    def trained_specs(self) -> dict[str, SubmodelSpec]:
        """The named sizes training optimises: `student`, the `mix_k` of
        `mixnmatch_specs(mixnmatch_train_specs)`, `ta` (the sizes `size_heads` applies to)."""
        return {"student": self.student, **self.mixnmatch_specs(self.mixnmatch_train_specs), "ta": self.ta}

    # ---- (de)serialisation
    @classmethod
    def from_dict(cls, data: dict) -> RankerConfig:
        _check_keys(cls, data, "ranker config")
        if "features" not in data or "student" not in data:
            raise ValueError("ranker config needs 'features' and 'student'")
        kwargs = dict(data)
        kwargs["features"] = FeatureSpec.from_dict(data["features"])
        kwargs["student"] = SubmodelSpec.from_dict(data["student"], "student")
        if data.get("ta") is not None:
            kwargs["ta"] = SubmodelSpec.from_dict(data["ta"], "ta")
        if data.get("ta_expansion") is not None:
            _check_keys(TAExpansion, data["ta_expansion"], "ta_expansion")
            kwargs["ta_expansion"] = TAExpansion(**data["ta_expansion"])
        if data.get("loss_weights") is not None:
            _check_keys(LossWeights, data["loss_weights"], "loss_weights")
            kwargs["loss_weights"] = LossWeights(**data["loss_weights"])
        else:
            kwargs.pop("loss_weights", None)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {
            "features": self.features.to_dict(),
            "student": self.student.to_dict(),
            "ta": self.ta.to_dict(),
            "loss_weights": dataclasses.asdict(self.loss_weights),
            "temperature": self.temperature,
            "warmup_steps": self.warmup_steps,
            "cross_diag_scale": self.cross_diag_scale,
            "mixnmatch_train_specs": self.mixnmatch_train_specs,
            "mixnmatch_training": self.mixnmatch_training,
            "mixnmatch_random_specs": self.mixnmatch_random_specs,
            "size_heads": self.size_heads,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, path_or_text: str) -> RankerConfig:
        text = _read_if_path(path_or_text)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"ranker config {path_or_text!r}: invalid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_yaml(cls, path_or_text: str) -> RankerConfig:
        import yaml

        text = _read_if_path(path_or_text)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"ranker config {path_or_text!r}: invalid YAML: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str) -> RankerConfig:
        return cls.from_json(path) if str(path).endswith(".json") else cls.from_yaml(path)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _read_if_path(path_or_text: str) -> str:
    if "\n" not in path_or_text and os.path.exists(path_or_text):
        with open(path_or_text, encoding="utf-8") as f:
            return f.read()
    if "\n" not in path_or_text and path_or_text.endswith((".yaml", ".yml", ".json")):
        raise ValueError(f"ranker config file {path_or_text!r} does not exist")
    return path_or_text


# --------------------------------------------------------------------------- fitted features

DEFAULT_MIN_COUNT = 2


def feature_spec_from_table(table, numeric, categorical, min_count: int = DEFAULT_MIN_COUNT,
                            max_vocabulary: int | None = None, oov_buckets: int = 1,
                            log1p: bool = True, log=None) -> FeatureSpec:
    """A `FeatureSpec` fitted on `table` (a pyarrow Table: pass the *train* split only).

    * categorical: an exact vocabulary of the values seen at least `min_count` times
      (default 2: a value seen once gets no row of its own, it shares the OOV row with
      unseen and missing values, which is then trained on rare values - what unseen values
      at serving time resemble), most frequent first, plus `oov_buckets` OOV rows. Only a
      feature whose vocabulary would exceed `max_vocabulary` (None = no cap) is hashed, into
      `max_vocabulary` buckets, so no table is larger than the cap; `log` says so.
    * numeric: `sign(v) log1p(|v|)` (if `log1p`) normalised by its train mean / std; a
      missing value is filled with the raw value that normalises to 0.

    Values are compared by their string form (as the model looks them up); null and ""
    are missing. `log` (e.g. `print`) receives one line per hashed feature and a summary.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be an int >= 1, got {min_count!r}")
    if max_vocabulary is not None:
        _positive_int(max_vocabulary, "max_vocabulary")
    nums = []
    for name in numeric:
        v = table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
        v = v[np.isfinite(v)]
        if log1p:
            v = np.sign(v) * np.log1p(np.abs(v))
        mean = float(v.mean()) if v.size else 0.0
        std = float(v.std()) if v.size else 1.0
        std = std if std > 0 and math.isfinite(std) else 1.0
        # sign(f) log1p(|f|) == mean for f = sign(mean) expm1(|mean|): missing -> 0 after normalising.
        fill = math.copysign(math.expm1(abs(mean)), mean) if log1p else mean
        nums.append(NumericFeature(name, mean=mean, std=std, log1p=log1p, fill_value=float(fill)))
    cats, sizes, hashed = [], [], []
    for name in categorical:
        column = table.column(name)
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            column = column.cast(pa.string())
        counts = pc.value_counts(column.combine_chunks() if hasattr(column, "combine_chunks") else column)
        values = counts.field("values").to_pylist()
        freq = counts.field("counts").to_pylist()
        kept = sorted(((-c, v) for v, c in zip(values, freq, strict=True)
                       if v is not None and v != "" and c >= min_count))
        vocab = tuple(v for _, v in kept)
        if max_vocabulary is not None and len(vocab) > max_vocabulary:
            cats.append(CategoricalFeature(name, hash_buckets=max_vocabulary))
            hashed.append(name)
            if log:
                log(f"features: {name} has {len(vocab):,} values seen >= {min_count}x, above "
                    f"max_vocabulary {max_vocabulary:,}: hashed into {max_vocabulary:,} buckets")
        elif vocab:
            cats.append(CategoricalFeature(name, vocabulary=vocab, oov_buckets=oov_buckets))
            sizes.append(len(vocab))
        else:  # nothing frequent enough: every value is OOV (one trainable row)
            cats.append(CategoricalFeature(name, hash_buckets=max(1, oov_buckets)))
            hashed.append(name)
            if log:
                log(f"features: {name} has no value seen >= {min_count}x: one shared bucket")
    if log and categorical:
        log(f"features: {len(sizes)} of {len(categorical)} categorical features with exact vocabularies "
            f"(min_count {min_count}, {oov_buckets} OOV row(s); sizes {min(sizes, default=0):,}.."
            f"{max(sizes, default=0):,}), {len(hashed)} hashed"
            + (f" ({', '.join(hashed)})" if hashed else ""))
    return FeatureSpec(numeric=tuple(nums), categorical=tuple(cats))
