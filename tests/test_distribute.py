"""matta_tf.distribute (config, strategies, partitioner) and sharded embedding tables in
one process: the embedding lookup and Shampoo on `ShardedVariable` shards equal the
unsharded table. The multi-process clusters are in tests/test_distribute_cluster.py."""
import matta_tf  # noqa: F401  (before TensorFlow)

# isort: split

import json

import numpy as np
import pytest
import tensorflow as tf

from matta_tf.distribute import (
    DistributionConfig,
    EmbeddingPartitioner,
    is_chief,
    is_server_task,
    logical_name,
    logical_variables,
    make_strategy,
)
from matta_tf.layers import NestedEmbedding
from matta_tf.optimizers import Shampoo

ShardedVariable = tf.__internal__.distribute.ShardedVariable


def sharded(value: np.ndarray, name: str, rows=None) -> ShardedVariable:
    """`value` split along rows like ParameterServerStrategy's "div" partitioning."""
    n = len(value)
    rows = rows or [n - n // 2, n // 2]
    offsets = np.cumsum([0, *rows])
    return ShardedVariable([tf.Variable(value[a:b], name=f"{name}/part_{i}")
                            for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))])


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize("data, message", [
    ({"strategy": "horovod"}, r"strategy 'horovod' is not one of none, mirrored, multi_worker_mirrored, "
                              r"parameter_server"),
    ({"strategy": "mirrored", "workers": 2}, r"unknown keys \['workers'\]"),
    ({"strategy": "mirrored", "partition": "embeddings"}, r"partition applies to strategy parameter_server only"),
    ({"strategy": "none", "devices": ["/cpu:0"]}, r"devices applies to strategy mirrored only"),
    ({"devices": ["/cpu:0"]}, r"devices applies to strategy mirrored only, not 'none'"),
    ({"strategy": "parameter_server", "partition": "rows"}, r"partition 'rows' is not one of"),
    ({"strategy": "parameter_server", "max_shards": 0}, r"max_shards must be an int >= 1, got 0"),
    ({"strategy": "parameter_server", "min_shard_bytes": "1k"}, r"min_shard_bytes must be an int"),
    ({"strategy": "parameter_server", "embedding_pattern": "("}, r"embedding_pattern '\('"),
    ({"strategy": "multi_worker_mirrored", "communication": "mpi"}, r"communication 'mpi'"),
    ({"strategy": "mirrored", "devices": "/cpu:0"}, r"devices must be a list"),
    ({"steps_per_execution": True}, r"steps_per_execution must be an int >= 1"),
    ("mirrored", r"expected a mapping"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ValueError, match=r"^where: .*" + message):
        DistributionConfig.from_dict(data, where="where")


def test_config_defaults_and_round_trip():
    assert DistributionConfig.from_dict(None) == DistributionConfig() == DistributionConfig.from_dict({})
    assert DistributionConfig().strategy == "none"
    config = DistributionConfig.from_dict({"strategy": "parameter_server", "max_shards": 4,
                                           "min_shard_bytes": 1024, "steps_per_execution": 5})
    assert config.to_dict() == {"strategy": "parameter_server", "max_shards": 4,
                                "min_shard_bytes": 1024, "steps_per_execution": 5}
    assert DistributionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    mirrored = DistributionConfig.from_dict({"strategy": "mirrored", "devices": ["/cpu:0"]})
    assert mirrored.devices == ("/cpu:0",) and mirrored.to_dict()["devices"] == ["/cpu:0"]


def test_make_strategy_none_and_mirrored():
    assert make_strategy(None) is tf.distribute.get_strategy()
    strategy = make_strategy({"strategy": "mirrored", "devices": ["/cpu:0"]})
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 1


def _tf_config(monkeypatch, kind, index=0, jobs=("chief", "worker", "ps")):
    cluster = {job: [f"localhost:{1000 + 10 * i + k}" for k in range(2 if job != "chief" else 1)]
               for i, job in enumerate(jobs)}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}}))


def test_roles_from_tf_config(monkeypatch):
    ps = DistributionConfig(strategy="parameter_server")
    mwms = DistributionConfig(strategy="multi_worker_mirrored")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief(mwms) and not is_server_task(ps)
    with pytest.raises(ValueError, match="needs TF_CONFIG with a cluster of 'ps' and 'worker'"):
        make_strategy(ps)
    _tf_config(monkeypatch, "worker", 1)
    assert is_server_task(ps) and not is_chief(ps) and not is_chief(mwms)
    with pytest.raises(ValueError, match="runs on the coordinator .* call run_server"):
        make_strategy(ps)
    _tf_config(monkeypatch, "chief")
    assert is_chief(ps) and is_chief(mwms) and not is_server_task(ps)
    _tf_config(monkeypatch, "worker", 0, jobs=("worker",))  # no chief: worker 0 writes
    assert is_chief(mwms)
    _tf_config(monkeypatch, "worker", 1, jobs=("worker",))
    assert not is_chief(mwms)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        is_chief(mwms)


