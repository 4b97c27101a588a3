"""serving/: deployment configs, `matta serve` (gRPC + REST), clients, router fallback, simulate.

One module-scoped deployment of three students and one in-process server on free
loopback ports keep this file within its time budget.
"""
import http.client
import json
import os
import socket

import numpy as np
import pytest
from conftest_serving import LABELS, build_students

import matta_tf  # noqa: F401  (before TensorFlow)

MODEL = "ranker"
MAX_REQUEST_BYTES = 64 * 1024
MAX_BATCH_SIZE = 48  # the deployment's 48 example rows fit exactly


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from serving import config as sc
    from serving.examples import encode_rows

    root = tmp_path_factory.mktemp("serving")
    arms, rows, kind = build_students(str(root / "exports"))
    examples = encode_rows(rows)
    dep = sc.write_deployment(str(root / "deploy"), MODEL, arms, warmup_examples=examples[:4],
                              warmup_batch_sizes=(1, 8))
    return {"dep": dep, "arms": arms, "rows": rows, "examples": examples, "kind": kind,
            "root": root}


@pytest.fixture(scope="module")
def server(deployment):
    from serving.server import ModelServer, ServerOptions

    srv = ModelServer.from_config(
        deployment["dep"].models_config_path,
        ServerOptions(grpc_port=0, rest_port=0, max_request_bytes=MAX_REQUEST_BYTES,
                      max_concurrency=2, grace_s=2.0, max_batch_size=MAX_BATCH_SIZE)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def in_process_scores(deployment):
    """Scores of each exported SavedModel loaded directly (the reference)."""
    import tensorflow as tf

    out = {}
    for label, path in deployment["arms"].items():
        fn = tf.saved_model.load(path).signatures["serving_default"]
        res = fn(examples=tf.constant(deployment["examples"]))
        out[label] = {k: v.numpy() for k, v in res.items()}
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ configs

def test_generated_configs_parse_with_serving_protos(deployment):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from serving import config as sc

    dep = deployment["dep"]
    parsed = text_format.Parse(open(dep.models_config_path).read(),
                               model_server_config_pb2.ModelServerConfig())
    (entry,) = parsed.model_config_list.config
    assert entry.name == MODEL and entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [1, 2, 3]
    assert dict(entry.version_labels) == {"student": 1, "mid": 2, "ta": 3}
    for version in (1, 2, 3):
        assert os.path.isfile(os.path.join(entry.base_path, str(version), "saved_model.pb"))

    batching = sc.parse_batching_parameters(dep.batching_parameters_path)
    assert batching.max_batch_size.value == 512
    assert list(batching.allowed_batch_sizes) == [1, 8, 64, 512]

    for label, version_dir in dep.version_dirs.items():
        logs = sc.read_warmup_requests(os.path.join(version_dir, sc.WARMUP_RELATIVE_PATH))
        assert [log.WhichOneof("log_type") for log in logs] == ["predict_log"] * 2, label
        shapes = [list(log.predict_log.request.inputs["examples"].tensor_shape.dim)
                  for log in logs]
        assert [d[0].size for d in shapes] == [1, 8]
        assert logs[0].predict_log.request.model_spec.name == MODEL


def test_invalid_configs_are_rejected(tmp_path):
    from serving import config as sc

    bad = tmp_path / "models.config"
    bad.write_text('model_config_list { config { name: "ranker" base_path: "/x" '
                   'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } '
                   'version_labels { key: "ta" value: 2 } } }')
    with pytest.raises(ValueError, match="label 'ta' -> version 2"):
        sc.parse_models_config(str(bad))
    bad.write_text('model_config_list { config { name: "../etc" base_path: "/x" } }')
    with pytest.raises(ValueError, match="invalid model name"):
        sc.parse_models_config(str(bad))
    bad.write_text("model_config_list { config { nme: 1 } }")
    with pytest.raises(ValueError, match="not a valid ModelServerConfig"):
        sc.parse_models_config(str(bad))
    with pytest.raises(ValueError, match="must end with max_batch_size"):
        sc.BatchingConfig(max_batch_size=128, allowed_batch_sizes=(1, 64))
    batching = tmp_path / "b.txt"
    batching.write_text("max_batch_size { value: 8 }\nnum_batch_thread { value: 2 }\n")
    with pytest.raises(ValueError, match="not a valid BatchingParameters"):
        sc.parse_batching_parameters(str(batching))


# ------------------------------------------------------------------------------ parity

@pytest.mark.parametrize("backend", ["grpc", "rest-row", "rest-columnar"])
def test_client_scores_match_in_process_savedmodel(server, deployment, in_process_scores,
                                                   backend):
    from serving.client import GrpcClient, RestClient

    if backend == "grpc":
        client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    else:
        client = RestClient(f"http://127.0.0.1:{server.rest_port}", fmt=backend.split("-")[1])
    with client:
        for version, label in enumerate(LABELS, start=1):
            by_label = client.predict_examples(MODEL, deployment["examples"], label=label)
            by_version = client.predict_examples(MODEL, deployment["examples"], version=version)
            for out in (by_label, by_version):
                for name in ("logit", "probability"):
                    got = np.asarray(out[name], dtype=np.float64)
                    want = in_process_scores[label][name].astype(np.float64)
                    assert got.shape == want.shape
                    # REST carries float32 values through JSON doubles: exact after rounding.
                    np.testing.assert_array_equal(got.astype(np.float32), want.astype(np.float32))
    # The students really differ, so "every student" is not the same model three times.
    assert not np.allclose(in_process_scores["student"]["logit"], in_process_scores["ta"]["logit"])


def test_status_and_metadata_wire_format(server):
    from serving.client import GrpcClient

    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    conn.request("GET", f"/v1/models/{MODEL}")
    body = json.loads(conn.getresponse().read())
    assert body == {"model_version_status": [
        {"version": str(v), "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}} for v in (1, 2, 3)]}
    conn.request("GET", f"/v1/models/{MODEL}/labels/mid")
    assert json.loads(conn.getresponse().read())["model_version_status"][0]["version"] == "2"
    conn.request("GET", f"/v1/models/{MODEL}/versions/3/metadata")
    meta = json.loads(conn.getresponse().read())
    assert meta["model_spec"]["version"] == "3"
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert set(sigs["serving_default"]["inputs"]) == {"examples"}
    assert set(sigs["serving_default"]["outputs"]) == {"logit", "probability"}
    assert "predict_raw" in sigs
    conn.close()

    from tensorflow_serving.apis import get_model_metadata_pb2

    client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = "student"
    request.metadata_field.append("signature_def")
    response = client._predict.GetModelMetadata(request, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    assert sig_map.signature_def["serving_default"].inputs["examples"].dtype == 7  # DT_STRING
    assert response.model_spec.version.value == 1
    assert client.model_status(MODEL, label="ta") == [{"version": 3, "state": "AVAILABLE"}]
    client.close()


def test_predict_raw_signature_over_rest(server, deployment, in_process_scores):
    from serving.client import RestClient

    rows = deployment["rows"]
    complete = [i for i, r in enumerate(rows) if all(v is not None for v in r.values())]
    assert len(complete) >= 5
    raw = {k: [rows[i][k] for i in complete] for k in rows[0]}
    out = RestClient(f"http://127.0.0.1:{server.rest_port}").predict(
        MODEL, raw, label="mid", signature_name="predict_raw")
    # Raw tensors and parsed tf.Examples reach the same model: same scores.
    np.testing.assert_allclose(out["logit"], in_process_scores["mid"]["logit"][complete],
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ errors

def _post(port, path, body: bytes, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers=headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None


def test_errors_have_tf_serving_codes_and_server_keeps_serving(server, deployment):
    import base64

    import grpc

    from serving.client import GrpcClient, RestClient, ServingClientError

    port = server.rest_port
    ex = [{"b64": base64.b64encode(e).decode()} for e in deployment["examples"][:3]]
    ok = json.dumps({"instances": ex}).encode()

    status, body = _post(port, f"/v1/models/{MODEL}/labels/nope:predict", ok)
    assert status == 400 and "Unrecognized servable version label: nope" in body["error"]
    status, body = _post(port, "/v1/models/other:predict", ok)
    assert status == 404 and "Servable not found" in body["error"]
    status, body = _post(port, f"/v1/models/{MODEL}/versions/9:predict", ok)
    assert status == 404
    status, body = _post(port, f"/v1/models/{MODEL}:predict", b'{"instances": [')
    assert status == 400 and "JSON" in body["error"]
    status, body = _post(port, f"/v1/models/{MODEL}:predict", b'{"instances": [1.5]}')
    assert status == 400 and "error" in body
    status, body = _post(port, f"/v1/models/{MODEL}:predict",
                         json.dumps({"instances": ex, "inputs": ex}).encode())
    assert status == 400 and "either" in body["error"]
    status, body = _post(port, f"/v1/models/{MODEL}:predict",
                         json.dumps({"instances": [{"b64": "bm90IGFuIGV4YW1wbGU="}]}).encode())
    assert status == 400  # bytes that are not a tf.Example: INVALID_ARGUMENT from the parser
    big = json.dumps({"instances": [{"b64": "A" * MAX_REQUEST_BYTES}]}).encode()
    status, body = _post(port, f"/v1/models/{MODEL}:predict", big)
    assert status == 413 and "exceeds the limit" in body["error"]
    for path in ("/v1/models/..%2F..%2Fetc%2Fpasswd:predict",
                 f"/v1/models/{MODEL}/labels/..%2Fta:predict",
                 f"/v1/models/{MODEL}/../../{MODEL}:predict",
                 f"/v1/models/{MODEL}/versions/1%2F..:predict",
                 "/v1/models/%00ranker:predict"):
        status, body = _post(port, path, ok)
        assert status in (400, 404) and "error" in body, path

    grpc_client = GrpcClient(f"127.0.0.1:{server.grpc_port}")
    for kwargs, code in (({"label": "nope"}, "INVALID_ARGUMENT"),
                         ({"version": 7}, "NOT_FOUND")):
        with pytest.raises(ServingClientError) as err:
            grpc_client.predict_examples(MODEL, deployment["examples"][:2], **kwargs)
        assert err.value.code == code and err.value.attempts == 1  # not retried
        assert MODEL in str(err.value)
    with pytest.raises(ServingClientError, match="INVALID_ARGUMENT") as err:
        grpc_client.predict_examples("../ranker", deployment["examples"][:2])
    with pytest.raises(ServingClientError) as err:
        grpc_client.predict_examples(MODEL, [b"x" * MAX_REQUEST_BYTES])
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.attempts == 1
    # The status of the call itself, not the client's reading of it.
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["examples"].dtype = 7  # DT_STRING
    request.inputs["examples"].tensor_shape.dim.add(size=1)
    request.inputs["examples"].string_val.append(b"x" * MAX_REQUEST_BYTES)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        with pytest.raises(grpc.RpcError) as rpc:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, rpc.value
    # One instance over --max-batch-size: INVALID_ARGUMENT (never retried), on both protocols.
    too_many = deployment["examples"] + deployment["examples"][:1]
    assert len(too_many) == MAX_BATCH_SIZE + 1
    for client in (grpc_client, RestClient(f"http://127.0.0.1:{port}")):
        with pytest.raises(ServingClientError) as err:
            client.predict_examples(MODEL, too_many)
        assert err.value.code == "INVALID_ARGUMENT" and err.value.attempts == 1
        assert f"Batch size 49 exceeds max batch size {MAX_BATCH_SIZE}" in str(err.value)

    # Still serving after all of that, on both protocols.
    status, body = _post(port, f"/v1/models/{MODEL}/labels/ta:predict", ok)
    assert status == 200 and len(body["predictions"]) == 3
    assert grpc_client.predict_examples(MODEL, deployment["examples"][:2],
                                        label="student")["probability"].shape == (2,)
    rest = RestClient(f"http://127.0.0.1:{port}")
    assert rest.predict_examples(MODEL, deployment["examples"][:2], label="mid")["logit"].shape == (2,)
    grpc_client.close()


def test_requests_are_parsed_only_once_admitted(server, deployment, monkeypatch):
    """A REST body is JSON-parsed (and a gRPC tensor decoded) only inside the concurrency
    limit; requests that are invalid on their face are refused without taking a slot."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    monkeypatch.setattr(server.options, "queue_timeout_s", 0.3)
    path = f"/v1/models/{MODEL}:predict"
    huge = predict_pb2.PredictRequest()
    huge.model_spec.name = MODEL
    huge.inputs["examples"].dtype = 7  # DT_STRING
    huge.inputs["examples"].tensor_shape.dim.add(size=2 ** 40)
    held = 0
    try:
        for _ in range(server.options.max_concurrency):  # every slot busy
            assert server._slots.acquire(timeout=10)
            held += 1
        status, body = _post(server.rest_port, path, b'{"instances": [')
        assert status == 429 and "busy" in body["error"], body  # waited for a slot, unparsed
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            with pytest.raises(grpc.RpcError) as rpc:
                prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(huge, timeout=10)
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no slot needed
        assert "decodes to" in rpc.value.details()
    finally:
        for _ in range(held):
            server._slots.release()
    status, body = _post(server.rest_port, path, b'{"instances": [')
    assert status == 400 and "JSON" in body["error"]


def test_client_retries_then_names_the_cause():
    from serving.client import GrpcClient, RestClient, RetryPolicy, ServingClientError

    port = _free_port()  # nothing listens here
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    for client in (GrpcClient(f"127.0.0.1:{port}", timeout_s=0.5, retry=retry),
                   RestClient(f"http://127.0.0.1:{port}", timeout_s=0.5, retry=retry)):
        with pytest.raises(ServingClientError) as err:
            client.predict_examples(MODEL, [b""], label="student")
        assert err.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert err.value.attempts == 3 and client.retries == 2
        assert "label=student" in str(err.value) and MODEL in str(err.value)
        client.close()


# ------------------------------------------------------------------------------ router

def test_backend_down_falls_back_to_control_and_is_counted(server, deployment,
                                                           in_process_scores, tmp_path):
    from serving.ab import ABRouter, EventLog, ExperimentConfig, assign_arm, read_events
    from serving.client import GrpcClient, RetryPolicy

    live = f"127.0.0.1:{server.grpc_port}"
    exp = ExperimentConfig.from_dict({
        "name": "fallback", "model_name": MODEL, "salt": "s1", "control": "ta",
        "arms": [{"name": "ta", "label": "ta", "weight": 1},
                 {"name": "student", "label": "student", "weight": 1,
                  "address": f"127.0.0.1:{_free_port()}"},  # backend down
                 {"name": "mid", "label": "mid-missing", "weight": 1}]})  # label not served
    no_retry = RetryPolicy(max_attempts=1)
    clients = {"ta": GrpcClient(live, retry=no_retry), "mid": GrpcClient(live, retry=no_retry),
               "student": GrpcClient(exp.arm("student").address, retry=no_retry)}
    examples = deployment["examples"][:5]
    with EventLog(str(tmp_path / "events.jsonl"), batch_size=8) as event_log:
        router = ABRouter(exp, clients, event_log, timeout_s=2.0)
        results = [router.rank(f"u{i}", examples) for i in range(30)]
    assigned = [assign_arm(exp, f"u{i}") for i in range(30)]
    assert [r.arm for r in results] == assigned
    for r in results:
        assert r.served_arm == "ta" and r.fallback == (r.arm != "ta")
        # Batch 5 vs batch 48 may block the matmul differently: float32 round-off only.
        np.testing.assert_allclose(r.scores, in_process_scores["ta"]["probability"][:5],
                                   rtol=1e-6, atol=1e-7)
    assert router.fallback_counts == {"ta": 0, "student": assigned.count("student"),
                                      "mid": assigned.count("mid")}
    assert min(router.fallback_counts["student"], router.fallback_counts["mid"]) > 0
    events = read_events(str(tmp_path / "events.jsonl"))
    assert sum(e["fallback"] for e in events) == 30 - assigned.count("ta")
    assert all("UNAVAILABLE" in e["error"] for e in events if e["arm"] == "student")
    assert all("Unrecognized servable version label" in e["error"]
               for e in events if e["arm"] == "mid")


def test_graceful_stop_refuses_new_work(deployment):
    from serving.client import GrpcClient, RetryPolicy, ServingClientError
    from serving.server import ModelServer, ServerOptions

    srv = ModelServer.from_config(deployment["dep"].models_config_path,
                                  ServerOptions(grpc_port=0, rest_port=0, warmup=False)).start()
    client = GrpcClient(f"127.0.0.1:{srv.grpc_port}", retry=RetryPolicy(max_attempts=1),
                        timeout_s=2)
    assert client.predict_examples(MODEL, deployment["examples"][:2])["logit"].shape == (2,)
    srv.stop(grace=1.0)
    with pytest.raises(ServingClientError, match="UNAVAILABLE"):
        client.predict_examples(MODEL, deployment["examples"][:2])
    client.close()


# ------------------------------------------------------------------------------ simulate

def test_ab_simulate_and_report_end_to_end(server, deployment, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from matta_tf.cli import main
    from serving.ab import read_events

    rows = deployment["rows"]
    rng = np.random.default_rng(0)
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols["click_prob"] = rng.uniform(0.05, 0.6, len(rows)).tolist()
    cols["label"] = (rng.random(len(rows)) < np.array(cols["click_prob"])).astype(int).tolist()
    log_path = tmp_path / "heldout.parquet"
    pq.write_table(pa.table(cols), log_path)
    exp_path = tmp_path / "exp.json"
    exp_path.write_text(json.dumps({
        "name": "sim", "model_name": MODEL, "salt": "sim-salt", "control": "ta",
        "arms": [{"name": a, "label": a, "weight": 1} for a in LABELS]}))
    events = tmp_path / "events.jsonl"
    out = tmp_path / "report"
    rc = main(["ab", "simulate", "--experiment", str(exp_path), "--log", str(log_path),
               "--server", f"grpc://127.0.0.1:{server.grpc_port}", "--events", str(events),
               "--requests", "60", "--items", "6", "--max-seconds", "60",
               "--report-dir", str(out)])
    assert rc == 0
    evs = read_events(str(events))
    assert sum(e["type"] == "exposure" for e in evs) == 60
    assert sum(e["type"] == "outcome" for e in evs) == 60
    report = json.loads((out / "ab_report.json").read_text())
    assert report["total_exposures"] == 60 and report["simulation"]["requests"] == 60
    assert set(report["arms"]) == set(LABELS)
    assert "vs_control" in report["arms"]["student"]
    assert 0 <= report["arms"]["ta"]["offline"]["auc"] <= 1
    html_text = (out / "ab_report.html").read_text()
    assert "data:image/png;base64," in html_text and "Sample-ratio" in html_text

    # The report command alone, with model sizes from models.config.
    rc = main(["ab", "report", "--experiment", str(exp_path), "--events", str(events),
               "--model-config", deployment["dep"].models_config_path,
               "--out", str(tmp_path / "r2")])
    assert rc == 0
    r2 = json.loads((tmp_path / "r2" / "ab_report.json").read_text())
    sizes = {a: r2["arms"][a]["model"]["params"] for a in LABELS}
    assert sizes["student"] < sizes["mid"] < sizes["ta"]

    # Bounded by time: a zero-ish budget stops by itself.
    rc = main(["ab", "simulate", "--experiment", str(exp_path), "--log", str(log_path),
               "--server", f"grpc://127.0.0.1:{server.grpc_port}",
               "--events", str(tmp_path / "e2.jsonl"), "--requests", "100000",
               "--max-seconds", "0.5", "--items", "6"])
    assert rc == 0
    n = sum(e["type"] == "exposure" for e in read_events(str(tmp_path / "e2.jsonl")))
    assert 0 < n < 100000


# ------------------------------------------------------------------------------ CLI

def test_cli_serving_config_then_matta_serve_subprocess(deployment, tmp_path):
    import signal
    import subprocess
    import sys

    from matta_tf.cli import main
    from serving import config as sc
    from serving.client import RestClient

    arms = deployment["arms"]
    rc = main(["serving", "config", "--model-name", "ranker2", "--out", str(tmp_path / "d"),
               "--max-batch-size", "128"]
              + [f"--arm={label}={path}" for label, path in arms.items()])
    assert rc == 0
    (model,) = sc.parse_models_config(str(tmp_path / "d" / "models.config"))
    assert model.name == "ranker2" and model.labels == {"student": 1, "mid": 2, "ta": 3}
    assert list(sc.parse_batching_parameters(
        str(tmp_path / "d" / "batching_parameters.txt")).allowed_batch_sizes) == [1, 8, 64, 128]
    assert main(["serving", "config", "--out", str(tmp_path / "e"), "--arm", "bad"]) == 2

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "matta_tf.cli", "serve", "--model-config",
         str(tmp_path / "d" / "models.config"), "--grpc-port", "0", "--rest-port", "0",
         "--no-warmup"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=repo)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        ports = dict(kv.split("=") for kv in line.split()[1:])
        client = RestClient(f"http://127.0.0.1:{ports['rest']}")
        out = client.predict_examples("ranker2", deployment["examples"][:3], label="student")
        assert out["probability"].shape == (3,)
        proc.send_signal(signal.SIGTERM)  # graceful shutdown, clean exit
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# ------------------------------------------------------------------------------ version policies

def _served_versions(client, name):
    return sorted(int(s["version"]) for s in client.model_status(name))


def test_latest_policy_polls_new_versions_and_keeps_serving(deployment, in_process_scores, tmp_path):
    """A models.config with TF Serving's default policy (latest 1), as for the Pusher's
    per-arm output: a newly pushed version is loaded by the poller and the old one
    unloaded; a half-copied or broken version is skipped and never takes traffic."""
    import shutil
    import time

    from serving import config as sc
    from serving.client import GrpcClient
    from serving.server import ModelRegistry, ModelServer, ServerOptions

    base = tmp_path / "pushed"
    shutil.copytree(deployment["arms"]["student"], base / "1")
    cfg = tmp_path / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "pushed" base_path: "{base}" '
                   'model_platform: "tensorflow" } }')
    (model,) = sc.parse_models_config(str(cfg))
    assert (model.policy, model.num_versions) == ("latest", 1)

    def scores(client):
        return np.asarray(client.predict_examples("pushed", deployment["examples"])["logit"])

    srv = ModelServer.from_config(str(cfg), ServerOptions(grpc_port=0, rest_port=-1,
                                                          poll_seconds=0.2)).start()
    try:
        with GrpcClient(f"127.0.0.1:{srv.grpc_port}") as client:
            assert _served_versions(client, "pushed") == [1]
            np.testing.assert_array_equal(scores(client).astype(np.float32),
                                          in_process_scores["student"]["logit"])
            (base / "2").mkdir()  # a push in progress: no saved_model.pb yet
            (base / "7").mkdir()
            (base / "7" / "saved_model.pb").write_bytes(b"not a SavedModel")  # broken push
            deadline = time.monotonic() + 30
            while "pushed/7" not in srv.registry.load_failures and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "pushed/7" in srv.registry.load_failures  # tried, failed, counted
            assert _served_versions(client, "pushed") == [1]  # and never served
            shutil.rmtree(base / "7")
            shutil.copytree(deployment["arms"]["ta"], base / "3")
            deadline = time.monotonic() + 60
            while _served_versions(client, "pushed") != [3] and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _served_versions(client, "pushed") == [3]
            np.testing.assert_array_equal(scores(client).astype(np.float32),
                                          in_process_scores["ta"]["logit"])
    finally:
        srv.stop()
    # Three complete versions on disk: "all" serves every one, "latest 2" the two highest.
    shutil.copytree(deployment["arms"]["mid"], base / "5")
    for policy, want in (("all {}", [1, 3, 5]), ("latest { num_versions: 2 }", [3, 5]),
                         ("latest { num_versions: 1 }", [5]),
                         ("specific { versions: 1 versions: 5 }", [1, 5])):
        cfg.write_text(f'model_config_list {{ config {{ name: "pushed" base_path: "{base}" '
                       f'model_version_policy {{ {policy} }} }} }}')
        assert sorted(ModelRegistry.load(str(cfg), warmup=False).versions["pushed"]) == want
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg.write_text(f'model_config_list {{ config {{ name: "none" base_path: "{empty}" }} }}')
    with pytest.raises(ValueError, match="has no version with a saved_model.pb"):
        ModelRegistry.load(str(cfg))
