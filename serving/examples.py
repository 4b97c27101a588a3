"""Turning click-log rows into serialized `tf.Example`s for the `serving_default` signature.

Column types follow the synthetic-log contract (docs/CONTRACTS.md): float columns become
`float_list`, integer columns `int64_list`, string columns `bytes_list`; a null value
leaves the feature out of that example (the exported parser fills its default).
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

# Columns in a click log that are not model inputs.
NON_FEATURE_COLUMNS = ("impression_id", "timestamp", "label", "click_prob", "teacher_logit")


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def encode_example(row: Mapping[str, object]) -> bytes:
    """Serializes one row (feature name -> python scalar) as a tf.Example."""
    from tensorflow.core.example import example_pb2, feature_pb2

    features = {}
    for name, value in row.items():
        if _is_null(value):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (bytes, str)):
            raw = value.encode("utf-8") if isinstance(value, str) else value
            features[name] = feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[raw]))
        elif isinstance(value, int):
            features[name] = feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[value]))
        elif isinstance(value, float):
            features[name] = feature_pb2.Feature(float_list=feature_pb2.FloatList(value=[value]))
        else:
            # numpy scalars
            import numpy as np

            if isinstance(value, np.floating):
                features[name] = feature_pb2.Feature(
                    float_list=feature_pb2.FloatList(value=[float(value)]))
            elif isinstance(value, np.integer):
                features[name] = feature_pb2.Feature(
                    int64_list=feature_pb2.Int64List(value=[int(value)]))
            else:
                raise ValueError(f"feature {name!r}: cannot encode value {value!r} "
                                 f"of type {type(value).__name__} in a tf.Example")
    return example_pb2.Example(
        features=feature_pb2.Features(feature=features)).SerializeToString()


def rows_from_table(table, feature_columns: Sequence[str] | None = None) -> list[dict]:
    """pyarrow.Table -> list of row dicts restricted to the model's feature columns."""
    if feature_columns is None:
        feature_columns = [c for c in table.column_names if c not in NON_FEATURE_COLUMNS]
    missing = [c for c in feature_columns if c not in table.column_names]
    if missing:
        raise ValueError(f"log table has no column(s) {missing}; it has {table.column_names}")
    columns = {c: table.column(c).to_pylist() for c in feature_columns}
    return [{c: columns[c][i] for c in feature_columns} for i in range(table.num_rows)]


def encode_rows(rows: Iterable[Mapping[str, object]]) -> list[bytes]:
    return [encode_example(r) for r in rows]
