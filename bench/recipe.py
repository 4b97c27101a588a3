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
from matta_tf.metrics import binary_metrics

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

    def train(self, config: RankerConfig, optimizer: str, settings: quality.TrainSettings | None = None):
        import tensorflow as tf

        from matta_tf.datasets import table_to_dataset

        tf.keras.backend.clear_session()
        settings = settings or self.setup.settings
        ds = table_to_dataset(self.train_table, self.setup.data.features,
                              batch_size=settings.batch_size, shuffle_seed=config.seed, repeat=True)
        return quality.train(config, ds, optimizer, settings)

    def dataset(self, seed: int):
        """A repeating shuffled dataset of the training table (for fine-tunes)."""
        from matta_tf.datasets import table_to_dataset

        return table_to_dataset(self.train_table, self.setup.data.features,
                                batch_size=self.setup.settings.batch_size, shuffle_seed=seed, repeat=True)

    def measure_model(self, small) -> dict:
        """Metrics of a standalone model (features -> logits) on the measure table."""
        logits = np.concatenate([small(features).numpy() for features, _ in self.batches])
        return binary_metrics(logits, self.labels)

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


def with_lr(settings: quality.TrainSettings, lr: float | None, steps: int | None = None) -> quality.TrainSettings:
    settings = settings if lr is None else dataclasses.replace(settings, adam_lr=lr, shampoo_lr=lr)
    return settings if steps is None else dataclasses.replace(settings, steps=steps)


def stage_final(setup: Setup, optimizer: str, seeds: int, params: dict, kd: dict, out_path: str,
                lrs: dict | None = None) -> dict:
    """`lrs`: {"matta": lr, "kd/<size>": lr} tuned on validation (stage lr); labels-only
    twins use their size's KD lr. None: every arm at --lr."""
    runner = Runner(setup, setup.data.train, setup.data.eval)
    result = _read(out_path) or {}
    runs = result.setdefault("runs", [])
    done = {(r["optimizer"], r["seed"], r["method"], r["size"]) for r in runs}
    result.update({"params": params, "kd": kd, "lrs": lrs})
    lr = (lambda key: None) if lrs is None else (lambda key: lrs[key])  # noqa: E731
    for seed in range(seeds):
        if any((optimizer, seed, "matta", s) not in done for s in setup.sizes):
            config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
            model, secs = runner.train(config, optimizer, with_lr(setup.settings, lr("matta")))
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
                model, secs = runner.train(twin_config(setup.base, spec, kind, seed, kd), optimizer,
                                           with_lr(setup.settings, lr(f"kd/{size}")))
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



# --------------------------------------------------------------------------- second attempt

LR_GRID = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
FT_STEPS = (15, 30, 45)  # 10 / 20 / 30% of the 150 training steps
FT_LRS = (2.5e-4, 5e-4, 1e-3)


def _pick_twin(rows: dict) -> str:
    """Key of the best run: val AUC minus any log-loss excess over the best log-loss."""
    best_ll = min(r["logloss"] for r in rows.values())
    return max(rows, key=lambda k: rows[k]["auc"] - max(0.0, rows[k]["logloss"] - best_ll))