def test_embedding_partitioner_splits_only_tables():
    partition = EmbeddingPartitioner(r"(^|/)embedding[^/]*$", max_shards=2, min_shard_bytes=64)
    shape = tf.TensorShape([100, 8])  # 3200 bytes
    with tf.name_scope("network"), tf.name_scope("embedding_C1"):
        assert partition(shape, tf.float32) == [2, 1]
        assert partition(tf.TensorShape([4, 2]), tf.float32) == [1, 1]  # 32 bytes < 64
    with tf.name_scope("network"), tf.name_scope("cross_0"):
        assert partition(shape, tf.float32) == [1, 1]
    assert partition(shape, tf.float32) == [1, 1]


def test_logical_variables_and_names():
    table = sharded(np.zeros((5, 2), np.float32), "net/embedding_C1/embeddings")
    kernel = tf.Variable(tf.zeros((3, 2)), name="net/kernel")
    out = logical_variables([*table.variables, kernel])
    assert out[0] is table and out[1] is kernel and len(out) == 2
    assert logical_name(table.variables[1]) == "net/embedding_C1/embeddings:0"
    assert logical_name(table) == "net/embedding_C1/embeddings:0"
    assert logical_name(kernel) == "net/kernel:0"


# ------------------------------------------------------------------------- sharded tables


def test_nested_embedding_on_a_sharded_table_returns_rows_in_id_order():
    """The layer's lookup on a ShardedVariable (how ParameterServerStrategy splits a
    table) equals the unsharded lookup for ids in any order; its gradient reaches each
    shard as IndexedSlices with shard-local rows. (tf.gather on a ShardedVariable returns
    the rows grouped by shard instead - the reason the layer uses embedding_lookup.)"""
    full = np.arange(11 * 3, dtype=np.float32).reshape(11, 3)
    layer = NestedEmbedding(11, 3)
    layer.build(None)
    layer.embeddings = sharded(full, "embeddings")
    ids = tf.constant([10, 0, 6, 5, 6, 1], tf.int64)
    np.testing.assert_array_equal(layer(ids).numpy(), full[ids.numpy()])
    np.testing.assert_array_equal(layer(ids, output_dim=2).numpy(), full[ids.numpy(), :2])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(ids) * tf.range(1.0, 7.0)[:, None])
    grads = tape.gradient(y, layer.embeddings.variables)
    assert all(isinstance(g, tf.IndexedSlices) for g in grads)
    dense = np.concatenate([tf.convert_to_tensor(g).numpy() for g in grads])
    want = np.zeros_like(full)
    np.add.at(want, ids.numpy(), np.arange(1.0, 7.0)[:, None] * np.ones(3))
    np.testing.assert_array_equal(dense, want)


def _train(table, kernel, opt, batches):
    """Embedding lookup -> dense kernel -> logistic loss; one Shampoo step per batch."""
    table_vars = table.variables if isinstance(table, ShardedVariable) else [table]
    variables = [*table_vars, kernel]

    @tf.function
    def step(ids, x, y):
        with tf.GradientTape() as tape:
            emb = tf.nn.embedding_lookup(table, ids)
            logits = tf.reduce_sum(tf.matmul(emb * x[:, None], kernel), axis=1)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    for batch in batches:
        step(*batch)


