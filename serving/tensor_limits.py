"""What a gRPC PredictRequest's TensorProtos may cost, checked before any is decoded.

A TensorProto may declare a shape far larger than the values it carries (missing values
repeat the last one), so a 50-byte message can ask for gigabytes. `check_request_tensors`
works from the declared shapes and dtypes alone: supported dtype, dtype of the signature,
known non-negative shape that fits the signature, values that fit the shape, 0th dimension
<= max_batch_size, and all tensors together decoding to <= max_decoded_bytes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from serving.signatures import batch_size_error, check_shape
from serving.status import ServingError

if TYPE_CHECKING:
    from serving.model_registry import Signature

# Decoded bytes charged per string element: a numpy object pointer plus a TF tstring.
STRING_ELEMENT_BYTES = 32
# A request's tensors may decode to at most this many times --max-request-bytes, unless
# --max-decoded-bytes says otherwise. 8 is what a dense request needs at most (an int64 sent
# as a one-byte varint); anything larger is a small message declaring a huge shape.
DECODED_BYTES_PER_REQUEST_BYTE = 8
MAX_TENSOR_RANK = 32

# TensorProto dtypes a request may carry -> (field holding the values, bytes per element).
_PROTO_DTYPES = {
    1: ("float_val", 4), 2: ("double_val", 8), 3: ("int_val", 4), 4: ("int_val", 1),
    5: ("int_val", 2), 6: ("int_val", 1), 7: ("string_val", STRING_ELEMENT_BYTES),
    9: ("int64_val", 8), 10: ("bool_val", 1), 17: ("int_val", 2), 19: ("half_val", 2),
    22: ("uint32_val", 4), 23: ("uint64_val", 8),
}
_DT_STRING = 7


def _dtype_label(enum: int) -> str:
    from tensorflow.core.framework import types_pb2

    try:
        return types_pb2.DataType.Name(enum)
    except ValueError:
        return f"dtype {enum}"


def check_tensor_proto(name: str, proto, spec) -> tuple[list[int], int]:
    """Checks a request TensorProto against the signature's TensorSpec without decoding it.

    Returns (shape, bytes it decodes to). INVALID_ARGUMENT for an unsupported or mismatched
    dtype, a negative or unknown shape, or values that do not fit the declared shape."""
    label = _dtype_label(proto.dtype)
    entry = _PROTO_DTYPES.get(proto.dtype)
    if entry is None:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': unsupported dtype {label}; requests may carry "
                           f"numbers, bools and strings")
    field, element_bytes = entry
    wants_string = spec.dtype.name == "string"
    if (proto.dtype == _DT_STRING) != wants_string:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': expects {spec.dtype.name} but {label} is provided")
    if proto.tensor_shape.unknown_rank:
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': tensor shape has unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if len(dims) > MAX_TENSOR_RANK:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': rank {len(dims)} exceeds {MAX_TENSOR_RANK}")
    if any(d < 0 for d in dims):
        raise ServingError("INVALID_ARGUMENT", f"input '{name}': negative dimension in {dims}")
    count = 1
    for d in dims:
        count *= d
    if proto.tensor_content:
        if proto.dtype == _DT_STRING:
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{name}': string tensors cannot use tensor_content")
        if len(proto.tensor_content) != count * element_bytes:
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{name}': tensor_content has {len(proto.tensor_content)} "
                               f"bytes, shape {dims} of {label} needs {count * element_bytes}")
    elif len(getattr(proto, field)) > count:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': {len(getattr(proto, field))} values do not fit "
                           f"shape {dims}")
    if not wants_string:  # numbers are converted to the signature's dtype after decoding
        element_bytes = max(element_bytes, spec.dtype.size)
    return dims, count * element_bytes


def check_request_tensors(protos: Mapping[str, Any], sig: Signature, max_batch_size: int,
                          max_decoded_bytes: int) -> None:
    """Everything about a Predict request's tensors that can be checked before allocating:
    dtypes, shapes against the signature, the batch size and the decoded size budget."""
    total = 0
    for name in sorted(protos):
        proto = protos[name]
        dims, decoded = check_tensor_proto(name, proto, sig.inputs[name])
        total += decoded
        if total > max_decoded_bytes:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"input '{name}': shape {dims} of {_dtype_label(proto.dtype)} decodes to "
                f"{decoded} bytes; a request's tensors may decode to at most "
                f"{max_decoded_bytes} bytes (the server's --max-decoded-bytes)")
        if dims and dims[0] > max_batch_size:
            raise batch_size_error(dims[0], max_batch_size, f"0th dimension of input '{name}'")
        check_shape(name, dims, sig.inputs[name])


def decode_request_tensors(protos: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    try:
        return {k: tf.make_ndarray(v) for k, v in protos.items()}
    except (TypeError, ValueError) as err:
        raise ServingError("INVALID_ARGUMENT", f"bad input tensor proto: {err}") from None