def stage_lr(setup: Setup, optimizer: str, params: dict, kd: dict, out_path: str, lrs=LR_GRID,
             seed: int = 0) -> dict:
    """Learning rate of every arm on VALIDATION (seed 0): each KD twin size and the MatTA
    recipe get the same grid; twins pick their own best (`_pick_twin`), MatTA the lr whose
    `score` against those tuned twins is best."""
    fit, valid = split_valid(setup.data)
    runner = Runner(setup, fit, valid)
    result = _read(out_path) or {}
    result.update({"optimizer": optimizer, "params": params, "kd": kd, "grid": list(lrs), "seed": seed,
                   "steps": setup.settings.steps})
    runs = result.setdefault("runs", {})
    for lr in lrs:
        for size, spec in setup.sizes.items():
            key = f"kd/{size}/{lr:g}"
            if key not in runs:
                model, secs = runner.train(twin_config(setup.base, spec, "kd", seed, kd), optimizer,
                                           with_lr(setup.settings, lr))
                runs[key] = {**runner.measure(model, {size: spec})[size], "seconds": secs}
                log(f"lr {optimizer} {key}: val {runs[key]['auc']:.4f}/{runs[key]['logloss']:.4f} ({secs:.0f}s)")
                _write(out_path, result)
        key = f"matta/{lr:g}"
        if key not in runs:
            config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
            model, secs = runner.train(config, optimizer, with_lr(setup.settings, lr))
            runs[key] = {"metrics": runner.measure(model, setup.sizes), "seconds": secs}
            log(f"lr {optimizer} {key}: " + " ".join(f"{s} {m['auc']:.4f}/{m['logloss']:.4f}"
                                                     for s, m in runs[key]["metrics"].items()) + f" ({secs:.0f}s)")
            _write(out_path, result)
    best, twins = {}, {}
    for size in setup.sizes:
        rows = {lr: runs[f"kd/{size}/{lr:g}"] for lr in lrs}
        best[f"kd/{size}"] = _pick_twin(rows)
        twins[size] = rows[best[f"kd/{size}"]]
    for lr in lrs:
        runs[f"matta/{lr:g}"].update(score(runs[f"matta/{lr:g}"]["metrics"], twins))
    best["matta"] = max(lrs, key=lambda lr: runs[f"matta/{lr:g}"]["score"])
    result["best"] = best
    _write(out_path, result)
    log(f"lr {optimizer}: best {best}")
    return result


def _finetune_size(runner, model, spec, seed: int, steps_list, ft_lr: float, kd: dict, measure=True):
    """Extract `spec`, fine-tune it with the KD twin's loss (BCE + 2 w KD, Adam at `ft_lr`)
    and measure it after each number of steps in `steps_list` (cumulative)."""
    import tensorflow as tf

    from matta_tf.extract import extract
    from matta_tf.finetune import FinetuneWeights, finetune

    small = extract(model, spec)
    weights = FinetuneWeights(bce=1.0, teacher=2 * kd["w_teacher"], temperature=kd["temperature"])
    optimizer = tf.keras.optimizers.Adam(ft_lr)
    it = iter(runner.dataset(seed + 1000))  # a different order than the training run's
    out, done, secs = {}, 0, 0.0
    for steps in sorted(steps_list):
        history = finetune(small, it, steps - done, optimizer, weights)
        done, secs = steps, secs + history["seconds"]
        out[steps] = {**(runner.measure_model(small) if measure else {}), "seconds": secs}
    return small, out


