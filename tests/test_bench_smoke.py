"""`make bench-smoke` in CI: the benchmark harness runs end to end on a tiny budget and
writes well-formed results. Quality is deliberately not asserted here (too few steps);
the full numbers come from `make bench`."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_smoke_writes_wellformed_results(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--mix-sizes", "1", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "generated-smoke" / "results.json").read_text())
    runs = result["quality"]["runs"]
    # 2 optimizers x (1 MatTA run read at 3 sizes + alone/kd at each of the 3 sizes), plus
    # the TFRS reference (Adam, Student size).
    assert len(runs) == 2 * (3 + 2 * 3) + 1
    assert {r["method"] for r in runs} == {"alone", "kd", "matta", "tfrs"}
    tfrs = [r for r in runs if r["method"] == "tfrs"]
    alone = [r for r in runs if (r["method"], r["size"], r["optimizer"]) == ("alone", "student", "adam")]
    assert tfrs[0]["optimizer"] == "adam" and tfrs[0]["size"] == "student"
    assert tfrs[0]["params"] == alone[0]["params"]  # the same architecture, built from plain TFRS layers
    assert result["data_options"]["rows"]["validation"] > 0
    assert {r["size"] for r in runs} == {"student", "mix_1", "ta"}
    for r in runs:
        assert 0.0 <= r["auc"] <= 1.0 and math.isfinite(r["logloss"]) and r["params"] > 0
    sizes = {r["size"]: r["params"] for r in runs}
    assert sizes["student"] < sizes["mix_1"] < sizes["ta"]
    assert set(result["quality"]["summary"]["q3"]) >= {"gain_matta_adam", "super_additive"}
    arms = result["throughput"]["arms"]
    assert set(arms) == {"ta_alone_adam", "matta_adam", "matta_shampoo"}
    assert all(a["examples_per_s"] > 0 for a in arms.values())
    ingestion = result["ingestion"]
    assert ingestion["counts"]["rows_in"] == ingestion["rows"]
    assert (out / "generated-smoke" / "summary.md").read_text().startswith("### Results")
    assert "TFRS reference (adam" in (out / "generated-smoke" / "summary.md").read_text()
    assert (out / "generated-smoke" / "frontier.png").stat().st_size > 1000

    # `--only report` re-renders from results.json with the serving benchmark's numbers (P2)
    # and re-runs nothing: the recorded commands and measurements stay as they were.
    shutil.copy(os.path.join(REPO, "bench", "results", "serving_latency.json"), out / "serving_latency.json")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--only", "report", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads((out / "generated-smoke" / "results.json").read_text())
    assert again["commands"] == result["commands"] and again["quality"] == result["quality"]
    summary = (out / "generated-smoke" / "summary.md").read_text()
    assert "P2 serving latency per student" in summary
    served = json.loads((out / "serving_latency.json").read_text())
    for name, st in served["students"].items():
        assert f"| {name} | {st['params']:,} | {st['madds_per_example']:,} | 1 |" in summary
