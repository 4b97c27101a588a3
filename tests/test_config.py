"""RankerConfig: loading, TA expansion, Mix'n'Match specs, and clear errors."""
import json
import os
import re

import pytest

from matta_tf.config import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    RankerConfig,
    SubmodelSpec,
)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_YAML = os.path.join(HERE, "..", "matta_tf", "configs", "default_ranker.yaml")

YAML = """
features:
  numeric:
    - {name: I1, log1p: true, mean: 1.5, std: 0.8}
    - I2
  categorical:
    - {name: C1, vocabulary: [a, b, c]}
    - {name: C2, hash_buckets: 100}
    - {name: C3, num_ids: 10, oov_buckets: 2}
student: {embedding_dim: 4, cross_layers: 1, cross_ranks: [2], mlp_widths: [8, 4]}
ta_expansion: {embedding_dim: 2, cross_rank: 2, mlp_width: 2, extra_cross_layers: 1, extra_mlp_layers: 1}
loss_weights: {teacher: 0.5, ta_to_student: 2.0}
temperature: 2.0
warmup_steps: 10
"""


def test_yaml_json_round_trip_and_expansion(tmp_path):
    config = RankerConfig.from_yaml(YAML)
    assert config.ta == SubmodelSpec(embedding_dim=8, cross_layers=2, cross_ranks=(4, 4), mlp_widths=(16, 8, 8))
    assert config.features.numeric[1] == NumericFeature("I2")
    assert config.features.categorical[0].input_dim == 4  # 3 values + 1 OOV
    assert config.features.categorical[2].input_dim == 12
    assert config.loss_weights.teacher == 0.5 and config.loss_weights.student == 1.0
    path = tmp_path / "ranker.json"
    path.write_text(config.to_json())
    assert RankerConfig.from_json(str(path)) == config
    assert RankerConfig.from_file(str(path)) == config
    assert RankerConfig.from_dict(json.loads(config.to_json())).to_dict() == config.to_dict()


def test_default_config_file_loads():
    config = RankerConfig.from_yaml(DEFAULT_YAML)
    assert len(config.features.numeric) == 13 and len(config.features.categorical) == 26
    assert config.student.embedding_dim < config.ta.embedding_dim
    assert set(config.mixnmatch_specs(2)) == {"mix_1", "mix_2"}


def test_vocabulary_file(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("x\ny\nz\n")
    feature = CategoricalFeature("C", vocabulary_file=str(vocab), oov_buckets=3)
    assert feature.input_dim == 6
    with pytest.raises(ValueError, match="does not exist"):
        _ = CategoricalFeature("C", vocabulary_file=str(tmp_path / "nope.txt")).input_dim


def test_mixnmatch_specs_are_nested_between_student_and_ta():
    config = RankerConfig.from_yaml(YAML)
    specs = config.mixnmatch_specs(3)
    assert specs, "expected intermediate sizes"
    for spec in specs.values():
        config.check_spec(spec)
        assert config.student.embedding_dim <= spec.embedding_dim <= config.ta.embedding_dim
        assert len(config.student.mlp_widths) <= len(spec.mlp_widths) <= len(config.ta.mlp_widths)
    assert len(set(specs.values())) == len(specs)
    assert config.student not in specs.values() and config.ta not in specs.values()


def test_random_specs_are_nested():
    import numpy as np

    config = RankerConfig.from_yaml(YAML)
    rng = np.random.default_rng(0)
    specs = {config.random_spec(rng) for _ in range(50)}
    assert len(specs) > 10
    for spec in specs:
        config.check_spec(spec)
        assert spec.embedding_dim >= config.student.embedding_dim
        assert all(w >= s for w, s in zip(spec.mlp_widths, config.student.mlp_widths, strict=False))


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(ta={"embedding_dim": 2, "cross_layers": 1, "cross_ranks": [2], "mlp_widths": [8, 4]}),
     "student is larger than the ta: embedding_dim 4 > ta 2"),
    (lambda d: d.update(ta={"embedding_dim": 8, "cross_layers": 1, "cross_ranks": [2], "mlp_widths": [8]}),
     "student is larger than the ta: 2 mlp layers > ta 1"),
    (lambda d: d["student"].update(mlp_widths=[8, 0]), r"student: mlp_widths\[1\] must be a positive integer, got 0"),
    (lambda d: d["student"].update(embedding_dim=0), "embedding_dim must be a positive integer, got 0"),
    (lambda d: d["student"].update(mlp_widths=128), "student: mlp_widths must be a list of ints, got 128"),
    (lambda d: d["student"].update(cross_ranks=2), "student: cross_ranks must be a list of ints, got 2"),
    (lambda d: d.update(learning_rate=1.0), r"unknown key\(s\) \['learning_rate'\]"),
    (lambda d: d["features"]["categorical"].append({"name": "C9", "kind": "text"}),
     r"features.categorical\[3\]: unknown key\(s\) \['kind'\]"),
    (lambda d: d["features"]["categorical"].append({"name": "C9"}), "give exactly one of"),
    (lambda d: d["features"]["numeric"].append({"name": "C1"}), r"duplicate feature name\(s\) \['C1'\]"),
    (lambda d: d["features"]["numeric"].append({"name": "teacher_logit"}), "reserved"),
    (lambda d: d["features"]["numeric"].append({"name": "x", "std": 0}), "'x': std must be > 0"),
    (lambda d: d.update(temperature=0), "temperature must be > 0"),
    (lambda d: d.update(loss_weights={"teacher": -1}), "loss_weights.teacher must be a finite number >= 0"),
    (lambda d: d["student"].update(cross_ranks=[2, 2]), "cross_ranks has 2 entries but cross_layers is 1"),
    (lambda d: d.update(ta={"embedding_dim": 8, "cross_layers": 1, "mlp_widths": [8, 4]}),
     "low-rank"),
    (lambda d: d.update(mixnmatch_training="every"),
     r"mixnmatch_training must be one of \['sampled', 'all'\], got 'every'"),
    (lambda d: d.update(size_heads=True), r"size_heads must be one of \['shared', 'own', 'affine'\], got True"),
])
def test_invalid_configs_raise_clear_errors(mutate, message):
    import yaml

    data = yaml.safe_load(YAML)
    mutate(data)
    if "ta" in data:
        data.pop("ta_expansion", None)
    with pytest.raises(ValueError, match=message):
        RankerConfig.from_dict(data)


