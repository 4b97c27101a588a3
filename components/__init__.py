# Importing matta_tf first sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads (see its docstring).
import matta_tf  # noqa: F401

"""matta's TFX components: ClickLogExampleGen, StudentExtractor and the Trainer module.

The component classes import TFX (slow), so they load on first use:
`components.ClickLogExampleGen` works, `import components` stays cheap for the CLI.
"""

_LAZY = {
    "ClickLogExampleGen": "components.example_gen",
    "QuarantinedRows": "components.example_gen",
    "StudentExtractor": "components.student_extractor",
    "load_log_schema": "components.logschema",
    "LogSchema": "components.logschema",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")
