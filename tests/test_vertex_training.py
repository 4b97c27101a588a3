"""`compile --runner vertex` with a `vertex_training` section: the Trainer becomes TFX's
Vertex Trainer extension and its custom job's worker pools follow `distribution.strategy`.

Checked here without a cloud: the compiled PipelineJob parses strictly as kfp's
PipelineSpec proto; the Trainer's custom_config holds the pools; and the CustomJob the
extension would submit, built by the extension's own `VertexJobClient.create_training_job`
from the compiled step's inputs, parses strictly as Vertex's `CustomJob` proto with the
TFX Trainer command in every pool. Submitting the job (and Vertex accepting it, setting
TF_CONFIG, ending the worker/ps replicas) is not exercised: there is no cloud access here.
"""
from __future__ import annotations

import json

import pytest

from pipelines.config import PipelineConfig

IMAGE = "example.com/matta:test"
VERTEX = {"project": "my-project", "region": "europe-west4", "machine_type": "n1-standard-8"}
BASE = {"data_root": "data", "pipeline_root": "out"}

# strategy -> (vertex_training extra keys, expected [(replica_count, machine_type,
# accelerator_type, accelerator_count)] in Vertex pool order chief, worker, ps)
CASES = {
    "none": ({}, [(1, "n1-standard-8", None, 0)]),
    "mirrored": ({"accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2},
                 [(1, "n1-standard-8", "NVIDIA_TESLA_T4", 2)]),
    "multi_worker_mirrored": ({"worker": {"replica_count": 3}},
                              [(1, "n1-standard-8", None, 0), (3, "n1-standard-8", None, 0)]),
    "parameter_server": ({"accelerator_type": "NVIDIA_L4", "chief": {"accelerator_type": None},
                          "worker": {"replica_count": 2},
                          "ps": {"replica_count": 2, "machine_type": "n1-highmem-16",
                                 "accelerator_type": None}},
                         [(1, "n1-standard-8", None, 0), (2, "n1-standard-8", "NVIDIA_L4", 1),
                          (2, "n1-highmem-16", None, 0)]),
}


def _compile(tmp_path, strategy, vertex, runner="vertex"):
    from test_pipeline import tiny_config

    from pipelines.compile import compile_pipeline

    cfg, _ = tiny_config(tmp_path)
    cfg = PipelineConfig.from_dict({**cfg.to_dict(), "distribution": {"strategy": strategy},
                                    "vertex_training": vertex})
    with open(compile_pipeline(cfg, runner, str(tmp_path / "spec.json"), image=IMAGE)) as f:
        return json.load(f)


def _trainer(spec):
    task = spec["root"]["dag"]["tasks"]["Trainer"]
    container = spec["deploymentSpec"]["executors"][
        spec["components"]["Trainer"]["executorLabel"]]["container"]
    # PipelineSpec 2.1 (vertex) writes `constant`, 2.0 (kubeflow-v2) `constantValue.stringValue`.
    params = {k: v["runtimeValue"].get("constant", v["runtimeValue"].get("constantValue", {}).get(
        "stringValue")) for k, v in task["inputs"]["parameters"].items()}
    return container, params


def _custom_job(params):
    """The CustomJob the extension's executor builds from the compiled step at run time
    (runner.start_cloud_training: pop `project`, then VertexJobClient.create_training_job;
    the client is made without __init__, which would open a gRPC channel to Vertex)."""
    from tfx.extensions.google_cloud_ai_platform import training_clients
    from tfx.types import standard_artifacts

    def artifact(cls, uri):
        a = cls()
        a.uri = uri
        return [a]

    inputs = {"examples": artifact(standard_artifacts.Examples, "gs://b/Transform/examples/1"),
              "transform_graph": artifact(standard_artifacts.TransformGraph, "gs://b/Transform/graph/1"),
              "schema": artifact(standard_artifacts.Schema, "gs://b/SchemaGen/schema/1")}
    outputs = {"model": artifact(standard_artifacts.Model, "gs://b/Trainer/model/1"),
               "model_run": artifact(standard_artifacts.ModelRun, "gs://b/Trainer/model_run/1")}
    job_args = dict(json.loads(params["custom_config"])["ai_platform_training_args"])
    project = job_args.pop("project")
    client = training_clients.VertexJobClient.__new__(training_clients.VertexJobClient)
    job = client.create_training_job(inputs, outputs, params,
                                     "tfx.components.trainer.executor.GenericExecutor",
                                     job_args, None, None)
    return project, job


@pytest.mark.parametrize("strategy", list(CASES))
def test_vertex_compile_emits_the_worker_pools_of_the_strategy(tmp_path, strategy):
    from google.cloud.aiplatform_v1.types import CustomJob
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    extra, expected = CASES[strategy]
    job = _compile(tmp_path, strategy, {**VERTEX, **extra})
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())  # strict: unknown fields raise
    spec = job["pipelineSpec"]
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    container, params = _trainer(spec)
    assert container["image"] == IMAGE
    i = container["args"].index("--executor_class_path")
    assert container["args"][i + 1] == (
        "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor")
    custom = json.loads(params["custom_config"])
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "europe-west4"
    assert custom["distribution"] == {"strategy": strategy}  # run_fn's keys are all still there
    assert {"transform", "ranker", "batch_size", "optimizer"} <= set(custom)
    args = custom["ai_platform_training_args"]
    assert args["project"] == "my-project" and set(args) == {"project", "job_spec"}
    pools = args["job_spec"]["worker_pool_specs"]
    got = [(p["replica_count"], p["machine_spec"]["machine_type"],
            p["machine_spec"].get("accelerator_type"), p["machine_spec"].get("accelerator_count", 0))
           for p in pools]
    assert got == expected
    assert all(p["container_spec"] == {"image_uri": IMAGE} for p in pools)

    # What the extension submits at run time: every pool runs the TFX Trainer executor
    # with matta's run_fn and this strategy; Vertex's CustomJob proto accepts it.
    project, custom_job = _custom_job(params)
    assert project == "my-project"
    CustomJob(custom_job)  # proto-plus: an unknown field or enum name raises
    submitted = custom_job["job_spec"]["worker_pool_specs"]
    assert [p["replica_count"] for p in submitted] == [e[0] for e in expected]
    for pool in submitted:
        command = pool["container_spec"]["command"]
        assert command[:3] == ["python", "-m", "tfx.scripts.run_executor"]
        assert command[command.index("--executor_class_path") + 1] == (
            "tfx.components.trainer.executor.GenericExecutor")
        props = json.loads(command[command.index("--exec-properties") + 1])
        assert props["run_fn"] == "components.trainer_module.run_fn"
        assert json.loads(props["custom_config"])["distribution"]["strategy"] == strategy
        assert pool["container_spec"]["image_uri"] == IMAGE


