"""End-to-end MatTA pipeline on a few thousand generated rows (LocalDagRunner, SQLite MLMD).

One module-scoped pipeline root: run 1 (span 1) -> run 2 (span 1 again: every component a
cache hit) -> run 3 (span 2: Trainer warm-starts from run 1's TA checkpoint).
"""
import filecmp
import io
import json
import os

import pytest

import matta_tf  # noqa: F401


def tiny_config(root):
    from matta_tf.datasets import SyntheticLogConfig
    from pipelines.demo import demo_config

    syn = SyntheticLogConfig(num_numeric=3, num_categorical=4, cardinalities=(50, 20, 300, 8),
                             num_crosses=2)
    cfg = demo_config(str(root), syn, train_steps=30, eval_steps=5, batch_size=128, min_auc=0.0,
                      ranker={"student": {"embedding_dim": 2, "cross_layers": 1, "mlp_widths": [8]},
                              "warmup_steps": 5})
    assert "--direct_running_mode=in_memory" in cfg.beam_pipeline_args()  # the demo default
    return cfg, syn


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipelines.demo import write_span
    from pipelines.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("e2e")
    cfg, syn = tiny_config(root)
    write_span(cfg.data_root, 1, 3000, syn_config=syn)
    progress = [io.StringIO(), io.StringIO()]
    run_pipeline(cfg, progress=True, stream=progress[0])
    first = _executions(cfg)
    run_pipeline(cfg, progress=True, stream=progress[1])
    second = _executions(cfg)
    write_span(cfg.data_root, 2, 2000, syn_config=syn)
    run_pipeline(cfg)
    third = _executions(cfg)
    cfg.progress_lines = [p.getvalue().splitlines() for p in progress]
    return cfg, first, second, third


def _store(cfg):
    from ml_metadata.metadata_store import metadata_store
    from tfx import v1 as tfx

    return metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(cfg.metadata_path))


def _executions(cfg):
    store = _store(cfg)
    types = {t.id: t.name for t in store.get_execution_types()}
    return [(types[e.type_id], e.last_known_state, e.id) for e in store.get_executions()]


