"""The Trainer's ranker block: defaults and validation, in one TF-free place.

`PipelineConfig` validates its `ranker` block with `ranker_dict` when the config is loaded
(so a typo fails `matta pipeline compile`, not the Trainer after ExampleGen and Transform
ran), and the Trainer's `run_fn` builds its `RankerConfig` from the same function.
The `features` block is not part of it: the Trainer derives it from the Transform output
(`components.trainer_module.feature_block`).
"""
from __future__ import annotations

from typing import Any

# Sizes used when the pipeline config's `ranker` block leaves them out.
DEFAULT_RANKER: dict[str, Any] = {
    "student": {"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [16]},
    "ta_expansion": {"embedding_dim": 2.0, "cross_rank": 2.0, "mlp_width": 2.0},
    "warmup_steps": 50,
}

OPTIMIZERS = ("shampoo", "adam")

# Stand-in features for validating a ranker block before the vocabularies exist; every
# RankerConfig check that does not depend on the real features runs against them.
_PLACEHOLDER_FEATURES = {"numeric": [{"name": "numeric_0"}],
                         "categorical": [{"name": "categorical_0", "num_ids": 8}]}


def ranker_dict(ranker: dict | None, features: dict | None = None, where: str = "ranker") -> dict:
    """DEFAULT_RANKER updated with `ranker`, plus `features`; raises ValueError naming the
    problem if the result is not a valid `RankerConfig`."""
    from matta_tf.config import RankerConfig

    ranker = dict(ranker or {})
    if not isinstance(ranker, dict):
        raise ValueError(f"{where}: expected a mapping of RankerConfig fields, got {ranker!r}")
    if "features" in ranker:
        raise ValueError(f"{where}: 'features' is derived from the Transform output; remove it")
    merged = {**DEFAULT_RANKER, **ranker}
    try:
        RankerConfig.from_dict({**merged, "features": features or _PLACEHOLDER_FEATURES})
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    if features is not None:
        merged["features"] = features
    return merged


def check_optimizer(name: str, where: str = "optimizer") -> str:
    if name not in OPTIMIZERS:
        raise ValueError(f"{where}: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    return name
