"""The demo's Transform stage, measured (issue 14).

    bin/matta-env python -m bench.bench_transform [--rows 50000] [--variants demo,no_stats]

Builds the demo's inputs (generated Parquet logs + teacher table -> ClickLogExampleGen ->
a schema inferred like SchemaGen, infer_feature_shape=False), then runs TFX's Transform
executor with `components.transform_module.preprocessing_fn` and the demo's custom
config (vocab_top_k 5000, 2 OOV buckets) on the DirectRunner (in_memory, 1 worker, as the
demo). Variants:

  legacy           the previous preprocessing_fn (transform_module.per_feature_preprocessing_fn: one
                   compute_and_apply_vocabulary per categorical feature), statistics on
  demo             transform_module.preprocessing_fn as the demo's pipeline runs it
                   (one-pass vocabularies; pre- and post-transform statistics on)
  no_stats         the same with disable_statistics=True (TFX's Transform then skips its
                   TFDV passes; a pipelines/pipeline.py option, not set there)
  legacy_no_stats  the previous function without statistics

Each variant's outputs are compared with the first's: the vocabulary files and sizes,
the transformed feature spec and the transformed examples (floats to 1e-5: TFT's
mean/variance combine is not bit-reproducible between two runs of the same function). The JSON (bench/results/ingest/transform.json) keeps the seconds per variant
with `uptime` load averages.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time

import matta_tf  # noqa: F401

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "ingest", "transform.json")
DEFAULT_WORKDIR = os.path.join(HERE, "results", "tmp", "transform")




def make_inputs(workdir: str, rows: int) -> tuple:
    """(examples artifact, schema artifact, transform custom config) like the demo's."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components import example_gen, logschema
    from components.transform_module import transform_custom_config
    from matta_tf.datasets import SyntheticLogConfig
    from pipelines.demo import synthetic_log_schema, write_span

    data = os.path.join(workdir, "data")
    if not os.path.exists(os.path.join(data, "done")):
        shutil.rmtree(data, ignore_errors=True)
        write_span(data, 1, rows)
        open(os.path.join(data, "done"), "w").close()
    schema = logschema.load_log_schema(synthetic_log_schema(SyntheticLogConfig()))
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(workdir, "examples")
    quarantine = example_gen.QuarantinedRows()
    quarantine.uri = os.path.join(workdir, "quarantine")
    if not os.path.exists(os.path.join(workdir, "examples.json")):
        shutil.rmtree(examples.uri, ignore_errors=True)
        os.makedirs(quarantine.uri, exist_ok=True)
        config = example_gen.make_click_log_config(
            schema, "span-1/teacher/*.parquet",
            {"method": "hash", "names": ["train", "eval"], "buckets": [9, 1]})
        input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
            name="single_split", pattern="span-1/logs/*.parquet")])
        ctx = base_beam_executor.BaseBeamExecutor.Context(
            beam_pipeline_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"],
            tmp_dir=os.path.join(workdir, "tmp"))
        example_gen.ClickLogExecutor(ctx).Do(
            {}, {"examples": [examples], "quarantine": [quarantine]},
            {"input_base": data, "input_config": proto_utils.proto_to_json(input_config),
             "click_log_config": json.dumps(config), "span": 1, "version": None})
        with open(os.path.join(workdir, "examples.json"), "w") as f:
            json.dump({"split_names": examples.split_names}, f)
    with open(os.path.join(workdir, "examples.json")) as f:
        examples.split_names = json.load(f)["split_names"]
    schema_artifact = standard_artifacts.Schema()
    schema_artifact.uri = os.path.join(workdir, "schema")
    schema_file = os.path.join(schema_artifact.uri, "schema.pbtxt")
    if not os.path.exists(schema_file):
        import tensorflow_data_validation as tfdv

        stats = tfdv.generate_statistics_from_tfrecord(
            os.path.join(examples.uri, "Split-train", "*.gz"))
        inferred = tfdv.infer_schema(stats, infer_feature_shape=False)
        os.makedirs(schema_artifact.uri, exist_ok=True)
        tfdv.write_schema_text(inferred, schema_file)
    return examples, schema_artifact, transform_custom_config(schema, 2, 5000)


def run_transform(workdir: str, name: str, examples, schema, custom_config: dict,
                  preprocessing_fn: str, disable_statistics: bool) -> tuple[float, str]:
    from tfx.components.transform import executor as transform_executor
    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from components.example_gen import QuarantinedRows  # noqa: F401  (registers the type)

    out = os.path.join(workdir, "runs", name)
    shutil.rmtree(out, ignore_errors=True)

    def artifact(cls, sub):
        a = cls()
        a.uri = os.path.join(out, sub)
        os.makedirs(a.uri, exist_ok=True)
        return a

    transformed = artifact(standard_artifacts.Examples, "transformed_examples")
    outputs = {
        "transform_graph": [artifact(standard_artifacts.TransformGraph, "transform_graph")],
        "transformed_examples": [transformed],
        "updated_analyzer_cache": [artifact(standard_artifacts.TransformCache, "cache")],
        "pre_transform_schema": [artifact(standard_artifacts.Schema, "pre_schema")],
        "pre_transform_stats": [artifact(standard_artifacts.ExampleStatistics, "pre_stats")],
        "post_transform_schema": [artifact(standard_artifacts.Schema, "post_schema")],
        "post_transform_stats": [artifact(standard_artifacts.ExampleStatistics, "post_stats")],
        "post_transform_anomalies": [artifact(standard_artifacts.ExampleAnomalies,
                                              "post_anomalies")],
    }
    props = {"preprocessing_fn": preprocessing_fn, "custom_config": json.dumps(custom_config),
             "force_tf_compat_v1": 0, "disable_statistics": int(disable_statistics),
             "splits_config": None, "module_file": None, "module_path": None}
    ctx = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--direct_num_workers=1", "--direct_running_mode=in_memory"],
        tmp_dir=os.path.join(out, "tmp"), unique_id=name)
    start = time.perf_counter()
    transform_executor.Executor(ctx).Do({"examples": [examples], "schema": [schema]}, outputs,
                                        props)
    return time.perf_counter() - start, out