def test_vertex_training_image_overrides_the_compile_image(tmp_path):
    job = _compile(tmp_path, "none", {**VERTEX, "image": "example.com/matta-gpu:1"})
    container, params = _trainer(job["pipelineSpec"])
    assert container["image"] == IMAGE  # the pipeline step that submits the job
    pools = json.loads(params["custom_config"])["ai_platform_training_args"]["job_spec"][
        "worker_pool_specs"]
    assert [p["container_spec"]["image_uri"] for p in pools] == ["example.com/matta-gpu:1"]


def test_other_runners_keep_the_local_trainer(tmp_path):
    """The section only changes `--runner vertex`: local runs, Airflow and Kubeflow V2
    run TFX's own Trainer."""
    from pipelines.pipeline import create_components

    job = _compile(tmp_path, "none", VERTEX, runner="kubeflow-v2")
    container, params = _trainer(job["pipelineSpec"])
    assert container["args"][container["args"].index("--executor_class_path") + 1] == (
        "tfx.components.trainer.executor.GenericExecutor")
    assert "ai_platform_training_args" not in json.loads(params["custom_config"])
    cfg = PipelineConfig.from_dict({**BASE, "data_root": str(tmp_path), "vertex_training": VERTEX})
    for orchestrator in ("local", "airflow"):
        trainer = next(c for c in create_components(cfg, orchestrator) if c.id == "Trainer")
        assert type(trainer).__module__ == "tfx.components.trainer.component", orchestrator


@pytest.mark.parametrize("runner,vertex", [
    ("vertex", None),
    ("kubeflow-v2", {**VERTEX, "worker": {"replica_count": 1}, "ps": {"replica_count": 1}})])
def test_a_cluster_strategy_without_vertex_pools_does_not_compile(tmp_path, runner, vertex):
    with pytest.raises(ValueError, match="distribution strategy parameter_server needs a cluster"):
        _compile(tmp_path, "parameter_server", vertex, runner=runner)


