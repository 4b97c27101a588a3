"""`create_pipeline(config)`: the MatTA TFX pipeline, from click logs to pushed students.

    ClickLogExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator
                       -> Transform -> Trainer (MatTA run_fn; base_model = previous span's
                          model via PreviousSpanModelStrategy) -> StudentExtractor
                       -> per arm: Evaluator (TFMA AUC / log-loss, blessing) -> Pusher

Component ids are stable (`Evaluator_student`, `Pusher_ta`, ...) so MLMD caching works
across runs.

Warm start: with `config.warm_start_uri` set, an Importer (`warm_start_model`) feeds that
Trainer model to the Trainer instead of the previous-span resolver. Kubeflow Pipelines V2 /
Vertex can only compile TFX's built-in LatestArtifact / LatestBlessedModel resolvers (their
queries filter by artifact type alone, so they would hand the Trainer an extracted student
or another pipeline's model), so for `orchestrator="kfp_v2"` the custom resolver is left
out and warm start there is the Importer or nothing. `orchestrator="airflow"` (the DAG file
`pipelines.compile` writes) keeps the resolver and gives the components the drivers TFX's
legacy launcher needs (`pipelines.airflow_support`).

Trainer: `compile --runner vertex` with a `vertex_training` section makes it TFX's Vertex
Trainer extension (a Vertex AI custom job whose worker pools follow `distribution`, see
`pipelines.vertex_training`); local runs, Airflow and Kubeflow V2 run TFX's local Trainer.
"""
from __future__ import annotations

import os

from pipelines.config import PipelineConfig


def eval_config(label: str, min_auc: float):
    import tensorflow_model_analysis as tfma

    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key=label,
                                    prediction_key="probability")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="MeanPrediction"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="AUC", threshold=tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}))),
        ])])


# local: LocalDagRunner; airflow: AirflowDagRunner (TFX's legacy launcher, same resolver);
# kfp_v2: KubeflowV2DagRunner / Vertex (no custom resolver).
ORCHESTRATORS = ("local", "airflow", "kfp_v2")


def warm_start_node(config: PipelineConfig, examples, orchestrator: str = "local"):
    """The node whose `model` output is the Trainer's `base_model`, or None (cold start)."""
    from tfx import v1 as tfx

    from pipelines.warm_start import PreviousSpanModelStrategy

    if config.warm_start_uri:
        return tfx.dsl.Importer(source_uri=config.warm_start_uri,
                                artifact_type=tfx.types.standard_artifacts.Model,
                                output_key="model").with_id("warm_start_model")
    if orchestrator == "kfp_v2":
        return None
    if orchestrator not in ORCHESTRATORS:
        raise ValueError(f"unknown orchestrator {orchestrator!r}: use one of {ORCHESTRATORS}")
    return tfx.dsl.Resolver(
        strategy_class=PreviousSpanModelStrategy, examples=examples,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
    ).with_id("previous_span_model")


def make_trainer(config: PipelineConfig, orchestrator: str, vertex_image: str | None, **kwargs):
    """The Trainer: TFX's local one, or with `vertex_image` (`compile --runner vertex`) and a
    `vertex_training` section TFX's Vertex Trainer extension, which runs the same run_fn as a
    Vertex AI custom job with the worker pools of `config.distribution`
    (pipelines.vertex_training; `vertex_image` is the default image of its pools).

    A Kubeflow V2 / Vertex step is one container, so a multi-process strategy compiled
    without Vertex worker pools would have no cluster: that is an error, not a fallback.
    """
    from tfx import v1 as tfx

    if vertex_image is not None and config.vertex_training:
        from pipelines.vertex_training import vertex_trainer

        return vertex_trainer(config, vertex_image, **kwargs)
    strategy = config.distribution.get("strategy", "none")
    if orchestrator == "kfp_v2" and strategy in ("multi_worker_mirrored", "parameter_server"):
        raise ValueError(f"pipeline config: distribution strategy {strategy} needs a cluster, but a "
                         "Kubeflow V2 / Vertex step runs the Trainer in one container: compile with "
                         "--runner vertex and a vertex_training section (docs/CONFIG.md)")
    return tfx.components.Trainer(**kwargs)


