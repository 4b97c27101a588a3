"""`matta students frontier|select`: budget-aware students of a trained MatTA model
(TensorFlow imported inside the handlers only; see components.student_budget).

    matta students frontier --model <Trainer model>/Format-Serving \\
        --transform-graph <Transform graph> --examples <ExampleGen examples>/Split-validation \\
        --out frontier/
    matta students select --frontier frontier/ --max-madds 30000 --out picks/
    matta students select --frontier frontier/ --max-p99-ms 2 --batch 64 --out picks/
"""
from __future__ import annotations

import json
import os
import sys


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _frontier(args) -> int:
    import tensorflow_transform as tft

    from components import student_budget, trainer_module

    nested = os.path.join(args.model, "Format-Serving")
    model_dir = nested if os.path.isdir(nested) else args.model
    if not os.path.isfile(os.path.join(model_dir, trainer_module.CONFIG_FILE)):
        raise ValueError(f"--model {args.model}: no {trainer_module.CONFIG_FILE} there; give the Trainer's "
                         "model directory")
    model, _ = trainer_module.load_trained(model_dir)
    tft_output = tft.TFTransformOutput(args.transform_graph)
    serialized = student_budget.read_serialized(student_budget.split_files(args.examples), args.max_rows)
    frontier = student_budget.build_frontier(
        model, tft_output, serialized, args.out, grid_points=args.grid_points,
        random_specs=args.random_specs, mixnmatch=args.mixnmatch, seed=args.seed,
        heuristic_points=args.heuristic_points,
        latency_batch=args.latency_batch, latency_calls=args.latency_calls, log=_log)
    frontier["inputs"] = {"model": os.path.abspath(model_dir), "transform_graph": os.path.abspath(args.transform_graph),
                          "examples": os.path.abspath(args.examples), "max_rows": args.max_rows}
    path = student_budget.write_frontier(frontier, args.out)
    plot = student_budget.write_frontier_plot(frontier, os.path.join(args.out, "frontier.png"))
    for kind, labels in frontier["fronts"].items():
        _log(f"[students] {kind} front: {len(labels)} specs")
    print(json.dumps({"frontier": path, "plot": plot, "candidates": len(frontier["records"]),
                      "fronts": frontier["fronts"]}, indent=1))
    return 0


def _budgets(args):
    from matta_tf.frontier import Budget

    budgets = []
    for kind, values in (("madds", args.max_madds), ("params", args.max_params), ("p99_ms", args.max_p99_ms)):
        for value in values or ():
            budgets.append(Budget(kind, value, args.batch if kind == "p99_ms" else None))
    if not budgets:
        raise ValueError("give at least one budget: --max-madds N, --max-params N or --max-p99-ms X --batch B")
    if args.batch is not None and not args.max_p99_ms:
        raise ValueError("--batch applies to --max-p99-ms only")
    if args.label:
        if len(budgets) != 1:
            raise ValueError("--label names one pick: give a single budget with it")
        budgets[0] = Budget(budgets[0].kind, budgets[0].limit, budgets[0].batch, args.label)
    return budgets


