"""Shared by the ClickLogExampleGen tests: a small csv log-schema, running the real executor
in-process, and reading its splits / quarantine back. (Not a test module: not collected.)"""
import json
import os

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from components import logschema

HEADER = ["impression_id", "timestamp", "label", "I1", "I2", "C1", "C2"]
SCHEMA = {
    "format": "csv",
    "header": True,
    "columns": [{"name": "impression_id", "type": "string"}, {"name": "timestamp", "type": "int"},
                {"name": "label", "type": "int"}, {"name": "I1", "type": "float"},
                {"name": "I2", "type": "float"}, {"name": "C1", "type": "string"},
                {"name": "C2", "type": "string"}],
    "label": "label",
    "impression_id": "impression_id",
    "timestamp": "timestamp",
    "numeric_features": ["I1", "I2"],
    "categorical_features": ["C1", "C2"],
}


def run_click_log_executor(out, input_base, pattern, schema, teacher_pattern=None, split=None,
                           max_rate=1.0, beam_args=("--direct_num_workers=1",), **config_options):
    """Runs `ClickLogExecutor.Do` on the files matching `pattern` under `input_base`; its
    artifacts live under `out` (examples/, quarantine/, tmp/). `config_options` go to
    `make_click_log_config` (engine, ...). Returns (examples, quarantine, config)."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components import example_gen

    config = example_gen.make_click_log_config(schema, teacher_pattern, split, max_rate, **config_options)
    examples = standard_artifacts.Examples()
    examples.uri = str(out / "examples")
    quarantine = example_gen.QuarantinedRows()
    quarantine.uri = str(out / "quarantine")
    os.makedirs(quarantine.uri, exist_ok=True)
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name="single_split", pattern=pattern)])
    exec_properties = {
        "input_base": str(input_base),
        "input_config": proto_utils.proto_to_json(input_config),
        "click_log_config": json.dumps(config),
        "span": 0,
        "version": None,
    }
    ctx = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(beam_args),
                                                      tmp_dir=str(out / "tmp"))
    example_gen.ClickLogExecutor(ctx).Do(
        {}, {"examples": [examples], "quarantine": [quarantine]}, exec_properties)
    return examples, quarantine, config


def read_split(examples, name):
    """{impression id: tf.Example features} of one output split (an id written twice fails)."""
    import tensorflow as tf

    files = tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{name}", "*.gz"))
    out = {}
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(rec.numpy())
        f = ex.features.feature
        iid = f["impression_id"].bytes_list.value[0].decode()
        assert iid not in out, f"{iid} written twice"
        out[iid] = f
    return out


def read_quarantine(quarantine):
    with open(os.path.join(quarantine.uri, "quarantine.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def good_row(i):
    """A valid csv row of SCHEMA (some feature cells empty = missing)."""
    return [f"imp{i}", str(1_700_000_000 + i), str(i % 2), f"{i * 0.5}", "" if i % 7 == 0 else "3",
            f"a{i % 5}", "" if i % 3 == 0 else f"b{i % 4}"]


def assert_identities(props, lines=None):
    """The ExampleGen's accounting identities on its artifact properties."""
    assert props["lines_in"] == props["header_lines"] + props["blank_lines"] + props["rows_in"]
    assert props["rows_in"] == props["rows_written"] + props["rows_quarantined"]
    assert props["rows_quarantined"] == sum(props[f"quarantined_{r}"]
                                            for r in logschema.REASON_CODES)
    assert props["teacher_rows_in"] == (props["teacher_rows_joined"]
                                        + props["teacher_rows_unmatched"]
                                        + props["teacher_rows_invalid"])
    if lines is not None:
        assert props["lines_in"] == lines
