"""The columnar ingestion path of ClickLogExampleGen (the default engine).

The row path (`rows`) reads, validates, joins and encodes one row at a time in Python.
This path does the same work on Arrow record batches and gives the same examples and the
same quarantine records (tests/test_examplegen_columnar.py compares the two):

    file --chunks of whole lines--> pyarrow CSV/JSON reader (or Parquet batches)
         --pyarrow.compute masks--> good rows  (one Arrow batch per chunk, keyed by shard)
                                 \\-> suspect rows -> the row path, one line each
    GroupByKey(shard)  # a few batches per chunk, never one element per row
         -> dedup (earliest file/row wins) -> teacher join (keyed lookup)
         -> tfx_bsl RecordBatchToExamples -> gzipped TFRecords, one file per shard and split

Why the result is the row path's: the vectorised checks only ever *accept* a row when
the row path provably accepts it with the same values; anything else (a number it does
not recognise, an odd label, a line it cannot read the same way) is "suspect" and goes to
the row path (`components.logschema`), which decides and writes the quarantine record.
Lines pyarrow might read differently from the logschema dialect never reach pyarrow:

* csv/tsv: blank lines, a CR that is not part of a CRLF ending, a UTF-8 BOM at the start
  of a line, invalid UTF-8, lines over MAX_CELL_BYTES (a cell can only be too large in a
  longer line), and (csv) quotes that are not whole cells `"..."` without inner quotes:
  every quote must pair with the next quote on its line, the first of a pair opening a
  cell and the second closing it.
* jsonl: blank or whitespace-only lines, the above byte checks, `-0` (an int zero, which
  pyarrow would read as float -0.0) and surrogate `\\u` escapes.
* If pyarrow still fails on (or returns a different number of rows for) a group of
  lines, the group is halved until the failing lines are alone; those take the row path.
  So a hostile byte costs speed, never data.

Numbers keep the strict contract: text cells are matched with the logschema grammar
(RE2 via pyarrow.compute) and cast by Arrow (correctly rounded, like float()); a value
that is not finite in float32, an integral check that fails, an id that might be blank
or a label other than "0"/"1" is suspect.

The teacher join is a keyed lookup: either every teacher row is grouped once into a
`TeacherIndex` built from a Beam side input (tables up to `teacher_lookup_max_bytes` of
Parquet), or (bigger tables) teacher rows are keyed by the same shard hash as log rows
and CoGroupByKey'd with them, so each shard only holds its part of the table.

Outputs: each shard writes `data_tfrecord-<shard>-of-<shards>.gz` in every split
directory (gzip level 1; framing and compression on a background thread per file),
through a temporary name renamed into place, so a retried shard rewrites the same files.
Readers and shards write their quarantine records to part files; the last step
concatenates them (in file, then shard order) into `quarantine.jsonl` /
`teacher_quarantine.jsonl` and sums the per-file / per-shard counts. The counts come
from the readers (lines, rows) and the shards (written), independently, so the
executor's accounting identities still check that nothing was lost in between.

What is not columnar: a multi-character (or non-ASCII, quote, line-break) delimiter
reads every line with the row path; one file is read by one worker (no splits of a file).
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import re
import struct
import uuid
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components import logschema as ls
from components.click_log_example_gen.rows import _quarantine

CHUNK_BYTES = 4 << 20  # bytes of whole lines handed to pyarrow at a time
PARQUET_BATCH_ROWS = 65536
ENCODE_BATCH_ROWS = 8192  # rows per encode call (and per compression job)
SHARD_BYTES = 256 << 20  # input bytes per dedup/join/write shard (at least 1 shard)
TEACHER_LOOKUP_MAX_BYTES = 64 << 20  # teacher Parquet bytes held as one in-memory index
GZIP_LEVEL = 1  # zlib level of the TFRecord files (the row path's Beam sink uses 6)
TEACHER_JOINS = ("auto", "lookup", "shuffle")

# Internal column names of the good-row batches.
ID, SRC, ROW, LINE, SPLIT, SHARD, LABEL, TS = (
    "__id", "__src", "__row", "__line", "__split", "__shard", "__label", "__ts")

_BOM = b"\xef\xbb\xbf"
_LIMIT = ls.FLOAT32_LIMIT
_NUMBER_RE = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?$"
_INT_SHAPED_RE = r"^[+-]?[0-9]+$"
_INT64_TEXT_RE = r"^[+-]?[0-9]{1,18}$"  # always within int64
_INT15_RE = r"^[+-]?[0-9]{1,15}$"  # exact in float64 too
_VISIBLE_ASCII_RE = r"[!-~]"  # a character Python's str.strip() keeps
_MAX_NUMBER_CHARS = 100
_JSON_INT_ZERO = re.compile(rb"-0(?![0-9.eE])")
_JSON_SURROGATE = re.compile(rb"\\u[dD][89abAB]")
_JSON_SPACE = frozenset(b" \t\r\x0b\x0c")


def _num(i: int) -> str:
    return f"__n{i}"


def _cat(i: int) -> str:
    return f"__c{i}"


def _np(mask) -> np.ndarray:
    """A numpy bool array from a pyarrow boolean array/chunked array (nulls -> False)."""
    if isinstance(mask, np.ndarray):
        return mask
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _array(col) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    return col


class Plan:
    """What both stages need: the schema, split, shard count and source files."""

    def __init__(self, schema_dict: dict, split: dict, num_shards: int = 1):
        self.schema_dict = schema_dict
        self.schema = s = ls.LogSchema.from_dict(schema_dict)
        self.split = split
        self.num_shards = max(1, int(num_shards))
        fields = [(ID, pa.string()), (SRC, pa.int32()), (ROW, pa.int64()), (LINE, pa.int64()),
                  (SPLIT, pa.int32()), (SHARD, pa.int32()), (LABEL, pa.int64())]
        if s.timestamp:
            fields.append((TS, pa.int64()))
        fields += [(_num(i), pa.float32()) for i in range(len(s.numeric_features))]
        fields += [(_cat(i), pa.string()) for i in range(len(s.categorical_features))]
        self.batch_schema = pa.schema(fields)
        if split["method"] == "hash":
            self._bounds = np.cumsum(split["buckets"]).astype(np.int64)
            self._total = int(sum(split["buckets"]))
        else:
            self._cutoffs = list(split["cutoffs"])
        # pyarrow's readers take a one-byte delimiter (not a quote or line break); other
        # delimiters read every line with the row path.
        d = s.field_delimiter
        self.columnar_text = s.format == "jsonl" or (
            len(d) == 1 and d.isascii() and d not in "\r\n" and (s.format == "tsv" or d != '"'))

    # -- split and shard of rows ------------------------------------------------------------
    def assign(self, ids: list[bytes], ts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Split index (as `split_index`) and shard of each row."""
        n = len(ids)
        words = None
        if self.split["method"] == "hash" or self.num_shards > 1:
            words = _sha256_words(ids)
        if self.split["method"] == "hash":
            bucket = _mod(words, self._total)  # int(sha256 hex, 16) % total, as split_index
            split = np.searchsorted(self._bounds, bucket, side="right").astype(np.int32)
        else:
            cutoffs = self._cutoffs
            if all(ls.INT64_MIN <= c <= ls.INT64_MAX for c in cutoffs):
                split = np.searchsorted(np.asarray(cutoffs, np.int64), ts, side="right")
                split = split.astype(np.int32)
            else:
                import bisect

                split = np.fromiter((bisect.bisect_right(cutoffs, int(t)) for t in ts), np.int32, n)
        if self.num_shards > 1:
            shard = _mod(words[:, :3], self.num_shards).astype(np.int32)  # (sha256 >> 64) % k
        else:
            shard = np.zeros(n, np.int32)
        return split, shard

    def shard_of(self, ids: list[bytes]) -> np.ndarray:
        if self.num_shards == 1:
            return np.zeros(len(ids), np.int32)
        return _mod(_sha256_words(ids)[:, :3], self.num_shards).astype(np.int32)

    def partition(self, batch: pa.RecordBatch):
        """(shard, batch) pieces of a good-row batch."""
        if self.num_shards == 1:
            yield 0, batch
            return
        shard = batch.column(SHARD).to_numpy()
        for k in np.unique(shard):
            yield int(k), batch.filter(pa.array(shard == k))


