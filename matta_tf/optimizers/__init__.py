"""Optimizers for matta: `Shampoo` (tf_keras) and its pure math (`shampoo_math`)."""
import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from matta_tf.optimizers.shampoo import Shampoo, ShampooConfig

__all__ = ["Shampoo", "ShampooConfig"]
