"""Server-side batching (serving.batching) and `matta serve --enable-batching`."""
import threading
import time

import numpy as np
import pytest

import matta_tf  # noqa: F401  (before TensorFlow)
from serving.batching import BatchingOptions, BatchScheduler
from serving.status import ServingError


def _doubler(calls):
    def run(key, inputs):
        calls.append({k: len(v) for k, v in inputs.items()})
        x = inputs["x"]
        if np.any(x < 0):
            raise ServingError("INVALID_ARGUMENT", "negative input")
        return {"y": x * 2.0, "n": np.full(len(x), len(x))}
    return run


def _submit_all(scheduler, values, key="k"):
    results, errors = [None] * len(values), [None] * len(values)
    start = threading.Barrier(len(values))

    def one(i):
        start.wait()
        try:
            results[i] = scheduler.submit(key, {"x": np.asarray(values[i], np.float32)},
                                          len(values[i]))
        except ServingError as err:
            errors[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results, errors


def test_concurrent_requests_share_a_call_and_get_their_own_outputs():
    calls = []
    opts = BatchingOptions(max_batch_size=64, batch_timeout_micros=200_000, num_batch_threads=1)
    scheduler = BatchScheduler(opts, _doubler(calls)).start()
    try:
        values = [[float(i)] * (1 + i % 3) for i in range(12)]
        results, errors = _submit_all(scheduler, values)
    finally:
        scheduler.stop()
    assert errors == [None] * 12
    for v, r in zip(values, results, strict=True):
        np.testing.assert_array_equal(r["y"], np.asarray(v, np.float32) * 2)
    assert len(calls) < 12  # merged along the 0th dimension
    assert sum(c["x"] for c in calls) == sum(len(v) for v in values)
    assert scheduler.stats["tasks"] == 12


def test_batches_are_padded_to_allowed_sizes_and_capped_at_max_batch_size():
    calls = []
    opts = BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1,
                           allowed_batch_sizes=(2, 4, 8))
    scheduler = BatchScheduler(opts, _doubler(calls)).start()
    try:
        results, errors = _submit_all(scheduler, [[1.0, 2.0, 3.0], [4.0] * 6, [5.0]])
        with pytest.raises(ServingError) as too_big:
            scheduler.submit("k", {"x": np.zeros(9, np.float32)}, 9)
    finally:
        scheduler.stop()
    assert errors == [None] * 3
    assert [r["y"].tolist() for r in results] == [[2.0, 4.0, 6.0], [8.0] * 6, [10.0]]
    assert all(c["x"] in (2, 4, 8) for c in calls) and all(c["x"] <= 8 for c in calls)
    assert too_big.value.code == "INVALID_ARGUMENT"
    assert "Task size 9 is larger than maximum input batch size 8" in too_big.value.message


def test_a_bad_request_fails_alone_and_a_full_queue_is_unavailable():
    calls = []
    opts = BatchingOptions(max_batch_size=4, batch_timeout_micros=200_000, num_batch_threads=1)
    scheduler = BatchScheduler(opts, _doubler(calls)).start()
    try:
        results, errors = _submit_all(scheduler, [[1.0], [-1.0], [3.0]])
    finally:
        scheduler.stop()
    assert errors[1] is not None and errors[1].code == "INVALID_ARGUMENT"
    assert errors[0] is None and errors[2] is None
    assert results[0]["y"].tolist() == [2.0] and results[2]["y"].tolist() == [6.0]

    gate = threading.Event()

    def slow(key, inputs):
        gate.wait(5)
        return {"y": inputs["x"]}

    opts = BatchingOptions(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1,
                           max_enqueued_batches=1)
    scheduler = BatchScheduler(opts, slow).start()
    try:
        first = threading.Thread(target=scheduler.submit, args=("k", {"x": np.zeros(1)}, 1))
        first.start()
        time.sleep(0.2)  # the first batch is running; the next one waits in the queue
        second = threading.Thread(target=scheduler.submit, args=("k", {"x": np.zeros(1)}, 1))
        second.start()
        time.sleep(0.2)
        with pytest.raises(ServingError) as full:
            scheduler.submit("k", {"x": np.zeros(1)}, 1)
        assert full.value.code == "UNAVAILABLE" and "queue" in full.value.message
    finally:
        gate.set()
        first.join(5)
        second.join(5)
        scheduler.stop()


def test_options_from_the_deployment_batching_file(tmp_path):
    from serving import config as sc

    path = tmp_path / "batching_parameters.txt"
    path.write_text(sc.BatchingConfig(max_batch_size=64, batch_timeout_micros=500,
                                      allowed_batch_sizes=(8, 64)).to_text())
    opts = BatchingOptions.from_file(str(path))
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.num_batch_threads,
            opts.max_enqueued_batches, opts.allowed_batch_sizes) == (64, 500, 2, 100, (8, 64))
    assert opts.padded_size(9) == 64 and opts.padded_size(3) == 8


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from serving import config as sc
    from serving import reference_model as rm
    from serving.examples import encode_rows

    root = tmp_path_factory.mktemp("batching")
    arms = {"small": rm.export_reference_model(str(root / "small"), hidden=8, seed=1)}
    examples = encode_rows(rm.reference_rows(40, seed=2))
    dep = sc.write_deployment(str(root / "deploy"), "ranker", arms, warmup_examples=examples[:2],
                              batching=sc.BatchingConfig(max_batch_size=16, batch_timeout_micros=20_000,
                                                         allowed_batch_sizes=(4, 16)))
    return dep, arms, examples


def test_matta_serve_with_batching_answers_like_without(deployment):
    import tensorflow as tf

    from serving.client import GrpcClient, RestClient
    from serving.server import ModelServer, ServerOptions

    dep, arms, examples = deployment
    want = tf.saved_model.load(arms["small"]).signatures["serving_default"](
        examples=tf.constant(examples))["probability"].numpy()
    options = ServerOptions(grpc_port=0, rest_port=0, grpc_threads=16, max_concurrency=2,
                            batching=BatchingOptions.from_file(dep.batching_parameters_path))
    with ModelServer.from_config(dep.models_config_path, options) as server:
        got = [None] * 24
        client = GrpcClient(f"127.0.0.1:{server.grpc_port}", timeout_s=10)

        def one(i):
            got[i] = client.predict_examples("ranker", [examples[i]], label="small")["probability"]

        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        np.testing.assert_allclose(np.concatenate(got), want[:24], rtol=1e-6, atol=1e-7)
        stats = server.batcher.stats
        assert stats["tasks"] >= 24 and stats["batches"] < stats["tasks"]
        # A request larger than the batching max_batch_size: INVALID_ARGUMENT, as TF Serving.
        with pytest.raises(Exception) as err:
            client.predict_examples("ranker", examples[:17], label="small")
        assert err.value.code == "INVALID_ARGUMENT" and "maximum input batch size 16" in str(err.value)
        # REST goes through the same batches; an output filter still applies.
        rest = RestClient(f"http://127.0.0.1:{server.rest_port}", fmt="columnar")
        out = rest.predict("ranker", {"examples": examples[:3]}, label="small")
        np.testing.assert_allclose(out["probability"], want[:3], rtol=1e-6, atol=1e-7)
        client.close()