@pytest.mark.parametrize("strategy, vertex, message", [
    ("none", {**VERTEX, "machine": "n1"}, "vertex_training: unknown keys ['machine']"),
    ("none", {"region": "us-central1"}, "vertex_training: project is required"),
    ("none", {**VERTEX, "region": "us central"}, "region 'us central' is not a Vertex AI region"),
    ("none", {**VERTEX, "project": "My_Project"}, "project 'My_Project' is not a GCP project id"),
    ("none", {**VERTEX, "machine_type": "big"}, "machine_type 'big' is not a Compute Engine machine"),
    ("none", {**VERTEX, "accelerator_type": "NVIDIA_TESLA_X1"},
     "accelerator_type 'NVIDIA_TESLA_X1' is not one of NVIDIA_TESLA_K80,"),
    ("none", {**VERTEX, "accelerator_count": 2}, "accelerator_count 2 needs an accelerator_type"),
    ("mirrored", {**VERTEX, "accelerator_type": "NVIDIA_L4", "accelerator_count": 0},
     "accelerator_count must be an int >= 1 with accelerator_type NVIDIA_L4, got 0"),
    ("none", {**VERTEX, "worker": {"replica_count": 1}},
     "worker applies to strategy multi_worker_mirrored or parameter_server only, not 'none'"),
    ("multi_worker_mirrored", {**VERTEX, "worker": {"replica_count": 1}, "ps": {"replica_count": 1}},
     "ps applies to strategy parameter_server only, not 'multi_worker_mirrored'"),
    ("multi_worker_mirrored", VERTEX,
     "strategy multi_worker_mirrored needs worker.replica_count (an int >= 1)"),
    ("multi_worker_mirrored", {**VERTEX, "worker": {"replica_count": 0}},
     "worker.replica_count must be an int >= 1 for strategy multi_worker_mirrored, got 0"),
    ("parameter_server", {**VERTEX, "worker": {"replica_count": 2}},
     "strategy parameter_server needs ps.replica_count (an int >= 1)"),
    ("parameter_server", {**VERTEX, "worker": {"replica_count": 2}, "ps": {"replica_count": "2"}},
     "ps.replica_count must be an int >= 1 for strategy parameter_server, got '2'"),
    ("parameter_server", {**VERTEX, "worker": {"replica_count": 2.0}, "ps": {"replica_count": 1}},
     "worker.replica_count must be an int >= 1 for strategy parameter_server, got 2.0"),
    ("parameter_server", {**VERTEX, "chief": {"replica_count": 2}, "worker": {"replica_count": 1},
                          "ps": {"replica_count": 1}}, "chief.replica_count must be 1"),
    ("parameter_server", {**VERTEX, "worker": {"replica_count": 1, "gpus": 1}, "ps": {"replica_count": 1}},
     "worker: unknown keys ['gpus']"),
    ("multi_worker_mirrored", {**VERTEX, "accelerator_type": "NVIDIA_L4",
                               "worker": {"replica_count": 1, "accelerator_count": 2}},
     "multi_worker_mirrored needs the same accelerators on every worker: chief has 1, worker has 2"),
    ("none", ["us-central1"], "vertex_training: expected a mapping"),
])
def test_bad_vertex_training_fails_on_load(strategy, vertex, message):
    with pytest.raises(ValueError) as err:
        PipelineConfig.from_dict({**BASE, "distribution": {"strategy": strategy},
                                  "vertex_training": vertex})
    text = str(err.value)
    assert text.startswith("pipeline config: vertex_training: ") and message in text, text
    assert "\n" not in text  # one line


def test_the_commented_example_in_example_yaml_validates():
    """pipelines/configs/example.yaml shows `vertex_training` commented out (the key
    itself is null there); the commented block is a valid parameter_server section."""
    import os

    import yaml

    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "pipelines", "configs", "example.yaml")
    with open(path) as f:
        lines = f.read().splitlines()
    start = lines.index("# vertex_training:")
    block = [lines[start][2:]]
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    vertex = yaml.safe_load("\n".join(block))["vertex_training"]
    cfg = PipelineConfig.from_dict({**BASE, "distribution": {"strategy": "parameter_server"},
                                    "vertex_training": vertex})
    from pipelines.vertex_training import VertexTrainingConfig

    pools = VertexTrainingConfig.from_dict(cfg.vertex_training, "parameter_server").pools
    assert [(p.name, p.replica_count, p.accelerator_type) for p in pools] == [
        ("chief", 1, "NVIDIA_TESLA_T4"), ("worker", 2, "NVIDIA_TESLA_T4"), ("ps", 2, None)]
