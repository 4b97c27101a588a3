"""`matta pipeline run|compile` and `matta demo` (TensorFlow/TFX imported in handlers only)."""
from __future__ import annotations

import os
import shutil
import sys


def _load_config(args):
    from pipelines.config import PipelineConfig

    config = PipelineConfig.from_file(args.config)
    if args.beam_arg:
        config.beam_args = list(config.beam_args) + list(args.beam_arg)
    return config


def _run(args) -> int:
    from pipelines.lineage import data_summary, format_data_summary, format_summary, summarize
    from pipelines.pipeline import run_pipeline

    config = _load_config(args)
    run_pipeline(config, progress=True)
    print(f"pipeline {config.name} finished; MLMD at {config.metadata_path}")
    # The data and the students of this run, read back from MLMD (as `matta demo` prints them).
    print(format_data_summary(data_summary(config)))
    print(format_summary(summarize(config), config.serving_dir))
    return 0


def _compile(args) -> int:
    from pipelines.compile import compile_pipeline

    config = _load_config(args)
    schedule = None if args.schedule.lower() == "none" else args.schedule
    path = compile_pipeline(config, args.runner, args.output, image=args.image, schedule=schedule)
    print(f"wrote {args.runner} pipeline spec to {path}")
    if args.runner != "airflow" and not config.warm_start_uri:
        print("note: no warm start in this spec - KFP v2 compiles only TFX's built-in resolvers, "
              "not the previous-span one; set warm_start_uri in the config to warm-start from "
              "a given Trainer model", file=sys.stderr)
    return 0


def _demo(args) -> int:
    from pipelines.demo import run_demo

    root = os.path.abspath(args.root)
    if os.path.exists(os.path.join(root, "pipeline")):
        if args.fresh:
            for part in ("data", "pipeline", "ab", "pipeline.yaml"):
                path = os.path.join(root, part)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
            print(f"[matta demo] --fresh: removed the earlier run in {root}")
        else:
            # The data are deterministic (same seeds), so TFX's cache reuses every component
            # whose inputs did not change; the A/B stage always starts a new event log.
            print(f"[matta demo] {root} holds an earlier run: running again there (TFX cache "
                  "reuses unchanged components; --fresh starts over)")
    summary = run_demo(root, rows=args.rows, ab_requests=args.ab_requests)
    return 0 if summary["arms"] else 1


def register(subparsers) -> None:
    pipeline = subparsers.add_parser("pipeline", help="run or compile the MatTA TFX pipeline")
    sub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION")
    run = sub.add_parser("run", help="run locally (LocalDagRunner, SQLite MLMD, Beam DirectRunner)")
    run.add_argument("--config", required=True, help="pipeline config YAML/JSON")
    run.add_argument("--beam-arg", action="append", default=[],
                     help="extra Beam pipeline arg, e.g. --beam-arg=--runner=FlinkRunner (repeatable)")
    run.set_defaults(func=_run)
    comp = sub.add_parser("compile", help="write a pipeline spec / DAG file for a scheduler")
    comp.add_argument("--config", required=True)
    comp.add_argument("--runner", required=True, choices=["vertex", "kubeflow-v2", "airflow"])
    comp.add_argument("--output", required=True, help="output file (.json for vertex/kubeflow-v2, .py for airflow)")
    comp.add_argument("--image", default="gcr.io/tfx-oss-public/tfx:1.21.0",
                      help="container image with matta installed (vertex/kubeflow-v2)")
    comp.add_argument("--beam-arg", action="append", default=[])
    comp.add_argument("--schedule", default="@daily",
                      help="airflow: the DAG's schedule, a cron expression or preset such as "
                           "@hourly (default @daily); 'none' = triggered runs only")
    comp.set_defaults(func=_compile)
    pipeline.set_defaults(func=lambda args: (pipeline.print_help(sys.stderr), 2)[1])

    demo = subparsers.add_parser("demo", help="generate click logs and run the whole pipeline locally")
    demo.add_argument("--root", default="matta-demo", help="working folder (default ./matta-demo)")
    demo.add_argument("--rows", type=int, default=200_000)
    demo.add_argument("--fresh", action="store_true",
                      help="delete an earlier run in --root first (default: run again there, reusing "
                           "TFX's cache)")
    demo.add_argument("--ab-requests", type=int, default=4_000,
                      help="requests replayed through the A/B router at the end (0 = skip)")
    demo.set_defaults(func=_demo)
