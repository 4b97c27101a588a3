"""Mix'n'Match extraction: cut a standalone small model out of a trained MatTA ranker.

`extract(model, spec)` builds a `StandaloneRanker` with the architecture of `spec` and
copies the leading weight blocks (see `matta_tf.layers`); its logits equal
`model.submodel(spec, features)` - including a trained size's own head or calibration
(`RankerConfig.size_heads`), which becomes the standalone model's head. `cost(config, spec)` counts its parameters and
multiply-adds per example:

    embeddings      params  sum_i V_i * d                 madds 0 (lookups)
    cross (full)    params  w^2 + w                       madds w^2 + w   (W x, then x0 * .)
    cross (rank r)  params  2 w r + w                     madds 2 w r + w
    MLP layer k     params  in_k out_k + out_k            madds in_k out_k
    logit head      params  in + 1                        madds in

with w = n + m*d the cross width. Biases, ReLUs and residual adds are not counted as
multiply-adds; the `x0 *` product of a cross layer is.

Example:

```python
small = extract(model, config.mixnmatch_specs(1)["mix_1"])
small(features)  # logits [B]
cost(config, config.student_spec())  # {"params": ..., "madds_per_example": ...}
```
"""
from __future__ import annotations

import matta_tf  # noqa: F401

# isort: split
import tensorflow as tf

from matta_tf.config import FeatureSpec, RankerConfig, SubmodelSpec
from matta_tf.model import MatTARanker, StandaloneRanker


def cost(config: RankerConfig | FeatureSpec, spec: SubmodelSpec) -> dict[str, int]:
    """{"params": int, "madds_per_example": int} of the standalone model at `spec`."""
    features = config.features if isinstance(config, RankerConfig) else config
    if isinstance(config, RankerConfig):
        config.check_spec(spec)
    d = spec.embedding_dim
    w = spec.x0_width(features)
    params = sum(f.input_dim * d for f in features.categorical)
    madds = 0
    for i in range(spec.cross_layers):
        if spec.low_rank:
            params += 2 * w * spec.cross_ranks[i] + w
            madds += 2 * w * spec.cross_ranks[i] + w
        else:
            params += w * w + w
            madds += w * w + w
    width = w
    for units in spec.mlp_widths:
        params += width * units + units
        madds += width * units
        width = units
    params += width + 1
    madds += width
    return {"params": int(params), "madds_per_example": int(madds)}


def extract(model: MatTARanker, spec: SubmodelSpec, name: str | None = None) -> StandaloneRanker:
    """A standalone `StandaloneRanker` at `spec` with weights sliced from `model`."""
    if not isinstance(model, MatTARanker):
        raise ValueError(f"extract needs a MatTARanker, got {type(model).__name__}")
    config = model.config
    config.check_spec(spec)
    small = StandaloneRanker(config.features, spec, cross_diag_scale=config.cross_diag_scale,
                             name=name or "standalone_ranker")
    big, net = model.network, small.network
    d = spec.embedding_dim
    for src, dst in zip(big.embeddings, net.embeddings, strict=True):
        dst.embeddings.assign(src.embeddings[:, :d])
    w = spec.x0_width(config.features)
    for i, dst in enumerate(net.crosses):
        src = big.crosses[i]
        if spec.low_rank:
            r = spec.cross_ranks[i]
            dst.kernel_u.assign(src.kernel_u[:w, :r])
            dst.kernel_v.assign(src.kernel_v[:r, :w])
        else:
            dst.kernel.assign(src.kernel[:w, :w])
        dst.bias.assign(src.bias[:w])
    width = w
    for i, dst in enumerate(net.mlp):
        units = spec.mlp_widths[i]
        dst.kernel.assign(big.mlp[i].kernel[:width, :units])
        dst.bias.assign(big.mlp[i].bias[:units])
        width = units
    kind, layer = big.size_head(spec) or ("shared", None)
    if kind == "own":  # the size's own, unshared head
        net.head.kernel.assign(layer.kernel)
        net.head.bias.assign(layer.bias)
    elif kind == "affine":  # a * (h K + b) + c = h (a K) + (a b + c)
        net.head.kernel.assign(layer.scale * big.head.kernel[:width, :])
        net.head.bias.assign(layer.scale * big.head.bias + layer.bias)
    else:
        net.head.kernel.assign(big.head.kernel[:width, :])
        net.head.bias.assign(big.head.bias)
    return small


def dummy_features(features: FeatureSpec, batch_size: int = 1) -> dict[str, tf.Tensor]:
    """A batch of 'missing' values for every feature (NaN numerics, empty strings / id 0),
    used to build models and trace signatures."""
    out = {f.name: tf.fill([batch_size], float("nan")) for f in features.numeric}
    for f in features.categorical:
        out[f.name] = (tf.zeros([batch_size], tf.int64) if f.num_ids is not None
                       else tf.fill([batch_size], ""))
    return out


def count_params(model: tf.keras.Model) -> int:
    """Number of scalars in the model's weights (builds it on a dummy batch if needed)."""
    if not model.built:
        model(dummy_features(model.features if hasattr(model, "features") else model.config.features))
    return int(sum(int(tf.size(w)) for w in model.weights))
