"""The column contract between matta's packages, and the one row -> tf.Example encoder.

TensorFlow-free (only the standard library and `google.protobuf`), so the serving client,
the CLI and the log tools import it without paying TensorFlow's start-up.

Reserved column names
---------------------
A click log (`matta_tf.datasets`, docs/CONTRACTS.md) and the tf.Examples that
ClickLogExampleGen writes carry, besides the model's features:

* `label` (int64 0/1 click), `impression_id` (string, unique), `timestamp` (int64 unix
  seconds) - a log-schema may give the label and timestamp other column names; these
  are the names of the synthetic logs and the defaults;
* `teacher_logit` (float32) and `has_teacher` (int64 0/1), which ExampleGen adds from the
  teacher table;
* `click_prob` (float64), the synthetic generator's true click probability: ground truth
  for checks, never a model input (it would leak the label).

`NON_FEATURE_COLUMNS` is all of them. Every consumer that has to split a table or an
Example into "features" and "the rest" uses this one set: the serving client drops them
from a log table before encoding requests, the StudentExtractor drops them from the raw
feature spec it exports, and a FeatureSpec / log-schema may not declare a feature of
these names (it would be dropped at serving time without a word).

The tf.Example encoder
----------------------
`encode_example(row)` serializes one row `{name: python or numpy scalar}`:
  * missing - `None`, a float NaN, `""` or `b""` - leaves the feature out of the
    Example (the exported parser fills the feature's default; the log contract reads an
    empty cell as missing too);
  * `bool` -> int64_list (0/1); `int` -> int64_list (must fit in int64);
    `float` -> float_list (stored as float32, as TensorFlow does: a magnitude beyond
    float32 becomes +-inf);
    `str` -> bytes_list (UTF-8); `bytes` -> bytes_list;
  * numpy scalars as their Python value; anything else (lists, dicts, Decimals, ...) is a
    ValueError naming the feature.
The bytes are those of `tf.train.Example(...).SerializeToString(deterministic=True)`: the
messages are declared here with the same field numbers and types as TensorFlow's
`example.proto` / `feature.proto`, in a private descriptor pool (no clash with
TensorFlow's own classes when both are loaded). `encode_examples(columns)` does the same
for a dict of equal-length columns.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping, Sequence

LABEL = "label"
IMPRESSION_ID = "impression_id"
TIMESTAMP = "timestamp"
TEACHER_LOGIT = "teacher_logit"
HAS_TEACHER = "has_teacher"
CLICK_PROB = "click_prob"

# Columns ExampleGen fills from the teacher table; a log may not have columns of these names.
TEACHER_COLUMNS = (TEACHER_LOGIT, HAS_TEACHER)
# Columns of a click log / ExampleGen tf.Example that are never model inputs.
NON_FEATURE_COLUMNS = (LABEL, IMPRESSION_ID, TIMESTAMP, TEACHER_LOGIT, HAS_TEACHER, CLICK_PROB)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@functools.lru_cache(maxsize=1)
def _example_message_class():
    """The tf.Example message class, built from a descriptor equal on the wire to TF's."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="matta/tf_example.proto", package="tensorflow",
                                               syntax="proto3")

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof is not None:
                f.oneof_index = oneof
        return m

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, None))  # proto3: packed
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None, None))
    feature = message("Feature",
                      ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
                      ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
                      ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0))
    feature.oneof_decl.add(name="kind")
    features = message("Features",
                       ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                    type_name=".tensorflow.Feature")
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def is_missing(value) -> bool:
    """None, a float NaN, "" or b"": the feature is left out of the Example."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, (str, bytes)) and len(value) == 0


def _python_scalar(name: str, value):
    if hasattr(value, "dtype") and hasattr(value, "item"):  # a numpy scalar
        if getattr(value, "ndim", 0) != 0:
            raise ValueError(f"feature {name!r}: expected a scalar, got an array of shape {value.shape}")
        return value.item()
    return value


def encode_example(row: Mapping[str, object]) -> bytes:
    """One row `{feature name: scalar}` -> serialized tf.Example (see the module docstring)."""
    example = _example_message_class()()
    feature_map = example.features.feature
    for name, value in row.items():
        value = _python_scalar(name, value)
        if is_missing(value):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, str):
            feature_map[name].bytes_list.value.append(value.encode("utf-8"))
        elif isinstance(value, bytes):
            feature_map[name].bytes_list.value.append(value)
        elif isinstance(value, int):
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"feature {name!r}: integer {value} does not fit in int64")
            feature_map[name].int64_list.value.append(value)
        elif isinstance(value, float):
            feature_map[name].float_list.value.append(value)
        else:
            raise ValueError(f"feature {name!r}: cannot encode value {value!r} "
                             f"of type {type(value).__name__} in a tf.Example")
    return example.SerializeToString(deterministic=True)


def encode_rows(rows: Iterable[Mapping[str, object]]) -> list[bytes]:
    """`encode_example` of every row."""
    return [encode_example(r) for r in rows]


def encode_examples(columns: Mapping[str, Sequence]) -> list[bytes]:
    """A dict of equal-length columns (lists or 1-D arrays) -> one serialized tf.Example per
    row, as `encode_example` encodes each row."""
    names = list(columns)
    lengths = {n: len(columns[n]) for n in names}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"columns have different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    return [encode_example({name: columns[name][i] for name in names}) for i in range(n)]
