"""`matta teacher fit|score`: cross-fitted (honest) teacher logits, the no-cross-fit
production protocol, and the table that joins back."""
import json
import random

import numpy as np
import pyarrow as pa
import pytest

import matta_tf  # noqa: F401

TINY = {"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [8]}


def _planted(n, seed=0, values=300, repeats=None, random_labels=True):
    """Rows keyed by impression id with a categorical feature `u` (each value appearing
    `repeats` times when given), a second categorical `g` and one numeric `x`. Labels are
    independent coin flips: nothing generalises, so a held-out AUC above 0.5 would be leakage."""
    rng = np.random.default_rng(seed)
    u = (np.repeat(np.arange(n // repeats), repeats) if repeats else rng.integers(0, values, n))
    rng.shuffle(u)
    x = rng.normal(size=n)
    label = rng.integers(0, 2, n) if random_labels else (x + rng.normal(size=n) > 0).astype(int)
    return pa.table({"impression_id": [f"r{seed}_{i}" for i in range(n)],
                     "label": pa.array(label, pa.int64()),
                     "x": pa.array(x, pa.float64()),
                     "u": [f"u{v}" for v in u],
                     "g": [f"g{v % 7}" for v in u]})


def test_cross_fitting_never_scores_a_row_with_a_model_that_trained_on_it(tmp_path):
    from components.teacher import fit_teacher_table, score_teacher_table

    fitted, new = _planted(600, seed=1), _planted(200, seed=2)
    trained_on = {}
    metrics = fit_teacher_table(
        fitted, ["x"], ["u", "g"], str(tmp_path / "t"), steps=5, batch_size=64, folds=3, spec=TINY,
        on_fold_trained=lambda k, t: trained_on.__setitem__(k, set(t.column("impression_id").to_pylist())))
    assert metrics["folds"] == 3 and set(trained_on) == {0, 1, 2}
    ids = fitted.column("impression_id").to_pylist()
    # Every fitted row was left out of exactly one fold model's training rows.
    for i in ids:
        assert sum(i not in trained_on[k] for k in range(3)) == 1
    logits, scored_by, info = score_teacher_table(fitted, str(tmp_path / "t"))
    assert info["rows_out_of_fold"] == 600 and info["rows_ensemble"] == 0
    for i, k in zip(ids, scored_by, strict=True):
        assert k >= 0 and i not in trained_on[k]
    # The stored out-of-fold metrics are those of the logits score gives the fitted rows.
    assert info["out_of_fold_metrics"]["auc"] == pytest.approx(metrics["oof_auc"], abs=1e-4)
    stored = json.loads((tmp_path / "t" / "teacher_metrics.json").read_text())
    assert stored["oof_auc"] == metrics["oof_auc"] and stored["cross_fitted"] is True

    # New rows: the mean of the fold models, which is also the SavedModel's serving_default.
    new_logits, new_by, new_info = score_teacher_table(new, str(tmp_path / "t"))
    assert (new_by == -1).all() and new_info["rows_ensemble"] == 200
    import tensorflow as tf

    from matta_tf.export import make_examples

    serve = tf.saved_model.load(str(tmp_path / "t")).signatures["serving_default"]
    served = serve(examples=tf.constant(make_examples(new.select(["x", "u", "g"]).slice(0, 20).to_pydict())))
    np.testing.assert_allclose(served["logit"].numpy(), new_logits[:20], rtol=1e-5, atol=1e-5)
    # Fold assignment is a function of the id alone: reproducible across runs and tables.
    again = score_teacher_table(fitted.slice(100, 50), str(tmp_path / "t"))[1]
    np.testing.assert_array_equal(again, scored_by[100:150])


def test_random_labels_memorised_in_sample_but_not_out_of_fold(tmp_path):
    """Each `u` value appears 3 times with independent random labels: a model can fit the
    rows it saw (in-sample AUC well above 0.5) but out-of-fold logits carry no information."""
    from components.teacher import fit_teacher_table

    table = _planted(1500, seed=3, repeats=3)
    m = fit_teacher_table(table, ["x"], ["u", "g"], str(tmp_path / "t"), steps=300, batch_size=128, folds=4,
                          min_count=1, spec={"embedding_dim": 8, "cross_layers": 1, "mlp_widths": [32]},
                          learning_rate=1e-2)
    assert m["in_sample_auc"] > 0.9, m  # measured 0.997
    assert abs(m["oof_auc"] - 0.5) < 0.05, m  # measured 0.500


def test_no_cross_fit_scores_later_logs_and_refuses_its_own_rows(tmp_path):
    from components.teacher import TeacherLeakError, fit_teacher_table, score_teacher_table

    earlier = _planted(400, seed=4, random_labels=False)
    later = _planted(300, seed=5, random_labels=False)
    m = fit_teacher_table(earlier, ["x"], ["u", "g"], str(tmp_path / "t"), steps=40, batch_size=64,
                          folds=1, spec=TINY, learning_rate=1e-2)
    assert m["cross_fitted"] is False and "oof_auc" not in m
    logits, by, info = score_teacher_table(later, str(tmp_path / "t"))
    assert (by == -1).all() and np.isfinite(logits).all()
    assert info["ensemble_metrics"]["auc"] > 0.6  # the planted signal (label ~ x) generalises
    with pytest.raises(TeacherLeakError, match="1 of 301 rows to score were in this teacher's training data"):
        score_teacher_table(pa.concat_tables([later, earlier.slice(7, 1)]), str(tmp_path / "t"))


def test_fit_then_score_files(tmp_path):
    import pyarrow.parquet as pq
    from test_criteo import criteo_line

    from components.teacher import fit_teacher, score_teacher

    rng = random.Random(3)
    lines = [criteo_line(rng) for _ in range(300)]
    lines[7] = "bad\tline"
    (tmp_path / "day_0.tsv").write_text("\n".join(lines) + "\n")
    pattern = str(tmp_path / "*.tsv")
    fit = fit_teacher("criteo", pattern, str(tmp_path / "teacher"), steps=5, batch_size=64, folds=2, spec=TINY)
    assert fit["rows"] == 299 and fit["skipped"] == 1 and fit["folds"] == 2
    assert 0 <= fit["oof_auc"] <= 1 and fit["sources"] == [str(tmp_path / "day_0.tsv")]
    out = score_teacher("criteo", pattern, fit["export_dir"], str(tmp_path / "t.parquet"))
    assert out["rows_out_of_fold"] == 299
    table = pq.read_table(out["output"]).to_pydict()
    assert len(table["impression_id"]) == 299 and "day_0.tsv:8" not in table["impression_id"]
    assert table["impression_id"][0] == "day_0.tsv:1"
    assert np.all(np.isfinite(table["teacher_logit"])) and np.std(table["teacher_logit"]) > 0


def test_cli_no_cross_fit_protocol(tmp_path):
    import pyarrow.parquet as pq
    from test_criteo import criteo_line

    from matta_tf.cli import main

    rng = random.Random(4)
    (tmp_path / "day_0.tsv").write_text("\n".join(criteo_line(rng) for _ in range(200)) + "\n")
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "day_1.tsv").write_text("\n".join(criteo_line(rng) for _ in range(50)) + "\n")
    pattern = str(tmp_path / "*.tsv")
    # CLI: the production protocol - fit on earlier logs without cross-fitting, score later
    # logs; scoring the earlier logs with it is refused.
    assert main(["teacher", "fit", "--logs", pattern, "--export-dir", str(tmp_path / "full"),
                 "--no-cross-fit", "--steps", "3", "--batch-size", "64"]) == 0
    assert main(["teacher", "score", "--logs", str(tmp_path / "later" / "*.tsv"), "--teacher",
                 str(tmp_path / "full"), "--output", str(tmp_path / "later.parquet")]) == 0
    assert pq.read_table(tmp_path / "later.parquet").num_rows == 50
    assert main(["teacher", "score", "--logs", pattern, "--teacher", str(tmp_path / "full"),
                 "--output", str(tmp_path / "leak.parquet")]) == 2
    assert not (tmp_path / "leak.parquet").exists()


def test_derived_ids_are_relative_to_the_input_base_like_examplegen(tmp_path):
    from test_criteo import criteo_line

    from components import logschema
    from components.teacher import read_valid_rows

    rng = random.Random(5)
    for day in (1, 2):
        (tmp_path / f"day={day}").mkdir()
        (tmp_path / f"day={day}" / "part-0.tsv").write_text("\n".join(criteo_line(rng) for _ in range(3)) + "\n")
    schema = logschema.load_log_schema("criteo")
    table, _ = read_valid_rows(schema, str(tmp_path / "day=*" / "part-0.tsv"))
    ids = table.column("impression_id").to_pylist()
    assert ids[0] == "day=1/part-0.tsv:1" and ids[3] == "day=2/part-0.tsv:1" and len(set(ids)) == 6
    expected = logschema.relative_source(str(tmp_path / "day=2" / "part-0.tsv"), str(tmp_path)) + ":1"
    assert ids[3] == expected