def _sha256_words(ids: list[bytes]) -> np.ndarray:
    """SHA-256 of each id as 4 big-endian uint64 words (most significant first)."""
    sha = hashlib.sha256
    digests = b"".join([sha(b).digest() for b in ids])
    return np.frombuffer(digests, ">u8").reshape(-1, 4).astype(np.uint64)


def _mod(words: np.ndarray, m: int) -> np.ndarray:
    """(the big-endian number in each row of `words`) % m, as int64."""
    n = len(words)
    if m < 2**31:
        mm = np.uint64(m)
        step = np.uint64(pow(2, 64, m))
        r = np.zeros(n, np.uint64)
        for k in range(words.shape[1]):  # r < m and step < m: r * step < 2**62
            r = (r * step + words[:, k] % mm) % mm
        return r.astype(np.int64)
    out = []
    for row in words.tolist():
        h = 0
        for w in row:
            h = (h << 64) | w
        out.append(h % m)
    return np.asarray(out, np.int64)


# -- vectorised value rules (good = the row path accepts the row with these values) ----------
def _as_text(arr: pa.Array) -> pa.Array | None:
    t = arr.type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_large_string(t):
        return arr.cast(pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        try:
            return arr.cast(pa.string())  # validates UTF-8
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
    return None


def _is_int(t) -> bool:
    return pa.types.is_integer(t)


def _is_float(t) -> bool:
    return pa.types.is_float32(t) or pa.types.is_float64(t)


def _null_f64(n: int) -> pa.Array:
    return pa.nulls(n, pa.float64())


def _text_missing(text: pa.Array) -> np.ndarray:
    return _np(pc.fill_null(pc.equal(pc.binary_length(text), 0), True))


def number_values(arr: pa.Array, integer: bool) -> tuple[np.ndarray, pa.Array]:
    """(good, float64 values; null = missing) of a numeric feature column."""
    arr = _array(arr)
    n, t = len(arr), arr.type
    if pa.types.is_null(t):
        return np.ones(n, bool), _null_f64(n)
    text = _as_text(arr)
    if text is not None:
        missing = _text_missing(text)
        # Fast path: every present cell a short integer (exact in float64; + 0.0 turns
        # -0.0 into 0.0, as the row path's int() does).
        short_int = _np(pc.match_substring_regex(text, _INT15_RE))
        if (short_int | missing).all():
            present = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)
            return np.ones(n, bool), pc.add(pc.cast(present, pa.float64()), 0.0)
        shaped = _np(pc.match_substring_regex(text, _NUMBER_RE)) & (
            _np(pc.less_equal(pc.binary_length(text), _MAX_NUMBER_CHARS)))
        if not shaped.any():
            return missing, _null_f64(n)
        shaped_pa = pa.array(shaped)
        x = pc.cast(pc.if_else(shaped_pa, text, pa.scalar("0", pa.string())), pa.float64())
        if integer:
            x = pc.add(x, 0.0)  # the row path goes through int(): no -0.0
        else:  # an int-shaped cell is int() in the row path: "-0" is +0.0
            x = pc.if_else(pc.match_substring_regex(text, _INT_SHAPED_RE), pc.add(x, 0.0), x)
        ok = shaped & _np(pc.less(pc.abs(x), _LIMIT))
        if integer:
            ok &= _np(pc.equal(x, pc.floor(x)))
        values = pc.if_else(pa.array(ok), x, pa.scalar(None, pa.float64()))
        return missing | ok, values
    missing = _np(arr.is_null())
    if _is_int(t):
        return np.ones(n, bool), pc.cast(arr, pa.float64(), safe=False)
    if _is_float(t):
        x = pc.cast(arr, pa.float64())
        ok = _np(pc.less(pc.abs(x), _LIMIT))  # NaN and null compare as not-ok
        if integer:
            ok &= _np(pc.equal(x, pc.floor(x)))
            x = pc.add(x, 0.0)
        return missing | ok, pc.if_else(pa.array(ok), x, pa.scalar(None, pa.float64()))
    return missing, _null_f64(n)


