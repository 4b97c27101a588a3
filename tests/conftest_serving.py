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


def build_students(root: str) -> tuple[dict[str, str], list[dict], str]:
    """(label -> SavedModel dir, raw feature rows for requests, kind)."""
    return (*build_reference_students(root), "reference")
