"""Step time of Shampoo vs Adam at batch 1024 (precondition_frequency 1, 10, 100).

    bin/matta-env python bench/bench_shampoo.py            # MatTA ranker at TA size
    bin/matta-env python bench/bench_shampoo.py --model standin   # DCN-shaped stand-in
    bin/matta-env python bench/bench_shampoo.py --profile  # + where Shampoo's time goes

Every optimizer trains its own copy of the same model with the same batches through the
model's real `train_step` (`model.make_train_function()`, i.e. what `fit` runs). The
copies are timed in interleaved rounds (round r runs `--chunk` steps of each optimizer in
turn) so load from other processes on this shared machine hits all of them alike; the
reported time per step is the total over all rounds divided by the steps, i.e. it includes
exactly `steps / frequency` root recomputations (preconditioning starts at step 1). The
table is printed and written as JSON to bench/results/shampoo_step_time.json.

`--profile` additionally times, on the same model's variables and real gradients, the
pieces of one Shampoo update in isolation: the statistics matmuls, the inverse roots of all
factors, and the preconditioning matmuls.
"""
from __future__ import annotations

import matta_tf  # noqa: F401  (before TensorFlow)

# isort: split

import argparse
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf

from matta_tf.optimizers import Shampoo
from matta_tf.optimizers import shampoo_math as sm

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "shampoo_step_time.json")


# ------------------------------------------------------------------------------- models
def matta_ranker(batch_size: int, seed: int):
    """`MatTARanker` from the default config (TA size) and a synthetic-log dataset."""
    from matta_tf.config import RankerConfig
    from matta_tf.datasets import generate_click_logs, table_to_dataset
    from matta_tf.model import MatTARanker

    path = os.path.join(os.path.dirname(matta_tf.__file__), "configs", "default_ranker.yaml")
    config = RankerConfig.from_yaml(path)
    table = generate_click_logs(batch_size * 8, seed=seed)
    dataset = table_to_dataset(table, config.features, batch_size=batch_size, repeat=True)

    def build():
        return MatTARanker(config), None  # compiled with its own MatTA loss

    return build, dataset, f"MatTARanker(default_ranker.yaml, TA {config.ta})"


def dcn_standin(batch_size: int, seed: int):
    """A DCN-v2-shaped stand-in of the TA: 13 numeric + 26 embedded categoricals (dim 16,
    Criteo-like vocabularies), 3 low-rank cross layers (rank 32) on x0 = 429, MLP
    256-128-64, logit head."""
    vocab = [2920, 1166, 200000, 100000, 610, 48, 25034, 1266, 6, 186290, 11366, 160000,
             6388, 54, 29984, 120000, 20, 11304, 4346, 8, 140000, 36, 30, 57306, 210, 28486]
    rng = np.random.default_rng(seed)
    n = batch_size * 8
    numeric = rng.standard_normal((n, 13)).astype(np.float32)
    ids = np.stack([rng.zipf(1.3, n) % v for v in vocab], axis=1).astype(np.int64)
    labels = (rng.random(n) < 0.25).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(((numeric, ids), labels)).repeat().batch(
        batch_size).prefetch(2)

    class LowRankCross(tf.keras.layers.Layer):
        def build(self, shape):
            d = int(shape[0][-1])
            self.u = self.add_weight("kernel_u", shape=(d, 32))
            self.v = self.add_weight("kernel_v", shape=(32, d))
            self.b = self.add_weight("bias", shape=(d,), initializer="zeros")

        def call(self, inputs):
            x0, x = inputs
            return x0 * (tf.matmul(tf.matmul(x, self.u), self.v) + self.b) + x

    def build():
        num_in = tf.keras.Input((13,))
        ids_in = tf.keras.Input((26,), dtype=tf.int64)
        embedded = [tf.keras.layers.Embedding(v, 16)(ids_in[:, i]) for i, v in enumerate(vocab)]
        x0 = tf.keras.layers.Concatenate()([num_in, *embedded])
        x = x0
        for _ in range(3):
            x = LowRankCross()([x0, x])
        for width in (256, 128, 64):
            x = tf.keras.layers.Dense(width, activation="relu")(x)
        model = tf.keras.Model([num_in, ids_in], tf.keras.layers.Dense(1)(x))
        return model, tf.keras.losses.BinaryCrossentropy(from_logits=True)

    return build, dataset, "DCN stand-in (26 x dim-16 embeddings, 3 low-rank crosses, MLP)"


# ------------------------------------------------------------------------------- timing
def make_trainer(build, optimizer, dataset):
    tf.keras.utils.set_random_seed(0)
    model, loss = build()
    if loss is None:
        model.compile(optimizer=optimizer)
    else:
        model.compile(optimizer=optimizer, loss=loss)
    train_function = model.make_train_function()
    iterator = iter(dataset)
    return model, train_function, iterator


def run_steps(trainer, steps: int) -> float:
    _, train_function, iterator = trainer
    start = time.perf_counter()
    for _ in range(steps):
        logs = train_function(iterator)
    # the step's outputs are ready once the loss is: wait for it before stopping the clock
    float(np.asarray(logs["loss"]))
    return time.perf_counter() - start


