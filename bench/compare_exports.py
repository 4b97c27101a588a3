"""In-process serving_default latency of several exported SavedModels, interleaved, and their
max |logit difference| from the first one: an A/B of two export graphs of the same model.

    bin/matta-env python bench/compare_exports.py --pipeline-root <demo-root>/pipeline \
        <saved_model_dir> <saved_model_dir> ... [--rounds 30] [--calls 25] [--out result.json]

The inputs are the first 512 records of the pipeline's eval split (as bench/bench_input_path.py
reads them). For batch 64 and 512, every model runs `--calls` calls per round; rounds alternate
the order of the models so machine load hits all alike. Reported per model and batch: p50 of all
calls, the lowest round median (the round least disturbed by other work) and process CPU ms per
call; the load average at start and end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import matta_tf  # noqa: F401  (before TensorFlow)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-root", required=True)
    parser.add_argument("models", nargs="+", help="SavedModel dirs; the first is the reference")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from bench.bench_input_path import load_pipeline

    load_start = os.getloadavg()
    _, _, examples = load_pipeline(args.pipeline_root, 512)
    if len(examples) < 512:
        examples = [examples[i % len(examples)] for i in range(512)]
    sigs = {d: tf.saved_model.load(d).signatures["serving_default"] for d in args.models}
    x = tf.constant(examples)
    ref = sigs[args.models[0]](examples=x)["logit"].numpy()
    report = {"models": args.models, "max_abs_diff": {}, "latency": {}}
    for d in args.models:
        diff = float(np.max(np.abs(sigs[d](examples=x)["logit"].numpy() - ref)))
        report["max_abs_diff"][d] = diff
        print(f"{d}: max |logit diff| vs {args.models[0]}: {diff:.3g}")
    for batch in (64, 512):
        xb = tf.constant(examples[:batch])
        for sig in sigs.values():
            for _ in range(20):
                sig(examples=xb)
        walls = {d: [] for d in sigs}
        medians = {d: [] for d in sigs}
        cpus = {d: [] for d in sigs}
        for r in range(args.rounds):
            for d in (args.models if r % 2 == 0 else args.models[::-1]):
                sig, ts = sigs[d], []
                c0 = time.process_time()
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    sig(examples=xb)
                    ts.append(time.perf_counter() - t0)
                cpus[d].append((time.process_time() - c0) / args.calls)
                walls[d] += ts
                medians[d].append(float(np.median(ts)))
        report["latency"][str(batch)] = {
            d: {"p50_ms": float(np.median(walls[d]) * 1e3), "best_round_p50_ms": min(medians[d]) * 1e3,
                "cpu_ms": float(np.median(cpus[d]) * 1e3)} for d in sigs}
        for d, v in report["latency"][str(batch)].items():
            print(f"batch {batch} {d}: p50 {v['p50_ms']:.3f} ms, lowest round median "
                  f"{v['best_round_p50_ms']:.3f} ms, cpu {v['cpu_ms']:.3f} ms")
    report["load_avg_start"], report["load_avg_end"] = load_start, os.getloadavg()
    print(f"load average {load_start[0]:.1f} at start, {report['load_avg_end'][0]:.1f} at end")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
