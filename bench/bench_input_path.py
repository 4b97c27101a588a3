"""In-process serving cost of exported students: per-feature vs fused input path, and where
the time goes (parse / feature transform / lookups / model / overhead).

    bin/matta-env python bench/bench_input_path.py --pipeline-root <demo-root>/pipeline \
        [--rounds 12] [--out bench/results/input_path.json]

From a finished pipeline run (`matta demo` / `matta pipeline run`) it takes the Trainer's
model, the Transform graph and the eval split, extracts every arm (`student`, `mix_1`,
`ta`) and exports each twice into a temporary folder, exactly as the StudentExtractor
does: `input_path="per_feature"` (the export before the fused path existed) and
`input_path="fused"`. Then, in this process, on the same eval tf.Examples:

* equality: max |logit difference| between the two exports, serving_default and predict_raw;
* latency: `loaded.signatures[...]` calls, p50 (and p90) over interleaved rounds (every
  candidate runs `--calls` calls per round, rounds alternate candidates so machine load
  hits all alike), plus process CPU milliseconds per call; serving_default at batch 1 / 64
  / 512, predict_raw and predict_ids at 64 / 512;
* split: tf.functions running growing prefixes of each input path, timed the same way;
  the cost of a piece is the difference of consecutive prefixes:
    overhead   a signature call that returns at once (Python + runtime dispatch)
    parse      ParseExampleV2 (+ densifying missing values)
    transform  numeric transform (TFT z-score, the model's normalisation)
    lookups    categorical values -> embedding rows (vocabularies, OOV hashing)
    gather     embedding gather + the cross stack's input x0 = [numeric | embeddings]
    model      cross/MLP/logit (the arithmetic that grows with size)

The per-feature split uses the export's own pieces: parse (VarLen), the TFT layer
(transform + lookups together, one op chain per feature), the model (its per-feature
preprocessing and gathers, then the network: `gather` is inside `model` there). Timings are medians on a shared machine:
the load average is recorded at start and end.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

import matta_tf  # noqa: F401  (before TensorFlow)
from matta_tf.contract import NON_FEATURE_COLUMNS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ARMS = ("student", "mix_1", "ta")


def latest(pattern: str) -> str:
    found = sorted(glob.glob(pattern), key=lambda p: int(os.path.basename(p)))
    if not found:
        raise SystemExit(f"nothing matches {pattern}")
    return found[-1]


def load_pipeline(root: str, count: int):
    """(trained MatTARanker, TFTransformOutput, eval tf.Examples without non-features)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from components import trainer_module

    model, _ = trainer_module.load_trained(
        os.path.join(latest(os.path.join(root, "Trainer", "model", "*")), "Format-Serving"))
    tft_output = tft.TFTransformOutput(latest(os.path.join(root, "Transform", "transform_graph", "*")))
    split = os.path.join(latest(os.path.join(root, "ClickLogExampleGen", "examples", "*")), "Split-eval")
    files = sorted(f for f in glob.glob(os.path.join(split, "*")) if os.path.isfile(f))
    examples = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count):
        ex = tf.train.Example.FromString(record.numpy())
        for name in NON_FEATURE_COLUMNS:  # a client sends features only
            if name in ex.features.feature:
                del ex.features.feature[name]
        examples.append(ex.SerializeToString())
    return model, tft_output, examples