def stage_finetune_search(setup: Setup, optimizer: str, params: dict, kd: dict, lrs: dict, out_path: str,
                          seed: int = 0) -> dict:
    """VALIDATION: MatTA (seed 0) then each extracted size fine-tuned for FT_STEPS steps at
    FT_LRS; KD twins trained from scratch for steps + F (the fair budget). Picks (F, lr)
    by `score` of the fine-tuned sizes against the fair-budget twins."""
    fit, valid = split_valid(setup.data)
    runner = Runner(setup, fit, valid)
    result = _read(out_path) or {}
    result.update({"optimizer": optimizer, "params": params, "kd": kd, "lrs": lrs, "ft_steps": list(FT_STEPS),
                   "ft_lrs": list(FT_LRS), "steps": setup.settings.steps})
    ft = result.setdefault("finetune", {})
    if "matta" not in result or any(f"{lr:g}" not in ft for lr in FT_LRS):
        config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
        model, secs = runner.train(config, optimizer, with_lr(setup.settings, lrs["matta"]))
        result["matta"] = {"metrics": runner.measure(model, setup.sizes), "seconds": secs}
        for ft_lr in FT_LRS:
            ft[f"{ft_lr:g}"] = {size: {str(k): v for k, v in _finetune_size(
                runner, model, spec, seed, FT_STEPS, ft_lr, kd)[1].items()} for size, spec in setup.sizes.items()}
            log(f"finetune val lr {ft_lr:g}: " + " ".join(
                f"{size}@{k} {v['auc']:.4f}/{v['logloss']:.4f}" for size, r in ft[f"{ft_lr:g}"].items()
                for k, v in r.items()))
            _write(out_path, result)
    fair = result.setdefault("kd_fair", {})
    for extra in (0, *FT_STEPS):
        for size, spec in setup.sizes.items():
            key = f"{size}/{extra}"
            if key in fair:
                continue
            steps = setup.settings.steps + extra
            model, secs = runner.train(twin_config(setup.base, spec, "kd", seed, kd), optimizer,
                                       with_lr(setup.settings, lrs[f"kd/{size}"], steps))
            fair[key] = {**runner.measure(model, {size: spec})[size], "seconds": secs, "steps": steps}
            log(f"finetune val kd twin {key} ({steps} steps): {fair[key]['auc']:.4f}/{fair[key]['logloss']:.4f}")
            _write(out_path, result)
    scores = {}
    for ft_lr in FT_LRS:
        for extra in FT_STEPS:
            m = {size: ft[f"{ft_lr:g}"][size][str(extra)] for size in setup.sizes}
            twins = {size: fair[f"{size}/{extra}"] for size in setup.sizes}
            scores[f"{ft_lr:g}/{extra}"] = score(m, twins)
    scores["none/0"] = score(result["matta"]["metrics"], {size: fair[f"{size}/0"] for size in setup.sizes})
    result["scores"] = scores
    best = max((k for k in scores if k != "none/0"), key=lambda k: scores[k]["score"])
    result["best"] = {"ft_lr": float(best.split("/")[0]), "ft_steps": int(best.split("/")[1])}
    _write(out_path, result)
    log(f"finetune val: best {result['best']} score {scores[best]['score']:+.4f}")
    return result


def stage_finetune_final(setup: Setup, optimizer: str, seeds: int, params: dict, kd: dict, lrs: dict,
                         ft: dict, out_path: str) -> dict:
    """EVAL, `seeds` seeds: MatTA extracted, MatTA + fine-tune (ft_steps at ft_lr, chosen on
    validation), KD twin from scratch at steps and at steps + ft_steps (fair budget)."""
    runner = Runner(setup, setup.data.train, setup.data.eval)
    result = _read(out_path) or {}
    result.update({"optimizer": optimizer, "params": params, "kd": kd, "lrs": lrs, "ft": ft,
                   "steps": setup.settings.steps})
    runs = result.setdefault("runs", [])
    done = {(r["seed"], r["method"], r["size"]) for r in runs}
    extra = ft["ft_steps"]
    for seed in range(seeds):
        if any((seed, "matta_ft", s) not in done for s in setup.sizes):
            config = recipe_config(setup.base, params, seed, setup.settings, setup.mix_sizes)
            model, secs = runner.train(config, optimizer, with_lr(setup.settings, lrs["matta"]))
            for size, m in runner.measure(model, setup.sizes).items():
                runs.append({"seed": seed, "method": "matta", "size": size, "seconds": secs,
                             "steps": setup.settings.steps, **m})
            for size, spec in setup.sizes.items():
                _, out = _finetune_size(runner, model, spec, seed, [extra], ft["ft_lr"], kd)
                runs.append({"seed": seed, "method": "matta_ft", "size": size, "train_seconds": secs,
                             "steps": setup.settings.steps, "ft_steps": extra, **out[extra]})
            _write(out_path, result)
            log(f"finetune final seed {seed}: " + " ".join(
                f"{r['method']}/{r['size']} {r['auc']:.4f}/{r['logloss']:.4f}" for r in runs[-2 * len(setup.sizes):]))
        for method, steps in (("kd", setup.settings.steps), ("kd_fair", setup.settings.steps + extra)):
            for size, spec in setup.sizes.items():
                if (seed, method, size) in done:
                    continue
                model, secs = runner.train(twin_config(setup.base, spec, "kd", seed, kd), optimizer,
                                           with_lr(setup.settings, lrs[f"kd/{size}"], steps))
                runs.append({"seed": seed, "method": method, "size": size, "seconds": secs, "steps": steps,
                             **runner.measure(model, {size: spec})[size]})
                _write(out_path, result)
                log(f"finetune final seed {seed} {method} {size}: {runs[-1]['auc']:.4f}/{runs[-1]['logloss']:.4f}")
    return result


