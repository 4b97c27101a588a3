"""matta's labels-only Student vs the plain TFRS reference, with ablations that isolate
where they differ: `python -m bench.parity --data movielens --seeds 3`.

Arms (same data, batches in the same order per seed, steps, batch size and Adam):
  matta_alone      the bench's `alone` arm: MatTARanker(student == ta, labels only), extracted
  matta_alone_headfix  matta_alone with the logit head's initial kernel rescaled to the
                   Glorot scale of the Student's real head input (its last MLP width) instead
                   of the nested head's max(x0 width, widths) rows - the proposed model fix
  matta_standalone StandaloneRanker(student) compiled with plain BCE + Adam (matta layers,
                   head sized exactly, no MatTA train_step; network seeded per seed)
  tfrs             bench/tfrs_reference.py (tfrs Cross + Dense + StringLookup/Embedding)
  tfrs_wide_head   tfrs with its logit layer initialised like matta's nested head
                   (Glorot for max(x0 width, MLP widths) inputs)
No teacher is fitted. Prints per-seed AUC / log-loss and the paired mean differences.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

import matta_tf  # noqa: F401
from bench import data as bench_data
from bench import quality, tfrs_reference
from matta_tf.config import RankerConfig

ARMS = ("matta_alone", "matta_alone_headfix", "matta_standalone", "tfrs", "tfrs_wide_head")


def run(data, base: RankerConfig, settings: quality.TrainSettings, seeds: int, arms, log=print,
        seed_offset: int = 0) -> dict:
    import tensorflow as tf

    from matta_tf.datasets import table_to_dataset
    from matta_tf.model import RankerNetwork, StandaloneRanker

    student = base.student
    eval_batches = list(table_to_dataset(data.eval, data.features, batch_size=4096))
    labels = np.concatenate([y.numpy() for _, y in eval_batches])
    head_rows = max((student.x0_width(data.features), *student.mlp_widths))
    out = {arm: [] for arm in arms}
    for seed in range(seed_offset, seed_offset + seeds):
        def ds(seed=seed):
            tf.random.set_seed(seed)  # the shuffle order depends on the global seed too
            return table_to_dataset(data.train, data.features, batch_size=settings.batch_size,
                                    shuffle_seed=seed, repeat=True)

        for arm in arms:
            start = time.perf_counter()
            if arm in ("matta_alone", "matta_alone_headfix"):
                config = quality.arm_config(base, student, student, quality.ALONE, seed, settings)
                rescale = None
                if arm == "matta_alone_headfix":
                    real = student.mlp_widths[-1] if student.mlp_widths else student.x0_width(data.features)
                    rescale = ((head_rows + 1) / (real + 1)) ** 0.5  # Glorot limit for `real` inputs
                model, _ = quality.train(config, ds(), "adam", settings, head_init_scale=rescale)
                m = quality.eval_spec(model, student, eval_batches, labels)
            elif arm == "matta_standalone":
                tf.keras.utils.set_random_seed(seed)
                model = StandaloneRanker(data.features, student)
                # StandaloneRanker builds its network with seed 0; seed it like the other arms.
                model.network = RankerNetwork(data.features, student, nested_head=False, seed=seed,
                                              name="network")
                model.compile(optimizer=tf.keras.optimizers.Adam(settings.adam_lr),
                              loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
                model.fit(ds().map(lambda f, y: ({k: v for k, v in f.items() if k != "teacher_logit"}, y)),
                          steps_per_epoch=settings.steps, epochs=1, verbose=0)
                logits = np.concatenate([model(f, training=False).numpy() for f, _ in eval_batches])
                m = quality.binary_metrics(logits, labels)
            else:
                kwargs = {"head_fan_in": head_rows} if arm == "tfrs_wide_head" else {}
                m, _, _ = tfrs_reference.train_and_eval(data.features, student, ds(), eval_batches, labels,
                                                        settings.steps, settings.adam_lr, seed, **kwargs)
            out[arm].append(m)
            log(f"  seed {seed} {arm:17s} auc {m['auc']:.4f} logloss {m['logloss']:.4f} "
                f"({time.perf_counter() - start:.1f}s)")
    summary = {}
    for arm in arms:
        aucs = [m["auc"] for m in out[arm]]
        lls = [m["logloss"] for m in out[arm]]
        summary[arm] = {"auc": statistics.fmean(aucs), "auc_std": statistics.stdev(aucs) if len(aucs) > 1 else 0.0,
                        "logloss": statistics.fmean(lls)}
        if "tfrs" in out and arm != "tfrs":
            diffs = [a["auc"] - t["auc"] for a, t in zip(out[arm], out["tfrs"], strict=True)]
            summary[arm]["auc_minus_tfrs"] = statistics.fmean(diffs)
            summary[arm]["auc_minus_tfrs_per_seed"] = diffs
    return {"runs": out, "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="movielens")
    parser.add_argument("--config", default=None, help="ranker config (default: the bench's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-rows", type=int, default=200_000, help="generated data only")
    parser.add_argument("--eval-rows", type=int, default=50_000, help="generated data only")
    parser.add_argument("--min-count", type=int, default=bench_data.DEFAULT_MIN_COUNT)
    parser.add_argument("--max-vocabulary", type=int, default=None)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)

    from bench.run import DEFAULT_CONFIG

    opts = bench_data.DataOptions(fit_teacher=False, min_count=args.min_count, max_vocabulary=args.max_vocabulary)
    data = bench_data.load(args.data, args.train_rows, args.eval_rows, opts)
    base = RankerConfig.from_yaml(args.config or DEFAULT_CONFIG)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    settings = quality.TrainSettings(steps=args.steps, batch_size=args.batch_size,
                                     warmup_steps=max(1, args.steps // 4))
    print(f"parity: {args.data}: {data.train.num_rows} train / {data.eval.num_rows} eval rows, "
          f"{args.steps} steps x {args.batch_size}, student {base.student.to_dict()}", flush=True)
    result = run(data, base, settings, args.seeds, args.arms.split(","), log=lambda m: print(m, flush=True),
                 seed_offset=args.seed_offset)
    for arm, s in result["summary"].items():
        extra = f", matta - tfrs {s['auc_minus_tfrs']:+.4f}" if "auc_minus_tfrs" in s else ""
        print(f"{arm:17s} auc {s['auc']:.4f} ± {s['auc_std']:.4f} logloss {s['logloss']:.4f}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python -m bench.parity " + " ".join(sys.argv[1:] if argv is None else argv),
                       **result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
