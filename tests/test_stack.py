"""The real TFX 1.21 stack is installed and works (no stubbed MLMD/TFDV)."""
import importlib
import os

import pytest

import matta_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


@pytest.mark.parametrize(
    "module",
    [
        "tensorflow",
        "tf_keras",
        "tfx.v1",
        "ml_metadata",
        "tensorflow_data_validation",
        "tensorflow_transform",
        "tensorflow_model_analysis",
        "tensorflow_recommenders",
        "tensorflow_serving.apis.prediction_service_pb2_grpc",
        "tensorflow_serving.config.model_server_config_pb2",
        "apache_beam",
        "pyarrow",
    ],
)
def test_stack_imports(module):
    importlib.import_module(module)


def test_versions_and_legacy_keras():
    import tensorflow as tf
    import tfx

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.__version__.startswith("2.21"), tf.__version__
    assert tfx.__version__.startswith("1.21"), tfx.__version__
    # tf.keras must be Keras 2 (tf_keras), which TFRS and TFT are built on.
    assert tf.keras.__name__.startswith("tf_keras") or tf.keras.__version__.startswith("2.")


def test_tiny_tfx_pipeline_with_sqlite_mlmd(tmp_path):
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with open(data_dir / "data.csv", "w") as f:
        f.write("label,x,c\n")
        for i in range(200):
            f.write(f"{i % 2},{i * 0.5},{'ab'[i % 2]}\n")

    example_gen = tfx.components.CsvExampleGen(input_base=str(data_dir))
    stats = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=stats.outputs["statistics"])
    db = str(tmp_path / "mlmd.sqlite")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="stack_check",
        pipeline_root=str(tmp_path / "root"),
        components=[example_gen, stats, schema],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(db),
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)

    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(db)
    )
    types = {t.id: t.name for t in store.get_artifact_types()}
    by_type = {}
    for artifact in store.get_artifacts():
        by_type.setdefault(types[artifact.type_id], []).append(artifact)
    assert {"Examples", "ExampleStatistics", "Schema"} <= set(by_type)
    schema_uri = by_type["Schema"][0].uri
    assert os.path.exists(os.path.join(schema_uri, "schema.pbtxt"))
    executions = store.get_executions()
    assert len(executions) == 3
    # Each execution completed (MLMD's COMPLETE state, not just created).
    assert all(e.last_known_state == e.COMPLETE for e in executions)

    import tensorflow_data_validation as tfdv

    loaded = tfdv.load_schema_text(os.path.join(schema_uri, "schema.pbtxt"))
    assert {f.name for f in loaded.feature} == {"label", "x", "c"}


def test_matta_console_script_lists_subcommands():
    import subprocess

    proc = subprocess.run(["matta", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("generate-logs", "ranker-cost", "teacher", "pipeline", "demo", "serve", "serving", "ab"):
        assert f"    {command} " in proc.stdout, (command, proc.stdout)
    # An unknown subcommand is a usage error, not a stack trace.
    bad = subprocess.run(["matta", "no-such-command"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
