"""Budget-aware students from pipeline artifacts: the frontier of a trained MatTA model and
the students that fit serving budgets (used by `matta students` and StudentExtractor).

Inputs are what the pipeline already makes: the Trainer's model directory
(`trainer_module.load_trained`), the Transform graph, and an ExampleGen split of *raw*
serialized tf.Examples - the same bytes a server receives, so the quality numbers and the
latency numbers are of the same inputs. Selection needs a split the model did not train
on and that is not the reported one: carve `validation` from train with ExampleGen's
split config (e.g. names [train, validation, eval], buckets [8, 1, 2]).

`build_frontier` (see `matta_tf.frontier` for the search and the rule):

1. enumerates nested candidate specs and scores them on the split (AUC, log-loss,
   calibration) in one pass over it;
2. keeps the Pareto fronts over multiply-adds and over parameters, exports each front
   member as the SavedModel it would be served as (TFT input layer, warm-up requests),
   and measures its size and in-process `serving_default` latency (p50/p99) at
   `latency_batch`;
3. returns a JSON-able frontier: every record, the fronts (madds, params, p99_ms) and the
   export directories.

`select_students` picks per `Budget` with `matta_tf.frontier.select_over_rule`: the best
exported candidate within it, if its validation AUC beats the heuristic line's pick at 95%
confidence, else the heuristic's pick (so front members, arms and the heuristic line are
exported); for a latency budget
it checks the pick's p99 on a real `matta serve` on loopback (`serving.latency`) and
moves to the next-best candidate if the served p99 is over the budget (every attempt is
recorded). `write_frontier_plot` draws quality against each cost with the exported arms,
the heuristic line and the picks marked.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil

import numpy as np

from matta_tf.frontier import (
    COST_KEYS,
    Budget,
    candidate_specs,
    cost_of,
    evaluate_candidates,
    heuristic_pick,
    pareto_front,
    select_over_rule,
)

FRONTIER_FILE = "frontier.json"
LOGITS_FILE = "validation_logits.npz"  # per-candidate logits on the selection rows + labels


@dataclasses.dataclass(frozen=True)
class BudgetSearch:
    """How StudentExtractor searches for budget picks (pipeline config `budget_search`)."""

    selection_split: str = "validation"
    grid_points: int = 3
    random_specs: int = 32
    seed: int = 0
    heuristic_points: int = 11
    confidence: float = 0.95  # select_over_rule
    max_rows: int | None = 20_000
    latency_batch: int = 64
    latency_calls: int = 200
    verify_served: bool = True  # check a p99_ms pick on a real `matta serve`

    def __post_init__(self):
        if not isinstance(self.selection_split, str) or not self.selection_split:
            raise ValueError(f"selection_split must be a split name, got {self.selection_split!r}")
        for name, low in (("grid_points", 2), ("random_specs", 0), ("seed", 0), ("heuristic_points", 2),
                          ("latency_batch", 1), ("latency_calls", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.max_rows is not None and (isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int)
                                          or self.max_rows < 1):
            raise ValueError(f"max_rows must be an int >= 1 or null, got {self.max_rows!r}")
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0.5 <= self.confidence < 1:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence!r}")
        if not isinstance(self.verify_served, bool):
            raise ValueError(f"verify_served must be true or false, got {self.verify_served!r}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "budget_search") -> BudgetSearch:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {data!r}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: "
                             f"{[f.name for f in dataclasses.fields(cls)]}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None


def split_files(examples_dir: str) -> list[str]:
    """The record files of an ExampleGen split directory (or a glob)."""
    pattern = os.path.join(examples_dir, "*") if os.path.isdir(examples_dir) else examples_dir
    files = sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    if not files:
        raise ValueError(f"no example files at {examples_dir}")
    return files


def read_serialized(files, max_rows: int | None = None) -> list[bytes]:
    """Serialized tf.Examples from gzipped TFRecord files (ExampleGen's output)."""
    import tensorflow as tf

    ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if max_rows:
        ds = ds.take(max_rows)
    return [r.numpy() for r in ds]


def transformed_batches(serialized: list[bytes], tft_output, batch_size: int = 4096):
    """(transformed features, label) batches of raw serialized examples, through the TFT
    layer the exported students carry (eager, so no tf.data tracing of the TFT graph)."""
    import tensorflow as tf

    layer = tft_output.transform_features_layer()
    raw_spec = tft_output.raw_feature_spec()
    out = []
    for i in range(0, len(serialized), batch_size):
        raw = tf.io.parse_example(tf.constant(serialized[i:i + batch_size]), raw_spec)
        features = dict(layer(raw))
        if "label" not in features:
            raise ValueError("the transform output has no 'label' column; cannot score candidates")
        label = features.pop("label")
        out.append((features, label))
    return out


def _export(model, spec, tft_output, export_dir: str, warmup: list[bytes], model_name: str) -> int:
    from components.student_extractor import serving_parse_spec
    from matta_tf.export import export_saved_model
    from matta_tf.extract import extract
    from serving.config import make_warmup_logs, write_warmup_requests

    standalone = extract(model, spec)
    export_saved_model(standalone, export_dir, serving_parse_spec(tft_output),
                       preprocess=tft_output.transform_features_layer(), tft_output=tft_output,
                       check_examples=warmup)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(export_dir) for f in fs)
    if warmup:
        write_warmup_requests(export_dir, make_warmup_logs(model_name, warmup))
    return size


