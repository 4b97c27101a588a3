"""ClickLogExampleGen: click logs + stored teacher logits -> validated, split tf.Examples.

A custom file-based TFX ExampleGen on Apache Beam (it reuses TFX's FileBasedDriver, so
`{SPAN}`/`{VERSION}`/`{YYYY}{MM}{DD}` input patterns, range configs and input fingerprints
work as for CsvExampleGen). Two engines build the same outputs:

* `columnar` (default, `components.click_log_example_gen.columnar`): files are read in
  chunks of whole lines into Arrow record batches (pyarrow's CSV/JSON readers, Parquet
  batches), validated with pyarrow.compute masks, grouped by a hash shard of the
  impression id, de-duplicated, joined with the teacher logits by a keyed lookup (an
  in-memory index as a Beam side input, or for big teacher tables a shuffle by shard),
  encoded by tfx_bsl's RecordBatch -> tf.Example encoder and written as gzipped
  TFRecords. Rows it cannot decide exactly (and lines pyarrow might read differently from
  the dialect) go through the row path one at a time.
* `rows`: the reference, one row at a time in Python:

    files --read--> (source, row, line, raw) --validate--> good rows keyed by impression id
                                                        \\-> quarantine (reason code)
    teacher parquet --read--> (impression_id, teacher_logit)   \\-> teacher quarantine
    CoGroupByKey(log, teacher)  # left join; a log id seen >1 times is a duplicate
        -> tf.Example with `teacher_logit`, `has_teacher` -> split by hash(id) or timestamp

Reading follows the dialect and value rules in `components.logschema` (one physical
line is one record; a line that cannot be decoded, split or parsed is quarantined alone
and reading goes on). Every input line and teacher row ends in exactly
one place; after the run these identities are checked (a failure is a bug, never data):

    lines_in        == header_lines + blank_lines + rows_in
    rows_in         == rows_written + rows_quarantined      (sum of quarantined_<reason>)
    teacher_rows_in == teacher_rows_joined + teacher_rows_unmatched + teacher_rows_invalid

`teacher_rows_joined` counts teacher rows whose id matched a valid log row (its logit may
still quarantine that row as non-finite or conflicting), `teacher_rows_unmatched` those
whose id matched no valid log row, `teacher_rows_invalid` those without a usable id
(`teacher_quarantined_<reason>`). The counts are stored as int custom properties on both
output artifacts. Quarantined log rows are written as JSON Lines `{"reason", "source",
"row", "line", "column", "value", "detail", "raw"}` to `quarantine.jsonl` in the
`quarantine` artifact (`detail` is one line: file, line, column, reason, value; values and
raw lines are truncated), invalid teacher rows likewise to `teacher_quarantine.jsonl`. If
the quarantined share of log rows exceeds `max_quarantine_rate` the execution fails with a
message listing the reasons.

Example:

```python
gen = ClickLogExampleGen(
    input_base="/data/clicks", log_schema="criteo",
    input_pattern="span-{SPAN}/*.tsv", teacher_pattern="span-{SPAN}/teacher/*.parquet",
    split={"method": "hash", "names": ["train", "eval"], "buckets": [9, 1]})
```

Engine options (ClickLogExampleGen / make_click_log_config keyword arguments, stored in
the config only when not the default): `engine` ("columnar" | "rows"), `teacher_join`
("auto" | "lookup" | "shuffle"; auto = lookup for teacher Parquet up to
`teacher_lookup_max_bytes`, default 64 MiB), `num_shards` (default one per 256 MiB of log
input; the columnar engine writes one TFRecord file per shard and split).
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
from typing import Any

import apache_beam as beam
from tfx import types
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, proto_utils

from components import logschema

CLICK_LOG_CONFIG_KEY = "click_log_config"
QUARANTINE_KEY = "quarantine"
QUARANTINE_FILE = "quarantine.jsonl"
TEACHER_QUARANTINE_FILE = "teacher_quarantine.jsonl"
COUNTS_FILE = "counts.json"
ENGINES = ("columnar", "rows")
TEACHER_JOINS = ("auto", "lookup", "shuffle")


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


# -- configuration ------------------------------------------------------------------------
def make_click_log_config(log_schema, teacher_pattern: str | None = None,
                          split: dict | None = None,
                          max_quarantine_rate: float = 0.05, *, engine: str = "columnar",
                          teacher_join: str = "auto",
                          teacher_lookup_max_bytes: int | None = None,
                          num_shards: int | None = None) -> dict[str, Any]:
    """The JSON-able executor config (validated here, so a bad config fails at build time).

    `engine`, `teacher_join`, `teacher_lookup_max_bytes` and `num_shards`: see
    `run_click_log_graph`; they are stored only when not the default (a default config
    keeps its JSON)."""
    schema = logschema.load_log_schema(log_schema)
    split = dict(split or {"method": "hash", "names": ["train", "eval"], "buckets": [4, 1]})
    method = split.get("method", "hash")
    names = list(split.get("names", ["train", "eval"]))
    if len(set(names)) != len(names) or len(names) < 1:
        raise ValueError(f"split names must be distinct and non-empty, got {names}")
    if method == "hash":
        buckets = [int(b) for b in split.get("buckets", [1] * len(names))]
        if len(buckets) != len(names) or min(buckets) <= 0:
            raise ValueError(f"hash split: need one positive bucket count per split {names}, "
                             f"got {buckets}")
        split = {"method": "hash", "names": names, "buckets": buckets}
    elif method == "timestamp":
        if schema.timestamp is None:
            raise ValueError("timestamp split: the log-schema has no timestamp column")
        cutoffs = [int(c) for c in split.get("cutoffs", [])]
        if len(cutoffs) != len(names) - 1 or cutoffs != sorted(cutoffs):
            raise ValueError(f"timestamp split: need {len(names) - 1} increasing cut-offs for "
                             f"splits {names}, got {cutoffs}")
        split = {"method": "timestamp", "names": names, "cutoffs": cutoffs}
    else:
        raise ValueError(f"split method {method!r} is not 'hash' or 'timestamp'")
    if not 0.0 <= float(max_quarantine_rate) <= 1.0:
        raise ValueError(f"max_quarantine_rate {max_quarantine_rate} is not in [0, 1]")
    config = {"log_schema": schema.to_dict(), "teacher_pattern": teacher_pattern,
              "split": split, "max_quarantine_rate": float(max_quarantine_rate)}
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r} is not one of {ENGINES}")
    if teacher_join not in TEACHER_JOINS:
        raise ValueError(f"teacher_join {teacher_join!r} is not one of {TEACHER_JOINS}")
    if engine != "columnar":
        config["engine"] = engine
    if teacher_join != "auto":
        config["teacher_join"] = teacher_join
    if teacher_lookup_max_bytes is not None:
        if int(teacher_lookup_max_bytes) < 0:
            raise ValueError(f"teacher_lookup_max_bytes {teacher_lookup_max_bytes} is negative")
        config["teacher_lookup_max_bytes"] = int(teacher_lookup_max_bytes)
    if num_shards is not None:
        if int(num_shards) < 1:
            raise ValueError(f"num_shards {num_shards} is not positive")
        config["num_shards"] = int(num_shards)
    return config


def split_index(split: dict[str, Any], impression_id: str, timestamp: int | None) -> int:
    """Deterministic split of one row: hash of the impression id, or timestamp cut-offs."""
    if split["method"] == "timestamp":
        return bisect.bisect_right(split["cutoffs"], timestamp)
    bounds = []
    total = 0
    for b in split["buckets"]:
        total += b
        bounds.append(total)
    # sha256 rather than hash(): stable across processes, Python versions and runners.
    bucket = int(hashlib.sha256(impression_id.encode("utf-8")).hexdigest(), 16) % total
    return bisect.bisect_right(bounds, bucket)


# -- Beam pieces -----------------------------------------------------------------------------
def _quarantine(reason, source, row, detail, column=None, value=None, raw=None,
                line=None) -> dict:
    """A quarantine record; `detail` becomes the one-line message naming file/line/column."""
    return {"reason": reason, "source": source, "row": row, "line": line, "column": column,
            "value": logschema.shorten(value),
            "detail": logschema.error_message(source, line, reason, detail, column, value),
            "raw": _jsonable(raw)}


class _ReadAndValidate(beam.DoFn):
    """(file, id source) -> ('good', (id, (source, row, line, record))), 'bad' quarantine
    records and per-file 'counts' (lines_in, header_lines, blank_lines)."""

    def __init__(self, schema_dict: dict):
        self._schema_dict = schema_dict

    def setup(self):
        self._schema = logschema.LogSchema.from_dict(self._schema_dict)

    def process(self, element):
        path, id_source = element
        stats = logschema.FileStats()
        for row, line, raw in logschema.iter_records(self._schema, path, stats):
            try:
                record = logschema.validate_row(self._schema, raw, path, row, id_source)
            except logschema.RowError as err:
                yield beam.pvalue.TaggedOutput("bad", _quarantine(
                    err.reason, path, row, err.detail, err.column, err.value, raw, line))
                continue
            yield (record["impression_id"], (path, row, line, record))
        for name, count in stats.counters().items():
            yield beam.pvalue.TaggedOutput("counts", (name, count))


def _jsonable(raw):
    """A bounded JSON-able copy of a raw row for the quarantine record."""
    if raw is None:
        return None
    if isinstance(raw, logschema.BadRecord):
        return logschema.shorten(raw.text, logschema.MAX_RAW_CHARS)
    if isinstance(raw, dict):
        return {str(k): logschema.shorten(v, logschema.MAX_RAW_CHARS) for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        return [logschema.shorten(v, logschema.MAX_RAW_CHARS) for v in raw]
    return logschema.shorten(raw, logschema.MAX_RAW_CHARS)


class _JoinDedupSplit(beam.DoFn):
    """(id, {'log': [...], 'teacher': [...]}) -> serialized tf.Example tagged by split."""

    def __init__(self, schema_dict: dict, split: dict):
        self._schema_dict = schema_dict
        self._split = split

    def setup(self):
        self._schema = logschema.LogSchema.from_dict(self._schema_dict)

    def process(self, element):
        impression_id, grouped = element
        logs = sorted(grouped["log"], key=lambda x: (x[0], x[1]))
        teacher = list(grouped["teacher"])
        if not logs:
            # Teacher rows without a (valid) log row: a left join drops them, counted.
            yield beam.pvalue.TaggedOutput("counts", ("teacher_rows_unmatched", len(teacher)))
            return
        if teacher:
            yield beam.pvalue.TaggedOutput("counts", ("teacher_rows_joined", len(teacher)))
        # The earliest (file, row) occurrence wins; later copies are logging duplicates.
        first_source, _, first_line, _ = logs[0]
        for source, row, line, _ in logs[1:]:
            yield beam.pvalue.TaggedOutput("bad", _quarantine(
                logschema.DUPLICATE_IMPRESSION_ID, source, row,
                f"impression id first seen at {first_source}, line {first_line}",
                "impression_id", impression_id, line=line))
        source, row, line, record = logs[0]
        if teacher:
            try:
                logit = logschema.check_teacher_logits(teacher)
            except logschema.RowError as err:
                yield beam.pvalue.TaggedOutput("bad", _quarantine(
                    err.reason, source, row, err.detail, err.column, err.value, line=line))
                return
            has_teacher = 1
        else:
            logit, has_teacher = 0.0, 0
        ts = record.get(self._schema.timestamp) if self._schema.timestamp else None
        index = split_index(self._split, impression_id, ts)
        yield beam.pvalue.TaggedOutput(f"split{index}", _to_example(
            self._schema, record, logit, has_teacher).SerializeToString(deterministic=True))


def _to_example(schema: logschema.LogSchema, record: dict, teacher_logit: float,
                has_teacher: int):
    import tensorflow as tf

    feature = {
        "impression_id": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[record["impression_id"].encode("utf-8")])),
        schema.label: tf.train.Feature(int64_list=tf.train.Int64List(value=[record[schema.label]])),
        "teacher_logit": tf.train.Feature(float_list=tf.train.FloatList(value=[teacher_logit])),
        "has_teacher": tf.train.Feature(int64_list=tf.train.Int64List(value=[has_teacher])),
    }
    if schema.timestamp:
        feature[schema.timestamp] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[record[schema.timestamp]]))
    # Missing feature values are left out of the Example (an empty feature), which TFDV
    # counts as missing and the Transform fills in.
    for name in schema.numeric_features:
        v = record[name]
        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(
            value=[] if v is None else [float(v)]))
    for name in schema.categorical_features:
        v = record[name]
        feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[] if v is None else [str(v).encode("utf-8")]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


class _ReadTeacher(beam.DoFn):
    """Teacher parquet file -> (impression_id, logit), 'bad' teacher quarantine records and
    'counts' (teacher_rows_in)."""

    def process(self, path: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = 0
        with logschema.open_file(path) as f:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = {"impression_id", "teacher_logit"} - set(names)
            if missing:
                raise ValueError(f"teacher table {path}: missing columns {sorted(missing)}; "
                                 "expected 'impression_id' and 'teacher_logit'")
            logit_type = pf.schema_arrow.field("teacher_logit").type
            if not (pa.types.is_floating(logit_type) or pa.types.is_integer(logit_type)
                    or pa.types.is_decimal(logit_type) or pa.types.is_null(logit_type)):
                raise ValueError(f"teacher table {path}: column 'teacher_logit' is {logit_type}, "
                                 "not numeric")
            for batch in pf.iter_batches(batch_size=65536,
                                         columns=["impression_id", "teacher_logit"]):
                ids = batch.column(0).to_pylist()
                logits = batch.column(1).to_pylist()
                for iid, logit in zip(ids, logits, strict=True):
                    rows += 1
                    try:
                        yield logschema.validate_teacher_row(iid, logit)
                    except logschema.RowError as err:
                        yield beam.pvalue.TaggedOutput("bad", _quarantine(
                            err.reason, path, rows, err.detail, err.column, err.value,
                            {"impression_id": iid, "teacher_logit": logit}, rows))
        yield beam.pvalue.TaggedOutput("counts", ("teacher_rows_in", rows))


def _glob(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


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
    bad, teacher_bad, counters = _row_graph(p, sources, teacher_files, schema_dict, split,
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


def _row_graph(p, sources, teacher_files, schema_dict, split, split_uris):
    """The row-at-a-time graph: (bad records, teacher bad records, [counters])."""
    read = (p
            | "LogFiles" >> beam.Create(sources)
            # One file per element; reshuffle so files spread over workers.
            | "ReshuffleFiles" >> beam.Reshuffle()
            | "ReadAndValidate" >> beam.ParDo(_ReadAndValidate(schema_dict)).with_outputs(
                "bad", "counts", main="good"))
    if teacher_files:
        teacher = (p
                   | "TeacherFiles" >> beam.Create(teacher_files)
                   | "ReshuffleTeacherFiles" >> beam.Reshuffle()
                   | "ReadTeacher" >> beam.ParDo(_ReadTeacher()).with_outputs(
                       "bad", "counts", main="good"))
        teacher_good, teacher_bad, teacher_counts = teacher.good, teacher.bad, teacher.counts
    else:
        teacher_good = p | "NoTeacher" >> beam.Create([])
        teacher_bad = p | "NoTeacherBad" >> beam.Create([])
        teacher_counts = p | "NoTeacherCounts" >> beam.Create([])
    joined = (
        {"log": read.good, "teacher": teacher_good}
        | "JoinTeacher" >> beam.CoGroupByKey()
        | "DedupAndSplit" >> beam.ParDo(_JoinDedupSplit(schema_dict, split)).with_outputs(
            "bad", "counts", *[f"split{i}" for i in range(len(split["names"]))]))
    bad = (read.bad, joined.bad) | "AllBad" >> beam.Flatten()
    counters = [
        read.good | "CountGood" >> beam.Map(lambda _: ("rows_in", 1)),
        read.bad | "CountBadIn" >> beam.Map(lambda _: ("rows_in", 1)),
        read.counts,
        joined.counts,
        teacher_counts,
    ]
    for i, name in enumerate(split["names"]):
        pc = joined[f"split{i}"]
        _ = (pc
             | f"Shuffle[{name}]" >> beam.Reshuffle()
             | f"Write[{name}]" >> beam.io.WriteToTFRecord(
                 os.path.join(split_uris[name], "data_tfrecord"), file_name_suffix=".gz"))
        counters.append(pc | f"Count[{name}]" >> beam.Map(lambda _, n=name: (f"written_{n}", 1)))
    return bad, teacher_bad, counters


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
