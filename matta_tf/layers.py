"""Matryoshka-nested Keras layers: one set of weights at the TA's size, called at any
smaller width by using leading slices.

Each layer is built at its *maximum* size; a call with a smaller input width (or an
explicit smaller `units` / `rank` / `output_dim`) uses the leading block of every weight.
A standalone small layer whose weights are those leading blocks computes exactly the
same function, which is what `matta_tf.extract` relies on.
"""
from __future__ import annotations

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

# isort: split
import tensorflow as tf

from matta_tf.config import CategoricalFeature, FeatureSpec

_serializable = tf.keras.utils.register_keras_serializable(package="matta")


def initializer_variant(initializer, offset: int):
    """A copy of `initializer` with its seed shifted by `offset` (unseeded stays unseeded),
    so two weights of one layer never get identical draws."""
    config = initializer.get_config()
    if config.get("seed") is not None:
        config["seed"] = int(config["seed"]) + offset
    return initializer.__class__.from_config(config)


@_serializable
class NestedDense(tf.keras.layers.Layer):
    """Dense layer whose active input/output widths are leading slices.

    With kernel K in R^{I x O} and bias b in R^O, a call on x in R^{B x i} (i <= I) with
    `units=o` (o <= O, default O) computes

        y = act(x K[:i, :o] + b[:o]).

    Example:

    ```python
    layer = NestedDense(units=64, input_dim=128, activation="relu")
    y_ta = layer(x128)                 # [B, 64]
    y_student = layer(x128[:, :32], units=16)  # [B, 16], uses K[:32, :16]
    ```
    """

    def __init__(self, units: int, input_dim: int, activation=None, use_bias: bool = True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if units <= 0 or input_dim <= 0:
            raise ValueError(f"NestedDense: units and input_dim must be > 0, got {units}, {input_dim}")
        self.units = int(units)
        self.input_dim = int(input_dim)
        self.activation = tf.keras.activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)

    def build(self, input_shape=None):
        # Weights always at the maximum size; the input shape only bounds the active slice.
        self.kernel = self.add_weight("kernel", shape=(self.input_dim, self.units),
                                      initializer=self.kernel_initializer)
        self.bias = (self.add_weight("bias", shape=(self.units,), initializer=self.bias_initializer)
                     if self.use_bias else None)
        self.built = True

    def call(self, x, units: int | None = None):
        width = x.shape[-1]
        units = self.units if units is None else int(units)
        if width > self.input_dim or units > self.units:
            raise ValueError(f"{self.name}: requested input width {width} / units {units} exceed the "
                             f"layer's {self.input_dim} / {self.units}")
        y = tf.matmul(x, self.kernel[:width, :units])
        if self.use_bias:
            y = y + self.bias[:units]
        return self.activation(y)

    def get_config(self):
        config = {
            "units": self.units, "input_dim": self.input_dim,
            "activation": tf.keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        }
        return {**super().get_config(), **config}


