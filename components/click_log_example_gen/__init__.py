"""ClickLogExampleGen, split the TFX way (like TFX's `csv_example_gen/`).

`columnar` is the Arrow-batch ingestion path (the default engine); the component, its
executor and driver live in `components.example_gen` (re-exported there).
"""
