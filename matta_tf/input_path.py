"""Vectorised serving input path: raw features -> the model's input x0 [B, n + d*m].

The per-feature path of an export (`tf.io.parse_example` with one VarLen spec per feature,
then a TFT layer and the model's `FeaturePreprocessor`, then one embedding gather per
feature) runs one small op chain per feature: at batch 64 nearly all of a student's
serving time is these ops, not its arithmetic. This module computes the same model inputs
with a handful of ops over whole feature *kinds*:

* parse: one `ParseExampleV2` with a `RaggedFeature` per feature (a feature left out or
  given as an empty list is missing, as with VarLen; more than one value is
  INVALID_ARGUMENT, as the per-feature path's SparseToDense is); the ragged outputs of
  one kind are stacked and densified together (missing -> that feature's parse default);
* numerics: one [B, n] matrix, each stage applied column-wise in one op each
  (TFT `scale_to_z_score` after `sign(x) log1p(|x|)` if the export has a TFT layer, then
  the model's fill / log1p / (x - mean) / std);
* categorical strings: the present values of all string columns at once: one lookup in
  a `StaticHashTable` of the distinct vocabulary values (value -> u), one
  `to_hash_bucket_fast` (mod the lcm of the columns' OOV bucket counts), then, per
  [column, example], one int64 lookup `u * columns + column -> row` of ONE concatenated
  embedding table; a value not in the column's vocabulary gets `base + hash mod buckets`
  (the OOV rule of TFT's `StaticVocabularyTable` and of Keras `StringLookup`/`Hashing`);
  integer-id columns (`num_ids`) go through the model's out-of-range rule column-wise;
* embeddings: one gather from the concatenated table -> [B, m, D], split along D and
  concatenated after the numerics: the model's input x0 = [numeric | e_0 | ... | e_{d-1}].

`InputPlan` describes, per column, the whole map from a raw value to a model input:

    numeric:      raw x (missing -> parse_default)
                  -> [TFT] g = sign(x) log1p(|x|) if tft_log1p; (g - tft_mean) / sqrt(tft_var)
                     (no division when sqrt(tft_var) == 0, as TFT)
                  -> [model] NaN -> fill_value; sign log1p if log1p; (v - mean) / std
    categorical:  string v -> pre-id = vocabulary id of v, else miss_base + hash(v, miss_buckets)
                  int id   -> pre-id = id
                  -> model id = post(pre-id): with num_ids, out-of-range ids go to
                     num_ids + |id| mod oov_buckets (or are clipped without OOV rows);
                     without num_ids, pre-id is the model id
                  -> embedding row = offset of the column + model id

Plans come from the model's `FeatureSpec` (`plan_from_feature_spec`: StringLookup /
Hashing / num_ids semantics of `matta_tf.layers.FeaturePreprocessor`) or from a TFT
output plus the model's FeatureSpec (`plan_from_tft`: constants read from the transform
graph, vocabularies from the TFT vocabulary files - the source of truth). Either way,
`matta_tf.export` checks the fused path against the per-feature one on probe inputs before
it uses it, so a transform this module does not model is never served silently wrong.

Example:

```python
plan = plan_from_feature_spec(config.features)
encoder = FusedEncoder(plan, standalone_model)
x0 = encoder.encode_examples(serialized)   # inside a tf.function
logits = standalone_model.network.logits_from_x0(x0, standalone_model.spec)
```
"""
from __future__ import annotations

import dataclasses
import math

import matta_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split
import numpy as np
import tensorflow as tf

from matta_tf.config import FeatureSpec

INT64_MAX = np.iinfo(np.int64).max
# Largest lcm of OOV bucket counts hashed in one pass (a module constant so tests can lower it).
HASH_LCM_LIMIT = 2 ** 62


class UnsupportedInputPath(ValueError):
    """The fused input path cannot reproduce this export's preprocessing."""


@dataclasses.dataclass(frozen=True)
class NumericColumn:
    name: str
    parse_default: float = float("nan")  # value of a missing feature
    tft_log1p: bool = False
    tft_mean: float | None = None  # None: no TFT stage
    tft_var: float | None = None
    fill_value: float = 0.0
    log1p: bool = False
    mean: float = 0.0
    std: float = 1.0


