"""`matta serve`: a local server speaking TensorFlow Serving's gRPC and REST APIs.

For machines where `tensorflow_model_server` cannot be installed. It reads the same
`models.config` and `<base_path>/<version>/saved_model.pb` layout, loads each version with
`tf.saved_model.load`, replays its `assets.extra/tf_serving_warmup_requests`, and answers:

gRPC (official generated servicers from tensorflow-serving-api):
  PredictionService.Predict, PredictionService.GetModelMetadata (signature_def),
  ModelService.GetModelStatus. Classify/Regress/MultiInference answer UNIMPLEMENTED.
REST (TF Serving's api_rest.md wire format):
  POST /v1/models/{name}[/versions/{v}|/labels/{l}]:predict   `instances` | `inputs`
       -> `{"predictions": ...}` | `{"outputs": ...}`; binary strings as `{"b64": ...}`
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]           GetModelStatusResponse JSON
  GET  /v1/models/{name}[/versions/{v}|/labels/{l}]/metadata  GetModelMetadataResponse JSON
  errors: `{"error": "<message>"}` with the HTTP code TF Serving maps the status to.

Status semantics follow TF Serving's server_core.cc: unknown model or version ->
NOT_FOUND ("Servable not found for request: ..."); unknown version label ->
INVALID_ARGUMENT ("Unrecognized servable version label: ..."); malformed input ->
INVALID_ARGUMENT.

Hardening (what one request may cost):
- bodies above `max_request_bytes` are refused before being read (REST 413, gRPC
  RESOURCE_EXHAUSTED via max_receive_message_length);
- a gRPC tensor's declared shape x dtype size (strings: STRING_ELEMENT_BYTES per element) is
  checked before anything is allocated: a request's tensors may decode to at most
  `max_decoded_bytes` (default 8 x max_request_bytes), else INVALID_ARGUMENT;
- at most `max_batch_size` instances (0th dimension) per request, else INVALID_ARGUMENT
  "Batch size N exceeds max batch size M" (TF Serving's batching limit);
- at most `max_concurrency` requests decode/parse/run at once (a REST body is JSON-parsed
  only inside that limit); the rest wait up to `queue_timeout_s`, then RESOURCE_EXHAUSTED;
- a JSON body nesting deeper than MAX_JSON_DEPTH, invalid JSON or UTF-8, a non-ASCII-digit
  version, an unsupported dtype (DT_VARIANT, ...) or unparsable tf.Examples ("Could not
  parse example input") are INVALID_ARGUMENT / 400; unexpected failures are INTERNAL / 500
  with a message (never UNKNOWN or a dropped connection); messages are capped at
  MAX_ERROR_MESSAGE_CHARS;
- model names and labels must match `serving.config.NAME_PATTERN` and are only ever looked
  up in the loaded table, never joined into a path;
- the REST listener has a backlog of REST_LISTEN_BACKLOG, so bursts of connects queue;
- `stop()` refuses new work (UNAVAILABLE), lets in-flight requests finish within a grace
  period, then closes.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping

import numpy as np

from serving import config as serving_config

log = logging.getLogger("matta.serve")

# TF Serving's mapping of canonical status codes to HTTP (util/net_http + http_rest_api_handler).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
    "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


# Error messages are cut to this length: gRPC carries them in trailing metadata (8 KiB by
# default), and TF ops quote whole inputs in theirs.
MAX_ERROR_MESSAGE_CHARS = 2000


class ServingError(Exception):
    """An error with a canonical status code name (`NOT_FOUND`, `INVALID_ARGUMENT`, ...)."""

    def __init__(self, code: str, message: str):
        if len(message) > MAX_ERROR_MESSAGE_CHARS:  # e.g. an op quoting a whole bad input
            message = (message[:MAX_ERROR_MESSAGE_CHARS]
                       + f"... [{len(message) - MAX_ERROR_MESSAGE_CHARS} more characters]")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


@dataclasses.dataclass
class Signature:
    name: str
    function: Any
    inputs: dict[str, Any]  # name -> tf.TensorSpec
    outputs: dict[str, Any]


@dataclasses.dataclass
class LoadedVersion:
    model_name: str
    version: int
    path: str
    obj: Any
    signatures: dict[str, Signature]
    signature_def_map: Any  # tensorflow_serving.apis.get_model_metadata_pb2.SignatureDefMap
    load_seconds: float = 0.0
    warmup_requests: int = 0


def _load_version(model_name: str, version: int, path: str) -> LoadedVersion:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(f"model {model_name!r} version {version}: no saved_model.pb in {path}")
    start = time.perf_counter()
    obj = tf.saved_model.load(path)
    signatures = {}
    for name, fn in obj.signatures.items():
        _, kwargs = fn.structured_input_signature
        signatures[name] = Signature(name, fn, dict(kwargs), dict(fn.structured_outputs))
    if "serving_default" not in signatures:
        raise ValueError(f"model {model_name!r} version {version} ({path}) has no "
                         f"serving_default signature; it has {sorted(signatures)}")
    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved.ParseFromString(f.read())
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in saved.meta_graphs[0].signature_def.items():
        if not key.startswith("__"):
            sig_map.signature_def[key].CopyFrom(sig)
    return LoadedVersion(model_name, version, path, obj, signatures, sig_map,
                         load_seconds=time.perf_counter() - start)


class ModelRegistry:
    """The loaded servables of a `models.config`.

    `versions` (model -> version -> LoadedVersion) is replaced as a whole, never mutated,
    so a request that read it sees one consistent set while `refresh` loads new versions
    of "latest"/"all" models in the background.
    """

    def __init__(self, models: list[serving_config.ServedModel],
                 versions: dict[str, dict[int, LoadedVersion]], warmup: bool = True):
        self.models = {m.name: m for m in models}
        self.versions = versions
        self.warmup = warmup
        self._refresh_lock = threading.Lock()
        self.load_failures: dict[str, str] = {}  # "model/version" -> last load error

    def _load(self, model: serving_config.ServedModel, version: int) -> LoadedVersion:
        path = os.path.join(model.base_path, str(version))
        loaded = _load_version(model.name, version, path)
        if self.warmup:
            loaded.warmup_requests = _run_warmup(loaded)
        log.info("loaded %s version %d from %s in %.2fs (%d warm-up requests)",
                 model.name, version, path, loaded.load_seconds, loaded.warmup_requests)
        return loaded

    @classmethod
    def load(cls, models_config_path: str, warmup: bool = True) -> ModelRegistry:
        models = serving_config.parse_models_config(models_config_path)
        registry = cls(models, {}, warmup)
        versions: dict[str, dict[int, LoadedVersion]] = {}
        for model in models:
            wanted = model.versions_to_serve(serving_config.versions_on_disk(model.base_path))
            if not wanted:
                raise ValueError(f"{models_config_path}: model {model.name!r} ({model.policy} policy) "
                                 f"has no version with a saved_model.pb under {model.base_path}")
            versions[model.name] = {v: registry._load(model, v) for v in wanted}
            for label, v in model.labels.items():
                if v not in versions[model.name]:
                    raise ValueError(f"{models_config_path}: model {model.name!r} label {label!r} -> "
                                     f"version {v}, which the {model.policy} policy does not serve "
                                     f"(serving {sorted(versions[model.name])})")
        registry.versions = versions
        return registry

    def refresh(self) -> dict[str, dict[str, list[int]]]:
        """Rescans the base paths of "latest"/"all" models: loads new versions, unloads
        versions the policy no longer wants. A version that fails to load (e.g. still being
        copied) is skipped and retried on the next call; a model is never left with no
        version. Returns {model: {"loaded": [...], "unloaded": [...]}} for what changed."""
        changes: dict[str, dict[str, list[int]]] = {}
        with self._refresh_lock:
            current = self.versions
            updated = dict(current)
            for name, model in self.models.items():
                if model.policy == "specific":
                    continue
                wanted = model.versions_to_serve(serving_config.versions_on_disk(model.base_path))
                serving = dict(current[name])
                fresh = {}
                for v in wanted:
                    if v in serving:
                        continue
                    try:
                        fresh[v] = self._load(model, v)
                        self.load_failures.pop(f"{name}/{v}", None)
                    except Exception as err:  # noqa: BLE001 - keep serving what works
                        self.load_failures[f"{name}/{v}"] = str(err)
                        log.warning("could not load %s version %d (retrying on the next poll): %s",
                                    name, v, err)
                new = {v: fresh.get(v) or serving[v] for v in wanted if v in fresh or v in serving}
                if not new:  # nothing loadable: keep what is served rather than serve nothing
                    continue
                dropped = sorted(set(serving) - set(new))
                if fresh or dropped:
                    updated[name] = new
                    changes[name] = {"loaded": sorted(fresh), "unloaded": dropped}
                    for v in dropped:
                        log.info("unloaded %s version %d", name, v)
            if changes:
                self.versions = updated
        return changes

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> LoadedVersion:
        if not isinstance(name, str) or not serving_config.NAME_PATTERN.match(name):
            raise ServingError("INVALID_ARGUMENT", f"Invalid model name: {name!r}")
        if name not in self.models:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {what}")
        if version is not None and label is not None:
            raise ServingError("INVALID_ARGUMENT",
                               "Both version and version_label are set in model_spec")
        if label is not None:
            if not serving_config.NAME_PATTERN.match(label):
                raise ServingError("INVALID_ARGUMENT", f"Invalid version label: {label!r}")
            if label not in self.models[name].labels:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Unrecognized servable version label: {label}")
            version = self.models[name].labels[label]
        available = self.versions[name]  # one snapshot: refresh swaps the dict, never edits it
        if version is None:
            version = max(available)
        if version not in available:
            raise ServingError("NOT_FOUND",
                               f"Servable not found for request: Specific({name}, {version})")
        return available[version]


def _run_warmup(loaded: LoadedVersion) -> int:
    """Replays `assets.extra/tf_serving_warmup_requests` like TF Serving does at load time."""
    import tensorflow as tf

    path = os.path.join(loaded.path, serving_config.WARMUP_RELATIVE_PATH)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in serving_config.read_warmup_requests(path):
        if record.WhichOneof("log_type") != "predict_log":
            continue
        request = record.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        run_signature(loaded, request.model_spec.signature_name or "serving_default", inputs)
        count += 1
    return count


_TF_DTYPE_TO_NUMPY = {
    "float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
    "bool": np.bool_, "string": object,
}


def _coerce_input(name: str, value: Any, spec) -> np.ndarray:
    """Checks one input against the signature's TensorSpec; INVALID_ARGUMENT on mismatch."""
    dtype = spec.dtype.name
    try:
        if dtype == "string":
            arr = np.asarray(value, dtype=object)
            flat = arr.reshape(-1)
            for i, item in enumerate(flat):
                if isinstance(item, str):
                    flat[i] = item.encode("utf-8")
                elif not isinstance(item, bytes):
                    raise TypeError(f"element {i} is {type(item).__name__}, not a string")
        elif dtype in _TF_DTYPE_TO_NUMPY:
            arr = np.asarray(value)
            if arr.dtype == object or arr.dtype.kind in "USV":
                raise TypeError(f"got {arr.dtype} values")
            arr = arr.astype(_TF_DTYPE_TO_NUMPY[dtype])
        else:
            raise TypeError(f"unsupported input dtype {dtype}")
    except (TypeError, ValueError) as err:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': expected {dtype} values: {err}") from None
    check_shape(name, list(arr.shape), spec)
    return arr