def read_outputs(out: str) -> dict:
    """Vocabulary files, vocabulary sizes, the transformed feature spec and the
    transformed examples ({feature: values} per example, sorted)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    tft_output = tft.TFTransformOutput(os.path.join(out, "transform_graph"))
    assets = os.path.join(out, "transform_graph", "transform_fn", "assets")
    vocab, sizes = {}, {}
    for name in sorted(os.listdir(assets)):
        with open(os.path.join(assets, name), "rb") as f:
            vocab[name] = f.read()
        sizes[name] = int(tft_output.vocabulary_size_by_name(name))
    examples = {}
    base = os.path.join(out, "transformed_examples")
    for split in sorted(os.listdir(base)):
        files = sorted(tf.io.gfile.glob(os.path.join(base, split, "*")))
        rows = []
        for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            f = tf.train.Example.FromString(r.numpy()).features.feature
            rows.append({k: tuple(v.int64_list.value) if v.HasField("int64_list")
                         else tuple(v.float_list.value) for k, v in f.items()})
        examples[split] = sorted(rows, key=_sort_key)
    return {"vocab": vocab, "vocab_sizes": sizes, "examples": examples,
            "feature_spec": repr(sorted(tft_output.transformed_feature_spec().items()))}


def _sort_key(row: dict):
    return tuple((k, tuple(round(x, 3) for x in v)) for k, v in sorted(row.items()))


def same_outputs(a: dict, b: dict, rel: float = 1e-5) -> bool:
    """Equal vocabularies, sizes, feature spec and examples (floats to `rel`: TFT's
    mean/variance combine is not bit-reproducible from run to run)."""
    import math

    if (a["vocab"], a["vocab_sizes"], a["feature_spec"]) != (
            b["vocab"], b["vocab_sizes"], b["feature_spec"]):
        return False
    if a["examples"].keys() != b["examples"].keys():
        return False
    for split, rows in a["examples"].items():
        other = b["examples"][split]
        if len(rows) != len(other):
            return False
        for x, y in zip(rows, other, strict=True):
            if x.keys() != y.keys():
                return False
            for k in x:
                if len(x[k]) != len(y[k]) or not all(
                        u == v or (isinstance(u, float) and (math.isclose(u, v, rel_tol=rel,
                                                                          abs_tol=1e-6)
                                                             or (math.isnan(u) and math.isnan(v))))
                        for u, v in zip(x[k], y[k], strict=True)):
                    return False
    return True


VARIANTS = {
    "demo": ("components.transform_module.preprocessing_fn", False),
    "no_stats": ("components.transform_module.preprocessing_fn", True),
    "legacy": ("components.transform_module.per_feature_preprocessing_fn", False),
    "legacy_no_stats": ("components.transform_module.per_feature_preprocessing_fn", True),
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--variants", default="demo,legacy,no_stats,legacy_no_stats,demo,legacy",
                        help="comma list, run in this order (a name may repeat)")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    workdir = os.path.join(args.workdir, str(args.rows))
    os.makedirs(workdir, exist_ok=True)
    examples, schema, custom_config = make_inputs(workdir, args.rows)
    result = {"rows": args.rows, "load_before": list(os.getloadavg()), "variants": {}}
    reference = None
    for run, name in enumerate(args.variants.split(",")):
        fn, no_stats = VARIANTS[name]
        load = list(os.getloadavg())
        seconds, out = run_transform(workdir, name, examples, schema, custom_config, fn, no_stats)
        got = read_outputs(out)
        same = None
        if reference is None:
            reference = (name, got)
        else:
            same = same_outputs(got, reference[1])
        entry = result["variants"].setdefault(name, {
            "preprocessing_fn": fn, "disable_statistics": no_stats, "runs": []})
        entry["runs"].append({"order": run, "seconds": seconds, "load_before": load,
                              "outputs_equal_to": reference[0], "outputs_equal": same})
        entry["median_seconds"] = statistics.median(r["seconds"] for r in entry["runs"])
        print(f"  {name:16s} {seconds:7.1f} s  (load {load[0]:.1f})"
              + ("" if same is None else f"  outputs equal to {reference[0]}: {same}"),
              flush=True)
    result["load_after"] = list(os.getloadavg())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

