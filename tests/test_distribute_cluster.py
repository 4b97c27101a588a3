"""MatTA training in real multi-process clusters on loopback (TF_CONFIG, free ports).

Every process a test starts belongs to a `LocalCluster` (own process group, killed in
`finally` / on exit, also when the test fails). The jobs are in tests/distribute_jobs.py.
"""
import matta_tf  # noqa: F401  (before TensorFlow)

# isort: split

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from matta_tf.distribute import LocalCluster

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distribute_jobs as jobs  # noqa: E402

JOBS = os.path.join(HERE, "distribute_jobs.py")
STEPS = 20
GLOBAL_BATCH = 64


@pytest.mark.slow
def test_two_multi_worker_mirrored_workers_equal_one_process(tmp_path):
    """2 worker processes of MultiWorkerMirroredStrategy (global batch 64 = 2 x 32, the
    dataset auto-sharded by DATA so worker k gets rows [32k, 32k+32) of every batch),
    20 steps each of Adam and of Shampoo, against one process with batch 64: every weight
    within 1e-5 (both workers hold identical weights). The model samples a Mix'n'Match size
    per step and 40% of the rows have no teacher, so the two halves of a batch hold
    different numbers of teacher rows - the global-batch loss scaling is what makes it equal.

    Shampoo runs with matrix_eps=1e-4: the all-reduced gradient sums the two halves in
    another order than one process (~1e-7 relative), and with the default 1e-6 the inverse
    4th roots of the nearly rank-deficient 20-step statistics amplified that to 1.9e-5 on
    one kernel (1.7e-6 at 1e-4; Adam: 4e-7)."""
    prefix = {i: str(tmp_path / f"worker{i}") for i in range(2)}
    with LocalCluster({"worker": 2}, log_dir=str(tmp_path / "logs")) as cluster:
        for i in range(2):
            cluster.start("worker", i, [sys.executable, JOBS, "mwms", prefix[i], str(STEPS),
                                        str(GLOBAL_BATCH)])
        # The one-process reference runs here meanwhile (no TF_CONFIG in this process).
        assert not os.environ.get("TF_CONFIG")
        jobs.mwms(str(tmp_path / "single"), STEPS, GLOBAL_BATCH)
        for i in range(2):
            assert cluster.wait("worker", i, timeout=240) == 0, cluster.log("worker", i)[-3000:]
    for name in jobs.OPTIMIZERS:
        single = np.load(str(tmp_path / f"single_{name}.npz"))
        info = json.loads((tmp_path / f"worker0_{name}.json").read_text())
        assert info["replicas"] == 2 and info["iterations"] == STEPS
        assert info.get("root_failures", 0) == 0
        single_info = json.loads((tmp_path / f"single_{name}.json").read_text())
        assert info["names"] == single_info["names"] and len(single.files) == len(info["names"])
        # fit reports the global batch's loss, not the sum over workers
        assert abs(info["loss"][0] - single_info["loss"][0]) < 1e-4, (info["loss"], single_info["loss"])
        workers = [np.load(f"{prefix[i]}_{name}.npz") for i in range(2)]
        for key in single.files:
            np.testing.assert_array_equal(workers[0][key], workers[1][key])
            diff = float(np.max(np.abs(workers[0][key] - single[key])))
            assert diff <= 1e-5, (name, info["names"][int(key.split("_")[1])], diff)
        moved = max(float(np.max(np.abs(workers[0][k] - single[k]))) for k in single.files)
        print(f"{name}: max |2 workers - 1 process| = {moved:.2e}")


@pytest.mark.slow
def test_mirrored_two_devices_equal_one_device(tmp_path):
    """MirroredStrategy over 2 logical CPU devices (set before TF starts: a subprocess)
    vs no strategy in the same process: Adam and Shampoo weights within 1e-5."""
    prefix = str(tmp_path / "run")
    with LocalCluster({"chief": 1}, log_dir=str(tmp_path / "logs")) as cluster:
        cluster.start("chief", 0, [sys.executable, JOBS, "mirrored", prefix, str(STEPS), str(GLOBAL_BATCH)],
                      env={"TF_CONFIG": None})
        assert cluster.wait("chief", 0, timeout=240) == 0, cluster.log("chief")[-3000:]
    for name in jobs.OPTIMIZERS:
        info = json.loads(open(f"{prefix}_mirrored_{name}.json").read())
        assert info["replicas"] == 2 and info["iterations"] == STEPS
        single, mirrored = (np.load(f"{prefix}_{kind}_{name}.npz") for kind in ("single", "mirrored"))
        for key in single.files:
            diff = float(np.max(np.abs(mirrored[key] - single[key])))
            assert diff <= 1e-5, (name, info["names"][int(key.split("_")[1])], diff)