def check_shape(name: str, dims: list[int], spec) -> None:
    """INVALID_ARGUMENT unless `dims` fits the signature's TensorSpec shape."""
    shape = spec.shape
    if shape.rank is None:
        return
    if len(dims) != shape.rank:
        raise ServingError("INVALID_ARGUMENT",
                           f"input '{name}': expected rank {shape.rank} ({shape}), "
                           f"got shape {list(dims)}")
    for i, (want, got) in enumerate(zip(shape.as_list(), dims, strict=True)):
        if want is not None and want != got:
            raise ServingError("INVALID_ARGUMENT",
                               f"input '{name}': dimension {i} must be {want}, got {got}")


def get_signature(loaded: LoadedVersion, signature_name: str) -> Signature:
    sig = loaded.signatures.get(signature_name or "serving_default")
    if sig is None:
        raise ServingError("INVALID_ARGUMENT",
                           f"Serving signature name: \"{signature_name}\" not found in signature def")
    return sig


def check_input_names(loaded: LoadedVersion, signature_name: str, sig: Signature,
                      names) -> None:
    missing = sorted(set(sig.inputs) - set(names))
    extra = sorted(set(names) - set(sig.inputs))
    if missing or extra:
        raise ServingError("INVALID_ARGUMENT",
                           f"signature '{signature_name}' of model {loaded.model_name} expects "
                           f"inputs {sorted(sig.inputs)}; missing {missing}, unexpected {extra}")