def test_runs_to_pusher_and_mlmd_holds_everything(runs):
    from ml_metadata.proto import metadata_store_pb2

    cfg, first, _, _ = runs
    complete = {name for name, state, _ in first
                if state == metadata_store_pb2.Execution.COMPLETE}
    for name in ("ClickLogExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                 "Transform", "Trainer", "StudentExtractor", "Evaluator", "Pusher"):
        assert any(name in n for n in complete), (name, complete)
    store = _store(cfg)
    type_names = {store.get_artifact_type(t).name for t in
                  ("Examples", "Model", "ModelEvaluation", "ModelBlessing", "PushedModel",
                   "TransformGraph", "matta.QuarantinedRows")}
    assert len(type_names) == 7
    pushed = store.get_artifacts_by_type("PushedModel")
    assert len(pushed) >= len(cfg.arms)
    assert all(p.custom_properties["pushed"].int_value == 1 for p in pushed[:len(cfg.arms)])


def test_students_load_score_and_serving_layout(runs):
    import numpy as np
    import pyarrow.parquet as pq
    import tensorflow as tf
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from matta_tf.export import make_examples
    from pipelines.lineage import format_summary, summarize

    cfg, *_ = runs
    summary = summarize(cfg)
    assert list(summary["arms"]) == list(cfg.arms)
    with open(summary["models_config"]) as f:
        parsed = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    entry = parsed.model_config_list.config[0]
    assert dict(entry.version_labels) == {a: i + 1 for i, a in enumerate(cfg.arms)}
    # tensorflow_model_server resolves base_path against its own working directory.
    assert entry.base_path == os.path.join(summary["layout"], cfg.model_name)
    from serving.config import WARMUP_RELATIVE_PATH, parse_batching_parameters, read_warmup_requests

    parse_batching_parameters(os.path.join(summary["layout"], "batching_parameters.txt"))
    table = pq.read_table(os.path.join(cfg.data_root, "span-1", "logs", "part-0.parquet"))
    rows = table.slice(0, 64).to_pydict()
    feats = {k: v for k, v in rows.items() if k[0] in "IC" and k[1:].isdigit()}
    examples = tf.constant(make_examples(feats))
    params, scores = [], {}
    for version, (arm, info) in enumerate(summary["arms"].items(), start=1):
        assert info["version"] == version
        assert info["path"] == os.path.join(summary["layout"], cfg.model_name, str(version))
        assert 0.0 <= info["auc"] <= 1.0 and info["binary_crossentropy"] > 0
        assert info["example_count"] > 0 and info["blessed"]
        assert info["pushed"] and os.path.isdir(info["pushed_to"])
        # The pushed SavedModel is the very one in the TF Serving layout for this arm.
        assert filecmp.cmp(os.path.join(info["path"], "saved_model.pb"),
                           os.path.join(info["pushed_to"], "saved_model.pb"), shallow=False)
        # Warm-up requests from the eval split, in the layout and in the pushed copy alike;
        # replaying one through the SavedModel gives finite probabilities.
        for root in (info["path"], info["pushed_to"]):
            warm = read_warmup_requests(os.path.join(root, WARMUP_RELATIVE_PATH))
            assert [len(w.predict_log.request.inputs["examples"].string_val) for w in warm] == [1, 8]
        loaded = tf.saved_model.load(info["path"])
        warm_batch = tf.constant(list(warm[1].predict_log.request.inputs["examples"].string_val))
        assert np.all(np.isfinite(loaded.signatures["serving_default"](examples=warm_batch)["probability"]))
        out = loaded.signatures["serving_default"](examples=examples)
        p = out["probability"].numpy()
        assert p.shape == (64,) and np.all((p > 0) & (p < 1))
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-out["logit"].numpy())), rtol=1e-5)
        scores[arm] = p
        params.append(info["params"])
    assert params == sorted(params) and params[0] < params[-1]  # student < mix < ta
    assert not np.allclose(scores["student"], scores["ta"])
    table = format_summary(summary, cfg.serving_dir).splitlines()
    for version, (arm, info) in enumerate(summary["arms"].items(), start=1):
        row = next(ln.split() for ln in table if ln.startswith(arm + " "))
        assert row[1:4] == [str(version), f"{info['params']:,d}", f"{info['madds_per_example']:,d}"]
        assert row[6:8] == [f"{info['auc']:.4f}", f"{info['binary_crossentropy']:.4f}"]
        assert row[8] == os.path.join("<serving>", os.path.relpath(info["pushed_to"], cfg.serving_dir))


def test_demo_ab_replay_serves_the_pipeline_students(runs, tmp_path):
    """The demo's last stage on the pipeline's own models.config: real `matta serve` over
    gRPC loopback, the A/B router, the durable event log and the report."""
    from pipelines.demo import run_ab_replay
    from pipelines.lineage import summarize
    from serving.ab import read_events

    cfg, *_ = runs
    _, syn = tiny_config(tmp_path / "unused")
    summary = summarize(cfg)
    report = run_ab_replay(str(tmp_path), summary["models_config"], rows=3000, requests=150,
                           syn_config=syn)
    assert report["experiment"]["control"] == "student"
    assert [a["label"] for a in report["experiment"]["arms"]] == list(cfg.arms)
    assert report["simulation"]["requests"] == 150 and report["simulation"]["errors"] == 0
    events = read_events(str(tmp_path / "ab" / "events.jsonl"))
    exposures = [e for e in events if e["type"] == "exposure"]
    assert len(exposures) == 150 and not any(e["fallback"] for e in exposures)
    assert sum(m["exposures"] for m in report["arms"].values()) == 150
    assert all(m["exposures"] > 20 for m in report["arms"].values())  # 3 equal arms of 150
    assert report["arms"]["student"].get("vs_control") is None
    assert report["arms"]["ta"]["vs_control"]["ci95_low"] <= report["arms"]["ta"]["vs_control"]["lift"]
    # Offline AUC of each served student on the held-out log, as served.
    assert all(0.5 < report["arms"][arm]["offline"]["auc"] <= 1.0 for arm in cfg.arms)
    assert os.path.getsize(report["paths"]["html"]) > 1000
    assert "--model-config " + summary["models_config"] in report["rerun_command"]


