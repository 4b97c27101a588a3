"""Server-side batching for `matta serve`, following TF Serving's `BatchingParameters`.

`matta serve --enable-batching [--batching-parameters-file F]` merges concurrent requests
for the same (model, version, signature) into one model call, as `tensorflow_model_server
--enable_batching` does with the same `batching_parameters.txt`
(`serving.config.BatchingConfig`, written next to `models.config`):

* `max_batch_size`: a batch holds at most this many examples (0th dimension); a request
  larger than it is refused with INVALID_ARGUMENT ("Task size N is larger than maximum
  input batch size M", TF Serving's message; no batch splitting);
* `batch_timeout_micros`: a batch is run when it is full or this long after its first
  request arrived, whichever is first;
* `num_batch_threads`: batches run on this many threads (shared by all models);
* `max_enqueued_batches`: at most this many batches (the open one included) wait per
  queue; a request that would need another is refused with UNAVAILABLE ("The batch
  scheduling queue to which this task was submitted is full"), which clients retry;
* `allowed_batch_sizes`: a merged batch is padded up to the next allowed size with copies
  of its first example (TF Serving's padding; the padded rows' outputs are dropped).

One queue per (model, version, signature, input dtypes and non-batch shapes): requests are
concatenated along the 0th dimension, run once, and every output is split back by each
request's size. If a merged batch fails with INVALID_ARGUMENT (e.g. one request holds an
unparsable tf.Example), its requests are re-run one by one, so only the bad one fails.

Example:

```python
scheduler = BatchScheduler(BatchingOptions.from_file("deploy/batching_parameters.txt"), run)
scheduler.start()
outputs = scheduler.submit(key, {"examples": array}, batch_size=1)  # blocks; thread-safe
```
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from serving.status import ServingError

log = logging.getLogger("matta.serve")


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving `BatchingParameters` (tensorflow_serving/servables/tensorflow/
    session_bundle_config.proto); defaults are TF Serving's when the field is unset."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 10
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ValueError("batching: max_batch_size, num_batch_threads and max_enqueued_batches "
                             f"must be >= 1, got {self}")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"batching: batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1 or sizes[-1] != self.max_batch_size):
            raise ValueError(f"batching: allowed_batch_sizes {sizes} must increase and end with "
                             f"max_batch_size {self.max_batch_size}")

    @classmethod
    def from_file(cls, path: str) -> BatchingOptions:
        """Reads a `batching_parameters.txt` text proto (`serving.config` validates it)."""
        from serving.config import parse_batching_parameters

        msg = parse_batching_parameters(path)
        kwargs: dict[str, Any] = {}
        for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                      "max_enqueued_batches"):
            if msg.HasField(field):
                kwargs[field] = int(getattr(msg, field).value)
        kwargs["allowed_batch_sizes"] = tuple(int(s) for s in msg.allowed_batch_sizes)
        kwargs["pad_variable_length_inputs"] = bool(msg.pad_variable_length_inputs)
        try:
            return cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def padded_size(self, size: int) -> int:
        for allowed in self.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size


class _Task:
    __slots__ = ("inputs", "size", "done", "outputs", "error", "enqueued")

    def __init__(self, inputs: Mapping[str, np.ndarray], size: int):
        self.inputs = inputs
        self.size = size
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.enqueued = time.monotonic()


class _Batch:
    __slots__ = ("tasks", "size", "deadline", "closed")

    def __init__(self, deadline: float):
        self.tasks: list[_Task] = []
        self.size = 0
        self.deadline = deadline
        self.closed = False


class BatchScheduler:
    """Queues per key, batch threads shared by all queues.

    `run(key, inputs) -> outputs` runs one merged batch (numpy in, numpy out, every output
    with the batch as its 0th dimension); the key carries what it needs (e.g. the loaded
    version and signature name)."""

    def __init__(self, options: BatchingOptions, run: Callable[[Any, dict], dict]):
        self.options = options
        self._run = run
        self._cv = threading.Condition()
        self._queues: dict[Any, collections.deque[_Batch]] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self.stats = {"batches": 0, "tasks": 0, "examples": 0, "padded_examples": 0,
                      "refused_full": 0, "retried_one_by_one": 0}

    # -- lifecycle
    def start(self) -> BatchScheduler:
        with self._cv:
            self._stopping = False
        for i in range(self.options.num_batch_threads):
            thread = threading.Thread(target=self._loop, name=f"matta-batch-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0):
        """Runs what is queued, then ends the batch threads."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    # -- requests
    def submit(self, key, inputs: Mapping[str, np.ndarray], batch_size: int,
               timeout: float | None = None) -> dict[str, np.ndarray]:
        """Enqueues one request and blocks until its batch ran; returns its outputs."""
        limit = self.options.max_batch_size
        if batch_size > limit:
            raise ServingError("INVALID_ARGUMENT",
                               f"Task size {batch_size} is larger than maximum input batch size "
                               f"{limit} (the server's batching max_batch_size)")
        task = _Task(inputs, batch_size)
        timeout_s = self.options.batch_timeout_micros / 1e6
        with self._cv:
            if self._stopping:
                raise ServingError("UNAVAILABLE", "server is shutting down")
            queue = self._queues.setdefault(key, collections.deque())
            batch = queue[-1] if queue and not queue[-1].closed else None
            if batch is not None and batch.size + batch_size > limit:
                batch.closed = True
                batch = None
            new = batch is None
            if new:
                if len(queue) >= self.options.max_enqueued_batches:
                    self.stats["refused_full"] += 1
                    raise ServingError("UNAVAILABLE", "The batch scheduling queue to which this "
                                                      "task was submitted is full")
                batch = _Batch(time.monotonic() + timeout_s)
                queue.append(batch)
            batch.tasks.append(task)
            batch.size += batch_size
            if batch.size >= limit:
                batch.closed = True
            if new or batch.closed:  # a batch thread needs a new deadline or can run it now
                self._cv.notify()
        if not task.done.wait(timeout):
            raise ServingError("DEADLINE_EXCEEDED", "batch did not run in time")
        if task.error is not None:
            raise task.error
        return task.outputs

    # -- batch threads
    def _next_batch(self):
        """(key, batch) ready to run, or (None, seconds to wait)."""
        now = time.monotonic()
        wait = None
        for key, queue in self._queues.items():
            head = queue[0]
            if head.closed or head.deadline <= now or self._stopping:
                queue.popleft()
                if not queue:  # no empty queues: a key holds its loaded version alive
                    del self._queues[key]
                return key, head
            wait = head.deadline - now if wait is None else min(wait, head.deadline - now)
        return None, wait

    def _loop(self):
        while True:
            with self._cv:
                while True:
                    key, batch = self._next_batch()
                    if key is not None:
                        break
                    if self._stopping:
                        return
                    self._cv.wait(batch)
            self._execute(key, batch)

    def _execute(self, key, batch: _Batch):
        tasks = batch.tasks
        try:
            self._run_tasks(key, tasks)
        except ServingError as err:
            if err.code == "INVALID_ARGUMENT" and len(tasks) > 1:
                self.stats["retried_one_by_one"] += 1
                for task in tasks:
                    try:
                        self._run_tasks(key, [task])
                    except BaseException as one:  # noqa: BLE001 - handed to its request
                        task.error = one
                        task.done.set()
            else:
                self._fail(tasks, err)
        except BaseException as err:  # noqa: BLE001 - every waiting request gets the error
            log.exception("batch failed")
            self._fail(tasks, ServingError("INTERNAL", f"batch failed: {type(err).__name__}: {err}"))

    @staticmethod
    def _fail(tasks, err):
        for task in tasks:
            if not task.done.is_set():
                task.error = err
                task.done.set()

    def _run_tasks(self, key, tasks: list[_Task]):
        total = sum(t.size for t in tasks)
        padded = self.options.padded_size(total)
        names = list(tasks[0].inputs)
        if len(tasks) == 1 and padded == total:
            merged = dict(tasks[0].inputs)
        else:
            merged = {}
            for name in names:
                parts = [t.inputs[name] for t in tasks]
                if padded > total:
                    first = next(p for p in parts if len(p))
                    parts.append(np.repeat(first[:1], padded - total, axis=0))
                merged[name] = np.concatenate(parts, axis=0)
        outputs = self._run(key, merged)
        for name, value in outputs.items():
            if np.ndim(value) == 0 or len(value) != padded:
                raise ServingError("INTERNAL", f"output {name!r} has shape {np.shape(value)}; batching "
                                               f"needs the batch ({padded}) as its 0th dimension")
        start = 0
        for task in tasks:
            task.outputs = {k: v[start:start + task.size] for k, v in outputs.items()}
            start += task.size
            task.done.set()
        self.stats["batches"] += 1
        self.stats["tasks"] += len(tasks)
        self.stats["examples"] += total
        self.stats["padded_examples"] += padded - total