def batch_size_error(size: int, limit: int, what: str) -> ServingError:
    """TF Serving's batching limit, as INVALID_ARGUMENT (the request can never fit)."""
    return ServingError("INVALID_ARGUMENT",
                        f"Batch size {size} exceeds max batch size {limit} ({what}; "
                        f"the server's --max-batch-size)")


def run_signature(loaded: LoadedVersion, signature_name: str,
                  inputs: Mapping[str, Any], output_filter=()) -> dict[str, np.ndarray]:
    """Validates inputs against the signature, runs it, returns numpy outputs."""
    import tensorflow as tf

    signature_name = signature_name or "serving_default"
    sig = get_signature(loaded, signature_name)
    check_input_names(loaded, signature_name, sig, inputs)
    arrays = {k: _coerce_input(k, v, sig.inputs[k]) for k, v in inputs.items()}
    batch = {a.shape[0] for a in arrays.values() if a.ndim > 0}
    if len(batch) > 1:
        raise ServingError("INVALID_ARGUMENT",
                           f"all inputs must have equal 0th-dimension size, got {sorted(batch)}")
    unknown = sorted(set(output_filter) - set(sig.outputs))
    if unknown:
        raise ServingError("INVALID_ARGUMENT",
                           f"output tensor alias not found in signature: {unknown}")
    try:
        result = sig.function(**{k: tf.constant(v, dtype=sig.inputs[k].dtype)
                                 for k, v in arrays.items()})
    except tf.errors.InvalidArgumentError as err:
        raise ServingError("INVALID_ARGUMENT", err.message) from None
    except UnicodeDecodeError as err:
        # TF could not turn an op's error into a Python string because it quotes the bad
        # input, e.g. ParseExample's "Could not parse example input, value: '\xff...'".
        raw = err.object if isinstance(err.object, bytes) else b""
        raise ServingError("INVALID_ARGUMENT",
                           raw.decode("utf-8", "backslashreplace").strip()
                           or f"running {signature_name}: invalid input") from None
    except (tf.errors.OpError, ValueError, TypeError) as err:
        raise ServingError("INTERNAL", f"running {signature_name}: {err}") from None
    names = list(output_filter) or sorted(result)
    return {k: result[k].numpy() for k in names}


