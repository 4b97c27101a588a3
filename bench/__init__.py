# Importing matta_tf first sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads (see its docstring).
import matta_tf  # noqa: F401
