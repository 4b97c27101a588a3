"""The row path of ClickLogExampleGen: one row at a time in Python (engine "rows").

It is the reference the columnar engine is tested against, and the columnar engine sends
each row it cannot decide exactly through `logschema.validate_row` and `_quarantine`
from here, so both write the same quarantine records.

    files --read--> (source, row, line, raw) --validate--> good rows keyed by impression id
                                                        \\-> quarantine (reason code)
    teacher parquet --read--> (impression_id, teacher_logit)   \\-> teacher quarantine
    CoGroupByKey(log, teacher)  # left join; a log id seen >1 times is a duplicate
        -> tf.Example with `teacher_logit`, `has_teacher` -> split by hash(id) or timestamp
"""
from __future__ import annotations

import os

import apache_beam as beam

from components import logschema
from components.click_log_example_gen.config import split_index


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


def row_graph(p, sources, teacher_files, schema_dict, split, split_uris):
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