# --------------------------------------------------------------------- gRPC tensor limits

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


# ---------------------------------------------------------------------------- REST wire format

MAX_JSON_DEPTH = 64  # nesting of JSON arrays/objects in a :predict body


def json_nesting_depth(body: bytes, stop_above: int = MAX_JSON_DEPTH,
                       chunk_bytes: int = 1 << 18) -> int:
    """Deepest array/object nesting of a JSON text, found without parsing it: linear time,
    memory bounded by `chunk_bytes` whatever the body. Strings (with their escapes) are
    skipped; an invalid text gets some number and fails to parse later. Stops counting
    once deeper than `stop_above`."""
    data = np.frombuffer(body, np.uint8)
    depth = deepest = 0
    in_string = 0  # 1 while inside a string at the start of the chunk
    carried = 0  # length of the backslash run that ended the previous chunk
    for start in range(0, data.size, chunk_bytes):
        chunk = data[start:start + chunk_bytes]
        is_backslash = chunk == 92
        # Index of the last non-backslash at or before each position (-1: none in this chunk).
        last_other = np.maximum.accumulate(np.where(is_backslash, -1, np.arange(chunk.size)))
        quotes = np.flatnonzero(chunk == 34)
        before = np.maximum(quotes - 1, 0)
        run = np.where(quotes > 0, quotes - 1 - last_other[before], 0)
        run += np.where((quotes == 0) | (last_other[before] == -1), carried, 0)
        real_quotes = quotes[run % 2 == 0]  # a quote after an odd backslash run is escaped
        brackets = np.flatnonzero((chunk == 91) | (chunk == 93) | (chunk == 123) | (chunk == 125))
        outside = (np.searchsorted(real_quotes, brackets) + in_string) % 2 == 0
        kinds = chunk[brackets[outside]]
        steps = np.where((kinds == 91) | (kinds == 123), 1, -1)
        if steps.size:
            levels = depth + np.cumsum(steps)
            deepest = max(deepest, int(levels.max()))
            depth = int(levels[-1])
        in_string = (in_string + real_quotes.size) % 2
        if is_backslash[-1]:
            tail = chunk.size - 1 - int(last_other[-1])
            carried = tail + (carried if last_other[-1] == -1 else 0)
        else:
            carried = 0
        if deepest > stop_above:
            break
    return deepest


def parse_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """A :predict body -> JSON value; INVALID_ARGUMENT (never RecursionError) when it is not
    UTF-8 JSON or nests deeper than `max_depth`."""
    depth = json_nesting_depth(body, max_depth)
    if depth > max_depth:
        raise ServingError("INVALID_ARGUMENT",
                           f"JSON Parse error: nesting deeper than {max_depth} levels")
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ServingError("INVALID_ARGUMENT", f"JSON Parse error: {err}") from None


def _decode_json_value(value: Any, dtype: str) -> Any:
    """JSON value -> nested python lists, decoding `{"b64": ...}` for string tensors."""
    if isinstance(value, list):
        return [_decode_json_value(v, dtype) for v in value]
    if isinstance(value, dict):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError as err:
                raise ServingError("INVALID_ARGUMENT", f"invalid base64 value: {err}") from None
        raise ServingError("INVALID_ARGUMENT",
                           f"unexpected JSON object {sorted(value)[:3]} where a tensor value was expected")
    if dtype == "string" and not isinstance(value, str):
        raise ServingError("INVALID_ARGUMENT", f"expected a string value, got {value!r}")
    if dtype != "string" and (isinstance(value, str) or value is None):
        raise ServingError("INVALID_ARGUMENT", f"expected a number, got {value!r}")
    return value


