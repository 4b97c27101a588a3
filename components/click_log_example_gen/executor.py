"""ClickLogExampleGen's executor: resolves the files, builds the Beam graph of the chosen
engine (`columnar` or `rows`), checks the accounting and sets the artifact properties."""
from __future__ import annotations

import json
import os

import apache_beam as beam
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components import logschema
from components.click_log_example_gen import rows
from components.click_log_example_gen.config import (
    CLICK_LOG_CONFIG_KEY,
    COUNTS_FILE,
    ENGINES,
    QUARANTINE_FILE,
    QUARANTINE_KEY,
    TEACHER_QUARANTINE_FILE,
)
from components.click_log_example_gen.driver import resolve_teacher_pattern


def _glob(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def _runs_locally(beam_pipeline_args) -> bool:
    """True if the Beam args select the DirectRunner (also when no runner is named)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(beam_pipeline_args)).view_as(StandardOptions).runner
    return runner is None or str(runner).lower() in ("direct", "directrunner",
                                                     "bundlebaseddirectrunner")


class ClickLogExecutor(base_beam_executor.BaseBeamExecutor):
    """Validates, joins, de-duplicates and splits click logs; see the module docstring."""

    def __init__(self, context=None):
        args = list(getattr(context, "beam_pipeline_args", None) or [])
        if context is None or not args or not _runs_locally(args):
            super().__init__(context)
            return
        # TFX would build an sdist of itself for remote Beam workers here (seconds per
        # execution); the DirectRunner's workers import this same environment.
        import copy
        import sys

        from absl import flags

        local = copy.copy(context)
        local.beam_pipeline_args = []
        super().__init__(local)
        self._beam_pipeline_args = args
        flags.FLAGS(sys.argv + args, known_only=True)  # as BaseBeamExecutor does

    def Do(self, input_dict, output_dict, exec_properties):
        self._log_startup(input_dict, output_dict, exec_properties)
        config = json.loads(exec_properties[CLICK_LOG_CONFIG_KEY])
        schema_dict = config["log_schema"]
        split = config["split"]
        input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        if len(input_config.splits) != 1:
            raise ValueError("ClickLogExampleGen reads one input pattern and splits it itself; "
                             f"got {len(input_config.splits)} input splits")
        pattern = os.path.join(input_base, input_config.splits[0].pattern)
        files = _glob(pattern)
        if not files:
            raise FileNotFoundError(f"ClickLogExampleGen: no log files match {pattern}")
        teacher_glob = resolve_teacher_pattern(
            config.get("teacher_pattern"), input_base,
            exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME),
            exec_properties.get(example_gen_utils.VERSION_PROPERTY_NAME))
        teacher_files = _glob(teacher_glob) if teacher_glob else []
        if teacher_glob and not teacher_files:
            raise FileNotFoundError(f"ClickLogExampleGen: no teacher files match {teacher_glob}")

        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        quarantine = artifact_utils.get_single_instance(output_dict[QUARANTINE_KEY])
        examples.split_names = artifact_utils.encode_split_names(split["names"])
        counts_path = os.path.join(quarantine.uri, COUNTS_FILE)

        with self._make_beam_pipeline() as p:
            _ = run_click_log_graph(
                p, files, teacher_files, schema_dict, split,
                {name: artifact_utils.get_split_uri([examples], name) for name in split["names"]},
                os.path.join(quarantine.uri, QUARANTINE_FILE), input_base=input_base,
                engine=config.get("engine", "columnar"),
                teacher_join=config.get("teacher_join", "auto"),
                teacher_lookup_max_bytes=config.get("teacher_lookup_max_bytes"),
                num_shards=config.get("num_shards"), counts_path=counts_path)

        counts = _read_counts(counts_path)
        props = accounting(counts, split["names"])
        for artifact in (examples, quarantine):
            for key, value in props.items():
                artifact.set_int_custom_property(key, value)
        examples.set_string_custom_property(
            example_gen_utils.PAYLOAD_FORMAT_PROPERTY_NAME, "FORMAT_TF_EXAMPLE")
        examples.set_string_custom_property(
            example_gen_utils.FILE_FORMAT_PROPERTY_NAME, "tfrecords_gzip")
        check_quarantine_rate(props, config["max_quarantine_rate"], pattern)


# Compiled pipeline specs name the executor by class path; keep the path they have always
# used (components/example_gen.py re-exports it).
ClickLogExecutor.__module__ = "components.example_gen"


def run_click_log_graph(p, files, teacher_files, schema_dict, split, split_uris,
                        quarantine_path, input_base=None, teacher_quarantine_path=None, *,
                        engine: str = "columnar", teacher_join: str = "auto",
                        teacher_lookup_max_bytes: int | None = None,
                        num_shards: int | None = None, counts_path: str | None = None):
    """Builds the Beam graph; returns a PCollection of (counter name, count).

    Derived impression ids use each file's path relative to `input_base` (its base name
    when `input_base` is None). Invalid teacher rows go to `teacher_quarantine_path`
    (default: `teacher_quarantine.jsonl` beside `quarantine_path`). `engine` "columnar"
    (default, `components.click_log_example_gen.columnar`) or "rows" (one row at a time
    in Python; the reference the columnar engine is tested against) give the same
    examples, quarantine records and counts. Columnar only: `teacher_join` "auto"
    (a keyed in-memory lookup for teacher tables up to `teacher_lookup_max_bytes` of
    Parquet, else a shuffle by shard), "lookup" or "shuffle"; `num_shards` (default: one
    per 256 MiB of input) sets the dedup/join/write parallelism and files per split.
    With `counts_path` the counts are also written there as one JSON object.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {ENGINES}")
    if teacher_quarantine_path is None:
        teacher_quarantine_path = os.path.join(os.path.dirname(quarantine_path),
                                               TEACHER_QUARANTINE_FILE)
    sources = [(f, logschema.relative_source(f, input_base)) for f in files]
    if engine == "columnar":
        from components.click_log_example_gen import columnar

        return columnar.build_graph(
            p, sources, teacher_files, schema_dict, split, split_uris, quarantine_path,
            teacher_quarantine_path, counts_path=counts_path, teacher_join=teacher_join,
            teacher_lookup_max_bytes=teacher_lookup_max_bytes, num_shards=num_shards)
    bad, teacher_bad, counters = rows.row_graph(p, sources, teacher_files, schema_dict, split,
                                            split_uris)
    _ = (bad
         | "QuarantineJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
         | "WriteQuarantine" >> beam.io.WriteToText(quarantine_path, shard_name_template=""))
    _ = (teacher_bad
         | "TeacherQuarantineJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
         | "WriteTeacherQuarantine" >> beam.io.WriteToText(teacher_quarantine_path,
                                                           shard_name_template=""))
    counters = list(counters) + [
        bad | "CountBad" >> beam.Map(lambda r: ("quarantined_" + r["reason"], 1)),
        teacher_bad | "CountTeacherBad" >> beam.Map(
            lambda r: ("teacher_quarantined_" + r["reason"], 1)),
        p | "Zero" >> beam.Create([("rows_in", 0)]),
    ]
    counts = tuple(counters) | "AllCounts" >> beam.Flatten() | "Sum" >> beam.CombinePerKey(sum)
    if counts_path:
        _ = (counts
             | "CountsToDict" >> beam.combiners.ToDict()
             | "CountsJson" >> beam.Map(lambda d: json.dumps(d, sort_keys=True))
             | "WriteCounts" >> beam.io.WriteToText(counts_path, shard_name_template=""))
    return counts


