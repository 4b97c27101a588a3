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
impression_id: null    # null: derived as "<file path relative to the input base>:<row>"
timestamp: null        # optional int64 unix seconds (needed for a timestamp split)
numeric_features: [I1]
categorical_features: [C1]
```

`load_log_schema("criteo")` gives the built-in preset for the Criteo Display Advertising
TSV format (label, I1-I13, C1-C26, no header); `synthetic-csv`, `synthetic-jsonl` and
`synthetic-parquet` read the default logs of `matta generate-logs`. `validate_row` turns one raw row into a
typed record or raises `RowError` carrying a stable reason code (see `REASON_CODES`); the
ExampleGen sends such rows to quarantine instead of dropping them. One bad row never fails
a run: every problem inside a data line (encoding, size, quoting, values) quarantines that
line only, and reading goes on with the next physical line.

Reading rules (the dialect)
---------------------------
* Text files (csv, tsv, jsonl) are UTF-8. A line ends at LF; a CR right before the LF
  (CRLF) is dropped, a lone CR is data. A UTF-8 byte-order mark at the start of the file
  is ignored. A line holding invalid UTF-8 is quarantined as `invalid_encoding` (naming
  the cell with the bad bytes when the line can still be split).
* One physical line is one record, in every text format. A quoted csv field may not span
  lines: a line that ends inside a quoted field is quarantined as `unterminated_quote`
  and the next line is read as a record of its own, so one bad quote costs one line.
* csv (RFC 4180 on a single line): cells are separated by the delimiter (default `,`);
  a cell is either unquoted (it may not contain `"`) or wholly quoted, `"..."`, with `""`
  for a literal quote; text between a closing quote and the next delimiter, or a `"` in
  an unquoted cell, is `malformed_record`. tsv: cells are separated by the delimiter
  (default TAB) and quotes are ordinary characters (no quoting, no escapes).
* A csv/tsv line that is empty (after dropping the line ending) is blank; a jsonl line
  of only whitespace is blank. Blank lines are skipped and counted (`blank_lines`), they
  are neither rows nor quarantined. With `header: true` line 1 is the header; it must
  name the schema's columns in order (surrounding spaces ignored) or the file fails.
* A line longer than `MAX_LINE_BYTES` (16 MiB) is `line_too_large`; a cell (csv/tsv cell,
  jsonl/parquet string value) longer than `MAX_CELL_BYTES` (128 KiB of UTF-8) is
  `cell_too_large`.
* jsonl: each line is one JSON object; a line that is not valid JSON or not an object is
  `malformed_record`. Keys not in the schema are ignored, absent keys are missing values.
* parquet: one row is one record; the file must have every schema column.
* Rows are numbered 1.. over data rows (header and blank lines excluded); quarantine
  records carry that `row` and the physical `line` (1-based, header included; for
  Parquet files both are the record number).
* A derived impression id is `<path of the file relative to the input base, with />:<row>`
  (just the base name when the file is directly in the base), so `day=1/part-0.tsv` and
  `day=2/part-0.tsv` give distinct ids.

Values
------
* Missing: a null (JSON null, Parquet null) or an empty cell. Nothing else: a cell of
  spaces is not missing (it is a string value, an unparsable number or an invalid label).
* Numbers are strict ASCII decimal: an optional sign, digits with an optional `.` and
  fraction (or `.` and digits), an optional exponent `e`/`E` with optional sign and
  digits. No surrounding whitespace, no `_` separators, no non-ASCII digits, no hex:
  `" 1"`, `"1_000"`, `"١٢"`, `"0x10"` are `unparsable_number`. Leading zeros are fine.
* Every number becomes float32 in the tf.Example, so a value that is not finite in
  float32 is `non_finite_number`: `nan`, `inf`, `infinity` (any case, any sign; JSON
  `NaN`/`Infinity`) and magnitudes that round to infinity in float32 (`1e39`,
  `-3.5e38`). Int columns take integral values (`3`, `3.0`, `3e2`; not `3.5`). The label
  must be 0 or 1 (`1.0` is fine); the timestamp an integer within int64.