@dataclasses.dataclass(frozen=True)
class CategoricalColumn:
    name: str
    rows: int  # embedding rows of this feature (the model's input_dim)
    dtype: str = "string"  # "string" | "int64"
    parse_default: str | int = ""
    vocabulary: tuple[bytes, ...] = ()  # string columns: value -> hit_ids[i]
    hit_ids: tuple[int, ...] = ()
    miss_base: int = 0  # string columns: pre-id of an unknown value = base + hash(v, buckets)
    miss_buckets: int = 1
    num_ids: int | None = None  # model stage (FeaturePreprocessor num_ids rule); None: none
    oov_buckets: int = 0

    def post(self, ids: np.ndarray) -> np.ndarray:
        """The model stage on pre-ids (numpy; the graph version is `_post_rule`)."""
        ids = np.asarray(ids, np.int64)
        if self.num_ids is None:
            return ids
        inside = (ids >= 0) & (ids < self.num_ids)
        if self.oov_buckets:
            oov = self.num_ids + np.mod(np.abs(ids), self.oov_buckets)
        else:
            oov = np.clip(ids, 0, self.num_ids - 1)
        return np.where(inside, ids, oov)

    def miss_range(self) -> tuple[int, int]:
        return self.miss_base, self.miss_base + self.miss_buckets - 1


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """Columns in the model's order (numeric, then categorical, as the FeatureSpec)."""

    numeric: tuple[NumericColumn, ...]
    categorical: tuple[CategoricalColumn, ...]
    source: str = "feature_spec"  # "feature_spec" | "tft"

    @property
    def numeric_names(self) -> list[str]:
        return [c.name for c in self.numeric]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.categorical]

    def describe(self) -> dict:
        return {"source": self.source, "numeric": self.numeric_names,
                "categorical": self.categorical_names,
                "rows": [c.rows for c in self.categorical]}


# --------------------------------------------------------------------------- plans


def plan_from_feature_spec(features: FeatureSpec) -> InputPlan:
    """The plan of a model that takes raw features (its own lookups / normalisation)."""
    numeric = tuple(NumericColumn(f.name, float("nan"), fill_value=float(f.fill_value),
                                  log1p=bool(f.log1p), mean=float(f.mean), std=float(f.std))
                    for f in features.numeric)
    categorical = []
    for f in features.categorical:
        if f.num_ids is not None:
            categorical.append(CategoricalColumn(f.name, f.input_dim, "int64", -1,
                                                 num_ids=f.num_ids, oov_buckets=f.oov_buckets))
        elif f.hash_buckets is not None:  # Hashing(num_bins) of the string form
            categorical.append(CategoricalColumn(f.name, f.input_dim, miss_buckets=f.hash_buckets))
        else:  # StringLookup: OOV ids [0, k) first (hashed when k > 1), then the vocabulary
            vocab = tuple(v.encode("utf-8") for v in f.vocabulary_values())
            k = f.oov_buckets
            categorical.append(CategoricalColumn(
                f.name, f.input_dim, vocabulary=vocab, hit_ids=tuple(range(k, k + len(vocab))),
                miss_base=0, miss_buckets=k))
    return InputPlan(numeric, categorical, "feature_spec")


def _read_vocabulary_file(path: str) -> tuple[bytes, ...]:
    """Keys as `tf.lookup.TextFileInitializer(WHOLE_LINE, LINE_NUMBER)` reads them."""
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return tuple(line[:-1] if line.endswith(b"\r") else line for line in lines)


