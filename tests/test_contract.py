"""matta_tf.contract: one set of reserved column names and one tf.Example encoder, TF-free."""
import os
import subprocess
import sys

import numpy as np
import pytest

from matta_tf.contract import NON_FEATURE_COLUMNS, encode_example, encode_examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_contract_and_its_light_users_import_and_encode_without_tensorflow():
    code = ("import sys\n"
            "import matta_tf.contract, serving.examples, matta_tf.config, components.logschema\n"
            "b = matta_tf.contract.encode_example({'x': 1.0, 'c': 'a'})\n"
            "assert b and 'tensorflow' not in sys.modules, sorted(m for m in sys.modules if 'tensorflow' in m)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_encoding_equals_tensorflows_own_example_proto():
    import tensorflow as tf

    row = {"f": 1.25, "i": -7, "big": 2**62, "flag": True, "s": "héllo", "b": b"\x00\xff",
           "np_f": np.float32(0.5), "np_i": np.int64(3), "np_s": np.str_("z"), "np_b": np.bool_(False)}
    want = tf.train.Example(features=tf.train.Features(feature={
        "f": tf.train.Feature(float_list=tf.train.FloatList(value=[1.25])),
        "i": tf.train.Feature(int64_list=tf.train.Int64List(value=[-7])),
        "big": tf.train.Feature(int64_list=tf.train.Int64List(value=[2**62])),
        "flag": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
        "s": tf.train.Feature(bytes_list=tf.train.BytesList(value=["héllo".encode()])),
        "b": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x00\xff"])),
        "np_f": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "np_i": tf.train.Feature(int64_list=tf.train.Int64List(value=[3])),
        "np_s": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"z"])),
        "np_b": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
    }))
    got = encode_example(row)
    assert got == want.SerializeToString(deterministic=True)
    # and TF's parser reads it with the types the contract promises
    spec = {"f": tf.io.FixedLenFeature([], tf.float32), "i": tf.io.FixedLenFeature([], tf.int64),
            "s": tf.io.FixedLenFeature([], tf.string), "flag": tf.io.FixedLenFeature([], tf.int64)}
    parsed = tf.io.parse_example(tf.constant([got]), spec)
    assert parsed["f"].numpy().tolist() == [1.25] and parsed["i"].numpy().tolist() == [-7]
    assert parsed["s"].numpy().tolist() == ["héllo".encode()] and parsed["flag"].numpy().tolist() == [1]


def test_missing_values_are_left_out_and_bad_values_fail():
    import tensorflow as tf

    got = tf.train.Example.FromString(encode_example(
        {"none": None, "nan": float("nan"), "np_nan": np.float64("nan"), "empty": "", "empty_b": b"", "x": 0.0}))
    assert list(got.features.feature) == ["x"]  # 0.0 is a value, not missing
    with pytest.raises(ValueError, match=r"feature 'v': cannot encode value \[1, 2\] of type list"):
        encode_example({"v": [1, 2]})
    with pytest.raises(ValueError, match=r"feature 'n': integer 9223372036854775808 does not fit in int64"):
        encode_example({"n": 2**63})
    with pytest.raises(ValueError, match="columns have different lengths"):
        encode_examples({"a": [1, 2], "b": [1]})


def test_columns_encode_as_rows():
    cols = {"x": np.array([0.5, np.nan]), "c": ["a", None]}
    assert encode_examples(cols) == [encode_example({"x": 0.5, "c": "a"}), encode_example({})]
    assert encode_examples({}) == []


def test_reserved_names_are_one_set_for_every_user():
    import serving.examples
    from components import logschema
    from matta_tf.config import FeatureSpec, NumericFeature

    assert serving.examples.NON_FEATURE_COLUMNS is NON_FEATURE_COLUMNS
    assert set(NON_FEATURE_COLUMNS) == {"label", "impression_id", "timestamp", "teacher_logit",
                                        "has_teacher", "click_prob"}
    for name in NON_FEATURE_COLUMNS:
        with pytest.raises(ValueError, match=rf"feature spec: \['{name}'\] are reserved names"):
            FeatureSpec(numeric=(NumericFeature("x"), NumericFeature(name)))
    # A log may carry click_prob, but not as a feature (serving would drop it).
    columns = [{"name": "label", "type": "int"}, {"name": "click_prob", "type": "float"}]
    logschema.LogSchema.from_dict({"format": "csv", "columns": columns, "label": "label"})
    with pytest.raises(ValueError, match=r"log-schema: features \['click_prob'\] have reserved names"):
        logschema.LogSchema.from_dict({"format": "csv", "columns": columns, "label": "label",
                                       "numeric_features": ["click_prob"]})
