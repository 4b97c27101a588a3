"""Turning click-log rows into serialized `tf.Example`s for the `serving_default` signature.

Column types follow the synthetic-log contract (docs/CONTRACTS.md): float columns become
`float_list`, integer columns `int64_list`, string columns `bytes_list`; a null value
leaves the feature out of that example (the exported parser fills its default). The
encoding rules are `matta_tf.contract.encode_example`'s.
"""
from __future__ import annotations

from typing import Sequence

# One contract for every package (matta_tf/contract.py): the non-feature columns and the
# row -> tf.Example encoder are defined there and only imported here.
from matta_tf.contract import NON_FEATURE_COLUMNS, encode_example, encode_rows

__all__ = ["NON_FEATURE_COLUMNS", "encode_example", "encode_rows", "rows_from_table"]


def rows_from_table(table, feature_columns: Sequence[str] | None = None) -> list[dict]:
    """pyarrow.Table -> list of row dicts restricted to the model's feature columns."""
    if feature_columns is None:
        feature_columns = [c for c in table.column_names if c not in NON_FEATURE_COLUMNS]
    missing = [c for c in feature_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"log table has no column(s) {missing}; it has {table.column_names}")
    columns = {c: table.column(c).to_pylist() for c in feature_columns}
    return [{c: columns[c][i] for c in feature_columns} for i in range(table.num_rows)]

