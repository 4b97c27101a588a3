"""Serving benchmark: gRPC latency and throughput per student against `matta serve`.

    bin/matta-env python bench/bench_serving.py [--seconds 2] [--out bench/results/serving_latency.json]

Builds the students of `matta_tf/configs/default_ranker.yaml` (Student, one Mix'n'Match
student, TA; weights from a few training steps on synthetic logs - latency does not
depend on the weight values), exports them with `matta_tf.export.export_saved_model`
(fused input path; `--enable-batching` serves them with server-side batching),
writes a TF Serving deployment, starts `matta serve` as a separate process on loopback
and measures, for batch sizes 1, 64 and 512 and each student:

* latency: one client, sequential `Predict` calls (serialized tf.Examples in), p50/p99
  of the client-side round trip over `--seconds` (at most `--max-calls` calls);
* throughput: examples/second with `--threads` concurrent clients for `--seconds`.

Reports the ratio of the smallest student's latency to the TA's per batch size. Bounded:
about (2 * seconds * 9 + startup) seconds. Falls back to contract reference models of
three widths if `matta_tf.export` is missing (noted in the output).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

import matta_tf  # noqa: F401  (before TensorFlow)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.timing import closed_loop  # noqa: E402  (needs REPO on the path)
from serving import latency  # noqa: E402

BATCH_SIZES = (1, 64, 512)


def build_matta_students(root: str, train_steps: int):
    import tensorflow as tf

    from matta_tf.config import RankerConfig
    from matta_tf.datasets import default_feature_spec, generate_click_logs, table_to_dataset
    from matta_tf.export import export_saved_model
    from matta_tf.extract import cost, extract
    from matta_tf.model import MatTARanker
    from serving.examples import encode_rows, rows_from_table

    config = RankerConfig.from_yaml(os.path.join(REPO, "matta_tf", "configs", "default_ranker.yaml"))
    features = config.features
    table = generate_click_logs(256 * train_steps + 512, seed=0)
    default_feature_spec()  # the yaml was derived from it; fail early if the generator changed
    tf.keras.utils.set_random_seed(0)
    model = MatTARanker(config)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    model.fit(table_to_dataset(table.slice(0, 256 * train_steps), features, batch_size=256),
              epochs=1, verbose=0)
    specs = {"student": config.student_spec(),
             "mid": next(iter(config.mixnmatch_specs(1).values())),
             "ta": config.ta_spec()}
    arms, info = {}, {}
    for label, spec in specs.items():
        arms[label] = export_saved_model(extract(model, spec), os.path.join(root, label), features)
        info[label] = {"spec": spec.to_dict(), **cost(config, spec)}
    held_out = table.slice(256 * train_steps, 512)
    return arms, encode_rows(rows_from_table(held_out, features.names)), info, "matta"


def build_reference_students(root: str):
    from serving import reference_model as rm
    from serving.examples import encode_rows

    arms = {label: rm.export_reference_model(os.path.join(root, label), hidden=h, seed=i)
            for i, (label, h) in enumerate([("student", 16), ("mid", 256), ("ta", 2048)])}
    info = {label: {"hidden": h} for label, h in [("student", 16), ("mid", 256), ("ta", 2048)]}
    return arms, encode_rows(rm.reference_rows(512)), info, "reference (matta_tf.export missing)"


def start_server(models_config: str, timeout_s: float = 180.0, batching_file: str | None = None,
                 grpc_threads: int = 8):
    args = ["--max-concurrency", "4", "--grpc-threads", str(grpc_threads),
            "--max-request-bytes", str(64 * 1024 * 1024)]
    if batching_file:
        args += ["--enable-batching", "--batching-parameters-file", batching_file]
    return latency.start_server(models_config, timeout_s, args)


def measure(client, label, batch, seconds, max_calls, threads):
    # Warm up this (label, batch) shape: the first calls trace/allocate.
    for _ in range(3):
        client.predict_examples("ranker", batch, label=label)
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(latencies) < max_calls:
        t0 = time.perf_counter()
        client.predict_examples("ranker", batch, label=label)
        latencies.append((time.perf_counter() - t0) * 1000.0)
    calls, elapsed = closed_loop(lambda _: client.predict_examples("ranker", batch, label=label),
                                 threads, seconds)
    lat = np.asarray(latencies)
    return {"calls": int(lat.size), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "mean_ms": float(lat.mean()),
            "sequential_examples_per_s": float(len(batch) * lat.size / (lat.sum() / 1000.0)),
            "concurrent_examples_per_s": float(len(batch) * calls / elapsed),
            "concurrent_threads": threads}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--max-calls", type=int, default=400)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--enable-batching", action="store_true",
                        help="serve with server-side batching (the deployment's "
                             "batching_parameters.txt); sequential latency then includes up to "
                             "its batch_timeout_micros (see bench_serving_throughput.py for the "
                             "concurrent case batching is for)")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results",
                                                      "serving_latency.json"))
    args = parser.parse_args(argv)

    from serving.client import GrpcClient
    from serving.config import write_deployment

    t_start = time.time()
    root = tempfile.mkdtemp(prefix="matta-bench-serving-")
    try:
        import importlib.util

        if importlib.util.find_spec("matta_tf.export") is not None:
            arms, examples, info, kind = build_matta_students(os.path.join(root, "exports"),
                                                              args.train_steps)
        else:
            arms, examples, info, kind = build_reference_students(os.path.join(root, "exports"))
        dep = write_deployment(os.path.join(root, "deploy"), "ranker", arms,
                               warmup_examples=examples[:8])
        proc, port = start_server(dep.models_config_path,
                                  batching_file=dep.batching_parameters_path if args.enable_batching else None,
                                  grpc_threads=max(8, args.threads))
        results = {}
        try:
            client = GrpcClient(f"127.0.0.1:{port}", timeout_s=30.0)
            for label in arms:
                results[label] = {}
                for size in BATCH_SIZES:
                    batch = [examples[i % len(examples)] for i in range(size)]
                    results[label][str(size)] = measure(client, label, batch, args.seconds,
                                                        args.max_calls, args.threads)
            client.close()
        finally:
            proc.terminate()  # SIGTERM: graceful shutdown
            proc.wait(30)
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    smallest = "student"
    ratios = {str(b): {"p50": results[smallest][str(b)]["p50_ms"] / results["ta"][str(b)]["p50_ms"],
                       "p99": results[smallest][str(b)]["p99_ms"] / results["ta"][str(b)]["p99_ms"]}
              for b in BATCH_SIZES}
    report = {
        "benchmark": "gRPC Predict against `matta serve` on loopback",
        "models": kind, "students": info, "results": results,
        "student_over_ta_latency": ratios,
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_at_end": os.getloadavg(), "python": platform.python_version()},
        "wall_seconds": time.time() - t_start,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)

    print(f"models: {kind}")
    print(f"{'student':<9}{'batch':>6}{'p50 ms':>9}{'p99 ms':>9}{'seq ex/s':>11}"
          f"{'conc ex/s':>11}{'calls':>7}")
    for label in arms:
        for b in BATCH_SIZES:
            r = results[label][str(b)]
            print(f"{label:<9}{b:>6}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['sequential_examples_per_s']:>11.0f}{r['concurrent_examples_per_s']:>11.0f}"
                  f"{r['calls']:>7}")
    for b in BATCH_SIZES:
        print(f"batch {b:>3}: student/TA latency p50 {ratios[str(b)]['p50']:.2f}, "
              f"p99 {ratios[str(b)]['p99']:.2f}")
    print(f"wrote {args.out} ({report['wall_seconds']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
