"""serving.latency: in-process and served (a real `matta serve` subprocess on loopback)
latency of exported students; a server that cannot start is a one-line error."""
import os

import numpy as np
import pytest

import matta_tf  # noqa: F401
from tests.conftest_serving import build_students


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from serving.examples import encode_rows

    root = tmp_path_factory.mktemp("latency")
    arms, rows, _ = build_students(str(root / "exports"))
    return arms, encode_rows(rows)


def test_inprocess_and_served_latency(exports):
    from serving.latency import inprocess_latency, served_latency

    arms, examples = exports
    label, path = next(iter(arms.items()))
    local = inprocess_latency(path, examples, batch=4, calls=15, warmup=2)
    assert local["calls"] == 15 and local["batch"] == 4
    assert 0 < local["p50_ms"] <= local["p99_ms"] < 10_000
    served = served_latency({label: path, "other": path}, examples, batch=4, calls=10, warmup=2)
    assert set(served) == {label, "other"}
    for stats in served.values():
        assert stats["calls"] == 10 and 0 < stats["p50_ms"] <= stats["p99_ms"] < 10_000
        assert np.isfinite(stats["mean_ms"])


def test_server_that_cannot_start_is_an_error_with_its_message(tmp_path):
    from serving.latency import start_server

    bad = tmp_path / "models.config"
    bad.write_text("model_config_list { config { name: 'x' base_path: '" + os.fspath(tmp_path / "none")
                   + "' model_platform: 'tensorflow' } }")
    with pytest.raises(RuntimeError, match="did not become ready"):
        start_server(str(bad), timeout_s=120)


def test_bad_arguments():
    from serving.latency import latency_stats, request_batch

    with pytest.raises(ValueError, match="at least one"):
        request_batch([], 4)
    with pytest.raises(ValueError, match="no calls"):
        latency_stats([], 4)
    assert request_batch([b"a", b"b"], 5) == [b"a", b"b", b"a", b"b", b"a"]
