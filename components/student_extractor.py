"""StudentExtractor: cut N students out of the trained TA and export each for TF Serving.

Inputs: the Trainer's `model` (see `components.trainer_module`: RankerConfig + TA
checkpoint) and the Transform's `transform_graph`. For every arm in `arms` (names:
`student`, `ta`, or `mix_k` = the k-th of `mixnmatch` evenly spaced Mix'n'Match sizes,
`RankerConfig.mixnmatch_specs`), it runs `matta_tf.extract.extract` and exports the
standalone model with `matta_tf.export.export_saved_model`, with the TFT transform layer
as `preprocess` so the SavedModel takes *raw* serialized tf.Examples (on the fused input
path, `matta_tf.input_path`, which reproduces the TFT transform with vectorised ops and is
checked against it before export; `predict_ids` takes TFT ids).

With the optional `examples` input (ExampleGen's output), the first records of its eval
split become TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`, batch
sizes 1 and 8) in every exported SavedModel, so a server replays them at load instead of
paying the first-call graph setup on live traffic.

Outputs:
* `students` (Model): a deployment made by `serving.config.write_deployment`: TF Serving
  layout `<uri>/<model_name>/<version>/saved_model.pb` (versions 1..N in arm order),
  `<uri>/models.config` (ModelServerConfig text proto, one version label per arm, absolute
  base path as `tensorflow_model_server` needs), `<uri>/batching_parameters.txt`, and
  `<uri>/students.json` (arm -> version, spec, params, multiply-adds per example).
* `model_<arm>` (Model) per arm: the same SavedModel under `Format-Serving/`, the layout
  the standard Evaluator and Pusher read, so each arm is evaluated and pushed separately.
"""
from __future__ import annotations

import json
import os

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

STUDENTS_KEY = "students"
DEFAULT_ARMS = ("student", "mix_1", "ta")
# Columns that are not model inputs (label, ids, teacher) - left out of the serving parse spec.
from matta_tf.contract import NON_FEATURE_COLUMNS


def arm_output_key(arm: str) -> str:
    return f"model_{arm}"


def check_arms(arms, mixnmatch: int) -> list[str]:
    arms = list(arms)
    if not arms or len(set(arms)) != len(arms):
        raise ValueError(f"StudentExtractor: arms must be distinct and non-empty, got {arms}")
    for arm in arms:
        if arm in ("student", "ta"):
            continue
        if not (arm.startswith("mix_") and arm[4:].isdigit() and 1 <= int(arm[4:]) <= mixnmatch):
            raise ValueError(f"StudentExtractor: arm {arm!r} is not 'student', 'ta' or 'mix_k' with "
                             f"1 <= k <= mixnmatch={mixnmatch}")
    return arms


def arm_specs(config, arms, mixnmatch: int) -> dict:
    mixes = config.mixnmatch_specs(mixnmatch)
    out = {}
    for arm in arms:
        if arm == "student":
            out[arm] = config.student_spec()
        elif arm == "ta":
            out[arm] = config.ta_spec()
        elif arm in mixes:
            out[arm] = mixes[arm]
        else:
            raise ValueError(f"StudentExtractor: {arm!r} is not among the distinct Mix'n'Match sizes "
                             f"{sorted(mixes)} of this model (student and TA too close?)")
    return out


def serving_parse_spec(tft_output, exclude=NON_FEATURE_COLUMNS) -> dict:
    return {k: v for k, v in tft_output.raw_feature_spec().items() if k not in exclude}


def warmup_examples(examples_artifacts, count: int = 8, split: str = "eval") -> list[bytes]:
    """The first `count` serialized tf.Examples of ExampleGen's `split` (gzip TFRecords)."""
    import glob

    import tensorflow as tf

    split_dir = artifact_utils.get_split_uri(examples_artifacts, split)
    files = sorted(glob.glob(os.path.join(split_dir, "*")))
    if not files:
        raise ValueError(f"StudentExtractor: no {split!r} split files under {split_dir} for warm-up")
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
    return [r.numpy() for r in records]