def test_cli_pipeline_run_prints_the_student_table(runs, tmp_path, capsys):
    """`matta pipeline run --config FILE` on the already-run pipeline: every component is a
    cache hit, and the run ends with the students read back from MLMD."""
    import yaml

    from matta_tf.cli import main
    from pipelines.lineage import format_summary, summarize

    cfg, *_ = runs
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    assert main(["pipeline", "run", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"pipeline {cfg.name} finished" in out
    assert format_summary(summarize(cfg), cfg.serving_dir) in out


def test_second_run_is_all_cache_hits(runs):
    from ml_metadata.proto import metadata_store_pb2

    _, first, second, _ = runs
    new = [(n, s) for n, s, i in second if i not in {x[2] for x in first}]
    assert new, "the second run recorded no executions"
    assert all(s == metadata_store_pb2.Execution.CACHED for n, s in new if "Resolver" not in n
               and "resolver" not in n), new


def test_trainer_writes_tensorboard_events(runs):
    import glob

    import tensorflow as tf

    cfg, *_ = runs
    store = _store(cfg)
    runs_dirs = [a.uri for a in store.get_artifacts_by_type("ModelRun")]
    assert runs_dirs
    events = sorted(glob.glob(os.path.join(runs_dirs[0], "**", "events.out.tfevents.*"),
                              recursive=True))
    assert events, f"no TensorBoard event file under {runs_dirs[0]}"
    tags = {}
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(os.path.basename(os.path.dirname(path)), set()).add(value.tag)
    # Keras writes train/ and validation/ runs; epoch losses in both, batch scalars in train.
    assert "epoch_loss" in tags.get("train", set()), tags
    assert "epoch_loss" in tags.get("validation", set()), tags
    assert {"batch_loss", "batch_student_auc", "batch_steps_per_second"} <= tags["train"], tags


def test_progress_lines_name_every_component_and_cache_hits(runs):
    from pipelines.pipeline import create_components

    cfg, *_ = runs
    ids = [c.id for c in create_components(cfg)]
    first, second = cfg.progress_lines
    n = len(ids)
    assert len(first) == len(second) == 2 * n, first
    for lines in (first, second):
        started = [ln.split("] ", 2)[2].split()[0] for ln in lines if ln.endswith("running ...")]
        assert sorted(started) == sorted(ids)
        assert lines[-1].startswith(f"[matta pipeline] [{n:2d}/{n}] ")
    assert sum("done in" in ln for ln in first) == n
    hits = {ln.split("] ", 2)[2].split()[0] for ln in second if ln.endswith("cache hit")}
    assert hits == set(ids) - {"previous_span_model"}, second


def test_component_progress_lines_and_restores_tfx_logging():
    from absl import logging as absl_logging
    from tfx.orchestration.local import local_dag_runner
    from tfx.orchestration.portable import launcher

    from pipelines.pipeline import ComponentProgress

    forwarded = []

    class Spy:
        def info(self, msg, *args):
            forwarded.append(msg % args)

    stream, ticks = io.StringIO(), iter([0.0, 12.4, 20.0, 21.0])
    real_logging = local_dag_runner.logging
    local_dag_runner.logging = Spy()  # stands for absl.logging: sees what is forwarded
    try:
        with ComponentProgress(total=2, stream=stream, clock=lambda: next(ticks)):
            local_dag_runner.logging.info("Component %s is running.", "Trainer")
            local_dag_runner.logging.info("Going to run %s", "x")  # not progress: forwarded
            local_dag_runner.logging.info("Component %s is finished.", "Trainer")
            local_dag_runner.logging.info("Component %s is running.", "Pusher")
            launcher.logging.info("A cached execution %d is used.", 4)
            local_dag_runner.logging.info("Component %s is finished.", "Pusher")
        assert isinstance(local_dag_runner.logging, Spy)  # restored on exit
    finally:
        local_dag_runner.logging = real_logging
    assert launcher.logging is absl_logging
    assert stream.getvalue().splitlines() == [
        "[matta pipeline] [ 1/2] Trainer running ...", "[matta pipeline] [ 1/2] Trainer done in 12s",
        "[matta pipeline] [ 2/2] Pusher running ...", "[matta pipeline] [ 2/2] Pusher cache hit"]
    assert forwarded == ["Going to run x"]


def test_new_span_warm_starts_from_previous_ta(runs):
    from ml_metadata.proto import metadata_store_pb2

    cfg, _, second, third = runs
    store = _store(cfg)
    trainer_runs = [i for n, s, i in third if n.endswith("Trainer")
                    and s == metadata_store_pb2.Execution.COMPLETE]
    assert len(trainer_runs) == 2
    models = []
    for exec_id in trainer_runs:
        events = store.get_events_by_execution_ids([exec_id])
        out = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        models += [a for a in store.get_artifacts_by_id(out) if "/Trainer/model/" in a.uri]
    info = []
    for m in sorted(models, key=lambda a: a.id):
        with open(os.path.join(m.uri, "Format-Serving", "train_info.json")) as f:
            info.append(json.load(f))
    assert info[0]["warm_start"] is None
    ws = info[1]["warm_start"]
    assert ws is not None and ws["copied"] > 0 and ws["remapped"] == 4 and ws["rows_carried"] > 0
    assert models[0].uri.split("/")[-2] in ws["from"] or str(models[0].id) in ws["from"]


@pytest.mark.parametrize("runner,schema_version", [("vertex", "2.1.0"), ("kubeflow-v2", "2.0.0")])
def test_compile_kfp_v2_pipeline_job_has_every_component(tmp_path, runner, schema_version):
    from pipelines.compile import compile_pipeline
    from pipelines.pipeline import create_components

    cfg, _ = tiny_config(tmp_path)
    image = "example.com/matta:test"
    out = compile_pipeline(cfg, runner, str(tmp_path / "spec.json"), image=image)
    with open(out) as f:
        job = json.load(f)
    spec = job["pipelineSpec"]  # a KFP v2 PipelineJob: pipelineSpec + runtimeConfig
    # Both parse strictly (unknown fields raise) as kfp's own protos.
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())
    parsed = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    assert set(parsed.root.dag.tasks) == set(spec["root"]["dag"]["tasks"])
    assert spec["schemaVersion"] == schema_version and spec["sdkVersion"].startswith("tfx-")
    assert spec["pipelineInfo"]["name"] == "matta-demo"  # `_` is illegal in KFP names
    assert job["runtimeConfig"]["gcsOutputDirectory"] == cfg.pipeline_root
    ids = [c.id for c in create_components(cfg, orchestrator="kfp_v2")]
    expected = {"ClickLogExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                "Transform", "Trainer", "StudentExtractor"} | {
                    f"{k}_{a}" for a in cfg.arms for k in ("Evaluator", "Pusher")}
    assert set(ids) == expected  # the local-only previous-span resolver is not compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == expected
    executors = spec["deploymentSpec"]["executors"]
    for cid, task in tasks.items():
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]]["container"]
        assert container["image"] == image, cid
    assert tasks["Trainer"]["dependentTasks"] == ["SchemaGen", "Transform"]
    assert "base_model" not in tasks["Trainer"]["inputs"]["artifacts"]
    for arm in cfg.arms:
        assert tasks[f"Pusher_{arm}"]["inputs"]["artifacts"]["model_blessing"][
            "taskOutputArtifact"]["producerTask"] == f"Evaluator_{arm}"
    gen = executors[spec["components"]["ClickLogExampleGen"]["executorLabel"]]["container"]
    assert "components.example_gen.ClickLogExecutor" in gen["args"]
    assert "--direct_num_workers=1" in gen["args"]  # Beam args travel with the spec
    quarantine = spec["components"]["ClickLogExampleGen"]["outputDefinitions"]["artifacts"]
    assert "matta.QuarantinedRows" in quarantine["quarantine"]["artifactType"]["instanceSchema"]


