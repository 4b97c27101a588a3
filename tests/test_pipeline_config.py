"""PipelineConfig is validated when it is loaded: a typo fails `matta pipeline compile`
before any component runs, with one line naming the key."""
from __future__ import annotations

import pytest
import yaml

from matta_tf.cli import main
from pipelines.config import PipelineConfig

BASE = {"data_root": "data", "pipeline_root": "out"}


@pytest.mark.parametrize("extra, message", [
    ({"ranker": {"studnet": {"embedding_dim": 4}}}, "pipeline config: ranker: ranker config: unknown key(s) ['studnet']"),
    ({"ranker": {"student": {"embedding_dim": 4, "cross_layers": 1, "mlp_widths": 128}}},
     "pipeline config: ranker:"),
    ({"ranker": {"warmup_steps": -1}}, "pipeline config: ranker: warmup_steps must be an int >= 0"),
    ({"ranker": {"features": {}}}, "'features' is derived from the Transform output"),
    ({"optimizer": "auto"}, "pipeline config: optimizer: 'auto' is not one of shampoo, adam"),
    ({"batch_size": "256"}, "pipeline config: batch_size must be int, got '256'"),
    ({"train_steps": 1e3}, "pipeline config: train_steps must be int"),
    ({"enable_cache": 1}, "pipeline config: enable_cache must be bool"),
    ({"learning_rate": True}, "pipeline config: learning_rate must be float"),
    ({"budgets": [{"max_madds": 1000}]}, "budgets pick students on the 'validation' split, but split.names"),
    ({"budgets": [{"max_madds": 1000}], "split": {"names": ["train", "validation", "eval"]},
      "budget_search": {"selection_split": "eval"}}, "budget_search.selection_split 'eval'"),
    ({"budgets": [{"max_flops": 1}]}, "pipeline config: budgets[0]: give exactly one of"),
    ({"budgets": [{"max_p99_ms": 2, "batch": 8}], "split": {"names": ["train", "validation", "eval"]}},
     "budgets[0] is a p99 at batch 8, but the search times candidates at budget_search.latency_batch 64"),
    ({"budgets": [{"max_madds": 5, "label": "ta"}], "split": {"names": ["train", "validation", "eval"]}},
     "budget labels ['ta'] repeat or equal an arm"),
    ({"budget_search": {"grid": 3}}, "pipeline config: budget_search: unknown key(s) ['grid']"),
    ({"budget_search": {"confidence": 1.5}}, "confidence must be in [0.5, 1)"),
])
def test_bad_configs_fail_on_load(extra, message):
    with pytest.raises(ValueError) as err:
        PipelineConfig.from_dict({**BASE, **extra})
    assert message in str(err.value)


def test_budgets_load_with_their_labels():
    config = PipelineConfig.from_dict({**BASE, "split": {"names": ["train", "validation", "eval"],
                                                         "buckets": [8, 1, 2]},
                                       "budgets": [{"max_madds": 60000}, {"max_p99_ms": 1.5, "batch": 64},
                                                   {"max_params": 2e5, "label": "small"}]})
    assert config.budget_labels() == ["madds_60000", "p99_1p5ms", "small"]


def test_good_config_loads():
    config = PipelineConfig.from_dict({**BASE, "ranker": {"student": {"embedding_dim": 8, "mlp_widths": [32]}},
                                       "optimizer": "adam", "learning_rate": 1})
    assert config.ranker["student"]["embedding_dim"] == 8 and config.optimizer == "adam"


def test_ranker_typo_fails_pipeline_compile_in_one_line(tmp_path, capsys):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**BASE, "ranker": {"student": {"embedding_dim": 4}, "temprature": 2}}))
    assert main(["pipeline", "compile", "--runner", "airflow", "--config", str(path),
                 "--output", str(tmp_path / "dag.py")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("matta pipeline compile: error: pipeline config: ranker:")
    assert "temprature" in err[0] and not (tmp_path / "dag.py").exists()


def test_the_commented_example_config_loads_and_names_every_key():
    import dataclasses
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "pipelines", "configs", "example.yaml")
    config = PipelineConfig.from_file(path)
    with open(path) as f:
        keys = set(yaml.safe_load(f))
    assert keys == {f.name for f in dataclasses.fields(PipelineConfig)}  # the example documents every key
    defaults = PipelineConfig(data_root="d", pipeline_root="p")
    for key in keys - {"data_root", "pipeline_root", "input_pattern", "metadata_path", "serving_dir",
                       "split", "ranker"}:
        assert getattr(config, key) == getattr(defaults, key), key  # and says the defaults
    from components.trainer_config import DEFAULT_RANKER

    assert config.ranker == DEFAULT_RANKER  # the ranker block shows the Trainer's defaults
    assert config.split == {"method": "hash", "names": ["train", "eval"], "buckets": [4, 1]}  # ExampleGen's


def test_the_trainer_gets_the_distribution_section(tmp_path):
    """The config's `distribution:` reaches the Trainer's run_fn (custom_config)."""
    import json

    from pipelines.pipeline import create_components

    config = PipelineConfig.from_dict({"data_root": str(tmp_path), "pipeline_root": str(tmp_path / "out"),
                                       "distribution": {"strategy": "mirrored"}})
    trainer = next(c for c in create_components(config) if c.id == "Trainer")
    custom = trainer.exec_properties["custom_config"]
    custom = json.loads(custom) if isinstance(custom, str) else custom
    assert custom["distribution"]["strategy"] == "mirrored"