def _select(args) -> int:
    from components import student_budget

    budgets = _budgets(args)
    frontier = student_budget.read_frontier(args.frontier)
    serialized = None
    if any(b.kind == "p99_ms" for b in budgets):
        inputs = frontier.get("inputs") or {}
        serialized = student_budget.read_serialized(student_budget.split_files(inputs["examples"]),
                                                    inputs.get("max_rows"))
    picks = student_budget.select_students(frontier, budgets, serialized, confidence=args.confidence, log=_log)
    exported = student_budget.export_picks(frontier, picks, args.out)
    with open(os.path.join(args.out, "selection.json"), "w") as f:
        json.dump({"picks": picks, "exports": exported}, f, indent=1, sort_keys=True)
    missing = [p["budget"]["label"] for p in picks if p["label"] is None]
    for p in picks:
        if p["label"]:
            rec = p["record"]
            served = f", served p99 {p['served']['p99_ms']:.3f} ms" if p.get("served") else ""
            ev = p["evidence"] or {}
            why = f"{ev.get('chosen')}" + (f", gain {ev['gain']:+.4f} (lower bound {ev['lower']:+.4f})"
                                           if "gain" in ev else "")
            _log(f"[students] {p['budget']['label']}: {p['label']} [{why}] (validation AUC {rec['auc']:.4f}, "
                 f"{rec['madds_per_example']} madds, {rec['params']} params{served}) -> "
                 f"{exported[p['budget']['label']]}")
    print(json.dumps({"exports": exported, "unmet": missing}, indent=1))
    if missing:
        print(f"matta students select: no exported candidate fits {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    students = subparsers.add_parser("students", help="budget-aware students: frontier and selection")
    sub = students.add_subparsers(dest="students_command", metavar="ACTION")
    fr = sub.add_parser(
        "frontier", help="score the nested specs of a trained MatTA model and write its quality/cost frontier",
        description="Enumerates specs nested in the TA, scores them on a validation split (raw "
                    "ExampleGen tf.Examples through the Transform graph), exports the Pareto-front "
                    "members as servable SavedModels and times them; writes <out>/frontier.json and "
                    "<out>/frontier.png. Use a split carved from train, not the reported eval split.")
    fr.add_argument("--model", required=True, help="the Trainer's model directory (or its Format-Serving)")
    fr.add_argument("--transform-graph", required=True, help="the Transform's transform_graph directory")
    fr.add_argument("--examples", required=True, help="an ExampleGen split directory (e.g. .../Split-validation)")
    fr.add_argument("--out", required=True, help="output directory")
    fr.add_argument("--grid-points", type=int, default=3,
                    help="values per axis group (embedding / cross / MLP) between Student and TA")
    fr.add_argument("--random-specs", type=int, default=32, help="random per-layer specs to add")
    fr.add_argument("--mixnmatch", type=int, default=1, help="named mix_k sizes to include and mark")
    fr.add_argument("--seed", type=int, default=0, help="seed of the random specs")
    fr.add_argument("--heuristic-points", type=int, default=11,
                    help="specs on the Student-TA line (the fixed rule select compares with)")
    fr.add_argument("--max-rows", type=int, default=None, help="score at most this many examples (default all)")
    fr.add_argument("--latency-batch", type=int, default=64, help="request batch size latency is timed at")
    fr.add_argument("--latency-calls", type=int, default=200, help="timed calls per front member")
    fr.set_defaults(func=_frontier)

    se = sub.add_parser("select", help="export the best student within each budget",
                        description="Picks, for each budget, the front member with the best validation "
                                    "AUC whose cost fits, copies its SavedModel to <out>/<label>/ and "
                                    "writes <out>/selection.json. The heuristic line's pick is kept "
                                    "unless the best one beats it at --confidence. A --max-p99-ms pick is checked on a "
                                    "real `matta serve` on loopback; if its served p99 is over the "
                                    "budget the next-best candidate is tried.")
    se.add_argument("--frontier", required=True, help="frontier.json or its directory")
    se.add_argument("--max-madds", type=float, action="append", help="multiply-adds per example (repeatable)")
    se.add_argument("--max-params", type=float, action="append", help="parameters (repeatable)")
    se.add_argument("--max-p99-ms", type=float, action="append", help="served p99 in ms at --batch (repeatable)")
    se.add_argument("--batch", type=int, default=None, help="request batch size of --max-p99-ms")
    se.add_argument("--label", default=None, help="version label of the pick (one budget only; "
                                                  "default e.g. madds_30000, p99_2ms)")
    se.add_argument("--confidence", type=float, default=0.95,
                    help="keep the heuristic line's pick unless the best candidate beats it on the "
                         "validation rows at this confidence (paired bootstrap)")
    se.add_argument("--out", required=True, help="output directory")
    se.set_defaults(func=_select)
