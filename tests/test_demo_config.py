"""The demo's pipeline.yaml (what the README tells users to copy) loads back as the same
PipelineConfig, so `matta pipeline run --config matta-demo/pipeline.yaml` reruns the demo."""
import os

import yaml

from matta_tf.datasets import SyntheticLogConfig
from pipelines.config import PipelineConfig
from pipelines.demo import demo_config


def test_demo_config_round_trips_through_yaml(tmp_path):
    config = demo_config(str(tmp_path), SyntheticLogConfig(num_numeric=2, num_categorical=3))
    path = os.path.join(tmp_path, "pipeline.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
    loaded = PipelineConfig.from_file(path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.log_schema["numeric_features"] == ["I1", "I2"]