def _read_counts(path: str) -> dict[str, int]:
    with logschema.open_file(path) as f:
        return {k: int(v) for k, v in json.loads(f.read().decode("utf-8")).items()}


def accounting(counts: dict[str, int], split_names: list[str]) -> dict[str, int]:
    """Adds totals to the raw counters and checks the identities of the module doc."""
    props = {"lines_in": counts.get("lines_in", 0), "header_lines": counts.get("header_lines", 0),
             "blank_lines": counts.get("blank_lines", 0), "rows_in": counts.get("rows_in", 0)}
    for name in split_names:
        props[f"written_{name}"] = counts.get(f"written_{name}", 0)
    for reason in logschema.REASON_CODES:
        props[f"quarantined_{reason}"] = counts.get(f"quarantined_{reason}", 0)
    props["rows_written"] = sum(props[f"written_{n}"] for n in split_names)
    props["rows_quarantined"] = sum(props[f"quarantined_{r}"] for r in logschema.REASON_CODES)
    for key in ("teacher_rows_in", "teacher_rows_joined", "teacher_rows_unmatched"):
        props[key] = counts.get(key, 0)
    for reason in logschema.TEACHER_REASON_CODES:
        props[f"teacher_quarantined_{reason}"] = counts.get(f"teacher_quarantined_{reason}", 0)
    props["teacher_rows_invalid"] = sum(props[f"teacher_quarantined_{r}"]
                                        for r in logschema.TEACHER_REASON_CODES)
    # A bug in this executor, never a data problem: every line and row must land somewhere.
    broken = []
    if props["lines_in"] != props["header_lines"] + props["blank_lines"] + props["rows_in"]:
        broken.append("lines_in != header_lines + blank_lines + rows_in")
    if props["rows_in"] != props["rows_written"] + props["rows_quarantined"]:
        broken.append("rows_in != rows_written + rows_quarantined")
    if props["teacher_rows_in"] != (props["teacher_rows_joined"] + props["teacher_rows_unmatched"]
                                    + props["teacher_rows_invalid"]):
        broken.append("teacher_rows_in != teacher_rows_joined + teacher_rows_unmatched + "
                      "teacher_rows_invalid")
    unknown = sorted(set(counts) - set(props))
    if unknown:
        broken.append(f"unknown counters {unknown}")
    if broken:
        raise RuntimeError(f"ClickLogExampleGen accounting broken ({'; '.join(broken)}): {props}")
    return props


def check_quarantine_rate(props: dict[str, int], max_rate: float, where: str) -> None:
    rows_in = props["rows_in"]
    rate = props["rows_quarantined"] / rows_in if rows_in else 0.0
    if rate > max_rate:
        reasons = ", ".join(f"{r}={props[f'quarantined_{r}']}" for r in logschema.REASON_CODES
                            if props[f"quarantined_{r}"])
        raise ValueError(
            f"ClickLogExampleGen: {props['rows_quarantined']} of {rows_in} rows ({rate:.2%}) from "
            f"{where} failed validation, above max_quarantine_rate {max_rate:.2%} ({reasons}); "
            "see the quarantine artifact for the rows")
