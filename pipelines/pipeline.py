"""`create_pipeline(config)`: the MatTA TFX pipeline, from click logs to pushed students.

    ClickLogExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator
                       -> Transform -> Trainer (MatTA run_fn; base_model = previous span's
                          model via PreviousSpanModelStrategy) -> StudentExtractor
                       -> per arm: Evaluator (TFMA AUC / log-loss, blessing) -> Pusher

Component ids are stable (`Evaluator_student`, `Pusher_ta`, ...) so MLMD caching works
across runs.
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


def create_components(config: PipelineConfig) -> list:
    from tfx import v1 as tfx

    from components import logschema
    from components.example_gen import ClickLogExampleGen
    from components.student_extractor import StudentExtractor, arm_output_key
    from components.transform_module import transform_custom_config
    from pipelines.warm_start import PreviousSpanModelStrategy

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
    previous_model = tfx.dsl.Resolver(
        strategy_class=PreviousSpanModelStrategy,
        examples=example_gen.outputs["examples"],
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
    ).with_id("previous_span_model")
    trainer = tfx.components.Trainer(
        run_fn="components.trainer_module.run_fn",
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        base_model=previous_model.outputs["model"],
        train_args=tfx.proto.TrainArgs(num_steps=config.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=config.eval_steps),
        custom_config={"transform": transform_config, "ranker": dict(config.ranker),
                       "batch_size": config.batch_size, "epochs": config.epochs,
                       "optimizer": config.optimizer, "learning_rate": config.learning_rate})
    extractor = StudentExtractor(model=trainer.outputs["model"],
                                 transform_graph=transform.outputs["transform_graph"],
                                 arms=config.arms, mixnmatch=config.mixnmatch,
                                 model_name=config.model_name)
    components = [example_gen, statistics_gen, schema_gen, example_validator, transform,
                  previous_model, trainer, extractor]
    for arm in config.arms:
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
    return components


def create_pipeline(config: PipelineConfig, metadata: bool = True):
    """The TFX pipeline object (SQLite MLMD at `config.metadata_path` when `metadata`)."""
    from tfx import v1 as tfx

    kwargs = {}
    if metadata:
        os.makedirs(os.path.dirname(os.path.abspath(config.metadata_path)), exist_ok=True)
        kwargs["metadata_connection_config"] = (
            tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))
    return tfx.dsl.Pipeline(
        pipeline_name=config.name, pipeline_root=config.pipeline_root,
        components=create_components(config), enable_cache=config.enable_cache,
        beam_pipeline_args=config.beam_pipeline_args(), **kwargs)


def run_pipeline(config: PipelineConfig) -> None:
    from tfx import v1 as tfx

    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))