@pytest.mark.slow
def test_parameter_servers_shard_tables_train_and_export_unsharded_students(tmp_path):
    """Coordinator + 2 workers + 2 parameter servers, each its own process: every
    embedding table is split over both servers (and Adam's / Shampoo's slots sit with
    their shard); `fit` with Adam and with Shampoo lowers the eval loss; the checkpoint
    restores into an ordinary unsharded MatTARanker whose extracted Student, exported as
    a SavedModel, gives the coordinator's in-process Student logits to 1e-5."""
    from matta_tf.datasets import table_to_dataset
    from matta_tf.export import export_saved_model, make_examples
    from matta_tf.extract import dummy_features, extract
    from matta_tf.model import MatTARanker

    out = tmp_path / "ps"
    with LocalCluster({"chief": 1, "worker": 2, "ps": 2}, log_dir=str(tmp_path / "logs")) as cluster:
        cluster.start_servers()
        cluster.start("chief", 0, [sys.executable, JOBS, "ps_coordinator", str(out), str(STEPS)])
        assert cluster.wait("chief", 0, timeout=240) == 0, cluster.log("chief")[-3000:]

    probe_table = jobs.probe_rows()
    config = jobs.ranker_config()
    columns = {f.name: probe_table.column(f.name).to_pylist()
               for f in (*config.features.numeric, *config.features.categorical)}
    examples = tf.constant(make_examples(columns))
    for name in jobs.OPTIMIZERS:
        info = json.loads((out / name / "info.json").read_text())
        assert info["iterations"] == STEPS
        tables = {k: v for k, v in info["sharding"].items() if "embedding_" in k}
        assert len(tables) == len(config.features.categorical)
        for table_name, shards in tables.items():
            devices = sorted(device for device, _ in shards)
            assert devices == ["/job:ps/replica:0/task:0/device:CPU:0",
                               "/job:ps/replica:0/task:1/device:CPU:0"], (table_name, shards)
        dense = {k: v for k, v in info["sharding"].items() if "embedding_" not in k}
        assert dense and all(len(shards) == 1 for shards in dense.values())  # kept whole
        # Slots of a sharded table are sharded like it (Shampoo's per-shard scalar
        # "non-finite this step" flags aside).
        slots = [(n, d) for n, d in info["optimizer_variables"]
                 if "embedding_" in n and "nonfinite/" not in n]
        assert len(slots) == 2 * len(tables), slots  # Adam m, v / Shampoo momentum, graft
        assert all(len(d) == 2 and len(set(d)) == 2 for _, d in slots), slots
        assert info["after"]["loss"] < info["before"]["loss"] - 0.02, (name, info["before"], info["after"])
        assert info["after"]["student_logloss"] < info["before"]["student_logloss"]
        if name == "shampoo":
            assert info["root_failures"] == 0 and info["skipped_nonfinite"] == 0

        # The Trainer's path: an ordinary model, restored from the sharded checkpoint.
        model = MatTARanker(config)
        model(dummy_features(config.features, 2))
        status = tf.train.Checkpoint(model=model).read(info["checkpoint"])
        status.assert_existing_objects_matched().expect_partial()  # the optimizer's state is unused
        assert all("part_" not in v.name for v in model.variables)
        student = extract(model, config.student, name=f"student_{name}")
        saved = tf.saved_model.load(export_saved_model(student, str(tmp_path / f"export_{name}"),
                                                       config.features))
        served = saved.signatures["serving_default"](examples=examples)["logit"].numpy()
        in_process = np.load(str(out / name / "student_logits.npy"))
        assert served.shape == in_process.shape == (len(probe_table),)
        np.testing.assert_allclose(served, in_process, rtol=0, atol=1e-5)
        features = next(iter(table_to_dataset(probe_table, config.features, batch_size=64)))[0]
        np.testing.assert_allclose(model.submodel(config.student, features).numpy(), in_process,
                                   rtol=0, atol=1e-5)
