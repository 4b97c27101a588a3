"""Mix'n'Match extraction: standalone models equal the nested forward, and are smaller."""
import matta_tf  # noqa: F401

# isort: split
import numpy as np
import pytest
import tensorflow as tf
from helpers import randomised_model

from matta_tf.config import RankerConfig, SubmodelSpec
from matta_tf.datasets import (
    SyntheticLogConfig,
    default_feature_spec,
    generate_click_logs,
    table_to_dataset,
)
from matta_tf.extract import cost, count_params, extract
from matta_tf.model import MatTARanker, StandaloneRanker

LOGS = SyntheticLogConfig(num_numeric=3, num_categorical=4, cardinalities=(10, 20, 40, 300), num_crosses=3,
                          vocabulary_max_size=100)  # the 300-value feature is hashed
FEATURES = default_feature_spec(LOGS)

CONFIGS = {
    "full_rank": RankerConfig(features=FEATURES, student=SubmodelSpec(3, 1, (), (12,)),
                              ta=SubmodelSpec(6, 2, (), (24, 10)), cross_diag_scale=0.1),
    "low_rank": RankerConfig(features=FEATURES, student=SubmodelSpec(2, 2, (3, 2), (8, 4)),
                             ta=SubmodelSpec(5, 3, (6, 5, 4), (20, 9, 7))),
}
MIXED = {  # per-layer choices that are not an interpolation
    "full_rank": SubmodelSpec(5, 2, (), (13,)),
    "low_rank": SubmodelSpec(4, 2, (6, 2), (9, 9, 3)),
}


@pytest.fixture(scope="module")
def features():
    table = generate_click_logs(256, seed=4, config=LOGS)
    return next(iter(table_to_dataset(table, FEATURES, 256)))[0]


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_extracted_models_equal_nested_forward(kind, features):
    config = CONFIGS[kind]
    model = randomised_model(config)
    specs = {"student": config.student, "ta": config.ta, "mixed": MIXED[kind], **config.mixnmatch_specs(2),
             "random": config.random_spec(np.random.default_rng(1))}
    ta_params = cost(config, config.ta)["params"]
    for name, spec in specs.items():
        small = extract(model, spec, name=name)
        got = small(features).numpy()
        want = model.submodel(spec, features).numpy()
        assert got.shape == (256,)
        assert np.max(np.abs(got - want)) <= 1e-5, (kind, name)
        assert np.std(want) > 0.01  # a non-trivial function of the input
        c = cost(config, spec)
        assert count_params(small) == c["params"], (kind, name)
        if spec != config.ta:
            assert c["params"] < ta_params
    # Student and TA extractions agree with the model's own two heads.
    out = model(features)
    np.testing.assert_allclose(extract(model, config.student)(features).numpy(), out["student"].numpy(), atol=1e-5)
    np.testing.assert_allclose(extract(model, config.ta)(features).numpy(), out["ta"].numpy(), atol=1e-5)


@pytest.mark.parametrize("size_heads", ["own", "affine"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_size_head_extraction_is_exact(kind, size_heads, features):
    """Trained sizes with their own head / calibration extract exactly, at the plain
    architecture's parameter count; other specs keep the shared head."""
    import dataclasses

    config = dataclasses.replace(CONFIGS[kind], mixnmatch_train_specs=2, size_heads=size_heads)
    model = randomised_model(config)
    shared = dataclasses.replace(config, size_heads="shared")
    plain = MatTARanker(shared)
    plain.network.set_weights([w for w in model.network.get_weights()][:len(plain.network.weights)])
    for name, spec in {**config.trained_specs(), "mixed": MIXED[kind]}.items():
        small = extract(model, spec, name=name)
        got, want = small(features).numpy(), model.submodel(spec, features).numpy()
        assert np.max(np.abs(got - want)) <= 1e-5, (kind, size_heads, name)
        assert count_params(small) == cost(config, spec)["params"]
        differs = np.max(np.abs(want - plain.submodel(spec, features).numpy())) > 1e-3
        # The size heads are in use for trained sizes (except the TA under "own") only.
        assert differs == (name != "mixed" and not (size_heads == "own" and name == "ta")), name
    out = model(features)
    np.testing.assert_allclose(extract(model, config.student)(features).numpy(), out["student"].numpy(), atol=1e-5)


def test_cost_numbers_by_hand():
    config = CONFIGS["low_rank"]
    spec = config.student  # d=2: width w = 3 + 4*2 = 11
    table_rows = sum(f.input_dim for f in FEATURES.categorical)
    w = 11
    params = table_rows * 2 + (2 * w * 3 + w) + (2 * w * 2 + w) + (w * 8 + 8) + (8 * 4 + 4) + (4 + 1)
    madds = (2 * w * 3 + w) + (2 * w * 2 + w) + w * 8 + 8 * 4 + 4
    assert cost(config, spec) == {"params": params, "madds_per_example": madds}
    sizes = [cost(config, s)["madds_per_example"]
             for s in (config.student, *config.mixnmatch_specs(2).values(), config.ta)]
    assert sizes == sorted(sizes)


def test_extract_rejects_specs_outside_the_ta():
    config = CONFIGS["full_rank"]
    model = MatTARanker(config)
    with pytest.raises(ValueError, match="not nested in the ta"):
        extract(model, SubmodelSpec(7, 1, (), (12,)))
    with pytest.raises(ValueError, match="needs a MatTARanker"):
        extract(extract(model, config.student), config.student)


def test_standalone_keras_serialization(tmp_path, features):
    config = CONFIGS["low_rank"]
    small = extract(randomised_model(config), MIXED["low_rank"], name="mixed")
    want = small(features).numpy()
    clone = StandaloneRanker.from_config(small.get_config())
    clone(features)
    clone.set_weights(small.get_weights())
    np.testing.assert_array_equal(clone(features).numpy(), want)
    path = str(tmp_path / "small.keras")
    small.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded, StandaloneRanker) and loaded.spec == MIXED["low_rank"]
    np.testing.assert_allclose(loaded(features).numpy(), want, atol=1e-6)


def test_ranker_cost_cli(tmp_path, capsys):
    import json

    from matta_tf.cli import main

    path = tmp_path / "ranker.json"
    path.write_text(CONFIGS["low_rank"].to_json())
    assert main(["ranker-cost", "--config", str(path), "--mixnmatch", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["student", "mix_1", "ta"]
    assert rows[0]["params"] == cost(CONFIGS["low_rank"], CONFIGS["low_rank"].student)["params"]
    assert rows[0]["params"] < rows[1]["params"] < rows[2]["params"]
    assert main(["ranker-cost", "--config", str(tmp_path / "missing.yaml")]) == 2