def test_shampoo_on_sharded_table_equals_unsharded():
    """Shampoo (adam graft, momentum, weight decay, Kronecker factors on the dense kernel)
    updating a table split in 2 / 3 shards equals updating it whole: row-sparse shard
    gradients with shard-local ids, slots per shard (coalesced as ShardedVariables for
    checkpoints), untouched rows bit-identical, a NaN row skipped on its shard only."""
    rng = np.random.default_rng(0)
    table0 = rng.standard_normal((23, 6)).astype(np.float32)
    kernel0 = rng.standard_normal((6, 5)).astype(np.float32)
    batches = []
    for t in range(8):
        ids = rng.integers(0, 18, size=16)  # rows 18..22 are never looked up
        x = rng.standard_normal(16).astype(np.float32)
        if t == 3:
            x[2] = np.nan  # one example's row gets a NaN gradient (and the kernel's too)
        batches.append((tf.constant(ids), tf.constant(x), tf.constant((rng.random(16) < 0.3) * 1.0,
                                                                        tf.float32)))
    cfg = dict(block_size=4, precondition_frequency=2, start_preconditioning_step=2,
               weight_decay=0.01)
    results = {}
    for split in (None, [12, 11], [8, 8, 7]):
        table = (tf.Variable(table0, name="net/embedding_C1/embeddings") if split is None
                 else sharded(table0, "net/embedding_C1/embeddings", split))
        kernel = tf.Variable(kernel0, name="net/dense/kernel")
        opt = Shampoo(0.05, **cfg)
        _train(table, kernel, opt, batches)
        results[str(split)] = (tf.convert_to_tensor(table).numpy(), kernel.numpy(),
                               int(opt.skipped_nonfinite.numpy()))
        if split is not None:
            shard_slots = [v for v in opt.variables if isinstance(v, ShardedVariable)]
            assert len(shard_slots) == 2  # momentum and adam graft, each one ShardedVariable
            assert all([s.shape[0] for s in v.variables] == split for v in shard_slots)
            assert opt.preconditioner_layout(table.variables[0]).is_kronecker is False
        assert opt.preconditioner_layout(kernel).is_kronecker
    whole_table, whole_kernel, whole_skipped = results["None"]
    assert whole_skipped == 1 and np.isfinite(whole_table).all()
    np.testing.assert_array_equal(whole_table[18:], table0[18:])
    for split in ("[12, 11]", "[8, 8, 7]"):
        table, kernel, skipped = results[split]
        np.testing.assert_allclose(table, whole_table, rtol=0, atol=1e-6)
        np.testing.assert_allclose(kernel, whole_kernel, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(table[18:], table0[18:])
        assert skipped == whole_skipped


def test_shampoo_checkpoint_of_sharded_table_resumes_identically(tmp_path):
    """Optimizer + sharded table saved mid-training and restored into a fresh run with the
    same sharding continue exactly like the uninterrupted run (slots restore per shard).
    (Restoring optimizer state into a different sharding is not supported.)"""
    rng = np.random.default_rng(1)
    table0 = rng.standard_normal((23, 6)).astype(np.float32)
    kernel0 = rng.standard_normal((6, 5)).astype(np.float32)
    batches = [(tf.constant(rng.integers(0, 18, size=16)), tf.constant(rng.standard_normal(16), tf.float32),
                tf.constant((rng.random(16) < 0.3) * 1.0, tf.float32)) for _ in range(8)]

    def setup():
        return (sharded(table0, "net/embedding_C1/embeddings", [12, 11]),
                tf.Variable(kernel0, name="net/dense/kernel"),
                Shampoo(0.05, block_size=4, precondition_frequency=2, start_preconditioning_step=2))

    table, kernel, opt = setup()
    _train(table, kernel, opt, batches[:4])
    path = tf.train.Checkpoint(table=table, kernel=kernel, opt=opt).save(str(tmp_path / "ckpt"))
    _train(table, kernel, opt, batches[4:])
    table2, kernel2, opt2 = setup()
    status = tf.train.Checkpoint(table=table2, kernel=kernel2, opt=opt2).restore(path)
    _train(table2, kernel2, opt2, batches[4:])
    status.assert_consumed()
    np.testing.assert_array_equal(tf.convert_to_tensor(table2).numpy(), tf.convert_to_tensor(table).numpy())
    np.testing.assert_array_equal(kernel2.numpy(), kernel.numpy())
    assert int(opt2.iterations.numpy()) == 8


def test_shampoo_refuses_a_sharded_kronecker_variable():
    kernel = sharded(np.ones((20, 6), np.float32), "net/dense/kernel")
    with pytest.raises(ValueError, match=r"`net/dense/kernel/part_0:0` is one of 2 shards .* "
                                         r"does not precondition sharded variables"):
        Shampoo(0.01).build(kernel.variables)
    # Named as diagonal-only it gets the row-wise update, which is exact per shard.
    opt = Shampoo(0.01, diagonal_only=("embeddings", "dense/kernel"))
    opt.build(kernel.variables)
    assert not any(opt.preconditioner_layout(v).is_kronecker for v in kernel.variables)


# ------------------------------------------------------------------------- pipeline config


def test_pipeline_config_validates_the_distribution_section_on_load(tmp_path):
    import yaml

    from pipelines.config import PipelineConfig

    base = {"data_root": "data", "pipeline_root": "out"}
    assert PipelineConfig.from_dict(base).distribution == {"strategy": "none"}
    config = PipelineConfig.from_dict({**base, "distribution": {"strategy": "parameter_server",
                                                                "min_shard_bytes": 4096}})
    assert DistributionConfig.from_dict(config.distribution).min_shard_bytes == 4096
    for bad, message in (({"strategy": "tpu"}, "pipeline config: distribution: strategy 'tpu' is not one of"),
                         ({"strategy": "mirrored", "shards": 2}, "pipeline config: distribution: unknown keys"),
                         ("mirrored", "pipeline config: distribution: expected a mapping")):
        with pytest.raises(ValueError, match=message):
            PipelineConfig.from_dict({**base, "distribution": bad})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**base, "distribution": {"strategy": "multi_worker_mirrored",
                                                             "communication": "ring"}}))
    loaded = PipelineConfig.from_file(str(path))
    assert loaded.to_dict()["distribution"] == {"strategy": "multi_worker_mirrored", "communication": "ring"}
