"""The fused (vectorised) serving input path equals the per-feature export.

A small ranker is exported both ways in a tmp dir - once on raw features (the model's own
StringLookup / Hashing / num_ids / normalisation) and once pipeline-like, behind a TFT
layer made by `components.transform_module.preprocessing_fn` - and the SavedModels'
outputs are compared on the same inputs (missing values left out and as empty lists,
unseen values, numeric special points).
"""
import matta_tf  # noqa: F401

# isort: split
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from matta_tf.config import (
    CategoricalFeature,
    FeatureSpec,
    NumericFeature,
    RankerConfig,
    SubmodelSpec,
)
from matta_tf.export import export_saved_model, make_examples
from matta_tf.extract import extract
from matta_tf.model import MatTARanker

TOL = 1e-6


def _randomised(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.network.weights:
        w.assign(rng.normal(0, 0.3, w.shape).astype(np.float32))
    return model


def _logits(loaded, name, **inputs):
    return loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})["logit"].numpy()


def _info(loaded) -> dict:
    return json.loads(loaded.input_path_info().numpy())


RAW_FEATURES = FeatureSpec(
    numeric=(NumericFeature("x", mean=0.5, std=2.0, log1p=True, fill_value=1.5),
             NumericFeature("y")),
    categorical=(CategoricalFeature("color", vocabulary=("red", "green", "blue"), oov_buckets=2),
                 CategoricalFeature("shape", vocabulary=("square", "round"), oov_buckets=1),
                 CategoricalFeature("tag", hash_buckets=7),
                 CategoricalFeature("item", num_ids=5, oov_buckets=1),
                 CategoricalFeature("slot", num_ids=4, oov_buckets=0)))
RAW_ROWS = {
    "x": [0.5, None, -3.0, 1e6, 0.0, float("nan"), 2.0, -1e-7],
    "y": [1.0, 2.0, None, -4.0, 0.0, 3.0, None, 7.0],
    "color": ["red", "blue", None, "purple", "", "green", "Red", "blue"],
    "shape": ["round", None, "triangle", "square", "square", "", "round", "x"],
    "tag": ["a", "b", None, "a", "zzz", "", "q", "r"],
    "item": [0, 4, 5, -1, None, 3, 99, 2],
    "slot": [0, 3, 4, -2, 1, None, 2, 10],
}


def _raw_model():
    config = RankerConfig(features=RAW_FEATURES, student=SubmodelSpec(3, 1, (), (6,)), warmup_steps=0)
    return extract(_randomised(MatTARanker(config), 0), config.student)


def test_fused_export_equals_per_feature_on_raw_features(tmp_path):
    student = _raw_model()
    fused = tf.saved_model.load(export_saved_model(student, str(tmp_path / "f"), RAW_FEATURES,
                                                   input_path="fused"))
    per = tf.saved_model.load(export_saved_model(student, str(tmp_path / "p"), RAW_FEATURES,
                                                 input_path="per_feature"))
    assert _info(fused)["input_path"] == "fused" and _info(per)["input_path"] == "per_feature"
    assert set(fused.signatures) == {"serving_default", "predict_raw", "predict_ids"}
    assert set(per.signatures) == {"serving_default", "predict_raw"}
    examples = make_examples(RAW_ROWS)
    want = _logits(per, "serving_default", examples=examples)
    got = _logits(fused, "serving_default", examples=examples)
    assert np.max(np.abs(want - got)) <= TOL
    np.testing.assert_allclose(got, student({k: tf.constant(
        [np.nan if v is None else v for v in vals] if k in ("x", "y") else
        [-1 if v is None else v for v in vals] if k in ("item", "slot") else
        ["" if v is None else v for v in vals]) for k, vals in RAW_ROWS.items()}).numpy(), atol=TOL)
    raw = {k: [np.nan if v is None else v for v in vals] if k in ("x", "y") else
           np.array([-1 if v is None else v for v in vals], np.int64) if k in ("item", "slot") else
           ["" if v is None else v for v in vals] for k, vals in RAW_ROWS.items()}
    raw["x"] = np.asarray(raw["x"], np.float32)
    raw["y"] = np.asarray(raw["y"], np.float32)
    assert np.max(np.abs(_logits(per, "predict_raw", **raw) - _logits(fused, "predict_raw", **raw))) <= TOL
    # predict_ids: numerics as predict_raw takes them, ids as the model's lookups give them.
    columns = fused.input_columns()
    assert [c.decode() for c in columns["numeric"].numpy()] == ["x", "y"]
    assert [c.decode() for c in columns["categorical"].numpy()] == ["color", "shape", "tag", "item", "slot"]
    _, ids = student.network.preprocessor({k: tf.constant(v) for k, v in raw.items()})
    got_ids = _logits(fused, "predict_ids", numeric=np.stack([raw["x"], raw["y"]], 1),
                      ids=np.stack([i.numpy() for i in ids], 1))
    assert np.max(np.abs(got_ids - _logits(per, "predict_raw", **raw))) <= TOL


