"""TFX Trainer module: MatTA co-training of TA + nested Student on TFT-transformed examples.

`run_fn(fn_args)` builds `matta_tf.model.MatTARanker` from `custom_config["ranker"]` (the
feature block is derived from the Transform output: one numeric input per normalised
column, one `num_ids` categorical per vocabulary, sized V + oov_buckets), trains it with
the MatTA loss against the stored teacher logits (Shampoo when `matta_tf.optimizers` has
it, else Adam), logs to TensorBoard under `fn_args.model_run_dir`, and writes into
`fn_args.serving_model_dir`:

    ranker_config.json   the full RankerConfig (features sized for this run's vocabularies)
    checkpoint/ckpt-*    the TA weights (the Student is their leading slice)
    vocab/<feature>      this run's vocabularies (to remap embeddings when warm starting)
    train_info.json      steps, optimizer, warm-start report, final metrics

Warm start: when the Trainer gets a `base_model` (the previous span's model, see
`pipelines.warm_start`), every weight of matching shape is copied, and embedding tables
are remapped row by row through the two vocabularies (a value keeps its learned row even
if its frequency rank changed; new values keep their fresh initialisation).

Distribution (`custom_config["distribution"]`, the pipeline config's `distribution`
section, see `matta_tf.distribute`; the cluster comes from TF_CONFIG):

* none / mirrored: as one process; `batch_size` is the global batch.
* multi_worker_mirrored: every worker runs this run_fn; each builds the same shuffled
  dataset and keeps its share of every global batch of `batch_size` (auto-shard DATA);
  only the chief (TF_CONFIG `chief`, else worker 0) writes `serving_model_dir` and the
  TensorBoard logs (the others write to a temporary directory that is removed, then wait
  up to `custom_config["chief_wait_seconds"]` (1800) for the chief's model to appear,
  since TFX's executor checks `serving_model_dir` on every replica).
* parameter_server: run_fn on a `worker` or `ps` task only starts its
  `tf.distribute.Server` and serves (Vertex AI runs the Trainer in every worker pool);
  on the coordinator (`chief`) the model's embedding tables are split over the ps tasks
  and Keras fit schedules steps of `batch_size` examples on the workers (asynchronous; each
  worker reads every n-th batch). The checkpoint written from the sharded model restores
  into an ordinary one, so `load_trained` and the StudentExtractor are unchanged.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

import matta_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from components.trainer_config import check_optimizer
from components.trainer_config import ranker_dict as trainer_ranker_dict

CONFIG_FILE = "ranker_config.json"
CHECKPOINT_DIR = "checkpoint"
VOCAB_DIR = "vocab"
INFO_FILE = "train_info.json"

def feature_block(tft_output, transform_config: dict) -> dict:
    """The RankerConfig `features` dict for transformed inputs (num_ids from vocab sizes)."""
    oov = int(transform_config["oov_buckets"])
    return {
        "numeric": [{"name": n} for n in transform_config["numeric"]],
        "categorical": [{"name": c, "num_ids": int(tft_output.vocabulary_size_by_name(c)) + oov,
                         "oov_buckets": 1} for c in transform_config["categorical"]],
    }


def transformed_dataset(file_pattern, tft_output, batch_size: int, shuffle: bool, seed: int = 0):
    """(features, label) batches from gzipped transformed tf.Examples; features are [B]."""
    files = file_pattern if isinstance(file_pattern, list) else [file_pattern]
    files = sorted(f for p in files for f in tf.io.gfile.glob(p))
    spec = tft_output.transformed_feature_spec()
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if shuffle:
        ds = ds.shuffle(20_000, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x: tf.io.parse_example(x, spec),
                                  num_parallel_calls=tf.data.AUTOTUNE)

    def split(features):
        features = dict(features)
        label = features.pop("label")
        return features, label

    return ds.map(split).prefetch(tf.data.AUTOTUNE)


def make_optimizer(name: str, learning_rate: float):
    """Shampoo (matta's own, always available) or tf_keras Adam; anything else is an error."""
    check_optimizer(name)
    if name == "shampoo":
        from matta_tf.optimizers import Shampoo

        return Shampoo(learning_rate=learning_rate), "shampoo"
    return tf.keras.optimizers.Adam(learning_rate=learning_rate), "adam"


def build_model(ranker_dict: dict):
    from matta_tf.config import RankerConfig
    from matta_tf.extract import dummy_features
    from matta_tf.model import MatTARanker

    config = RankerConfig.from_dict(ranker_dict)
    model = MatTARanker(config)
    model(dummy_features(config.features, 2))  # create every variable before restoring
    return model


def save_trained(model, ranker_dict: dict, out_dir: str, vocab_files: dict, info: dict):
    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, CONFIG_FILE), "w") as f:
        f.write(json.dumps(ranker_dict, indent=1, sort_keys=True))
    tf.train.Checkpoint(model=model).write(os.path.join(out_dir, CHECKPOINT_DIR, "ckpt"))
    tf.io.gfile.makedirs(os.path.join(out_dir, VOCAB_DIR))
    for name, path in vocab_files.items():
        tf.io.gfile.copy(path, os.path.join(out_dir, VOCAB_DIR, name), overwrite=True)
    with tf.io.gfile.GFile(os.path.join(out_dir, INFO_FILE), "w") as f:
        f.write(json.dumps(info, indent=1, sort_keys=True, default=float))


