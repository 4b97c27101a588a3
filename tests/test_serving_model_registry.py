"""serving.model_registry and serving.signatures on a deployment of two reference models:
TF Serving's lookup semantics and running a signature, in process (no sockets)."""
import shutil

import numpy as np
import pytest

import matta_tf  # noqa: F401  (before TensorFlow)

MODEL = "ranker"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    from serving import config as sc
    from serving import reference_model as rm
    from serving.examples import encode_rows

    root = tmp_path_factory.mktemp("registry")
    arms = {label: rm.export_reference_model(str(root / label), hidden=h, seed=i)
            for i, (label, h) in enumerate((("small", 4), ("big", 16)))}
    examples = encode_rows(rm.reference_rows(6, seed=1))
    dep = sc.write_deployment(str(root / "deploy"), MODEL, arms, warmup_examples=examples[:2],
                              warmup_batch_sizes=(1, 2))
    return {"dep": dep, "arms": arms, "examples": examples, "root": root}


@pytest.fixture(scope="module")
def registry(deployment):
    from serving.model_registry import ModelRegistry

    return ModelRegistry.load(deployment["dep"].models_config_path)


def _code(fn, *args, **kwargs):
    from serving.status import ServingError

    with pytest.raises(ServingError) as err:
        fn(*args, **kwargs)
    return err.value.code, err.value.message


def test_resolve_follows_tf_serving(registry):
    assert sorted(registry.versions[MODEL]) == [1, 2]
    assert all(v.warmup_requests == 2 for v in registry.versions[MODEL].values())
    assert registry.resolve(MODEL).version == 2  # latest
    assert registry.resolve(MODEL, version=1).version == 1
    assert registry.resolve(MODEL, label="small").version == 1
    assert _code(registry.resolve, "other") == ("NOT_FOUND",
                                                "Servable not found for request: Latest(other)")
    assert _code(registry.resolve, MODEL, version=7) == (
        "NOT_FOUND", f"Servable not found for request: Specific({MODEL}, 7)")
    assert _code(registry.resolve, MODEL, label="nope") == (
        "INVALID_ARGUMENT", "Unrecognized servable version label: nope")
    assert _code(registry.resolve, MODEL, 1, "small")[0] == "INVALID_ARGUMENT"
    for name in ("../ranker", "", "a/b", None):
        assert _code(registry.resolve, name)[0] == "INVALID_ARGUMENT"
    assert _code(registry.resolve, MODEL, label="../x")[0] == "INVALID_ARGUMENT"


def test_run_signature_checks_inputs_then_runs(registry, deployment):
    import tensorflow as tf

    from serving.signatures import run_signature

    loaded = registry.resolve(MODEL, label="big")
    out = run_signature(loaded, "serving_default", {"examples": deployment["examples"]})
    want = tf.saved_model.load(deployment["arms"]["big"]).signatures["serving_default"](
        examples=tf.constant(deployment["examples"]))
    np.testing.assert_array_equal(out["logit"], want["logit"].numpy())
    assert sorted(run_signature(loaded, "", {"examples": deployment["examples"][:1]},
                                ("probability",))) == ["probability"]
    cases = [
        (("nope", {"examples": [b""]}), "Serving signature name: \"nope\" not found"),
        (("serving_default", {}), "missing ['examples']"),
        (("serving_default", {"examples": [b""], "x": [1]}), "unexpected ['x']"),
        (("serving_default", {"examples": [1.0]}), "expected string values"),
        (("serving_default", {"examples": [[b""]]}), "expected rank 1"),
        (("predict_raw", {**{f"I{i}": [1.0, 2.0] for i in range(1, 5)},
                          **{f"C{i}": ["a"] for i in range(1, 4)}}),
         "equal 0th-dimension size"),
        (("predict_raw", {**{f"I{i}": ["x"] for i in range(1, 5)},
                          **{f"C{i}": ["a"] for i in range(1, 4)}}), "expected float32 values"),
    ]
    for args, needle in cases:
        code, message = _code(run_signature, loaded, *args)
        assert code == "INVALID_ARGUMENT" and needle in message, (args, message)
    code, message = _code(run_signature, loaded, "serving_default", {"examples": [b""]},
                          ("nope",))
    assert code == "INVALID_ARGUMENT" and "output tensor alias not found" in message


def test_garbage_examples_are_invalid_argument_not_a_decode_error(registry):
    from serving.signatures import run_signature

    loaded = registry.resolve(MODEL)
    for garbage in (b"\xff\xfe\x00garbage", b"not an example", b"\xff" * 100_000):
        code, message = _code(run_signature, loaded, "serving_default", {"examples": [garbage]})
        assert code == "INVALID_ARGUMENT", message
        assert "Could not parse example input" in message
        assert len(message) < 2100  # capped, whatever the op quotes


def test_serving_error_codes_and_message_cap():
    from serving.status import HTTP_STATUS, MAX_ERROR_MESSAGE_CHARS, ServingError

    assert ServingError("NOT_FOUND", "x").http_status == 404
    assert ServingError("RESOURCE_EXHAUSTED", "x").http_status == 429
    assert ServingError("NOT_A_CODE", "x").http_status == 500
    assert set(HTTP_STATUS) >= {"INVALID_ARGUMENT", "UNAVAILABLE", "INTERNAL"}
    err = ServingError("INVALID_ARGUMENT", "y" * 10_000)
    assert err.message.startswith("y" * MAX_ERROR_MESSAGE_CHARS)
    assert err.message.endswith(f"[{10_000 - MAX_ERROR_MESSAGE_CHARS} more characters]")


def test_refresh_loads_new_versions_and_keeps_broken_ones_out(deployment, tmp_path):
    from serving.model_registry import ModelRegistry

    base = tmp_path / "m"
    shutil.copytree(deployment["arms"]["small"], base / "1")
    cfg = tmp_path / "models.config"
    cfg.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
                   'model_version_policy { latest { num_versions: 2 } } } }')
    registry = ModelRegistry.load(str(cfg), warmup=False)
    assert registry.refresh() == {}
    (base / "4").mkdir()
    (base / "4" / "saved_model.pb").write_bytes(b"broken")
    assert registry.refresh() == {} and "m/4" in registry.load_failures
    shutil.rmtree(base / "4")
    shutil.copytree(deployment["arms"]["big"], base / "2")
    shutil.copytree(deployment["arms"]["small"], base / "3")
    assert registry.refresh() == {"m": {"loaded": [2, 3], "unloaded": [1]}}
    assert sorted(registry.versions["m"]) == [2, 3] and registry.resolve("m").version == 3