def label_values(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(good, int64 0/1) of the label column."""
    arr = _array(arr)
    n, t = len(arr), arr.type
    text = _as_text(arr)
    if text is not None:
        good = _np(pc.is_in(text, value_set=pa.array(["0", "1"])))
        return good, pc.cast(pc.equal(text, "1"), pa.int64())
    if _is_int(t) or _is_float(t):
        x = pc.cast(arr, pa.float64(), safe=False)
        good = _np(pc.or_(pc.equal(x, 0.0), pc.equal(x, 1.0)))
        return good, pc.cast(pc.equal(x, 1.0), pa.int64())
    return np.zeros(n, bool), pa.nulls(n, pa.int64())


def timestamp_values(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(good, int64) of the timestamp column."""
    arr = _array(arr)
    n, t = len(arr), arr.type
    text = _as_text(arr)
    if text is not None:
        good = _np(pc.match_substring_regex(text, _INT64_TEXT_RE))
        if not good.any():
            return good, pa.nulls(n, pa.int64())
        clean = pc.replace_substring_regex(text, r"^\+", "")
        clean = pc.if_else(pa.array(good), clean, pa.scalar("0", pa.string()))
        return good, pc.cast(clean, pa.int64())
    if _is_int(t):
        if pa.types.is_uint64(t):
            good = _np(pc.less_equal(arr, pa.scalar(ls.INT64_MAX, pa.uint64())))
            return good, pc.cast(pc.if_else(pa.array(good), arr, pa.scalar(0, pa.uint64())),
                                 pa.int64())
        return _np(arr.is_valid()), pc.cast(arr, pa.int64())
    if _is_float(t):
        x = pc.cast(arr, pa.float64())
        good = _np(pc.and_(pc.and_(pc.equal(x, pc.floor(x)), pc.greater_equal(x, -(2.0**63))),
                           pc.less(x, 2.0**63)))
        x = pc.if_else(pa.array(good), x, 0.0)
        return good, pc.cast(x, pa.int64())
    return np.zeros(n, bool), pa.nulls(n, pa.int64())


def id_values(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(good, string) of an impression id column (good: present and surely not blank)."""
    arr = _array(arr)
    n, t = len(arr), arr.type
    text = _as_text(arr)
    if text is not None:
        return _np(pc.match_substring_regex(text, _VISIBLE_ASCII_RE)), text
    if _is_int(t):  # str(int) == Arrow's int -> string cast
        return _np(arr.is_valid()), pc.cast(arr, pa.string())
    return np.zeros(n, bool), pa.nulls(n, pa.string())


def category_values(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(good, string; null = missing) of a categorical feature column."""
    arr = _array(arr)
    n, t = len(arr), arr.type
    if pa.types.is_null(t):
        return np.ones(n, bool), pa.nulls(n, pa.string())
    text = _as_text(arr)
    if text is not None:
        empty = pc.equal(pc.binary_length(text), 0)
        return np.ones(n, bool), pc.if_else(empty, pa.scalar(None, pa.string()), text)
    if _is_int(t):
        return np.ones(n, bool), pc.cast(arr, pa.string())
    return _np(arr.is_null()), pa.nulls(n, pa.string())


def cell_sizes_ok(arr: pa.Array) -> np.ndarray:
    """False where a string/binary cell is over MAX_CELL_BYTES."""
    arr = _array(arr)
    t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t)):
        return np.ones(len(arr), bool)
    return _np(pc.fill_null(pc.less_equal(pc.binary_length(arr), ls.MAX_CELL_BYTES), True))


def _list_column(arr: pa.Array) -> pa.Array:
    """A list<...> column for the Example encoder: one value, or [] for null (missing)."""
    n = len(arr)
    if arr.null_count == 0:
        offsets = pa.array(np.arange(n + 1, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, arr)
    valid = _np(arr.is_valid())
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(valid, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), arr.drop_null())


