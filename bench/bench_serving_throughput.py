"""gRPC throughput of `matta serve` with many small concurrent requests: per-feature vs fused
exports, batching off vs on, tf.Examples vs columns on the wire - in examples/s per core.

    bin/matta-env python bench/bench_serving_throughput.py --pipeline-root <demo-root>/pipeline \
        [--clients 16] [--batch 1] [--seconds 10] [--repeats 3] [--out bench/results/serving_throughput.json]

The students are exported from a finished pipeline run as the StudentExtractor does (see
bench/bench_input_path.py), twice: `input_path="per_feature"` (the export before the fused
path) and `"fused"`. For every scenario a fresh `matta serve` process serves them on
loopback and `--clients` threads (one gRPC channel each) send requests of `--batch` eval
examples back to back (closed loop) for `--seconds`; this is repeated `--repeats` times,
interleaving scenarios, and the median is reported.

examples/s per core: examples answered / CPU seconds the server process used in the window
(utime + stime from /proc), i.e. what one core of serving buys; the client threads' CPU
(this process) is reported too, as is plain wall-clock examples/s (the machine has 2 cores
shared by server, clients and anything else running: see the load average). Scenarios:

    today                per-feature export, batching off  (the unbatched baseline; with
                         --today-repo, served by that checkout's `matta serve`)
    fused                fused export, batching off
    fused+batching       fused export, --enable-batching with the deployment's
                         batching_parameters.txt (written by serving.config.write_deployment)
    fused+batching cols  the same, requests as columns to predict_raw instead of tf.Examples
    fused[+batching] ids the same, requests as raw numerics + TFT ids to predict_ids
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time

import numpy as np

import matta_tf  # noqa: F401  (before TensorFlow)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.bench_input_path import load_pipeline  # noqa: E402
from serving import latency  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def start_server(models_config: str, batching_file: str | None, grpc_threads: int,
                 repo: str = REPO):
    """`matta serve` with its defaults (--max-concurrency 4 predictions at once: more
    concurrent TensorFlow calls oversubscribe the cores) and enough gRPC threads that every
    client's request is taken at once (so batching can merge them)."""
    args = ["--grpc-threads", str(grpc_threads)]
    if batching_file:
        args += ["--enable-batching", "--batching-parameters-file", batching_file]
    return latency.start_server(models_config, 300, args, repo=repo)


def columns_of(examples: list[bytes], names: dict) -> dict:
    """predict_raw columns of serialized examples (missing: "" / 0.0, as the raw spec reads)."""
    import tensorflow as tf

    cols = {}
    for name, dtype in names.items():
        values = []
        for ex in examples:
            f = tf.train.Example.FromString(ex).features.feature.get(name)
            kind = f.WhichOneof("kind") if f is not None else None
            got = list(getattr(f, kind).value) if kind else []
            if dtype == tf.string:
                values.append(got[0] if got else b"")
            else:
                values.append(got[0] if got else 0.0)
        cols[name] = values if dtype == tf.string else np.asarray(values, np.float32)
    return cols


def run_load(port: int, label: str, requests: list, clients: int, seconds: float, wire: str,
             server_pid: int) -> dict:
    from serving.client import GrpcClient

    conns = [GrpcClient(f"127.0.0.1:{port}", timeout_s=30.0) for _ in range(clients)]
    for c in conns:  # warm up every channel and the model
        for req in requests[:3]:
            call(c, label, req, wire)
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds
    barrier = threading.Barrier(clients + 1)

    def worker(i):
        c, k = conns[i], i
        barrier.wait()
        while time.monotonic() < stop:
            try:
                call(c, label, requests[k % len(requests)], wire)
                counts[i] += 1
            except Exception:  # noqa: BLE001 - counted
                errors[i] += 1
            k += clients

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    s0, c0, t0 = process_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server_cpu = process_cpu_seconds(server_pid) - s0
    client_cpu = time.process_time() - c0
    for c in conns:
        c.close()
    n = sum(counts)
    batch = len(requests[0]) if wire == "examples" else len(next(iter(requests[0].values())))
    examples = n * batch
    return {"requests": n, "errors": sum(errors), "examples": examples, "wall_s": wall,
            "server_cpu_s": server_cpu, "client_cpu_s": client_cpu,
            "examples_per_s": examples / wall,
            "examples_per_server_core_s": examples / max(server_cpu, 1e-9),
            "examples_per_total_core_s": examples / max(server_cpu + client_cpu, 1e-9),
            "server_cpu_ms_per_request": 1000 * server_cpu / max(n, 1),
            "client_cpu_ms_per_request": 1000 * client_cpu / max(n, 1)}