def test_compile_kfp_v2_warm_start_importer(tmp_path):
    from pipelines.compile import compile_pipeline

    cfg, _ = tiny_config(tmp_path)
    cfg.warm_start_uri = "gs://bucket/matta/Trainer/model/7"
    with open(compile_pipeline(cfg, "vertex", str(tmp_path / "spec.json"))) as f:
        spec = json.load(f)["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["Trainer"]["inputs"]["artifacts"]["base_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model", "producerTask": "warm_start_model"}
    importer = spec["deploymentSpec"]["executors"][
        spec["components"]["warm_start_model"]["executorLabel"]]["importer"]
    assert importer["artifactUri"]["constant"] == cfg.warm_start_uri


def test_compile_rejects_unknown_runner(tmp_path):
    from pipelines.compile import compile_pipeline

    cfg, _ = tiny_config(tmp_path)
    with pytest.raises(ValueError, match="unknown runner 'argo'"):
        compile_pipeline(cfg, "argo", str(tmp_path / "x"))


# The Airflow DAG tests live in tests/test_airflow.py.


def test_data_summary_and_html_views_come_from_the_newest_run(runs, tmp_path):
    """ExampleGen accounting, anomalies and the TensorBoard dir read back from MLMD, and the
    HTML views (TFDV's own statistics visualisation, anomalies, TFMA per arm) written."""
    from pipelines.lineage import data_summary, format_data_summary, write_reports

    cfg, *_ = runs
    data = data_summary(cfg)
    counts = data["examplegen"]
    assert counts["rows_in"] == 2000  # the newest run read span 2
    assert counts["rows_in"] == counts["rows_written"] + counts["rows_quarantined"]
    assert set(data["anomalies"]) == {"train", "eval"}
    assert os.path.isdir(data["tensorboard_logdir"])
    text = format_data_summary(data)
    assert text.splitlines()[0].startswith("data: 2,000 rows read, ")
    assert f"tensorboard --logdir {data['tensorboard_logdir']}" in text
    paths = write_reports(cfg, str(tmp_path / "reports"), data=data)
    assert set(paths) == {"statistics", "anomalies", "evaluation"}
    stats_page = open(paths["statistics"]).read()
    assert "facets-iframe" in stats_page  # TFDV's own (Facets) view, train vs eval
    assert "<h2>train: " in stats_page and "<h2>eval: " in stats_page and "<td>C1</td>" in stats_page
    evaluation = open(paths["evaluation"]).read()
    assert all(f"<td>{arm}</td>" in evaluation for arm in cfg.arms) and "auc" in evaluation


def _latest_uri(cfg, type_name: str, producer: str | None = None) -> str:
    store = _store(cfg)
    arts = store.get_artifacts_by_type(type_name)
    if producer:
        arts = [a for a in arts if producer in a.uri]
    return max(arts, key=lambda a: a.id).uri


def test_student_extractor_budget_picks_are_exported_with_their_labels(runs, tmp_path):
    """StudentExtractor with budgets (the pipeline's `budgets:`), run on the e2e pipeline's
    own Trainer model, Transform graph and ExampleGen examples: each pick fits its budget,
    is served under its label in models.config (versions after the arms), and a p99 pick
    was checked on a real `matta serve`."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    from tfx.types import artifact_utils, standard_artifacts

    from components.student_extractor import StudentExtractorExecutor, arm_output_key
    from matta_tf.frontier import parse_spec_label

    cfg, *_ = runs
    model = standard_artifacts.Model()
    model.uri = _latest_uri(cfg, "Model", "Trainer")
    graph = standard_artifacts.TransformGraph()
    graph.uri = _latest_uri(cfg, "TransformGraph")
    examples = standard_artifacts.Examples()
    examples.uri = _latest_uri(cfg, "Examples", "ClickLogExampleGen")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    budgets = [{"max_madds": 400}, {"max_params": 10**9, "label": "largest"},
               {"max_p99_ms": 500.0, "batch": 16, "label": "p99_500ms"}]
    arms = ["student", "ta"]
    outputs = {}
    for key in ["students", *[arm_output_key(a) for a in arms + ["madds_400", "largest", "p99_500ms"]]]:
        art = standard_artifacts.Model()
        art.uri = str(tmp_path / key)
        os.makedirs(art.uri)
        outputs[key] = [art]
    # 'eval' stands in for a validation split here (the pipeline config insists on one).
    search = {"selection_split": "eval", "grid_points": 2, "random_specs": 4, "heuristic_points": 3,
              "latency_batch": 16,
              "latency_calls": 20, "max_rows": 300}
    StudentExtractorExecutor().Do(
        {"model": [model], "transform_graph": [graph], "examples": [examples]}, outputs,
        {"arms": json.dumps(arms), "mixnmatch": 1, "model_name": cfg.model_name,
         "budgets": json.dumps(budgets), "budget_search": json.dumps(search)})
    students = outputs["students"][0].uri
    with open(os.path.join(students, "students.json")) as f:
        summary = json.load(f)["arms"]
    assert sorted(summary, key=lambda a: summary[a]["version"]) == ["student", "ta", "madds_400", "largest",
                                                                    "p99_500ms"]
    assert summary["madds_400"]["madds_per_example"] <= 400
    with open(os.path.join(students, "frontier", "selection.json")) as f:
        picks = {p["budget"]["label"]: p for p in json.load(f)}
    for label, pick in picks.items():  # the search's pick, or the heuristic's when not clearly better
        ev = pick["evidence"]
        assert pick["label"] == (ev["search"] if ev["chosen"].startswith("search") else ev["rule"])
        assert summary[label]["selected_spec"] == pick["label"]
    assert summary["p99_500ms"]["served_p99_ms"] is not None and summary["p99_500ms"]["served_p99_ms"] <= 500
    for label in ("madds_400", "largest", "p99_500ms"):
        spec = parse_spec_label(summary[label]["selected_spec"])
        assert summary[label]["spec"] == spec.to_dict()
        assert os.path.isfile(os.path.join(outputs[arm_output_key(label)][0].uri, "Format-Serving",
                                           "saved_model.pb"))
    with open(os.path.join(students, "models.config")) as f:
        parsed = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    assert dict(parsed.model_config_list.config[0].version_labels) == {
        "student": 1, "ta": 2, "madds_400": 3, "largest": 4, "p99_500ms": 5}
    for name in ("frontier.json", "frontier.png", "selection.json"):
        assert os.path.isfile(os.path.join(students, "frontier", name))


def test_cli_students_frontier_and_select(runs, tmp_path, capsys):
    """`matta students frontier` on the e2e pipeline's artifacts writes the frontier and its
    plot; `matta students select` exports the best front member within each budget and
    says so; an impossible budget is an error exit naming it."""
    from matta_tf.cli import main
    from matta_tf.frontier import pareto_front

    cfg, *_ = runs
    out = tmp_path / "frontier"
    assert main(["students", "frontier", "--model", _latest_uri(cfg, "Model", "Trainer"),
                 "--transform-graph", _latest_uri(cfg, "TransformGraph"),
                 "--examples", os.path.join(_latest_uri(cfg, "Examples", "ClickLogExampleGen"), "Split-eval"),
                 "--out", str(out), "--grid-points", "2", "--random-specs", "3", "--max-rows", "200",
                 "--heuristic-points", "3",
                 "--latency-batch", "8", "--latency-calls", "10"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with open(out / "frontier.json") as f:
        frontier = json.load(f)
    assert printed["candidates"] == len(frontier["records"]) and (out / "frontier.png").is_file()
    front = pareto_front(frontier["records"].values(), "madds")
    assert [r["label"] for r in front] == frontier["fronts"]["madds"]
    limit = front[len(front) // 2]["madds_per_example"]
    picks = tmp_path / "picks"
    assert main(["students", "select", "--frontier", str(out), "--max-madds", str(limit),
                 "--out", str(picks)]) == 0
    exported = json.loads(capsys.readouterr().out)["exports"]
    label = f"madds_{limit}"
    assert list(exported) == [label] and (picks / label / "saved_model.pb").is_file()
    with open(picks / "selection.json") as f:
        pick = json.load(f)["picks"][0]
    # The best validation AUC within the budget is that front member; it is exported unless
    # it does not beat the heuristic line's pick at 95% confidence.
    assert pick["evidence"]["search"] == front[len(front) // 2]["label"]
    assert pick["label"] == (pick["evidence"]["search"] if pick["evidence"]["chosen"] == "search"
                             else pick["evidence"]["rule"])
    assert pick["record"]["madds_per_example"] <= limit
    assert main(["students", "select", "--frontier", str(out), "--max-madds", "1", "--out", str(picks)]) == 1
    assert "no exported candidate fits madds_1" in capsys.readouterr().err