class _TFTGraph:
    """The TFT transform_fn graph, with the constants its ops read."""

    def __init__(self, tft_output):
        loaded = tf.saved_model.load(tft_output.transform_savedmodel_dir)
        fn = getattr(loaded, "transform_fn", None)
        if fn is None or not hasattr(fn, "graph"):
            raise UnsupportedInputPath("the TFT SavedModel has no v2 transform_fn graph")
        self.graph = fn.graph
        names = sorted(fn.structured_outputs)
        outputs = list(fn.outputs)
        if len(names) != len(outputs):
            raise UnsupportedInputPath("cannot match the TFT outputs to their names")
        self.outputs = dict(zip(names, outputs, strict=True))
        self.captures = {internal.ref(): external for external, internal in self.graph.captures}
        self._keep_alive = loaded

    def value(self, t):
        from tensorflow.python.framework import tensor_util

        while t.op.type == "Identity":
            t = t.op.inputs[0]
        if t.ref() in self.captures:
            external = self.captures[t.ref()]
            if external.dtype == tf.resource:
                raise UnsupportedInputPath(f"{t.name} is a resource, not a constant")
            return external.numpy()
        if t.op.type == "Const":
            return tensor_util.constant_value(t)
        raise UnsupportedInputPath(f"{t.name} ({t.op.type}) is not a constant")

    def output_op(self, name: str):
        if name not in self.outputs:
            raise UnsupportedInputPath(f"TFT has no output {name!r}")
        t = self.outputs[name]
        while t.op.type == "Identity":
            t = t.op.inputs[0]
        return t.op

    @staticmethod
    def upstream(op, op_type: str, limit: int = 64):
        """The first op of `op_type` above `op` (breadth first)."""
        seen, queue = set(), [op]
        while queue and len(seen) < limit:
            cur = queue.pop(0)
            if cur.name in seen:
                continue
            seen.add(cur.name)
            if cur.type == op_type and cur is not op:
                return cur
            queue.extend(i.op for i in cur.inputs)
        return None

    def sparse_default(self, op):
        dense = self.upstream(op, "SparseToDense")
        if dense is None:
            raise UnsupportedInputPath(f"no SparseToDense above {op.name}")
        return self.value(dense.inputs[3])

    def numeric(self, name: str) -> dict:
        """TFT `scale_to_z_score(sign(x) log1p(|x|))` or `scale_to_z_score(x)` constants."""
        select = self.output_op(name)
        if select.type != "SelectV2":
            raise UnsupportedInputPath(f"TFT output {name!r} is {select.type}, not scale_to_z_score")
        div, sub = select.inputs[1].op, select.inputs[2].op
        if div.type != "RealDiv" or sub.type != "Sub" or div.inputs[0].op is not sub:
            raise UnsupportedInputPath(f"TFT output {name!r} is not a z-score")
        sqrt = div.inputs[1].op
        if sqrt.type != "Sqrt":
            raise UnsupportedInputPath(f"TFT output {name!r}: no sqrt(var)")
        mean = np.float32(self.value(sub.inputs[1]))
        var = np.float32(self.value(sqrt.inputs[0]))
        pre = sub.inputs[0].op
        while pre.type in ("Identity", "Cast"):
            pre = pre.inputs[0].op
        log1p = (pre.type == "Mul" and {i.op.type for i in pre.inputs} == {"Sign", "Log1p"})
        default = np.float32(self.sparse_default(sub))
        return {"mean": float(mean), "var": float(var), "log1p": log1p, "default": float(default)}

    def vocabulary(self, name: str) -> dict:
        """TFT `apply_vocabulary` with OOV buckets: (buckets, parse default)."""
        select = self.output_op(name)
        if select.type != "SelectV2":
            raise UnsupportedInputPath(f"TFT output {name!r} is {select.type}, not a vocabulary lookup")
        find = self.upstream(select, "LookupTableFindV2")
        bucket = self.upstream(select, "StringToHashBucketFast")
        if find is None or bucket is None:
            raise UnsupportedInputPath(f"TFT output {name!r} is not a vocabulary with OOV buckets")
        return {"buckets": int(bucket.get_attr("num_buckets")),
                "default": self.value(self.upstream(find, "SparseToDense").inputs[3])
                if self.upstream(find, "SparseToDense") is not None else b""}


