"""The click-log contract: a small YAML log-schema and the row validator built on it.

A log-schema says how to read one click-log file and what each column means:

```yaml
format: tsv            # csv | tsv | jsonl | parquet
header: false          # csv/tsv only: the first line names the columns
columns:               # in file order (csv/tsv); by key (jsonl/parquet)
  - {name: label, type: int}
  - {name: I1, type: float}
  - {name: C1, type: string}
label: label           # 0/1 click label; missing or anything else quarantines the row
impression_id: null    # null: derived as "<file basename>:<row number>"
timestamp: null        # optional int64 unix seconds (needed for a timestamp split)
numeric_features: [I1]
categorical_features: [C1]
```

`load_log_schema("criteo")` gives the built-in preset for the Criteo Display Advertising
TSV format (label, I1-I13, C1-C26, no header). `validate_row` turns one raw row into a
typed record or raises `RowError` carrying a stable reason code (see `REASON_CODES`); the
ExampleGen sends such rows to quarantine instead of dropping them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

# Reason codes for quarantined rows. They are stable strings: they become artifact
# property names (`quarantined_<code>`) and the `reason` field of quarantine records.
WRONG_COLUMN_COUNT = "wrong_column_count"
MALFORMED_RECORD = "malformed_record"
UNPARSABLE_NUMBER = "unparsable_number"
NON_FINITE_NUMBER = "non_finite_number"
MISSING_LABEL = "missing_label"
INVALID_LABEL = "invalid_label"
MISSING_IMPRESSION_ID = "missing_impression_id"
INVALID_TIMESTAMP = "invalid_timestamp"
NON_FINITE_TEACHER_LOGIT = "non_finite_teacher_logit"
CONFLICTING_TEACHER_LOGIT = "conflicting_teacher_logit"
DUPLICATE_IMPRESSION_ID = "duplicate_impression_id"

REASON_CODES = (
    WRONG_COLUMN_COUNT,
    MALFORMED_RECORD,
    UNPARSABLE_NUMBER,
    NON_FINITE_NUMBER,
    MISSING_LABEL,
    INVALID_LABEL,
    MISSING_IMPRESSION_ID,
    INVALID_TIMESTAMP,
    NON_FINITE_TEACHER_LOGIT,
    CONFLICTING_TEACHER_LOGIT,
    DUPLICATE_IMPRESSION_ID,
)

FORMATS = ("csv", "tsv", "jsonl", "parquet")
COLUMN_TYPES = ("int", "float", "string")
# Cells that mean "no value" in delimited files (Criteo leaves missing values empty).
_MISSING_CELLS = ("",)


class RowError(ValueError):
    """A row that fails the log-schema; `reason` is one of REASON_CODES."""

    def __init__(self, reason: str, detail: str, column: str | None = None, value: Any = None):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.column = column
        self.value = value


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: str = "string"

    def __post_init__(self):
        if self.type not in COLUMN_TYPES:
            raise ValueError(
                f"log-schema column {self.name!r}: type {self.type!r} is not one of {COLUMN_TYPES}"
            )


@dataclasses.dataclass(frozen=True)
class LogSchema:
    """How to read a click log and which columns are label, id, timestamp and features."""

    format: str
    columns: tuple[Column, ...]
    label: str
    numeric_features: tuple[str, ...] = ()
    categorical_features: tuple[str, ...] = ()
    impression_id: str | None = None
    timestamp: str | None = None
    header: bool = False
    delimiter: str | None = None  # csv: ",", tsv: "\t" unless given

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"log-schema: format {self.format!r} is not one of {FORMATS}")
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"log-schema: duplicate column names {dup}")
        roles = [("label", self.label), ("impression_id", self.impression_id),
                 ("timestamp", self.timestamp)]
        roles += [("numeric_features", n) for n in self.numeric_features]
        roles += [("categorical_features", n) for n in self.categorical_features]
        for role, name in roles:
            if name is not None and name not in names:
                raise ValueError(f"log-schema: {role} names column {name!r}, not in columns {names}")
        for name in self.numeric_features:
            if self.column(name).type == "string":
                raise ValueError(f"log-schema: numeric feature {name!r} has type string")
        overlap = set(self.numeric_features) & set(self.categorical_features)
        if overlap:
            raise ValueError(f"log-schema: columns both numeric and categorical: {sorted(overlap)}")
        reserved = {"teacher_logit", "has_teacher"} & set(names)
        if reserved:
            raise ValueError(f"log-schema: column names {sorted(reserved)} are reserved for the "
                             "teacher join; teacher logits come from the teacher table")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogSchema:
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"log-schema: unknown keys {sorted(unknown)}")
        if "columns" not in d or "format" not in d or "label" not in d:
            raise ValueError("log-schema: 'format', 'columns' and 'label' are required")
        cols = []
        for c in d["columns"]:
            if isinstance(c, str):
                cols.append(Column(c))
            else:
                cols.append(Column(**c))
        d["columns"] = tuple(cols)
        d["numeric_features"] = tuple(d.get("numeric_features") or ())
        d["categorical_features"] = tuple(d.get("categorical_features") or ())
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["columns"] = [dataclasses.asdict(c) for c in self.columns]
        d["numeric_features"] = list(self.numeric_features)
        d["categorical_features"] = list(self.categorical_features)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # -- queries ---------------------------------------------------------------------------
    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def field_delimiter(self) -> str:
        if self.delimiter is not None:
            return self.delimiter
        return "\t" if self.format == "tsv" else ","

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.numeric_features + self.categorical_features


def criteo_schema() -> LogSchema:
    """The Criteo Display Advertising TSV: label, I1-I13 (counts), C1-C26 (hex hashes)."""
    numeric = tuple(f"I{i}" for i in range(1, 14))
    categorical = tuple(f"C{i}" for i in range(1, 27))
    columns = (Column("label", "int"),) + tuple(Column(n, "float") for n in numeric) + tuple(
        Column(n, "string") for n in categorical)
    return LogSchema(format="tsv", header=False, columns=columns, label="label",
                     numeric_features=numeric, categorical_features=categorical)


PRESETS = {"criteo": criteo_schema}


def load_log_schema(spec: str | dict | LogSchema) -> LogSchema:
    """A LogSchema from a preset name, a YAML/JSON file path, a YAML string or a dict."""
    if isinstance(spec, LogSchema):
        return spec
    if isinstance(spec, dict):
        return LogSchema.from_dict(spec)
    if spec in PRESETS:
        return PRESETS[spec]()
    import yaml

    if os.path.exists(spec):
        with open(spec) as f:
            text = f.read()
        where = spec
    else:
        if "\n" not in spec and ":" not in spec:
            raise ValueError(f"log-schema {spec!r}: not a preset {sorted(PRESETS)} and no such file")
        text, where = spec, "<string>"
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"log-schema {where}: expected a mapping, got {type(data).__name__}")
    try:
        return LogSchema.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"log-schema {where}: {err}") from err


# -- row validation --------------------------------------------------------------------------
def _parse_cell(column: Column, value: Any) -> Any:
    """Parses one cell to the column type; None for missing. Raises RowError."""
    if value is None or (isinstance(value, str) and value.strip() in _MISSING_CELLS):
        return None
    if column.type == "string":
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        return str(value)
    if isinstance(value, bool):
        raise RowError(UNPARSABLE_NUMBER, f"column {column.name!r}: boolean {value!r} is not a "
                       f"{column.type}", column.name, value)
    try:
        if column.type == "int":
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return int(value)
            if isinstance(value, int):
                return value
            text = str(value).strip()
            try:
                return int(text)
            except ValueError:
                f = float(text)  # "1.0" is an acceptable int spelling, "1.5" is not
                if not f.is_integer():
                    raise ValueError from None
                return int(f)
        parsed = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RowError(UNPARSABLE_NUMBER, f"column {column.name!r}: cannot parse {value!r} as "
                       f"{column.type}", column.name, value) from None
    if not math.isfinite(parsed):
        raise RowError(NON_FINITE_NUMBER, f"column {column.name!r}: non-finite value {value!r}",
                       column.name, value)
    return parsed


def validate_row(schema: LogSchema, raw: list[str] | dict[str, Any], source: str,
                 row: int) -> dict[str, Any]:
    """Validates one raw row; returns {column: typed value or None} plus `impression_id`.

    `raw` is the list of cells of a csv/tsv line or the mapping of a jsonl/parquet record.
    `source` (file) and `row` (1-based data row) derive the impression id when the schema
    has none: "<basename(source)>:<row>".
    """
    if isinstance(raw, (list, tuple)):
        if len(raw) != len(schema.columns):
            raise RowError(WRONG_COLUMN_COUNT, f"expected {len(schema.columns)} columns, got "
                           f"{len(raw)}", None, len(raw))
        cells = dict(zip(schema.column_names, raw, strict=True))
    elif isinstance(raw, dict):
        cells = {name: raw.get(name) for name in schema.column_names}
    else:
        raise RowError(MALFORMED_RECORD, f"record is a {type(raw).__name__}, not a row")

    label_col = schema.column(schema.label)
    label_raw = cells[schema.label]
    if label_raw is None or (isinstance(label_raw, str) and not label_raw.strip()):
        raise RowError(MISSING_LABEL, f"label column {schema.label!r} is empty", schema.label)
    try:
        label = _parse_cell(dataclasses.replace(label_col, type="int"), label_raw)
    except RowError:
        raise RowError(INVALID_LABEL, f"label {label_raw!r} is not 0 or 1", schema.label,
                       label_raw) from None
    if label not in (0, 1):
        raise RowError(INVALID_LABEL, f"label {label_raw!r} is not 0 or 1", schema.label, label_raw)

    record: dict[str, Any] = {schema.label: label}
    if schema.impression_id is None:
        record["impression_id"] = f"{os.path.basename(source)}:{row}"
    else:
        iid = cells[schema.impression_id]
        if iid is None or not str(iid).strip():
            raise RowError(MISSING_IMPRESSION_ID, f"impression id column {schema.impression_id!r} "
                           "is empty", schema.impression_id)
        record["impression_id"] = str(iid).strip()

    if schema.timestamp is not None:
        ts_raw = cells[schema.timestamp]
        try:
            ts = _parse_cell(Column(schema.timestamp, "int"), ts_raw)
        except RowError:
            ts = None
        if ts is None:
            raise RowError(INVALID_TIMESTAMP, f"timestamp {ts_raw!r} is not an integer",
                           schema.timestamp, ts_raw)
        record[schema.timestamp] = ts

    for name in schema.feature_names:
        record[name] = _parse_cell(schema.column(name), cells[name])
    return record


def check_teacher_logits(values: list[float]) -> float:
    """The single teacher logit of an impression from its teacher-table rows (>= 1)."""
    for v in values:
        if v is None or not math.isfinite(float(v)):
            raise RowError(NON_FINITE_TEACHER_LOGIT, f"teacher logit {v!r} is not finite",
                           "teacher_logit", v)
    distinct = sorted(set(float(v) for v in values))
    if len(distinct) > 1:
        raise RowError(CONFLICTING_TEACHER_LOGIT, f"{len(values)} teacher rows disagree: "
                       f"{distinct[:4]}", "teacher_logit", distinct[:4])
    return distinct[0]


# -- file readers (plain Python: the Beam transforms call them once per file) -----------------
def iter_raw_rows(schema: LogSchema, path: str):
    """Yields (row_number, raw) for every data row of one file; raw is cells or a mapping.

    A jsonl line that is not a JSON object yields (row, `MalformedLine(text)`). Row numbers
    are 1-based over data rows (the header line is not counted).
    """
    if schema.format == "parquet":
        import pyarrow.parquet as pq

        with open_file(path) as f:
            pf = pq.ParquetFile(f)
            missing = [n for n in schema.column_names if n not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{path}: parquet file lacks log-schema columns {missing}")
            row = 0
            for batch in pf.iter_batches(batch_size=8192, columns=list(schema.column_names)):
                for rec in batch.to_pylist():
                    row += 1
                    yield row, rec
        return

    import csv
    import io

    with open_file(path) as raw_file:
        f = io.TextIOWrapper(raw_file, encoding="utf-8", newline="")
        if schema.format == "jsonl":
            row = 0
            for line in f:
                if not line.strip():
                    continue
                row += 1
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = MalformedLine(line.rstrip("\n"))
                if not isinstance(rec, dict):
                    rec = MalformedLine(line.rstrip("\n"))
                yield row, rec
            return
        reader = csv.reader(f, delimiter=schema.field_delimiter, quoting=csv.QUOTE_MINIMAL
                            if schema.format == "csv" else csv.QUOTE_NONE)
        row = 0
        for i, cells in enumerate(reader):
            if i == 0 and schema.header:
                expected = list(schema.column_names)
                if [c.strip() for c in cells] != expected:
                    raise ValueError(f"{path}: header {cells} does not match log-schema columns "
                                     f"{expected}")
                continue
            if not cells:
                continue
            row += 1
            yield row, cells


def open_file(path: str):
    """Binary read handle for a local or remote path (Beam filesystems: gs://, hdfs://, ...)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class MalformedLine(str):
    """A jsonl line that is not a JSON object (kept as text for the quarantine record)."""