def test_columns_hashed_in_several_groups_when_bucket_counts_have_a_large_lcm(tmp_path, monkeypatch):
    """Unknown values are hashed once per group of columns whose bucket counts' lcm fits;
    with a tiny limit the columns fall into two groups ({7, 1}: tag, shape; {2}: color),
    hashed out of the model's column order."""
    import matta_tf.input_path as input_path

    monkeypatch.setattr(input_path, "HASH_LCM_LIMIT", 8)
    student = _raw_model()
    assert input_path._bucket_groups([2, 1, 7]) == [(7, [7, 1]), (2, [2])]
    fused = tf.saved_model.load(export_saved_model(student, str(tmp_path / "f"), RAW_FEATURES,
                                                   input_path="fused"))
    per = tf.saved_model.load(export_saved_model(student, str(tmp_path / "p"), RAW_FEATURES,
                                                 input_path="per_feature"))
    examples = make_examples(RAW_ROWS)
    assert np.max(np.abs(_logits(per, "serving_default", examples=examples)
                         - _logits(fused, "serving_default", examples=examples))) <= TOL


def test_a_value_in_two_vocabularies_gets_each_columns_row(tmp_path):
    features = FeatureSpec(categorical=(
        CategoricalFeature("a", vocabulary=("x", "y", "shared")),
        CategoricalFeature("b", vocabulary=("shared", "z"), oov_buckets=3)))
    config = RankerConfig(features=features, student=SubmodelSpec(2, 0, (), (3,)), warmup_steps=0)
    student = extract(_randomised(MatTARanker(config), 3), config.student)
    fused = tf.saved_model.load(export_saved_model(student, str(tmp_path / "f"), features,
                                                   input_path="fused"))
    rows = {"a": ["shared", "z", "x", None, "shared"], "b": ["shared", "shared", "x", "z", None]}
    want = student({k: tf.constant(["" if v is None else v for v in vals]) for k, vals in rows.items()})
    got = _logits(fused, "serving_default", examples=make_examples(rows))
    assert np.max(np.abs(got - want.numpy())) <= TOL


