"""A/B orchestration behind `matta ab report` and `matta ab simulate` (and `matta demo`).

    build_report(experiment, events, models_config, offline)  -> report dict
    simulate_and_report(experiment, log, events, SimulationConfig(...), ...) -> (stats, report)
    print_report(report)  # the terminal report: the decision first

The statistics and the rendering live in `serving.analysis`; this module reads the inputs
(experiment config, event log, models.config and the StudentExtractor's students.json for
model sizes, offline metrics with the data they were computed on), runs the replay and
writes the report. Only the standard library is imported at module level: the CLI imports
this module for every `matta` invocation.
"""
from __future__ import annotations

import json
import os
from typing import Any

OFFLINE_NOTE = "not the pipeline's TFMA eval split"


def model_info(models_config: str, model_name: str, arm_labels: dict[str, str]) -> dict:
    """Per arm: version label, version, parameters and bytes of its SavedModel, and the
    multiply-adds per example when the StudentExtractor's students.json sits next to
    models.config."""
    from serving.analysis import savedmodel_size
    from serving.config import parse_models_config

    models = {m.name: m for m in parse_models_config(models_config)}
    if model_name not in models:
        raise ValueError(f"{models_config}: no model {model_name!r}")
    model = models[model_name]
    students = {}
    students_path = os.path.join(os.path.dirname(os.path.abspath(models_config)), "students.json")
    if os.path.exists(students_path):
        with open(students_path) as f:
            doc = json.load(f)
        if doc.get("model_name", model_name) == model_name:
            students = doc.get("arms", {})
    info = {}
    for arm, label in arm_labels.items():
        if label not in model.labels:
            raise ValueError(f"{models_config}: model {model_name!r} has no label {label!r}")
        version = model.labels[label]
        info[arm] = {"label": label, "version": version,
                     **savedmodel_size(os.path.join(model.base_path, str(version)))}
        madds = students.get(label, {}).get("madds_per_example")
        if madds is not None and students[label].get("version", version) == version:
            info[arm]["madds_per_example"] = int(madds)
    return info


def load_events(path: str) -> tuple[list[dict], int, str | None]:
    """(events, number of unreadable lines the reader skipped, the first one described).

    ValueError when the log holds no readable event."""
    from serving.ab import read_events_with_errors

    events, errors = read_events_with_errors(path)
    first = str(errors[0]) if errors else None
    if not events:
        if errors:
            raise ValueError(f"{path}: no readable events ({len(errors)} unreadable "
                             f"line{'s' if len(errors) != 1 else ''} skipped; first: {first})")
        raise ValueError(f"{path}: no events to analyse (the event log is empty)")
    return events, len(errors), first


def load_offline(offline_path: str) -> tuple[dict, dict]:
    """(arm -> metrics, description of the data) from an offline-metrics JSON file.

    Format written by `matta ab simulate`: {"data": {"label": ..., ...}, "arms": {arm:
    {"auc": ...}}}; a bare {arm: {"auc": ...}} mapping is accepted, its data unstated."""
    with open(offline_path) as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError(f"{offline_path}: expected a JSON object")
    if isinstance(doc.get("arms"), dict):
        data = dict(doc.get("data") or {})
        data.setdefault("label", f"offline metrics from {offline_path} (data not stated)")
        return doc["arms"], data
    return doc, {"label": f"offline metrics from {offline_path} (data not stated)",
                 "path": os.path.abspath(offline_path)}


def build_report(experiment_path: str, events_path: str, models_config: str | None,
                 offline_path: str | None) -> dict:
    """The report dict (decision first) of an experiment's event log."""
    from serving.ab import ExperimentConfig
    from serving.analysis import summarize

    exp = ExperimentConfig.from_file(experiment_path)
    labels = {a.name: a.label for a in exp.arms}
    info = model_info(models_config, exp.model_name, labels) if models_config else None
    offline = data = None
    if offline_path:
        offline, data = load_offline(offline_path)
    events, unreadable, first = load_events(events_path)
    report = summarize(events, [a.name for a in exp.arms], exp.control, exp.shares(), info,
                       offline, offline_data=data, unreadable_lines=unreadable)
    if first:
        report["unreadable_first"] = first
    report["experiment"] = exp.to_dict()
    report["events_path"] = os.path.abspath(events_path)
    return report