def ta_shapes(student):
    """Open question 2: TAs at about the default TA's parameter budget (~136k on MovieLens)
    grown along one axis each; the Student (emb 8, 2 cross rank 16, MLP 128-64) is nested
    in all of them."""
    from matta_tf.config import SubmodelSpec

    return {
        "default_mixed": SubmodelSpec(16, 3, (32, 32, 32), (256, 128, 64)),  # 2x emb, 2x width, +1 layer
        "wider": SubmodelSpec(8, 2, (64, 64), (384, 192)),
        "deeper": SubmodelSpec(8, 4, (16,) * 4, (128,) * 6 + (112, 64)),
        "larger_embedding": SubmodelSpec(32, 2, (16, 16), (128, 64)),
    }


def stage_ta_shape(setup: Setup, optimizer: str, seeds: int, params: dict, lr: float | None, out_path: str,
                   split: str = "eval") -> dict:
    """`split` "eval" (train on train, measure on eval) or "validation" (fit / validation
    split), `seeds` seeds: the MatTA recipe with each TA of `ta_shapes`; Student metrics
    (and the TA's and mix_1's) per TA shape."""
    from matta_tf.extract import cost

    runner = (Runner(setup, setup.data.train, setup.data.eval) if split == "eval"
              else Runner(setup, *split_valid(setup.data)))
    result = _read(out_path) or {}
    result.update({"optimizer": optimizer, "params": params, "lr": lr, "steps": setup.settings.steps,
                   "split": split})
    shapes = result.setdefault("shapes", {})
    runs = result.setdefault("runs", [])
    done = {(r["seed"], r["shape"]) for r in runs}
    for name, ta in ta_shapes(setup.base.student).items():
        base = dataclasses.replace(setup.base, ta=ta, ta_expansion=None)
        shape_setup = Setup(data=setup.data, base=base, settings=setup.settings, mix_sizes=setup.mix_sizes)
        shapes[name] = {"ta": ta.to_dict(), "ta_cost": cost(base, ta),
                        "student_cost": cost(base, base.student)}
        for seed in range(seeds):
            if (seed, name) in done:
                continue
            config = recipe_config(base, params, seed, setup.settings, setup.mix_sizes)
            model, secs = runner.train(config, optimizer, with_lr(setup.settings, lr))
            m = runner.measure(model, shape_setup.sizes)
            runs.append({"seed": seed, "shape": name, "seconds": secs, "metrics": m})
            _write(out_path, result)
            log(f"ta_shape {name} seed {seed}: " + " ".join(f"{s} {v['auc']:.4f}/{v['logloss']:.4f}"
                                                            for s, v in m.items()))
    return result


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
    for opt in ("adam", "shampoo"):
        lines += _lr_lines(_read(os.path.join(data_dir, f"lr_{opt}.json")), header)
    for opt in ("adam", "shampoo"):
        lines += _ft_search_lines(_read(os.path.join(data_dir, f"finetune_search_{opt}.json")), header)
        lines += _ft_final_lines(_read(os.path.join(data_dir, f"finetune_{opt}.json")), header)
    for opt in ("adam", "shampoo"):
        lines += _ta_shape_lines(_read(os.path.join(data_dir, f"tashape_val_{opt}.json")))
        lines += _ta_shape_lines(_read(os.path.join(data_dir, f"tashape_{opt}.json")))
    return "\n".join(lines)