def test_fused_parse_takes_empty_lists_as_missing_and_refuses_two_values(tmp_path):
    student = _raw_model()
    fused = tf.saved_model.load(export_saved_model(student, str(tmp_path / "f"), RAW_FEATURES))
    assert _info(fused)["input_path"] == "fused"  # the default

    def example(**features):
        return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()

    floats = lambda *v: tf.train.Feature(float_list=tf.train.FloatList(value=v))  # noqa: E731
    strings = lambda *v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))  # noqa: E731
    left_out = example(y=floats(1.0))
    empty = example(y=floats(1.0), x=floats(), color=strings(), tag=strings(),
                    item=tf.train.Feature(int64_list=tf.train.Int64List(value=[])))
    out = _logits(fused, "serving_default", examples=[left_out, empty])
    assert out[0] == out[1]
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than one value"):
        _logits(fused, "serving_default", examples=[example(color=strings(b"red", b"blue"))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the rows of its feature"):
        _logits(fused, "predict_ids", numeric=np.zeros([1, 2], np.float32),
                ids=np.array([[0, 0, 7, 0, 0]], np.int64))  # tag has 7 rows: 0..6


def test_a_fused_path_that_would_differ_is_an_error_naming_model_input_and_diff(tmp_path, monkeypatch):
    import matta_tf.export as export

    student = _raw_model()
    real = export.make_plan

    def wrong_plan(*args, **kwargs):
        plan = real(*args, **kwargs)
        x = dataclasses.replace(plan.numeric[0], mean=plan.numeric[0].mean + 1e-3)
        return dataclasses.replace(plan, numeric=(x, *plan.numeric[1:]))

    monkeypatch.setattr(export, "make_plan", wrong_plan)
    target = tmp_path / "f"
    # x is normalised by std 2: a 1e-3 shift of its mean moves the input by 5e-4.
    with pytest.raises(export.FusedCheckError,
                       match=rf"'{student.name}' to .*: .*numeric model inputs: max \|diff\| 0\.0005 "
                             r".*input_path='per_feature'"):
        export_saved_model(student, str(target), RAW_FEATURES)  # the default is fused
    assert not target.exists()  # nothing written, no silent per-feature fallback
    per = tf.saved_model.load(export_saved_model(student, str(tmp_path / "p"), RAW_FEATURES,
                                                 input_path="per_feature"))
    assert _info(per)["input_path"] == "per_feature"
    with pytest.raises(ValueError, match="input_path must be one of"):
        export_saved_model(student, str(tmp_path / "a"), RAW_FEATURES, input_path="auto")


def test_a_fused_signature_that_differs_is_named_with_its_max_diff(tmp_path, monkeypatch):
    """Only the tf.Example parse is wrong: ids, numeric inputs and predict_raw agree, the
    error names serving_default and its largest logit difference."""
    from matta_tf import export
    from matta_tf.input_path import FusedEncoder

    student = _raw_model()
    real = FusedEncoder.parse

    def shifted_parse(self, examples):
        numeric, strings, ints = real(self, examples)
        return numeric + 0.25, strings, ints

    monkeypatch.setattr(FusedEncoder, "parse", shifted_parse)
    with pytest.raises(export.FusedCheckError) as err:
        export_saved_model(student, str(tmp_path / "f"), RAW_FEATURES)
    message = str(err.value)
    assert "signature serving_default: max |logit diff| " in message and student.name in message
    diff = float(message.split("max |logit diff| ")[1].split(" ")[0])
    assert diff > 1e-3  # a real difference, reported as measured


# --------------------------------------------------------------------------- TFT


NUMERIC, CATEGORICAL = ["I1", "I2", "I3"], ["C1", "C2", "C3"]


@pytest.fixture(scope="module")
def tft_dir(tmp_path_factory):
    """A TFT transform_fn written by the pipeline's own preprocessing_fn on small data."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import metadata_io

    from components.transform_module import preprocessing_fn

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(300):
        row = {"label": [int(rng.integers(2))]}
        for name in NUMERIC:
            row[name] = [] if rng.random() < 0.2 else [float(rng.normal() * 10)]
        for k, name in enumerate(CATEGORICAL):
            row[name] = [] if rng.random() < 0.2 else [f"v{int(rng.zipf(1.5 + k)) % 40}".encode()]
        rows.append(row)
    spec = {"label": tf.io.VarLenFeature(tf.int64)}
    spec.update({n: tf.io.VarLenFeature(tf.float32) for n in NUMERIC})
    spec.update({n: tf.io.VarLenFeature(tf.string) for n in CATEGORICAL})
    metadata = tft.DatasetMetadata.from_feature_spec(spec)
    config = {"numeric": NUMERIC, "categorical": CATEGORICAL, "label": "label",
              "oov_buckets": 2, "top_k": None, "frequency_threshold": 2}
    out = str(tmp_path_factory.mktemp("tft"))
    with beam.Pipeline() as pipeline:
        with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft_tmp"))):
            transform_fn = ((pipeline | beam.Create(rows), metadata)
                            | tft_beam.AnalyzeDataset(lambda x: preprocessing_fn(x, config)))
            _ = transform_fn | tft_beam.WriteTransformFn(out)
    metadata_io.write_metadata(metadata, f"{out}/metadata")
    return out, config


def test_fused_tft_export_equals_the_pipeline_export(tft_dir, tmp_path):
    """Pipeline-like: StudentExtractor's export (TFT layer as `preprocess`, raw parse spec)
    both ways; every output equal within 1e-6, on warm-up-style examples too."""
    import tensorflow_transform as tft

    from components.student_extractor import serving_parse_spec
    from components.trainer_module import feature_block

    out, config = tft_dir
    tft_output = tft.TFTransformOutput(out)
    features = FeatureSpec.from_dict(feature_block(tft_output, config))
    ranker = RankerConfig(features=features, student=SubmodelSpec(2, 1, (), (4,)), warmup_steps=0)
    student = extract(_randomised(MatTARanker(ranker), 1), ranker.student)
    parse_spec = serving_parse_spec(tft_output)
    assert set(parse_spec) == set(NUMERIC + CATEGORICAL)

    def export(path, input_path):
        return tf.saved_model.load(export_saved_model(
            student, str(tmp_path / path), parse_spec, preprocess=tft_output.transform_features_layer(),
            input_path=input_path))

    fused, per = export("f", "fused"), export("p", "per_feature")
    assert _info(fused)["source"] == "tft"
    vocab = [v.decode() for v in tft_output.vocabulary_by_name("C1")]
    rows = {"I1": [0.0, None, -5.0, 3e4, float("nan"), 1.0],
            "I2": [1.0, 2.0, None, -1.0, 0.5, 1e-9],
            "I3": [None, None, 7.0, 0.0, -2.0, 4.0],
            "C1": [vocab[0], vocab[-1], None, "never-seen", "", "v1"],
            "C2": ["v1", None, "v3", "zzz", "v2", ""],
            "C3": [None, "v2", "v1", "", "unseen", "v5"]}
    examples = make_examples(rows)
    want = _logits(per, "serving_default", examples=examples)
    assert np.max(np.abs(want - _logits(fused, "serving_default", examples=examples))) <= TOL
    # ClickLogExampleGen writes a missing value as an empty list: same outputs.
    empty = []
    for ex in examples:
        parsed = tf.train.Example.FromString(ex)
        for name in NUMERIC + CATEGORICAL:
            if name not in parsed.features.feature:
                if name in NUMERIC:
                    parsed.features.feature[name].float_list.SetInParent()
                else:
                    parsed.features.feature[name].bytes_list.SetInParent()
        empty.append(parsed.SerializeToString())
    assert np.max(np.abs(want - _logits(fused, "serving_default", examples=empty))) <= TOL
    assert np.max(np.abs(want - _logits(per, "serving_default", examples=empty))) <= TOL
    raw = {n: np.asarray([0.0 if v is None else v for v in rows[n]], np.float32) for n in NUMERIC}
    raw.update({n: ["" if v is None else v for v in rows[n]] for n in CATEGORICAL})
    want_raw = _logits(per, "predict_raw", **raw)
    assert np.max(np.abs(want_raw - _logits(fused, "predict_raw", **raw))) <= TOL
    # predict_ids takes the TFT ids (what the Trainer trained on) and raw numerics.
    transformed = tft_output.transform_raw_features(
        {n: tf.sparse.from_dense(tf.constant(v)[:, None]) for n, v in raw.items()})
    ids = np.stack([transformed[n].numpy() for n in CATEGORICAL], 1)
    numeric = np.stack([raw[n] for n in NUMERIC], 1)
    assert np.max(np.abs(want_raw - _logits(fused, "predict_ids", numeric=numeric, ids=ids))) <= TOL


def test_pipeline_export_keeps_the_serving_layout(tft_dir, tmp_path):
    """write_deployment + warm-up replay work unchanged with a fused export."""
    import tensorflow_transform as tft

    from components.student_extractor import serving_parse_spec
    from components.trainer_module import feature_block
    from serving import config as sc
    from serving.model_registry import ModelRegistry

    out, config = tft_dir
    tft_output = tft.TFTransformOutput(out)
    features = FeatureSpec.from_dict(feature_block(tft_output, config))
    ranker = RankerConfig(features=features, student=SubmodelSpec(2, 1, (), (4,)), warmup_steps=0)
    student = extract(_randomised(MatTARanker(ranker), 2), ranker.student)
    warm = make_examples({"I1": [1.0, None], "I2": [None, 2.0], "I3": [3.0, 3.0],
                          "C1": ["v1", None], "C2": [None, "v2"], "C3": ["v3", "v9"]})
    path = export_saved_model(student, str(tmp_path / "e"), serving_parse_spec(tft_output),
                              preprocess=tft_output.transform_features_layer(), check_examples=warm)
    dep = sc.write_deployment(str(tmp_path / "deploy"), "ranker", {"student": path}, warmup_examples=warm)
    logs = sc.read_warmup_requests(f"{dep.version_dirs['student']}/{sc.WARMUP_RELATIVE_PATH}")
    assert [len(w.predict_log.request.inputs["examples"].string_val) for w in logs] == [1, 8]
    registry = ModelRegistry.load(dep.models_config_path)
    loaded = registry.resolve("ranker", label="student")
    assert loaded.warmup_requests == 2 and set(loaded.signatures) >= {"serving_default", "predict_ids"}
