"""The TFX Trainer's run_fn honours `custom_config["distribution"]` (the pipeline config's
`distribution` section): one process, 2 MultiWorkerMirrored workers, and a parameter-server
cluster in which every task runs run_fn (as Vertex AI runs the Trainer in every worker
pool). The input is real TFT output made by the pipeline's own preprocessing_fn."""
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
JOBS = os.path.join(HERE, "distribute_jobs.py")
NUMERIC = ["I1", "I2", "I3"]
CATEGORICAL = ["C1", "C2", "C3"]
STEPS = 20
BATCH = 64


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    """TFT transform graph + gzipped transformed train/eval examples (40% without teacher)."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam

    from components.transform_module import preprocessing_fn
    from matta_tf.datasets import SyntheticLogConfig, generate_click_logs

    logs = SyntheticLogConfig(num_numeric=3, num_categorical=3, cardinalities=(15, 40, 80),
                              num_crosses=2, teacher_coverage=0.6)
    root = tmp_path_factory.mktemp("transformed")
    config = {"numeric": NUMERIC, "categorical": CATEGORICAL, "label": "label",
              "oov_buckets": 2, "top_k": None, "frequency_threshold": 1}
    spec = {"label": tf.io.VarLenFeature(tf.int64), "teacher_logit": tf.io.VarLenFeature(tf.float32),
            "has_teacher": tf.io.VarLenFeature(tf.int64)}
    spec.update({n: tf.io.VarLenFeature(tf.float32) for n in NUMERIC})
    spec.update({n: tf.io.VarLenFeature(tf.string) for n in CATEGORICAL})
    metadata = tft.DatasetMetadata.from_feature_spec(spec)

    def rows(n, seed):
        table = generate_click_logs(n, seed=seed, config=logs).to_pylist()
        out = []
        for r in table:
            teacher = r["teacher_logit"]
            row = {"label": [int(r["label"])],
                   "teacher_logit": [] if teacher is None else [float(teacher)],
                   "has_teacher": [int(teacher is not None)]}
            row.update({n: [] if r[n] is None else [float(r[n])] for n in NUMERIC})
            row.update({n: [] if r[n] is None else [r[n].encode()] for n in CATEGORICAL})
            out.append(row)
        return out

    with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(root / "tmp")):
        train = pipeline | "train" >> beam.Create(rows(2048, 1))
        evaluation = pipeline | "eval" >> beam.Create(rows(512, 2))
        (train_out, train_meta), transform_fn = ((train, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda x: preprocessing_fn(x, config)))
        eval_out, _ = (((evaluation, metadata), transform_fn) | tft_beam.TransformDataset())
        coder = tft.coders.ExampleProtoCoder(train_meta.schema)
        for name, data in (("train", train_out), ("eval", eval_out)):
            _ = (data | f"encode_{name}" >> beam.Map(coder.encode)
                 | f"write_{name}" >> beam.io.WriteToTFRecord(str(root / name / "part"), file_name_suffix=".gz"))
        _ = transform_fn | tft_beam.WriteTransformFn(str(root / "tft"))
    return {"root": root, "transform_output": str(root / "tft"), "transform_config": config,
            "train_files": [str(root / "train" / "*")], "eval_files": [str(root / "eval" / "*")]}


def fn_args(transformed, out, distribution=None, optimizer="adam", base_model=None) -> dict:
    return {"custom_config": {"transform": transformed["transform_config"],
                              "ranker": {"student": {"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [8]},
                                         "warmup_steps": 5, "mixnmatch_train_specs": 1,
                                         "loss_weights": {"mixnmatch": 0.5}},
                              "batch_size": BATCH, "epochs": 1, "optimizer": optimizer,
                              "learning_rate": 0.01, "distribution": distribution},
            "transform_output": transformed["transform_output"],
            "train_files": transformed["train_files"], "eval_files": transformed["eval_files"],
            "train_steps": STEPS, "eval_steps": 3, "base_model": base_model,
            "model_run_dir": str(out / "logs"), "serving_model_dir": str(out / "model")}


def weights(model_dir) -> dict:
    from components.trainer_module import load_trained

    model, _ = load_trained(model_dir)
    return {v.name: v.numpy() for v in model.variables}


@pytest.fixture(scope="module")
def one_process(transformed, tmp_path_factory):
    """run_fn without a strategy (`distribution` absent), in a fresh process like the
    workers: in this pytest process, TF's global random state left by earlier tests
    changed the data order (seen as a 0.08 loss difference in a full `make test`)."""
    import subprocess

    out = tmp_path_factory.mktemp("one_process")
    args = _write_args(out / "args.json", fn_args(transformed, out))
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, JOBS, "trainer", args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model"


def _write_args(path, args) -> str:
    path.write_text(json.dumps(args))
    return str(path)


@pytest.mark.slow
def test_trainer_multi_worker_mirrored_equals_one_process(transformed, one_process, tmp_path):
    """Both workers run run_fn with the same fn_args; the chief (worker 0: the cluster has
    no chief task) writes the model, which equals the one-process Trainer's within 1e-5."""
    args = _write_args(tmp_path / "args.json", fn_args(
        transformed, tmp_path, {"strategy": "multi_worker_mirrored"}))
    with LocalCluster({"worker": 2}, log_dir=str(tmp_path / "cluster")) as cluster:
        for i in range(2):
            cluster.start("worker", i, [sys.executable, JOBS, "trainer", args])
        for i in range(2):
            assert cluster.wait("worker", i, timeout=240) == 0, cluster.log("worker", i)[-3000:]
    info = json.loads((tmp_path / "model" / "train_info.json").read_text())
    assert info["distribution"] == {"strategy": "multi_worker_mirrored", "replicas_in_sync": 2,
                                    "cluster": {"worker": 2}}
    single = json.loads((one_process / "train_info.json").read_text())
    assert abs(info["final"]["loss"] - single["final"]["loss"]) < 1e-4
    assert os.listdir(tmp_path / "logs")  # the chief's TensorBoard logs
    want, got = weights(one_process), weights(tmp_path / "model")
    assert want.keys() == got.keys()
    for name in want:
        assert np.max(np.abs(got[name] - want[name])) <= 1e-5, name


