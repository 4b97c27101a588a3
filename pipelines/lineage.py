"""What a pipeline run produced, read back from ML Metadata lineage, and its HTML views.

`summarize(config)` follows the newest StudentExtractor execution's own artifacts to each
arm's evaluation and push (so every number belongs to the SavedModel whose path is shown);
`data_summary(config)` reads ExampleGen's accounting, ExampleValidator's anomalies and the
Trainer's TensorBoard log dir of the newest run; `write_reports(config, out_dir)` writes the
HTML views a user opens: TFDV's own statistics visualisation (train vs eval), the anomalies
table, and each arm's TFMA metrics. `format_summary` / `format_data_summary` are the
terminal tables `matta demo` and `matta pipeline run` print.
"""
from __future__ import annotations

import html
import json
import os

from pipelines.config import PipelineConfig


def summarize(config: PipelineConfig) -> dict:
    """The students of the latest run, read back from MLMD lineage.

    Starts at the newest StudentExtractor execution that completed (or was a cache hit) and
    follows its own output artifacts: the `students` TF Serving layout, then per arm the
    `model_<arm>` artifact -> the Evaluator execution that read it (AUC / log-loss / example
    count from its ModelEvaluation) -> the Pusher execution that read it (PushedModel).
    So every number printed belongs to the very SavedModel whose path is printed.
    """
    import tensorflow_model_analysis as tfma
    from ml_metadata.proto import metadata_store_pb2 as pb

    store = _store(config)
    done = (pb.Execution.COMPLETE, pb.Execution.CACHED)
    extractor = _latest_execution(store, "StudentExtractor", done)
    out = {"arms": {}}
    if extractor is None:
        return out
    outputs = _artifacts(store, extractor.id, pb.Event.OUTPUT)
    students = next((a for a in outputs if "arms" in a.custom_properties), None)
    if students is None:
        raise RuntimeError(f"StudentExtractor execution {extractor.id} has no `students` output")
    with open(os.path.join(students.uri, "students.json")) as f:
        info = json.load(f)
    out["layout"] = students.uri
    out["models_config"] = os.path.join(students.uri, "models.config")
    arm_models = {a.custom_properties["arm"].string_value: a for a in outputs
                  if "arm" in a.custom_properties}
    for arm, a in sorted(info["arms"].items(), key=lambda kv: kv[1]["version"]):
        row = {"version": a["version"], "path": a["path"], "params": a["params"],
               "madds_per_example": a["madds_per_example"],
               "saved_model_bytes": a["saved_model_bytes"]}
        model = arm_models.get(arm)
        consumers = _consumers(store, model.id, done) if model is not None else {}
        evaluation = _output_of_type(store, consumers.get(f"Evaluator_{arm}"), "ModelEvaluation")
        if evaluation is not None:
            row["evaluation_uri"] = evaluation.uri
            for metrics in _quiet(tfma.load_metrics, evaluation.uri):
                for kv in metrics.metric_keys_and_values:
                    if kv.key.name in ("auc", "binary_crossentropy", "example_count"):
                        row[kv.key.name] = kv.value.double_value.value
        blessing = _output_of_type(store, consumers.get(f"Evaluator_{arm}"), "ModelBlessing")
        if blessing is not None:
            row["blessed"] = bool(blessing.custom_properties["blessed"].int_value)
        pushed = _output_of_type(store, consumers.get(f"Pusher_{arm}"), "PushedModel")
        if pushed is not None:
            row["pushed"] = bool(pushed.custom_properties["pushed"].int_value)
            if row["pushed"]:
                row["pushed_to"] = pushed.custom_properties["pushed_destination"].string_value
        out["arms"][arm] = row
    return out


def _quiet(fn, *args):
    """fn(*args) with TensorFlow's deprecation warnings (from TFMA's reader) muted."""
    import tensorflow as tf

    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return list(fn(*args))
    finally:
        logger.setLevel(level)


def _node_name(store, execution_id: int) -> str | None:
    node_type = store.get_context_type("node").id
    for c in store.get_contexts_by_execution(execution_id):
        if c.type_id == node_type:
            return c.name.split(".")[-1]
    return None


def _latest_execution(store, node: str, states):
    execs = [e for e in store.get_executions() if e.last_known_state in states
             and _node_name(store, e.id) == node]
    return max(execs, key=lambda e: e.id) if execs else None


def _artifacts(store, execution_id: int, event_type) -> list:
    ids = [e.artifact_id for e in store.get_events_by_execution_ids([execution_id])
           if e.type == event_type]
    return store.get_artifacts_by_id(ids)


def _consumers(store, artifact_id: int, states) -> dict:
    """node id -> newest finished execution that read `artifact_id`."""
    from ml_metadata.proto import metadata_store_pb2 as pb

    ids = {e.execution_id for e in store.get_events_by_artifact_ids([artifact_id])
           if e.type == pb.Event.INPUT}
    out = {}
    for e in sorted(store.get_executions_by_id(list(ids)), key=lambda e: e.id):
        if e.last_known_state in states:
            out[_node_name(store, e.id)] = e
    return out