def profile_pieces(model, optimizer: Shampoo, dataset, repeats: int = 5) -> dict:
    """Time the pieces of one Shampoo update on the model's real gradients."""
    features, labels = next(iter(dataset))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        out = model(features, training=True)
        logits = out["ta"] if isinstance(out, dict) else tf.reshape(out, [-1])
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.reshape(tf.cast(labels, tf.float32), [-1]), logits=logits))
    grads = [tf.convert_to_tensor(g) if not isinstance(g, tf.IndexedSlices) else g
             for g in tape.gradient(loss, variables)]
    cfg = optimizer.config
    dense = [(g, v, optimizer.preconditioner_layout(v)) for g, v in zip(grads, variables,
                                                                         strict=True)
             if not isinstance(g, tf.IndexedSlices) and optimizer.preconditioner_layout(v)
             .is_kronecker]

    @tf.function
    def statistics():
        out = []
        for g, _, layout in dense:
            blocks = sm.to_blocks(tf.reshape(g, layout.matrix_shape), layout)
            for dim in (0, 1):
                if layout.preconditioned[dim]:
                    out.append(sm.update_statistics(tf.zeros(layout.statistics_shape(dim)),
                                                    blocks, cfg.beta2, dim))
        return out

    stats = statistics()

    @tf.function
    def roots():
        return [sm.inverse_pth_root(s, 4, cfg.matrix_eps, cfg.inverse_root)[0] for s in stats]

    @tf.function
    def precondition():
        out = []
        for g, _, layout in dense:
            blocks = sm.to_blocks(tf.reshape(g, layout.matrix_shape), layout)
            left = tf.eye(layout.block_shape[0], batch_shape=[layout.total_blocks]) if \
                layout.preconditioned[0] else None
            right = tf.eye(layout.block_shape[1], batch_shape=[layout.total_blocks]) if \
                layout.preconditioned[1] else None
            d = sm.precondition_blocks(blocks, left, right)
            d = sm.graft_blocks(d, tf.reshape(g, layout.matrix_shape), layout)
            out.append(sm.from_blocks(d, layout))
        return out

    timings = {}
    for name, fn in (("statistics_matmuls", statistics), ("inverse_roots_all_factors", roots),
                     ("precondition_and_graft", precondition)):
        fn()  # trace
        start = time.perf_counter()
        for _ in range(repeats):
            result = fn()
        [np.asarray(r) for r in result]
        timings[name] = (time.perf_counter() - start) / repeats
    timings["kronecker_variables"] = [
        {"name": v.name, "shape": list(v.shape), "blocks": list(layout.num_blocks),
         "block_shape": list(layout.block_shape)} for _, v, layout in dense]
    return timings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["auto", "matta", "standin"], default="auto")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--frequencies", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--steps", type=int, default=200,
                        help="timed steps per optimizer (a multiple of every frequency)")
    parser.add_argument("--chunk", type=int, default=20, help="steps per interleaved round")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args(argv)
    if args.steps % args.chunk:
        parser.error("--steps must be a multiple of --chunk")

    model_used = args.model
    if args.model in ("auto", "matta"):
        try:
            build, dataset, description = matta_ranker(args.batch_size, seed=0)
            model_used = "matta"
        except ImportError as err:
            if args.model == "matta":
                raise
            print(f"MatTARanker unavailable ({err}); using the DCN stand-in")
            model_used = "standin"
    if model_used == "standin":
        build, dataset, description = dcn_standin(args.batch_size, seed=0)

    # "adam" is tf_keras Adam: on IndexedSlices it still decays m and v of the *whole*
    # table every step (dense assign over all rows). "diag_lazy" is Shampoo with no
    # Kronecker factor anywhere (max_preconditioner_dim=1): Adam-grafted diagonal steps,
    # touched rows only, so "x diag" isolates the cost of the Kronecker preconditioning.
    optimizers = {"adam": lambda: tf.keras.optimizers.Adam(1e-3),
                  "diag_lazy": lambda: Shampoo(1e-3, max_preconditioner_dim=1)}
    for f in args.frequencies:
        optimizers[f"shampoo_f{f}"] = lambda f=f: Shampoo(
            1e-3, precondition_frequency=f, start_preconditioning_step=1,
            block_size=args.block_size)
    trainers = {name: make_trainer(build, make(), dataset) for name, make in optimizers.items()}
    for trainer in trainers.values():
        run_steps(trainer, args.warmup)  # trace + build slots + first roots
    totals = dict.fromkeys(trainers, 0.0)
    for _ in range(args.steps // args.chunk):
        for name, trainer in trainers.items():
            totals[name] += run_steps(trainer, args.chunk)
    per_step = {name: total / args.steps for name, total in totals.items()}

    model = trainers["adam"][0]
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    rows = []
    for name, seconds in per_step.items():
        rows.append({"optimizer": name, "ms_per_step": 1000 * seconds,
                     "ratio_to_adam": seconds / per_step["adam"],
                     "ratio_to_diag_lazy": seconds / per_step["diag_lazy"]})
    print(f"\nModel: {description}; {params:,} parameters; batch {args.batch_size}; "
          f"{args.steps} timed steps per optimizer; {os.cpu_count()} CPUs")
    print(f"{'optimizer':<14}{'ms/step':>10}{'x Adam':>9}{'x diag':>9}")
    for row in rows:
        print(f"{row['optimizer']:<14}{row['ms_per_step']:>10.1f}{row['ratio_to_adam']:>9.3f}"
              f"{row['ratio_to_diag_lazy']:>9.3f}")

    result = {"model": model_used, "description": description, "parameters": params,
              "batch_size": args.batch_size, "timed_steps": args.steps,
              "block_size": args.block_size, "cpus": os.cpu_count(),
              "tensorflow": tf.__version__, "python": platform.python_version(),
              "results": rows}
    if args.profile:
        name = f"shampoo_f{args.frequencies[0]}"
        shampoo_model, _, _ = trainers[name]
        pieces = profile_pieces(shampoo_model, shampoo_model.optimizer, dataset)
        result["profile"] = pieces
        print("\nShampoo pieces on this model's real gradients (one update, all variables):")
        for key in ("statistics_matmuls", "inverse_roots_all_factors",
                    "precondition_and_graft"):
            print(f"  {key:<28}{1000 * pieces[key]:>8.1f} ms")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
