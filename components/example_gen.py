"""ClickLogExampleGen: click logs + stored teacher logits -> validated, split tf.Examples.

A custom file-based TFX ExampleGen on Apache Beam (it reuses TFX's FileBasedDriver, so
`{SPAN}`/`{VERSION}`/`{YYYY}{MM}{DD}` input patterns, range configs and input fingerprints
work as for CsvExampleGen). The code is laid out like TFX's `csv_example_gen/`, in the
package `components.click_log_example_gen`: `component` (ClickLogExampleGen, its spec,
the QuarantinedRows artifact), `executor` (ClickLogExecutor, the Beam graph, accounting),
`driver` (span/version resolution, teacher fingerprint), `config` (executor config,
splits), `columnar` and `rows` (the two engines). This module re-exports their public
names, so `from components.example_gen import ClickLogExampleGen, QuarantinedRows,
run_click_log_graph, accounting, ...` keeps working. Two engines build the same outputs:

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
from components.click_log_example_gen.component import (  # noqa: F401
    ClickLogExampleGen,
    ClickLogExampleGenSpec,
    QuarantinedRows,
)
from components.click_log_example_gen.config import (  # noqa: F401
    CLICK_LOG_CONFIG_KEY,
    COUNTS_FILE,
    ENGINES,
    QUARANTINE_FILE,
    QUARANTINE_KEY,
    TEACHER_JOINS,
    TEACHER_QUARANTINE_FILE,
    make_click_log_config,
    split_index,
)
from components.click_log_example_gen.driver import (  # noqa: F401
    ClickLogDriver,
    resolve_teacher_pattern,
)
from components.click_log_example_gen.executor import (  # noqa: F401
    ClickLogExecutor,
    _glob,
    _read_counts,
    _runs_locally,
    accounting,
    check_quarantine_rate,
    run_click_log_graph,
)
from components.click_log_example_gen.rows import (  # noqa: F401
    _JoinDedupSplit,
    _jsonable,
    _quarantine,
    _ReadAndValidate,
    _ReadTeacher,
    _to_example,
)

__all__ = [
    "CLICK_LOG_CONFIG_KEY", "COUNTS_FILE", "ENGINES", "QUARANTINE_FILE", "QUARANTINE_KEY",
    "TEACHER_JOINS", "TEACHER_QUARANTINE_FILE", "ClickLogDriver", "ClickLogExampleGen",
    "ClickLogExampleGenSpec", "ClickLogExecutor", "QuarantinedRows", "accounting",
    "check_quarantine_rate", "make_click_log_config", "resolve_teacher_pattern",
    "run_click_log_graph", "split_index",
]
