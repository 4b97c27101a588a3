"""TF Serving's REST wire format (api_rest.md): :predict bodies in, JSON out.

Request bodies are bounded before parsing (nesting depth by a linear pre-scan, instances by
max_batch_size before decoding); binary strings travel as `{"b64": ...}`.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Mapping

import numpy as np

from serving.signatures import batch_size_error
from serving.status import ServingError

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


# ------------------------------------------------------------------- status and metadata

def status_json(response) -> dict:
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


def metadata_json(response) -> dict:
    from google.protobuf import json_format

    return {
        "model_spec": {"name": response.model_spec.name, "signature_name": "",
                       "version": str(response.model_spec.version.value)},
        "metadata": {"signature_def": json_format.MessageToDict(
            unpack_signature_map(response), preserving_proto_field_name=True)},
    }


def unpack_signature_map(response):
    from tensorflow_serving.apis import get_model_metadata_pb2

    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    return sig_map
