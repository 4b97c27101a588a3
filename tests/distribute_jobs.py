"""Training jobs that tests/test_distribute.py runs in cluster processes (and one process).

    python tests/distribute_jobs.py mwms OUT_PREFIX STEPS GLOBAL_BATCH
        MatTARanker (Mix'n'Match sampled, 40% of rows without a teacher) trained with Adam,
        then Shampoo, under the strategy TF_CONFIG calls for (multi_worker_mirrored with a
        cluster, none without); writes OUT_PREFIX_<optimizer>.npz (weights) and .json.
    python tests/distribute_jobs.py mirrored OUT_PREFIX STEPS GLOBAL_BATCH
        The same under MirroredStrategy on 2 logical CPUs of one process
        (OUT_PREFIX_mirrored_*), then without a strategy (OUT_PREFIX_single_*).
    python tests/distribute_jobs.py trainer FN_ARGS_JSON
        The TFX Trainer's run_fn (components/trainer_module.py) with the fn_args in the JSON
        file; every task of a cluster runs it (as on Vertex AI), TF_CONFIG says which.
    python tests/distribute_jobs.py ps_coordinator OUT_DIR STEPS
        The coordinator of a parameter-server cluster (TF_CONFIG task chief): embedding
        tables split over the ps tasks; per optimizer the eval loss before / after `fit`, the
        sharding, a model checkpoint and the Student's logits on probe rows.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matta_tf  # noqa: F401,E402

# isort: split

import numpy as np  # noqa: E402

LOGS_KW = dict(num_numeric=3, num_categorical=4, cardinalities=(12, 30, 60, 9), num_crosses=3,
               teacher_coverage=0.6)
SHAMPOO_KW = dict(block_size=16, precondition_frequency=5, start_preconditioning_step=5,
                  matrix_eps=1e-4)
OPTIMIZERS = ("adam", "shampoo")


def logs_config():
    from matta_tf.datasets import SyntheticLogConfig

    return SyntheticLogConfig(**LOGS_KW)


def features():
    from matta_tf.datasets import default_feature_spec

    return default_feature_spec(logs_config())


def table(rows: int, seed: int):
    from matta_tf.datasets import generate_click_logs

    return generate_click_logs(rows, seed=seed, config=logs_config())


def ranker_config():
    from matta_tf.config import LossWeights, RankerConfig, SubmodelSpec

    return RankerConfig(features=features(), student=SubmodelSpec(4, 1, (), (16,)),
                        ta=SubmodelSpec(8, 2, (), (32, 16)), warmup_steps=5,
                        mixnmatch_train_specs=2, loss_weights=LossWeights(mixnmatch=0.5))


def make_optimizer(name: str):
    import tensorflow as tf

    from matta_tf.optimizers import Shampoo

    return tf.keras.optimizers.Adam(1e-2) if name == "adam" else Shampoo(1e-2, **SHAMPOO_KW)


def build(strategy, name: str, steps_per_execution: int = 1):
    from matta_tf.extract import dummy_features
    from matta_tf.model import MatTARanker

    with strategy.scope():
        model = MatTARanker(ranker_config())
        model(dummy_features(model.config.features, 2))
        model.compile(optimizer=make_optimizer(name), steps_per_execution=steps_per_execution)
    return model


def mwms(out_prefix: str, steps: int, global_batch: int, distribution: dict | None = None):
    """Same program for every worker and for the one-process reference."""
    from matta_tf.datasets import table_to_dataset
    from matta_tf.distribute import DistributionConfig, distributed_dataset, make_strategy

    dist = DistributionConfig.from_dict(distribution or {
        "strategy": "multi_worker_mirrored" if os.environ.get("TF_CONFIG") else "none"})
    strategy = make_strategy(dist)
    data = table(steps * global_batch, seed=3)
    for name in OPTIMIZERS:
        model = build(strategy, name)
        ds = distributed_dataset(dist, lambda: table_to_dataset(data, features(), global_batch))
        history = model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0).history
        np.savez(f"{out_prefix}_{name}.npz", *[w.numpy() for w in model.weights])
        info = {"replicas": strategy.num_replicas_in_sync, "loss": history["loss"],
                "iterations": int(model.optimizer.iterations.numpy()),
                "names": [w.name for w in model.weights]}
        if name == "shampoo":
            info["root_failures"] = int(model.optimizer.root_failures.numpy())
        with open(f"{out_prefix}_{name}.json", "w") as f:
            json.dump(info, f)


def mirrored(out_prefix: str, steps: int, global_batch: int):
    """MirroredStrategy over 2 logical CPU devices of this process, then no strategy."""
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    mwms(f"{out_prefix}_mirrored", steps, global_batch,
         {"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1"]})
    mwms(f"{out_prefix}_single", steps, global_batch, {"strategy": "none"})


def probe_rows(n: int = 64):
    return table(n, seed=11)


def _placement(variable):
    """(name, [device per shard]) of a variable or ShardedVariable."""
    shards = getattr(variable, "variables", None)
    if isinstance(shards, (list, tuple)) and shards:
        return shards[0].name, [v.device for v in shards]
    return variable.name, [variable.device]


def ps_coordinator(out_dir: str, steps: int):
    import tensorflow as tf

    from matta_tf.datasets import table_to_dataset
    from matta_tf.distribute import DistributionConfig, distributed_dataset, make_strategy, sharding

    dist = DistributionConfig.from_dict({"strategy": "parameter_server", "min_shard_bytes": 1})
    strategy = make_strategy(dist)
    train_data, eval_data = table(4096, seed=3), table(1024, seed=7)
    probe = next(iter(table_to_dataset(probe_rows(), features(), batch_size=64)))[0]
    for name in OPTIMIZERS:
        model = build(strategy, name)
        train = distributed_dataset(dist, lambda: table_to_dataset(
            train_data, features(), batch_size=64, shuffle_seed=0, repeat=True))
        evaluation = distributed_dataset(dist, lambda: table_to_dataset(
            eval_data, features(), batch_size=256, repeat=True))
        before = model.evaluate(evaluation, steps=4, return_dict=True, verbose=0)
        model.fit(train, epochs=1, steps_per_epoch=steps, verbose=0)
        after = model.evaluate(evaluation, steps=4, return_dict=True, verbose=0)
        path = tf.train.Checkpoint(model=model).write(os.path.join(out_dir, name, "ckpt"))
        student = model.submodel(model.config.student, probe).numpy()
        np.save(os.path.join(out_dir, name, "student_logits.npy"), student)
        info = {"before": before, "after": after, "checkpoint": path,
                "iterations": int(model.optimizer.iterations.numpy()),
                "sharding": sharding(model),
                "optimizer_variables": [_placement(v) for v in model.optimizer.variables]}
        if name == "shampoo":
            info["root_failures"] = int(model.optimizer.root_failures.numpy())
            info["skipped_nonfinite"] = int(model.optimizer.skipped_nonfinite.numpy())
        with open(os.path.join(out_dir, name, "info.json"), "w") as f:
            json.dump(info, f, default=float)


def trainer(fn_args_path: str):
    import types

    from components.trainer_module import run_fn

    with open(fn_args_path) as f:
        run_fn(types.SimpleNamespace(**json.load(f)))


if __name__ == "__main__":
    job, *args = sys.argv[1:]
    if job == "mwms":
        mwms(args[0], int(args[1]), int(args[2]))
    elif job == "mirrored":
        mirrored(args[0], int(args[1]), int(args[2]))
    elif job == "trainer":
        trainer(args[0])
    elif job == "ps_coordinator":
        ps_coordinator(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown job {job!r}")