def print_report(report: dict) -> None:
    """The terminal report `matta ab report` prints: the decision line, then the tables."""
    from serving.analysis import format_report

    for line in format_report(report):
        print(line)


def replay_offline_metrics(client, exp, log_path: str, table, examples) -> dict | None:
    """Each arm's offline AUC / log loss on the replayed log, labelled with that data; None
    when the log has no labels."""
    import numpy as np

    from serving.simulate import offline_metrics

    if "label" not in table.column_names:
        return None
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.float64)
    arms = offline_metrics(client, exp.model_name, {a.name: a.label for a in exp.arms},
                           examples, labels)
    rows = int(len(labels))
    return {"data": {"label": (f"offline AUC on the replayed log {os.path.basename(log_path)}, "
                               f"{rows:,} rows ({OFFLINE_NOTE})"),
                     "path": os.path.abspath(log_path), "rows": rows, "note": OFFLINE_NOTE},
            "arms": arms}


def simulate_and_report(experiment_path: str, log_path: str, events_path: str, sim_config,
                        *, teacher_path: str | None = None, server: str | None = None,
                        model_config: str | None = None, timeout_s: float = 2.0,
                        report_dir: str | None = None) -> tuple[dict, dict | None]:
    """`matta ab simulate` as a function: replays `log_path` through the experiment's router.

    Serves from `server` (grpc:// or http://), or from an in-process `matta serve` started
    on free loopback ports for `model_config`. Returns (run statistics, report or None);
    the report (JSON + HTML, with each arm's offline AUC on the log when it has labels)
    is written only when `report_dir` is given, and its paths are under report["paths"];
    then a run in which no request succeeded is a ValueError (nothing to report).
    """
    from serving.ab import ABRouter, EventLog, ExperimentConfig
    from serving.analysis import check_out_dir, json_safe, write_report
    from serving.client import make_client
    from serving.examples import encode_rows, rows_from_table
    from serving.simulate import load_log_table, relevance_from_table, run_simulation

    if report_dir:
        check_out_dir(report_dir)  # before the replay, not after it
    exp = ExperimentConfig.from_file(experiment_path)
    table = load_log_table(log_path, teacher_path)
    relevance = relevance_from_table(table)
    examples = encode_rows(rows_from_table(table))
    local = None
    if model_config:
        from serving.server import ModelServer, ServerOptions

        local = ModelServer.from_config(model_config, ServerOptions(grpc_port=0, rest_port=0)).start()
        address = f"127.0.0.1:{local.grpc_port}"
    else:
        address = server or exp.address
        if not address:
            raise ValueError("no server: give --server, --model-config or an experiment address")
    clients: dict[str, Any] = {}
    report = None
    try:
        clients = {a.name: make_client(a.address or address, timeout_s=timeout_s) for a in exp.arms}
        with EventLog(events_path) as event_log:
            router = ABRouter(exp, clients, event_log, timeout_s=timeout_s)
            stats = run_simulation(router, examples, relevance, sim_config)
        if report_dir and stats["requests"] == 0:
            raise ValueError(f"no request succeeded ({stats['errors']} failed; first error: "
                             f"{stats.get('first_error')}), so there is no report")
        if report_dir:
            os.makedirs(report_dir, exist_ok=True)
            offline_path = None
            offline = replay_offline_metrics(clients[exp.control], exp, log_path, table, examples)
            if offline is not None:
                offline_path = os.path.join(report_dir, "offline_metrics.json")
                with open(offline_path, "w") as f:
                    json.dump(json_safe(offline), f, indent=2, allow_nan=False)
            report = build_report(experiment_path, events_path, model_config, offline_path)
            report["simulation"] = stats
            report["paths"] = write_report(report, report_dir, title=f"A/B simulation: {exp.name}")
    finally:
        for c in clients.values():
            c.close()
        if local is not None:
            local.stop()
    return stats, report
