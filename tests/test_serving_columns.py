"""Columnar requests (predict_raw) and integer ids (predict_ids) through the client, the
server and the A/B router give the scores the tf.Example path gives."""
import numpy as np
import pytest

import matta_tf  # noqa: F401  (before TensorFlow)

ROWS = {"x": [0.5, None, -3.0, 2.0, 7.0], "y": [1.0, 2.0, None, -4.0, 0.0],
        "color": ["red", "blue", None, "purple", "green"], "tag": ["a", "b", None, "zz", "q"]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import tensorflow as tf

    from matta_tf.config import (
        CategoricalFeature,
        FeatureSpec,
        NumericFeature,
        RankerConfig,
        SubmodelSpec,
    )
    from matta_tf.export import export_saved_model, make_examples
    from matta_tf.extract import extract
    from matta_tf.model import MatTARanker
    from serving import config as sc
    from serving.server import ModelServer, ServerOptions

    features = FeatureSpec(
        numeric=(NumericFeature("x", log1p=True), NumericFeature("y", mean=1.0, std=2.0)),
        categorical=(CategoricalFeature("color", vocabulary=("red", "green", "blue")),
                     CategoricalFeature("tag", hash_buckets=5)))
    config = RankerConfig(features=features, student=SubmodelSpec(2, 1, (), (4,)), warmup_steps=0)
    model = MatTARanker(config)
    rng = np.random.default_rng(0)
    for w in model.network.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
    root = tmp_path_factory.mktemp("columns")
    student = extract(model, config.student)
    path = export_saved_model(student, str(root / "s"), features)
    examples = make_examples(ROWS)
    dep = sc.write_deployment(str(root / "deploy"), "ranker", {"student": path},
                              warmup_examples=examples[:2])
    want = tf.saved_model.load(path).signatures["serving_default"](
        examples=tf.constant(examples))["probability"].numpy()
    _, ids = student.network.preprocessor({
        "x": tf.constant([np.nan if v is None else v for v in ROWS["x"]], tf.float32),
        "y": tf.constant([np.nan if v is None else v for v in ROWS["y"]], tf.float32),
        "color": tf.constant(["" if v is None else v for v in ROWS["color"]]),
        "tag": tf.constant(["" if v is None else v for v in ROWS["tag"]])})
    server = ModelServer.from_config(dep.models_config_path,
                                     ServerOptions(grpc_port=0, rest_port=0)).start()
    yield {"server": server, "examples": examples, "want": want,
           "ids": np.stack([i.numpy() for i in ids], 1)}
    server.stop()


def _columns():
    return {"x": [np.nan if v is None else v for v in ROWS["x"]],
            "y": [np.nan if v is None else v for v in ROWS["y"]],
            "color": ["" if v is None else v for v in ROWS["color"]],
            "tag": ["" if v is None else v for v in ROWS["tag"]]}


def test_columns_and_ids_score_like_examples_over_grpc_and_rest(served):
    from serving.client import GrpcClient, RestClient

    server, want = served["server"], served["want"]
    with GrpcClient(f"127.0.0.1:{server.grpc_port}") as grpc_client:
        np.testing.assert_allclose(
            grpc_client.predict_examples("ranker", served["examples"], label="student")["probability"],
            want, rtol=1e-6)
        np.testing.assert_allclose(
            grpc_client.predict_columns("ranker", _columns(), label="student")["probability"],
            want, rtol=1e-6)
        numeric = np.stack([_columns()["x"], _columns()["y"]], 1)
        np.testing.assert_allclose(
            grpc_client.predict_ids("ranker", numeric, served["ids"], label="student")["probability"],
            want, rtol=1e-6)
    rest = RestClient(f"http://127.0.0.1:{server.rest_port}", fmt="columnar")
    np.testing.assert_allclose(rest.predict_columns("ranker", _columns(), label="student")["probability"],
                               want, rtol=1e-6)


def test_router_sends_columns_to_predict_raw_and_ids_to_predict_ids(served, tmp_path):
    from serving.ab import ABRouter, EventLog, ExperimentConfig
    from serving.client import GrpcClient

    server, want = served["server"], served["want"]
    config = ExperimentConfig.from_dict({
        "name": "cols", "model_name": "ranker", "salt": "s", "control": "student",
        "arms": [{"name": "student", "label": "student", "weight": 1.0}]})
    with GrpcClient(f"127.0.0.1:{server.grpc_port}") as client, \
            EventLog(str(tmp_path / "events.jsonl")) as log:
        router = ABRouter(config, {"student": client}, log)
        by_examples = router.rank("u1", served["examples"])
        by_columns = router.rank("u1", _columns())
        by_ids = router.rank("u1", {"numeric": np.stack([_columns()["x"], _columns()["y"]], 1),
                                    "ids": served["ids"]})
    np.testing.assert_allclose(by_examples.scores, want, rtol=1e-6)
    np.testing.assert_allclose(by_columns.scores, want, rtol=1e-6)
    np.testing.assert_allclose(by_ids.scores, want, rtol=1e-6)
    assert not by_columns.fallback and by_columns.error is None


def test_fast_tensor_protos_match_make_tensor_proto():
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2

    from serving.client import fill_tensor_proto, tensor_proto_to_array

    for value in (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, -1], np.int64),
                  [b"a", b"\xff", b""]):
        proto = tensor_pb2.TensorProto()
        assert fill_tensor_proto(proto, value)
        want = tf.make_ndarray(tf.make_tensor_proto(np.asarray(value, dtype=object)
                                                    if isinstance(value, list) else value))
        got = tf.make_ndarray(proto)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tolist() == want.tolist()
    assert not fill_tensor_proto(tensor_pb2.TensorProto(), [[b"nested"]])
    out = tf.make_tensor_proto(np.array([0.25, -1.5], np.float32))
    np.testing.assert_array_equal(tensor_proto_to_array(out), [0.25, -1.5])
