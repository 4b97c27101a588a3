"""matta's evidence: `python -m bench.run --full|--smoke [--data ...]` (make bench / bench-smoke).

Writes bench/results/<data>/{quality.json,throughput.json,ingestion.json,summary.md,
frontier.png}. Questions (see issue "bench/: the evidence"):

  Q0  matta's labels-only Student vs a plain TFRS/Keras model of the same architecture
      (`tfrs` arm, bench/tfrs_reference.py; ablations: bench/parity.py).
  Q1  Student alone vs KD-from-teacher Student vs MatTA Student (same architecture).
  Q2  every Mix'n'Match size cut from the one MatTA run vs an independently trained
      (and a KD-trained) model of exactly that size.
  Q3  all of it with Adam and with Shampoo; is MatTA+Shampoo's gain super-additive?
  P1  training throughput and multiply-add utilisation against a measured matmul peak.
  P2  serving latency per student (bench/results/serving_latency.json, if present).
  P3  ClickLogExampleGen ingestion rows/s vs a plain pyarrow CSV read + TFRecord write.

Data (bench/data.py): generated (oracle teacher), generated:fitted, movielens (MovieLens-100k),
criteo:DIR, schema:...; all but `generated` get their teacher logits from the project's
teacher cross-fitted on train + validation (out-of-fold logits for those rows, the fold
ensemble for eval). Features: exact vocabularies from the train split (--min-count,
--max-vocabulary). A validation split (end of the train period) is kept out of training.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import matta_tf  # noqa: F401
from bench import data as bench_data
from bench import quality
from matta_tf.config import RankerConfig

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "matta_tf", "configs", "default_ranker.yaml")

PROFILES = {
    # rows, eval rows, steps, batch, seeds, teacher steps, ingestion rows
    "smoke": dict(train_rows=3000, eval_rows=1000, steps=8, batch_size=128, seeds=1, teacher_steps=10,
                  ingest_rows=1000, throughput_steps=3),
    "full": dict(train_rows=200_000, eval_rows=50_000, steps=500, batch_size=512, seeds=3, teacher_steps=800,
                 ingest_rows=100_000, throughput_steps=40),
}


def _mean_std(values):
    values = [v for v in values if v == v]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def machine() -> dict:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine()}


METHODS = ("matta", "alone", "kd", "tfrs")


def run_quality(data, base: RankerConfig, settings: quality.TrainSettings, seeds: int,
                optimizers: list[str], mix_sizes: int, log=print, methods=METHODS,
                only_sizes: list[str] | None = None) -> dict:
    """Trains every arm and returns {"runs": [...], "summary": {...}}.

    `tfrs` (the plain TFRS/Keras reference of the Student's architecture, see
    bench/tfrs_reference.py) runs with Adam at the Student size only."""
    from matta_tf.datasets import table_to_dataset
    from matta_tf.extract import cost

    student, ta = base.student, base.ta
    sizes = {"student": student, **base.mixnmatch_specs(mix_sizes), "ta": ta}
    eval_ds = table_to_dataset(data.eval, data.features, batch_size=4096)
    eval_batches = list(eval_ds)
    labels = np.concatenate([y.numpy() for _, y in eval_batches])
    trained_sizes = {k: v for k, v in sizes.items() if not only_sizes or k in only_sizes}
    runs = []
    for optimizer in optimizers:
        for seed in range(seeds):
            # A fresh dataset per arm: every arm of a seed sees the same batches in the same order
            # (iterating one seeded dataset twice would reshuffle), so arms are paired.
            def train_ds(seed=seed):
                import tensorflow as tf

                # tf.data combines the op seed with the global seed: pin both, else the order
                # depends on which arm ran before.
                tf.random.set_seed(seed)
                return table_to_dataset(data.train, data.features, batch_size=settings.batch_size,
                                        shuffle_seed=seed, repeat=True)

            def log_row(row):
                runs.append(row)
                log(f"  {row['optimizer']:7s} seed {row['seed']} {row['method']:6s} {row['size']:8s} "
                    f"auc {row['auc']:.4f} logloss {row['logloss']:.4f} ({row['train_seconds']:.1f}s)")

            def record(method, size, model, seconds, spec, optimizer=optimizer, seed=seed):
                m = quality.eval_spec(model, spec, eval_batches, labels)
                log_row({"optimizer": optimizer, "seed": seed, "method": method, "size": size,
                         "train_seconds": seconds, **cost(base.features, spec), **m})

            if "matta" in methods:
                config = quality.arm_config(base, student, ta, base.loss_weights, seed, settings,
                                            mixnmatch_train_specs=base.mixnmatch_train_specs)
                model, seconds = quality.train(config, train_ds(), optimizer, settings)
                for size, spec in trained_sizes.items():
                    record("matta", size, model, seconds, spec)
            for size, spec in trained_sizes.items():
                for method, weights in (("alone", quality.ALONE), ("kd", quality.KD)):
                    if method not in methods:
                        continue
                    config = quality.arm_config(base, spec, spec, weights, seed, settings)
                    model, seconds = quality.train(config, train_ds(), optimizer, settings)
                    record(method, size, model, seconds, spec)
            if "tfrs" in methods and optimizer == "adam" and "student" in trained_sizes:
                from bench import tfrs_reference

                m, params, seconds = tfrs_reference.train_and_eval(
                    data.features, student, train_ds(), eval_batches, labels, settings.steps,
                    settings.adam_lr, seed)
                log_row({"optimizer": optimizer, "seed": seed, "method": "tfrs", "size": "student",
                         "train_seconds": seconds, **cost(base.features, student), "params": params, **m})
    return {"runs": runs, "summary": summarise(runs),
            "sizes": {k: v.to_dict() for k, v in trained_sizes.items()}}


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    keys = sorted({(r["optimizer"], r["method"], r["size"]) for r in runs})
    for opt, method, size in keys:
        rows = [r for r in runs if (r["optimizer"], r["method"], r["size"]) == (opt, method, size)]
        out.setdefault(opt, {}).setdefault(size, {})[method] = {
            "auc": _mean_std([r["auc"] for r in rows]),
            "logloss": _mean_std([r["logloss"] for r in rows]),
            "params": rows[0]["params"], "madds_per_example": rows[0]["madds_per_example"]}
    # Q3: gains in student AUC over (Adam, alone). Super-additive if the joint gain
    # exceeds the sum of the Shampoo-only and MatTA-only gains.
    try:
        base = out["adam"]["student"]["alone"]["auc"]["mean"]
        g_matta = out["adam"]["student"]["matta"]["auc"]["mean"] - base
        g_shampoo = out["shampoo"]["student"]["alone"]["auc"]["mean"] - base
        g_joint = out["shampoo"]["student"]["matta"]["auc"]["mean"] - base
        # Standard error of the interaction (joint - matta - shampoo + base) from the four
        # arms' seed spreads; a verdict needs the margin to clear 2 standard errors.
        arms = [out[o]["student"][m]["auc"] for o, m in
                (("adam", "alone"), ("adam", "matta"), ("shampoo", "alone"), ("shampoo", "matta"))]
        se = sum(a["std"] ** 2 / max(a["n"], 1) for a in arms) ** 0.5
        margin = g_joint - (g_matta + g_shampoo)
        verdict = ("super-additive" if margin > 2 * se else "sub-additive" if margin < -2 * se
                   else "within noise")
        out["q3"] = {"gain_matta_adam": g_matta, "gain_shampoo_alone": g_shampoo, "gain_matta_shampoo": g_joint,
                     "interaction": margin, "interaction_se": se, "verdict": verdict,
                     "super_additive": verdict == "super-additive"}
    except KeyError:
        pass
    return out


def peak_madds_per_second(seconds: float = 2.0) -> float:
    """A measured ceiling: float32 matmul multiply-adds/s on this machine (all cores)."""
    import tensorflow as tf

    n = 1024
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    f = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    f()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        f().numpy()
        count += 1
    return count * n ** 3 / (time.perf_counter() - start)


def run_throughput(data, base: RankerConfig, settings: quality.TrainSettings, steps: int, log=print) -> dict:
    """P1: examples/s of TA alone (Adam), MatTA (Adam), MatTA (Shampoo) at the same batch."""
    import tensorflow as tf

    from matta_tf.datasets import table_to_dataset
    from matta_tf.extract import cost
    from matta_tf.model import MatTARanker

    ds = table_to_dataset(data.train, data.features, batch_size=settings.batch_size, shuffle_seed=0, repeat=True)
    # Cached batches: the timing covers the train step, not CSV/tf.data preprocessing.
    batches = ds.take(steps + 3).cache().repeat()
    peak = peak_madds_per_second()
    c_s, c_ta = cost(base, base.student)["madds_per_example"], cost(base, base.ta)["madds_per_example"]
    arms = {
        "ta_alone_adam": (quality.arm_config(base, base.ta, base.ta, quality.ALONE, 0, settings), "adam", c_ta),
        "matta_adam": (quality.arm_config(base, base.student, base.ta, base.loss_weights, 0, settings,
                                          base.mixnmatch_train_specs), "adam", c_s + c_ta),
        "matta_shampoo": (quality.arm_config(base, base.student, base.ta, base.loss_weights, 0, settings,
                                             base.mixnmatch_train_specs), "shampoo", c_s + c_ta),
    }
    out = {"peak_matmul_madds_per_s": peak, "batch_size": settings.batch_size, "steps": steps, "arms": {}}
    for name, (config, optimizer, forward_madds) in arms.items():
        model = MatTARanker(config)
        model.compile(optimizer=quality.make_optimizer(optimizer, settings))
        step = model.make_train_function()
        it = iter(batches)
        for _ in range(3):  # trace + warm-up
            step(it)
        start = time.perf_counter()
        for _ in range(steps):
            logs = step(it)
        float(logs["loss"])  # wait for the last step before stopping the clock
        seconds = time.perf_counter() - start
        eps = steps * settings.batch_size / seconds
        # Training ~ 3x forward multiply-adds (forward, grad w.r.t. activations and weights).
        util = 3 * forward_madds * eps / peak
        out["arms"][name] = {"examples_per_s": eps, "step_ms": 1000 * seconds / steps,
                             "train_madds_per_example": 3 * forward_madds, "madd_utilisation": util}
        log(f"  {name:15s} {eps:9.0f} examples/s  {1000 * seconds / steps:7.1f} ms/step  "
            f"utilisation {100 * util:.2f}% of measured matmul peak")
        del model
        tf.keras.backend.clear_session()
    return out


def run_ingestion(rows: int, workdir: str, log=print) -> dict:
    """P3: ClickLogExampleGen's Beam graph vs pyarrow CSV read + TFRecord write."""
    import apache_beam as beam
    import pyarrow.csv as pacsv
    import tensorflow as tf

    from components import example_gen, logschema
    from matta_tf.datasets import write_click_logs

    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "logs.csv")
    teacher_path = os.path.join(workdir, "teacher.parquet")
    write_click_logs(log_path, rows, seed=7, fmt="csv", teacher_path=teacher_path)
    schema = bench_schema()
    config = example_gen.make_click_log_config(schema, teacher_pattern=teacher_path)

    start = time.perf_counter()
    table = pacsv.read_csv(log_path)
    with tf.io.TFRecordWriter(os.path.join(workdir, "plain.tfrecord")) as writer:
        for batch in table.to_batches(8192):
            for row in batch.to_pylist():
                ex = tf.train.Example()
                for k, v in row.items():
                    if isinstance(v, str):
                        ex.features.feature[k].bytes_list.value.append(v.encode())
                    elif v is not None:
                        ex.features.feature[k].float_list.value.append(float(v))
                writer.write(ex.SerializeToString())
    plain = time.perf_counter() - start

    split_uris = {n: os.path.join(workdir, "out", n) for n in config["split"]["names"]}
    start = time.perf_counter()
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
            ["--runner=DirectRunner", "--direct_num_workers=1"])) as p:
        counts = example_gen.run_click_log_graph(
            p, [log_path], [teacher_path], logschema.load_log_schema(schema).to_dict(), config["split"],
            split_uris, os.path.join(workdir, "quarantine.jsonl"))
        _ = counts | beam.combiners.ToDict() | beam.Map(
            lambda d: open(os.path.join(workdir, "counts.json"), "w").write(json.dumps(d)))
    beam_seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "counts.json")) as f:
        counts = json.load(f)
    out = {"rows": rows, "plain_pyarrow_tfrecord_rows_per_s": rows / plain,
           "clicklog_examplegen_rows_per_s": rows / beam_seconds, "counts": counts,
           "runner": "DirectRunner, 1 worker (in-process)"}
    log(f"  plain pyarrow+TFRecord {rows / plain:9.0f} rows/s; ClickLogExampleGen (Beam, validation, "
        f"teacher join, dedup) {rows / beam_seconds:9.0f} rows/s")
    return out