def load_trained(model_dir: str):
    """(MatTARanker with restored weights, ranker dict) from a `save_trained` directory."""
    with tf.io.gfile.GFile(os.path.join(model_dir, CONFIG_FILE)) as f:
        ranker_dict = json.load(f)
    model = build_model(ranker_dict)
    tf.train.Checkpoint(model=model).read(
        os.path.join(model_dir, CHECKPOINT_DIR, "ckpt")).assert_existing_objects_matched()
    return model, ranker_dict


def _read_vocab(path: str) -> list[str]:
    with tf.io.gfile.GFile(path, "rb") as f:
        return [line.rstrip(b"\n").decode("utf-8", "replace") for line in f]


def remap_rows(old_table: np.ndarray, old_vocab: list[str], new_table: np.ndarray,
               new_vocab: list[str]) -> tuple[np.ndarray, int]:
    """New embedding table whose rows for values known before come from `old_table`.

    Rows [0, len(vocab)) are vocabulary values; rows after are OOV buckets, copied by
    position (same hashing). Returns (table, number of rows carried over).
    """
    out = new_table.copy()
    old_index = {v: i for i, v in enumerate(old_vocab)}
    moved = 0
    width = min(old_table.shape[1], new_table.shape[1])
    for i, value in enumerate(new_vocab):
        j = old_index.get(value)
        if j is not None:
            out[i, :width] = old_table[j, :width]
            moved += 1
    old_oov = old_table.shape[0] - len(old_vocab)
    new_oov = new_table.shape[0] - len(new_vocab)
    for k in range(min(old_oov, new_oov)):
        out[len(new_vocab) + k, :width] = old_table[len(old_vocab) + k, :width]
        moved += 1
    return out, moved


def warm_start(model, base_dir: str, new_vocab_files: dict, old_model=None) -> dict:
    """Copies weights from the model saved in `base_dir` (or `old_model`, loaded from it
    already); returns a report of what moved. Works on sharded (parameter-server) and
    mirrored variables too: a sharded table is read and assigned whole."""
    from matta_tf.distribute import logical_name, logical_variables

    if old_model is None:
        old_model, _ = load_trained(base_dir)
    old_vars = {v.name: v for v in old_model.variables}
    report = {"from": base_dir, "copied": 0, "remapped": 0, "rows_carried": 0, "skipped": []}
    for var in logical_variables(model.variables):
        name = logical_name(var)
        old = old_vars.get(name)
        if old is None:
            report["skipped"].append(name)
            continue
        if tuple(old.shape) == tuple(var.shape) and "embedding_" not in name:
            var.assign(old)
            report["copied"] += 1
            continue
        feature = next((c for c in new_vocab_files if f"embedding_{c}/" in name), None)
        old_vocab_path = os.path.join(base_dir, VOCAB_DIR, feature) if feature else None
        if feature and tf.io.gfile.exists(old_vocab_path) and old.shape.rank == 2:
            table, moved = remap_rows(old.numpy(), _read_vocab(old_vocab_path),
                                      tf.convert_to_tensor(var).numpy(),
                                      _read_vocab(new_vocab_files[feature]))
            var.assign(table)
            report["remapped"] += 1
            report["rows_carried"] += moved
        elif tuple(old.shape) == tuple(var.shape):
            var.assign(old)
            report["copied"] += 1
        else:
            report["skipped"].append(name)
    return report


def training_log_callbacks(log_dir: str, steps: int) -> list:
    """TensorBoard event files under `log_dir` (the Trainer's `model_run` artifact).

    Epoch summaries (train/ and validation/ losses and metrics) plus batch-level scalars
    about 20 times per run, so a one-epoch run still draws curves.
    """
    try:
        import tensorboard  # noqa: F401  (tf.summary writes event files only with it)
    except ImportError as err:
        raise RuntimeError("the MatTA Trainer writes TensorBoard logs and needs the "
                           "`tensorboard` package (it is in requirements.lock)") from err
    tf.io.gfile.makedirs(log_dir)
    # write_steps_per_second: tf_keras only runs the batch hooks (which write the batch_*
    # scalars every `update_freq` steps) when tracing or this is on.
    return [tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=max(1, steps // 20),
                                           profile_batch=0, write_steps_per_second=True)]