def _output_of_type(store, execution, type_name: str):
    from ml_metadata.proto import metadata_store_pb2 as pb

    if execution is None:
        return None
    type_id = store.get_artifact_type(type_name).id
    arts = [a for a in _artifacts(store, execution.id, pb.Event.OUTPUT) if a.type_id == type_id]
    return max(arts, key=lambda a: a.id) if arts else None


def format_summary(summary: dict, serving_dir: str | None = None) -> str:
    """The student table: one row per arm in serving-version order."""
    rows = summary["arms"]
    n_eval = {int(r["example_count"]) for r in rows.values() if "example_count" in r}
    lines = [f"students (TF Serving layout): {summary.get('layout')}",
             f"models.config (one version label per arm): {summary.get('models_config')}",
             f"eval: TFMA on the eval split ({', '.join(str(n) for n in sorted(n_eval)) or '?'}"
             " examples per arm)",
             f"{'arm':8s} {'version':>7s} {'params':>9s} {'MAdds/ex':>9s} {'SavedModel':>10s} "
             f"{'AUC':>7s} {'logloss':>8s}  pushed to"]
    for arm, r in rows.items():
        pushed = r.get("pushed_to")
        if pushed and serving_dir and pushed.startswith(serving_dir.rstrip("/") + "/"):
            pushed = os.path.join("<serving>", os.path.relpath(pushed, serving_dir))
        if not pushed:
            pushed = "not pushed" + (" (not blessed)" if r.get("blessed") is False else "")
        lines.append(f"{arm:8s} {r['version']:7d} {r['params']:9,d} {r['madds_per_example']:9,d} "
                     f"{r['saved_model_bytes'] / 1e6:7.2f} MB {r.get('auc', float('nan')):7.4f} "
                     f"{r.get('binary_crossentropy', float('nan')):8.4f}  {pushed}")
    if serving_dir:
        lines.append(f"<serving> = {serving_dir}")
    return "\n".join(lines)


def _store(config: PipelineConfig):
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    return metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path))


def _newest_output(store, node: str, type_name: str):
    from ml_metadata.proto import metadata_store_pb2 as pb

    execution = _latest_execution(store, node, (pb.Execution.COMPLETE, pb.Execution.CACHED))
    return _output_of_type(store, execution, type_name)


def _split_dirs(uri: str) -> dict[str, str]:
    return {name[len("Split-"):]: os.path.join(uri, name) for name in sorted(os.listdir(uri))
            if name.startswith("Split-")}


