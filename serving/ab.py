"""A/B routing across served students: config, sticky assignment, fallback, durable log.

Experiment config (JSON or YAML), e.g.

    {"name": "students-v1", "model_name": "ranker", "salt": "2026-11-a",
     "control": "ta",
     "arms": [{"name": "ta", "label": "ta", "weight": 0.5},
              {"name": "student", "label": "student", "weight": 0.25},
              {"name": "mid", "label": "mid", "weight": 0.25}]}

Assignment is sticky and stateless: a unit (user) id goes to

    u = int(sha256(salt + "\\x1f" + unit_id)[:8]) / 2**64   in [0, 1)
    arm = first arm whose cumulative normalised weight exceeds u

so the same (salt, unit) always gets the same arm, shares match the weights, and a new
salt re-randomises everyone independently of the old assignment.

If the assigned arm's backend fails (timeout, UNAVAILABLE, unknown label, ...), the
request is re-sent to the control arm and counted in `fallback_counts[arm]`; the exposure
is still attributed to the assigned arm (intention-to-treat) with `fallback: true`.

`EventLog` is an append-only JSON Lines file with group commit: events are written and
`fsync`ed in batches by one writer thread, and `log()` returns (the event is
*acknowledged*) only after the batch holding it is on disk. An acknowledged event
therefore survives the process being killed at any point; a kill can only lose events
whose `log()` had not yet returned, and at most tears the last line.

Torn lines (issue 12). A kill, a full disk or a file-size limit can leave the file ending
in a partial line. Opening an `EventLog` repairs that first (`repair_torn_tail`): the bytes
after the last newline, and a last line that is not a JSON object, are appended to
``<path>.torn`` (one JSON record per cut, with the exact bytes) and cut off, with a warning
giving the byte count, so new events start on a clean line and nothing is silently lost.
`read_events` never fails on content: a line that is not a JSON object, anywhere in the
file, is skipped and reported (`read_events(path, errors=[])`, `read_events_with_errors`).
One `EventLog` per file at a time: the repair assumes no other writer is appending.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from typing import Any, Mapping, Sequence

import numpy as np

from serving.config import validate_name

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ configuration

@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    label: str  # TF Serving version label
    weight: float
    address: str | None = None  # backend for this arm; None = the experiment's address


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str
    model_name: str
    salt: str
    arms: tuple[Arm, ...]
    control: str
    address: str | None = None  # e.g. "grpc://127.0.0.1:8500"

    def __post_init__(self):
        if not self.arms:
            raise ValueError(f"experiment {self.name!r}: no arms")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r}: duplicate arm names {names}")
        validate_name("model name", self.model_name)
        for arm in self.arms:
            validate_name(f"arm {arm.name!r} label", arm.label)
            w = float(arm.weight)
            if not (w >= 0 and np.isfinite(w)):
                raise ValueError(f"experiment {self.name!r}: arm {arm.name!r} weight {arm.weight} "
                                 "must be a finite number >= 0")
        if sum(float(a.weight) for a in self.arms) <= 0:
            raise ValueError(f"experiment {self.name!r}: arm weights sum to 0")
        if self.control not in names:
            raise ValueError(f"experiment {self.name!r}: control arm {self.control!r} is not "
                             f"one of the arms {names}")
        if not isinstance(self.salt, str) or not self.salt:
            raise ValueError(f"experiment {self.name!r}: salt must be a non-empty string")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"experiment config: unknown keys {unknown}")
        missing = sorted({"name", "model_name", "salt", "arms", "control"} - set(d))
        if missing:
            raise ValueError(f"experiment config: missing keys {missing}")
        arms = []
        for i, a in enumerate(d["arms"]):
            if not isinstance(a, Mapping) or not {"name", "label", "weight"} <= set(a):
                raise ValueError(f"experiment config: arms[{i}] needs name, label and weight: {a!r}")
            arms.append(Arm(str(a["name"]), str(a["label"]), float(a["weight"]), a.get("address")))
        return cls(name=str(d["name"]), model_name=str(d["model_name"]), salt=str(d["salt"]),
                   arms=tuple(arms), control=str(d["control"]), address=d.get("address"))

    @classmethod
    def from_file(cls, path: str) -> ExperimentConfig:
        with open(path) as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def to_dict(self) -> dict:
        return {"name": self.name, "model_name": self.model_name, "salt": self.salt,
                "control": self.control, "address": self.address,
                "arms": [dataclasses.asdict(a) for a in self.arms]}

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"experiment {self.name!r} has no arm {name!r}")

    def shares(self) -> dict[str, float]:
        total = sum(float(a.weight) for a in self.arms)
        return {a.name: float(a.weight) / total for a in self.arms}


def unit_bucket(salt: str, unit_id: str) -> float:
    """Uniform in [0, 1) from sha256(salt, unit_id); the same inputs give the same value."""
    digest = hashlib.sha256(f"{salt}\x1f{unit_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_arm(config: ExperimentConfig, unit_id: str) -> str:
    u = unit_bucket(config.salt, str(unit_id))
    cumulative = 0.0
    shares = config.shares()
    for arm in config.arms:
        cumulative += shares[arm.name]
        if u < cumulative:
            return arm.name
    # Rounding can leave the cumulative sum a hair under 1: the last arm with weight wins.
    return [a.name for a in config.arms if a.weight > 0][-1]


# ------------------------------------------------------------------------------ durable log

class EventLog:
    """Append-only JSON Lines log with group commit: batched write + fsync.

    `append(event)` queues and returns a sequence number; `wait(seq)` blocks until that
    event is on disk; `log(event)` does both. An event is acknowledged when `log` (or
    `wait`) returns True.

    One writer thread takes everything queued (up to `batch_size` events) as soon as there
    is anything, writes it and fsyncs once. Batches form by themselves while an fsync is
    running, so a busy log does one fsync per many events and an idle one adds no delay
    (as database group commit does with no commit delay). `flush_interval_s` only bounds
    how long the idle writer sleeps between checks.

    Opening an existing file first cuts a torn tail left by a previous run (a kill, or a
    write cut short by a full disk / file-size limit) and saves it to ``<path>.torn``;
    `repair` says what was cut (None if the file ended cleanly). After a failed write
    (`OSError` from `log`/`wait`) the log is unusable; reopen it to continue.
    """

    def __init__(self, path: str, batch_size: int = 256, flush_interval_s: float = 0.02):
        if batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("EventLog: batch_size must be >= 1 and flush_interval_s > 0")
        self.path = path
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        existed = os.path.exists(path)
        # What a previous run left torn at the end (None: the file ended cleanly).
        self.repair: TailRepair | None = repair_torn_tail(path) if existed else None
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:  # make the new directory entry durable too
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._cv = threading.Condition()
        self._pending: list[tuple[int, bytes]] = []
        self._next_seq = 0
        self._durable_seq = -1
        self._error: BaseException | None = None
        self._closed = False
        self.batches_written = 0
        self._writer = threading.Thread(target=self._run, name="matta-eventlog", daemon=True)
        self._writer.start()

    @property
    def durable_seq(self) -> int:
        return self._durable_seq

    def append(self, event: Mapping[str, Any]) -> int:
        line = (json.dumps(event, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        with self._cv:
            if self._error is not None:
                raise OSError(f"event log {self.path} failed: {self._error}")
            if self._closed:
                raise ValueError(f"event log {self.path} is closed")
            seq = self._next_seq
            self._next_seq += 1
            self._pending.append((seq, line))
            self._cv.notify_all()
            return seq

    def wait(self, seq: int, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._durable_seq < seq:
                if self._error is not None:
                    raise OSError(f"event log {self.path} failed: {self._error}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return True

    def log(self, event: Mapping[str, Any], timeout: float | None = 10.0) -> int:
        seq = self.append(event)
        if not self.wait(seq, timeout):
            raise TimeoutError(f"event log {self.path}: event {seq} not durable after {timeout}s")
        return seq

    def _run(self):
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait(self.flush_interval_s)
                batch = self._pending[:self.batch_size]
                self._pending = self._pending[self.batch_size:]
                closing = self._closed
            if batch:
                try:
                    data = b"".join(line for _, line in batch)
                    view = memoryview(data)
                    while view:
                        n = os.write(self._fd, view)
                        view = view[n:]
                    os.fsync(self._fd)
                except OSError as err:
                    with self._cv:
                        self._error = err
                        self._cv.notify_all()
                    return
                with self._cv:
                    self._durable_seq = batch[-1][0]
                    self.batches_written += 1
                    self._cv.notify_all()
            if closing:
                with self._cv:
                    if not self._pending:
                        return

    def close(self):
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify_all()
        self._writer.join()
        os.close(self._fd)
        if self._error is not None:
            raise OSError(f"event log {self.path} failed: {self._error}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclasses.dataclass(frozen=True)
class TailRepair:
    """A torn tail cut from an event log when it was opened."""

    path: str
    offset: int  # the file's new size: where the cut bytes started
    length: int  # bytes cut (0 if the tail was only newline-terminated)
    reason: str
    saved_to: str | None  # the `.torn` file holding the bytes (None: they stayed in place)


@dataclasses.dataclass(frozen=True)
class UnreadableLine:
    """A line of an event log that `read_events` skipped."""

    line: int  # 1-based line number
    offset: int  # byte offset of the line's start
    length: int  # bytes, without the newline
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} (byte {self.offset}, {self.length} bytes): {self.reason}"


def _parse_event(line: bytes) -> tuple[dict | None, str | None]:
    """(event, None) for a JSON object line, else (None, why not)."""
    try:
        event = json.loads(line)
    except ValueError as err:  # JSONDecodeError, or UnicodeDecodeError for bad UTF-8
        return None, f"not valid JSON: {err}"
    if not isinstance(event, dict):
        return None, f"not a JSON object (a {type(event).__name__})"
    return event, None


def _tail_to_cut(fd: int, size: int, chunk: int = 1 << 16) -> tuple[int, str]:
    """(offset, reason): where the torn tail of the file starts (`size` if none).

    Reads backwards only as far as the last two newlines. The tail is the bytes after
    the last newline, plus the last complete line if it is not a JSON object.
    """
    data = b""
    start = size
    newlines = 0
    while start > 0 and newlines < 2:
        n = min(chunk, start)
        start -= n
        data = os.pread(fd, n, start) + data
        newlines = data.count(b"\n")
    last_nl = data.rfind(b"\n")
    if last_nl < 0:  # no newline at all: the whole file is one torn line
        return (0, "no newline in the file") if data else (size, "")
    complete_end = start + last_nl + 1
    prev_nl = data.rfind(b"\n", 0, last_nl)
    line_start = start + prev_nl + 1 if prev_nl >= 0 else start
    last_line = data[line_start - start:last_nl]
    if last_line.strip():
        _, why = _parse_event(last_line)
        if why is not None:
            torn = "; and bytes after it with no newline" if complete_end < size else ""
            return line_start, f"the last line is {why}{torn}"
    if complete_end < size:
        return complete_end, "bytes after the last newline (a write cut short)"
    return size, ""


def repair_torn_tail(path: str) -> TailRepair | None:
    """Cuts a torn tail off the event log at `path` (see the module docstring).

    The cut bytes are appended to ``<path>.torn`` as one JSON record (``offset``,
    ``length``, ``reason``, ``bytes_b64`` with the exact bytes and ``text`` for reading)
    and fsynced before the log is truncated and fsynced. If they cannot be saved aside
    (e.g. the disk is full), the tail is not cut but newline-terminated, so it stays in
    the log as one unreadable line that `read_events` skips and reports. Returns None if
    the file ends cleanly.
    """
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        offset, reason = _tail_to_cut(fd, size)
        if offset >= size:
            return None
        torn = os.pread(fd, size - offset, offset)
        aside = path + ".torn"
        record = json.dumps({
            "ts": time.time(), "path": os.path.abspath(path), "offset": offset,
            "length": len(torn), "reason": reason,
            "bytes_b64": base64.b64encode(torn).decode("ascii"),
            "text": torn.decode("utf-8", "backslashreplace")}) + "\n"
        try:
            aside_fd = os.open(aside, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(record.encode("utf-8"))
                while view:
                    view = view[os.write(aside_fd, view):]
                os.fsync(aside_fd)
            finally:
                os.close(aside_fd)
        except OSError as err:
            if torn.endswith(b"\n"):  # an invalid but complete line: leave it be
                logger.error("event log %s: cannot save %d bytes of a bad last line to %s "
                             "(%s); left in place, readers skip it", path, len(torn), aside,
                             err)
                return TailRepair(path, size, 0, f"{reason}; not saved: {err}", None)
            os.pwrite(fd, b"\n", size)
            os.fsync(fd)
            logger.error("event log %s: cannot save %d torn bytes at byte %d to %s (%s); "
                         "newline-terminated them instead, readers skip that line", path,
                         len(torn), offset, aside, err)
            return TailRepair(path, size + 1, 0, f"{reason}; not saved: {err}", None)
        os.ftruncate(fd, offset)
        os.fsync(fd)
        logger.warning("event log %s: cut %d torn bytes at byte %d (%s); saved to %s",
                       path, len(torn), offset, reason, aside)
        return TailRepair(path, offset, len(torn), reason, aside)
    finally:
        os.close(fd)


def read_events_with_errors(path: str) -> tuple[list[dict], list[UnreadableLine]]:
    """(events, unreadable lines) of an event log; never raises on the file's content.

    A line that is not a JSON object (torn, merged with the next one, bad UTF-8, ...) and
    a last line without a newline (a write cut short) are skipped and listed; blank lines
    are ignored.
    """
    events: list[dict] = []
    errors: list[UnreadableLine] = []
    offset = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.strip():
                if len(line) == len(raw):
                    errors.append(UnreadableLine(
                        number, offset, len(line), "torn: no newline at the end of the file"))
                else:
                    event, why = _parse_event(line)
                    if why is None:
                        events.append(event)
                    else:
                        errors.append(UnreadableLine(number, offset, len(line), why))
            offset += len(raw)
    return events, errors


def read_events(path: str, errors: list | None = None) -> list[dict]:
    """Reads an event log. Lines that are not JSON objects, anywhere, are skipped (see
    `read_events_with_errors`); pass a list as `errors` to get them as `UnreadableLine`s,
    e.g. to print "N unreadable lines skipped"."""
    events, found = read_events_with_errors(path)
    if errors is not None:
        errors.extend(found)
    elif found:  # the caller will not report them, so say it here
        logger.warning("%s: skipped %d unreadable line(s); first: %s", path, len(found), found[0])
    return events


# ------------------------------------------------------------------------------ router

@dataclasses.dataclass
class RankResult:
    request_id: str
    unit_id: str
    arm: str  # assigned arm
    served_arm: str  # arm whose model produced the scores (control on fallback)
    scores: np.ndarray  # probability per candidate
    latency_ms: float  # end-to-end, including a failed first attempt
    fallback: bool
    error: str | None


class RoutingError(RuntimeError):
    pass


class ABRouter:
    """Routes ranking requests to the assigned arm's model, falling back to control."""

    def __init__(self, config: ExperimentConfig, clients: Mapping[str, Any], event_log: EventLog,
                 timeout_s: float = 1.0, durable: bool = True):
        missing = [a.name for a in config.arms if a.name not in clients]
        if missing:
            raise ValueError(f"ABRouter: no client for arm(s) {missing}")
        self.config = config
        self.clients = dict(clients)
        self.log = event_log
        self.timeout_s = timeout_s
        self.durable = durable
        self._lock = threading.Lock()
        self.fallback_counts = {a.name: 0 for a in config.arms}
        self.request_counts = {a.name: 0 for a in config.arms}

    def _call(self, arm_name: str, examples) -> np.ndarray:
        arm = self.config.arm(arm_name)
        client = self.clients[arm_name]
        if isinstance(examples, Mapping) and set(examples) == {"numeric", "ids"}:
            out = client.predict_ids(self.config.model_name, examples["numeric"], examples["ids"],
                                     label=arm.label, timeout_s=self.timeout_s)
        elif isinstance(examples, Mapping):  # columns -> predict_raw, no tf.Example to parse
            out = client.predict_columns(self.config.model_name, examples, label=arm.label,
                                         timeout_s=self.timeout_s)
        else:
            out = client.predict_examples(self.config.model_name, examples, label=arm.label,
                                          timeout_s=self.timeout_s)
        if "probability" not in out:
            raise RoutingError(f"arm {arm_name!r} (label {arm.label}) returned no 'probability' "
                               f"output; got {sorted(out)}")
        return np.asarray(out["probability"], dtype=np.float64)

    def _emit(self, event: dict):
        if self.durable:
            self.log.log(event)
        else:
            self.log.append(event)

    def rank(self, unit_id: str, examples, request_id: str | None = None) -> RankResult:
        """Scores the candidates for `unit_id` on its arm. `examples`: serialized tf.Examples
        (-> `serving_default`), columns {raw feature: [candidates]} (-> `predict_raw`: the
        server parses nothing), or {"numeric": [candidates, n], "ids": [candidates, m]}
        (-> `predict_ids`). Measured on `matta serve` (docs/benchmarks.md, issue 16): ids are
        the cheapest to serve, tf.Examples next, columns the dearest (one TensorProto per
        feature)."""
        from serving.client import ServingClientError

        n_items = (len(next(iter(examples.values()))) if examples else 0) \
            if isinstance(examples, Mapping) else len(examples)
        request_id = request_id or uuid.uuid4().hex
        arm = assign_arm(self.config, unit_id)
        with self._lock:
            self.request_counts[arm] += 1
        start = time.perf_counter()
        served, error, fallback = arm, None, False
        try:
            scores = self._call(arm, examples)
        except (ServingClientError, RoutingError) as err:
            error = str(err)
            if arm == self.config.control:
                self._emit(self._exposure(request_id, unit_id, arm, None, False, error,
                                          start, n_items))
                raise RoutingError(f"control arm {arm!r} failed: {err}") from err
            with self._lock:
                self.fallback_counts[arm] += 1
            served, fallback = self.config.control, True
            try:
                scores = self._call(served, examples)
            except (ServingClientError, RoutingError) as err2:
                self._emit(self._exposure(request_id, unit_id, arm, None, True,
                                          f"{error}; control: {err2}", start, n_items))
                raise RoutingError(f"arm {arm!r} failed ({error}) and control "
                                   f"{served!r} failed too: {err2}") from err2
        event = self._exposure(request_id, unit_id, arm, served, fallback, error, start,
                               n_items)
        self._emit(event)
        return RankResult(request_id, str(unit_id), arm, served, scores, event["latency_ms"],
                          fallback, error)

    def _exposure(self, request_id, unit_id, arm, served, fallback, error, start, n):
        return {"type": "exposure", "experiment": self.config.name, "ts": time.time(),
                "request_id": request_id, "unit_id": str(unit_id), "arm": arm,
                "served_arm": served, "fallback": fallback, "error": error,
                "latency_ms": round((time.perf_counter() - start) * 1000.0, 4), "n_items": n}

    def record_outcome(self, result: RankResult, click_positions: Sequence[int]):
        """Logs the user's clicks (0-based positions in the shown ranking) for a request."""
        positions = sorted(int(p) for p in click_positions)
        self._emit({"type": "outcome", "experiment": self.config.name, "ts": time.time(),
                    "request_id": result.request_id, "unit_id": result.unit_id,
                    "arm": result.arm, "clicks": len(positions), "clicked": int(bool(positions)),
                    "positions": positions})

    def summary(self) -> dict:
        with self._lock:
            return {"requests": dict(self.request_counts),
                    "fallbacks": dict(self.fallback_counts)}
