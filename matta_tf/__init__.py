"""matta_tf: the MatTA modelling library (nested layers, Shampoo, MatTA ranker, export).

TensorFlow 2.21 defaults `tf.keras` to Keras 3, but tensorflow-recommenders 0.7.7 and
tensorflow-transform build on the Keras 2 API (the `tf_keras` package) and refuse to import
otherwise. The switch is read once, when TensorFlow is first imported, so it must be set
before any `import tensorflow`: importing `matta_tf` (or `components`, `pipelines`,
`serving`) first does that. An explicit user setting is respected.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