def data_summary(config: PipelineConfig) -> dict:
    """ExampleGen accounting, anomalies per split and the TensorBoard log dir of the newest run."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    store = _store(config)
    out: dict = {}
    examples = _newest_output(store, "ClickLogExampleGen", "Examples")
    if examples is not None:
        props = examples.custom_properties
        out["examplegen"] = {k: props[k].int_value for k in props
                             if k.startswith(("rows_", "written_", "quarantined_", "teacher_", "lines_"))
                             and props[k].WhichOneof("value") == "int_value"}
    from components.example_gen import QuarantinedRows

    quarantine = _newest_output(store, "ClickLogExampleGen", QuarantinedRows.TYPE_NAME)
    if quarantine is not None:
        out["quarantine_uri"] = quarantine.uri
    statistics = _newest_output(store, "StatisticsGen", "ExampleStatistics")
    if statistics is not None:
        out["statistics_uri"] = statistics.uri
    anomalies = _newest_output(store, "ExampleValidator", "ExampleAnomalies")
    if anomalies is not None:
        out["anomalies"] = {}
        for split, path in _split_dirs(anomalies.uri).items():
            proto = anomalies_pb2.Anomalies()
            with open(os.path.join(path, "SchemaDiff.pb"), "rb") as f:
                proto.ParseFromString(f.read())
            out["anomalies"][split] = {name: info.short_description or info.description
                                       for name, info in proto.anomaly_info.items()}
        out["anomalies_uri"] = anomalies.uri
    model_run = _newest_output(store, "Trainer", "ModelRun")
    if model_run is not None:
        out["tensorboard_logdir"] = model_run.uri
    return out


def format_data_summary(data: dict) -> str:
    lines = []
    counts = data.get("examplegen")
    if counts:
        reasons = {k[len("quarantined_"):]: v for k, v in counts.items()
                   if k.startswith("quarantined_") and v}
        lines.append(f"data: {counts.get('rows_in', 0):,} rows read, {counts.get('rows_written', 0):,} written, "
                     f"{counts.get('rows_quarantined', 0):,} quarantined"
                     + (f" ({', '.join(f'{k} {v:,}' for k, v in sorted(reasons.items()))})" if reasons else "")
                     + f"; teacher logits joined to {counts.get('teacher_rows_joined', 0):,} rows")
    if "anomalies" in data:
        found = {split: names for split, names in data["anomalies"].items() if names}
        lines.append("anomalies (ExampleValidator): " + ("none" if not found else "; ".join(
            f"{split}: {', '.join(f'{k} ({v})' for k, v in sorted(names.items()))}"
            for split, names in sorted(found.items()))))
    if data.get("tensorboard_logdir"):
        lines.append(f"training curves: tensorboard --logdir {data['tensorboard_logdir']}")
    return "\n".join(lines)


def write_reports(config: PipelineConfig, out_dir: str, summary: dict | None = None,
                  data: dict | None = None) -> dict[str, str]:
    """statistics.html (TFDV's visualisation, train vs eval), anomalies.html and
    evaluation.html (each arm's TFMA metrics) under `out_dir`; returns their paths."""
    import tensorflow_data_validation as tfdv
    import tensorflow_model_analysis as tfma
    from tensorflow_data_validation.utils import display_util

    data = data_summary(config) if data is None else data
    summary = summarize(config) if summary is None else summary
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    if data.get("statistics_uri"):
        splits = _split_dirs(data["statistics_uri"])
        stats = {s: tfdv.load_stats_binary(os.path.join(p, "FeatureStats.pb")) for s, p in splits.items()}
        names = sorted(stats, key=lambda s: (s != "train", s))
        facets = display_util.get_statistics_html(
            stats[names[0]], stats[names[1]] if len(names) > 1 else None,
            lhs_name=names[0], rhs_name=names[1] if len(names) > 1 else "rhs_statistics")
        body = ("".join(_statistics_table(split, stats[split]) for split in names)
                + "<h2>TFDV Facets overview</h2><p>TFDV's own visualisation (your browser loads the "
                "Facets script from its CDN; the tables above need no network).</p>" + facets)
        paths["statistics"] = _write(out_dir, "statistics.html", _page("Data statistics (StatisticsGen)", body))
    if "anomalies" in data:
        rows = "".join(f"<tr><td>{html.escape(split)}</td><td>{html.escape(name)}</td><td>{html.escape(text)}</td></tr>"
                       for split, found in sorted(data["anomalies"].items())
                       for name, text in sorted(found.items()))
        body = (f"<table><tr><th>split</th><th>feature</th><th>anomaly</th></tr>{rows}</table>" if rows
                else "<p>No anomalies: every split matches the schema.</p>")
        paths["anomalies"] = _write(out_dir, "anomalies.html", _page("ExampleValidator anomalies", body))
    arms = summary.get("arms", {})
    if arms:
        metric_rows = []
        for arm, row in arms.items():
            uri = row.get("evaluation_uri")
            metrics = {}
            if uri:
                for m in _quiet(tfma.load_metrics, uri):
                    for kv in m.metric_keys_and_values:
                        if kv.value.HasField("double_value"):
                            metrics[kv.key.name] = kv.value.double_value.value
            metric_rows.append((arm, row, metrics))
        keys = sorted({k for _, _, m in metric_rows for k in m})
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["arm", "params", "multiply-adds/ex", *keys])
        body_rows = "".join(
            "<tr>" + f"<td>{html.escape(arm)}</td><td>{row['params']:,}</td><td>{row['madds_per_example']:,}</td>"
            + "".join(f"<td>{m[k]:.4f}</td>" if k in m else "<td></td>" for k in keys) + "</tr>"
            for arm, row, m in metric_rows)
        paths["evaluation"] = _write(out_dir, "evaluation.html", _page(
            "TFMA evaluation per arm (the pipeline's eval split)",
            f"<table><tr>{head}</tr>{body_rows}</table>"))
    return paths


def _statistics_table(split: str, stats) -> str:
    """One row per feature of a DatasetFeatureStatisticsList: count, missing, and the
    numeric moments or the categorical cardinality and top value."""
    dataset = stats.datasets[0]
    rows = []
    for feature in dataset.features:
        name = ".".join(feature.path.step) or feature.name
        if feature.HasField("num_stats"):
            n = feature.num_stats
            common, detail = n.common_stats, f"mean {n.mean:.4g}, std {n.std_dev:.4g}, min {n.min:.4g}, max {n.max:.4g}, zeros {n.num_zeros:,}"
        elif feature.HasField("string_stats"):
            c = feature.string_stats
            top = c.top_values[0].value if c.top_values else ""
            common, detail = c.common_stats, f"{c.unique:,} distinct, top {top!r}"
        else:
            continue
        present = common.num_non_missing
        missing = common.num_missing
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{present:,}</td>"
                    f"<td>{missing / max(1, present + missing):.2%}</td><td>{html.escape(detail)}</td></tr>")
    return (f"<h2>{html.escape(split)}: {dataset.num_examples:,} examples</h2><table><tr><th>feature</th>"
            f"<th>present</th><th>missing</th><th>distribution</th></tr>{''.join(rows)}</table>")


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
            "table{border-collapse:collapse}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _write(out_dir: str, name: str, text: str) -> str:
    path = os.path.join(out_dir, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