# -- stage 1: one file -> good-row batches, quarantine records, counts ------------------------
class FileReader:
    """Reads and validates one log file; `run()` yields ('good', RecordBatch) and
    ('bad', quarantine record); `stats` holds the file's physical accounting."""

    def __init__(self, plan: Plan, path: str, src: int, id_source: str | None,
                 chunk_bytes: int = CHUNK_BYTES):
        self.plan = plan
        self.schema = plan.schema
        self.path = path
        self.src = src
        self.id_source = os.path.basename(path) if id_source is None else id_source
        self.chunk_bytes = max(1, min(int(chunk_bytes), ls.MAX_LINE_BYTES))
        self.stats = ls.FileStats()
        self.fallback_rows = 0  # rows decided by the row path (for tests and the bench)
        self._out: list = []
        self._py_good: list = []  # (record, row, line) accepted by the row path
        self._row = 0
        self._line = 0

    # -- the row path, for one row --------------------------------------------------------------
    def _row_path(self, raw, row: int, line: int) -> None:
        self.fallback_rows += 1
        try:
            record = ls.validate_row(self.schema, raw, self.path, row, self.id_source)
        except ls.RowError as err:
            self._out.append(("bad", _quarantine(
                err.reason, self.path, row, err.detail, err.column, err.value, raw, line)))
            return
        self._py_good.append((record, row, line))

    def _row_path_line(self, data: bytes, row: int, line: int) -> None:
        if self.schema.format == "jsonl":
            raw = ls.parse_json_line(data)
        else:
            raw = ls.parse_delimited_line(self.schema, data)
        self._row_path(raw, row, line)

    def _flush(self):
        if self._py_good:
            self._out.append(("good", self._records_batch(self._py_good)))
            self._py_good = []
        out, self._out = self._out, []
        return out

    def run(self):
        fmt = self.schema.format
        if fmt == "parquet":
            yield from self._parquet()
        elif self.plan.columnar_text:
            yield from self._text()
        else:
            yield from self._whole_file_rows()
        yield from self._flush()

    def _whole_file_rows(self):
        for row, line, raw in ls.iter_records(self.schema, self.path, self.stats):
            self._row_path(raw, row, line)
            if len(self._py_good) >= 8192:
                yield from self._flush()

    # -- text formats -----------------------------------------------------------------------
    def _text(self):
        schema = self.schema
        jsonl = schema.format == "jsonl"
        with ls.open_file(self.path) as raw_file:
            f = raw_file if isinstance(raw_file, io.BufferedReader) else io.BufferedReader(raw_file)
            first = next(ls.iter_lines(f), None)  # line 1 as the row path reads it
            if first is None:
                return
            data, size = first
            self._line = 1
            self.stats.lines += 1
            if data is not None and data.startswith(_BOM):
                data = data[len(_BOM):]
            if schema.header and not jsonl:
                self.stats.header_lines += 1
                ls._check_header(schema, self.path, data)
            else:
                self._single_line(data, size)
            while True:
                buf = f.read(self.chunk_bytes)
                if not buf:
                    break
                huge = None
                if not buf.endswith(b"\n"):
                    cut = buf.rfind(b"\n") + 1
                    tail = buf[cut:]
                    tail += f.readline(ls.MAX_LINE_BYTES + 1 - len(tail))
                    if tail.endswith(b"\n") or len(tail) <= ls.MAX_LINE_BYTES:
                        buf = buf[:cut] + tail
                    else:  # a line over the limit: skipped to its end, like iter_lines
                        huge = len(tail)
                        while True:
                            more = f.readline(1 << 20)
                            huge += len(more)
                            if not more or more.endswith(b"\n"):
                                break
                        buf = buf[:cut]
                if buf:
                    self._chunk(buf)
                if huge is not None:
                    self._line += 1
                    self.stats.lines += 1
                    self._single_line(None, huge)
                yield from self._flush()

    def _single_line(self, data: bytes | None, size: int) -> None:
        """One physical line (self._line) exactly as `iter_records` treats it."""
        jsonl = self.schema.format == "jsonl"
        if data is not None and (not data or (jsonl and data.isspace())):
            self.stats.blank_lines += 1
            return
        self._row += 1
        self.stats.rows += 1
        if data is None:
            raw = ls.BadRecord(ls.RowError(ls.LINE_TOO_LARGE, f"{size} bytes, over the "
                                           f"{ls.MAX_LINE_BYTES}-byte line limit"), "")
            self._row_path(raw, self._row, self._line)
        else:
            self._row_path_line(data, self._row, self._line)

    def _chunk(self, buf: bytes) -> None:
        """Whole lines (the last may lack its LF only at the end of the file)."""
        jsonl = self.schema.format == "jsonl"
        arr = np.frombuffer(buf, np.uint8)
        lf = np.flatnonzero(arr == 10)
        terminated = buf.endswith(b"\n")
        ends = lf if terminated else np.append(lf, len(buf))
        n = len(ends)
        starts = np.empty(n, np.int64)
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
        first_line = self._line + 1
        self._line += n
        self.stats.lines += n
        dend = ends.copy()  # end of each line's data (without LF / CRLF)
        suspect = np.zeros(n, bool)

        def line_of(positions):
            return np.searchsorted(ends, positions, side="left")

        if b"\r" in buf:
            crlf = np.zeros(n, bool)
            nonempty = ends > starts
            crlf[nonempty] = arr[ends[nonempty] - 1] == 13
            if not terminated:
                crlf[-1] = False
            dend[crlf] -= 1
            cr = np.flatnonzero(arr == 13)
            nxt = np.minimum(cr + 1, len(buf) - 1)
            lone = cr[(cr + 1 >= len(buf)) | (arr[nxt] != 10)]
            suspect[line_of(lone)] = True
        lengths = dend - starts
        blank = lengths == 0
        if jsonl:
            maybe = np.flatnonzero(~blank)
            maybe = maybe[np.isin(arr[starts[maybe]], list(_JSON_SPACE))]
            for i in maybe:
                if buf[starts[i]:dend[i]].isspace():
                    blank[i] = True
        if _BOM in buf:
            p = buf.find(_BOM)
            while p >= 0:
                if p == 0 or buf[p - 1] == 10:
                    suspect[line_of(p)] = True
                p = buf.find(_BOM, p + 1)
        suspect |= lengths > ls.MAX_CELL_BYTES
        if not buf.isascii():
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError:
                for i in range(n):
                    try:
                        buf[starts[i]:dend[i]].decode("utf-8")
                    except UnicodeDecodeError:
                        suspect[i] = True
        if jsonl:
            for pattern, literal in ((_JSON_INT_ZERO, b"-0"), (_JSON_SURROGATE, b"\\u")):
                if literal in buf:
                    hits = [m.start() for m in pattern.finditer(buf)]
                    if hits:
                        suspect[line_of(np.asarray(hits))] = True
        elif self.schema.format == "csv" and b'"' in buf:
            suspect |= self._bad_quotes(arr, starts, dend, ends)

        nonblank = ~blank
        rows = self._row + np.cumsum(nonblank)  # row number of each non-blank line
        n_rows = int(nonblank.sum())
        self._row += n_rows
        self.stats.rows += n_rows
        self.stats.blank_lines += n - n_rows
        for i in np.flatnonzero(suspect & nonblank):
            self._row_path_line(buf[starts[i]:dend[i]], int(rows[i]), first_line + int(i))
        good = np.flatnonzero(nonblank & ~suspect)
        if len(good):
            self._parse_lines(buf, starts, dend, good, first_line, rows, whole=len(good) == n)

    def _bad_quotes(self, arr, starts, dend, ends) -> np.ndarray:
        """Lines whose quotes are not all whole quoted cells without inner quotes."""
        d = ord(self.schema.field_delimiter)
        n = len(starts)
        size = len(arr)
        q = np.flatnonzero(arr == 34)

        def pair_ok(o, c):
            prev = np.where(o > 0, arr[np.maximum(o - 1, 0)], 10)
            nxt_pos = np.minimum(c + 1, size - 1)
            nxt = np.where(c + 1 < size, arr[nxt_pos], 10)
            return (((o == 0) | (prev == d) | (prev == 10))
                    & ((c + 1 >= size) | (nxt == d) | (nxt == 10) | (nxt == 13)))

        if len(q) % 2 == 0:
            # Pairs stay on their line iff an even number of quotes precedes every LF.
            lf = ends[:-1] if ends[-1] == size else ends
            if ((np.searchsorted(q, lf) % 2) == 0).all() and pair_ok(q[0::2], q[1::2]).all():
                return np.zeros(n, bool)
        line = np.searchsorted(ends, q, side="left")
        bad = np.bincount(line, minlength=n) % 2 == 1
        keep = ~bad[line]
        q, line = q[keep], line[keep]
        o, c = q[0::2], q[1::2]
        bad[line[0::2][~pair_ok(o, c)]] = True
        return bad

    def _parse_lines(self, buf, starts, dend, idx, first_line, rows, whole: bool) -> None:
        if whole:
            data = buf
        else:
            data = b"\n".join([buf[starts[i]:dend[i]] for i in idx]) + b"\n"
        try:
            table = self._arrow_read(data)
            if table.num_rows != len(idx):
                raise ValueError(f"{table.num_rows} rows from {len(idx)} lines")
        except (pa.ArrowException, ValueError):
            if len(idx) == 1:
                i = idx[0]
                self._row_path_line(buf[starts[i]:dend[i]], int(rows[i]), first_line + int(i))
                return
            half = len(idx) // 2
            for part in (idx[:half], idx[half:]):
                self._parse_lines(buf, starts, dend, part, first_line, rows, False)
            return

        def fallback(j):
            i = idx[j]
            self._row_path_line(buf[starts[i]:dend[i]], int(rows[i]), first_line + int(i))

        self._validate(table, rows[idx].astype(np.int64), (first_line + idx).astype(np.int64),
                       fallback)

    def _roles(self) -> dict[str, pa.DataType]:
        """Columns the validation reads, with the Arrow type the JSON reader is given."""
        s = self.schema
        types: dict[str, pa.DataType] = {}
        for name in s.numeric_features:
            types[name] = pa.float64()
        types[s.label] = pa.float64()
        if s.timestamp:
            types[s.timestamp] = pa.int64()
        for name in s.categorical_features:
            types[name] = pa.string()
        if s.impression_id:
            types[s.impression_id] = pa.string()
        return types

    def _arrow_read(self, data: bytes) -> pa.Table:
        s = self.schema
        roles = self._roles()
        if s.format == "jsonl":
            import pyarrow.json as pajson

            return pajson.read_json(
                pa.py_buffer(data),
                read_options=pajson.ReadOptions(use_threads=True, block_size=len(data) + 1),
                parse_options=pajson.ParseOptions(
                    explicit_schema=pa.schema(list(roles.items())),
                    unexpected_field_behavior="ignore", newlines_in_values=False))
        import pyarrow.csv as pacsv

        names = list(s.column_names)
        return pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=True,
                                           block_size=len(data) + 1),
            parse_options=pacsv.ParseOptions(
                delimiter=s.field_delimiter, quote_char='"' if s.format == "csv" else False,
                double_quote=True, escape_char=False, newlines_in_values=False,
                ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in roles}, include_columns=list(roles),
                strings_can_be_null=False, quoted_strings_can_be_null=False, check_utf8=True))

    # -- parquet -----------------------------------------------------------------------------
    def _parquet(self):
        import pyarrow.parquet as pq

        names = list(self.schema.column_names)
        with ls.open_file(self.path) as f:
            pf = pq.ParquetFile(f)
            missing = [n for n in names if n not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{self.path}: parquet file lacks log-schema columns {missing}")
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=names):
                n = batch.num_rows
                rows = np.arange(self._row + 1, self._row + n + 1, dtype=np.int64)
                self._row += n
                self.stats.lines += n
                self.stats.rows += n
                table = pa.Table.from_batches([batch])
                sizes_ok = np.ones(n, bool)
                for name in names:
                    sizes_ok &= cell_sizes_ok(table.column(name))

                def fallback(j, batch=batch, rows=rows):
                    self._row_path(batch.slice(int(j), 1).to_pylist()[0], int(rows[j]),
                                   int(rows[j]))

                self._validate(table, rows, rows, fallback, sizes_ok)
                yield from self._flush()

    # -- validation and the good-row batch ----------------------------------------------------
    def _validate(self, table: pa.Table, rows: np.ndarray, lines: np.ndarray, fallback,
                  good: np.ndarray | None = None) -> None:
        s = self.schema
        n = table.num_rows
        good = np.ones(n, bool) if good is None else good.copy()
        g, label = label_values(table.column(s.label))
        good &= g
        if s.impression_id:
            g, ids = id_values(table.column(s.impression_id))
            good &= g
        else:
            ids = None
        ts = None
        if s.timestamp:
            g, ts = timestamp_values(table.column(s.timestamp))
            good &= g
        numerics = []
        for name in s.numeric_features:
            g, v = number_values(table.column(name), s.column(name).type == "int")
            good &= g
            numerics.append(v)
        categories = []
        for name in s.categorical_features:
            g, v = category_values(table.column(name))
            good &= g
            categories.append(v)
        for j in np.flatnonzero(~good):
            fallback(j)
        if not good.any():
            return
        mask = None if good.all() else pa.array(good)

        def keep(a):
            return a if mask is None else a.filter(mask)

        rows_k, lines_k = rows[good], lines[good]
        if ids is None:
            ids = pc.binary_join_element_wise(
                pa.scalar(self.id_source + ":"), pa.array(rows_k).cast(pa.string()), "")
        else:
            ids = keep(ids)
        cols = {ID: ids, ROW: pa.array(rows_k), LINE: pa.array(lines_k), LABEL: keep(label)}
        if ts is not None:
            cols[TS] = keep(ts)
        for i, v in enumerate(numerics):
            cols[_num(i)] = pc.cast(keep(v), pa.float32(), safe=False)
        for i, v in enumerate(categories):
            cols[_cat(i)] = keep(v)
        self._out.append(("good", self._finish_batch(cols, len(rows_k))))

    def _finish_batch(self, cols: dict, n: int) -> pa.RecordBatch:
        ids = cols[ID]
        ts = cols[TS].to_numpy(zero_copy_only=False) if TS in cols else None
        split, shard = self.plan.assign(ids.cast(pa.binary()).to_pylist(), ts)
        cols[SRC] = pa.array(np.full(n, self.src, np.int32))
        cols[SPLIT] = pa.array(split)
        cols[SHARD] = pa.array(shard)
        schema = self.plan.batch_schema
        return pa.RecordBatch.from_arrays([cols[f.name] for f in schema], schema=schema)

    def _records_batch(self, items) -> pa.RecordBatch:
        """Rows the row path accepted -> the same batch layout."""
        s = self.schema
        cols = {ID: pa.array([r["impression_id"] for r, _, _ in items], pa.string()),
                ROW: pa.array([row for _, row, _ in items], pa.int64()),
                LINE: pa.array([line for _, _, line in items], pa.int64()),
                LABEL: pa.array([r[s.label] for r, _, _ in items], pa.int64())}
        if s.timestamp:
            cols[TS] = pa.array([r[s.timestamp] for r, _, _ in items], pa.int64())
        for i, name in enumerate(s.numeric_features):
            v = pa.array([None if r[name] is None else float(r[name]) for r, _, _ in items],
                         pa.float64())
            cols[_num(i)] = pc.cast(v, pa.float32(), safe=False)
        for i, name in enumerate(s.categorical_features):
            cols[_cat(i)] = pa.array([None if r[name] is None else str(r[name])
                                      for r, _, _ in items], pa.string())
        return self._finish_batch(cols, len(items))


