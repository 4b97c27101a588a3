"""A MatTA recipe that wins at every exported size? (issue 11, item 4)

    python -m bench.recipe --data movielens --stage all [--optimizers adam] [--seeds 3]

Stages (each writes bench/results/recipe/<data>/<stage>.json; `summary.md` is rebuilt
from whatever JSON exists):

* ``timing``  ms/step of MatTA with the Mix'n'Match sizes sampled vs all trained every
              step (shared and own heads), on cached batches.
* ``search``  1 seed, scored on a VALIDATION split carved from the end of the (time
              ordered) train split - the eval split is never looked at. First the
              baselines' own knobs (KD twin: teacher weight x temperature, at the Student
              size), then the KD and labels-only twins at every exported size on
              validation, then a fixed ablation list (why does the co-trained TA lose?)
              and a seeded random search over MatTA's knobs: loss weights, KD ramp
              length, temperature, size heads, sampled vs all Mix'n'Match training.
              Score of a recipe = min over exported sizes of
              [val AUC(MatTA size) - val AUC(KD twin)] - max(0, val log-loss excess),
              plus 0.1 x the mean of the same margin (tie-break).
* ``final``   the chosen recipe (best score) vs baselines at `--seeds` seeds, trained on
              the full train split, measured on the eval split: labels-only, KD-only
              and MatTA at every exported size (MatTA sizes extracted from one run).

Baselines are the same `MatTARanker` code path with student == ta (as in bench/quality.py):
labels-only = BCE; KD = BCE + w KD(teacher) with w, T tuned on validation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import numpy as np

import matta_tf  # noqa: F401
from bench import data as bench_data
from bench import quality
from matta_tf.config import LossWeights, RankerConfig

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "recipe")
DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "matta_tf", "configs", "default_ranker.yaml")

ALONE = quality.ALONE

# Ablations. `issue_default` is the recipe (the config file: sampled Mix'n'Match
# at weight 0.5, one shared head, teacher weight 1, T = 1); every other one overrides
# the *tuned-KD base*: teacher weight and temperature of the best KD twin on validation
# (twin loss BCE + 2w KD -> MatTA w_teacher = 2w per size), so the TA's own loss equals
# the KD twin's at the TA size ("ta_alone" below) and only the co-training differs.
ABLATIONS = {
    "issue_default": {},
    "tuned_kd_base": {"mixnmatch_training": "sampled"},
    "student_only_shared": {"mixnmatch_train_specs": 0},
    "student_only_own": {"mixnmatch_train_specs": 0, "size_heads": "own"},
    "student_only_affine": {"mixnmatch_train_specs": 0, "size_heads": "affine"},
    "all_shared": {"mixnmatch_training": "all"},
    "all_own": {"mixnmatch_training": "all", "size_heads": "own"},
    "all_affine": {"mixnmatch_training": "all", "size_heads": "affine"},
    "all_own_ta2": {"mixnmatch_training": "all", "size_heads": "own", "w_ta": 2.0},
    "all_own_nota2s": {"mixnmatch_training": "all", "size_heads": "own", "w_ta_to_student": 0.0},
}

SPACE = {
    "size_heads": ["shared", "own", "affine"],
    "mixnmatch_training": ["all", "all", "sampled"],
    "w_student": [0.5, 1.0],
    "w_ta": [1.0, 2.0, 3.0],
    "w_teacher": [1.0, 2.0, 3.0, 6.0, 12.0],
    "w_ta_to_student": [0.0, 0.5, 1.0, 2.0],
    "w_mixnmatch": [0.5, 1.0],
    "temperature": [1.0, 2.0],
    "warmup_fraction": [0.0, 0.25, 0.5],
}


@dataclasses.dataclass
class Setup:
    data: object
    base: RankerConfig
    settings: quality.TrainSettings
    mix_sizes: int

    @property
    def sizes(self):
        return {"student": self.base.student, **self.base.mixnmatch_specs(self.mix_sizes), "ta": self.base.ta}


def log(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------- data


def load(spec: str, train_rows: int, eval_rows: int, teacher_steps: int):
    """`bench.data.load(spec)` (train / validation / eval, cross-fitted teacher), cached
    under bench.data.CACHE_DIR/recipe so the teacher is fitted once per data set."""
    import pickle

    key = f"{bench_data.data_name(spec)}_{train_rows}_{eval_rows}_{teacher_steps}".replace(":", "_")
    path = os.path.join(bench_data.CACHE_DIR, "recipe", key + ".pickle")
    if os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    opts = bench_data.DataOptions(teacher_steps=teacher_steps)
    data = bench_data.load(spec, train_rows, eval_rows, opts=opts, log=log)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        pickle.dump(data, f)
    os.replace(path + ".tmp", path)
    return data


def split_valid(data, valid_fraction: float = 0.1):
    """(fit table, validation table): bench.data's validation split (the end of the train
    period), else the last `valid_fraction` of the time-ordered train split."""
    if getattr(data, "validation", None) is not None:
        return data.train, data.validation
    n = data.train.num_rows
    cut = int(n * (1 - valid_fraction))
    return data.train.slice(0, cut), data.train.slice(cut)


# --------------------------------------------------------------------------- configs


def recipe_config(base: RankerConfig, params: dict, seed: int, settings: quality.TrainSettings,
                  mix_sizes: int) -> RankerConfig:
    lw = base.loss_weights
    weights = LossWeights(student=params.get("w_student", lw.student), ta=params.get("w_ta", lw.ta),
                          teacher=params.get("w_teacher", lw.teacher),
                          ta_to_student=params.get("w_ta_to_student", lw.ta_to_student),
                          mixnmatch=params.get("w_mixnmatch", lw.mixnmatch))
    warmup = int(params.get("warmup_fraction", 0.25) * settings.steps)
    return dataclasses.replace(
        base, loss_weights=weights, seed=seed, warmup_steps=warmup,
        temperature=params.get("temperature", base.temperature),
        mixnmatch_train_specs=params.get("mixnmatch_train_specs", mix_sizes),
        mixnmatch_training=params.get("mixnmatch_training", base.mixnmatch_training),
        size_heads=params.get("size_heads", base.size_heads))


def twin_config(base: RankerConfig, spec, kind: str, seed: int, kd: dict) -> RankerConfig:
    weights = ALONE if kind == "alone" else LossWeights(student=1.0, ta=0.0, teacher=kd["w_teacher"],
                                                        ta_to_student=0.0, mixnmatch=0.0)
    return dataclasses.replace(base, student=spec, ta=spec, loss_weights=weights, seed=seed,
                               temperature=kd["temperature"] if kind == "kd" else 1.0,
                               mixnmatch_train_specs=0, size_heads="shared", warmup_steps=0)


# --------------------------------------------------------------------------- training


class Runner:
    """Trains on one table, measures extracted sizes on another (float64 metrics)."""

    def __init__(self, setup: Setup, train_table, measure_table):
        from matta_tf.datasets import table_to_dataset

        self.setup = setup
        self.train_table = train_table
        batches = list(table_to_dataset(measure_table, setup.data.features, batch_size=4096))
        self.batches = batches
        self.labels = np.concatenate([y.numpy() for _, y in batches])

    def train(self, config: RankerConfig, optimizer: str):
        import tensorflow as tf

        from matta_tf.datasets import table_to_dataset

        tf.keras.backend.clear_session()
        ds = table_to_dataset(self.train_table, self.setup.data.features,
                              batch_size=self.setup.settings.batch_size, shuffle_seed=config.seed, repeat=True)
        return quality.train(config, ds, optimizer, self.setup.settings)

    def measure(self, model, specs: dict) -> dict:
        return {name: quality.eval_spec(model, spec, self.batches, self.labels) for name, spec in specs.items()}


def score(matta: dict, kd: dict) -> dict:
    margins = {s: matta[s]["auc"] - kd[s]["auc"] - max(0.0, matta[s]["logloss"] - kd[s]["logloss"]) for s in kd}
    return {"score": min(margins.values()) + 0.1 * statistics.fmean(margins.values()), "margins": margins}


def sample_params(rng) -> dict:
    return {k: v[int(rng.integers(len(v)))] for k, v in SPACE.items()}


# --------------------------------------------------------------------------- stages


def stage_search(setup: Setup, optimizer: str, trials: int, out_path: str, seed: int = 0) -> dict:
    fit, valid = split_valid(setup.data)
    runner = Runner(setup, fit, valid)
    result = _read(out_path) or {}
    result.setdefault("optimizer", optimizer)
    result.update({"fit_rows": fit.num_rows, "valid_rows": valid.num_rows, "seed": seed})

    def save():
        _write(out_path, result)

    # 1. the KD baseline's own knobs, at the Student size (so the baseline is tuned too).
    kd_grid = result.setdefault("kd_grid", {})
    for w in (0.5, 1.5, 3.0, 6.0):
        for t in (1.0, 2.0):
            key = f"w{w}_T{t}"
            if key in kd_grid:
                continue
            kd = {"w_teacher": w, "temperature": t}
            model, secs = runner.train(twin_config(setup.base, setup.base.student, "kd", seed, kd), optimizer)
            kd_grid[key] = {**kd, **runner.measure(model, {"student": setup.base.student})["student"],
                            "seconds": secs}
            log(f"search kd {key}: val auc {kd_grid[key]['auc']:.4f} logloss {kd_grid[key]['logloss']:.4f}")
            save()
    best_kd = max(kd_grid.values(), key=lambda r: r["auc"] - max(0.0, r["logloss"] - min(
        x["logloss"] for x in kd_grid.values())))
    result["kd"] = {"w_teacher": best_kd["w_teacher"], "temperature": best_kd["temperature"]}
    # 2. twins at every exported size on validation.
    twins = result.setdefault("twins", {})
    for kind in ("kd", "alone"):
        for size, spec in setup.sizes.items():
            key = f"{kind}/{size}"
            if key in twins:
                continue
            model, secs = runner.train(twin_config(setup.base, spec, kind, seed, result["kd"]), optimizer)
            twins[key] = {**runner.measure(model, {size: spec})[size], "seconds": secs}
            log(f"search twin {key}: val auc {twins[key]['auc']:.4f} logloss {twins[key]['logloss']:.4f}")
            save()
    kd_val = {size: twins[f"kd/{size}"] for size in setup.sizes}
    # 3. ablations, then the random search.
    rng = np.random.default_rng(1234)
    kd_base = {"w_teacher": 2 * result["kd"]["w_teacher"], "temperature": result["kd"]["temperature"]}
    candidates = {name: (params if name == "issue_default" else {**kd_base, **params})
                  for name, params in ABLATIONS.items()}
    for i in range(trials):
        candidates[f"random_{i}"] = sample_params(rng)
    recipes = result.setdefault("recipes", {})
    for name, params in candidates.items():
        if name in recipes:
            continue
        config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
        model, secs = runner.train(config, optimizer)
        m = runner.measure(model, setup.sizes)
        recipes[name] = {"params": params, "metrics": m, "seconds": secs, **score(m, kd_val)}
        log(f"search {name:22s} score {recipes[name]['score']:+.4f} "
            + " ".join(f"{s} {m[s]['auc']:.4f}/{m[s]['logloss']:.4f}" for s in setup.sizes)
            + f" ({secs:.0f}s) {params}")
        save()
    best = max(recipes, key=lambda n: recipes[n]["score"])
    result["best"] = best
    save()
    log(f"search: best recipe {best}: {recipes[best]['params']} score {recipes[best]['score']:+.4f}")
    return result


def stage_final(setup: Setup, optimizer: str, seeds: int, params: dict, kd: dict, out_path: str) -> dict:
    runner = Runner(setup, setup.data.train, setup.data.eval)
    result = _read(out_path) or {}
    runs = result.setdefault("runs", [])
    done = {(r["optimizer"], r["seed"], r["method"], r["size"]) for r in runs}
    result.update({"params": params, "kd": kd})
    for seed in range(seeds):
        if any((optimizer, seed, "matta", s) not in done for s in setup.sizes):
            config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
            model, secs = runner.train(config, optimizer)
            for size, m in runner.measure(model, setup.sizes).items():
                runs.append({"optimizer": optimizer, "seed": seed, "method": "matta", "size": size,
                             "seconds": secs, **m})
            _write(out_path, result)
            log(f"final {optimizer} seed {seed} matta: " + " ".join(
                f"{r['size']} {r['auc']:.4f}/{r['logloss']:.4f}" for r in runs[-len(setup.sizes):]))
        for kind in ("kd", "alone"):
            for size, spec in setup.sizes.items():
                if (optimizer, seed, kind, size) in done:
                    continue
                model, secs = runner.train(twin_config(setup.base, spec, kind, seed, kd), optimizer)
                m = runner.measure(model, {size: spec})[size]
                runs.append({"optimizer": optimizer, "seed": seed, "method": kind, "size": size,
                             "seconds": secs, **m})
                _write(out_path, result)
                log(f"final {optimizer} seed {seed} {kind} {size}: {m['auc']:.4f}/{m['logloss']:.4f}")
    return result


def stage_timing(setup: Setup, out_path: str, steps: int = 50, rounds: int = 4) -> dict:
    import tensorflow as tf

    from matta_tf.datasets import table_to_dataset
    from matta_tf.model import MatTARanker

    ds = table_to_dataset(setup.data.train, setup.data.features, batch_size=setup.settings.batch_size,
                          shuffle_seed=0, repeat=True)
    batches = ds.take(steps + 3).cache().repeat()
    arms = {
        "student_only": {"mixnmatch_train_specs": 0},
        "sampled_shared": {"mixnmatch_training": "sampled"},
        "all_shared": {"mixnmatch_training": "all"},
        "all_own": {"mixnmatch_training": "all", "size_heads": "own"},
    }
    out = {"steps": steps, "batch_size": setup.settings.batch_size, "mix_sizes": setup.mix_sizes, "arms": {}}
    for rnd in range(rounds):  # interleaved rounds; the machine is shared
        for name, params in arms.items():
            tf.keras.backend.clear_session()
            model = MatTARanker(recipe_config(setup.base, params, 0, setup.settings, setup.mix_sizes))
            model.compile(optimizer=quality.make_optimizer("adam", setup.settings))
            step = model.make_train_function()
            it = iter(batches)
            for _ in range(3):
                step(it)
            start = time.perf_counter()
            for _ in range(steps):
                logs = step(it)
            float(logs["loss"])
            ms = 1000 * (time.perf_counter() - start) / steps
            out["arms"].setdefault(name, []).append(ms)
            log(f"timing round {rnd} {name}: {ms:.1f} ms/step")
    for name, values in out["arms"].items():
        out["arms"][name] = {"ms_per_step": min(values), "rounds": values}
    _write(out_path, out)
    return out


# --------------------------------------------------------------------------- report


def _read(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


def _ms(values):
    values = [v for v in values if v == v]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def markdown(data_dir: str, header: dict) -> str:
    lines = [f"## MatTA recipe: data `{header['data']}`", "",
             f"Command: `{header['command']}`", "",
             f"Data: {header['rows']}; teacher: {header['teacher']}. Training: {header['settings']}, "
             f"exported sizes {', '.join(header['sizes'])}. Machine: 2 shared CPU cores.", ""]
    timing = _read(os.path.join(data_dir, "timing.json"))
    if timing:
        base = timing["arms"]["student_only"]["ms_per_step"]
        lines += [f"Step time (Adam, batch {timing['batch_size']}, {timing['mix_sizes']} mix size(s), "
                  f"best of {len(next(iter(timing['arms'].values()))['rounds'])} interleaved rounds of {timing['steps']} steps):", "",
                  "| arm | ms/step | x Student+TA only |", "|---|---|---|"]
        for name, a in timing["arms"].items():
            lines.append(f"| {name} | {a['ms_per_step']:.1f} | {a['ms_per_step'] / base:.2f} |")
        lines.append("")
    for opt in ("adam", "shampoo"):
        search = _read(os.path.join(data_dir, f"search_{opt}.json"))
        if search:
            lines += [f"### Search ({opt}; seed 0; fit {search['fit_rows']} rows, scored on the validation "
                      f"split of {search['valid_rows']} rows carved from the end of train)", "",
                      f"KD baseline tuned on validation (Student size): {search.get('kd')}; grid: "
                      + ", ".join(f"{k} {v['auc']:.4f}/{v['logloss']:.4f}" for k, v in search["kd_grid"].items()),
                      "", "Validation AUC / log-loss of the twins: " + ", ".join(
                          f"{k} {v['auc']:.4f}/{v['logloss']:.4f}" for k, v in search.get("twins", {}).items()), "",
                      "| recipe | score | " + " | ".join(f"{s} AUC/LL (Δ vs KD)" for s in header["sizes"])
                      + " | params |", "|---|---|" + "---|" * len(header["sizes"]) + "---|"]
            order = sorted(search.get("recipes", {}).items(), key=lambda kv: -kv[1]["score"])
            for name, r in order:
                cells = [f"{r['metrics'][s]['auc']:.4f}/{r['metrics'][s]['logloss']:.4f} "
                         f"({r['margins'][s]:+.4f})" for s in header["sizes"]]
                mark = " **(chosen)**" if name == search.get("best") else ""
                lines.append(f"| {name}{mark} | {r['score']:+.4f} | " + " | ".join(cells)
                             + f" | {json.dumps(r['params'])} |")
            lines.append("")
        import glob

        for final_path in sorted(glob.glob(os.path.join(data_dir, f"final_{opt}*.json"))):
            final = _read(final_path)
            tag = os.path.basename(final_path)[len(f"final_{opt}"):-len(".json")].lstrip("_")
            lines += _final_lines(final, opt, tag, header)
    return "\n".join(lines)


def _final_lines(final: dict, opt: str, tag: str, header: dict) -> list[str]:
        lines = []
        if final:
            runs = final["runs"]
            seeds = sorted({r["seed"] for r in runs})
            lines += [f"### Eval{' (' + tag + ')' if tag else ''} ({opt}; {len(seeds)} seeds; mean ± std; "
                      f"recipe {json.dumps(final['params'])}; "
                      f"KD twins: {final['kd']})", "",
                      "| size | labels-only AUC | KD AUC | MatTA AUC | labels-only LL | KD LL | MatTA LL |"
                      " MatTA - KD AUC (± s.e.) |",
                      "|---|---|---|---|---|---|---|---|"]
            for size in header["sizes"]:
                cell = {}
                for method in ("alone", "kd", "matta"):
                    rows = [r for r in runs if r["method"] == method and r["size"] == size]
                    cell[method] = {k: _ms([r[k] for r in rows]) for k in ("auc", "logloss")}
                diffs = [a["auc"] - b["auc"] for a in runs for b in runs
                         if a["method"] == "matta" and b["method"] == "kd" and a["size"] == size == b["size"]
                         and a["seed"] == b["seed"]]
                dm, ds, dn = _ms(diffs)
                se = ds / max(dn, 1) ** 0.5
                f = lambda m, k, cell=cell: f"{cell[m][k][0]:.4f} ± {cell[m][k][1]:.4f}"  # noqa: E731
                lines.append(f"| {size} | {f('alone', 'auc')} | {f('kd', 'auc')} | {f('matta', 'auc')} | "
                             f"{f('alone', 'logloss')} | {f('kd', 'logloss')} | {f('matta', 'logloss')} | "
                             f"{dm:+.4f} ± {se:.4f} |")
            st = {m: _ms([1 - r["auc"] for r in runs if r["method"] == m and r["size"] == "student"])[0]
                  for m in ("alone", "kd", "matta")}
            if all(v == v for v in st.values()):
                lines += ["", f"Student (1 - AUC): MatTA {st['matta']:.4f} vs labels-only {st['alone']:.4f} "
                          f"({100 * (st['matta'] / st['alone'] - 1):+.1f}%) and KD-only {st['kd']:.4f} "
                          f"({100 * (st['matta'] / st['kd'] - 1):+.1f}%); target: <= -3% against both."]
            lines.append("")
        return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="generated", help="generated | movielens | anything bench.data.load takes")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--stage", default="all", help="comma list of timing, search, final, report; or all")
    parser.add_argument("--optimizers", default="adam")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12, help="random-search trials after the ablations")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--mix-sizes", type=int, default=1)
    parser.add_argument("--train-rows", type=int, default=80_000, help="generated data only")
    parser.add_argument("--eval-rows", type=int, default=20_000, help="generated data only")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--recipe", help="JSON params for the final stage (default: the search's best)")
    parser.add_argument("--tag", default="", help="final stage: results go to final_<opt>_<tag>.json")
    args = parser.parse_args(argv)

    stages = {"timing", "search", "final"} if args.stage == "all" else set(args.stage.split(","))
    data = load(args.data, args.train_rows, args.eval_rows, args.teacher_steps)
    log(f"recipe: {data.name}: {data.train.num_rows} train / {data.eval.num_rows} eval rows; teacher {data.teacher}")
    base = RankerConfig.from_yaml(args.config)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    settings = quality.TrainSettings(steps=args.steps, batch_size=args.batch_size, adam_lr=args.lr,
                                     shampoo_lr=args.lr, warmup_steps=args.steps // 4)
    setup = Setup(data=data, base=base, settings=settings, mix_sizes=args.mix_sizes)
    data_dir = os.path.join(OUT, data.name.replace(":", "_"))
    header_path = os.path.join(data_dir, "header.json")
    header = _read(header_path) or {}
    command = "bin/matta-env python -m bench.recipe " + " ".join(sys.argv[1:] if argv is None else argv)
    n_val = data.validation.num_rows if getattr(data, "validation", None) is not None else 0
    header.update({"data": data.name, "teacher": data.teacher, "sizes": list(setup.sizes),
                   "rows": f"{data.train.num_rows} train / {n_val} validation / {data.eval.num_rows} eval rows",
                   "settings": f"{args.steps} steps, batch {args.batch_size}, lr {args.lr}"})
    commands = [c for c in header.get("command", "").split("; ") if c and c != command]
    header["command"] = "; ".join([*commands, command])
    _write(header_path, header)
    if "timing" in stages:
        stage_timing(setup, os.path.join(data_dir, "timing.json"))
    for opt in args.optimizers.split(","):
        search_path = os.path.join(data_dir, f"search_{opt}.json")
        if "search" in stages:
            stage_search(setup, opt, args.trials, search_path)
        if "final" in stages:
            search = _read(os.path.join(data_dir, "search_adam.json")) or _read(search_path)
            params = json.loads(args.recipe) if args.recipe else search["recipes"][search["best"]]["params"]
            stage_final(setup, opt, args.seeds, params, search["kd"], os.path.join(data_dir, f"final_{opt}{'_' + args.tag if args.tag else ''}.json"))
    md = markdown(data_dir, header)
    notes = os.path.join(data_dir, "notes.md")  # hand-written reading of the numbers, if any
    if os.path.exists(notes):
        with open(notes) as f:
            md += "\n" + f.read()
    with open(os.path.join(data_dir, "summary.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(OUT, "summary.md"), "w") as f:
        f.write(md + "\n")
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
