"""ClickLogExampleGen's driver: TFX's FileBasedDriver (span/version resolution of the
input pattern) whose input fingerprint also covers the teacher table files."""
from __future__ import annotations

import json
import os

from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils

from components.click_log_example_gen.config import CLICK_LOG_CONFIG_KEY


def resolve_teacher_pattern(pattern: str | None, input_base: str, span: int | None,
                            version: int | None) -> str | None:
    """The teacher glob with {SPAN}/{VERSION}/date specs filled in, relative to input_base."""
    if not pattern:
        return None
    import re

    full = pattern if os.path.isabs(pattern) or "://" in pattern else os.path.join(
        input_base, pattern)
    is_span = re.search(example_gen_utils.SPAN_FULL_REGEX, full) is not None
    is_date = any(s in full for s in example_gen_utils.DATE_SPECS)
    is_version = re.search(example_gen_utils.VERSION_FULL_REGEX, full) is not None
    if (is_span or is_date) and span is None:
        raise ValueError(f"teacher pattern {pattern!r} has a span spec but no span was resolved")
    return example_gen_utils.get_pattern_for_span_version(
        full, is_span, is_date, is_version, span or 0, version)


class ClickLogDriver(example_gen_driver.FileBasedDriver):
    """FileBasedDriver whose input fingerprint also covers the teacher table files."""

    def resolve_exec_properties(self, exec_properties, pipeline_info, component_info):
        exec_properties = super().resolve_exec_properties(
            exec_properties, pipeline_info, component_info)
        config = json.loads(exec_properties[CLICK_LOG_CONFIG_KEY])
        teacher = resolve_teacher_pattern(
            config.get("teacher_pattern"), exec_properties[standard_component_specs.INPUT_BASE_KEY],
            exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME),
            exec_properties.get(example_gen_utils.VERSION_PROPERTY_NAME))
        if teacher:
            fp = io_utils.generate_fingerprint("teacher", teacher)
            exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = (
                (exec_properties.get(example_gen_utils.FINGERPRINT_PROPERTY_NAME) or "") + "\n" + fp)
        return exec_properties
