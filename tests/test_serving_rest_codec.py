"""The REST wire format of `matta serve`, without a server: JSON body limits and parsing."""
import json
import random

import pytest

import matta_tf  # noqa: F401  (before TensorFlow)


def _reference_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max([_reference_depth(v) for v in value] or [0])
    if isinstance(value, dict):
        return 1 + max([_reference_depth(v) for v in value.values()] or [0])
    return 0


def _random_json(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth > 8 or r < 0.3:  # strings full of brackets, quotes and backslashes
        return rng.choice(["a[b", "\\", '\\"[', '{"}', "x" * rng.randint(0, 5), 1, None,
                           "\u00e9]", "\\\\\\", "]]}}"])
    if r < 0.65:
        return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k[", 'q"{', "z\\"]) + str(i): _random_json(rng, depth + 1)
            for i in range(rng.randint(0, 3))}


def test_json_nesting_depth_matches_the_parsed_depth():
    from serving.rest_codec import json_nesting_depth

    rng = random.Random(0)
    for _ in range(150):
        value = _random_json(rng)
        body = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode("utf-8")
        want = _reference_depth(value)
        # Tiny chunks put escapes and quotes across chunk boundaries.
        for chunk in (5, 1 << 18):
            assert json_nesting_depth(body, 10 ** 9, chunk) == want, (body, chunk)


def test_json_nesting_depth_is_bounded_in_time_and_memory():
    import time
    import tracemalloc

    from serving.rest_codec import json_nesting_depth

    cases = {
        b"[" * 4_000_000 + b"]" * 4_000_000: None,  # stops once over the limit
        b'{"instances": [' + b",".join([b'""'] * 1_000_000) + b"]}": 2,
        b'["' + b'\\"' * 2_000_000 + b'"]': 1,  # one long string of escaped quotes
    }
    for body, want in cases.items():
        tracemalloc.start()
        start = time.perf_counter()
        depth = json_nesting_depth(body)
        assert depth > 64 if want is None else depth == want
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 32 * 1024 * 1024, peak  # chunks, not copies of the body
        assert elapsed < 5.0


def test_parse_json_body_answers_invalid_argument():
    from serving.rest_codec import parse_json_body
    from serving.status import ServingError

    assert parse_json_body(b'{"instances": [[1, 2]]}') == {"instances": [[1, 2]]}
    for body, needle in ((b"[" * 65 + b"]" * 65, "nesting deeper than 64"),
                         (b"[" * 100_000, "nesting deeper than 64"),
                         (b"\xff{}", "JSON Parse error"),
                         (b"[" + b"9" * 5000 + b"]", "JSON Parse error"),
                         (b'{"a": ', "JSON Parse error")):
        with pytest.raises(ServingError) as err:
            parse_json_body(body)
        assert err.value.code == "INVALID_ARGUMENT" and needle in err.value.message
    assert parse_json_body(b"[" * 64 + b"]" * 64) is not None


def test_batch_size_limit_applies_before_decoding():
    import tensorflow as tf

    from serving.rest_codec import parse_rest_predict
    from serving.status import ServingError

    spec = {"examples": tf.TensorSpec([None], tf.string)}
    inputs, form = parse_rest_predict({"instances": ["a", "b"]}, spec, max_batch_size=2)
    assert form == "row" and inputs == {"examples": ["a", "b"]}
    for body in ({"instances": ["a", "b", "c"]}, {"inputs": ["a", "b", "c"]},
                 {"inputs": {"examples": ["a", "b", "c"]}}):
        with pytest.raises(ServingError, match="Batch size 3 exceeds max batch size 2") as err:
            parse_rest_predict(body, spec, max_batch_size=2)
        assert err.value.code == "INVALID_ARGUMENT"


def test_row_and_columnar_formats_round_trip():
    import numpy as np
    import tensorflow as tf

    from serving.rest_codec import format_rest_predict, parse_rest_predict
    from serving.status import ServingError

    specs = {"examples": tf.TensorSpec([None], tf.string)}
    inputs, form = parse_rest_predict({"instances": [{"b64": "eA=="}, "y"]}, specs)
    assert (inputs, form) == ({"examples": [b"x", "y"]}, "row")
    inputs, form = parse_rest_predict({"inputs": {"examples": [{"b64": "eA=="}]}}, specs)
    assert (inputs, form) == ({"examples": [b"x"]}, "columnar")
    two = {"a": tf.TensorSpec([None], tf.float32), "b": tf.TensorSpec([None], tf.string)}
    inputs, _ = parse_rest_predict({"instances": [{"a": 1, "b": "u"}, {"a": 2, "b": "v"}]}, two)
    assert inputs == {"a": [1, 2], "b": ["u", "v"]}
    for body, needle in (({"instances": [{"a": 1}]}, "do not match"),
                         ({"instances": [{"a": "1", "b": "u"}]}, "expected a number"),
                         ({"instances": [{"a": 1, "b": 2}]}, "expected a string"),
                         ({"instances": [{"a": 1, "b": {"b64": "!!"}}]}, "invalid base64"),
                         ({"instances": []}, "non-empty"),
                         ({"instances": [], "inputs": []}, "either"),
                         ({"signature_name": "x"}, "Missing 'inputs' or 'instances'"),
                         ({"instances": [1], "extra": 1}, "unexpected keys"),
                         ([1, 2], "JSON object")):
        with pytest.raises(ServingError, match=needle):
            parse_rest_predict(body, two)

    outputs = {"logit": np.array([0.5, -1.0], np.float32),
               "probability": np.array([0.6, 0.3], np.float32)}
    assert format_rest_predict(outputs, "row") == {"predictions": [
        {"logit": 0.5, "probability": pytest.approx(0.6)},
        {"logit": -1.0, "probability": pytest.approx(0.3)}]}
    assert format_rest_predict(outputs, "columnar")["outputs"]["logit"] == [0.5, -1.0]
    assert format_rest_predict({"logit": outputs["logit"]}, "row") == {"predictions": [0.5, -1.0]}
    assert format_rest_predict({"id_bytes": np.array([b"\xff"], object)}, "columnar") == {
        "outputs": [{"b64": "/w=="}]}