def parse_rest_predict(body: Any, sig_inputs: Mapping[str, Any],
                       max_batch_size: int | None = None) -> tuple[dict, str]:
    """Parses a :predict JSON body -> (inputs, "row"|"columnar"). With `max_batch_size`,
    more instances (or a longer 0th dimension) is INVALID_ARGUMENT before any decoding."""
    if not isinstance(body, dict):
        raise ServingError("INVALID_ARGUMENT", "request body must be a JSON object")
    unknown = sorted(set(body) - {"signature_name", "instances", "inputs"})
    if unknown:
        raise ServingError("INVALID_ARGUMENT", f"unexpected keys in request: {unknown}")
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise ServingError("INVALID_ARGUMENT",
                           "Missing 'inputs' or 'instances' key" if not has_instances else
                           "Request can have either 'inputs' or 'instances' key but not both")
    names = list(sig_inputs)
    dtypes = {k: sig_inputs[k].dtype.name for k in names}
    if has_instances:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise ServingError("INVALID_ARGUMENT", "'instances' must be a non-empty JSON list")
        if max_batch_size is not None and len(rows) > max_batch_size:
            raise batch_size_error(len(rows), max_batch_size, "number of 'instances'")
        columns: dict[str, list] = {k: [] for k in names}
        for i, row in enumerate(rows):
            named = isinstance(row, dict) and not (set(row) == {"b64"})
            if len(names) == 1 and not named:
                columns[names[0]].append(_decode_json_value(row, dtypes[names[0]]))
                continue
            if not named:
                raise ServingError("INVALID_ARGUMENT",
                                   f"instances[{i}]: expected an object with keys {names}")
            if set(row) != set(names):
                raise ServingError("INVALID_ARGUMENT",
                                   f"instances[{i}]: keys {sorted(row)} do not match the "
                                   f"signature inputs {sorted(names)}")
            for k in names:
                columns[k].append(_decode_json_value(row[k], dtypes[k]))
        return columns, "row"
    value = body["inputs"]
    if max_batch_size is not None:
        for k, v in (value.items() if isinstance(value, dict) else [("inputs", value)]):
            if isinstance(v, list) and len(v) > max_batch_size:
                raise batch_size_error(len(v), max_batch_size, f"0th dimension of '{k}'")
    if len(names) == 1 and not (isinstance(value, dict) and set(value) == {names[0]}):
        return {names[0]: _decode_json_value(value, dtypes[names[0]])}, "columnar"
    if not isinstance(value, dict):
        raise ServingError("INVALID_ARGUMENT", f"'inputs' must be an object with keys {names}")
    return {k: _decode_json_value(v, dtypes.get(k, "string")) for k, v in value.items()}, "columnar"


def _json_value(name: str, arr: np.ndarray) -> Any:
    if arr.dtype == object or arr.dtype.kind == "S":
        def enc(x):
            if isinstance(x, list):
                return [enc(v) for v in x]
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(x).decode("ascii")}
            return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else x
        return enc(arr.tolist())
    return arr.tolist()


