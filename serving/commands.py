"""CLI: `matta serve`, `matta serving config`, `matta ab report`, `matta ab simulate`.

    matta serving config --model-name ranker --arm student=exports/student \
        --arm mid=exports/mid --arm ta=exports/ta --out deploy --warmup-log heldout.parquet
    matta serve --model-config deploy/models.config --grpc-port 8500 --rest-port 8501
    matta ab simulate --experiment exp.json --log heldout.parquet \
        --server grpc://127.0.0.1:8500 --events events.jsonl --requests 2000 --report-dir out
    matta ab report --experiment exp.json --events events.jsonl \
        --model-config deploy/models.config --offline out/offline_metrics.json --out out
"""
from __future__ import annotations

import json
import sys

# The A/B orchestration lives in serving.ab_orchestration (standard library only at
# import time); these names stay importable from here (pipelines.demo uses them).
from serving.ab_orchestration import (  # noqa: F401
    build_report,
    print_report,
    simulate_and_report,
)


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve models.config over TF Serving's gRPC + REST APIs (local server)")
    serve.add_argument("--model-config", required=True, help="models.config text proto")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--grpc-port", type=int, default=8500, help="0 = any free port")
    serve.add_argument("--rest-port", type=int, default=8501, help="0 = any free port, -1 = off")
    serve.add_argument("--max-request-bytes", type=int, default=8 * 1024 * 1024)
    serve.add_argument("--max-concurrency", type=int, default=4)
    serve.add_argument("--grpc-threads", type=int, default=8)
    serve.add_argument("--grace-seconds", type=float, default=5.0)
    serve.add_argument("--no-warmup", action="store_true")
    serve.add_argument("--file-system-poll-wait-seconds", type=float, default=1.0,
                       help="rescan 'latest'/'all' models for new versions this often (0 = never)")
    serve.add_argument("--max-batch-size", type=int, default=8192,
                       help="most instances (0th dimension) per request; more is INVALID_ARGUMENT")
    serve.add_argument("--max-decoded-bytes", type=int, default=0,
                       help="most bytes a request's input tensors may decode to, checked from "
                            "their declared shapes before allocating (0 = 8 x --max-request-bytes)")
    serve.add_argument("--enable-batching", action="store_true",
                       help="merge concurrent requests for the same model version and signature "
                            "into one model call (TF Serving's --enable_batching); give "
                            "--grpc-threads at least the number of concurrent clients")
    serve.add_argument("--batching-parameters-file",
                       help="TF Serving BatchingParameters text proto, e.g. the "
                            "batching_parameters.txt next to models.config (default: TF "
                            "Serving's defaults); implies --enable-batching")
    serve.set_defaults(func=_serve)

    cfg = subparsers.add_parser("serving", help="TF Serving deployment artifacts")
    cfg_sub = cfg.add_subparsers(dest="serving_command", metavar="SUBCOMMAND")
    gen = cfg_sub.add_parser("config", help="lay out SavedModels and write models.config, "
                                            "batching parameters and warm-up requests")
    gen.add_argument("--model-name", default="ranker")
    gen.add_argument("--arm", action="append", required=True, metavar="LABEL=SAVED_MODEL_DIR",
                     help="one per student; versions are numbered in the given order")
    gen.add_argument("--out", required=True)
    gen.add_argument("--warmup-log", help="log file (.parquet/.csv/.jsonl) whose first rows "
                                          "become the warm-up requests")
    gen.add_argument("--max-batch-size", type=int, default=512)
    gen.add_argument("--batch-timeout-micros", type=int, default=2000)
    gen.set_defaults(func=_serving_config)

    ab = subparsers.add_parser("ab", help="A/B experiments across served students")
    ab_sub = ab.add_subparsers(dest="ab_command", metavar="SUBCOMMAND")
    rep = ab_sub.add_parser("report", help="analyse an exposure/outcome log (JSON + HTML)")
    rep.add_argument("--experiment", required=True, help="experiment config (.json/.yaml)")
    rep.add_argument("--events", required=True, help="exposure/outcome JSON Lines log")
    rep.add_argument("--model-config", help="models.config, for each arm's model size")
    rep.add_argument("--offline", help="offline metrics JSON written by ab simulate "
                     "({data: {label: ...}, arms: {arm: {auc: ...}}}; a bare "
                     "arm -> {auc: ...} mapping is labelled 'data not stated')")
    rep.add_argument("--out", required=True)
    rep.set_defaults(func=_ab_report)

    sim = ab_sub.add_parser("simulate", help="replay a held-out log as live traffic")
    sim.add_argument("--experiment", required=True)
    sim.add_argument("--log", required=True, help="held-out log (.parquet/.csv/.jsonl)")
    sim.add_argument("--teacher", help="separate teacher-logit Parquet table")
    sim.add_argument("--server", help="grpc://host:port or http://host:port "
                                      "(default: the experiment's address)")
    sim.add_argument("--model-config", help="start an in-process `matta serve` on free "
                                            "loopback ports with this config instead")
    sim.add_argument("--events", required=True)
    sim.add_argument("--requests", type=int, default=500)
    sim.add_argument("--items", type=int, default=10)
    sim.add_argument("--max-seconds", type=float, default=60.0)
    sim.add_argument("--concurrency", type=int, default=4)
    sim.add_argument("--position-decay", type=float, default=1.0)
    sim.add_argument("--timeout-seconds", type=float, default=2.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--report-dir", help="also write the report here")
    sim.set_defaults(func=_ab_simulate)


def _serve(args) -> int:
    import logging

    from serving.ports import check_port_free

    # Before importing TensorFlow and loading the models (tens of seconds): a busy port fails at once.
    check_port_free(args.host, args.grpc_port, "--grpc-port")
    check_port_free(args.host, args.rest_port, "--rest-port")
    from serving.server import ModelServer, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = ServerOptions(host=args.host, grpc_port=args.grpc_port, rest_port=args.rest_port,
                            max_request_bytes=args.max_request_bytes,
                            max_concurrency=args.max_concurrency, grpc_threads=args.grpc_threads,
                            grace_s=args.grace_seconds, warmup=not args.no_warmup,
                            poll_seconds=args.file_system_poll_wait_seconds,
                            max_batch_size=args.max_batch_size,
                            max_decoded_bytes=args.max_decoded_bytes,
                            batching=_batching_options(args))
    server = ModelServer.from_config(args.model_config, options).start()
    # One machine-readable line so scripts (bench, tests) can find the ports.
    print(f"READY grpc={server.grpc_port} rest={server.rest_port}", flush=True)
    server.serve_until_signalled()
    return 0


def _batching_options(args):
    if not (args.enable_batching or args.batching_parameters_file):
        return None
    from serving.batching import BatchingOptions

    if args.batching_parameters_file:
        return BatchingOptions.from_file(args.batching_parameters_file)
    return BatchingOptions()


def _serving_config(args) -> int:
    from serving import config as sc

    arms = {}
    for item in args.arm:
        label, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--arm {item!r}: expected LABEL=SAVED_MODEL_DIR")
        if label in arms:
            raise ValueError(f"--arm: label {label!r} given twice")
        arms[label] = path
    warmup = []
    if args.warmup_log:
        from serving.examples import encode_rows, rows_from_table
        from serving.simulate import load_log_table

        table = load_log_table(args.warmup_log).slice(0, 8)
        warmup = encode_rows(rows_from_table(table))
    sizes = tuple(s for s in (1, 8, 64) if s < args.max_batch_size) + (args.max_batch_size,)
    batching = sc.BatchingConfig(max_batch_size=args.max_batch_size,
                                 batch_timeout_micros=args.batch_timeout_micros,
                                 allowed_batch_sizes=sizes)
    dep = sc.write_deployment(args.out, args.model_name, arms, warmup_examples=warmup,
                              batching=batching)
    print(f"wrote {dep.models_config_path} and {dep.batching_parameters_path}")
    for label, path in dep.version_dirs.items():
        print(f"  {label}: version {dep.labels[label]} at {path}")
    print("serve with TF Serving:\n  " + dep.command())
    print(f"or locally:\n  matta serve --model-config {dep.models_config_path}")
    return 0


def _ab_report(args) -> int:
    from serving.analysis import check_out_dir, write_report

    check_out_dir(args.out)  # before reading anything
    report = build_report(args.experiment, args.events, args.model_config, args.offline)
    paths = write_report(report, args.out, title=f"A/B report: {report['experiment']['name']}")
    print_report(report)
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0


def _ab_simulate(args) -> int:
    from serving.simulate import SimulationConfig

    cfg = SimulationConfig(num_requests=args.requests, items_per_request=args.items,
                           max_seconds=args.max_seconds, concurrency=args.concurrency,
                           position_decay=args.position_decay, seed=args.seed)
    stats, report = simulate_and_report(
        args.experiment, args.log, args.events, cfg, teacher_path=args.teacher, server=args.server,
        model_config=args.model_config, timeout_s=args.timeout_seconds, report_dir=args.report_dir)
    print(json.dumps(stats, indent=2))
    if report is not None:
        print_report(report)
        print(f"wrote {report['paths']['json']} and {report['paths']['html']}")
    if stats["requests"] == 0:
        print(f"no request succeeded: {stats.get('first_error')}", file=sys.stderr)
        return 1
    return 0