def _cell(values, digits=4):
    m, s, n = _ms(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n else "-"


def _lr_lines(res, header) -> list[str]:
    if not res or "best" not in res:
        return []
    sizes = header["sizes"]
    lines = [f"### Learning rate ({res['optimizer']}; validation, seed {res['seed']}, {res['steps']} steps; "
             f"recipe {json.dumps(res['params'])}; KD twins {res['kd']})", "",
             "Val AUC / log-loss; **bold** = chosen (twins: best AUC minus log-loss excess; MatTA: best score "
             "against the tuned twins).", "",
             "| lr | " + " | ".join(f"KD {s}" for s in sizes) + " | " + " | ".join(f"MatTA {s}" for s in sizes)
             + " | MatTA score |", "|---|" + "---|" * (2 * len(sizes) + 1)]
    for lr in res["grid"]:
        cells = []
        for s in sizes:
            r = res["runs"][f"kd/{s}/{lr:g}"]
            c = f"{r['auc']:.4f}/{r['logloss']:.4f}"
            cells.append(f"**{c}**" if float(res["best"][f"kd/{s}"]) == lr else c)
        m = res["runs"][f"matta/{lr:g}"]
        bold = res["best"]["matta"] == lr
        for s in sizes:
            c = f"{m['metrics'][s]['auc']:.4f}/{m['metrics'][s]['logloss']:.4f}"
            cells.append(f"**{c}**" if bold else c)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + f" | {m.get('score', float('nan')):+.4f} |")
    return lines + [""]


def _ft_search_lines(res, header) -> list[str]:
    if not res or "best" not in res:
        return []
    sizes = header["sizes"]
    lines = [f"### Per-size fine-tune after extraction: search ({res['optimizer']}; validation, seed 0; "
             f"MatTA {res['steps']} steps at lr {res['lrs']['matta']:g}, then each extracted size fine-tuned "
             f"alone with BCE + {2 * res['kd']['w_teacher']:g} KD (its KD twin's loss), Adam, a new "
             "data order)", "",
             "Val AUC / log-loss after F fine-tune steps, and the KD twin trained from scratch for "
             f"{res['steps']} + F steps (fair budget). Score as in the search (min over sizes of the margin "
             "vs the fair-budget twin).", "",
             "| fine-tune lr / F | " + " | ".join(sizes) + " | score |", "|---|" + "---|" * (len(sizes) + 1)]
    m0 = res["matta"]["metrics"]
    lines.append("| none / 0 (extracted) | " + " | ".join(f"{m0[s]['auc']:.4f}/{m0[s]['logloss']:.4f}"
                                                        for s in sizes) + f" | {res['scores']['none/0']['score']:+.4f} |")
    for key, sc in sorted(res["scores"].items(), key=lambda kv: -kv[1]["score"]):
        if key == "none/0":
            continue
        lr, f = key.split("/")
        r = res["finetune"][lr]
        mark = " **(chosen)**" if float(lr) == res["best"]["ft_lr"] and int(f) == res["best"]["ft_steps"] else ""
        lines.append(f"| {lr} / {f}{mark} | " + " | ".join(f"{r[s][f]['auc']:.4f}/{r[s][f]['logloss']:.4f}"
                                                        for s in sizes) + f" | {sc['score']:+.4f} |")
    lines += ["", "KD twins from scratch (val AUC / log-loss): " + ", ".join(
        f"{k} {v['auc']:.4f}/{v['logloss']:.4f}" for k, v in res["kd_fair"].items()) + " (size/extra steps)", ""]
    return lines


