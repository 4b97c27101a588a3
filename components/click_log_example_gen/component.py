"""The ClickLogExampleGen component: its spec, the QuarantinedRows artifact type and the
component class (executor: `executor.ClickLogExecutor`, driver: `driver.ClickLogDriver`)."""
from __future__ import annotations

import json

from tfx import types
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.click_log_example_gen.config import (
    CLICK_LOG_CONFIG_KEY,
    QUARANTINE_KEY,
    make_click_log_config,
)
from components.click_log_example_gen.driver import ClickLogDriver
from components.click_log_example_gen.executor import ClickLogExecutor


class QuarantinedRows(types.Artifact):
    """Rows of a click log that failed validation, as JSON Lines with a reason code each."""

    # KFP v2 needs custom type names shaped like `<namespace>.<Name>` (its schema-title rule).
    TYPE_NAME = "matta.QuarantinedRows"


class ClickLogExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {
        **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
        CLICK_LOG_CONFIG_KEY: ExecutionParameter(type=str),
    }
    OUTPUTS = {
        **standard_component_specs.FileBasedExampleGenSpec.OUTPUTS,
        QUARANTINE_KEY: ChannelParameter(type=QuarantinedRows),
    }


class ClickLogExampleGen(FileBasedExampleGen):
    """Custom ExampleGen for click logs with a stored-teacher-logit join; see module doc.

    Outputs: `examples` (tf.Examples, one split per configured name) and `quarantine`
    (rows that failed validation). Both carry the counts as custom properties.
    """

    SPEC_CLASS = ClickLogExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(ClickLogExecutor)
    DRIVER_CLASS = ClickLogDriver

    def __init__(self, input_base: str, log_schema, input_pattern: str = "*",
                 teacher_pattern: str | None = None, split: dict | None = None,
                 max_quarantine_rate: float = 0.05, range_config=None, *,
                 engine: str = "columnar", teacher_join: str = "auto",
                 teacher_lookup_max_bytes: int | None = None, num_shards: int | None = None):
        config = make_click_log_config(log_schema, teacher_pattern, split, max_quarantine_rate,
                                       engine=engine, teacher_join=teacher_join,
                                       teacher_lookup_max_bytes=teacher_lookup_max_bytes,
                                       num_shards=num_shards)
        names = config["split"]["names"]
        input_config = example_gen_pb2.Input(splits=[
            example_gen_pb2.Input.Split(name="single_split", pattern=input_pattern)])
        output_config = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name=n, hash_buckets=1) for n in names]))
        spec = ClickLogExampleGenSpec(
            input_base=input_base,
            input_config=input_config,
            output_config=output_config,
            custom_config=None,
            range_config=range_config,
            output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            click_log_config=json.dumps(config, sort_keys=True),
            examples=types.Channel(type=standard_artifacts.Examples),
            quarantine=types.Channel(type=QuarantinedRows),
        )
        # Skip FileBasedExampleGen.__init__ (it builds its own spec without our outputs).
        super(FileBasedExampleGen, self).__init__(spec=spec)