def plan_from_tft(tft_output, model_features: FeatureSpec, raw_parse_spec: dict) -> InputPlan:
    """The plan of an export whose `preprocess` is `tft_output`'s transform layer and whose
    model takes TFT's outputs (`model_features`: numeric + `num_ids` categorical columns,
    named like the TFT outputs and the raw features - `components.transform_module`).

    Numeric constants (mean, var) come from the transform graph; vocabularies from the
    TFT vocabulary files. Raises `UnsupportedInputPath` for anything else."""
    graph = _TFTGraph(tft_output)
    numeric = []
    for f in model_features.numeric:
        spec = raw_parse_spec.get(f.name)
        if spec is None or spec.dtype != tf.float32:
            raise UnsupportedInputPath(f"raw feature {f.name!r} is not a float feature")
        info = graph.numeric(f.name)
        numeric.append(NumericColumn(
            f.name, parse_default=info["default"], tft_log1p=info["log1p"],
            tft_mean=info["mean"], tft_var=info["var"], fill_value=float(f.fill_value),
            log1p=bool(f.log1p), mean=float(f.mean), std=float(f.std)))
    categorical = []
    for f in model_features.categorical:
        spec = raw_parse_spec.get(f.name)
        if spec is None or spec.dtype != tf.string:
            raise UnsupportedInputPath(f"raw feature {f.name!r} is not a string feature")
        if f.num_ids is None:
            raise UnsupportedInputPath(f"model feature {f.name!r} is not a num_ids feature")
        info = graph.vocabulary(f.name)
        default = np.asarray(info["default"]).reshape(-1)[0] if np.size(info["default"]) else b""
        if not isinstance(default, (bytes, np.bytes_)):
            raise UnsupportedInputPath(f"TFT fills a missing {f.name!r} with {default!r}, not a string")
        default = bytes(default).decode("utf-8", "surrogateescape")
        vocab = _read_vocabulary_file(tft_output.vocabulary_file_by_name(f.name))
        if len(set(vocab)) != len(vocab):
            raise UnsupportedInputPath(f"vocabulary of {f.name!r} has duplicate lines")
        categorical.append(CategoricalColumn(
            f.name, f.input_dim, "string", default, vocabulary=vocab,
            hit_ids=tuple(range(len(vocab))), miss_base=len(vocab), miss_buckets=info["buckets"],
            num_ids=f.num_ids, oov_buckets=f.oov_buckets))
    return InputPlan(tuple(numeric), tuple(categorical), "tft")


# --------------------------------------------------------------------------- graph


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


def _column_index(parsed: dict, names: list[str]):
    """Where each (example, column) value sits in the concatenated ragged values of `names`:
    index [B, k]; a missing value (feature left out, or an empty list) points after all
    values, at the column's default (`total + column`). An example giving a feature more
    than one value is INVALID_ARGUMENT."""
    k = len(names)
    splits = tf.stack([parsed[n].row_splits for n in names], axis=1)  # [B+1, k]
    starts, ends, counts = splits[:-1], splits[1:], splits[-1]
    offsets = tf.cumsum(counts, exclusive=True)[None, :]
    column = tf.range(k, dtype=tf.int64)[None, :]
    lengths = ends - starts
    # Assert with string data only: a single op (assert_less_equal adds an If around it).
    check = tf.debugging.Assert(
        tf.reduce_max(lengths) <= 1,
        ["a feature has more than one value in a tf.Example; every feature takes one"])
    with tf.control_dependencies([check]):
        return tf.where(lengths > 0, starts + offsets, tf.reduce_sum(counts) + column)


def _signed_log1p(x):
    """sign(x) log1p(|x|). |x| as max(x, -x) keeps grappler from fusing abs and log1p into
    one `_UnaryOpsComposition`, which runs element by element (measured 4x slower than the
    vectorised Log1p on [512, 13])."""
    return tf.sign(x) * tf.math.log1p(tf.maximum(x, -x))


def _gather_with_defaults(values, defaults, index):
    return tf.gather(tf.concat([values, defaults], 0), index)


def _bucket_groups(counts, limit: int | None = None) -> list[tuple[int, list[int]]]:
    """Distinct bucket counts grouped greedily (largest first) so that each group's lcm is
    at most `limit`: [(lcm, counts)]."""
    limit = HASH_LCM_LIMIT if limit is None else limit
    groups: list[list] = []
    for n in sorted(set(counts), reverse=True):
        for g in groups:
            lcm = g[0] * n // math.gcd(g[0], n)
            if lcm <= limit:
                g[0] = lcm
                g[1].append(n)
                break
        else:
            groups.append([n, [n]])
    return [(g[0], g[1]) for g in groups]