@_serializable
class NestedCross(tf.keras.layers.Layer):
    """DCN-V2 cross layer nested in input width (and rank, for the low-rank form).

    Full rank, kernel W in R^{D x D}, bias b in R^D; for x0, x_l in R^{B x w} (w <= D):

        x_{l+1} = x0 * (x_l W[:w, :w] + b[:w] + s * x_l) + x_l

    Low rank (`projection_dim=R`), U in R^{D x R}, V in R^{R x D}, active rank r <= R:

        x_{l+1} = x0 * ((x_l U[:w, :r]) V[:r, :w] + b[:w] + s * x_l) + x_l

    (`s` = `diag_scale`). Weights use the layout of `tfrs.layers.dcn.Cross` (row-vector
    convention, `x @ kernel`), so at full width the output equals TFRS's with the same
    weights.

    Example:

    ```python
    cross = NestedCross(input_dim=40, projection_dim=8)
    x1 = cross(x0, x0)                                  # TA: width 40, rank 8
    x1_s = cross(x0[:, :20], x0[:, :20], rank=4)        # Student: width 20, rank 4
    ```
    """

    def __init__(self, input_dim: int, projection_dim: int | None = None, diag_scale: float = 0.0,
                 use_bias: bool = True, kernel_initializer="truncated_normal",
                 bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if input_dim <= 0 or (projection_dim is not None and projection_dim <= 0):
            raise ValueError(f"NestedCross: input_dim/projection_dim must be > 0, got {input_dim}, {projection_dim}")
        if diag_scale < 0:
            raise ValueError(f"NestedCross: diag_scale must be >= 0, got {diag_scale}")
        self.input_dim = int(input_dim)
        self.projection_dim = None if projection_dim is None else int(projection_dim)
        self.diag_scale = float(diag_scale)
        self.use_bias = use_bias
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
        self.bias_initializer = tf.keras.initializers.get(bias_initializer)

    def build(self, input_shape=None):
        d = self.input_dim
        if self.projection_dim is None:
            self.kernel = self.add_weight("kernel", shape=(d, d), initializer=self.kernel_initializer)
        else:
            self.kernel_u = self.add_weight("kernel_u", shape=(d, self.projection_dim),
                                            initializer=initializer_variant(self.kernel_initializer, 0))
            self.kernel_v = self.add_weight("kernel_v", shape=(self.projection_dim, d),
                                            initializer=initializer_variant(self.kernel_initializer, 1))
        self.bias = (self.add_weight("bias", shape=(d,), initializer=self.bias_initializer)
                     if self.use_bias else None)
        self.built = True

    def call(self, x0, x=None, rank: int | None = None):
        if x is None:
            x = x0
        w = x.shape[-1]
        if x0.shape[-1] != w:
            raise ValueError(f"{self.name}: x0 width {x0.shape[-1]} != x width {w}")
        if w > self.input_dim:
            raise ValueError(f"{self.name}: input width {w} exceeds the layer's {self.input_dim}")
        if self.projection_dim is None:
            if rank is not None:
                raise ValueError(f"{self.name}: full-rank layer called with rank={rank}")
            prod = tf.matmul(x, self.kernel[:w, :w])
        else:
            r = self.projection_dim if rank is None else int(rank)
            if r > self.projection_dim or r <= 0:
                raise ValueError(f"{self.name}: rank {r} not in [1, {self.projection_dim}]")
            prod = tf.matmul(tf.matmul(x, self.kernel_u[:w, :r]), self.kernel_v[:r, :w])
        if self.use_bias:
            prod = prod + self.bias[:w]
        if self.diag_scale:
            prod = prod + self.diag_scale * x
        return x0 * prod + x

    def get_config(self):
        config = {
            "input_dim": self.input_dim, "projection_dim": self.projection_dim,
            "diag_scale": self.diag_scale, "use_bias": self.use_bias,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        }
        return {**super().get_config(), **config}


@_serializable
class NestedEmbedding(tf.keras.layers.Layer):
    """Embedding table E in R^{V x D} whose first d <= D columns are a smaller model's table:

        e(i; d) = E[i, :d]

    A Student extracted at dim d gets its own [V, d] table (the leading columns), so
    smaller students really are smaller.

    Example:

    ```python
    emb = NestedEmbedding(input_dim=1000, output_dim=16)
    emb(ids)                # [B, 16]
    emb(ids, output_dim=4)  # [B, 4] = emb(ids)[:, :4]
    ```
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        if input_dim <= 0 or output_dim <= 0:
            raise ValueError(f"NestedEmbedding: input_dim/output_dim must be > 0, got {input_dim}, {output_dim}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight("embeddings", shape=(self.input_dim, self.output_dim),
                                          initializer=self.embeddings_initializer)
        self.built = True

    def call(self, ids, output_dim: int | None = None):
        d = self.output_dim if output_dim is None else int(output_dim)
        if not 0 < d <= self.output_dim:
            raise ValueError(f"{self.name}: output_dim {d} not in [1, {self.output_dim}]")
        # Gather full rows then slice: the gradient is an IndexedSlices over the touched rows.
        # embedding_lookup, not tf.gather: on a table sharded over parameter servers
        # (ShardedVariable) tf.gather returns the rows grouped by shard, not in id order.
        return tf.nn.embedding_lookup(self.embeddings, tf.cast(ids, tf.int64))[:, :d]

    def get_config(self):
        config = {"input_dim": self.input_dim, "output_dim": self.output_dim,
                  "embeddings_initializer": tf.keras.initializers.serialize(self.embeddings_initializer)}
        return {**super().get_config(), **config}


@_serializable
class FeaturePreprocessor(tf.keras.layers.Layer):
    """Raw feature tensors -> (numeric matrix [B, n] float32, list of m id vectors [B] int64).

    Numeric f: v -> fill if NaN; sign(v) log1p(|v|) if log1p; (v - mean) / std.
    Categorical: string form -> `StringLookup` (vocabulary, OOV ids first) or `Hashing`
    (hash_buckets); `num_ids` inputs are integer ids, out-of-range ids go to OOV rows.
    Inputs may be any shape [B] or [B, 1] tensors; categorical values may be strings or
    integers (looked up by their decimal string form).
    """

    def __init__(self, features: dict | FeatureSpec, **kwargs):
        super().__init__(**kwargs)
        self.features = features if isinstance(features, FeatureSpec) else FeatureSpec.from_dict(features)
        self._lookups = []
        for f in self.features.categorical:
            if f.hash_buckets is not None:
                layer = tf.keras.layers.Hashing(num_bins=f.hash_buckets, name=f"hash_{f.name}")
            elif f.num_ids is not None:
                layer = None
            else:
                layer = tf.keras.layers.StringLookup(
                    vocabulary=list(f.vocabulary_values()), num_oov_indices=f.oov_buckets,
                    mask_token=None, name=f"lookup_{f.name}")
            self._lookups.append(layer)

    @staticmethod
    def _vector(features, name):
        if name not in features:
            raise ValueError(f"missing input feature {name!r}; got {sorted(features)}")
        x = features[name]
        if isinstance(x, tf.SparseTensor):
            x = tf.sparse.to_dense(x)
        x = tf.convert_to_tensor(x)
        if x.shape.rank == 2:
            x = x[:, 0]
        return x

    def _categorical_ids(self, f: CategoricalFeature, layer, x):
        if f.num_ids is not None:
            if x.dtype == tf.string:
                x = tf.strings.to_number(tf.where(x == "", "-1", x), tf.int64)
            x = tf.cast(x, tf.int64)
            inside = (x >= 0) & (x < f.num_ids)
            if f.oov_buckets:
                oov = f.num_ids + tf.math.floormod(tf.abs(x), f.oov_buckets)
            else:
                oov = tf.clip_by_value(x, 0, f.num_ids - 1)
            return tf.where(inside, x, oov)
        if x.dtype != tf.string:
            if x.dtype.is_floating:  # NaN = missing; whole floats -> "7" not "7.000000"
                missing = tf.math.is_nan(x)
                x = tf.where(missing, tf.constant("", tf.string),
                             tf.strings.as_string(tf.cast(tf.where(missing, tf.zeros_like(x), x), tf.int64)))
            else:
                x = tf.strings.as_string(x)
        return tf.cast(layer(x), tf.int64)

    def call(self, features):
        numeric = []
        for f in self.features.numeric:
            x = self._vector(features, f.name)
            if x.dtype == tf.string:
                raise ValueError(f"numeric feature {f.name!r} got a string tensor")
            x = tf.cast(x, tf.float32)
            x = tf.where(tf.math.is_nan(x), tf.constant(f.fill_value, tf.float32), x)
            if f.log1p:
                x = tf.sign(x) * tf.math.log1p(tf.abs(x))
            numeric.append((x - f.mean) / f.std)
        ids = [self._categorical_ids(f, layer, self._vector(features, f.name))
               for f, layer in zip(self.features.categorical, self._lookups, strict=True)]
        if numeric:
            numeric = tf.stack(numeric, axis=1)
        else:
            batch = tf.shape(ids[0])[0]
            numeric = tf.zeros([batch, 0], tf.float32)
        return numeric, ids

    def get_config(self):
        return {**super().get_config(), "features": self.features.to_dict()}


@_serializable
class LogitAffine(tf.keras.layers.Layer):
    """Per-size output calibration of a logit: z' = scale * z + bias (scale 1, bias 0 at init).

    Used by `RankerNetwork` with `size_heads="affine"`; a linear head followed by it is the
    linear head with kernel `scale * K` and bias `scale * b + bias`, which is how
    `matta_tf.extract` folds it into a standalone model.

    Example:

    ```python
    calibrate = LogitAffine()
    calibrate(logits)  # [B] -> [B]
    ```
    """

    def build(self, input_shape=None):
        self.scale = self.add_weight("scale", shape=(), initializer="ones")
        self.bias = self.add_weight("bias", shape=(), initializer="zeros")
        self.built = True

    def call(self, logits):
        return self.scale * logits + self.bias