def bench_schema() -> dict:
    """Log schema of the generated CSV logs (header row, teacher logits kept separately)."""
    from components.logschema import synthetic_schema

    return synthetic_schema("csv").to_dict()


def fmt(ms: dict, digits=4) -> str:
    if ms["n"] == 0:
        return "-"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def markdown(result: dict) -> str:
    q = result.get("quality")
    lines = [f"### Results: data `{result['data']}`, profile `{result['profile']}`", "",
             "Commands: " + ", ".join(f"`{c}`" for c in result["commands"])
             + f"; machine: {result['machine']['cpus']} CPUs, {result['machine']['platform']}; "
             f"{result['settings']}; teacher: {result['teacher']}.", ""]
    o = result.get("data_options")
    if o:
        cap = f"hashed above {o['max_vocabulary']:,} values" if o.get("max_vocabulary") else "no hashing cap"
        lines += [f"Data: {o['rows']['train']:,} train / {o['rows']['validation']:,} validation (tuning only) / "
                  f"{o['rows']['eval']:,} eval rows; categorical features with exact vocabularies from the "
                  f"train split (min count {o['min_count']}, {cap}).", ""]
    if q:
        s = q["summary"]
        for opt in [o for o in ("adam", "shampoo") if o in s]:
            lines += [f"Eval AUC ({opt}; mean ± std over {result['seeds']} seeds; log-loss in brackets):", "",
                      "| size | params | madds/ex | alone | KD from teacher | MatTA (extracted) |",
                      "|---|---|---|---|---|---|"]
            for size in q["sizes"]:
                row = s[opt].get(size, {})
                if not row:
                    continue
                any_row = next(iter(row.values()))
                cells = [f"{fmt(row[m]['auc'])} ({row[m]['logloss']['mean']:.4f})" if m in row else "-"
                         for m in ("alone", "kd", "matta")]
                lines.append(f"| {size} | {any_row['params']:,} | {any_row['madds_per_example']:,} | "
                             + " | ".join(cells) + " |")
            lines.append("")
            ref = s[opt].get("student", {})
            if "tfrs" in ref and "alone" in ref:
                t, a = ref["tfrs"], ref["alone"]
                lines += [f"TFRS reference ({opt}; plain `tfrs.layers.dcn.Cross` + Dense + StringLookup/"
                          f"Embedding, the Student's architecture, {t['params']:,} params; same data, steps, "
                          f"batch, learning rate): AUC {fmt(t['auc'])} (log-loss {fmt(t['logloss'])}); matta "
                          f"labels-only Student {fmt(a['auc'])} (log-loss {fmt(a['logloss'])}): "
                          f"matta - TFRS = {a['auc']['mean'] - t['auc']['mean']:+.4f} AUC, "
                          f"{a['logloss']['mean'] - t['logloss']['mean']:+.4f} log-loss.", ""]
        if "q3" in s:
            g = s["q3"]
            lines += [f"Q3 (Student AUC gains over Adam/alone): MatTA+Adam {g['gain_matta_adam']:+.4f}, "
                      f"Shampoo alone {g['gain_shampoo_alone']:+.4f}, MatTA+Shampoo {g['gain_matta_shampoo']:+.4f} "
                      f"-> interaction {g['interaction']:+.4f} ± {g['interaction_se']:.4f} (1 s.e.): "
                      f"{g['verdict']}.", ""]
    t = result.get("throughput")
    if t:
        lines += [f"P1 training throughput (batch {t['batch_size']}, measured matmul peak "
                  f"{t['peak_matmul_madds_per_s'] / 1e9:.1f} G madds/s):", "",
                  "| arm | examples/s | ms/step | utilisation of peak |", "|---|---|---|---|"]
        for name, a in t["arms"].items():
            lines.append(f"| {name} | {a['examples_per_s']:,.0f} | {a['step_ms']:.1f} | "
                         f"{100 * a['madd_utilisation']:.2f}% |")
        lines.append("")
    s = result.get("serving")
    if s:
        lines += ["P2 serving latency per student (gRPC against `matta serve`, from "
                  "bench/results/serving_latency.json, made by bench/bench_serving.py; its students "
                  "use the default config's tables, and the plot matches them to the sizes above by "
                  "architecture, i.e. multiply-adds per example):", "",
                  "| student | params | madds/ex | batch | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
        for name, per_batch in s["results"].items():
            st = s["students"][name]
            for batch, v in per_batch.items():
                lines.append(f"| {name} | {st['params']:,} | {st['madds_per_example']:,} | {batch} "
                             f"| {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |")
        lines.append("")
    i = result.get("ingestion")
    if i:
        lines += [f"P3 ingestion of {i['rows']:,} rows: ClickLogExampleGen {i['clicklog_examplegen_rows_per_s']:,.0f} "
                  f"rows/s ({i['runner']}) vs plain pyarrow CSV + TFRecord "
                  f"{i['plain_pyarrow_tfrecord_rows_per_s']:,.0f} rows/s.", ""]
    return "\n".join(lines)


def serving_p50_by_madds(result: dict, batch: str = "64") -> dict[int, float]:
    """p50 serving latency (ms) at `batch`, keyed by multiply-adds per example.

    The serving benchmark exports its own students, so the quality arms' sizes are matched
    to them by architecture cost (multiply-adds per example), not by name.
    """
    s = result.get("serving") or {}
    return {st["madds_per_example"]: s["results"][name][batch]["p50_ms"]
            for name, st in s.get("students", {}).items() if batch in s["results"].get(name, {})}


def plot_frontier(result: dict, path: str, latency_batch: str = "64") -> None:
    """AUC vs parameters per method and optimizer; a second row vs serving p50 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = result["quality"]["summary"]
    opts = [o for o in ("adam", "shampoo") if o in q]
    latency = serving_p50_by_madds(result, latency_batch)
    sizes_served = all(v[m]["madds_per_example"] in latency for o in opts for v in q[o].values() for m in v)
    axes_x = [("params", "parameters", True)]
    if latency and sizes_served:
        axes_x.append(("latency", f"serving p50 latency, batch {latency_batch} (ms)", False))
    fig, axes = plt.subplots(len(axes_x), len(opts), figsize=(6 * len(opts), 4 * len(axes_x)), squeeze=False)
    for row, (key, label, log_x) in enumerate(axes_x):
        for ax, opt in zip(axes[row], opts, strict=True):
            for method, marker in (("alone", "o"), ("kd", "s"), ("matta", "^")):
                pts = sorted((v[method]["params"] if key == "params" else latency[v[method]["madds_per_example"]],
                              v[method]["auc"]["mean"], v[method]["auc"]["std"])
                             for v in q[opt].values() if method in v)
                if pts:
                    x, y, e = zip(*pts, strict=True)
                    ax.errorbar(x, y, yerr=e, marker=marker, capsize=3, label=method)
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel("eval AUC")
            ax.set_title(f"{result['data']} - {opt}")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny run: checks the harness only")
    mode.add_argument("--full", action="store_true", help="the full run (default)")
    parser.add_argument("--data", default="generated",
                        help="generated (oracle teacher) | generated:fitted | movielens | criteo:DIR | "
                             "schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB; all but `generated` use the "
                             "project's cross-fitted teacher")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="ranker config (Student/TA sizes, loss weights)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int, help="training steps per arm (default: the profile's)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--teacher-steps", type=int, help="steps per fold model of the fitted teacher")
    parser.add_argument("--folds", type=int, default=bench_data.DEFAULT_FOLDS,
                        help="cross-fitting folds of the fitted teacher (1: none - then it scores its own "
                             "training rows and the bench refuses)")
    parser.add_argument("--min-count", type=int, default=bench_data.DEFAULT_MIN_COUNT,
                        help="occurrences (in the train split) a categorical value needs for its own row")
    parser.add_argument("--max-vocabulary", type=int, default=None,
                        help="hash a categorical feature with a larger vocabulary into this many buckets "
                             "(default: no cap)")
    parser.add_argument("--validation-fraction", type=float, default=bench_data.VALIDATION_FRACTION,
                        help="last part of the train period (by time) held out as the validation split")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma list of quality arms: matta, alone, kd, tfrs (TFRS reference, Adam, "
                             "Student size)")
    parser.add_argument("--sizes", default=None,
                        help="comma list of sizes to train (student, mix_1.., ta; default all)")
    parser.add_argument("--optimizers", default="adam,shampoo")
    parser.add_argument("--mix-sizes", type=int, default=1, help="Mix'n'Match sizes between Student and TA")
    parser.add_argument("--only", default="quality,throughput,ingestion",
                        help="comma list of quality, throughput, ingestion; 'report' runs nothing and "
                             "re-renders summary.md and frontier.png from results.json (e.g. after "
                             "bench/bench_serving.py)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)

    profile_name = "smoke" if args.smoke else "full"
    prof = dict(PROFILES[profile_name])
    if args.seeds:
        prof["seeds"] = args.seeds
    for key in ("steps", "batch_size", "teacher_steps"):
        if getattr(args, key):
            prof[key] = getattr(args, key)
    parts = set(args.only.split(","))
    if parts == {"report"}:
        return rerender(os.path.join(args.out, bench_data.data_name(args.data).replace(":", "_")
                                     + ("-smoke" if args.smoke else "")))
    t0 = time.perf_counter()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    log(f"bench: loading data {args.data} ({profile_name})")
    opts = bench_data.DataOptions(teacher_steps=prof["teacher_steps"], folds=args.folds, min_count=args.min_count,
                                  max_vocabulary=args.max_vocabulary,
                                  validation_fraction=args.validation_fraction)
    data = bench_data.load(args.data, prof["train_rows"], prof["eval_rows"], opts, small=args.smoke, log=log)
    n_val = data.validation.num_rows if data.validation is not None else 0
    log(f"bench: {data.train.num_rows} train / {n_val} validation / {data.eval.num_rows} eval rows; "
        f"teacher: {data.teacher}")
    base = RankerConfig.from_yaml(args.config)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    settings = quality.TrainSettings(steps=prof["steps"], batch_size=prof["batch_size"],
                                     warmup_steps=max(1, prof["steps"] // 4))
    command = "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {"data": data.name, "profile": profile_name, "seeds": prof["seeds"], "teacher": data.teacher,
              "machine": machine(), "settings": {k: v for k, v in vars(settings).items()},
              "data_options": {**vars(opts), "rows": {"train": data.train.num_rows, "validation": n_val,
                                                      "eval": data.eval.num_rows}},
              "teacher_metrics": data.teacher_metrics}
    # Smoke results never overwrite the full run's committed results.
    out_dir = os.path.join(args.out, data.name.replace(":", "_") + ("-smoke" if args.smoke else ""))
    os.makedirs(out_dir, exist_ok=True)
    # Parts run separately (`--only`) accumulate in one results.json per data set and profile.
    results_json = os.path.join(out_dir, "results.json")
    if os.path.exists(results_json):
        with open(results_json) as f:
            previous = json.load(f)
        if previous.get("profile") == profile_name:
            kept = {}
            if "quality" not in parts:
                # The header's settings and teacher describe the quality arms: a later run of
                # other parts (with other flags) must not relabel them.
                kept = {k: previous[k] for k in ("settings", "teacher", "seeds", "data_options", "teacher_metrics")
                        if k in previous}
            result = {**previous, **result, **kept,
                      "commands": previous.get("commands", [previous.get("command")])}
    result["commands"] = [c for c in result.get("commands", []) if c and c != command]
    if parts != {"report"}:
        result["commands"].append(command)
    result.pop("command", None)
    if "quality" in parts:
        log("bench: Q1-Q3 quality arms")
        result["quality"] = run_quality(data, base, settings, prof["seeds"], args.optimizers.split(","),
                                        args.mix_sizes, log, methods=args.methods.split(","),
                                        only_sizes=args.sizes.split(",") if args.sizes else None)
    if "throughput" in parts:
        log("bench: P1 training throughput")
        result["throughput"] = run_throughput(data, base, settings, prof["throughput_steps"], log)
    attach_serving(result, args.out)
    if "ingestion" in parts:
        log("bench: P3 ingestion throughput")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            result["ingestion"] = run_ingestion(prof["ingest_rows"], tmp, log)
    result["seconds"] = time.perf_counter() - t0
    with open(results_json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    log(write_report(result, out_dir))
    log(f"bench: wrote {out_dir} in {result['seconds']:.0f}s")
    return 0


def attach_serving(result: dict, results_dir: str) -> None:
    """P2: the serving benchmark's latest numbers (bench/bench_serving.py), if it has run."""
    serving_json = os.path.join(results_dir, "serving_latency.json")
    if os.path.exists(serving_json):
        with open(serving_json) as f:
            result["serving"] = json.load(f)


def write_report(result: dict, out_dir: str) -> str:
    """Writes summary.md (and frontier.png when there are quality results); returns the Markdown."""
    md = markdown(result)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(md + "\n")
    if "quality" in result:
        plot_frontier(result, os.path.join(out_dir, "frontier.png"))
    return md


def rerender(out_dir: str) -> int:
    """`--only report`: picks up a newer serving_latency.json without re-running any arm."""
    results_json = os.path.join(out_dir, "results.json")
    if not os.path.exists(results_json):
        print(f"bench: no {results_json} to re-render; run the benchmark first", file=sys.stderr)
        return 2
    with open(results_json) as f:
        result = json.load(f)
    attach_serving(result, os.path.dirname(out_dir))
    with open(results_json, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(write_report(result, out_dir))
    print(f"bench: re-rendered {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