class StudentExtractorExecutor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        import tensorflow as tf
        import tensorflow_transform as tft

        from components import trainer_module
        from matta_tf.export import export_saved_model
        from matta_tf.extract import cost, extract
        from serving.config import make_warmup_logs, write_deployment, write_warmup_requests

        arms = json.loads(exec_properties["arms"])
        mixnmatch = int(exec_properties["mixnmatch"])
        model_name = exec_properties["model_name"]
        model_artifact = artifact_utils.get_single_instance(input_dict["model"])
        model_dir = os.path.join(model_artifact.uri, "Format-Serving")
        transform_uri = artifact_utils.get_single_uri(input_dict["transform_graph"])
        model, _ = trainer_module.load_trained(model_dir)
        specs = arm_specs(model.config, arms, mixnmatch)
        tft_output = tft.TFTransformOutput(transform_uri)
        parse_spec = serving_parse_spec(tft_output)

        warmup = warmup_examples(input_dict["examples"]) if input_dict.get("examples") else []
        students = artifact_utils.get_single_instance(output_dict[STUDENTS_KEY])
        summary = {}
        export_dirs = {}
        for version, arm in enumerate(arms, start=1):
            standalone = extract(model, specs[arm], name=arm)
            target = artifact_utils.get_single_instance(output_dict[arm_output_key(arm)])
            export_dir = os.path.join(target.uri, "Format-Serving")
            # A fresh TFT layer per export: each SavedModel tracks its own copy of the assets.
            # The fused input path (the default) is checked against the TFT graph on probe
            # inputs and on the warm-up examples before it is written; a mismatch is an error.
            export_saved_model(standalone, export_dir, parse_spec,
                               preprocess=tft_output.transform_features_layer(),
                               tft_output=tft_output, check_examples=warmup)
            size = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, fs in os.walk(export_dir) for f in fs)
            if warmup:  # in the export itself, so the pushed copy warms up too
                write_warmup_requests(export_dir, make_warmup_logs(model_name, warmup))
            export_dirs[arm] = export_dir
            c = cost(model.config, specs[arm])
            summary[arm] = {"version": version, "spec": specs[arm].to_dict(), **c,
                            "saved_model_bytes": size, "warmup_requests": len(warmup) > 0}
            for a in (target, students):
                a.set_int_custom_property(f"{arm}_params", int(c["params"]))
            target.set_string_custom_property("arm", arm)
            tf.get_logger().info("exported %s (%d params) to %s", arm, c["params"], export_dir)
        budgets = json.loads(exec_properties.get("budgets") or "[]")
        if budgets:
            export_dirs.update(self._budget_students(model, tft_output, input_dict, output_dict, exec_properties,
                                                     budgets, students, summary, len(arms), model_name))
        deployment = write_deployment(students.uri, model_name, export_dirs)
        for arm, path in deployment.version_dirs.items():
            summary[arm]["path"] = path
        with open(os.path.join(students.uri, "students.json"), "w") as f:
            json.dump({"model_name": model_name, "arms": summary}, f, indent=1, sort_keys=True)
        students.set_string_custom_property("arms", ",".join(arms))


    @staticmethod
    def _budget_students(model, tft_output, input_dict, output_dict, exec_properties, budgets, students,
                         summary, first_version, model_name) -> dict:
        """Frontier on the selection split, one pick per budget (see components.student_budget);
        writes `<students>/frontier/` (frontier.json, frontier.png, selection.json)."""
        import shutil

        import tensorflow as tf

        from components import student_budget
        from matta_tf.frontier import Budget

        search = student_budget.BudgetSearch.from_dict(json.loads(exec_properties.get("budget_search") or "{}"))
        if not input_dict.get("examples"):
            raise ValueError("StudentExtractor: budgets need the `examples` input (the selection split)")
        split_dir = artifact_utils.get_split_uri(input_dict["examples"], search.selection_split)
        serialized = student_budget.read_serialized(student_budget.split_files(split_dir), search.max_rows)
        workdir = os.path.join(students.uri, "frontier")
        log = lambda msg: tf.get_logger().info(msg)  # noqa: E731
        frontier = student_budget.build_frontier(
            model, tft_output, serialized, workdir, grid_points=search.grid_points,
            random_specs=search.random_specs, seed=search.seed, heuristic_points=search.heuristic_points,
            latency_batch=search.latency_batch,
            latency_calls=search.latency_calls, model_name=model_name, log=log)
        picks = student_budget.select_students(
            frontier, [Budget.from_dict(b) for b in budgets], serialized, verify_served=search.verify_served,
            confidence=search.confidence, log=log)
        student_budget.write_frontier(frontier, workdir)
        student_budget.write_frontier_plot(frontier, os.path.join(workdir, "frontier.png"), picks)
        with open(os.path.join(workdir, "selection.json"), "w") as f:
            json.dump(picks, f, indent=1, sort_keys=True)
        unmet = [p["budget"]["label"] for p in picks if p["label"] is None]
        if unmet:
            raise ValueError(f"StudentExtractor: no nested spec of this model fits budget(s) {unmet} "
                             f"(see {workdir}/frontier.json)")
        out = {}
        for version, pick in enumerate(picks, start=first_version + 1):
            label = pick["budget"]["label"]
            target = artifact_utils.get_single_instance(output_dict[arm_output_key(label)])
            export_dir = os.path.join(target.uri, "Format-Serving")
            if os.path.exists(export_dir):
                shutil.rmtree(export_dir)
            shutil.copytree(frontier["exports"][pick["label"]], export_dir)
            rec = pick["record"]
            summary[label] = {"version": version, "spec": rec["spec"], "params": rec["params"],
                              "madds_per_example": rec["madds_per_example"],
                              "saved_model_bytes": rec.get("saved_model_bytes"), "warmup_requests": True,
                              "budget": pick["budget"], "selected_spec": pick["label"],
                              "selection_split": search.selection_split, "validation_auc": rec["auc"],
                              "heuristic_spec": pick["heuristic"],
                              "served_p99_ms": (pick["served"] or {}).get("p99_ms")}
            for a in (target, students):
                a.set_int_custom_property(f"{label}_params", int(rec["params"]))
            target.set_string_custom_property("arm", label)
            out[label] = export_dir
        return out