def format_rest_predict(outputs: Mapping[str, np.ndarray], form: str) -> dict:
    names = sorted(outputs)
    if form == "columnar":
        if len(names) == 1:
            return {"outputs": _json_value(names[0], outputs[names[0]])}
        return {"outputs": {k: _json_value(k, outputs[k]) for k in names}}
    values = {k: _json_value(k, outputs[k]) for k in names}
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    sizes = {len(v) if isinstance(v, list) else -1 for v in values.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise ServingError("INVALID_ARGUMENT", "outputs do not share a 0th dimension; "
                                               "use the columnar 'inputs' request format")
    n = sizes.pop()
    return {"predictions": [{k: values[k][i] for k in names} for i in range(n)]}


# ------------------------------------------------------------------------------ the server core

@dataclasses.dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 8500  # 0 = pick a free port
    rest_port: int = 8501  # 0 = pick a free port; -1 = no REST
    max_request_bytes: int = 8 * 1024 * 1024
    max_concurrency: int = 4  # predictions running at once
    queue_timeout_s: float = 5.0  # wait for a slot before RESOURCE_EXHAUSTED
    grpc_threads: int = 8
    grace_s: float = 5.0
    warmup: bool = True
    # How often "latest"/"all" models' base paths are rescanned for new versions (TF
    # Serving's --file_system_poll_wait_seconds, same default); 0 = never.
    poll_seconds: float = 1.0
    # Most instances (0th dimension) one request may carry; more is INVALID_ARGUMENT.
    max_batch_size: int = 8192
    # Most bytes a request's input tensors may decode to; 0 = DECODED_BYTES_PER_REQUEST_BYTE
    # x max_request_bytes. Checked from the declared shapes before anything is allocated.
    max_decoded_bytes: int = 0

    def __post_init__(self):
        for field in ("max_request_bytes", "max_concurrency", "grpc_threads", "max_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"ServerOptions.{field} must be >= 1, got {getattr(self, field)}")
        if self.max_decoded_bytes < 0:
            raise ValueError(f"ServerOptions.max_decoded_bytes must be >= 0 (0 = "
                             f"{DECODED_BYTES_PER_REQUEST_BYTE} x max_request_bytes), "
                             f"got {self.max_decoded_bytes}")

    @property
    def decoded_bytes_limit(self) -> int:
        return self.max_decoded_bytes or DECODED_BYTES_PER_REQUEST_BYTE * self.max_request_bytes


class ModelServer:
    """Serves a `ModelRegistry` over gRPC and REST. Use `start()` / `stop()` or a `with`."""

    def __init__(self, registry: ModelRegistry, options: ServerOptions | None = None):
        self.registry = registry
        self.options = options or ServerOptions()
        self._slots = threading.BoundedSemaphore(self.options.max_concurrency)
        self._draining = threading.Event()
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._grpc = None
        self._http = None
        self._http_thread = None
        self.grpc_port = None
        self.rest_port = None
        self.stats = {"requests": 0, "errors": 0}
        self._poll_stop = threading.Event()
        self._poll_thread = None

    @classmethod
    def from_config(cls, models_config_path: str, options: ServerOptions | None = None):
        options = options or ServerOptions()
        return cls(ModelRegistry.load(models_config_path, warmup=options.warmup), options)

    # -- request admission: bounded concurrency + draining
    def _admit(self):
        if self._draining.is_set():
            raise ServingError("UNAVAILABLE", "server is shutting down")
        if not self._slots.acquire(timeout=self.options.queue_timeout_s):
            raise ServingError("RESOURCE_EXHAUSTED",
                               f"server busy: {self.options.max_concurrency} predictions running "
                               f"and none finished within {self.options.queue_timeout_s}s")
        with self._inflight_cv:
            self._inflight += 1

    def _release(self):
        self._slots.release()
        with self._inflight_cv:
            self._inflight -= 1
            self._inflight_cv.notify_all()

    @contextlib.contextmanager
    def admission(self):
        """Holds one of the `max_concurrency` slots: everything that allocates in proportion
        to a request (decoding tensors, parsing JSON, running the model) happens inside."""
        self._admit()
        try:
            yield
        finally:
            self._release()

    def predict(self, name, version, label, signature_name, inputs, output_filter=()):
        """Runs already decoded `inputs` (name -> array or nested lists)."""
        self.stats["requests"] += 1
        loaded = self.registry.resolve(name, version, label)
        with self.admission():
            return loaded, run_signature(loaded, signature_name, inputs, output_filter)

    def predict_request(self, request):
        """A `PredictRequest` -> (LoadedVersion, signature name, outputs). Its tensors are
        checked (dtypes, shapes, batch size, decoded size) before any is decoded."""
        self.stats["requests"] += 1
        version, label = _spec_version_label(request.model_spec)
        loaded = self.registry.resolve(request.model_spec.name, version, label)
        signature_name = request.model_spec.signature_name or "serving_default"
        sig = get_signature(loaded, signature_name)
        check_input_names(loaded, signature_name, sig, request.inputs.keys())
        check_request_tensors(request.inputs, sig, self.options.max_batch_size,
                              self.options.decoded_bytes_limit)
        with self.admission():
            inputs = decode_request_tensors(request.inputs)
            outputs = run_signature(loaded, signature_name, inputs, tuple(request.output_filter))
        return loaded, signature_name, outputs

    def predict_json(self, name, version, label, body: bytes) -> dict:
        """A REST :predict body -> the response JSON. The body is parsed only once a slot is
        free, its depth and batch size are checked before anything is decoded."""
        self.stats["requests"] += 1
        loaded = self.registry.resolve(name, version, label)
        with self.admission():
            payload = parse_json_body(body)
            signature_name = (payload.get("signature_name", "serving_default")
                              if isinstance(payload, dict) else "serving_default")
            if not isinstance(signature_name, str):
                raise ServingError("INVALID_ARGUMENT", "'signature_name' key must be a string")
            sig = get_signature(loaded, signature_name)
            inputs, form = parse_rest_predict(payload, sig.inputs, self.options.max_batch_size)
            del payload
            outputs = run_signature(loaded, signature_name, inputs)
        return format_rest_predict(outputs, form)

    def model_status(self, name, version=None, label=None):
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        if version is not None or label is not None:
            chosen = [self.registry.resolve(name, version, label)]
        else:
            self.registry.resolve(name)
            served = self.registry.versions[name]
            chosen = [served[v] for v in sorted(served)]
        for loaded in chosen:
            status = response.model_version_status.add()
            status.version = loaded.version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            status.status.error_code = 0
            status.status.error_message = ""
        return response

    def model_metadata(self, name, version=None, label=None, fields=("signature_def",)):
        from google.protobuf import any_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        for field in fields:
            if field != "signature_def":
                raise ServingError("INVALID_ARGUMENT",
                                   f"Metadata field {field} is not supported")
        if not fields:
            raise ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at "
                                                   "least one metadata_field")
        loaded = self.registry.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = name
        response.model_spec.version.value = loaded.version
        packed = any_pb2.Any()
        packed.Pack(loaded.signature_def_map)
        response.metadata["signature_def"].CopyFrom(packed)
        return response

    # -- lifecycle
    def start(self) -> ModelServer:
        from concurrent import futures

        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        opts = self.options
        limit = int(opts.max_request_bytes)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=opts.grpc_threads,
                                       thread_name_prefix="matta-grpc"),
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", max(limit, 64 * 1024 * 1024))],
            maximum_concurrent_rpcs=opts.grpc_threads * 8,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelStatusServicer(self), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{opts.host}:{opts.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {opts.host}:{opts.grpc_port}")
        self._grpc.start()
        if opts.rest_port >= 0:
            handler = type("BoundRestHandler", (RestHandler,), {"server_core": self})
            self._http = RestHTTPServer((opts.host, opts.rest_port), handler)
            self.rest_port = self._http.server_address[1]
            self._http_thread = threading.Thread(target=self._http.serve_forever,
                                                 kwargs={"poll_interval": 0.2},
                                                 name="matta-rest", daemon=True)
            self._http_thread.start()
        log.info("serving gRPC on %s:%s, REST on %s:%s", opts.host, self.grpc_port,
                 opts.host, self.rest_port)
        polled = [m.name for m in self.registry.models.values() if m.policy != "specific"]
        if opts.poll_seconds > 0 and polled:
            self._poll_thread = threading.Thread(target=self._poll, name="matta-version-poll",
                                                 daemon=True)
            self._poll_thread.start()
            log.info("polling %s for new versions every %.1fs", ", ".join(polled), opts.poll_seconds)
        return self

    def _poll(self):
        while not self._poll_stop.wait(self.options.poll_seconds):
            try:
                self.registry.refresh()
            except Exception:  # noqa: BLE001 - a bad scan must not kill the poller
                log.exception("version poll failed")

    def stop(self, grace: float | None = None):
        """Graceful shutdown: refuse new requests, finish in-flight ones, close sockets."""
        grace = self.options.grace_s if grace is None else grace
        self._draining.set()
        self._poll_stop.set()
        if self._poll_thread is not None:
            self._poll_thread.join()
            self._poll_thread = None
        deadline = time.monotonic() + grace
        with self._inflight_cv:
            while self._inflight > 0 and time.monotonic() < deadline:
                self._inflight_cv.wait(timeout=max(0.0, deadline - time.monotonic()))
        if self._grpc is not None:
            self._grpc.stop(max(0.0, deadline - time.monotonic())).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def serve_until_signalled(self):
        """Blocks until SIGTERM/SIGINT, then shuts down gracefully."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        log.info("shutting down (grace %.1fs)", self.options.grace_s)
        self.stop()


# ------------------------------------------------------------------------------------- gRPC

def _grpc_servicers():
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return (prediction_service_pb2_grpc.PredictionServiceServicer,
            model_service_pb2_grpc.ModelServiceServicer)


def _abort(context, err: ServingError):
    import grpc

    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN), err.message)


def _spec_version_label(model_spec):
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return version, label


_PredictionBase, _ModelBase = _grpc_servicers()


class PredictionServicer(_PredictionBase):
    """`tensorflow.serving.PredictionService` on top of `ModelServer`."""

    def __init__(self, core: ModelServer):
        self.core = core

    def Predict(self, request, context):
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        try:
            loaded, signature_name, outputs = self.core.predict_request(request)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature_name
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response
        except ServingError as err:
            error = err
        except Exception as err:  # noqa: BLE001 - INTERNAL with a message, not UNKNOWN
            log.exception("gRPC Predict failed")
            error = ServingError("INTERNAL", f"{type(err).__name__}: {err}")
        self.core.stats["errors"] += 1
        _abort(context, error)

    def GetModelMetadata(self, request, context):
        try:
            version, label = _spec_version_label(request.model_spec)
            return self.core.model_metadata(request.model_spec.name, version, label,
                                            tuple(request.metadata_field))
        except ServingError as err:
            _abort(context, err)


class ModelStatusServicer(_ModelBase):
    """`tensorflow.serving.ModelService.GetModelStatus` (HandleReloadConfigRequest: UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.core = core

    def GetModelStatus(self, request, context):
        try:
            version, label = _spec_version_label(request.model_spec)
            return self.core.model_status(request.model_spec.name, version, label)
        except ServingError as err:
            _abort(context, err)


# ------------------------------------------------------------------------------------- REST

REST_LISTEN_BACKLOG = max(128, socket.SOMAXCONN)  # the kernel caps it at net.core.somaxconn

_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>:predict|/metadata)?$"
)


