"""bench/recipe.py second-attempt stages (lr tuning, per-size fine-tune, TA shapes) run end
to end on a tiny budget and the summary renders; the TA shapes nest the Student at about
one parameter budget. Quality is not asserted (too few steps)."""
import matta_tf  # noqa: F401

# isort: split
import dataclasses
import json

import pytest

from bench import data as bench_data
from bench import quality, recipe
from matta_tf.config import RankerConfig
from matta_tf.extract import cost


def test_ta_shapes_nest_the_student_at_about_one_budget():
    base = RankerConfig.from_yaml(recipe.DEFAULT_CONFIG)
    shapes = recipe.ta_shapes(base.student)
    assert set(shapes) == {"default_mixed", "wider", "deeper", "larger_embedding"}
    params = {}
    for name, ta in shapes.items():
        config = dataclasses.replace(base, ta=ta, ta_expansion=None)  # validates nesting
        config.check_spec(config.student, "student")
        params[name] = cost(config, ta)["params"]
    s = shapes
    assert s["wider"].embedding_dim == s["deeper"].embedding_dim == base.student.embedding_dim
    assert s["larger_embedding"].embedding_dim > base.student.embedding_dim
    assert len(s["deeper"].mlp_widths) > len(s["wider"].mlp_widths) == len(base.student.mlp_widths)
    assert max(s["deeper"].mlp_widths) == max(base.student.mlp_widths)
    assert max(s["wider"].mlp_widths) > max(base.student.mlp_widths)
    assert s["larger_embedding"].mlp_widths == base.student.mlp_widths


def test_pick_twin_penalises_log_loss_excess():
    rows = {"a": {"auc": 0.74, "logloss": 0.62}, "b": {"auc": 0.739, "logloss": 0.60},
            "c": {"auc": 0.70, "logloss": 0.59}}
    assert recipe._pick_twin(rows) == "b"  # a: 0.74 - 0.03 < b: 0.739 - 0.01


@pytest.mark.slow
def test_second_attempt_stages_run_and_render(tmp_path, monkeypatch):
    data = bench_data.generated(1500, 400, small=True, log=lambda *_: None)
    base = RankerConfig.from_yaml(recipe.DEFAULT_CONFIG)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    settings = quality.TrainSettings(steps=4, batch_size=128, warmup_steps=1)
    setup = recipe.Setup(data=data, base=base, settings=settings, mix_sizes=1)
    monkeypatch.setattr(recipe, "FT_STEPS", (1, 2))
    monkeypatch.setattr(recipe, "FT_LRS", (1e-3,))
    params = {"w_teacher": 2.0, "mixnmatch_training": "all", "size_heads": "own"}
    kd = {"w_teacher": 1.0, "temperature": 1.0}
    lr = recipe.stage_lr(setup, "adam", params, kd, str(tmp_path / "lr_adam.json"), lrs=(1e-3, 2e-3))
    assert set(lr["best"]) == {"kd/student", "kd/mix_1", "kd/ta", "matta"}
    assert lr["best"]["matta"] in (1e-3, 2e-3)
    fts = recipe.stage_finetune_search(setup, "adam", params, kd, lr["best"], str(tmp_path / "finetune_search_adam.json"))
    assert fts["best"]["ft_steps"] in (1, 2) and fts["best"]["ft_lr"] == 1e-3
    assert {r["steps"] for r in fts["kd_fair"].values()} == {4, 5, 6}
    ftf = recipe.stage_finetune_final(setup, "adam", 1, params, kd, lr["best"], fts["best"],
                                      str(tmp_path / "finetune_adam.json"))
    methods = {(r["method"], r["size"]) for r in ftf["runs"]}
    assert methods == {(m, s) for m in ("matta", "matta_ft", "kd", "kd_fair") for s in ("student", "mix_1", "ta")}
    for r in ftf["runs"]:
        assert 0 <= r["auc"] <= 1 and r["seconds"] > 0
    # the fine-tuned model is not the extracted one
    got = {(r["method"], r["size"]): r["logloss"] for r in ftf["runs"]}
    assert got[("matta_ft", "student")] != got[("matta", "student")]
    monkeypatch.setattr(recipe, "ta_shapes", lambda student: {
        "wider": dataclasses.replace(base.ta, mlp_widths=(300, 150, 64)), "default_mixed": base.ta})
    shp = recipe.stage_ta_shape(setup, "adam", 1, params, 1e-3, str(tmp_path / "tashape_adam.json"))
    assert {r["shape"] for r in shp["runs"]} == {"wider", "default_mixed"}
    header = {"data": "generated", "command": "x", "rows": "r", "teacher": "t", "settings": "s",
              "sizes": ["student", "mix_1", "ta"]}
    md = recipe.markdown(str(tmp_path), header)
    for title in ("### Learning rate (adam", "fine-tune after extraction: search", "fine-tune after extraction: eval",
                  "Open question 2", "fine-tune / twin"):
        assert title in md, title
    json.dumps(md)