# -- the teacher table ---------------------------------------------------------------------------
def read_teacher_file(path: str):
    """(table of valid rows `id` string / `logit` float64 (NaN = null), quarantine records,
    rows read) of one teacher Parquet file; same checks and records as the row path."""
    import pyarrow.parquet as pq

    bad, tables, rows = [], [], 0
    with ls.open_file(path) as f:
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
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                     columns=["impression_id", "teacher_logit"]):
            n = batch.num_rows
            first = rows
            rows += n
            id_col, logit_col = _array(batch.column(0)), _array(batch.column(1))
            ids = _as_text(id_col)
            if ids is None and _is_int(id_col.type):
                ids = pc.cast(id_col, pa.string())
            good = (np.zeros(n, bool) if ids is None
                    else _np(pc.match_substring_regex(ids, _VISIBLE_ASCII_RE)))
            lt = logit_col.type
            if pa.types.is_floating(lt) or pa.types.is_integer(lt):
                logits = pc.fill_null(pc.cast(logit_col, pa.float64(), safe=False), math.nan)
            elif pa.types.is_null(lt):
                logits = pa.array(np.full(n, math.nan))
            else:  # decimal: float() of each value, as the row path
                logits = pa.array([math.nan if v is None else float(v)
                                   for v in logit_col.to_pylist()], pa.float64())
            out_ids = [ids.filter(pa.array(good))] if good.any() else []
            out_logits = [logits.filter(pa.array(good))] if good.any() else []
            rest = np.flatnonzero(~good)
            if len(rest):
                py_ids = id_col.take(pa.array(rest)).to_pylist()
                py_logits = logit_col.take(pa.array(rest)).to_pylist()
                ok_ids, ok_logits = [], []
                for j, iid, logit in zip(rest, py_ids, py_logits, strict=True):
                    line = first + int(j) + 1
                    try:
                        iid_ok, logit_ok = ls.validate_teacher_row(iid, logit)
                    except ls.RowError as err:
                        bad.append(_quarantine(
                            err.reason, path, line, err.detail, err.column, err.value,
                            {"impression_id": iid, "teacher_logit": logit}, line))
                        continue
                    ok_ids.append(iid_ok)
                    ok_logits.append(logit_ok)
                if ok_ids:
                    out_ids.append(pa.array(ok_ids, pa.string()))
                    out_logits.append(pa.array(ok_logits, pa.float64()))
            if out_ids:
                tables.append(pa.table({"id": pa.concat_arrays(out_ids),
                                        "logit": pa.concat_arrays(out_logits)}))
    table = (pa.concat_tables(tables) if tables else
             pa.table({"id": pa.array([], pa.string()), "logit": pa.array([], pa.float64())}))
    return table, bad, rows