class FusedEncoder(tf.Module):
    """The fused input path of one standalone model (tables and embedding rows saved with it).

    Tracks the concatenated embedding table and the lookup tables; the model's other layers
    are called through the network, tracked by the export."""

    def __init__(self, plan: InputPlan, embeddings: list, name: str = "fused_input"):
        super().__init__(name=name)
        self.plan = plan
        num = plan.numeric
        cats = plan.categorical
        if len(embeddings) != len(cats):
            raise UnsupportedInputPath(f"{len(embeddings)} embedding tables for {len(cats)} columns")
        for col, table in zip(cats, embeddings, strict=True):
            if int(table.shape[0]) != col.rows:
                raise UnsupportedInputPath(f"column {col.name!r}: embedding has {table.shape[0]} rows, "
                                           f"the plan {col.rows}")
        if any(c.dtype not in ("string", "int64") for c in cats):
            raise UnsupportedInputPath("categorical columns must be string or int64")
        # ---- numerics (constants broadcast over [B, n])
        f32 = np.float32
        self._n = len(num)
        self._num_defaults = tf.constant([f32(c.parse_default) for c in num], tf.float32)
        self._tft_stage = any(c.tft_mean is not None for c in num)
        self._tft_log1p_all = all(c.tft_log1p for c in num)
        self._tft_log1p_any = any(c.tft_log1p for c in num)
        self._tft_log1p_mask = tf.constant([c.tft_log1p for c in num], tf.bool)
        self._tft_mean = tf.constant([f32(c.tft_mean or 0.0) for c in num], tf.float32)
        # TFT divides by sqrt(var) unless it is 0: dividing by 1 instead is exact.
        std = [np.sqrt(f32(c.tft_var)) if c.tft_mean is not None else f32(1.0) for c in num]
        self._tft_std = tf.constant([s if s != 0 else f32(1.0) for s in std], tf.float32)
        self._fill = tf.constant([f32(c.fill_value) for c in num], tf.float32)
        self._log1p_any = any(c.log1p for c in num)
        self._log1p_all = all(c.log1p for c in num)
        self._log1p_mask = tf.constant([c.log1p for c in num], tf.bool)
        self._normalise = any(c.mean != 0.0 or c.std != 1.0 for c in num)
        self._mean = tf.constant([f32(c.mean) for c in num], tf.float32)
        self._std = tf.constant([f32(c.std) for c in num], tf.float32)
        # ---- categorical: rows of one concatenated embedding table ([B, k] ids; constants [k]
        # broadcast over the examples)
        offsets = np.cumsum([0] + [c.rows for c in cats])[:-1].astype(np.int64)
        self._offsets = offsets
        for c in cats:
            if c.dtype == "string" and c.miss_buckets < 1:
                raise UnsupportedInputPath(f"column {c.name!r}: unknown values have no bucket")
        # Unknown values are hashed once per group of columns whose bucket counts have an
        # lcm L <= 2^62 (hash mod L, then mod the column's count: exact since it divides L);
        # string columns are ordered by group so a group is a contiguous block of them.
        groups = _bucket_groups(c.miss_buckets for c in cats if c.dtype == "string")
        group_of = {n: g for g, (_, counts) in enumerate(groups) for n in counts}
        self._string_cols = sorted((j for j, c in enumerate(cats) if c.dtype == "string"),
                                   key=lambda j: (group_of[cats[j].miss_buckets], j))
        self._int_cols = [j for j, c in enumerate(cats) if c.dtype == "int64"]
        order = self._string_cols + self._int_cols
        self._perm = None if order == list(range(len(cats))) else np.argsort(order).astype(np.int32)
        sc = [cats[j] for j in self._string_cols]
        ms = len(sc)
        self._ms = ms
        # value -> u (index among the distinct vocabulary values of all columns), then
        # u * ms + column -> row: a value known to another column only is a miss here.
        unique: dict[bytes, int] = {}
        keys2, rows2, first_row = [], [], {}
        for p, col in enumerate(sc):
            j = self._string_cols[p]
            rows = col.post(np.asarray(col.hit_ids, np.int64)) + offsets[j]
            if col.vocabulary and (rows.min() < offsets[j] or rows.max() >= offsets[j] + col.rows):
                raise UnsupportedInputPath(f"column {col.name!r}: vocabulary ids outside its rows")
            for v, r in zip(col.vocabulary, rows, strict=True):
                u = unique.setdefault(v, len(unique))
                first_row.setdefault(v, int(r))
                keys2.append(u * ms + p)
                rows2.append(int(r))
        self._has_table = bool(unique)
        # No value in two columns' vocabularies (the usual case): value -> its row directly,
        # a hit when the row lies in the column's block. Else value -> u, (u, column) -> row.
        self._direct_rows = len(keys2) == len(unique)
        if self._has_table:
            self.values = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(unique), tf.string),
                tf.constant(list(first_row.values()), tf.int64) if self._direct_rows
                else tf.range(len(unique), dtype=tf.int64)), -1)
            if not self._direct_rows:
                self.rows_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
                    tf.constant(keys2, tf.int64), tf.constant(rows2, tf.int64)), -1)
        self._block_lo = tf.constant([offsets[j] for j in self._string_cols], tf.int64)
        self._block_hi = tf.constant([offsets[j] + cats[j].rows for j in self._string_cols], tf.int64)
        modulus = [groups[group_of[c.miss_buckets]][0] for c in sc]
        self._hash_groups = []  # (modulus, first, end) over the string-column order
        for p, mod in enumerate(modulus):
            if self._hash_groups and self._hash_groups[-1][0] == mod:
                self._hash_groups[-1][2] = p + 1
            else:
                self._hash_groups.append([mod, p, p + 1])
        self._reduce_buckets = any(c.miss_buckets != m for c, m in zip(sc, modulus, strict=True))
        self._buckets = tf.constant([c.miss_buckets for c in sc], tf.int64)
        self._miss_base = tf.constant([c.miss_base for c in sc], tf.int64)
        self._string_column = tf.constant(list(range(ms)), tf.int64)
        defaults = [_as_bytes(c.parse_default) for c in sc]
        self._u_defaults = tf.constant(
            [(first_row if self._direct_rows else unique).get(d, -1) for d in defaults], tf.int64)
        self._h_defaults = tf.constant(
            [tf.strings.to_hash_bucket_fast(d, m).numpy() for d, m in zip(defaults, modulus, strict=True)],
            tf.int64, shape=[ms])
        # Whether a miss can leave [0, num_ids) (else the model stage is the identity).
        self._string_post = any(c.num_ids is not None and (c.miss_base < 0 or
                                c.miss_base + c.miss_buckets > c.num_ids) for c in sc)
        self._string_offsets = tf.constant([offsets[j] for j in self._string_cols], tf.int64)
        ic = [cats[j] for j in self._int_cols]
        self._int_defaults = tf.constant([int(c.parse_default) for c in ic], tf.int64)
        self._int_offsets = tf.constant([offsets[j] for j in self._int_cols], tf.int64)
        self._all_offsets = tf.constant(offsets, tf.int64)
        self._all_rows = tf.constant([c.rows for c in cats], tf.int64)

        def post_consts(columns):
            num_ids = [c.num_ids if c.num_ids is not None else INT64_MAX for c in columns]
            oov = [c.oov_buckets if c.num_ids is not None else 0 for c in columns]
            return (tf.constant(num_ids, tf.int64),
                    tf.constant([max(v, 1) for v in oov], tf.int64),
                    tf.constant([v > 0 for v in oov], tf.bool))

        self._string_post_consts = post_consts(sc)
        self._int_post_consts = post_consts(ic)
        self._all_post_consts = post_consts(cats)
        self._all_post_mask = tf.constant([c.num_ids is not None for c in cats], tf.bool)
        # ---- one embedding table
        dims = {int(t.shape[1]) for t in embeddings}
        if len(dims) > 1:
            raise UnsupportedInputPath(f"embedding tables of different widths {sorted(dims)}")
        if cats:
            self.embeddings = tf.Variable(tf.concat([tf.convert_to_tensor(t) for t in embeddings], 0),
                                          trainable=False, name="embeddings")

    # -- model stage of categorical ids, column-wise ([B, k] ids, consts [k])
    @staticmethod
    def _post_rule(ids, consts):
        num_ids, oov, has_oov = consts
        inside = (ids >= 0) & (ids < num_ids)
        oov_ids = tf.where(has_oov, num_ids + tf.math.floormod(tf.abs(ids), oov),
                           tf.clip_by_value(ids, 0, num_ids - 1))
        return tf.where(inside, ids, oov_ids)

    # -- parse
    def parse_spec(self) -> dict:
        spec = {c.name: tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int64)
                for c in self.plan.numeric}
        for c in self.plan.categorical:
            dtype = tf.string if c.dtype == "string" else tf.int64
            spec[c.name] = tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
        return spec

    def _numeric_from(self, parsed, examples):
        names = self.plan.numeric_names
        if not names:
            return tf.zeros([tf.shape(examples)[0], 0], tf.float32)
        index = _column_index(parsed, names)  # [B, n]
        values = tf.concat([parsed[n].values for n in names], 0)
        return _gather_with_defaults(values, self._num_defaults, index)

    def parse(self, examples):
        """serialized tf.Examples [B] -> (raw numeric [B, n], string columns or None, int
        columns [B, mi] or None). The string columns are (present values [N], index [B, ms]
        into them; past the end = missing): `rows` looks up only the values present."""
        parsed = tf.io.parse_example(examples, self.parse_spec())
        cats = self.plan.categorical
        numeric = self._numeric_from(parsed, examples)
        strings = None
        if self._string_cols:
            names = [cats[j].name for j in self._string_cols]
            index = _column_index(parsed, names)
            counts = (tf.stack([parsed[n].row_splits[-1] for n in names])
                      if len(self._hash_groups) > 1 else None)
            strings = (tf.concat([parsed[n].values for n in names], 0), index, counts)
        ints = None
        if self._int_cols:
            names = [cats[j].name for j in self._int_cols]
            index = _column_index(parsed, names)
            values = tf.concat([parsed[n].values for n in names], 0)
            ints = _gather_with_defaults(values, self._int_defaults, index)
        return numeric, strings, ints

    def _hash_values(self, values, counts=None):
        """string values -> (u: the value's row (`_direct_rows`) or distinct-value index, -1
        if in no vocabulary; h: hash mod its group's lcm).
        `values` are [B, ms] (string-column order) or, with `counts` (values per column),
        the columns' present values concatenated."""
        u = self.values.lookup(values) if self._has_table else -tf.ones_like(values, tf.int64)
        if len(self._hash_groups) == 1:
            return u, tf.strings.to_hash_bucket_fast(values, self._hash_groups[0][0])
        parts = []
        if counts is None:  # dense: a group is a block of columns
            for mod, first, end in self._hash_groups:
                parts.append(tf.strings.to_hash_bucket_fast(values[:, first:end], mod))
            return u, tf.concat(parts, 1)
        bounds = tf.concat([tf.zeros([1], counts.dtype), tf.cumsum(counts)], 0)
        for mod, first, end in self._hash_groups:  # present values: a group is a block of values
            block = values[bounds[first]:bounds[end]]
            parts.append(tf.strings.to_hash_bucket_fast(block, mod))
        return u, tf.concat(parts, 0)

    def stack_raw(self, raw: dict):
        """predict_raw tensors (name -> [B]) -> the same as `parse`."""
        cats = self.plan.categorical
        names = self.plan.numeric_names
        if names:
            numeric = tf.stack([tf.cast(raw[n], tf.float32) for n in names], axis=1)
        else:
            numeric = tf.zeros([tf.shape(raw[cats[0].name])[0], 0], tf.float32)
        strings = ((tf.stack([raw[cats[j].name] for j in self._string_cols], axis=1), None, None)
                   if self._string_cols else None)
        ints = (tf.stack([tf.cast(raw[cats[j].name], tf.int64) for j in self._int_cols], axis=1)
                if self._int_cols else None)
        return numeric, strings, ints

    # -- numerics
    def transform_numeric(self, x):
        """raw [B, n] -> the model's numeric input [B, n]."""
        if not self._n:
            return x
        if self._tft_stage:
            if self._tft_log1p_any:
                g = _signed_log1p(x)
                x = g if self._tft_log1p_all else tf.where(self._tft_log1p_mask, g, x)
            x = (x - self._tft_mean) / self._tft_std
        x = tf.where(tf.math.is_nan(x), self._fill, x)
        if self._log1p_any:
            g = _signed_log1p(x)
            x = g if self._log1p_all else tf.where(self._log1p_mask, g, x)
        if self._normalise:
            x = (x - self._mean) / self._std
        return x

    # -- categorical
    def rows(self, strings, ints):
        """string columns (values [B, ms], None) or (present values [N], index [B, ms]),
        ints [B, mi] -> rows of the concatenated table [B, m]."""
        parts = []
        if strings is not None:
            values, index, counts = strings
            u, h = self._hash_values(values, counts)
            if index is not None:  # missing values: the column default's u and hash
                u = _gather_with_defaults(u, self._u_defaults, index)
                h = _gather_with_defaults(h, self._h_defaults, index)
            if not self._has_table:
                hit = -tf.ones_like(u)
            elif self._direct_rows:  # u is the value's row: a hit if it is this column's
                hit = tf.where((u >= self._block_lo) & (u < self._block_hi), u, -1)
            else:
                hit = self.rows_table.lookup(u * self._ms + self._string_column)
            miss = self._miss_base + (tf.math.floormod(h, self._buckets) if self._reduce_buckets else h)
            if self._string_post:
                miss = self._post_rule(miss, self._string_post_consts)
            parts.append(tf.where(hit >= 0, hit, miss + self._string_offsets))
        if ints is not None:
            parts.append(self._post_rule(ints, self._int_post_consts) + self._int_offsets)
        rows = parts[0] if len(parts) == 1 else tf.concat(parts, 1)  # [B, m]
        if self._perm is not None:
            rows = tf.gather(rows, self._perm, axis=1)
        return rows

    def rows_from_ids(self, ids):
        """predict_ids: pre-ids [B, m] (model order) -> rows [B, m]; an id a column without
        an out-of-range rule cannot hold is INVALID_ARGUMENT."""
        ids = tf.cast(ids, tf.int64)
        mask = self._all_post_mask
        bad = tf.logical_and(tf.logical_not(mask), (ids < 0) | (ids >= self._all_rows))
        check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)),
                                    ["predict_ids: a categorical id is outside the rows of its feature"])
        with tf.control_dependencies([check]):
            ids = tf.where(mask, self._post_rule(ids, self._all_post_consts), ids)
        return ids + self._all_offsets

    def model_input(self, numeric, rows, dim: int | None = None):
        """numeric [B, n] (transformed), rows [B, m] -> the cross stack's input

            x0 = [numeric | e_0 | ... | e_{dim-1}]  [B, n + dim*m],  e_k[b, j] = E[rows[b, j], k]

        (`RankerNetwork.logits_at`'s dimension-major layout; `dim` defaults to the table
        width). One gather [B, m, D], an unstack along D and one concat: measured 2x cheaper
        at batch 512 than gathering [m, B, D] and re-stacking it as [B, D, m] (a strided Pack)
        before the concat, and cheaper at batch 64 too (bench/results/input_path.md)."""
        if not self.plan.categorical:
            return numeric
        width = int(self.embeddings.shape[1])
        dim = width if dim is None else int(dim)
        if not 0 < dim <= width:
            raise ValueError(f"embedding dim {dim} not in [1, {width}]")
        pieces = tf.unstack(tf.gather(self.embeddings, rows), num=width, axis=2)[:dim]
        return tf.concat([numeric, *pieces], axis=1)

    # -- whole input path: the model's x0 (`RankerNetwork.logits_from_x0`)
    def encode_examples(self, examples, dim: int | None = None):
        numeric, strings, ints = self.parse(examples)
        return self.model_input(self.transform_numeric(numeric), self.rows(strings, ints), dim)

    def encode_raw(self, raw: dict, dim: int | None = None):
        numeric, strings, ints = self.stack_raw(raw)
        return self.model_input(self.transform_numeric(numeric), self.rows(strings, ints), dim)

    def encode_ids(self, numeric, ids, dim: int | None = None):
        return self.model_input(self.transform_numeric(tf.cast(numeric, tf.float32)),
                                self.rows_from_ids(ids), dim)


