"""Serving latency of exported students, measured the way they will be served.

* `inprocess_latency(export_dir, examples, batch)`: the SavedModel's `serving_default`
  called in this process (no server, no network) - cheap, for ranking many candidates.
* `served_latency({label: export_dir}, examples, batch)`: the same SavedModels behind a
  real `matta serve` process on loopback, one gRPC `Predict` of `batch` serialized
  tf.Examples at a time from one client - what a budget such as "p99 <= 2 ms at batch 64"
  means for a caller on this machine.

Both time `calls` sequential calls after `warmup` untimed ones and return
{"p50_ms", "p99_ms", "mean_ms", "calls", "batch"}: percentiles of wall time per call
(numpy's linear interpolation).

Example:

```python
stats = served_latency({"p99_2ms": "/exports/e12_x2r24-24_m192-96"}, examples, batch=64)
stats["p99_2ms"]["p99_ms"]
```
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def latency_stats(milliseconds: Sequence[float], batch: int) -> dict:
    lat = np.asarray(milliseconds, np.float64)
    if lat.size == 0:
        raise ValueError("latency_stats: no calls were timed")
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()), "calls": int(lat.size), "batch": int(batch)}


def request_batch(examples: Sequence[bytes], batch: int) -> list[bytes]:
    """`batch` serialized examples, cycling through `examples`."""
    if not examples:
        raise ValueError("need at least one serialized tf.Example to time requests")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return [examples[i % len(examples)] for i in range(batch)]


def _time_calls(call, calls: int, warmup: int) -> list[float]:
    if calls < 1 or warmup < 0:
        raise ValueError(f"calls must be >= 1 and warmup >= 0, got {calls}, {warmup}")
    for _ in range(warmup):
        call()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def inprocess_latency(export_dir: str, examples: Sequence[bytes], batch: int, calls: int = 200,
                      warmup: int = 20) -> dict:
    """Latency of `serving_default` on `batch` examples, called in this process."""
    import tensorflow as tf

    fn = tf.saved_model.load(export_dir).signatures["serving_default"]
    inputs = tf.constant(request_batch(examples, batch))
    return latency_stats(_time_calls(lambda: fn(examples=inputs), calls, warmup), batch)


def start_server(models_config: str, timeout_s: float = 180.0, extra_args: Sequence[str] = (),
                 repo: str = REPO):
    """(process, gRPC port) of a `matta serve` (the one in `repo`) on loopback with free
    ports, REST off; the caller stops it (`stop_server`). Its stderr goes to a temporary
    file (a pipe nobody reads would block a chatty server), shown if it fails to start."""
    cmd = [sys.executable, "-m", "matta_tf.cli", "serve", "--model-config", models_config,
           "--grpc-port", "0", "--rest-port", "-1", *extra_args]
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=repo,
                            env=dict(os.environ, PYTHONPATH=repo))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("READY "):
            fields = dict(kv.split("=") for kv in line.split()[1:])
            err.close()
            return proc, int(fields["grpc"])
    proc.kill()
    proc.wait()
    err.seek(0)
    tail = err.read()[-2000:].strip()
    err.close()
    raise RuntimeError(f"matta serve did not become ready within {timeout_s:.0f} s: {tail}")


def stop_server(proc) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def served_latency(export_dirs: Mapping[str, str], examples: Sequence[bytes], batch: int,
                   calls: int = 300, warmup: int = 20, model_name: str = "budget") -> dict[str, dict]:
    """{label: latency stats} of each SavedModel served by one `matta serve` (version label
    = the key), one sequential gRPC client, `batch` examples per request."""
    from serving.client import GrpcClient
    from serving.config import write_deployment

    with tempfile.TemporaryDirectory(prefix="matta-latency-") as tmp:
        deployment = write_deployment(os.path.join(tmp, "serving"), model_name, dict(export_dirs))
        proc, port = start_server(deployment.models_config_path, extra_args=["--file-system-poll-wait-seconds", "0"])
        try:
            request = request_batch(examples, batch)
            out = {}
            with GrpcClient(f"127.0.0.1:{port}", timeout_s=30.0) as client:
                for label in export_dirs:
                    ms = _time_calls(lambda label=label: client.predict_examples(model_name, request, label=label),
                                     calls, warmup)
                    out[label] = latency_stats(ms, batch)
            return out
        finally:
            stop_server(proc)