def _ft_final_lines(res, header) -> list[str]:
    if not res or not res.get("runs"):
        return []
    runs, sizes, ft = res["runs"], header["sizes"], res["ft"]
    seeds = sorted({r["seed"] for r in runs})
    f = ft["ft_steps"]
    lines = [f"### Per-size fine-tune after extraction: eval ({res['optimizer']}; {len(seeds)} seeds; mean ± std; "
             f"MatTA {res['steps']} steps, fine-tune {f} steps at Adam lr {ft['ft_lr']:g} (chosen on validation); "
             f"lrs {res['lrs']})", "",
             f"| size | MatTA AUC | MatTA+FT AUC | KD {res['steps']} AUC | KD {res['steps']}+{f} AUC | MatTA LL | "
             f"MatTA+FT LL | KD {res['steps']} LL | KD {res['steps']}+{f} LL | MatTA+FT - KD fair AUC (± s.e.) | "
             f"MatTA+FT - KD fair LL (± s.e.) |", "|---|" + "---|" * 10]

    def rows(method, size):
        return sorted((r for r in runs if r["method"] == method and r["size"] == size), key=lambda r: r["seed"])

    for size in sizes:
        cells = [_cell([r[k] for r in rows(m, size)]) for k in ("auc", "logloss")
                 for m in ("matta", "matta_ft", "kd", "kd_fair")]
        diff = {}
        for k in ("auc", "logloss"):
            a = {r["seed"]: r[k] for r in rows("matta_ft", size)}
            b = {r["seed"]: r[k] for r in rows("kd_fair", size)}
            d = [a[s] - b[s] for s in a if s in b]
            m, sd, n = _ms(d)
            diff[k] = f"{m:+.4f} ± {sd / max(n, 1) ** 0.5:.4f}"
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {diff['auc']} | {diff['logloss']} |")
    st = {m: _ms([1 - r["auc"] for r in rows(m, "student")])[0] for m in ("matta_ft", "kd", "kd_fair")}
    lines += ["", f"Student (1 - AUC): MatTA+FT {st['matta_ft']:.4f} vs KD {st['kd']:.4f} "
              f"({100 * (st['matta_ft'] / st['kd'] - 1):+.1f}%) and KD fair budget {st['kd_fair']:.4f} "
              f"({100 * (st['matta_ft'] / st['kd_fair'] - 1):+.1f}%).", "",
              "Cost per exported size (wall seconds, mean over seeds; same shared 2-core machine): ", "",
              "| size | fine-tune steps | fine-tune s | KD twin from scratch steps | KD twin s | "
              "fine-tune / twin (steps) | fine-tune / twin (s) |", "|---|---|---|---|---|---|---|"]
    for size in sizes:
        ft_s = _ms([r["seconds"] for r in rows("matta_ft", size)])[0]
        tw_s = _ms([r["seconds"] for r in rows("kd_fair", size)])[0]
        tw_steps = res["steps"] + f
        lines.append(f"| {size} | {f} | {ft_s:.1f} | {tw_steps} | {tw_s:.1f} | {f / tw_steps:.2f} | "
                     f"{ft_s / tw_s:.2f} |")
    mt = _ms([r["train_seconds"] for r in rows("matta_ft", sizes[0])])[0]
    lines += ["", f"(MatTA training itself: {res['steps']} steps, {mt:.1f} s for all sizes together; the fine-tune "
              "seconds include tracing the step function.)", ""]
    return lines


def _ta_shape_lines(res) -> list[str]:
    if not res or not res.get("runs"):
        return []
    seeds = sorted({r["seed"] for r in res["runs"]})
    lines = [f"### Open question 2: wider vs deeper vs larger-embedding TA ({res['optimizer']}, lr {res['lr']:g}; "
             f"{res.get('split', 'eval')}; {len(seeds)} seed(s); mean ± std; {res['steps']} steps; recipe {json.dumps(res['params'])})", "",
             "| TA | TA spec | TA params | TA madds | Student AUC | Student LL | mix_1 AUC | TA AUC |",
             "|---|---|---|---|---|---|---|---|"]
    for name, sh in res["shapes"].items():
        rs = [r for r in res["runs"] if r["shape"] == name]
        if not rs:
            continue
        spec = sh["ta"]
        desc = (f"emb {spec['embedding_dim']}, cross {spec['cross_layers']}x{spec['cross_ranks'][0] if spec['cross_ranks'] else 'full'}, "
                f"MLP {'-'.join(str(w) for w in spec['mlp_widths'])}")
        g = lambda size, k, rs=rs: _cell([r["metrics"][size][k] for r in rs])  # noqa: E731
        lines.append(f"| {name} | {desc} | {sh['ta_cost']['params']:,} | {sh['ta_cost']['madds_per_example']:,} | "
                     f"{g('student', 'auc')} | {g('student', 'logloss')} | {g('mix_1', 'auc')} | {g('ta', 'auc')} |")
    return lines + [""]


