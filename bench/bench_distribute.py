"""Training throughput of MatTARanker under each tf.distribute strategy, 1 and 2 workers.

    bin/matta-env python bench/bench_distribute.py                 # all, Adam and Shampoo
    bin/matta-env python bench/bench_distribute.py --optimizers adam --steps 30

Configurations (each its own processes on loopback, cluster from TF_CONFIG):

    none                   1 process
    mirrored               1 process, 1 or 2 (logical) CPU devices
    multi_worker_mirrored  1 or 2 worker processes (global batch split between them)
    parameter_server       coordinator + 1 or 2 worker processes + 2 ps processes (tables
                           split over both ps), asynchronous

A run is `fit` with 2 epochs of `--steps` steps: the first (tracing, warm-up) is not
timed, the second is: examples/s = steps x batch / seconds of epoch 2. For the synchronous
strategies `--batch` is the global batch (2 workers: half each); for parameter_server a
step is one worker's batch of `--batch` examples. Peak memory per process: ru_maxrss
of the training processes, VmHWM of the server processes (read before they are stopped).

This machine has 2 cores shared by every process of a run (and by other users): 2 workers
or 2 devices do not get 2x the CPU of one, so the numbers measure overheads (collectives,
RPCs to parameter servers, process count) at equal total CPU, not scaling. Results:
bench/results/distribute/results.json and results.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matta_tf  # noqa: F401,E402  (before TensorFlow)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "distribute")
SETUPS = [("none", 1), ("mirrored", 1), ("mirrored", 2), ("multi_worker_mirrored", 1),
          ("multi_worker_mirrored", 2), ("parameter_server", 1), ("parameter_server", 2)]


def ranker_config():
    from matta_tf.config import RankerConfig, SubmodelSpec
    from matta_tf.datasets import SyntheticLogConfig, default_feature_spec

    features = default_feature_spec(SyntheticLogConfig())
    return RankerConfig(features=features, student=SubmodelSpec(8, 1, (), (64,)), warmup_steps=20,
                        mixnmatch_train_specs=1)


def job(spec: dict):
    """One training process: the one-process run, a mirrored run, an MWMS worker or the
    parameter-server coordinator. Writes {seconds, steps, examples, peak_rss_mb} to
    spec["out"]."""
    import tensorflow as tf

    if spec.get("cpu_devices", 1) > 1:  # before TensorFlow initialises its devices
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * spec["cpu_devices"])
    from matta_tf.datasets import SyntheticLogConfig, generate_click_logs, table_to_dataset
    from matta_tf.distribute import DistributionConfig, distributed_dataset, make_strategy
    from matta_tf.extract import dummy_features
    from matta_tf.model import MatTARanker
    from matta_tf.optimizers import Shampoo

    dist = DistributionConfig.from_dict(spec["distribution"])
    strategy = make_strategy(dist)
    config = ranker_config()
    with strategy.scope():
        model = MatTARanker(config)
        model(dummy_features(config.features, 2))
        optimizer = (tf.keras.optimizers.Adam(1e-3) if spec["optimizer"] == "adam"
                     else Shampoo(1e-3, precondition_frequency=10, start_preconditioning_step=10))
        model.compile(optimizer=optimizer, steps_per_execution=dist.steps_per_execution)
    table = generate_click_logs(spec["batch"] * 16, seed=0, config=SyntheticLogConfig())
    data = distributed_dataset(dist, lambda: table_to_dataset(
        table, config.features, batch_size=spec["batch"], shuffle_seed=0, repeat=True))
    marks = []

    class Clock(tf.keras.callbacks.Callback):
        # With parameter servers Keras joins the workers at each epoch end: a mark is
        # taken when every step of the epoch has run.
        def on_epoch_end(self, epoch, logs=None):
            marks.append(time.perf_counter())

    model.fit(data, epochs=2, steps_per_epoch=spec["steps"], verbose=0, callbacks=[Clock()])
    seconds = marks[1] - marks[0]
    result = {"seconds": seconds, "steps": spec["steps"], "examples": spec["steps"] * spec["batch"],
              "replicas_in_sync": strategy.num_replicas_in_sync,
              "parameters": int(sum(int(tf.size(v)) for v in model.trainable_variables)),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(spec["out"], "w") as f:
        json.dump(result, f)


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_setup(strategy: str, workers: int, optimizer: str, args, tmp: str) -> dict:
    from matta_tf.distribute import LocalCluster

    out = os.path.join(tmp, f"{strategy}-{workers}-{optimizer}.json")
    spec = {"optimizer": optimizer, "steps": args.steps, "batch": args.batch, "out": out,
            "distribution": {"strategy": strategy}}
    if strategy == "mirrored":
        spec["distribution"]["devices"] = [f"/cpu:{i}" for i in range(workers)]
        spec["cpu_devices"] = workers
    if strategy == "parameter_server":
        spec["distribution"].update(min_shard_bytes=1, steps_per_execution=args.ps_steps_per_execution)
    argv = [sys.executable, os.path.abspath(__file__), "job", json.dumps(spec)]
    processes = {}
    started = time.perf_counter()
    load = os.getloadavg()[0]
    if strategy in ("none", "mirrored"):
        jobs = {}
        trainer = ("chief", 0)
    elif strategy == "multi_worker_mirrored":
        jobs = {"worker": workers}
        trainer = ("worker", 0)
    else:
        jobs = {"chief": 1, "worker": workers, "ps": 2}
        trainer = ("chief", 0)
    with LocalCluster(jobs or {"chief": 1}, log_dir=os.path.join(tmp, f"logs-{strategy}-{workers}-{optimizer}")) as cluster:
        env = {} if jobs else {"TF_CONFIG": None}
        if strategy == "parameter_server":
            cluster.start_servers(("ps", "worker"))
            cluster.start("chief", 0, argv)
        elif strategy == "multi_worker_mirrored":
            for i in range(workers):
                cluster.start("worker", i, argv[:-1] + [json.dumps({**spec, "out": f"{out}.{i}"})])
        else:
            cluster.start("chief", 0, argv, env=env)
        code = cluster.wait(*trainer, timeout=args.timeout)
        if code != 0:
            raise RuntimeError(f"{strategy} x{workers} {optimizer}: exit {code}\n{cluster.log(*trainer)[-3000:]}")
        if strategy == "multi_worker_mirrored":
            for i in range(1, workers):
                cluster.wait("worker", i, timeout=args.timeout)
        for key, proc in cluster.procs.items():
            processes[f"{key[0]}:{key[1]}"] = peak_rss_mb(proc.pid) if proc.poll() is None else None
    result_path = out + ".0" if strategy == "multi_worker_mirrored" else out
    with open(result_path) as f:
        result = json.load(f)
    for name in processes:  # training processes report ru_maxrss themselves
        kind, index = name.split(":")
        own = out + f".{index}" if strategy == "multi_worker_mirrored" else out
        if processes[name] is None and (kind == "chief" or strategy == "multi_worker_mirrored"):
            with open(own) as f:
                processes[name] = json.load(f)["peak_rss_mb"]
    return {"strategy": strategy, "workers": workers, "optimizer": optimizer,
            "examples_per_second": result["examples"] / result["seconds"],
            "timed_seconds": result["seconds"], "steps": result["steps"],
            "replicas_in_sync": result["replicas_in_sync"], "parameters": result["parameters"],
            "peak_rss_mb": processes, "wall_seconds": time.perf_counter() - started,
            "load_average_1min_at_start": load}


def markdown(report: dict) -> str:
    lines = [
        "# MatTARanker training throughput under tf.distribute strategies",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: MatTARanker, synthetic logs (13 numeric, 26 categorical features), "
        f"{report['parameters']:,} parameters; batch {report['batch']} (global for the synchronous "
        f"strategies, per worker step for parameter_server); {report['steps']} timed steps after "
        f"{report['steps']} warm-up steps. Machine: {report['cpus']} cores shared by every process "
        f"of a run and by other users (load average at start {report['load_average'][0]:.1f}) - "
        "2 workers do not get more CPU than 1, so this measures overheads at equal total CPU, "
        "not scaling.",
        "",
        "| strategy | workers | optimizer | examples/s | peak RSS per process (MB) | load avg at start |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            error = r["error"].splitlines()[0][:80]
            lines.append(f"| {r['strategy']} | {r['workers']} | {r['optimizer']} | failed: {error} | | |")
            continue
        rss = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mb"].items() if v is not None)
        lines.append(f"| {r['strategy']} | {r['workers']} | {r['optimizer']} | "
                     f"{r['examples_per_second']:,.0f} | {rss} | {r['load_average_1min_at_start']:.1f} |")
    lines += ["", "mirrored with 2 workers = 2 logical CPU devices in one process; "
              "multi_worker_mirrored = worker processes (worker:0 is the chief); parameter_server = "
              "coordinator (chief:0) + workers + 2 ps, tables split over both ps.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--optimizers", default="adam,shampoo")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--only", default="", help="comma list of strategy names")
    parser.add_argument("--ps-steps-per-execution", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    report = {"command": "bin/matta-env python bench/bench_distribute.py " + " ".join(argv or sys.argv[1:]),
              "steps": args.steps, "batch": args.batch, "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "python": platform.python_version(), "results": []}
    import tensorflow as tf

    report["tensorflow"] = tf.__version__
    with tempfile.TemporaryDirectory(prefix="bench-distribute-") as tmp:
        for optimizer in args.optimizers.split(","):
            for strategy, workers in SETUPS:
                if only and strategy not in only:
                    continue
                try:
                    r = run_setup(strategy, workers, optimizer, args, tmp)
                except (RuntimeError, TimeoutError) as err:
                    r = {"strategy": strategy, "workers": workers, "optimizer": optimizer, "error": str(err)}
                report["results"].append(r)
                report.setdefault("parameters", r.get("parameters", 0))
                print(json.dumps({k: v for k, v in r.items() if k != "error"} | (
                    {"error": r["error"][-500:]} if "error" in r else {})), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "job":
        job(json.loads(sys.argv[2]))
    else:
        main()