@pytest.mark.parametrize("field,value", [("mlp_widths", 128), ("mlp_widths", "128"), ("cross_ranks", 4),
                                         ("mlp_widths", {"a": 1})])
def test_submodel_spec_rejects_non_list_sizes(field, value):
    # A YAML scalar (`mlp_widths: 128`) or a string (which tuple() would split into digits)
    # is a ValueError naming the field, raised by SubmodelSpec itself, not a TypeError.
    kwargs = {"embedding_dim": 8, "cross_layers": 1, field: value}
    with pytest.raises(ValueError, match=rf"^{field} must be a list of ints, got {re.escape(repr(value))}$"):
        SubmodelSpec(**kwargs)


def test_check_spec_rejects_specs_outside_the_ta():
    config = RankerConfig.from_yaml(YAML)
    with pytest.raises(ValueError, match=r"spec is not nested in the ta: cross_ranks\[0\] 5 > ta 4"):
        config.check_spec(SubmodelSpec(embedding_dim=4, cross_layers=1, cross_ranks=(5,)))
    with pytest.raises(ValueError, match="mlp_widths"):
        config.check_spec(SubmodelSpec(embedding_dim=4, mlp_widths=(17,)))


def test_bad_files_and_text():
    with pytest.raises(ValueError, match="does not exist"):
        RankerConfig.from_yaml("missing_config.yaml")
    with pytest.raises(ValueError, match="invalid JSON"):
        RankerConfig.from_json("{not json\n")
    with pytest.raises(ValueError, match="needs 'features' and 'student'"):
        RankerConfig.from_yaml("temperature: 1.0\n")


def test_feature_spec_programmatic():
    spec = FeatureSpec(numeric=[NumericFeature("a")], categorical=[CategoricalFeature("b", hash_buckets=3)])
    assert spec.names == ["a", "b"]
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="no features"):
        FeatureSpec()


def test_mixnmatch_training_and_size_heads_options_round_trip():
    default = RankerConfig.from_yaml(YAML)
    assert default.mixnmatch_training == "sampled" and default.size_heads == "shared"  # defaults unchanged
    config = RankerConfig.from_yaml(YAML + "mixnmatch_train_specs: 2\nmixnmatch_training: all\nsize_heads: own\n")
    assert config.mixnmatch_training == "all" and config.size_heads == "own"
    assert RankerConfig.from_dict(json.loads(config.to_json())) == config
    assert config.to_dict()["size_heads"] == "own" and config.to_dict()["mixnmatch_training"] == "all"
    trained = config.trained_specs()
    assert list(trained) == ["student", "mix_1", "mix_2", "ta"]
    assert trained["student"] == config.student and trained["ta"] == config.ta
    assert {k: v for k, v in trained.items() if k.startswith("mix_")} == config.mixnmatch_specs(2)
