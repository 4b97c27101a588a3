"""ClickLogExampleGen's configuration: keys, file names, the executor config and splits.

No TFX or Beam here (the CLI and tests import it cheaply).
"""
from __future__ import annotations

import bisect
import hashlib
from typing import Any

from components import logschema

CLICK_LOG_CONFIG_KEY = "click_log_config"
QUARANTINE_KEY = "quarantine"
QUARANTINE_FILE = "quarantine.jsonl"
TEACHER_QUARANTINE_FILE = "teacher_quarantine.jsonl"
COUNTS_FILE = "counts.json"
ENGINES = ("columnar", "rows")
TEACHER_JOINS = ("auto", "lookup", "shuffle")


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
