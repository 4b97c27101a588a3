"""serving.tensor_limits: a PredictRequest's TensorProtos judged from their declared shapes
and dtypes alone, before anything is decoded (no model, no server)."""
import pytest

import matta_tf  # noqa: F401  (before TensorFlow)


def _sig(**specs):
    from serving.model_registry import Signature

    return Signature("serving_default", None, specs, {})


def _proto(dtype, dims, field=None, values=(), content=b""):
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_content=content)
    for d in dims:
        proto.tensor_shape.dim.add(size=d)
    if field:
        getattr(proto, field).extend(values)
    return proto


def _error(fn, *args):
    from serving.status import ServingError

    with pytest.raises(ServingError) as err:
        fn(*args)
    assert err.value.code == "INVALID_ARGUMENT"
    return err.value.message


def test_decoded_size_is_declared_shape_times_element_size():
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2 as t

    from serving.tensor_limits import STRING_ELEMENT_BYTES, check_tensor_proto

    floats = tf.TensorSpec([None, 4], tf.float32)
    assert check_tensor_proto("x", _proto(t.DT_FLOAT, [3, 4], "float_val", [1.0]), floats) \
        == ([3, 4], 48)
    # Converted to the signature's dtype after decoding: the larger size counts.
    assert check_tensor_proto("x", _proto(t.DT_INT8, [10], "int_val", [1]),
                              tf.TensorSpec([None], tf.int64))[1] == 80
    assert check_tensor_proto("x", _proto(t.DT_DOUBLE, [2], content=b"\0" * 16),
                              tf.TensorSpec([None], tf.float32))[1] == 16
    assert check_tensor_proto("s", _proto(t.DT_STRING, [5, 2], "string_val", [b"a"]),
                              tf.TensorSpec([None], tf.string))[1] == 10 * STRING_ELEMENT_BYTES
    assert check_tensor_proto("x", _proto(t.DT_FLOAT, [2 ** 40], "float_val", [1.0]),
                              floats)[1] == 2 ** 42  # no allocation, just arithmetic


def test_proto_errors_are_invalid_argument():
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2 as t

    from serving.tensor_limits import MAX_TENSOR_RANK, check_tensor_proto

    strings = tf.TensorSpec([None], tf.string)
    floats = tf.TensorSpec([None], tf.float32)
    for dtype in (t.DT_VARIANT, t.DT_RESOURCE, t.DT_COMPLEX128, t.DT_BFLOAT16, 99):
        assert "unsupported dtype" in _error(check_tensor_proto, "x", _proto(dtype, [1]), floats)
    assert "expects string but DT_INT64" in _error(
        check_tensor_proto, "x", _proto(t.DT_INT64, [1], "int64_val", [1]), strings)
    assert "expects float32 but DT_STRING" in _error(
        check_tensor_proto, "x", _proto(t.DT_STRING, [1], "string_val", [b"1"]), floats)
    unknown = _proto(t.DT_FLOAT, [1])
    unknown.tensor_shape.unknown_rank = True
    assert "unknown rank" in _error(check_tensor_proto, "x", unknown, floats)
    assert "negative dimension" in _error(check_tensor_proto, "x", _proto(t.DT_FLOAT, [-1]),
                                          floats)
    assert "exceeds" in _error(check_tensor_proto, "x",
                               _proto(t.DT_FLOAT, [1] * (MAX_TENSOR_RANK + 1)), floats)
    assert "do not fit" in _error(check_tensor_proto, "x",
                                  _proto(t.DT_FLOAT, [1], "float_val", [1.0, 2.0]), floats)
    assert "tensor_content has 5 bytes" in _error(
        check_tensor_proto, "x", _proto(t.DT_FLOAT, [2], content=b"\0" * 5), floats)
    assert "cannot use tensor_content" in _error(
        check_tensor_proto, "x", _proto(t.DT_STRING, [1], content=b"abcd"), strings)


def test_request_budget_batch_and_signature_shape():
    import tensorflow as tf
    from tensorflow.core.framework import types_pb2 as t

    from serving.tensor_limits import check_request_tensors, decode_request_tensors

    sig = _sig(a=tf.TensorSpec([None], tf.float32), b=tf.TensorSpec([None, 2], tf.float32))
    ok = {"a": _proto(t.DT_FLOAT, [4], "float_val", [1.0]),
          "b": _proto(t.DT_FLOAT, [4, 2], "float_val", [2.0])}
    check_request_tensors(ok, sig, max_batch_size=4, max_decoded_bytes=48)
    decoded = decode_request_tensors(ok)
    assert decoded["a"].tolist() == [1.0] * 4 and decoded["b"].shape == (4, 2)
    # a: 16 bytes, b: 32 bytes; the budget counts the request's tensors together.
    message = _error(check_request_tensors, ok, sig, 4, 47)
    assert "input 'b'" in message and "decodes to 32 bytes" in message and "at most 47" in message
    assert "Batch size 4 exceeds max batch size 3" in _error(check_request_tensors, ok, sig, 3,
                                                             10 ** 6)
    wrong = {**ok, "b": _proto(t.DT_FLOAT, [4, 3], "float_val", [2.0])}
    assert "dimension 1 must be 2, got 3" in _error(check_request_tensors, wrong, sig, 4, 10 ** 6)
