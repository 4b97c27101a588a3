"""`matta demo`: generate click logs + teacher logits, run the whole local pipeline, report.

Data: `matta_tf.datasets.write_click_logs` (Criteo-like synthetic logs with a known click
probability) as Parquet parts under `<root>/data/span-<N>/logs/`, teacher logits in a
separate table `<root>/data/span-<N>/teacher/`, joined by impression id in ExampleGen.
"""
from __future__ import annotations

import json
import os
import time

from pipelines.config import PipelineConfig


def synthetic_log_schema(syn_config) -> dict:
    numeric = list(syn_config.numeric_names)
    categorical = list(syn_config.categorical_names)
    columns = ([{"name": "impression_id", "type": "string"}, {"name": "timestamp", "type": "int"},
                {"name": "label", "type": "int"}]
               + [{"name": n, "type": "float"} for n in numeric]
               + [{"name": c, "type": "string"} for c in categorical])
    return {"format": "parquet", "columns": columns, "label": "label",
            "impression_id": "impression_id", "timestamp": "timestamp",
            "numeric_features": numeric, "categorical_features": categorical}


def write_span(data_root: str, span: int, rows: int, parts: int = 2, syn_config=None) -> str:
    """Writes span-<span>/logs/part-k.parquet and span-<span>/teacher/part-k.parquet."""
    from matta_tf.datasets import write_click_logs

    span_dir = os.path.join(data_root, f"span-{span}")
    per_part = [rows // parts + (1 if k < rows % parts else 0) for k in range(parts)]
    for k, n in enumerate(per_part):
        seed = span * 1000 + k  # distinct seeds -> distinct impression ids per part
        write_click_logs(os.path.join(span_dir, "logs", f"part-{k}.parquet"), n, seed=seed,
                         fmt="parquet",
                         teacher_path=os.path.join(span_dir, "teacher", f"part-{k}.parquet"),
                         config=syn_config)
    return span_dir


def demo_config(root: str, syn_config, **overrides) -> PipelineConfig:
    base = dict(
        data_root=os.path.join(root, "data"), pipeline_root=os.path.join(root, "pipeline"),
        name="matta_demo", log_schema=synthetic_log_schema(syn_config),
        input_pattern="span-{SPAN}/logs/*.parquet", teacher_pattern="span-{SPAN}/teacher/*.parquet",
        split={"method": "hash", "names": ["train", "eval"], "buckets": [9, 1]},
        ranker={"student": {"embedding_dim": 4, "cross_layers": 1, "mlp_widths": [32]},
                "ta_expansion": {"embedding_dim": 2.0, "cross_rank": 2.0, "mlp_width": 2.0},
                "warmup_steps": 100},
        train_steps=600, eval_steps=20, batch_size=512, vocab_top_k=5000, min_auc=0.55)
    base.update(overrides)
    return PipelineConfig(**base)


def summarize(config: PipelineConfig) -> dict:
    """Students of the latest run: paths, sizes, eval AUC / log-loss, pushed or not (MLMD)."""
    import tensorflow_model_analysis as tfma
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))

    def latest(type_name, producer, having=None):
        arts = [a for a in store.get_artifacts_by_type(type_name)
                if _producer(store, a.id) == producer
                and (having is None or having in a.custom_properties)]
        return max(arts, key=lambda a: a.id) if arts else None

    out = {"arms": {}}
    students = latest("Model", "StudentExtractor", having="arms")
    if students is not None:
        with open(os.path.join(students.uri, "students.json")) as f:
            info = json.load(f)
        out["layout"] = students.uri
        out["models_config"] = os.path.join(students.uri, "models.config")
        for arm, a in sorted(info["arms"].items(), key=lambda kv: kv[1]["version"]):
            row = {"path": a["path"], "params": a["params"],
                   "madds_per_example": a["madds_per_example"],
                   "saved_model_bytes": a["saved_model_bytes"]}
            evaluation = latest("ModelEvaluation", f"Evaluator_{arm}")
            if evaluation is not None:
                result = tfma.load_metrics(evaluation.uri)
                for metrics in result:
                    for kv in metrics.metric_keys_and_values:
                        if kv.key.name in ("auc", "binary_crossentropy", "example_count"):
                            row[kv.key.name] = kv.value.double_value.value
            pushed = latest("PushedModel", f"Pusher_{arm}")
            if pushed is not None:
                row["pushed"] = bool(pushed.custom_properties["pushed"].int_value)
                if row["pushed"]:
                    row["pushed_to"] = pushed.custom_properties["pushed_destination"].string_value
            out["arms"][arm] = row
    return out


def _producer(store, artifact_id):
    from ml_metadata.proto import metadata_store_pb2

    events = [e for e in store.get_events_by_artifact_ids([artifact_id])
              if e.type == metadata_store_pb2.Event.OUTPUT]
    if not events:
        return None
    contexts = store.get_contexts_by_execution(events[0].execution_id)
    for c in contexts:
        if c.type_id == store.get_context_type("node").id:
            return c.name.split(".")[-1]
    return None


def format_summary(summary: dict) -> str:
    lines = [f"students (TF Serving layout): {summary.get('layout')}",
             f"models.config: {summary.get('models_config')}",
             f"{'arm':8s} {'params':>9s} {'MAdds/ex':>9s} {'SavedModel':>11s} {'AUC':>7s} "
             f"{'logloss':>8s}  pushed"]
    for arm, r in summary["arms"].items():
        lines.append(f"{arm:8s} {r['params']:9d} {r['madds_per_example']:9d} "
                     f"{r['saved_model_bytes'] / 1e6:9.2f}MB {r.get('auc', float('nan')):7.4f} "
                     f"{r.get('binary_crossentropy', float('nan')):8.4f}  "
                     f"{r.get('pushed_to', 'no')}")
    return "\n".join(lines)


def run_demo(root: str, rows: int = 200_000, **overrides) -> dict:
    from matta_tf.datasets import SyntheticLogConfig
    from pipelines.pipeline import run_pipeline

    t0 = time.time()
    syn = SyntheticLogConfig()
    config = demo_config(root, syn, **overrides)
    print(f"[matta demo] writing {rows} click-log rows + teacher logits to {config.data_root}",
          flush=True)
    write_span(config.data_root, 1, rows)
    print(f"[matta demo] data ready ({time.time() - t0:.0f}s); running the TFX pipeline "
          f"(MLMD {config.metadata_path})", flush=True)
    run_pipeline(config)
    summary = summarize(config)
    summary["seconds"] = time.time() - t0
    print(format_summary(summary))
    print(f"[matta demo] done in {summary['seconds']:.0f}s")
    return summary