class TeacherIndex:
    """Valid teacher rows grouped by impression id: the logit (if the rows agree and are
    finite in float32), the number of rows, and the values of ids that fail the check."""

    def __init__(self, ids: pa.Array, logit: np.ndarray, ok: np.ndarray, count: np.ndarray,
                 failing: dict[str, list[float]]):
        self.ids, self.logit, self.ok, self.count, self.failing = ids, logit, ok, count, failing

    @property
    def rows(self) -> int:
        return int(self.count.sum())

    @classmethod
    def build(cls, tables) -> TeacherIndex:
        tables = [t for t in tables if t is not None and t.num_rows]
        if not tables:
            return cls(pa.array([], pa.string()), np.zeros(0), np.zeros(0, bool),
                       np.zeros(0, np.int64), {})
        t = pa.concat_tables(tables)
        ids = _array(t.column("id"))
        logits = _array(t.column("logit")).to_numpy(zero_copy_only=False)
        n = len(ids)
        counts = pc.value_counts(ids)
        multi = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        if len(multi) == 0:
            single = np.ones(n, bool)
        else:
            single = ~_np(pc.is_in(ids, value_set=multi))
        with np.errstate(invalid="ignore"):
            ok = np.abs(logits[single]) < _LIMIT
        u_ids = [ids.filter(pa.array(single))] if not single.all() else [ids]
        u_logit, u_ok = [logits[single]], [ok]
        u_count = [np.ones(int(single.sum()), np.int64)]
        failing = {}
        for k in np.flatnonzero(single)[~ok]:
            failing[ids[int(k)].as_py()] = [float(logits[k])]
        if len(multi):
            groups: dict[str, list[float]] = {}
            rest = np.flatnonzero(~single)
            for iid, v in zip(ids.take(pa.array(rest)).to_pylist(), logits[rest], strict=True):
                groups.setdefault(iid, []).append(float(v))
            m_logit, m_ok = [], []
            for iid, values in groups.items():
                try:
                    m_logit.append(ls.check_teacher_logits(values))
                    m_ok.append(True)
                except ls.RowError:
                    m_logit.append(math.nan)
                    m_ok.append(False)
                    failing[iid] = values
            u_ids.append(pa.array(list(groups), pa.string()))
            u_logit.append(np.asarray(m_logit, np.float64))
            u_ok.append(np.asarray(m_ok, bool))
            u_count.append(np.asarray([len(v) for v in groups.values()], np.int64))
        return cls(pa.concat_arrays(u_ids), np.concatenate(u_logit), np.concatenate(u_ok),
                   np.concatenate(u_count), failing)

    def lookup(self, ids: pa.Array):
        """(matched, logit, ok, count) per id."""
        n = len(ids)
        if len(self.ids) == 0 or n == 0:
            return (np.zeros(n, bool), np.zeros(n), np.zeros(n, bool), np.zeros(n, np.int64))
        idx = pc.index_in(ids, value_set=self.ids)
        matched = _np(idx.is_valid())
        pos = idx.fill_null(0).to_numpy(zero_copy_only=False)
        return matched, self.logit[pos], self.ok[pos] & matched, np.where(
            matched, self.count[pos], 0)


# -- stage 2: one shard -> dedup, join, encode, write ------------------------------------------
class TFRecordGzipWriter:
    """TFRecord framing + one gzip stream, written to a temporary name and renamed into
    place on close (a retried shard rewrites the same file). Framing and compression run
    on a background thread (zlib releases the GIL), so they overlap the next encode."""

    def __init__(self, path: str, level: int = GZIP_LEVEL):
        from concurrent.futures import ThreadPoolExecutor

        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        self.path = path
        self._tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        self._f = FileSystems.create(self._tmp, compression_type=CompressionTypes.UNCOMPRESSED)
        self._z = zlib.compressobj(level, zlib.DEFLATED, 31)
        self._heads: dict[int, bytes] = {}
        self._pool = ThreadPoolExecutor(1)
        self._pending = []
        self.count = 0

    def write_all(self, records: list[bytes]) -> None:
        if records:
            self.count += len(records)
            self._pending.append(self._pool.submit(self._write, records))

    def _write(self, records: list[bytes]) -> None:
        self._f.write(self._z.compress(frame_records(records, self._heads)))

    def close(self) -> None:
        from apache_beam.io.filesystems import FileSystems

        try:
            for job in self._pending:
                job.result()
            self._f.write(self._z.flush())
        finally:
            self._pool.shutdown()
            self._f.close()
        FileSystems.rename([self._tmp], [self.path])


def _masked_crc32c(values: np.ndarray) -> np.ndarray:
    c = values.astype(np.uint32)
    return (((c >> np.uint32(15)) | (c << np.uint32(17))) + np.uint32(0xA282EAD8)).astype("<u4")


def frame_records(records: list[bytes], heads: dict[int, bytes] | None = None) -> bytes:
    """TFRecord framing of serialized records: length, masked CRC-32C of the length, data,
    masked CRC-32C of the data (as tf.io.TFRecordWriter writes them)."""
    import google_crc32c

    heads = {} if heads is None else heads
    lengths = list(map(len, records))
    for n in set(lengths) - heads.keys():
        lb = struct.pack("<Q", n)
        heads[n] = lb + _masked_crc32c(np.asarray([google_crc32c.value(lb)])).tobytes()
    crcs = _masked_crc32c(np.fromiter(map(google_crc32c.value, records), np.uint64,
                                      len(records))).tobytes()
    parts: list = [None] * (3 * len(records))
    parts[0::3] = map(heads.__getitem__, lengths)
    parts[1::3] = records
    parts[2::3] = [crcs[i:i + 4] for i in range(0, len(crcs), 4)]
    return b"".join(parts)


def encode_examples(plan: Plan, table: pa.Table, logit: np.ndarray, has_teacher: np.ndarray):
    """Serialized tf.Examples of good rows, feature for feature as the row path writes them
    (an iterator of lists, ENCODE_BATCH_ROWS rows each)."""
    from tfx_bsl.coders import example_coder

    s = plan.schema
    n = table.num_rows
    features: dict[str, pa.Array] = {}
    features["impression_id"] = _array(table.column(ID)).cast(pa.binary())
    features[s.label] = _array(table.column(LABEL))
    features["teacher_logit"] = pa.array(logit.astype(np.float32))
    features["has_teacher"] = pa.array(has_teacher.astype(np.int64))
    if s.timestamp:
        features[s.timestamp] = _array(table.column(TS))
    for i, name in enumerate(s.numeric_features):
        features[name] = _array(table.column(_num(i)))
    for i, name in enumerate(s.categorical_features):
        features[name] = _array(table.column(_cat(i))).cast(pa.binary())
    names = list(features)
    columns = [_list_column(features[k]) for k in names]
    encoder = example_coder.RecordBatchToExamplesEncoder()
    for start in range(0, n, ENCODE_BATCH_ROWS):
        rb = pa.RecordBatch.from_arrays([c.slice(start, ENCODE_BATCH_ROWS) for c in columns],
                                        names=names)
        yield encoder.encode(rb)