@pytest.mark.slow
def test_trainer_parameter_servers_every_task_runs_run_fn(transformed, one_process, tmp_path):
    """Coordinator, 2 workers and 2 ps all run run_fn (the worker/ps tasks only serve).
    Shampoo; the previous model warm-starts the sharded tables (remapped through the
    vocabularies); the saved model loads as an ordinary MatTARanker."""
    args = _write_args(tmp_path / "args.json", fn_args(
        transformed, tmp_path, {"strategy": "parameter_server", "min_shard_bytes": 1},
        optimizer="shampoo", base_model=str(one_process)))
    with LocalCluster({"chief": 1, "worker": 2, "ps": 2}, log_dir=str(tmp_path / "cluster")) as cluster:
        for kind, n in (("ps", 2), ("worker", 2), ("chief", 1)):
            for i in range(n):
                cluster.start(kind, i, [sys.executable, JOBS, "trainer", args])
        assert cluster.wait("chief", 0, timeout=240) == 0, cluster.log("chief")[-3000:]
        log = cluster.log("ps", 0)
    assert "ps:0 serving" in log
    info = json.loads((tmp_path / "model" / "train_info.json").read_text())
    assert info["distribution"]["strategy"] == "parameter_server"
    assert info["distribution"]["cluster"] == {"chief": 1, "worker": 2, "ps": 2}
    report = info["warm_start"]
    assert report["remapped"] == len(CATEGORICAL) and report["skipped"] == [] and report["copied"] > 0
    assert np.isfinite(info["final"]["loss"]) and np.isfinite(info["final"]["val_loss"])
    got = weights(tmp_path / "model")
    assert not any("part_" in name for name in got)
    assert got.keys() == weights(one_process).keys()


def test_wait_for_file_returns_when_the_chief_writes_and_times_out_naming_it(tmp_path):
    import threading

    from components.trainer_module import wait_for_file

    path = tmp_path / "model" / "train_info.json"
    timer = threading.Timer(0.3, lambda: (path.parent.mkdir(), path.write_text("{}")))
    timer.start()
    wait_for_file(str(path), timeout_s=10, poll_s=0.05)
    timer.join()
    with pytest.raises(TimeoutError, match="missing.json"):
        wait_for_file(str(tmp_path / "missing.json"), timeout_s=0.2, poll_s=0.05)