def probe_columns(plan: InputPlan, rows: int | None = None, seed: int = 0) -> dict:
    """predict_raw-style columns that exercise every vocabulary value of every column,
    unknown and empty values, and numeric special points (0, +-tiny, +-large, NaN)."""
    rng = np.random.default_rng(seed)
    longest = max([len(c.vocabulary) for c in plan.categorical] + [0])
    n = max(64, longest + 32) if rows is None else rows
    specials = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-8, -1e-8, 3.0, -3.0, 1e3, -1e3,
                         1e7, -1e7, float("nan"), 42.0], np.float32)
    out = {}
    for c in plan.numeric:
        values = rng.normal(0, 10, n).astype(np.float32)
        values[: len(specials)] = specials
        values[len(specials):] *= np.where(rng.random(n - len(specials)) < 0.3, 1000, 1).astype(np.float32)
        out[c.name] = rng.permutation(values)
    for c in plan.categorical:
        if c.dtype == "int64":
            hi = c.rows + 5
            out[c.name] = rng.integers(-3, hi, n).astype(np.int64)
            continue
        vocab = list(c.vocabulary)
        extra = [b"", b"never-seen-value", b"\xff\xfe", _as_bytes(c.parse_default), b"0", b"-1"]
        values = []
        for i in range(n):
            if i < len(vocab):
                values.append(vocab[i])
            elif i % 3:
                values.append(extra[i % len(extra)])
            else:
                values.append(f"unseen-{rng.integers(1 << 30)}".encode())
        out[c.name] = np.array(rng.permutation(np.array(values, dtype=object)), dtype=object)
    return out


def finite_or_nan(x) -> bool:
    return all(math.isfinite(v) or math.isnan(v) for v in np.asarray(x, np.float64).ravel())
