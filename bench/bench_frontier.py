"""Budget-aware students (issue 15): at each serving budget, is the student the frontier
search selects at least as good on eval as the fixed rule's student of no greater cost?

For each data set and seed:

1. Train one MatTA model on the fit part of train (the validation split is held out), in
   two ways: ``pool`` - the sampled Mix'n'Match pool holds `mix_1` plus
   `--train-pool` random per-layer sizes (`RankerConfig.mixnmatch_random_specs`), so the
   sizes the search visits are trained; ``line`` - `mix_1` only (the sizes between Student
   and TA on the heuristic line), for comparison.
2. Enumerate nested specs (`matta_tf.frontier.candidate_specs`: axis grid, random per-layer,
   heuristic line, arms), score every one on validation and on eval in one pass each.
3. For each budget (multiply-adds per example at 4 levels between the Student's and the
   TA's cost, and parameters at 2 levels): the *search* pick is the best validation AUC
   within the budget; the *heuristic* pick is the largest spec on the Student-TA line
   within it (the paper's fixed rule, how `mixnmatch_specs` places sizes); the *arm* pick
   is the largest exported arm (student, mix_1, ta) within it. Their eval AUC / log-loss
   are reported; `oracle` is the best eval AUC within the budget (hindsight, for scale).
4. Latency (seed 0, ``pool``): the madds front is exported as SavedModels and timed
   in-process at batch 64; the pick for `--p99-ms` at batch 64 is then served by a real
   `matta serve` on loopback and its p99 checked against the budget.

    bin/matta-env python -m bench.bench_frontier --data generated --seeds 3
    bin/matta-env python -m bench.bench_frontier --data movielens --seeds 3 --steps 150

Writes bench/results/frontier/<data>.json, <data>_frontier.png and summary.md (all data
sets found there).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import numpy as np

from bench import quality
from bench import recipe as recipe_bench

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "frontier")
DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "matta_tf", "configs", "default_ranker.yaml")
MADDS_LEVELS = (0.15, 0.4, 0.65, 0.9)  # fraction of the way from Student to TA multiply-adds
PARAMS_LEVELS = (0.3, 0.7)


def log(msg):
    print(msg, flush=True)


def train_model(data, base, fit, settings, seed: int, variant: str, pool: int):
    import tensorflow as tf

    from matta_tf.config import LossWeights
    from matta_tf.datasets import table_to_dataset

    weights = dataclasses.replace(base.loss_weights, mixnmatch=1.0) if base.loss_weights.mixnmatch == 0 \
        else base.loss_weights
    config = dataclasses.replace(base, seed=seed, warmup_steps=settings.warmup_steps, loss_weights=weights,
                                 mixnmatch_train_specs=1, mixnmatch_training="sampled",
                                 mixnmatch_random_specs=pool if variant == "pool" else 0)
    assert isinstance(config.loss_weights, LossWeights)
    tf.random.set_seed(seed)
    ds = table_to_dataset(fit, data.features, batch_size=settings.batch_size, shuffle_seed=seed, repeat=True)
    return quality.train(config, ds, "adam", settings)


def budgets_for(config):
    from matta_tf.extract import cost
    from matta_tf.frontier import Budget

    s, t = cost(config, config.student), cost(config, config.ta)
    out = [Budget("madds", round(s["madds_per_example"] + f * (t["madds_per_example"] - s["madds_per_example"])))
           for f in MADDS_LEVELS]
    out += [Budget("params", round(s["params"] + f * (t["params"] - s["params"]))) for f in PARAMS_LEVELS]
    return out


PICKS = ("selected", "search", "heuristic", "arm", "oracle")


def compare(val: dict, ev: dict, budgets, val_logits, val_labels, confidence: float) -> list[dict]:
    from matta_tf.frontier import heuristic_pick, select, select_over_rule, within

    rows = []
    arm_tags = ("student", "mix_1", "ta")
    for b in budgets:
        pick = select(val.values(), b)
        guarded, evidence = select_over_rule(val.values(), b, val_logits, val_labels, confidence=confidence)
        heur = heuristic_pick(val.values(), b)
        arm = heuristic_pick(val.values(), b, tags=arm_tags)
        oracle = select(ev.values(), b)
        row = {"budget": b.label, "kind": b.kind, "limit": b.limit, "evidence": evidence}
        for name, rec in (("selected", guarded), ("search", pick), ("heuristic", heur), ("arm", arm),
                          ("oracle", oracle)):
            if rec is None:
                row[name] = None
                continue
            e = ev[rec["label"]]
            row[name] = {"label": rec["label"], "val_auc": val[rec["label"]]["auc"], "eval_auc": e["auc"],
                         "eval_logloss": e["logloss"], "madds": e["madds_per_example"], "params": e["params"]}
        row["candidates_within"] = len(within(val.values(), b))
        rows.append(row)
    return rows


def latency_check(model, data, records_val, p99_ms: float, batch: int, workdir: str) -> dict:
    """Export the madds front, time it in-process, pick for the p99 budget, check it served."""
    from matta_tf.export import export_saved_model, make_examples
    from matta_tf.extract import extract
    from matta_tf.frontier import Budget, pareto_front, parse_spec_label, select
    from serving.latency import inprocess_latency, served_latency

    table = data.eval.slice(0, 512)
    from matta_tf.datasets import table_to_dataset

    features, _ = next(iter(table_to_dataset(table, data.features, batch_size=512)))
    examples = make_examples({k: v.numpy() for k, v in features.items() if k != "teacher_logit"})
    front = pareto_front(records_val.values(), "madds")
    measured = {}
    for rec in front:
        export_dir = os.path.join(workdir, rec["label"])
        export_saved_model(extract(model, parse_spec_label(rec["label"])), export_dir, data.features)
        stats = inprocess_latency(export_dir, examples, batch, calls=300)
        measured[rec["label"]] = {**stats, "export_dir": export_dir}
        log(f"    {rec['label']:28s} madds {rec['madds_per_example']:7d} val auc {rec['auc']:.4f} "
            f"in-process p50 {stats['p50_ms']:.3f} p99 {stats['p99_ms']:.3f} ms")
    timed = [{**records_val[k], "p99_ms": v["p99_ms"]} for k, v in measured.items()]
    budget = Budget("p99_ms", p99_ms, batch=batch)
    attempts = []
    pool = list(timed)
    while pool:
        pick = select(pool, budget)
        if pick is None:
            break
        served = served_latency({"pick": measured[pick["label"]]["export_dir"]}, examples, batch, calls=400)["pick"]
        attempts.append({"label": pick["label"], "inprocess_p99_ms": pick["p99_ms"], "served": served})
        log(f"    {budget.label}: {pick['label']} served p50 {served['p50_ms']:.3f} p99 {served['p99_ms']:.3f} ms")
        if served["p99_ms"] <= p99_ms:
            break
        pool = [r for r in pool if r["label"] != pick["label"]]
    ok = bool(attempts) and attempts[-1]["served"]["p99_ms"] <= p99_ms
    return {"budget": budget.to_dict(), "front": {k: {kk: vv for kk, vv in v.items() if kk != "export_dir"}
                                                  for k, v in measured.items()},
            "attempts": attempts, "selected": attempts[-1]["label"] if ok else None, "within_budget": ok}


def run(args) -> dict:
    import tensorflow as tf

    from matta_tf.config import RankerConfig
    from matta_tf.datasets import table_to_dataset
    from matta_tf.frontier import candidate_specs, evaluate_candidates

    data = recipe_bench.load(args.data, args.train_rows, args.eval_rows, args.teacher_steps)
    fit, validation = recipe_bench.split_valid(data)
    base = RankerConfig.from_yaml(args.config)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    settings = quality.TrainSettings(steps=args.steps, batch_size=args.batch_size, adam_lr=args.lr,
                                     warmup_steps=max(1, args.steps // 4))
    val_batches = list(table_to_dataset(validation, data.features, batch_size=4096))
    eval_batches = list(table_to_dataset(data.eval, data.features, batch_size=4096))
    budgets = budgets_for(base)
    result = {"data": args.data, "rows": {"fit": fit.num_rows, "validation": validation.num_rows,
                                          "eval": data.eval.num_rows},
              "teacher": data.teacher, "settings": dataclasses.asdict(settings), "train_pool": args.train_pool,
              "search": {"grid_points": args.grid_points, "random_specs": args.random_specs,
                         "confidence": args.confidence},
              "budgets": [b.to_dict() for b in budgets], "runs": [], "command": args.command}
    if args.stage == "latency":
        model, seconds = train_model(data, base, fit, settings, 0, "pool", args.train_pool)
        cands = candidate_specs(model.config, grid_points=args.grid_points, random_specs=args.random_specs,
                                seed=100, mixnmatch=1)
        val = evaluate_candidates(model, val_batches, cands)
        with tempfile.TemporaryDirectory(prefix="frontier-", dir=args.workdir) as tmp:
            result["latency"] = latency_check(model, data, val, args.p99_ms, args.latency_batch, tmp)
        result["load_average"] = os.getloadavg()
        return result
    for seed in range(args.seeds):
        for variant in args.variants.split(","):
            model, seconds = train_model(data, base, fit, settings, seed, variant, args.train_pool)
            cands = candidate_specs(model.config, grid_points=args.grid_points, random_specs=args.random_specs,
                                    seed=100 + seed, mixnmatch=1)
            t0 = time.perf_counter()
            val, val_logits, val_labels = evaluate_candidates(model, val_batches, cands, return_logits=True)
            ev = evaluate_candidates(model, eval_batches, cands)
            score_s = time.perf_counter() - t0
            rows = compare(val, ev, budgets, val_logits, val_labels, args.confidence)
            log(f"{args.data} seed {seed} {variant}: trained {seconds:.0f}s, {len(cands)} candidates scored "
                f"on validation+eval in {score_s:.1f}s")
            for r in rows:
                s, h, a = r["selected"], r["heuristic"], r["arm"]
                log(f"  {r['budget']:16s} selected ({r['evidence']['chosen']}) {s['label'] if s else '-':24s} "
                    f"{(s or {}).get('eval_auc', float('nan')):.4f} | heuristic "
                    f"{h['label'] if h else '-':24s} {(h or {}).get('eval_auc', float('nan')):.4f} | arm "
                    f"{(a or {}).get('eval_auc', float('nan')):.4f}")
            run_row = {"seed": seed, "variant": variant, "train_seconds": seconds, "score_seconds": score_s,
                       "candidates": len(cands), "budgets": rows,
                       "records_val": val if (seed == 0) else None,
                       "records_eval": {k: {"auc": v["auc"], "logloss": v["logloss"]} for k, v in ev.items()}
                       if seed == 0 else None}
            result["runs"].append(run_row)
            tf.keras.backend.clear_session()
    return result


def summarise(result: dict) -> dict:
    """Per variant and budget: mean/std over seeds of eval AUC for search/heuristic/arm/
    oracle, and wins (search eval AUC >= heuristic's, and >= arm's)."""
    out = {}
    for variant in sorted({r["variant"] for r in result["runs"]}):
        runs = [r for r in result["runs"] if r["variant"] == variant]
        rows = []
        for i in range(len(result["budgets"])):
            per = [r["budgets"][i] for r in runs]
            row = {"budget": per[0]["budget"], "seeds": len(per)}
            row["chose_search"] = sum(p["evidence"]["chosen"].startswith("search") for p in per)
            for name in PICKS:
                vals = [p[name]["eval_auc"] for p in per if p[name]]
                lls = [p[name]["eval_logloss"] for p in per if p[name]]
                row[name] = {"auc_mean": float(np.mean(vals)) if vals else None,
                             "auc_std": float(np.std(vals)) if vals else None,
                             "logloss_mean": float(np.mean(lls)) if lls else None, "n": len(vals)}
            for pick in ("selected", "search"):
                for ref in ("heuristic", "arm"):
                    pairs = [(p[pick]["eval_auc"], p[ref]["eval_auc"]) for p in per if p[pick] and p[ref]]
                    row[f"{pick}_wins_vs_{ref}"] = sum(s >= h for s, h in pairs)
                    row[f"{pick}_pairs_vs_{ref}"] = len(pairs)
                    row[f"{pick}_delta_vs_{ref}"] = float(np.mean([s - h for s, h in pairs])) if pairs else None
            rows.append(row)
        out[variant] = rows
    return out


def plot(result: dict, path: str) -> str | None:
    from components.student_budget import write_frontier_plot
    from matta_tf.frontier import COST_KEYS, pareto_front

    run0 = next((r for r in result["runs"] if r["seed"] == 0 and r["variant"] == "pool" and r["records_val"]), None)
    if run0 is None:
        return None
    records = {k: dict(v) for k, v in run0["records_val"].items()}
    for k, v in (result.get("latency") or {}).get("front", {}).items():
        if k in records:
            records[k]["p99_ms"] = v["p99_ms"]
    fronts = {kind: [r["label"] for r in pareto_front(records.values(), kind)] for kind in COST_KEYS}
    picks = [{"label": row["selected"]["label"]} for row in run0["budgets"] if row["selected"]]
    lat = result.get("latency") or {}
    return write_frontier_plot({"records": records, "fronts": fronts,
                                "latency_batch": lat.get("budget", {}).get("batch", 64)}, path, picks)


def markdown(results: list[dict]) -> str:
    lines = ["# Budget-aware students: the selected student vs the fixed rule at each budget", "",
             "Command(s) and data per section. Selection on the validation split carved from train; "
             "every AUC / log-loss below is on eval (mean ± std over seeds). `selected` = what `matta "
             "students select` exports (`select_over_rule`: the best validation AUC within the budget if "
             "it beats the heuristic's pick on the validation rows at 95% confidence, paired bootstrap; "
             "else the heuristic's pick); `search` = the best validation AUC within the budget, unguarded "
             "(`select`); `heuristic` = the largest spec on the Student-TA line within it (the fixed rule "
             "`mixnmatch_specs` uses); `arm` = the largest exported arm (student, mix_1, ta) within it; "
             "`oracle` = best eval AUC within it (hindsight). Wins = seeds where the pick's eval AUC >= "
             "the rule's; `search chosen` = seeds where the guard let the search's pick through.", ""]
    for res in results:
        summ = summarise(res)
        lines += [f"## {res['data']}", "", f"`{res['command']}`", "",
                  f"Rows: fit {res['rows']['fit']}, validation {res['rows']['validation']}, eval "
                  f"{res['rows']['eval']}; teacher: {res['teacher']}; training: {res['settings']['steps']} "
                  f"steps, batch {res['settings']['batch_size']}, Adam lr {res['settings']['adam_lr']}; "
                  f"`pool` = mix_1 + {res['train_pool']} random sizes in the sampled pool, `line` = mix_1 "
                  f"only. Search: grid {res['search']['grid_points']} points per axis group + "
                  f"{res['search']['random_specs']} random specs + heuristic line + arms "
                  f"({res['runs'][0]['candidates']} candidates).", ""]
        for variant, rows in summ.items():
            lines += [f"### training: {variant}", "",
                      "| budget | selected AUC | search AUC | heuristic AUC | arm AUC | oracle AUC | "
                      "selected - heuristic | selected wins vs heuristic / arm | search wins vs heuristic | "
                      "search chosen | selected log-loss | heuristic log-loss |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                def cell(name, r=r):
                    c = r[name]
                    return "-" if c["auc_mean"] is None else f"{c['auc_mean']:.4f} ± {c['auc_std']:.4f}"

                def ll(name, r=r):
                    c = r[name]
                    return "-" if c["logloss_mean"] is None else f"{c['logloss_mean']:.4f}"
                d = r["selected_delta_vs_heuristic"]
                lines.append(f"| {r['budget']} | {cell('selected')} | {cell('search')} | {cell('heuristic')} | "
                             f"{cell('arm')} | {cell('oracle')} | {'-' if d is None else f'{d:+.4f}'} | "
                             f"{r['selected_wins_vs_heuristic']}/{r['selected_pairs_vs_heuristic']} / "
                             f"{r['selected_wins_vs_arm']}/{r['selected_pairs_vs_arm']} | "
                             f"{r['search_wins_vs_heuristic']}/{r['search_pairs_vs_heuristic']} | "
                             f"{r['chose_search']}/{r['seeds']} | {ll('selected')} | {ll('heuristic')} |")
            lines.append("")
        picks = [(r["seed"], r["variant"], row["budget"], (row["selected"] or {}).get("label"),
                  (row["heuristic"] or {}).get("label")) for r in res["runs"] for row in r["budgets"]
                 if r["seed"] == 0]
        lines += ["Seed 0 picks (selected / heuristic): " + "; ".join(
            f"{v} {b}: {s} / {h}" for _, v, b, s, h in picks), ""]
        lat = res.get("latency")
        if lat:
            b = lat["budget"]
            lines += [f"Latency budget (`{lat['command']}`, seed 0, pool training, load average "
                      f"{', '.join(f'{x:.1f}' for x in lat['load_average'])}): p99 <= {b['max_p99_ms']} ms at batch {b['batch']}. "
                      "Madds front timed in-process (p50 / p99 ms): " + ", ".join(
                          f"{k} {v['p50_ms']:.3f}/{v['p99_ms']:.3f}" for k, v in lat["front"].items()) + ". "
                      "Served on `matta serve` (gRPC, loopback, one client): " + "; ".join(
                          f"{a['label']} p50 {a['served']['p50_ms']:.3f} p99 {a['served']['p99_ms']:.3f} ms"
                          for a in lat["attempts"]) + f" -> selected {lat['selected']}, within budget: "
                      f"{lat['within_budget']}.", ""]
        lines += [f"![frontier]({res['plot']})" if res.get("plot") else "", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="generated", help="generated | movielens | anything bench.data.load takes")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-rows", type=int, default=80_000, help="generated data only")
    parser.add_argument("--eval-rows", type=int, default=20_000, help="generated data only")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--train-pool", type=int, default=16, help="random sizes in the sampled training pool")
    parser.add_argument("--variants", default="pool,line", help="comma list of pool, line")
    parser.add_argument("--confidence", type=float, default=0.95,
                        help="select_over_rule: confidence the search's gain over the heuristic needs")
    parser.add_argument("--grid-points", type=int, default=3)
    parser.add_argument("--random-specs", type=int, default=32)
    parser.add_argument("--stage", choices=("quality", "latency", "report"), default="quality",
                        help="quality: seeds x variants, search vs rule at each budget; latency: seed 0 "
                             "pool model, madds front timed, the --p99-ms pick checked on matta serve "
                             "(<data>_latency.json; run it on a quiet machine); report: re-render only")
    parser.add_argument("--p99-ms", type=float, default=2.0, help="latency budget checked on matta serve")
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--workdir", default=None, help="scratch folder for exports (default: system temp)")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    args.command = "bin/matta-env python -m bench.bench_frontier " + " ".join(argv or __import__("sys").argv[1:])
    os.makedirs(args.out, exist_ok=True)
    name = args.data.replace(":", "_")
    if args.stage == "report":  # re-render the plot and summary.md from the saved JSON
        with open(os.path.join(args.out, f"{name}.json")) as f:
            result = json.load(f)
    else:
        result = run(args)
    if args.stage == "latency":
        latency = {**result["latency"], "command": args.command, "load_average": result["load_average"]}
        with open(os.path.join(args.out, f"{name}_latency.json"), "w") as f:
            json.dump(latency, f, indent=1, sort_keys=True)
        path = os.path.join(args.out, f"{name}.json")
        if not os.path.exists(path):
            log(f"wrote {name}_latency.json; run --stage quality for the report")
            return 0
        with open(path) as f:
            result = json.load(f)
    latency_path = os.path.join(args.out, f"{name}_latency.json")
    if os.path.exists(latency_path):
        with open(latency_path) as f:
            result["latency"] = json.load(f)
    result["plot"] = None
    png = plot(result, os.path.join(args.out, f"{name}_frontier.png"))
    if png:
        result["plot"] = os.path.basename(png)
    result["summary"] = summarise(result)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "latency"}, f, indent=1, sort_keys=True)
    results = []
    for fn in sorted(os.listdir(args.out)):
        if fn.endswith(".json") and not fn.endswith("_latency.json"):
            with open(os.path.join(args.out, fn)) as f:
                res = json.load(f)
            lat = os.path.join(args.out, fn[:-5] + "_latency.json")
            if os.path.exists(lat):
                with open(lat) as f:
                    res["latency"] = json.load(f)
            results.append(res)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(markdown(results))
    log(f"wrote {os.path.join(args.out, 'summary.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
