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

Server-side batching (off by default, like TF Serving; `ServerOptions.batching`, `matta
serve --enable-batching [--batching-parameters-file F]`): concurrent requests for the same
(model, version, signature) share one model call, following TF Serving's
`batching_parameters.txt` (serving.batching). With batching on, a request holds one of the
`max_concurrency` slots only while it is decoded and checked; it then waits in its batch
queue, which `max_enqueued_batches` bounds.

Modules, by concern (as in TF Serving's model_servers/ and servables/tensorflow/):
  serving.status          ServingError, canonical codes -> HTTP
  serving.model_registry  ModelRegistry: load, warm up, version policies, resolve
  serving.signatures      run_signature: inputs checked against a signature, then run
  serving.tensor_limits   gRPC TensorProtos checked (dtype, shape, batch, size) before decoding
  serving.batching        BatchScheduler: concurrent requests merged into one model call
  serving.rest_codec      REST :predict JSON in/out, status/metadata JSON
  serving.grpc_service    PredictionService / ModelService servicers
  serving.http_handler    REST routing and HTTP handling
  serving.server          (this) ServerOptions, ModelServer: admission, lifecycle
The names below stay importable from serving.server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from typing import Any

from serving.grpc_service import (
    ModelStatusServicer,
    PredictionServicer,
    spec_version_label,
)
from serving.http_handler import REST_LISTEN_BACKLOG, RestHandler, RestHTTPServer
from serving.model_registry import LoadedVersion, ModelRegistry, Signature
from serving.rest_codec import (
    MAX_JSON_DEPTH,
    format_rest_predict,
    json_nesting_depth,
    parse_json_body,
    parse_rest_predict,
)
from serving.signatures import (
    batch_size_error,
    call_signature,
    check_input_names,
    check_shape,
    decode_tensors,
    get_signature,
    prepare_inputs,
    run_signature,
)
from serving.status import HTTP_STATUS, MAX_ERROR_MESSAGE_CHARS, ServingError
from serving.tensor_limits import (
    DECODED_BYTES_PER_REQUEST_BYTE,
    MAX_TENSOR_RANK,
    STRING_ELEMENT_BYTES,
    check_request_tensors,
    check_tensor_proto,
    decode_request_tensors,
)

__all__ = [
    "DECODED_BYTES_PER_REQUEST_BYTE", "HTTP_STATUS", "MAX_ERROR_MESSAGE_CHARS", "MAX_JSON_DEPTH",
    "MAX_TENSOR_RANK", "REST_LISTEN_BACKLOG", "STRING_ELEMENT_BYTES", "LoadedVersion",
    "ModelRegistry", "ModelServer", "ModelStatusServicer", "PredictionServicer", "RestHTTPServer",
    "RestHandler", "ServerOptions", "ServingError", "Signature", "batch_size_error",
    "check_input_names", "check_request_tensors", "check_shape", "check_tensor_proto",
    "decode_request_tensors", "format_rest_predict", "get_signature", "json_nesting_depth",
    "parse_json_body", "parse_rest_predict", "run_signature",
]

log = logging.getLogger("matta.serve")


class _ByIdentity:
    """A batch queue key part: one loaded version (hashed by identity, so a reloaded version
    gets a queue of its own)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.value is self.value


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
    # Server-side batching (serving.batching.BatchingOptions); None = off, as in TF Serving.
    batching: Any = None

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
        self.batcher = None
        if self.options.batching is not None:
            from serving.batching import BatchScheduler

            self.batcher = BatchScheduler(self.options.batching, self._run_batch)

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

    # -- running a signature, directly or through the batch scheduler
    @staticmethod
    def _run_batch(key, arrays):
        loaded, signature_name = key[0].value, key[1]
        sig = get_signature(loaded, signature_name)
        return call_signature(sig, signature_name, arrays)

    def _run(self, loaded, signature_name, inputs, output_filter=()):
        """Outputs of one request; call it inside `admission()`. With batching on it returns
        a zero-argument function that waits for the batch: call that after releasing the
        slot."""
        if self.batcher is None:
            return run_signature(loaded, signature_name, inputs, output_filter)
        signature_name = signature_name or "serving_default"
        sig, arrays = prepare_inputs(loaded, signature_name, inputs, output_filter)
        sizes = {a.shape[0] for a in arrays.values() if a.ndim > 0}
        if any(a.ndim == 0 for a in arrays.values()) or not sizes:
            return call_signature(sig, signature_name, arrays, output_filter)  # unbatchable
        key = (_ByIdentity(loaded), signature_name,
               tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items())))
        names = list(output_filter) or sorted(sig.outputs)
        with self._inflight_cv:  # in flight until its batch ran (stop() waits for it)
            self._inflight += 1

        def wait():
            try:
                out = self.batcher.submit(key, arrays, sizes.pop())
            finally:
                with self._inflight_cv:
                    self._inflight -= 1
                    self._inflight_cv.notify_all()
            return {k: out[k] for k in names}

        return wait

    @staticmethod
    def _finish(result):
        return result() if callable(result) else result

    def predict(self, name, version, label, signature_name, inputs, output_filter=()):
        """Runs already decoded `inputs` (name -> array or nested lists)."""
        self.stats["requests"] += 1
        loaded = self.registry.resolve(name, version, label)
        with self.admission():
            result = self._run(loaded, signature_name, inputs, output_filter)
        return loaded, self._finish(result)

    def predict_request(self, request):
        """A `PredictRequest` -> (LoadedVersion, signature name, outputs). Its tensors are
        checked (dtypes, shapes, batch size, decoded size) before any is decoded."""
        self.stats["requests"] += 1
        version, label = spec_version_label(request.model_spec)
        loaded = self.registry.resolve(request.model_spec.name, version, label)
        signature_name = request.model_spec.signature_name or "serving_default"
        sig = get_signature(loaded, signature_name)
        check_input_names(loaded, signature_name, sig, request.inputs.keys())
        check_request_tensors(request.inputs, sig, self.options.max_batch_size,
                              self.options.decoded_bytes_limit)
        with self.admission():
            inputs = decode_tensors(request.inputs)
            result = self._run(loaded, signature_name, inputs, tuple(request.output_filter))
        return loaded, signature_name, self._finish(result)

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
            result = self._run(loaded, signature_name, inputs)
        return format_rest_predict(self._finish(result), form)

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
        if self.batcher is not None:
            self.batcher.start()
            log.info("batching: %s", self.batcher.options)
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
        try:
            self.grpc_port = self._grpc.add_insecure_port(f"{opts.host}:{opts.grpc_port}")
        except RuntimeError as err:  # grpc reports a failed bind as RuntimeError
            raise OSError(f"cannot bind gRPC to {opts.host}:{opts.grpc_port}: {err}") from None
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
        if self.batcher is not None:
            self.batcher.stop()

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