* JSON/Parquet native numbers follow the same rules (booleans are not numbers).
* Strings are taken verbatim (no trimming); impression ids too, but an id of only
  whitespace is `missing_impression_id`.
* Teacher table (Parquet): `impression_id` (null or blank -> the teacher row is
  quarantined as `null_teacher_id`, a binary id that is not UTF-8 as `invalid_encoding`;
  both count in `teacher_rows_invalid`) and a numeric `teacher_logit` column (a value that
  is null, NaN, inf or outside float32 -> the joined log row is
  `non_finite_teacher_logit`; a non-numeric column type fails the run).
"""
from __future__ import annotations

import dataclasses
import decimal
import json
import math
import os
import re
from typing import Any

from matta_tf.contract import (
    CLICK_PROB,
    IMPRESSION_ID,
    LABEL,
    NON_FEATURE_COLUMNS,
    TEACHER_COLUMNS,
    TIMESTAMP,
)

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
INVALID_ENCODING = "invalid_encoding"
CELL_TOO_LARGE = "cell_too_large"
LINE_TOO_LARGE = "line_too_large"
UNTERMINATED_QUOTE = "unterminated_quote"

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
    INVALID_ENCODING,
    CELL_TOO_LARGE,
    LINE_TOO_LARGE,
    UNTERMINATED_QUOTE,
)

# Reason codes for teacher-table rows that cannot be joined at all (counted apart from the
# log rows: `teacher_quarantined_<code>`, summed in `teacher_rows_invalid`).
NULL_TEACHER_ID = "null_teacher_id"
TEACHER_REASON_CODES = (NULL_TEACHER_ID, INVALID_ENCODING)  # the latter: a binary id, not UTF-8

FORMATS = ("csv", "tsv", "jsonl", "parquet")
COLUMN_TYPES = ("int", "float", "string")

# Size limits. 128 KiB is Python csv's default field limit, far above any real log cell.
MAX_CELL_BYTES = 128 * 1024
MAX_LINE_BYTES = 16 * 1024 * 1024
# The smallest magnitude that rounds to infinity in float32 (halfway between FLT_MAX and
# 2**128; ties go to the even neighbour, 2**128): |x| < FLOAT32_LIMIT <=> float32(x) finite.
FLOAT32_LIMIT = 2.0**128 - 2.0**103
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# How much of a value / raw line an error message or quarantine record repeats.
MAX_REPORTED_CHARS = 120
MAX_RAW_CHARS = 4096


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
        reserved = set(TEACHER_COLUMNS) & set(names)
        if reserved:
            raise ValueError(f"log-schema: column names {sorted(reserved)} are reserved for the "
                             "teacher join; teacher logits come from the teacher table")
        # The serving side drops these names from the raw features (matta_tf.contract).
        reserved = set(NON_FEATURE_COLUMNS) & set(self.feature_names)
        if reserved:
            raise ValueError(f"log-schema: features {sorted(reserved)} have reserved names that are "
                             f"never model inputs (reserved: {list(NON_FEATURE_COLUMNS)})")

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


def synthetic_schema(fmt: str = "parquet", num_numeric: int = 13, num_categorical: int = 26) -> LogSchema:
    """The logs `matta generate-logs` writes (matta_tf.datasets): impression_id, timestamp,
    label, I1..In (float), C1..Cm (string), click_prob (ground truth, not a feature). csv
    has a header line; jsonl/parquet are read by key, so an inline `teacher_logit` is
    ignored there. A csv written without --teacher-out has a `teacher_logit` column, a
    name reserved for the teacher join: write such logs with --teacher-out."""
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ValueError(f"synthetic logs are csv, jsonl or parquet, not {fmt!r}")
    numeric = tuple(f"I{i}" for i in range(1, num_numeric + 1))
    categorical = tuple(f"C{i}" for i in range(1, num_categorical + 1))
    columns = ((Column(IMPRESSION_ID, "string"), Column(TIMESTAMP, "int"), Column(LABEL, "int"))
               + tuple(Column(n, "float") for n in numeric) + tuple(Column(n, "string") for n in categorical)
               + (Column(CLICK_PROB, "float"),))
    return LogSchema(format=fmt, header=fmt == "csv", columns=columns, label=LABEL,
                     impression_id=IMPRESSION_ID, timestamp=TIMESTAMP,
                     numeric_features=numeric, categorical_features=categorical)


PRESETS = {"criteo": criteo_schema,
           "synthetic-csv": lambda: synthetic_schema("csv"),
           "synthetic-jsonl": lambda: synthetic_schema("jsonl"),
           "synthetic-parquet": lambda: synthetic_schema("parquet")}


def preset_name(schema: LogSchema) -> str | None:
    """The name of the preset equal to `schema`, if any."""
    for name, make in PRESETS.items():
        if make() == schema:
            return name
    return None


def presets_that_read(path: str, exclude: LogSchema | None = None, sample_rows: int = 50) -> list[str]:
    """Presets (other than `exclude`) under which most of the first `sample_rows` data rows
    of `path` are valid: the candidates for "did you mean --log-schema X?"."""
    out = []
    for name, make in PRESETS.items():
        schema = make()
        if schema == exclude:
            continue
        read = valid = 0
        try:
            for row, _, raw in iter_records(schema, path):
                read += 1
                try:
                    validate_row(schema, raw, path, row, os.path.basename(path))
                    valid += 1
                except RowError:
                    pass
                if read >= sample_rows:
                    break
        except (ValueError, OSError):  # the file is not this preset's format at all
            continue
        if valid and 2 * valid >= read:
            out.append(name)
    return out


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


# -- messages ---------------------------------------------------------------------------------
def _utf8_clean(text: str) -> bool:
    """True if `text` encodes as UTF-8 (no lone surrogates from bad bytes or JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shorten(value: Any, limit: int = MAX_REPORTED_CHARS) -> Any:
    """A bounded, JSON-able copy of a value for messages and quarantine records.

    Strings longer than `limit` are cut and say how long they were; undecodable bytes
    show as `\\xNN`.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        if not _utf8_clean(value):
            try:
                value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                value = value.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(value) > limit:
            return f"{value[:limit]}...[{len(value)} chars]"
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return shorten(str(value), limit)


def error_message(source: str, line: int | None, reason: str, detail: str,
                  column: str | None = None, value: Any = None) -> str:
    """One line: `<file>, line <n>, column <c>: <reason>: <detail> (value <v>)`."""
    where = source if line is None else f"{source}, line {line}"
    if column is not None:
        where += f", column {column!r}"
    text = f"{where}: {reason}: {detail}"
    if value is not None:
        text += f" (value {shorten(value)!r})"
    return text.replace("\r", "\\r").replace("\n", "\\n")


# -- values -----------------------------------------------------------------------------------
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_MAX_FLOAT32_DIGITS = 39  # FLOAT32_LIMIT < 10**39: an integer with more digits overflows


def is_float32_finite(x: float | int) -> bool:
    """True if x is a finite number that stays finite when stored as float32."""
    if isinstance(x, float) and not math.isfinite(x):
        return False
    return -FLOAT32_LIMIT < x < FLOAT32_LIMIT


def decode_cell(value: bytes, column: str | None = None) -> str:
    """UTF-8 text of a binary cell (Parquet binary column); RowError invalid_encoding."""
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as err:
        raise RowError(INVALID_ENCODING, f"invalid UTF-8 byte {value[err.start]:#04x} at byte "
                       f"offset {err.start} of the cell", column, value) from None


def parse_number(value: Any, integer: bool = False, column: str | None = None) -> int | float:
    """A strictly parsed number (see the module doc), finite in float32; else RowError.

    Text: optional sign, ASCII digits, optional fraction and exponent, nothing else.
    Native ints/floats/Decimals (JSON, Parquet) are taken as they are; booleans are not
    numbers. `integer=True` returns an int and rejects non-integral values.
    """
    if isinstance(value, (bytes, bytearray)):
        value = decode_cell(value, column)
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            if len(value.lstrip("+-").lstrip("0")) > _MAX_FLOAT32_DIGITS:
                raise RowError(NON_FINITE_NUMBER, "out of float32 range", column, value)
            x: int | float = int(value)
        elif _NUMBER.fullmatch(value):
            x = float(value)
        elif _NON_FINITE.fullmatch(value):
            raise RowError(NON_FINITE_NUMBER, "not a finite number", column, value)
        else:
            raise RowError(UNPARSABLE_NUMBER, "not an ASCII decimal number (optional sign, "
                           "digits, '.', exponent; no spaces or '_')", column, value)
    elif isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal)):
        raise RowError(UNPARSABLE_NUMBER, f"a {type(value).__name__} is not a number", column,
                       value)
    else:
        x = value if isinstance(value, int) else float(value)
    if not is_float32_finite(x):
        raise RowError(NON_FINITE_NUMBER, "not finite in float32 (|x| >= 3.4028235e38, nan or "
                       "inf)", column, value)
    if integer:
        if isinstance(x, float):
            if not x.is_integer():
                raise RowError(UNPARSABLE_NUMBER, "not an integer", column, value)
            return int(x)
        return x
    return float(x)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, (str, bytes)) and len(value) == 0)


def _parse_cell(column: Column, value: Any) -> Any:
    """Parses one cell to the column type; None for missing. Raises RowError."""
    if _is_missing(value):
        return None
    if column.type == "string":
        if isinstance(value, (bytes, bytearray)):
            return decode_cell(value, column.name)
        return value if isinstance(value, str) else str(value)
    return parse_number(value, integer=column.type == "int", column=column.name)


def check_cell_size(value: Any, column: str | None) -> None:
    """RowError cell_too_large if a str/bytes value is over MAX_CELL_BYTES of UTF-8."""
    if not isinstance(value, (str, bytes)) or len(value) <= MAX_CELL_BYTES // 4:
        return  # a str of n characters is at most 4n bytes of UTF-8
    size = len(value) if isinstance(value, bytes) else len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CELL_BYTES:
        raise RowError(CELL_TOO_LARGE, f"{size} bytes, over the {MAX_CELL_BYTES}-byte cell limit",
                       column, value)


def validate_row(schema: LogSchema, raw: list[str] | dict[str, Any], source: str,
                 row: int, id_source: str | None = None) -> dict[str, Any]:
    """Validates one raw row; returns {column: typed value or None} plus `impression_id`.

    `raw` is the list of cells of a csv/tsv line, the mapping of a jsonl/parquet record, or
    a `BadRecord` from the reader (its error is raised). `source` (file) and `row` (1-based
    data row) derive the impression id when the schema has none: "<id_source>:<row>", where
    `id_source` defaults to the base name of `source` (the ExampleGen passes the path
    relative to its input base, see `relative_source`).
    """
    names = schema.column_names
    if isinstance(raw, BadRecord):
        err = raw.error
        raise RowError(err.reason, err.detail, err.column, err.value)
    if isinstance(raw, (list, tuple)):
        if len(raw) != len(names):
            raise RowError(WRONG_COLUMN_COUNT, f"expected {len(names)} columns, got "
                           f"{len(raw)}", None, len(raw))
        if raw and max(map(len, raw)) > MAX_CELL_BYTES // 4:
            for name, cell in zip(names, raw, strict=True):
                check_cell_size(cell, name)
        cells = dict(zip(names, raw, strict=True))
    elif isinstance(raw, dict):
        cells = {name: raw.get(name) for name in names}
        for name, cell in cells.items():
            check_cell_size(cell, name)
    else:
        raise RowError(MALFORMED_RECORD, f"record is a {type(raw).__name__}, not a row")

    label_raw = cells[schema.label]
    if _is_missing(label_raw):
        raise RowError(MISSING_LABEL, f"label column {schema.label!r} is empty", schema.label)
    try:
        label = parse_number(label_raw, integer=True, column=schema.label)
    except RowError as err:
        if err.reason == INVALID_ENCODING:
            raise
        label = None
    if label not in (0, 1):
        raise RowError(INVALID_LABEL, "the label is not 0 or 1", schema.label, label_raw)

    record: dict[str, Any] = {schema.label: label}
    if schema.impression_id is None:
        prefix = os.path.basename(source) if id_source is None else id_source
        record["impression_id"] = f"{prefix}:{row}"
    else:
        iid = cells[schema.impression_id]
        if isinstance(iid, (bytes, bytearray)):
            iid = decode_cell(iid, schema.impression_id)
        if iid is not None and not isinstance(iid, str):
            iid = str(iid)
        if iid is None or not iid.strip():
            raise RowError(MISSING_IMPRESSION_ID, f"impression id column {schema.impression_id!r} "
                           "is empty", schema.impression_id, iid)
        record["impression_id"] = iid

    if schema.timestamp is not None:
        ts_raw = cells[schema.timestamp]
        try:
            ts = None if _is_missing(ts_raw) else parse_number(ts_raw, True, schema.timestamp)
        except RowError as err:
            if err.reason == INVALID_ENCODING:
                raise
            ts = None
        if ts is None or not INT64_MIN <= ts <= INT64_MAX:
            raise RowError(INVALID_TIMESTAMP, "the timestamp is not an int64 integer",
                           schema.timestamp, ts_raw)
        record[schema.timestamp] = ts

    for name in schema.feature_names:
        record[name] = _parse_cell(schema.column(name), cells[name])
    return record


def check_teacher_logits(values: list[float]) -> float:
    """The single teacher logit of an impression from its teacher-table rows (>= 1).

    Every logit must be finite in float32 (non_finite_teacher_logit) and all must agree
    (conflicting_teacher_logit)."""
    for v in values:
        if v is None or isinstance(v, bool) or not is_float32_finite(float(v)):
            raise RowError(NON_FINITE_TEACHER_LOGIT, "the teacher logit is not finite in float32",
                           "teacher_logit", v)
    distinct = sorted(set(float(v) for v in values))
    if len(distinct) > 1:
        raise RowError(CONFLICTING_TEACHER_LOGIT, f"{len(values)} teacher rows disagree: "
                       f"{distinct[:4]}", "teacher_logit", distinct[:4])
    return distinct[0]


def validate_teacher_row(impression_id: Any, logit: Any) -> tuple[str, float]:
    """(id, logit) of one teacher-table row; RowError (TEACHER_REASON_CODES) if the row has
    no usable id. A null logit becomes NaN (the joined log row is then quarantined)."""
    if isinstance(impression_id, (bytes, bytearray)):
        impression_id = decode_cell(impression_id, "impression_id")
    if impression_id is not None and not isinstance(impression_id, str):
        impression_id = str(impression_id)
    if impression_id is None or not impression_id.strip():
        raise RowError(NULL_TEACHER_ID, "the teacher row has no impression id", "impression_id",
                       impression_id)
    return impression_id, (float("nan") if logit is None else float(logit))


def relative_source(path: str, base: str | None) -> str:
    """`path` relative to the directory `base`, with `/` separators (the file part of a
    derived impression id); the base name if `base` is None or does not contain `path`."""
    if base:
        prefix = base.rstrip("/") + "/"
        if path.startswith(prefix):
            return path[len(prefix):]
        if "://" not in path and "://" not in base:
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
            if rel != os.curdir and not rel.startswith(os.pardir):
                return rel.replace(os.sep, "/")
    return os.path.basename(path)


# -- line splitting (pure functions on one physical line) ------------------------------------
class BadRecord:
    """A data line that could not be turned into a row; `validate_row` raises its error."""

    __slots__ = ("error", "text")

    def __init__(self, error: RowError, text: str):
        self.error = error
        self.text = text

    def __repr__(self):
        return f"BadRecord({self.error.reason!r}, {shorten(self.text)!r})"


def _column_label(names, index: int) -> str:
    return names[index] if index < len(names) else f"#{index + 1}"


def _split_quoted(text: str, delimiter: str) -> list[str]:
    """Splits one csv line with RFC 4180 quoting; RowError(column=cell index) if malformed."""
    cells: list[str] = []
    n, i, dlen = len(text), 0, len(delimiter)
    while True:
        k = len(cells)
        if text.startswith('"', i):
            parts, j = [], i + 1
            while True:
                q = text.find('"', j)
                if q < 0:
                    raise RowError(UNTERMINATED_QUOTE, f"the line ends inside the quoted cell "
                                   f"opened at character {i + 1} (a quoted cell may not span "
                                   "lines)", k, text[i:])
                parts.append(text[j:q])
                if text.startswith('"', q + 1):
                    parts.append('"')
                    j = q + 2
                    continue
                j = q + 1
                break
            cells.append("".join(parts))
            if j == n:
                return cells
            if not text.startswith(delimiter, j):
                raise RowError(MALFORMED_RECORD, f"text after the closing quote at character "
                               f"{j}", k, text[i:j + 20])
            i = j + dlen
        else:
            end = text.find(delimiter, i)
            cell = text[i:] if end < 0 else text[i:end]
            if '"' in cell:
                raise RowError(MALFORMED_RECORD, "a quote inside an unquoted cell (quote the "
                               "whole cell and double the quote)", k, cell)
            cells.append(cell)
            if end < 0:
                return cells
            i = end + dlen


def split_line(text: str, delimiter: str, quoting: bool) -> list[str]:
    """Cells of one csv (quoting=True) or tsv (quoting=False) line; RowError with the cell
    index as `column` for unterminated_quote / malformed_record."""
    if not quoting or '"' not in text:
        return text.split(delimiter)
    # Fast path for the common shape (e.g. pyarrow's writer quotes every string): quoted
    # cells without quotes or delimiters inside. Anything else takes the full parser.
    cells = []
    for cell in text.split(delimiter):
        if cell.startswith('"'):
            if len(cell) < 2 or not cell.endswith('"') or '"' in cell[1:-1]:
                return _split_quoted(text, delimiter)
            cells.append(cell[1:-1])
        elif '"' in cell:
            return _split_quoted(text, delimiter)
        else:
            cells.append(cell)
    return cells


def parse_delimited_line(schema: LogSchema, data: bytes) -> list[str] | BadRecord:
    """Cells of one csv/tsv data line (bytes without the line ending), or a BadRecord."""
    quoting = schema.format == "csv"
    delimiter = schema.field_delimiter
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(_encoding_error(schema, data, err, delimiter, quoting),
                         data.decode("utf-8", "backslashreplace"))
    try:
        return split_line(text, delimiter, quoting)
    except RowError as err:
        err.column = _column_label(schema.column_names, err.column)
        return BadRecord(err, text)


def _encoding_error(schema, data: bytes, err: UnicodeDecodeError, delimiter, quoting) -> RowError:
    detail = f"invalid UTF-8 byte {data[err.start]:#04x} at byte offset {err.start} of the line"
    column, value = None, data[max(0, err.start - 20):err.start + 20]
    text = data.decode("utf-8", "surrogateescape")
    try:
        cells = split_line(text, delimiter, quoting)
    except RowError:
        cells = []
    for k, cell in enumerate(cells):
        if not _utf8_clean(cell):
            column, value = _column_label(schema.column_names, k), cell
            break
    return RowError(INVALID_ENCODING, detail, column, value)


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json_line(data: bytes) -> dict[str, Any] | BadRecord:
    """The object of one jsonl line (bytes without the line ending), or a BadRecord."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        detail = f"invalid UTF-8 byte {data[err.start]:#04x} at byte offset {err.start} of the line"
        column, value = None, data[max(0, err.start - 20):err.start + 20]
        try:
            obj = json.loads(data.decode("utf-8", "surrogateescape"))
        except (ValueError, RecursionError):
            obj = None
        for key, v in (obj.items() if isinstance(obj, dict) else ()):
            if isinstance(v, str) and not _utf8_clean(v):
                column, value = key, v
                break
        return BadRecord(RowError(INVALID_ENCODING, detail, column, value),
                         data.decode("utf-8", "backslashreplace"))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        return BadRecord(RowError(MALFORMED_RECORD, f"not valid JSON: {err.msg} at character "
                                  f"{err.pos + 1}"), text)
    except (ValueError, RecursionError) as err:
        return BadRecord(RowError(MALFORMED_RECORD, f"not valid JSON: {shorten(str(err))}"), text)
    if not isinstance(obj, dict):
        return BadRecord(RowError(MALFORMED_RECORD, f"a JSON {type(obj).__name__} is not an "
                                  "object"), text)
    if _SURROGATE_ESCAPE.search(text):  # "\udcff" escapes decode to text that is not UTF-8
        for key, v in obj.items():
            if isinstance(v, str) and not _utf8_clean(v):
                return BadRecord(RowError(INVALID_ENCODING, "a \\u escape that is a lone "
                                          "surrogate, not a character", key, v), text)
    return obj


# -- file readers (plain Python: the Beam transforms call them once per file) -----------------
@dataclasses.dataclass
class FileStats:
    """Physical accounting of one file: lines == header_lines + blank_lines + rows."""

    lines: int = 0
    header_lines: int = 0
    blank_lines: int = 0
    rows: int = 0

    def counters(self) -> dict[str, int]:
        return {"lines_in": self.lines, "header_lines": self.header_lines,
                "blank_lines": self.blank_lines}


_BOM = b"\xef\xbb\xbf"


def iter_lines(f, max_bytes: int = MAX_LINE_BYTES):
    """(content, size) per physical line of a binary stream: content without the LF/CRLF
    ending, or None if the line is longer than max_bytes (it is skipped to its end)."""
    while True:
        data = f.readline(max_bytes + 1)
        if not data:
            return
        if data.endswith(b"\n"):
            data = data[:-2] if data.endswith(b"\r\n") else data[:-1]
        elif len(data) > max_bytes:
            size = len(data)
            while True:
                chunk = f.readline(1 << 20)
                size += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    break
            yield None, size
            continue
        yield data, len(data)


def iter_records(schema: LogSchema, path: str, stats: FileStats | None = None):
    """Yields (row, line, raw) for every data row of one file.

    raw is a list of cells (csv/tsv), a mapping (jsonl/parquet) or a `BadRecord` (a line
    that cannot be read as a row). `row` numbers data rows from 1; `line` is the physical
    line (parquet: the record number). `stats` (if given) counts lines, header and blank
    lines. A header that does not match the schema fails the file (ValueError).
    """
    stats = FileStats() if stats is None else stats
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
                    stats.lines += 1
                    stats.rows += 1
                    yield row, row, rec
        return

    import io

    jsonl = schema.format == "jsonl"
    with open_file(path) as raw_file:
        f = raw_file if isinstance(raw_file, io.BufferedReader) else io.BufferedReader(raw_file)
        line = row = 0
        for data, size in iter_lines(f):
            line += 1
            stats.lines += 1
            if line == 1 and data is not None and data.startswith(_BOM):
                data = data[len(_BOM):]
            if line == 1 and schema.header and not jsonl:
                stats.header_lines += 1
                _check_header(schema, path, data)
                continue
            if data is not None and (not data or (jsonl and data.isspace())):
                stats.blank_lines += 1
                continue
            row += 1
            stats.rows += 1
            if data is None:
                raw: Any = BadRecord(RowError(LINE_TOO_LARGE, f"{size} bytes, over the "
                                              f"{MAX_LINE_BYTES}-byte line limit"), "")
            elif jsonl:
                raw = parse_json_line(data)
            else:
                raw = parse_delimited_line(schema, data)
            yield row, line, raw


def _check_header(schema: LogSchema, path: str, data: bytes | None) -> None:
    expected = list(schema.column_names)
    if data is None:
        raise ValueError(f"{path}, line 1: the header is over {MAX_LINE_BYTES} bytes")
    cells = parse_delimited_line(schema, data)
    if isinstance(cells, BadRecord):
        raise ValueError(error_message(path, 1, cells.error.reason, "unreadable header: "
                                       + cells.error.detail, cells.error.column, cells.error.value))
    if [c.strip() for c in cells] != expected:
        raise ValueError(f"{path}, line 1: header {shorten(cells, 500)} does not match the "
                         f"log-schema columns {expected}")


def iter_raw_rows(schema: LogSchema, path: str):
    """Yields (row_number, raw) for every data row of one file (see `iter_records`)."""
    for row, _, raw in iter_records(schema, path):
        yield row, raw


def open_file(path: str):
    """Binary read handle for a local or remote path (Beam filesystems: gs://, hdfs://, ...)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
