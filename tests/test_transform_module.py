"""transform_module: the one-pass vocabularies equal TFT's own vocabulary analyzer (issue 14).

Both preprocessing functions run through tft_beam (TF2 tracing, as the TFX Transform runs
them); the vocabulary files, their registered names and sizes, the transformed data and
the transformed feature spec must be equal (numeric z-scores to float tolerance: TFT's
mean/variance combine is not bit-reproducible between runs either).
"""
import math
import os
import random

import pytest

import matta_tf  # noqa: F401  (before TensorFlow: sets TF_USE_LEGACY_KERAS)

# isort: split
# A dependency of the pipeline: missing must fail, not skip.
import tensorflow_transform as tft

from components.transform_module import per_feature_preprocessing_fn  # noqa: E402


def make_rows(n=600, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"label": [i % 2], "I1": [] if i % 9 == 0 else [rng.uniform(-50, 500)],
               "I2": [float(rng.randint(0, 3))], "teacher_logit": [rng.uniform(-2, 2)],
               "has_teacher": [1]}
        # Zipf-like tokens with many ties, missing values, and tokens TFT filters out.
        k = int(rng.paretovariate(1.2))
        row["C1"] = [] if i % 7 == 0 else [f"t{k % 40}".encode()]
        row["C2"] = [rng.choice([b"a", b"b", b"c", b"d", b"line\nbreak", b"cr\rx", b"", b"e"])]
        row["C3"] = []  # always missing: an empty vocabulary
        row["C4"] = [f"v{i % 13}".encode()] if i % 2 else [f"w{i % 5}".encode()]
        rows.append(row)
    return rows


def run(tmp_path, name, fn, config, rows):
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    spec = {"label": tf.io.VarLenFeature(tf.int64), "I1": tf.io.VarLenFeature(tf.float32),
            "I2": tf.io.VarLenFeature(tf.float32), "teacher_logit": tf.io.VarLenFeature(tf.float32),
            "has_teacher": tf.io.VarLenFeature(tf.int64)}
    for c in config["categorical"]:
        spec[c] = tf.io.VarLenFeature(tf.string)
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    out = str(tmp_path / name)
    with tft_beam.Context(temp_dir=str(tmp_path / f"tmp-{name}"), force_tf_compat_v1=False):
        (data, _), transform_fn = ((rows, metadata) | f"Analyze{name}" >> tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: fn(inputs, config)))
        _ = transform_fn | f"Write{name}" >> tft_beam.WriteTransformFn(out)
    return data, tft.TFTransformOutput(out)


@pytest.mark.parametrize("top_k, threshold", [(None, 1), (5, 1), (3, 4), (1000, 0)])
def test_one_pass_vocabularies_equal_tft(tmp_path, top_k, threshold):
    from components import transform_module

    config = {"numeric": ["I1", "I2"], "categorical": ["C1", "C2", "C3", "C4"], "label": "label",
              "oov_buckets": 2, "top_k": top_k, "frequency_threshold": threshold}
    rows = make_rows()
    want_data, want = run(tmp_path, "legacy", per_feature_preprocessing_fn, config, rows)
    got_data, got = run(tmp_path, "new", transform_module.preprocessing_fn, config, rows)
    for c in config["categorical"]:
        with open(want.vocabulary_file_by_name(c), "rb") as f:
            want_vocab = f.read()
        with open(got.vocabulary_file_by_name(c), "rb") as f:
            assert f.read() == want_vocab, c
        assert os.path.basename(got.vocabulary_file_by_name(c)) == c
        assert got.vocabulary_size_by_name(c) == want.vocabulary_size_by_name(c), c
    assert got.vocabulary_size_by_name("C3") == 1  # an empty vocabulary: TFT's dummy token
    assert got.transformed_feature_spec() == want.transformed_feature_spec()
    assert len(got_data) == len(want_data) == len(rows)
    for g, w in zip(got_data, want_data, strict=True):
        assert g.keys() == w.keys()
        for k in g:
            if k in ("I1", "I2"):
                assert math.isclose(g[k], w[k], rel_tol=1e-5, abs_tol=1e-6), k
            elif k == "teacher_logit":
                assert g[k] == w[k] or (math.isnan(g[k]) and math.isnan(w[k]))
            else:
                assert g[k] == w[k], (k, g[k], w[k])


def test_order_vocabulary_rules():
    from components.transform_module import order_vocabulary

    counts = {b"a": 3, b"b": 3, b"c": 1, b"": 9, b"x\ny": 9, b"z": 2}
    assert order_vocabulary(counts, None, None) == ([b"b", b"a", b"z", b"c"], 4, 4)
    assert order_vocabulary(counts, 2, None) == ([b"b", b"a"], 4, 2)
    assert order_vocabulary(counts, None, 2) == ([b"b", b"a", b"z"], 4, 3)
    dummy = b"49d0cd50-04bb-48c0-bc6f-5b575dce351a"
    assert order_vocabulary({}, None, None) == ([dummy], 0, 0)
    assert order_vocabulary({b"": 4}, 10, None) == ([dummy], 0, 1)