def build_frontier(model, tft_output, serialized: list[bytes], workdir: str, *, grid_points: int = 3,
                   random_specs: int = 32, mixnmatch: int = 1, seed: int = 0, heuristic_points: int = 11,
                   latency_batch: int = 64,
                   latency_calls: int = 200, model_name: str = "matta_ranker", log=print) -> dict:
    """The frontier of `model` on `serialized` (see the module docstring); exports go to
    `<workdir>/exports/<spec label>`."""
    from serving.latency import inprocess_latency

    candidates = candidate_specs(model.config, grid_points=grid_points, random_specs=random_specs,
                                 seed=seed, mixnmatch=mixnmatch, heuristic_points=heuristic_points)
    log(f"[students] scoring {len(candidates)} nested specs on {len(serialized)} examples")
    records, logits, labels = evaluate_candidates(model, transformed_batches(serialized, tft_output), candidates,
                                                  return_logits=True)
    os.makedirs(workdir, exist_ok=True)
    logits_file = os.path.join(workdir, LOGITS_FILE)
    np.savez_compressed(logits_file, __labels__=labels, **logits)
    members = {r["label"] for kind in ("madds", "params") for r in pareto_front(records.values(), kind)}
    # The exported arms and the heuristic line too: `select_over_rule` may keep the rule's pick.
    members |= {label for label, r in records.items()
                if {"student", "ta", "heuristic"} & set(r["tags"]) or any(t.startswith("mix_") for t in r["tags"])}
    warmup = serialized[:8]
    exports = {}
    log(f"[students] exporting and timing {len(members)} front members at batch {latency_batch}")
    for label in sorted(members, key=lambda k: records[k]["madds_per_example"]):
        export_dir = os.path.join(workdir, "exports", label)
        if os.path.exists(export_dir):
            shutil.rmtree(export_dir)
        records[label]["saved_model_bytes"] = _export(model, candidates[label].spec, tft_output,
                                                      export_dir, warmup, model_name)
        stats = inprocess_latency(export_dir, serialized, latency_batch, calls=latency_calls)
        records[label].update(p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"], latency_batch=latency_batch)
        exports[label] = export_dir
    fronts = {kind: [r["label"] for r in pareto_front(records.values(), kind)] for kind in COST_KEYS}
    return {"records": records, "fronts": fronts, "exports": exports, "latency_batch": latency_batch,
            "logits_file": logits_file,
            "latency": "in-process serving_default, sequential calls", "rows": len(serialized),
            "search": {"grid_points": grid_points, "random_specs": random_specs, "mixnmatch": mixnmatch,
                       "seed": seed, "heuristic_points": heuristic_points, "candidates": len(candidates)}}


def write_frontier(frontier: dict, out_dir: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FRONTIER_FILE)
    with open(path, "w") as f:
        json.dump(frontier, f, indent=1, sort_keys=True)
    return path


def read_frontier(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, FRONTIER_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no frontier at {path}; run `matta students frontier` first")
    with open(path) as f:
        return json.load(f)


def read_logits(path: str) -> tuple[dict, np.ndarray]:
    with np.load(path) as data:
        logits = {k: data[k] for k in data.files if k != "__labels__"}
        return logits, data["__labels__"]


def select_students(frontier: dict, budgets: list[Budget], serialized: list[bytes] | None = None,
                    verify_served: bool = True, served_calls: int = 300, confidence: float = 0.95,
                    log=print) -> list[dict]:
    """One pick per budget: {budget, label, record, evidence, heuristic, arm, served
    (latency budgets), attempts}. The pick is `select_over_rule` among the exported
    candidates: the best validation AUC within the budget if it beats the heuristic
    line's pick at `confidence`, else the heuristic's pick (exported for this). """
    from serving.latency import served_latency

    records = frontier["records"]
    logits, labels = read_logits(frontier["logits_file"])
    picks = []
    for budget in budgets:
        if budget.kind == "p99_ms" and budget.batch != frontier["latency_batch"]:
            raise ValueError(f"budget {budget.label}: the frontier's latency was measured at batch "
                             f"{frontier['latency_batch']}, not {budget.batch}; rerun "
                             f"`matta students frontier --latency-batch {budget.batch}`")
        pool = [records[k] for k in frontier["exports"]]
        attempts = []
        chosen = evidence = None
        while pool:
            rec, evidence = select_over_rule(pool, budget, logits, labels, confidence=confidence)
            if rec is None:
                break
            if budget.kind == "p99_ms" and verify_served:
                if serialized is None:
                    raise ValueError("a p99_ms budget is checked on a served model: pass the examples")
                served = served_latency({"candidate": frontier["exports"][rec["label"]]}, serialized,
                                        budget.batch, calls=served_calls)["candidate"]
                attempts.append({"label": rec["label"], "served": served})
                log(f"[students] {budget.label}: {rec['label']} served p99 {served['p99_ms']:.3f} ms "
                    f"(budget {budget.limit} ms)")
                if served["p99_ms"] > budget.limit:
                    pool = [r for r in pool if r["label"] != rec["label"]]
                    continue
            chosen = rec
            break
        heuristic = heuristic_pick(records.values(), budget)
        arms = heuristic_pick(records.values(), budget, tags=arm_tags(records))
        picks.append({"budget": budget.to_dict(), "label": chosen["label"] if chosen else None,
                      "record": chosen, "evidence": evidence,
                      "served": attempts[-1]["served"] if chosen and attempts else None,
                      "attempts": attempts,
                      "heuristic": heuristic["label"] if heuristic else None,
                      "arm": arms["label"] if arms else None})
        if chosen is None:
            log(f"[students] {budget.label}: no exported candidate fits")
    return picks


def arm_tags(records: dict) -> set[str]:
    """The exported-arm names among the records' tags: student, mix_k, ta."""
    return {t for r in records.values() for t in r["tags"] if t in ("student", "ta") or t.startswith("mix_")}


def export_picks(frontier: dict, picks: list[dict], out_dir: str) -> dict[str, str]:
    """Copies each pick's SavedModel to `<out_dir>/<budget label>/`; {label: dir}."""
    out = {}
    for pick in picks:
        if pick["label"] is None:
            continue
        target = os.path.join(out_dir, pick["budget"]["label"])
        if os.path.exists(target):
            shutil.rmtree(target)
        shutil.copytree(frontier["exports"][pick["label"]], target)
        out[pick["budget"]["label"]] = target
    return out


def write_frontier_plot(frontier: dict, path: str, picks: list[dict] = ()) -> str:
    """Validation AUC against madds, params and p99 (one panel each): all candidates,
    the front, the heuristic line, the exported arms and the budget picks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = list(frontier["records"].values())
    kinds = [k for k in ("madds", "params", "p99_ms") if frontier["fronts"].get(k)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.2), squeeze=False)
    picked = {p["label"] for p in picks if p["label"]}
    for ax, kind in zip(axes[0], kinds, strict=True):
        have = [r for r in records if r.get(COST_KEYS[kind]) is not None]
        ax.scatter([cost_of(r, kind) for r in have], [r["auc"] for r in have], s=10, c="0.75",
                   label="candidates")
        line = sorted((r for r in have if "heuristic" in r["tags"]), key=lambda r: cost_of(r, kind))
        ax.plot([cost_of(r, kind) for r in line], [r["auc"] for r in line], "--", c="tab:orange",
                label="heuristic line")
        front = [frontier["records"][k] for k in frontier["fronts"][kind]]
        ax.plot([cost_of(r, kind) for r in front], [r["auc"] for r in front], "-o", ms=3, c="tab:blue",
                label="Pareto front")
        for r in have:
            arm = [t for t in r["tags"] if t in ("student", "ta") or t.startswith("mix_")]
            if arm:
                ax.scatter([cost_of(r, kind)], [r["auc"]], marker="s", c="k", s=28)
                ax.annotate(",".join(arm), (cost_of(r, kind), r["auc"]), fontsize=7,
                            xytext=(3, -9), textcoords="offset points")
            if r["label"] in picked:
                ax.scatter([cost_of(r, kind)], [r["auc"]], marker="*", c="tab:red", s=90)
        # Degenerate specs (e.g. a width-1 ReLU layer that died: AUC 0.5) would squash the
        # axis: show from a little below the front / arms / heuristic line, count the rest.
        shown = [r["auc"] for r in have if r["label"] in frontier["fronts"][kind] or
                 {"heuristic", "student", "ta"} & set(r["tags"])]
        if shown:
            top, low = max(r["auc"] for r in have), min(shown)
            low -= 0.25 * max(top - low, 1e-3)
            below = sum(r["auc"] < low for r in have)
            ax.set_ylim(low, top + 0.1 * max(top - low, 1e-3))
            if below:
                ax.annotate(f"{below} candidate(s) below, not shown", (0.02, 0.02), xycoords="axes fraction",
                            fontsize=7, color="0.4")
        ax.set_xlabel({"madds": "multiply-adds / example", "params": "parameters",
                       "p99_ms": f"p99 ms (batch {frontier['latency_batch']}, in-process)"}[kind])
        ax.set_ylabel("validation AUC")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