def _final_lines(final: dict, opt: str, tag: str, header: dict) -> list[str]:
        lines = []
        if final:
            runs = final["runs"]
            seeds = sorted({r["seed"] for r in runs})
            lines += [f"### Eval{' (' + tag + ')' if tag else ''} ({opt}; {len(seeds)} seeds; mean ± std; "
                      f"recipe {json.dumps(final['params'])}; "
                      f"KD twins: {final['kd']}"
                      + (f"; lrs tuned on validation {final['lrs']}" if final.get("lrs") else "") + ")", "",
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
    parser.add_argument("--stage", default="all", help="comma list of timing, search, final, lr, ftsearch, "
                        "ftfinal, tashape, report; or all (= timing, search, final)")
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
    parser.add_argument("--tuned-lr", action="store_true",
                        help="final stage: every arm at its lr tuned on validation by --stage lr")
    parser.add_argument("--shape-seeds", type=int, default=2, help="tashape stage seeds")
    parser.add_argument("--ta-shape", help="replace the config's TA by ta_shapes()[NAME] (wider, deeper, ...)")
    args = parser.parse_args(argv)

    stages = {"timing", "search", "final"} if args.stage == "all" else set(args.stage.split(","))
    data = load(args.data, args.train_rows, args.eval_rows, args.teacher_steps)
    log(f"recipe: {data.name}: {data.train.num_rows} train / {data.eval.num_rows} eval rows; teacher {data.teacher}")
    base = RankerConfig.from_yaml(args.config)
    base = RankerConfig.from_dict({**base.to_dict(), "features": data.features.to_dict(), "ta_expansion": None})
    if args.ta_shape:  # a TA of `ta_shapes` instead of the config's (stage final: use with --tag)
        base = dataclasses.replace(base, ta=ta_shapes(base.student)[args.ta_shape])
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
        search = _read(os.path.join(data_dir, "search_adam.json")) or _read(search_path)
        if search is None:
            continue
        params = json.loads(args.recipe) if args.recipe else search["recipes"][search["best"]]["params"]
        lr_path = os.path.join(data_dir, f"lr_{opt}.json")
        if "lr" in stages:
            stage_lr(setup, opt, params, search["kd"], lr_path)
        tuned = (_read(lr_path) or {}).get("best")
        if (args.tuned_lr or stages & {"ftsearch", "ftfinal", "tashape", "tashapeval"}) and not tuned:
            raise SystemExit(f"run --stage lr --optimizers {opt} first (no {lr_path})")
        lrs = tuned if args.tuned_lr else None
        if "final" in stages:
            stage_final(setup, opt, args.seeds, params, search["kd"],
                        os.path.join(data_dir, f"final_{opt}{'_' + args.tag if args.tag else ''}.json"), lrs=lrs)
        ft_search_path = os.path.join(data_dir, f"finetune_search_{opt}.json")
        if "ftsearch" in stages:
            stage_finetune_search(setup, opt, params, search["kd"], tuned, ft_search_path)
        if "ftfinal" in stages:
            ft = _read(ft_search_path)["best"]
            stage_finetune_final(setup, opt, args.seeds, params, search["kd"], tuned, ft,
                                 os.path.join(data_dir, f"finetune_{opt}.json"))
        if "tashape" in stages:
            stage_ta_shape(setup, opt, args.shape_seeds, params, tuned["matta"],
                           os.path.join(data_dir, f"tashape_{opt}.json"))
        if "tashapeval" in stages:
            stage_ta_shape(setup, opt, 1, params, tuned["matta"],
                           os.path.join(data_dir, f"tashape_val_{opt}.json"), split="validation")
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
