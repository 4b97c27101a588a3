"""Clients for TensorFlow Serving (and `matta serve`): gRPC and REST, one interface.

    client = make_client("grpc://127.0.0.1:8500")      # or "http://127.0.0.1:8501"
    out = client.predict_examples("ranker", serialized_examples, label="student")
    out["probability"]  # np.ndarray [batch]
    # Columnar tensors instead of tf.Examples (the `predict_raw` signature): one tensor per
    # raw feature, strings as bytes/str, NaN / "" = missing as the export defines.
    out = client.predict_columns("ranker", {"I1": [0.5, 1.0], "C1": ["a", "b"]}, label="student")
    # Ids the client already holds (`predict_ids` of a fused export; column order from
    # the SavedModel's `input_columns()`).
    out = client.predict_ids("ranker", numeric=[[0.5, 1.0]], ids=[[3, 17]], label="student")

Which is cheaper: a tf.Example batch is one string tensor the server parses (one parse op
per batch); columns are one tensor per feature that need no parsing but more, smaller
TensorProtos to build, check and decode - and every string value is a Python object on
both sides. Measured against `matta serve` (bench/bench_serving_throughput.py,
docs/benchmarks.md issue 16): ids are the cheapest (1.5x the examples/s per server core of
tf.Examples at 10 examples a request, 2.1x at 256), columns the dearest (0.55x, 0.8x).
In process, without gRPC, predict_raw is cheaper than serving_default (no parse).

A model is addressed by name plus either a version number or a version label (neither:
the latest version). Each call has a timeout; failures with a transient status
(UNAVAILABLE, DEADLINE_EXCEEDED, or RESOURCE_EXHAUSTED because the server is busy) are
retried a bounded number of times with exponential backoff and jitter,

    sleep_k = min(max_backoff, initial_backoff * multiplier**k) * U(0.5, 1.0),

and everything else (NOT_FOUND, INVALID_ARGUMENT, a request that is too large) fails at
once. Errors are `ServingClientError`s naming the backend, target, model, version/label,
status code and the server's message.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import random
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

import numpy as np

_HTTP_TO_CODE = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 409: "ABORTED", 411: "INVALID_ARGUMENT",
                 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}


class ServingClientError(Exception):
    def __init__(self, backend: str, target: str, model: str, version: int | None,
                 label: str | None, code: str, cause: str, attempts: int):
        self.backend, self.target, self.model = backend, target, model
        self.version, self.label, self.code, self.cause = version, label, code, cause
        self.attempts = attempts
        where = (f"label={label}" if label is not None else
                 f"version={version}" if version is not None else "latest")
        super().__init__(f"{backend} request to model {model!r} ({where}) at {target} failed "
                         f"with {code} after {attempts} attempt(s): {cause}")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Sleep before retry number `attempt` (0-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** attempt)
        return base * rng.uniform(0.5, 1.0)


def is_retryable(code: str, message: str) -> bool:
    if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        return True
    # A busy server is worth retrying; a request that is too large is not.
    return code == "RESOURCE_EXHAUSTED" and "busy" in message


class _Attempt(Exception):
    def __init__(self, code: str, cause: str):
        super().__init__(cause)
        self.code, self.cause = code, cause


class _BaseClient:
    backend = "?"

    def __init__(self, target: str, timeout_s: float, retry: RetryPolicy | None, seed: int):
        self.target = target
        self.timeout_s = float(timeout_s)
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self.retries = 0  # total retries made, for monitoring

    def _with_retries(self, model, version, label, fn: Callable[[float], Any],
                      timeout_s: float | None):
        if version is not None and label is not None:
            raise ValueError(f"model {model!r}: give a version or a label, not both")
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        for attempt in range(self.retry.max_attempts):
            try:
                return fn(timeout)
            except _Attempt as err:
                last = attempt + 1 == self.retry.max_attempts
                if last or not is_retryable(err.code, err.cause):
                    raise ServingClientError(self.backend, self.target, model, version, label,
                                             err.code, err.cause, attempt + 1) from None
                self.retries += 1
                time.sleep(self.retry.backoff(attempt, self._rng))
        raise AssertionError("unreachable")

    def predict_examples(self, model: str, serialized_examples: Sequence[bytes], *,
                         version: int | None = None, label: str | None = None,
                         timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Calls `serving_default` with `examples` = the serialized tf.Examples."""
        return self.predict(model, {"examples": list(serialized_examples)}, version=version,
                            label=label, timeout_s=timeout_s)

    def predict_columns(self, model: str, columns, *, version: int | None = None,
                        label: str | None = None, signature_name: str = "predict_raw",
                        timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Calls `predict_raw` (by default) with one [batch] tensor per raw feature: floats as
        float32, integers as int64, strings as bytes (str is UTF-8 encoded)."""
        return self.predict(model, columns_to_arrays(columns), version=version, label=label,
                            signature_name=signature_name, timeout_s=timeout_s)

    def predict_ids(self, model: str, numeric, ids, *, version: int | None = None,
                    label: str | None = None, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Calls `predict_ids` (fused exports): `numeric` float32 [batch, n] raw numeric values,
        `ids` int64 [batch, m] categorical ids, columns in the SavedModel's input_columns order."""
        return self.predict(model, {"numeric": np.asarray(numeric, np.float32),
                                    "ids": np.asarray(ids, np.int64)},
                            version=version, label=label, signature_name="predict_ids",
                            timeout_s=timeout_s)

    def predict(self, model, inputs, *, version=None, label=None,
                signature_name="serving_default", timeout_s=None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def model_status(self, model, *, version=None, label=None, timeout_s=None) -> list[dict]:
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GrpcClient(_BaseClient):
    """PredictionService/ModelService over gRPC (tensorflow-serving-api stubs)."""

    backend = "gRPC"

    def __init__(self, target: str, timeout_s: float = 5.0, retry: RetryPolicy | None = None,
                 max_message_bytes: int = 64 * 1024 * 1024, seed: int = 0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        super().__init__(target, timeout_s, retry, seed)
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    @staticmethod
    def _spec(spec, model, version, label, signature_name=None):
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        if label is not None:
            spec.version_label = label
        if signature_name:
            spec.signature_name = signature_name

    def _rpc(self, method, request, timeout):
        import grpc

        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as err:
            raise _Attempt(err.code().name, err.details() or str(err)) from None

    def predict(self, model, inputs, *, version=None, label=None,
                signature_name="serving_default", timeout_s=None):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, label, signature_name)
        for name, value in inputs.items():
            if not fill_tensor_proto(request.inputs[name], value):
                arr = np.asarray(value, dtype=object) if _is_strings(value) else np.asarray(value)
                request.inputs[name].CopyFrom(tf.make_tensor_proto(arr))
        response = self._with_retries(model, version, label,
                                      lambda t: self._rpc(self._predict.Predict, request, t),
                                      timeout_s)
        return {k: tensor_proto_to_array(v) for k, v in response.outputs.items()}

    def model_status(self, model, *, version=None, label=None, timeout_s=None):
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version, label)
        response = self._with_retries(model, version, label,
                                      lambda t: self._rpc(self._models.GetModelStatus, request, t),
                                      timeout_s)
        return [{"version": s.version,
                 "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state)}
                for s in response.model_version_status]

    def close(self):
        self._channel.close()


_DT_FLOAT, _DT_DOUBLE, _DT_INT32, _DT_STRING, _DT_INT64 = 1, 2, 3, 7, 9
_FAST_DTYPES = {np.dtype(np.float32): _DT_FLOAT, np.dtype(np.float64): _DT_DOUBLE,
                np.dtype(np.int32): _DT_INT32, np.dtype(np.int64): _DT_INT64}


def fill_tensor_proto(proto, value) -> bool:
    """Writes `value` into a TensorProto without `tf.make_tensor_proto` (a large share of a
    small request's client cost): numeric numpy arrays as little-endian `tensor_content`,
    flat lists of bytes as `string_val`. Returns False for anything else (the caller uses
    `tf.make_tensor_proto`)."""
    if isinstance(value, np.ndarray) and value.dtype in _FAST_DTYPES:
        proto.dtype = _FAST_DTYPES[value.dtype]
        for d in value.shape:
            proto.tensor_shape.dim.add().size = int(d)
        proto.tensor_content = np.ascontiguousarray(value, value.dtype.newbyteorder("<")).tobytes()
        return True
    if isinstance(value, (list, tuple)) and all(type(v) is bytes for v in value):
        proto.dtype = _DT_STRING
        proto.tensor_shape.dim.add().size = len(value)
        proto.string_val.extend(value)
        return True
    return False


def tensor_proto_to_array(proto) -> np.ndarray:
    """`tf.make_ndarray` for the outputs a ranker returns (float32 vectors), without TF."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == _DT_FLOAT and not proto.tensor_content and (
            len(proto.float_val) == int(np.prod(dims))):
        return np.asarray(proto.float_val, np.float32).reshape(dims)
    if proto.dtype == _DT_FLOAT and proto.tensor_content:
        return np.frombuffer(proto.tensor_content, "<f4").reshape(dims).astype(np.float32)
    import tensorflow as tf

    return tf.make_ndarray(proto)


def columns_to_arrays(columns) -> dict:
    """name -> values: floats float32, integers int64, strings a list of bytes."""
    out = {}
    for name, value in columns.items():
        if _is_strings(value):
            flat = np.asarray(value, dtype=object).reshape(-1)
            out[name] = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat]
            continue
        arr = np.asarray(value)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        elif arr.dtype.kind in "iub":
            arr = arr.astype(np.int64, copy=False)
        out[name] = arr
    return out


def _is_strings(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == object or value.dtype.kind in "SU"
    flat = value
    while isinstance(flat, (list, tuple)) and flat:
        flat = flat[0]
    return isinstance(flat, (bytes, str))


def _to_json(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class RestClient(_BaseClient):
    """TF Serving's REST API (api_rest.md) with urllib; `fmt` is "row" or "columnar"."""

    backend = "REST"

    def __init__(self, base_url: str, timeout_s: float = 5.0, retry: RetryPolicy | None = None,
                 fmt: str = "row", seed: int = 0):
        if fmt not in ("row", "columnar"):
            raise ValueError(f"fmt must be 'row' or 'columnar', got {fmt!r}")
        super().__init__(base_url.rstrip("/"), timeout_s, retry, seed)
        self.fmt = fmt

    def _url(self, model, version, label, suffix=""):
        from urllib.parse import quote

        url = f"{self.target}/v1/models/{quote(model, safe='')}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label is not None:
            url += f"/labels/{quote(label, safe='')}"
        return url + suffix

    def _http(self, url: str, body: bytes | None, timeout: float):
        request = urllib.request.Request(
            url, data=body, method="POST" if body is not None else "GET",
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                message = json.loads(raw).get("error", raw.decode("utf-8", "replace"))
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace")[:500]
            raise _Attempt(_HTTP_TO_CODE.get(err.code, "UNKNOWN"),
                           f"HTTP {err.code}: {message}") from None
        except (TimeoutError, socket.timeout) as err:
            raise _Attempt("DEADLINE_EXCEEDED", f"timed out after {timeout}s: {err}") from None
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Attempt("DEADLINE_EXCEEDED", f"timed out after {timeout}s") from None
            raise _Attempt("UNAVAILABLE", f"cannot reach {url}: {reason}") from None

    def predict(self, model, inputs, *, version=None, label=None,
                signature_name="serving_default", timeout_s=None):
        names = list(inputs)
        body: dict[str, Any] = {"signature_name": signature_name}
        if self.fmt == "row":
            columns = {k: _to_json(inputs[k]) for k in names}
            n = len(columns[names[0]])
            if len(names) == 1:
                body["instances"] = columns[names[0]]
            else:
                body["instances"] = [{k: columns[k][i] for k in names} for i in range(n)]
        else:
            body["inputs"] = {k: _to_json(inputs[k]) for k in names}
        data = json.dumps(body).encode("utf-8")
        url = self._url(model, version, label, ":predict")
        out = self._with_retries(model, version, label,
                                 lambda t: self._http(url, data, t), timeout_s)
        if "predictions" in out:
            preds = out["predictions"]
            if preds and isinstance(preds[0], dict):
                return {k: np.asarray(_from_json([p[k] for p in preds])) for k in preds[0]}
            return {"predictions": np.asarray(_from_json(preds))}
        outputs = out.get("outputs")
        if isinstance(outputs, dict):
            return {k: np.asarray(_from_json(v)) for k, v in outputs.items()}
        return {"outputs": np.asarray(_from_json(outputs))}

    def model_status(self, model, *, version=None, label=None, timeout_s=None):
        url = self._url(model, version, label)
        out = self._with_retries(model, version, label,
                                 lambda t: self._http(url, None, t), timeout_s)
        return [{"version": int(s["version"]), "state": s["state"]}
                for s in out.get("model_version_status", [])]


def make_client(address: str, **kwargs) -> _BaseClient:
    """`grpc://host:port` (or `host:port`) -> GrpcClient; `http://host:port` -> RestClient."""
    if address.startswith(("http://", "https://")):
        return RestClient(address, **kwargs)
    if address.startswith("grpc://"):
        address = address[len("grpc://"):]
    return GrpcClient(address, **kwargs)

