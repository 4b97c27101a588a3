"""ClickLogExampleGen, laid out like TFX's `csv_example_gen/`.

    config.py     keys, file names, the executor config (make_click_log_config), splits
    component.py  ClickLogExampleGen, ClickLogExampleGenSpec, the QuarantinedRows artifact
    executor.py   ClickLogExecutor: files, the Beam graph of an engine, accounting
    driver.py     ClickLogDriver: span/version resolution, teacher files in the fingerprint
    columnar.py   the columnar engine (default): Arrow batches, pyarrow.compute, tfx_bsl
    rows.py       the row engine: one row at a time (the reference; the columnar engine's
                  fallback for single rows)

See `components.example_gen` (which re-exports the public names) for the behaviour. The
names below load on first use (`import components.click_log_example_gen.columnar` stays
free of TFX).
"""

_LAZY = {
    "ClickLogExampleGen": "component", "ClickLogExampleGenSpec": "component",
    "QuarantinedRows": "component", "ClickLogExecutor": "executor",
    "run_click_log_graph": "executor", "accounting": "executor",
    "check_quarantine_rate": "executor", "ClickLogDriver": "driver",
    "resolve_teacher_pattern": "driver", "make_click_log_config": "config",
    "split_index": "config",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
