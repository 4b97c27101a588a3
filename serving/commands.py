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
import os
import sys


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
    rep.add_argument("--offline", help="JSON arm -> {auc: ...} (written by ab simulate)")
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

    from serving.server import ModelServer, ServerOptions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    options = ServerOptions(host=args.host, grpc_port=args.grpc_port, rest_port=args.rest_port,
                            max_request_bytes=args.max_request_bytes,
                            max_concurrency=args.max_concurrency, grpc_threads=args.grpc_threads,
                            grace_s=args.grace_seconds, warmup=not args.no_warmup,
                            poll_seconds=args.file_system_poll_wait_seconds)
    server = ModelServer.from_config(args.model_config, options).start()
    # One machine-readable line so scripts (bench, tests) can find the ports.
    print(f"READY grpc={server.grpc_port} rest={server.rest_port}", flush=True)
    server.serve_until_signalled()
    return 0


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


def _model_info(models_config: str, model_name: str, arm_labels: dict[str, str]) -> dict:
    from serving.analysis import savedmodel_size
    from serving.config import parse_models_config

    models = {m.name: m for m in parse_models_config(models_config)}
    if model_name not in models:
        raise ValueError(f"{models_config}: no model {model_name!r}")
    model = models[model_name]
    info = {}
    for arm, label in arm_labels.items():
        if label not in model.labels:
            raise ValueError(f"{models_config}: model {model_name!r} has no label {label!r}")
        version = model.labels[label]
        info[arm] = {"label": label, "version": version,
                     **savedmodel_size(os.path.join(model.base_path, str(version)))}
    return info


def build_report(experiment_path: str, events_path: str, models_config: str | None,
                 offline_path: str | None) -> dict:
    from serving.ab import ExperimentConfig, read_events
    from serving.analysis import summarize

    exp = ExperimentConfig.from_file(experiment_path)
    labels = {a.name: a.label for a in exp.arms}
    info = _model_info(models_config, exp.model_name, labels) if models_config else None
    offline = None
    if offline_path:
        with open(offline_path) as f:
            offline = json.load(f)
    report = summarize(read_events(events_path), [a.name for a in exp.arms], exp.control,
                       exp.shares(), info, offline)
    report["experiment"] = exp.to_dict()
    return report


def print_report(report: dict) -> None:
    """The per-arm table `matta ab report` prints (CTR per list, then per item)."""
    def lift_ci_p(v):
        if not v:
            return "control", "", ""
        return (f"{v['lift'] * 100:+.1f}%", f"[{v['ci95_low'] * 100:+.1f},{v['ci95_high'] * 100:+.1f}]%",
                f"{v['p_value']:.3f}")

    print(f"{'arm':<10}{'units':>6}{'lists':>7}{'CTR':>8}{'lift':>8}{'95% CI':>16}{'p':>7}"
          f"{'itemCTR':>9}{'lift':>8}{'95% CI':>16}{'p':>7}{'p50ms':>7}{'p99ms':>7}")
    for arm, m in report["arms"].items():
        vc = m.get("vs_control")
        lift, ci, p = lift_ci_p(vc)
        ilift, ici, ip = lift_ci_p(vc["item"] if vc else None)
        print(f"{arm:<10}{m['units']:>6}{m['exposures']:>7}{m['ctr'] * 100:>7.2f}%{lift:>8}{ci:>16}{p:>7}"
              f"{m['item_ctr'] * 100:>8.2f}%{ilift:>8}{ici:>16}{ip:>7}"
              f"{m['latency_ms']['p50']:>7.2f}{m['latency_ms']['p99']:>7.2f}")
    srm = report["srm"]
    print(f"SRM (units) chi2={srm['chi2']:.3f} p={srm['p_value']:.4f}"
          + ("  <-- SAMPLE RATIO MISMATCH" if srm["mismatch"] else ""))


def _ab_report(args) -> int:
    from serving.analysis import write_report

    report = build_report(args.experiment, args.events, args.model_config, args.offline)
    paths = write_report(report, args.out, title=f"A/B report: {report['experiment']['name']}")
    print_report(report)
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0


def simulate_and_report(experiment_path: str, log_path: str, events_path: str, sim_config,
                        *, teacher_path: str | None = None, server: str | None = None,
                        model_config: str | None = None, timeout_s: float = 2.0,
                        report_dir: str | None = None) -> tuple[dict, dict | None]:
    """`matta ab simulate` as a function: replays `log_path` through the experiment's router.

    Serves from `server` (grpc:// or http://), or from an in-process `matta serve` started
    on free loopback ports for `model_config`. Returns (run statistics, report or None);
    the report (JSON + HTML, with each arm's offline AUC on the log when it has labels)
    is written only when `report_dir` is given, and its paths are under report["paths"].
    """
    import numpy as np

    from serving.ab import ABRouter, EventLog, ExperimentConfig
    from serving.client import make_client
    from serving.examples import encode_rows, rows_from_table
    from serving.simulate import (
        load_log_table,
        offline_metrics,
        relevance_from_table,
        run_simulation,
    )

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
    clients = {}
    report = None
    try:
        clients = {a.name: make_client(a.address or address, timeout_s=timeout_s) for a in exp.arms}
        with EventLog(events_path) as event_log:
            router = ABRouter(exp, clients, event_log, timeout_s=timeout_s)
            stats = run_simulation(router, examples, relevance, sim_config)
        if report_dir:
            from serving.analysis import write_report

            os.makedirs(report_dir, exist_ok=True)
            offline_path = None
            if "label" in table.column_names:
                labels = np.asarray(table.column("label").to_pylist(), dtype=np.float64)
                offline = offline_metrics(clients[exp.control], exp.model_name,
                                          {a.name: a.label for a in exp.arms}, examples, labels)
                offline_path = os.path.join(report_dir, "offline_metrics.json")
                with open(offline_path, "w") as f:
                    json.dump(offline, f, indent=2)
            report = build_report(experiment_path, events_path, model_config, offline_path)
            report["simulation"] = stats
            report["paths"] = write_report(report, report_dir, title=f"A/B simulation: {exp.name}")
    finally:
        for c in clients.values():
            c.close()
        if local is not None:
            local.stop()
    return stats, report


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