def call(client, label, request, wire):
    if wire == "examples":
        return client.predict_examples("ranker", request, label=label)
    if wire == "ids":
        return client.predict_ids("ranker", request["numeric"], request["ids"], label=label)
    return client.predict_columns("ranker", request, label=label)


def ids_of(columns: dict, tft_output, numeric: list[str], categorical: list[str]) -> dict:
    """predict_ids inputs of predict_raw columns: raw numerics, TFT-transformed ids."""
    import tensorflow as tf

    raw = {k: tf.sparse.from_dense(tf.constant(v)[:, None]) for k, v in columns.items()}
    transformed = tft_output.transform_raw_features(raw)
    return {"numeric": np.stack([np.asarray(columns[n], np.float32) for n in numeric], 1),
            "ids": np.stack([transformed[c].numpy().reshape(-1) for c in categorical], 1).astype(np.int64)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-root", required=True)
    parser.add_argument("--arms", default="student,ta")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=1, help="examples per request")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scenarios", default="today,fused,fused+batching,fused+batching cols")
    parser.add_argument("--today-repo", default=REPO,
                        help="checkout whose `matta serve` runs the `today` scenario (e.g. the "
                             "commit before issue 16, `git archive <commit> | tar -x -C DIR`); "
                             "default: this one")
    parser.add_argument("--max-batch-size", type=int, default=512)
    parser.add_argument("--batch-timeout-micros", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "serving_throughput.json"))
    args = parser.parse_args(argv)

    from components.student_extractor import arm_specs, serving_parse_spec
    from matta_tf.export import export_saved_model
    from matta_tf.extract import cost, extract
    from serving import config as sc

    t_start = time.time()
    load_start = os.getloadavg()
    model, tft_output, examples = load_pipeline(args.pipeline_root, 512)
    parse_spec = serving_parse_spec(tft_output)
    arms = args.arms.split(",")
    specs = arm_specs(model.config, arms, 1)
    root = tempfile.mkdtemp(prefix="matta-bench-throughput-")
    sizes = tuple(s for s in (1, 8, 64) if s < args.max_batch_size) + (args.max_batch_size,)
    batching = sc.BatchingConfig(max_batch_size=args.max_batch_size,
                                 batch_timeout_micros=args.batch_timeout_micros,
                                 allowed_batch_sizes=sizes)
    deployments, info = {}, {}
    for path in ("per_feature", "fused"):
        exports = {}
        for arm in arms:
            exports[arm] = export_saved_model(
                extract(model, specs[arm], name=arm), os.path.join(root, "exports", f"{arm}_{path}"),
                parse_spec, preprocess=tft_output.transform_features_layer(), tft_output=tft_output,
                input_path=path, check_examples=examples[:64])
            info[arm] = {"spec": specs[arm].to_dict(), **cost(model.config, specs[arm])}
        deployments[path] = sc.write_deployment(os.path.join(root, f"deploy_{path}"), "ranker", exports,
                                                warmup_examples=examples[:8], batching=batching)
    requests_ex = [examples[i:i + args.batch] for i in range(0, 256, args.batch)]
    names = {k: v.dtype for k, v in parse_spec.items()}
    requests_cols = [columns_of(r, names) for r in requests_ex[:64]]
    first = extract(model, specs[arms[0]])
    requests_ids = [ids_of(c, tft_output, [f.name for f in first.features.numeric],
                           [f.name for f in first.features.categorical]) for c in requests_cols]
    scenario_defs = {
        "today": ("per_feature", False, "examples"),
        "per_feature+batching": ("per_feature", True, "examples"),
        "fused": ("fused", False, "examples"),
        "fused cols": ("fused", False, "columns"),
        "fused+batching": ("fused", True, "examples"),
        "fused+batching cols": ("fused", True, "columns"),
        "fused ids": ("fused", False, "ids"),
        "fused+batching ids": ("fused", True, "ids"),
    }
    scenarios = [s.strip() for s in args.scenarios.split(",")]
    runs = {s: {arm: [] for arm in arms} for s in scenarios}
    for rep in range(args.repeats):
        for scenario in (scenarios if rep % 2 == 0 else list(reversed(scenarios))):
            path, batched, wire = scenario_defs[scenario]
            dep = deployments[path]
            proc, port = start_server(dep.models_config_path,
                                      dep.batching_parameters_path if batched else None,
                                      grpc_threads=max(8, args.clients),
                                      repo=args.today_repo if scenario == "today" else REPO)
            try:
                for arm in arms:
                    reqs = {"examples": requests_ex, "columns": requests_cols, "ids": requests_ids}[wire]
                    r = run_load(port, arm, reqs, args.clients, args.seconds, wire, proc.pid)
                    r["load_avg"] = os.getloadavg()
                    runs[scenario][arm].append(r)
                    print(f"[{rep + 1}/{args.repeats}] {scenario:<22} {arm:<8} "
                          f"{r['examples_per_s']:>8.0f} ex/s  {r['examples_per_server_core_s']:>8.0f} "
                          f"ex/server-core-s  {r['examples_per_total_core_s']:>8.0f} ex/core-s (all)  "
                          f"server {r['server_cpu_ms_per_request']:.3f} ms/req  client "
                          f"{r['client_cpu_ms_per_request']:.3f} ms/req  errors {r['errors']}  "
                          f"load {r['load_avg'][0]:.1f}", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    summary = {}
    for scenario in scenarios:
        summary[scenario] = {}
        for arm in arms:
            rs = runs[scenario][arm]
            summary[scenario][arm] = {k: float(np.median([r[k] for r in rs])) for k in
                                      ("examples_per_s", "examples_per_server_core_s",
                                       "examples_per_total_core_s", "server_cpu_ms_per_request",
                                       "client_cpu_ms_per_request")}
    ratios = {}
    if "today" in summary:
        for scenario in scenarios:
            ratios[scenario] = {arm: {k: summary[scenario][arm][k] / summary["today"][arm][k]
                                      for k in ("examples_per_s", "examples_per_server_core_s",
                                                "examples_per_total_core_s")} for arm in arms}
    report = {"command": "bin/matta-env python bench/bench_serving_throughput.py "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "students": info, "batching_parameters": batching.to_text(), "runs": runs,
              "median": summary, "vs_today": ratios, "settings": vars(args),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
              "wall_seconds": round(time.time() - t_start, 1)}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("median over repeats:")
    for scenario in scenarios:
        for arm in arms:
            s = summary[scenario][arm]
            rr = ratios.get(scenario, {}).get(arm, {})
            print(f"  {scenario:<22} {arm:<8} {s['examples_per_s']:>8.0f} ex/s  "
                  f"{s['examples_per_server_core_s']:>8.0f} ex/server-core-s "
                  f"(x{rr.get('examples_per_server_core_s', float('nan')):.2f} vs today)  "
                  f"{s['examples_per_total_core_s']:>8.0f} ex/core-s all "
                  f"(x{rr.get('examples_per_total_core_s', float('nan')):.2f})")
    print(f"wrote {args.out} ({report['wall_seconds']:.0f}s)")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