def shard_file(split_uri: str, shard: int, num_shards: int) -> str:
    return os.path.join(split_uri, f"data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz")


def finish_shard(plan: Plan, sources: list[str], batches, teacher: TeacherIndex,
                 shard: int, split_uris: dict[str, str], level: int = GZIP_LEVEL):
    """Dedups, joins and writes one shard; returns (quarantine records, counts)."""
    batches = [b for b in batches if b is not None and b.num_rows]
    if batches:
        table = pa.Table.from_batches(batches, schema=plan.batch_schema).combine_chunks()
    else:
        table = plan.batch_schema.empty_table()
    bad: list[dict] = []
    counts: dict[str, int] = {}
    n = table.num_rows
    ids = _array(table.column(ID))
    if n and pc.count_distinct(ids).as_py() != n:
        # Duplicates: the earliest (file, row) wins, as in the row path's CoGroupByKey.
        vc = pc.value_counts(ids)
        dup = vc.field("values").filter(pc.greater(vc.field("counts"), 1))
        where = np.flatnonzero(_np(pc.is_in(ids, value_set=dup)))
        src = table.column(SRC).to_numpy()
        row = table.column(ROW).to_numpy()
        line = table.column(LINE).to_numpy()
        groups: dict[str, list] = {}
        for j, iid in zip(where, ids.take(pa.array(where)).to_pylist(), strict=True):
            groups.setdefault(iid, []).append((sources[src[j]], int(row[j]), int(line[j]), j))
        keep = np.ones(n, bool)
        for iid, occ in groups.items():
            occ.sort(key=lambda x: (x[0], x[1]))
            first_source, _, first_line, _ = occ[0]
            for source, r, li, j in occ[1:]:
                keep[j] = False
                bad.append(_quarantine(
                    ls.DUPLICATE_IMPRESSION_ID, source, r,
                    f"impression id first seen at {first_source}, line {first_line}",
                    "impression_id", iid, line=li))
        table = table.filter(pa.array(keep))
        ids = _array(table.column(ID))
        n = table.num_rows
    matched, logit, ok, count = teacher.lookup(ids)
    joined = int(count.sum())
    if joined:
        counts["teacher_rows_joined"] = joined
        counts["teacher_rows_unmatched"] = -joined  # the teacher reader counted all as unmatched
    failed = matched & ~ok
    if failed.any():
        where = np.flatnonzero(failed)
        src = table.column(SRC).to_numpy()
        row = table.column(ROW).to_numpy()
        line = table.column(LINE).to_numpy()
        for j, iid in zip(where, ids.take(pa.array(where)).to_pylist(), strict=True):
            try:
                ls.check_teacher_logits(teacher.failing[iid])
                raise AssertionError(f"teacher logits of {iid!r} pass the check")
            except ls.RowError as err:
                bad.append(_quarantine(err.reason, sources[src[j]], int(row[j]), err.detail,
                                          err.column, err.value, line=int(line[j])))
    logit = np.where(matched, logit, 0.0)
    has_teacher = matched.astype(np.int64)
    split = table.column(SPLIT).to_numpy()
    # Each split's writer compresses on its own thread while the next parts are encoded;
    # all are closed (joined, renamed into place) at the end.
    writers = []
    try:
        for s_index, name in enumerate(plan.split["names"]):
            sel = (split == s_index) & ~failed
            writer = TFRecordGzipWriter(shard_file(split_uris[name], shard, plan.num_shards),
                                        level)
            writers.append((name, writer))
            if sel.any():
                part = table if sel.all() else table.filter(pa.array(sel))
                for records in encode_examples(plan, part, logit[sel], has_teacher[sel]):
                    writer.write_all(records)
    finally:
        errors = []
        for _, writer in writers:
            try:
                writer.close()
            except Exception as err:  # noqa: BLE001  (the first is raised below)
                errors.append(err)
        if errors:
            raise errors[0]
    for name, writer in writers:
        counts[f"written_{name}"] = writer.count
    return bad, counts


# -- quarantine part files and the summary ------------------------------------------------------
class PartWriter:
    """JSON Lines records of one reader/shard, written to `<dir>/<name>` via a temporary
    name (a retried bundle rewrites the same part); nothing is written for no records."""

    def __init__(self, directory: str, name: str):
        self.path = os.path.join(directory, name)
        self._tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        self._f = None
        self.reasons: dict[str, int] = {}

    def write(self, record: dict) -> None:
        import json

        if self._f is None:
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            self._f = FileSystems.create(self._tmp,
                                         compression_type=CompressionTypes.UNCOMPRESSED)
        self._f.write(json.dumps(record, sort_keys=True).encode("utf-8") + b"\n")
        self.reasons[record["reason"]] = self.reasons.get(record["reason"], 0) + 1

    def close(self) -> None:
        if self._f is not None:
            from apache_beam.io.filesystems import FileSystems

            self._f.close()
            FileSystems.rename([self._tmp], [self.path])


def _add(total: dict, counts: dict) -> dict:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + v
    return total


class _SumCounts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        return _add(acc, counts)

    def merge_accumulators(self, accs):
        total: dict = {}
        for acc in accs:
            _add(total, acc)
        return total

    def extract_output(self, acc):
        return acc


