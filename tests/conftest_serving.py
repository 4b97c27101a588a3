"""Shared helpers for the serving tests (imported explicitly; not an auto-loaded conftest).

`build_students(root)` returns label -> SavedModel dir for three students of different
sizes. When `matta_tf.export.export_saved_model` exists it trains a tiny MatTARanker for a
few steps on synthetic logs and exports the real Student, a Mix'n'Match student and the
TA; otherwise it exports contract-conformant reference models (serving.reference_model).
"""
from __future__ import annotations

import importlib.util
import os

import matta_tf  # noqa: F401  (before TensorFlow)

LABELS = ("student", "mid", "ta")


def real_export_available() -> bool:
    return importlib.util.find_spec("matta_tf.export") is not None


def build_reference_students(root: str) -> tuple[dict[str, str], list[dict]]:
    from serving import reference_model as rm

    arms = {label: rm.export_reference_model(os.path.join(root, label), hidden=h, seed=i)
            for i, (label, h) in enumerate(zip(LABELS, (4, 16, 64), strict=True))}
    rows = rm.reference_rows(48, seed=3)
    return arms, rows


def build_real_students(root: str) -> tuple[dict[str, str], list[dict]]:
    """Train a tiny MatTARanker briefly on synthetic logs; export Student, mix_1 and TA."""
    import tensorflow as tf

    from matta_tf.config import RankerConfig, SubmodelSpec
    from matta_tf.datasets import (
        SyntheticLogConfig,
        default_feature_spec,
        generate_click_logs,
        table_to_dataset,
    )
    from matta_tf.export import export_saved_model
    from matta_tf.extract import extract
    from matta_tf.model import MatTARanker
    from serving.examples import rows_from_table

    log_config = SyntheticLogConfig(num_numeric=4, num_categorical=4,
                                    cardinalities=(10, 20, 50, 30), num_crosses=2)
    table = generate_click_logs(1072, seed=0, config=log_config)
    features = default_feature_spec(log_config)
    config = RankerConfig(features=features, warmup_steps=5,
                          student=SubmodelSpec(embedding_dim=4, cross_layers=1, mlp_widths=(8,)))
    tf.keras.utils.set_random_seed(0)
    model = MatTARanker(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
    model.fit(table_to_dataset(table.slice(0, 1024), features, batch_size=256), epochs=1,
              verbose=0)
    specs = {"student": config.student_spec(),
             "mid": next(iter(config.mixnmatch_specs(1).values())),
             "ta": config.ta_spec()}
    arms = {label: export_saved_model(extract(model, spec), os.path.join(root, label), features)
            for label, spec in specs.items()}
    rows = rows_from_table(table.slice(1024, 48), features.names)
    return arms, rows


def build_students(root: str) -> tuple[dict[str, str], list[dict], str]:
    """(label -> SavedModel dir, raw feature rows for requests, kind)."""
    if real_export_available():
        return (*build_real_students(root), "matta")
    return (*build_reference_students(root), "reference")