def _status_json(response) -> dict:
    from tensorflow_serving.apis import get_model_status_pb2

    out = []
    for s in response.model_version_status:
        out.append({
            "version": str(s.version),
            "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state),
            "status": {"error_code": "OK" if s.status.error_code == 0 else str(s.status.error_code),
                       "error_message": s.status.error_message},
        })
    return {"model_version_status": out}


def _metadata_json(response) -> dict:
    from google.protobuf import json_format

    return {
        "model_spec": {"name": response.model_spec.name, "signature_name": "",
                       "version": str(response.model_spec.version.value)},
        "metadata": {"signature_def": json_format.MessageToDict(
            _unpack_signature_map(response), preserving_proto_field_name=True)},
    }


def _unpack_signature_map(response):
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    return sig_map


class RestHTTPServer(ThreadingHTTPServer):
    """One thread per connection; a listen backlog for bursts (socketserver's default is 5,
    which makes a burst of connects wait for SYN retransmits)."""

    request_queue_size = REST_LISTEN_BACKLOG
    daemon_threads = True


class RestHandler(BaseHTTPRequestHandler):
    server_core: ModelServer = None  # set on the bound subclass
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take to send its request
    server_version = "matta-serve"

    def log_message(self, fmt, *args):  # route through logging, not stderr
        log.debug("%s - " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload, allow_nan=True).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: ServingError, status: int | None = None):
        self.server_core.stats["errors"] += 1
        self._send(status or err.http_status, {"error": err.message})

    def _route(self, method: str):
        path = urllib.parse.urlsplit(self.path).path
        m = _REST_PATH.match(path)
        if not m:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(m["name"])
        label = urllib.parse.unquote(m["label"]) if m["label"] else None
        version = None
        if m["version"]:
            raw = urllib.parse.unquote(m["version"])
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
                raise ServingError("INVALID_ARGUMENT", f"Invalid version: {raw!r}")
            version = int(raw)
        if not serving_config.NAME_PATTERN.match(name):
            raise ServingError("INVALID_ARGUMENT", f"Invalid model name: {name!r}")
        if label is not None and not serving_config.NAME_PATTERN.match(label):
            raise ServingError("INVALID_ARGUMENT", f"Invalid version label: {label!r}")
        return name, version, label, m["suffix"] or ""

    def do_GET(self):
        try:
            name, version, label, suffix = self._route("GET")
            if suffix == ":predict":
                raise ServingError("INVALID_ARGUMENT", "predict needs POST")
            if suffix == "/metadata":
                payload = _metadata_json(self.server_core.model_metadata(name, version, label))
            else:
                payload = _status_json(self.server_core.model_status(name, version, label))
            self._send(200, payload)
        except ServingError as err:
            self._error(err)
        except Exception as err:  # noqa: BLE001 - always answer, never drop the connection
            log.exception("REST handler failed")
            self._error(ServingError("INTERNAL", f"{type(err).__name__}: {err}"))

    def do_POST(self):
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            return self._error(ServingError("INVALID_ARGUMENT",
                                            "POST needs a Content-Length header"), 411)
        length = int(length)
        if length > self.server_core.options.max_request_bytes:
            # Refuse without reading the body; close so the unread bytes are not parsed.
            self.close_connection = True
            return self._error(ServingError(
                "RESOURCE_EXHAUSTED",
                f"request body of {length} bytes exceeds the limit of "
                f"{self.server_core.options.max_request_bytes} bytes"), 413)
        body = self.rfile.read(length)
        try:
            name, version, label, suffix = self._route("POST")
            if suffix != ":predict":
                raise ServingError("INVALID_ARGUMENT",
                                   f"Malformed request: POST {self.path} (only :predict)")
            self._send(200, self.server_core.predict_json(name, version, label, body))
        except ServingError as err:
            self._error(err)
        except Exception as err:  # never let a handler thread die silently
            log.exception("REST handler failed")
            self._error(ServingError("INTERNAL", f"{type(err).__name__}: {err}"))