def create_components(config: PipelineConfig, orchestrator: str = "local",
                      vertex_image: str | None = None) -> list:
    """The pipeline's components; `vertex_image` (compile --runner vertex only) makes the
    Trainer a Vertex AI custom job when the config has `vertex_training` (`make_trainer`)."""
    from tfx import v1 as tfx

    from components import logschema
    from components.example_gen import ClickLogExampleGen
    from components.student_extractor import StudentExtractor, arm_output_key
    from components.transform_module import transform_custom_config
    if orchestrator not in ORCHESTRATORS:
        raise ValueError(f"unknown orchestrator {orchestrator!r}: use one of {ORCHESTRATORS}")
    schema = logschema.load_log_schema(config.log_schema)
    example_gen = ClickLogExampleGen(
        input_base=config.data_root, log_schema=schema, input_pattern=config.input_pattern,
        teacher_pattern=config.teacher_pattern, split=config.split,
        max_quarantine_rate=config.max_quarantine_rate)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    # infer_feature_shape=False: every raw feature is VarLen, so missing values parse at
    # serving time and the Transform fills them in (see transform_module).
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=False)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    transform_config = transform_custom_config(schema, config.oov_buckets, config.vocab_top_k)
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn="components.transform_module.preprocessing_fn",
        custom_config=transform_config)
    previous_model = warm_start_node(config, example_gen.outputs["examples"], orchestrator)
    trainer = make_trainer(
        config, orchestrator, vertex_image,
        run_fn="components.trainer_module.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=previous_model.outputs["model"] if previous_model is not None else None,
        train_args=tfx.proto.TrainArgs(num_steps=config.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config={"transform": transform_config, "ranker": dict(config.ranker),
                       "batch_size": config.batch_size, "epochs": config.epochs,
                       "optimizer": config.optimizer, "learning_rate": config.learning_rate,
                       "distribution": dict(config.distribution)})
    extractor = StudentExtractor(model=trainer.outputs["model"],
                                 transform_graph=transform.outputs["transform_graph"],
                                 arms=config.arms, mixnmatch=config.mixnmatch,
                                 model_name=config.model_name,
                                 examples=example_gen.outputs["examples"],
                                 budgets=config.budgets, budget_search=config.budget_search)
    components = [example_gen, statistics_gen, schema_gen, example_validator, transform,
                  *([previous_model] if previous_model is not None else []), trainer, extractor]
    for arm in [*config.arms, *config.budget_labels()]:
        model = extractor.outputs[arm_output_key(arm)]
        evaluator = tfx.components.Evaluator(
            examples=example_gen.outputs["examples"], model=model,
            eval_config=eval_config(schema.label, config.min_auc)).with_id(f"Evaluator_{arm}")
        pusher = tfx.components.Pusher(
            model=model, model_blessing=evaluator.outputs["blessing"],
            push_destination=tfx.proto.PushDestination(
                filesystem=tfx.proto.PushDestination.Filesystem(
                    base_directory=os.path.join(config.serving_dir, f"{config.model_name}_{arm}"))),
        ).with_id(f"Pusher_{arm}")
        components += [evaluator, pusher]
    if orchestrator == "airflow":
        from pipelines.airflow_support import use_legacy_drivers

        use_legacy_drivers(components)  # TFX's legacy launcher; see airflow_support
    return components


def create_pipeline(config: PipelineConfig, metadata: bool = True, orchestrator: str = "local",
                    name: str | None = None, vertex_image: str | None = None):
    """The TFX pipeline object (SQLite MLMD at `config.metadata_path` when `metadata`;
    `vertex_image`: see `create_components`)."""
    from tfx import v1 as tfx

    kwargs = {}
    if metadata:
        os.makedirs(os.path.dirname(os.path.abspath(config.metadata_path)), exist_ok=True)
        kwargs["metadata_connection_config"] = (
            tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))
    return tfx.dsl.Pipeline(
        pipeline_name=name or config.name, pipeline_root=config.pipeline_root,
        components=create_components(config, orchestrator, vertex_image), enable_cache=config.enable_cache,
        beam_pipeline_args=config.beam_pipeline_args(), **kwargs)


class ComponentProgress:
    """Prints one line as each component of a LocalDagRunner run starts and ends.

    LocalDagRunner reports `Component <id> is running.` / `... is finished.` (and the
    launcher `A cached execution <n> is used.`) through absl at INFO, which is hidden by
    default and whose level components reset while they run. So for the duration of the
    run the `logging` name in those two TFX modules is pointed at a thin proxy that turns
    exactly these messages into progress lines and forwards everything else unchanged.

        with ComponentProgress(total=14):
            tfx.orchestration.LocalDagRunner().run(pipeline)
    """

    _RUNNING, _FINISHED = "Component %s is running.", "Component %s is finished."
    _CACHED = "A cached execution %d is used."

    def __init__(self, total: int, prefix: str = "[matta pipeline]", stream=None, clock=None):
        import time

        self.total, self.prefix = total, prefix
        self.stream = stream
        self.clock = clock or time.monotonic
        self.done = 0
        self._started: dict[str, float] = {}
        self._cached: set[str] = set()
        self._current: str | None = None

    def _print(self, text: str) -> None:
        import sys

        print(f"{self.prefix} {text}", file=self.stream or sys.stdout, flush=True)

    def handle(self, msg, args) -> bool:
        """True if (msg, args) was a progress message (consumed), else False."""
        if msg == self._RUNNING and args:
            self._current = str(args[0])
            self._started[self._current] = self.clock()
            self._print(f"[{self.done + 1:2d}/{self.total}] {self._current} running ...")
            return True
        if msg == self._CACHED and self._current:
            self._cached.add(self._current)
            return True
        if msg == self._FINISHED and args:
            node = str(args[0])
            self.done += 1
            now = self.clock()
            seconds = now - self._started.get(node, now)
            how = "cache hit" if node in self._cached else f"done in {seconds:.0f}s"
            self._print(f"[{self.done:2d}/{self.total}] {node} {how}")
            return True
        return False

    def __enter__(self):
        from tfx.orchestration.local import local_dag_runner
        from tfx.orchestration.portable import launcher

        self._patched = [(m, m.logging) for m in (local_dag_runner, launcher)]
        for module, real in self._patched:
            module.logging = _ProgressLogging(real, self)
        return self

    def __exit__(self, *exc):
        for module, real in self._patched:
            module.logging = real
        return False


class _ProgressLogging:
    """Stands in for `absl.logging` in a module: progress messages to a ComponentProgress."""

    def __init__(self, real, progress: ComponentProgress):
        self._real, self._progress = real, progress

    def info(self, msg, *args, **kwargs):
        if not self._progress.handle(msg, args):
            self._real.info(msg, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def run_pipeline(config: PipelineConfig, progress: bool = False, stream=None) -> None:
    """Runs the pipeline with LocalDagRunner; `progress` prints a line per component
    (to `stream`, default stdout)."""
    from tfx import v1 as tfx

    pipeline = create_pipeline(config)
    if not progress:
        tfx.orchestration.LocalDagRunner().run(pipeline)
        return
    with ComponentProgress(total=len(pipeline.components), stream=stream):
        tfx.orchestration.LocalDagRunner().run(pipeline)