def merge_parts(parts_dir: str, target: str) -> None:
    """Concatenates the part files (in name order) into `target`; removes the parts."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    match = FileSystems.match([os.path.join(parts_dir, "*.jsonl")])[0].metadata_list
    parts = sorted(m.path for m in match)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as out:
        for part in parts:
            with ls.open_file(part) as f:
                while True:
                    block = f.read(1 << 20)
                    if not block:
                        break
                    out.write(block)
    FileSystems.rename([tmp], [target])
    if FileSystems.exists(parts_dir):
        FileSystems.delete([parts_dir])


# -- Beam ----------------------------------------------------------------------------------------
class _ReadLogFile(beam.DoFn):
    def __init__(self, schema_dict, split, num_shards, chunk_bytes, parts_dir):
        self._args = (schema_dict, split, num_shards)
        self._chunk_bytes = chunk_bytes
        self._parts_dir = parts_dir

    def setup(self):
        self._plan = Plan(*self._args)

    def process(self, element):
        path, id_source, src = element
        reader = FileReader(self._plan, path, src, id_source, self._chunk_bytes)
        part = PartWriter(self._parts_dir, f"log-{src:06d}.jsonl")
        try:
            for kind, item in reader.run():
                if kind == "good":
                    yield from self._plan.partition(item)
                else:
                    part.write(item)
        finally:
            part.close()
        counts = reader.stats.counters()
        counts["rows_in"] = reader.stats.rows
        counts.update({f"quarantined_{r}": n for r, n in part.reasons.items()})
        yield beam.pvalue.TaggedOutput("counts", counts)


class _ReadTeacherFile(beam.DoFn):
    def __init__(self, schema_dict, split, num_shards, keyed: bool, parts_dir):
        self._args = (schema_dict, split, num_shards)
        self._keyed = keyed
        self._parts_dir = parts_dir

    def setup(self):
        self._plan = Plan(*self._args)

    def process(self, element):
        index, path = element
        table, bad, rows = read_teacher_file(path)
        part = PartWriter(self._parts_dir, f"teacher-{index:06d}.jsonl")
        try:
            for rec in bad:
                part.write(rec)
        finally:
            part.close()
        counts = {"teacher_rows_in": rows, "teacher_rows_unmatched": table.num_rows}
        counts.update({f"teacher_quarantined_{r}": n for r, n in part.reasons.items()})
        yield beam.pvalue.TaggedOutput("counts", counts)
        if not self._keyed:
            yield table
            return
        shard = self._plan.shard_of(table.column("id").cast(pa.binary()).to_pylist())
        for k in np.unique(shard):
            yield int(k), table.filter(pa.array(shard == k))


class _FinishShard(beam.DoFn):
    def __init__(self, schema_dict, split, num_shards, sources, split_uris, keyed: bool,
                 parts_dir):
        self._args = (schema_dict, split, num_shards)
        self._sources = sources
        self._split_uris = split_uris
        self._keyed = keyed
        self._parts_dir = parts_dir

    def setup(self):
        self._plan = Plan(*self._args)
        self._index = None  # (the side input list it was built from, TeacherIndex)

    def process(self, element, teacher_tables=None):
        shard, grouped = element
        if self._keyed:
            logs = grouped["log"]
            teacher = TeacherIndex.build(grouped["teacher"])
        else:  # one index per worker, built from the side input on first use
            if self._index is None or self._index[0] is not teacher_tables:
                self._index = (teacher_tables, TeacherIndex.build(teacher_tables))
            logs, teacher = grouped, self._index[1]
        bad, counts = finish_shard(self._plan, self._sources, list(logs), teacher, shard,
                                   self._split_uris)
        part = PartWriter(self._parts_dir, f"shard-{shard:06d}.jsonl")
        try:
            for rec in bad:
                part.write(rec)
        finally:
            part.close()
        counts.update({f"quarantined_{r}": n for r, n in part.reasons.items()})
        yield counts


def _file_sizes(paths) -> int:
    from apache_beam.io.filesystems import FileSystems

    if not paths:
        return 0
    total = 0
    for result in FileSystems.match(list(paths)):
        total += sum(m.size_in_bytes for m in result.metadata_list)
    return total


def build_graph(p, sources, teacher_files, schema_dict, split, split_uris, quarantine_path,
                teacher_quarantine_path, *, counts_path: str | None = None,
                teacher_join: str = "auto", teacher_lookup_max_bytes: int | None = None,
                num_shards: int | None = None, chunk_bytes: int | None = None):
    """The columnar graph; returns a PCollection of (counter name, count).

    `sources`: [(path, id source)]. Quarantine records are written by the readers and
    shards as part files and concatenated (in file/shard order) into `quarantine_path`
    and `teacher_quarantine_path` by the last step, which also writes the counts as a
    JSON object to `counts_path` (if given)."""
    if teacher_join not in TEACHER_JOINS:
        raise ValueError(f"teacher_join {teacher_join!r} is not one of {TEACHER_JOINS}")
    if teacher_lookup_max_bytes is None:
        teacher_lookup_max_bytes = TEACHER_LOOKUP_MAX_BYTES
    chunk_bytes = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    paths = sorted({path for path, _ in sources})
    if len(paths) != len(sources):
        raise ValueError("ClickLogExampleGen: a log file is listed twice")
    teacher_files = sorted(teacher_files or [])
    if num_shards is None:
        num_shards = max(1, math.ceil(_file_sizes(paths) / SHARD_BYTES))
    keyed = bool(teacher_files) and (teacher_join == "shuffle" or (
        teacher_join == "auto" and _file_sizes(teacher_files) > teacher_lookup_max_bytes))
    run_id = uuid.uuid4().hex
    log_parts = f"{quarantine_path}.parts-{run_id}"
    teacher_parts = f"{teacher_quarantine_path}.parts-{run_id}"
    index = {path: i for i, path in enumerate(paths)}  # file order = the dedup order
    elements = [(path, id_source, index[path]) for path, id_source in sources]
    args = (schema_dict, split, num_shards)
    files = p | "LogFiles" >> beam.Create(elements, reshuffle=False)
    if len(elements) > 1:  # one file per element; reshuffle so files spread over workers
        files = files | "ReshuffleFiles" >> beam.Reshuffle()
    read = files | "ReadValidate" >> beam.ParDo(
        _ReadLogFile(*args, chunk_bytes, log_parts)).with_outputs("counts", main="good")
    # Every shard runs (and writes its files) even when it has no rows.
    shards = p | "AllShards" >> beam.Create([(k, None) for k in range(num_shards)],
                                            reshuffle=False)
    log = ((read.good, shards)
           | "LogAndShards" >> beam.Flatten())
    teacher = p | "TeacherFiles" >> beam.Create(list(enumerate(teacher_files)), reshuffle=False)
    if len(teacher_files) > 1:
        teacher = teacher | "ReshuffleTeacherFiles" >> beam.Reshuffle()
    teacher = teacher | "ReadTeacher" >> beam.ParDo(
        _ReadTeacherFile(*args, keyed, teacher_parts)).with_outputs("counts", main="good")
    finish = _FinishShard(*args, paths, split_uris, keyed, log_parts)
    if keyed:
        grouped = {"log": log, "teacher": teacher.good} | "ByShard" >> beam.CoGroupByKey()
        done = grouped | "DedupJoinWrite" >> beam.ParDo(finish)
    else:
        done = (log
                | "ByShard" >> beam.GroupByKey()
                | "DedupJoinWrite" >> beam.ParDo(
                    finish, teacher_tables=beam.pvalue.AsList(teacher.good)))

    def finalize(counts):
        import json

        merge_parts(log_parts, quarantine_path)
        merge_parts(teacher_parts, teacher_quarantine_path)
        counts = dict(sorted(counts.items()))
        if counts_path:
            from apache_beam.io.filesystem import CompressionTypes
            from apache_beam.io.filesystems import FileSystems

            tmp = f"{counts_path}.tmp-{uuid.uuid4().hex}"
            with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.write(json.dumps(counts, sort_keys=True).encode("utf-8"))
            FileSystems.rename([tmp], [counts_path])
        return list(counts.items())

    return ((read.counts, teacher.counts, done)
            | "AllCounts" >> beam.Flatten()
            | "Sum" >> beam.CombineGlobally(_SumCounts()).without_defaults()
            | "Finalize" >> beam.FlatMap(finalize))
