"""`matta teacher fit` then `score` on generated Criteo-format rows; the table joins back."""
import random

import matta_tf  # noqa: F401


def test_fit_then_score_writes_joinable_table(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq
    from test_criteo import criteo_line

    from components.teacher import fit_teacher, score_teacher

    rng = random.Random(3)
    lines = [criteo_line(rng) for _ in range(300)]
    lines[7] = "bad\tline"
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    pattern = str(tmp_path / "*.tsv")
    fit = fit_teacher("criteo", pattern, str(tmp_path / "teacher"), steps=5, batch_size=64,
                      hash_buckets=1000, spec={"embedding_dim": 4, "cross_layers": 1,
                                               "mlp_widths": [8]})
    assert fit["rows"] == 299 and fit["skipped"] == 1
    out = score_teacher("criteo", pattern, fit["export_dir"], str(tmp_path / "t.parquet"))
    table = pq.read_table(out["output"]).to_pydict()
    assert len(table["impression_id"]) == 299 and "day_0.tsv:8" not in table["impression_id"]
    assert table["impression_id"][0] == "day_0.tsv:1"
    assert np.all(np.isfinite(table["teacher_logit"])) and np.std(table["teacher_logit"]) > 0