class StudentExtractorSpecBase(ComponentSpec):
    PARAMETERS = {
        "arms": ExecutionParameter(type=str),
        "mixnmatch": ExecutionParameter(type=int),
        "model_name": ExecutionParameter(type=str),
        "budgets": ExecutionParameter(type=str, optional=True),  # JSON list of budget dicts
        "budget_search": ExecutionParameter(type=str, optional=True),  # JSON BudgetSearch
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {STUDENTS_KEY: ChannelParameter(type=standard_artifacts.Model)}


def _spec_class(arms):
    """A spec class with one `model_<arm>` output per arm (output keys depend on the arms)."""
    outputs = dict(StudentExtractorSpecBase.OUTPUTS)
    for arm in arms:
        outputs[arm_output_key(arm)] = ChannelParameter(type=standard_artifacts.Model)
    return type("StudentExtractorSpec", (StudentExtractorSpecBase,), {"OUTPUTS": outputs})


class StudentExtractor(base_component.BaseComponent):
    """Extracts and exports students; see the module docstring.

    Example:
        extractor = StudentExtractor(model=trainer.outputs["model"],
                                     transform_graph=transform.outputs["transform_graph"],
                                     arms=["student", "mix_1", "ta"], mixnmatch=1,
                                     examples=example_gen.outputs["examples"])  # warm-up
        extractor.outputs["model_student"]  # -> Evaluator / Pusher
    """

    SPEC_CLASS = StudentExtractorSpecBase
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(StudentExtractorExecutor)

    def __init__(self, model, transform_graph, arms=DEFAULT_ARMS, mixnmatch: int = 1,
                 model_name: str = "matta_ranker", examples=None, budgets=(), budget_search=None):
        from components.student_budget import BudgetSearch
        from matta_tf.frontier import Budget

        arms = check_arms(arms, mixnmatch)
        budgets = [Budget.from_dict(b, where=f"StudentExtractor: budgets[{i}]").to_dict()
                   for i, b in enumerate(budgets)]
        BudgetSearch.from_dict(budget_search or {}, where="StudentExtractor: budget_search")
        labels = [b["label"] for b in budgets]
        if len(set(labels)) != len(labels) or set(labels) & set(arms):
            raise ValueError(f"StudentExtractor: budget labels {labels} must be distinct and differ from the arms")
        if budgets and examples is None:
            raise ValueError("StudentExtractor: budgets need `examples` (the selection split)")
        spec_cls = _spec_class(arms + labels)
        channels = {STUDENTS_KEY: types.Channel(type=standard_artifacts.Model)}
        for arm in arms + labels:
            channels[arm_output_key(arm)] = types.Channel(type=standard_artifacts.Model)
        if examples is not None:  # optional input
            channels["examples"] = examples
        extra = {"budgets": json.dumps(budgets), "budget_search": json.dumps(budget_search or {})} if budgets else {}
        spec = spec_cls(model=model, transform_graph=transform_graph, arms=json.dumps(arms),
                        mixnmatch=int(mixnmatch), model_name=model_name, **extra, **channels)
        super().__init__(spec=spec)