def timed(candidates: dict, rounds: int, calls: int, warmup: int = 20) -> dict:
    """name -> {"p50_ms", "p90_ms", "best_round_p50_ms", "cpu_ms"}: interleaved rounds of
    `calls` calls each. `best_round_p50_ms` is the lowest per-round median: the round least
    disturbed by other work on a shared machine (an estimate of the uncontended cost)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    walls = {k: [] for k in candidates}
    rounds_p50 = {k: [] for k in candidates}
    cpus = {k: [] for k in candidates}
    for r in range(rounds):
        names = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for name in names:
            fn = candidates[name]
            c0 = time.process_time()
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                walls[name].append(time.perf_counter() - t0)
            cpus[name].append((time.process_time() - c0) / calls)
            rounds_p50[name].append(float(np.median(walls[name][-calls:])))
    return {k: {"p50_ms": float(np.median(walls[k]) * 1e3),
                "p90_ms": float(np.percentile(walls[k], 90) * 1e3),
                "best_round_p50_ms": float(min(rounds_p50[k]) * 1e3),
                "cpu_ms": float(np.median(cpus[k]) * 1e3)} for k in candidates}


def fused_pieces(module, examples_t):
    """Growing prefixes of the fused path as tf.functions on the same examples."""
    import tensorflow as tf

    enc = module.encoder
    net = module._network.value

    def scalar(*tensors):
        out = [tf.reduce_sum(tf.cast(t, tf.float32)) for t in tf.nest.flatten(tensors)
               if t is not None and t.dtype != tf.string]
        return tf.add_n(out) if out else tf.constant(0.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def overhead(x):
        return {"logit": tf.zeros(tf.shape(x), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(x):
        numeric, strings, ints = enc.parse(x)
        return scalar(numeric, ints, *(strings or ()))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def transform(x):
        numeric, strings, ints = enc.parse(x)
        return scalar(enc.transform_numeric(numeric), ints, *(strings or ()))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def lookups(x):
        numeric, strings, ints = enc.parse(x)
        return scalar(enc.transform_numeric(numeric), enc.rows(strings, ints))

    dim = net.max_spec.embedding_dim

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def gather(x):
        numeric, strings, ints = enc.parse(x)
        return scalar(enc.model_input(enc.transform_numeric(numeric), enc.rows(strings, ints), dim))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def full(x):
        numeric, strings, ints = enc.parse(x)
        x0 = enc.model_input(enc.transform_numeric(numeric), enc.rows(strings, ints), dim)
        return {"logit": net.logits_from_x0(x0, net.max_spec)}

    return {name: (lambda f=f: f(examples_t)) for name, f in
            [("overhead", overhead), ("parse", parse), ("transform", transform),
             ("lookups", lookups), ("gather", gather), ("model", full)]}


def per_feature_pieces(module, examples_t):
    import tensorflow as tf

    def scalar(tensors):
        out = []
        for t in tf.nest.flatten(tensors, expand_composites=True):
            if t.dtype == tf.string:
                continue
            out.append(tf.reduce_sum(tf.cast(t, tf.float32)))
        return tf.add_n(out)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def overhead(x):
        return {"logit": tf.zeros(tf.shape(x), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(x):
        parsed = tf.io.parse_example(x, module.parse_spec)
        return scalar({k: v for k, v in parsed.items()}) + tf.cast(
            tf.add_n([tf.size(v.values) for v in parsed.values() if v.dtype == tf.string]), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tft_layer(x):
        return scalar(module.preprocess(tf.io.parse_example(x, module.parse_spec)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def full(x):
        return module._serve_examples(x)

    return {name: (lambda f=f: f(examples_t)) for name, f in
            [("overhead", overhead), ("parse", parse), ("transform+lookups", tft_layer),
             ("model", full)]}


def op_profile(export_dir: str, examples: list[bytes], batch: int, runs: int = 40) -> dict:
    """Per-op wall time inside serving_default: the SavedModel in a TF1 Session (same graph,
    grappler-optimised like the TF2 runtime), `runs` calls with FULL_TRACE; returns
    {"ops_per_call", "op_sum_us", "by_type": {op type: us per call}, "top": [[node, type,
    us per call, output shapes]]}. Op times overlap where ops run in parallel, and the
    trace adds a little per op, so use it for where the time goes, not for latency."""
    import collections

    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        sess = tf.compat.v1.Session(graph=graph)
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        sig = meta.signature_def["serving_default"]
        feed = {sig.inputs["examples"].name: examples[:batch]}
        fetch = sig.outputs["logit"].name
        for _ in range(20):
            sess.run(fetch, feed)
        by_node, types, shapes, counts = collections.Counter(), {}, {}, []
        options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
        for _ in range(runs):
            meta_run = tf.compat.v1.RunMetadata()
            sess.run(fetch, feed, options=options, run_metadata=meta_run)
            n = 0
            for dev in meta_run.step_stats.dev_stats:
                for ns in dev.node_stats:
                    n += 1
                    by_node[ns.node_name] += ns.op_end_rel_micros - ns.op_start_rel_micros
                    types[ns.node_name] = ns.timeline_label.split(" = ")[-1].split("(")[0] or "?"
                    shapes[ns.node_name] = [[d.size for d in o.tensor_description.shape.dim]
                                            for o in ns.output][:2]
            counts.append(n)
        sess.close()
    by_type = collections.Counter()
    for node, us in by_node.items():
        by_type[types[node]] += us / runs
    return {"batch": batch, "ops_per_call": float(np.median(counts)),
            "op_sum_us": sum(by_type.values()),
            "by_type": dict(by_type.most_common()),
            "top": [[node.split("/")[-1], types[node], us / runs, shapes[node]]
                    for node, us in by_node.most_common(12)]}


def split_from(prefix_times: dict) -> dict:
    names = list(prefix_times)
    out, before = {}, 0.0
    for name in names:
        t = prefix_times[name]["cpu_ms"]
        out[name] = max(0.0, t - before) if name != "overhead" else t
        before = t
    out["total"] = prefix_times[names[-1]]["cpu_ms"]
    return out


def markdown(report: dict, arms: list[str]) -> str:
    """The tables of a report (latency before/after, split, equality) as markdown."""
    lat, split = report["latency"], report["split"]
    m = report["machine"]
    lines = [f"`{report['command']}`", "",
             f"load average {m['load_avg_start'][0]:.1f} at start, {m['load_avg_end'][0]:.1f} at end "
             f"({m['cpus']} CPUs, shared); p50 of interleaved rounds; `cpu` = process CPU ms per call.", "",
             "| signature | batch | " + " | ".join(f"{a} before | {a} after" for a in arms) + " | "
             + " | ".join(f"{a} after/before" for a in arms) + " |",
             "|---|---|" + "---|---|" * len(arms) + "---|" * len(arms)]
    for key in [k for k in lat if k.startswith("serving_default")] + [k for k in lat if k.startswith("predict_raw")]:
        sig, batch = key.split("/")
        row = lat[key]
        cells, ratios = [], []
        for a in arms:
            before, after = row[f"{a}/per_feature"]["p50_ms"], row[f"{a}/fused"]["p50_ms"]
            cells += [f"{before:.3f}", f"{after:.3f}"]
            ratios.append(f"{after / before:.2f}")
        lines.append(f"| {sig} | {batch} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
        if sig == "predict_raw":
            lines.append(f"| predict_ids | {batch} | " + " | ".join(
                f"- | {row[f'{a}/fused predict_ids']['p50_ms']:.3f}" for a in arms) + " |" + " |" * len(arms))
    lines += ["", "Lowest round median (ms; the round least disturbed by other work):", "",
              "| signature | batch | " + " | ".join(f"{a} before | {a} after" for a in arms) + " |",
              "|---|---|" + "---|---|" * len(arms)]
    for key in [k for k in lat if k.startswith("serving_default")]:
        sig, batch = key.split("/")
        lines.append(f"| {sig} | {batch} | " + " | ".join(
            f"{lat[key][f'{a}/per_feature']['best_round_p50_ms']:.3f} | {lat[key][f'{a}/fused']['best_round_p50_ms']:.3f}"
            for a in arms) + " |")
    lines += ["", "Student / TA p50 (serving_default): " + ", ".join(
        f"batch {k.split('/')[1]}: before {lat[k][f'{arms[0]}/per_feature']['p50_ms'] / lat[k][f'{arms[-1]}/per_feature']['p50_ms']:.2f}, "
        f"after {lat[k][f'{arms[0]}/fused']['p50_ms'] / lat[k][f'{arms[-1]}/fused']['p50_ms']:.2f}"
        for k in lat if k.startswith("serving_default")), ""]
    lines += ["Split of serving_default (process CPU ms per call; piece = difference of growing "
              "prefixes of the graph; `gather` = embedding gather + building x0, `model` = "
              "cross/MLP/logit; per-feature: both in `model`):", "",
              "| student | path | batch | overhead | parse | transform | lookups | gather | model | total "
              "| model share |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, v in split.items():
        arm, path, batch = key.split("/")
        s = v["split_cpu_ms"]
        tl = s.get("transform", s.get("transform+lookups", 0.0))
        lk, ga = s.get("lookups", None), s.get("gather", None)
        lines.append(f"| {arm} | {path} | {batch} | {s['overhead']:.3f} | {s['parse']:.3f} | {tl:.3f} | "
                     f"{'(in transform)' if lk is None else f'{lk:.3f}'} | "
                     f"{'(in model)' if ga is None else f'{ga:.3f}'} | {s['model']:.3f} | {s['total']:.3f} | "
                     f"{s['model'] / s['total']:.0%} |")
    if report.get("op_profile"):
        prof = report["op_profile"]
        keys = list(prof)
        kinds = sorted({t for v in prof.values() for t in v["by_type"]},
                       key=lambda t: -max(v["by_type"].get(t, 0.0) for v in prof.values()))
        lines += ["", "Per-op time inside the fused serving_default (`op_profile`: the SavedModel in a "
                  "TF1 Session with FULL_TRACE, mean us per call by op type; ops that run in parallel "
                  "overlap, so columns can exceed the wall time):", "",
                  "| op type | " + " | ".join(f"{k.split('/')[0]} @{k.split('/')[1]}" for k in keys) + " |",
                  "|---|" + "---|" * len(keys)]
        shown = [t for t in kinds if max(v["by_type"].get(t, 0.0) for v in prof.values()) >= 5.0]
        for t in shown:
            lines.append(f"| {t} | " + " | ".join(f"{prof[k]['by_type'].get(t, 0.0):.0f}" for k in keys) + " |")
        lines.append("| (other op types) | " + " | ".join(
            f"{sum(v for t, v in prof[k]['by_type'].items() if t not in shown):.0f}" for k in keys) + " |")
        lines.append("| **sum** | " + " | ".join(f"{prof[k]['op_sum_us']:.0f}" for k in keys) + " |")
        lines.append("| ops per call | " + " | ".join(f"{prof[k]['ops_per_call']:.0f}" for k in keys) + " |")
    lines += ["", "Equality (same eval examples, both exports): " + ", ".join(
        f"{a}: max |diff| serving_default {report['arms'][a]['max_abs_diff']['serving_default']:.1e}, "
        f"predict_raw {report['arms'][a]['max_abs_diff']['predict_raw']:.1e}" for a in arms), ""]
    lines += ["Students: " + ", ".join(
        f"{a} {report['arms'][a]['params']:,} params, {report['arms'][a]['madds_per_example']:,} madds/ex, "
        f"SavedModel {report['arms'][a]['per_feature_saved_model_bytes'] / 1e6:.2f} -> "
        f"{report['arms'][a]['fused_saved_model_bytes'] / 1e6:.2f} MB" for a in arms), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline-root", required=True,
                        help="a finished pipeline run's pipeline_root (e.g. <demo root>/pipeline)")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=15, help="calls per candidate per round")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "input_path.json"))
    args = parser.parse_args(argv)

    import tensorflow as tf

    from components.student_extractor import arm_specs, serving_parse_spec
    from matta_tf import export as E
    from matta_tf.extract import cost, extract

    t_start = time.time()
    load_start = os.getloadavg()
    model, tft_output, examples = load_pipeline(args.pipeline_root, args.examples)
    if len(examples) < 512:
        examples = [examples[i % len(examples)] for i in range(512)]
    parse_spec = serving_parse_spec(tft_output)
    arms = args.arms.split(",")
    specs = arm_specs(model.config, arms, 1)
    root = tempfile.mkdtemp(prefix="matta-bench-input-path-")
    report = {"command": "bin/matta-env python bench/bench_input_path.py " + " ".join(argv or sys.argv[1:]),
              "arms": {}, "settings": {**vars(args), "out": os.path.relpath(args.out, REPO)}}
    loaded, modules = {}, {}
    for arm in arms:
        standalone = extract(model, specs[arm], name=arm)
        info = {"spec": specs[arm].to_dict(), **cost(model.config, specs[arm])}
        for path in ("per_feature", "fused"):
            export_dir = os.path.join(root, f"{arm}_{path}")
            t0 = time.time()
            E.export_saved_model(standalone, export_dir, parse_spec,
                                 preprocess=tft_output.transform_features_layer(),
                                 tft_output=tft_output, input_path=path, check_examples=examples[:64])
            info[f"{path}_export_s"] = round(time.time() - t0, 1)
            info[f"{path}_saved_model_bytes"] = sum(
                os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(export_dir) for f in fs)
            loaded[(arm, path)] = tf.saved_model.load(export_dir)
        ref = E.RankerServingModule(standalone, parse_spec, tft_output.transform_features_layer())
        plan = E.make_plan(standalone, parse_spec, ref.preprocess, tft_output)
        modules[arm] = (ref, E.FusedRankerServingModule(standalone, plan, ref.parse_spec))
        # Equality of the two SavedModels on the eval examples (and their columns).
        x = tf.constant(examples)
        a = loaded[(arm, "per_feature")].signatures["serving_default"](examples=x)["logit"].numpy()
        b = loaded[(arm, "fused")].signatures["serving_default"](examples=x)["logit"].numpy()
        parsed = tf.io.parse_example(x, ref.parse_spec)
        raw = {k: tf.sparse.to_dense(v, default_value="" if v.dtype == tf.string else 0)[:, 0]
               if v.dense_shape[1] > 0 else tf.zeros([len(examples)], v.dtype)
               for k, v in parsed.items()}
        ra = loaded[(arm, "per_feature")].signatures["predict_raw"](**raw)["logit"].numpy()
        rb = loaded[(arm, "fused")].signatures["predict_raw"](**raw)["logit"].numpy()
        info["max_abs_diff"] = {"serving_default": float(np.max(np.abs(a - b))),
                                "predict_raw": float(np.max(np.abs(ra - rb))),
                                "rows": len(examples)}
        report["arms"][arm] = info
        print(f"{arm}: exported both ways; max |diff| serving_default "
              f"{info['max_abs_diff']['serving_default']:.2e}, predict_raw "
              f"{info['max_abs_diff']['predict_raw']:.2e}", flush=True)

    # ---- latency of the SavedModel signatures
    latency = {}
    for batch in (1, 64, 512):
        x = tf.constant(examples[:batch])
        cands = {f"{arm}/{path}": (lambda s=loaded[(arm, path)].signatures["serving_default"], x=x: s(examples=x))
                 for arm in arms for path in ("per_feature", "fused")}
        latency[f"serving_default/{batch}"] = timed(cands, args.rounds, args.calls)
        print(f"serving_default batch {batch}: " + ", ".join(
            f"{k} {v['p50_ms']:.3f}" for k, v in latency[f"serving_default/{batch}"].items()), flush=True)
    for batch in (64, 512):
        x = tf.constant(examples[:batch])
        parsed = tf.io.parse_example(x, modules[arms[0]][0].parse_spec)
        raw = {k: tf.sparse.to_dense(v, default_value="" if v.dtype == tf.string else 0)[:, 0]
               if v.dense_shape[1] > 0 else tf.zeros([batch], v.dtype) for k, v in parsed.items()}
        cands = {}
        for arm in arms:
            for path in ("per_feature", "fused"):
                sig = loaded[(arm, path)].signatures["predict_raw"]
                cands[f"{arm}/{path}"] = lambda s=sig, raw=raw: s(**raw)
            plan = modules[arm][1]._plan
            numeric = tf.stack([tf.cast(raw[c.name], tf.float32) for c in plan.numeric], 1)
            transformed = tft_output.transform_raw_features(
                {k: tf.sparse.from_dense(v[:, None]) for k, v in raw.items()})
            ids = tf.stack([tf.reshape(transformed[c.name], [-1]) for c in plan.categorical], 1)
            sig = loaded[(arm, "fused")].signatures["predict_ids"]
            cands[f"{arm}/fused predict_ids"] = lambda s=sig, n=numeric, i=ids: s(numeric=n, ids=i)
        latency[f"predict_raw/{batch}"] = timed(cands, args.rounds, args.calls)
        print(f"predict_raw/ids batch {batch}: " + ", ".join(
            f"{k} {v['p50_ms']:.3f}" for k, v in latency[f"predict_raw/{batch}"].items()), flush=True)
    report["latency"] = latency

    # ---- split of the serving_default cost into pieces
    split = {}
    for batch in (64, 512):
        x = tf.constant(examples[:batch])
        for arm in arms:
            ref, fused = modules[arm]
            for path, pieces in (("fused", fused_pieces(fused, x)), ("per_feature", per_feature_pieces(ref, x))):
                times = timed(pieces, args.rounds, args.calls)
                split[f"{arm}/{path}/{batch}"] = {"prefix_ms": times, "split_cpu_ms": split_from(times)}
                s = split[f"{arm}/{path}/{batch}"]["split_cpu_ms"]
                print(f"split {arm} {path} batch {batch}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()),
                      flush=True)
    report["split"] = split
    # ---- per-op profile of the fused serving_default (where the time goes inside the graph)
    report["op_profile"] = {}
    for arm in arms:
        for batch in (64, 512):
            prof = op_profile(os.path.join(root, f"{arm}_fused"), examples, batch)
            report["op_profile"][f"{arm}/{batch}"] = prof
            print(f"op profile {arm} batch {batch}: {prof['ops_per_call']:.0f} ops, "
                  f"{prof['op_sum_us']:.0f} us; " + ", ".join(
                      f"{k} {v:.0f}" for k, v in list(prof["by_type"].items())[:8]), flush=True)
    report["machine"] = {"platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
                         "python": platform.python_version(), "tensorflow": tf.__version__}
    report["wall_seconds"] = round(time.time() - t_start, 1)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    md = os.path.splitext(args.out)[0] + ".md"
    with open(md, "w") as f:
        f.write(markdown(report, arms))
    print(f"wrote {args.out} and {md} ({report['wall_seconds']:.0f}s)")
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