def run_fn(fn_args):
    import tensorflow_transform as tft

    from matta_tf import distribute

    cc = dict(fn_args.custom_config or {})
    dist = distribute.DistributionConfig.from_dict(
        cc.get("distribution"), where="Trainer custom_config distribution")
    if distribute.is_server_task(dist):
        # A worker / ps task of a parameter-server cluster: serve the coordinator until
        # the job ends (the platform stops these tasks when the chief is done).
        distribute.run_server(join=True)
        return
    strategy = distribute.make_strategy(dist)
    chief = distribute.is_chief(dist)

    transform_config = cc["transform"]
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    ranker_dict = trainer_ranker_dict(cc.get("ranker", {}), feature_block(tft_output, transform_config),
                                      where="Trainer custom_config ranker")
    batch_size = int(cc.get("batch_size", 256))
    vocab_files = {c: tft_output.vocabulary_file_by_name(c) for c in transform_config["categorical"]}
    info = {"warm_start": None}
    base_model = getattr(fn_args, "base_model", None)
    old_model = None
    if base_model and tf.io.gfile.exists(os.path.join(base_model, CONFIG_FILE)):
        old_model, _ = load_trained(base_model)  # an ordinary model, outside the strategy

    with strategy.scope():
        model = build_model(ranker_dict)
        if old_model is not None:
            info["warm_start"] = warm_start(model, base_model, vocab_files, old_model=old_model)
            print(f"[matta trainer] warm start from {base_model}: "
                  f"{info['warm_start']['copied']} copied, {info['warm_start']['remapped']} remapped")
        optimizer, opt_name = make_optimizer(cc.get("optimizer", "shampoo"),
                                             float(cc.get("learning_rate", 3e-3)))
        model.compile(optimizer=optimizer, steps_per_execution=dist.steps_per_execution)
    seed = int(ranker_dict.get("seed", 0))
    train = distribute.distributed_dataset(dist, lambda: transformed_dataset(
        fn_args.train_files, tft_output, batch_size, shuffle=True, seed=seed).repeat())
    # Repeated so `eval_steps` batches always exist, even for a tiny eval split.
    evaluation = distribute.distributed_dataset(dist, lambda: transformed_dataset(
        fn_args.eval_files, tft_output, batch_size, shuffle=False).repeat())
    steps = int(fn_args.train_steps or 100)
    epochs = max(1, int(cc.get("epochs", 1)))
    # Only the chief writes where the pipeline looks; other workers of a synchronous
    # cluster still run the same callbacks and save (they may involve collectives).
    scratch = None if chief else tempfile.mkdtemp(prefix="matta-trainer-worker-")
    try:
        log_dir = fn_args.model_run_dir if chief else os.path.join(scratch, "logs")
        history = model.fit(
            train, epochs=epochs, steps_per_epoch=max(1, steps // epochs),
            validation_data=evaluation,
            validation_steps=int(fn_args.eval_steps or 10),
            callbacks=training_log_callbacks(log_dir, steps), verbose=2)
        cluster = distribute.tf_config().get("cluster") or {}
        info.update(steps=steps, optimizer=opt_name, batch_size=batch_size,
                    distribution={**dist.to_dict(), "replicas_in_sync": strategy.num_replicas_in_sync,
                                  "cluster": {job: len(tasks) for job, tasks in cluster.items()}},
                    final={k: float(v[-1]) for k, v in history.history.items()})
        save_trained(model, ranker_dict, fn_args.serving_model_dir if chief else os.path.join(scratch, "model"),
                     vocab_files, info)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    if not chief:
        # TFX's Trainer executor fails a replica whose serving_model_dir does not exist when
        # run_fn returns; on Vertex every replica runs it with the chief's directory, so a
        # worker that finishes first waits for the chief's model (its last file).
        wait_for_file(os.path.join(fn_args.serving_model_dir, INFO_FILE),
                      float(cc.get("chief_wait_seconds", CHIEF_WAIT_SECONDS)))


CHIEF_WAIT_SECONDS = 1800.0


def wait_for_file(path: str, timeout_s: float, poll_s: float = 1.0) -> None:
    """Returns when `path` exists; TimeoutError naming it after `timeout_s` seconds."""
    import time

    deadline = time.monotonic() + timeout_s
    while not tf.io.gfile.exists(path):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"Trainer worker: the chief's model {path} did not appear within "
                               f"{timeout_s:.0f} s (chief failed or still training?)")
        time.sleep(poll_s)
