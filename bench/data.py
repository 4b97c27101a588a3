"""Benchmark data: generated logs, MovieLens-100k, Criteo TSV files, or any log with a
log-schema file.

Every source ends as a `BenchData`: train / validation / eval tables with a
`teacher_logit` column and a FeatureSpec fitted on the train split only
(`matta_tf.config.feature_spec_from_table`: exact vocabularies with a min-count and an
OOV row; hashing only past `max_vocabulary`). The validation split is carved from the
end of the training period (last `validation_fraction` by time) for tuning; eval is only
for reporting.

Teacher logits: `generated` carries the generator's oracle teacher (noisy true logit).
Everywhere else (`generated:fitted`, `movielens`, `criteo:DIR`, `schema:...`) the project's
teacher (`components.teacher`) is fitted on train + validation with K-fold cross-fitting:
those rows get out-of-fold logits (never from a model that saw them) and the eval rows
get the fold ensemble.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import pyarrow as pa

import matta_tf  # noqa: F401
from components.teacher import DEFAULT_FOLDS
from matta_tf.config import DEFAULT_MIN_COUNT, FeatureSpec, feature_spec_from_table

VALIDATION_FRACTION = 0.1
CACHE_DIR = os.environ.get("MATTA_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "matta"))
RECBOLE = "recbole==1.2.1"
MOVIELENS_FEATURES = ["user", "item", "age", "gender", "occupation", "zip2", "release_year", "genre"]


@dataclasses.dataclass
class BenchData:
    name: str
    train: pa.Table
    eval: pa.Table
    features: FeatureSpec
    teacher: str  # where the teacher logits came from
    validation: pa.Table | None = None  # for tuning; carved from the end of the train period
    teacher_metrics: dict | None = None  # the fitted teacher's teacher_metrics.json


@dataclasses.dataclass(frozen=True)
class DataOptions:
    teacher_steps: int = 800
    folds: int = DEFAULT_FOLDS
    min_count: int = DEFAULT_MIN_COUNT
    max_vocabulary: int | None = None
    validation_fraction: float = VALIDATION_FRACTION
    teacher_batch_size: int = 512
    teacher_spec: dict | None = None  # None: components.teacher.DEFAULT_TEACHER_SPEC
    fit_teacher: bool = True  # False: no teacher logits at all (labels-only diagnostics)


def carve_validation(table: pa.Table, fraction: float, time_column: str | None = None):
    """(train, validation): the last `fraction` of rows by `time_column` (stable; row order
    when None) become the validation split."""
    if time_column is not None and time_column in table.column_names:
        order = np.argsort(table.column(time_column).to_numpy(zero_copy_only=False), kind="stable")
        table = table.take(pa.array(order))
    n_val = int(round(table.num_rows * fraction))
    if n_val <= 0:
        return table, None
    return table.slice(0, table.num_rows - n_val), table.slice(table.num_rows - n_val)


def fit_features(train: pa.Table, numeric, categorical, opts: DataOptions, log=print) -> FeatureSpec:
    return feature_spec_from_table(train, list(numeric), list(categorical), min_count=opts.min_count,
                                   max_vocabulary=opts.max_vocabulary, log=log)


def cross_fitted_teacher(fit: pa.Table, ev: pa.Table, numeric, categorical, opts: DataOptions, log=print):
    """Fits the project's teacher on `fit` (K-fold cross-fitting) and scores both tables.

    Returns (fit logits: out-of-fold, eval logits: fold ensemble, teacher metrics)."""
    from components import teacher

    with tempfile.TemporaryDirectory() as tmp:
        export = os.path.join(tmp, "teacher")
        metrics = teacher.fit_teacher_table(fit, numeric, categorical, export, steps=opts.teacher_steps,
                                            batch_size=opts.teacher_batch_size, folds=opts.folds,
                                            min_count=opts.min_count, max_vocabulary=opts.max_vocabulary,
                                            spec=opts.teacher_spec, log=log)
        fit_logits, fit_by, fit_info = teacher.score_teacher_table(fit, export, log=log)
        eval_logits, eval_by, eval_info = teacher.score_teacher_table(ev, export, log=log)
    if opts.folds > 1:
        assert (fit_by >= 0).all(), "every fitted row must get an out-of-fold logit"
    assert (eval_by < 0).all(), "eval rows must not be fitted rows"
    metrics["eval_metrics"] = eval_info.get("ensemble_metrics")
    return fit_logits, eval_logits, metrics


def _teacher_source(metrics: dict) -> str:
    if metrics["folds"] > 1:
        held = (f"out-of-fold AUC {metrics['oof_auc']:.4f} / log-loss {metrics['oof_logloss']:.4f} "
                f"(in-sample {metrics['in_sample_auc']:.3f})")
    else:
        held = f"in-sample AUC {metrics['in_sample_auc']:.3f}, no cross-fitting"
    ev = metrics.get("eval_metrics")
    ev = f", eval AUC {ev['auc']:.4f}" if ev else ""
    return (f"components.teacher cross-fitted on train+validation ({metrics['folds']} folds, "
            f"{metrics['steps_per_fold']} steps each): {held}{ev}")


def _with_teacher(name, train, validation, ev, numeric, categorical, opts, log):
    """Cross-fits the teacher on train + validation and attaches `teacher_logit` columns."""
    def strip(t):  # an oracle teacher column (generated logs) is replaced, never used
        return t.drop_columns(["teacher_logit"]) if t is not None and "teacher_logit" in t.column_names else t

    train, validation, ev = strip(train), strip(validation), strip(ev)
    if not opts.fit_teacher:
        return BenchData(name=name, train=train, eval=ev, validation=validation,
                         features=fit_features(train, numeric, categorical, opts, log), teacher="none")
    fit = pa.concat_tables([train, validation]) if validation is not None else train
    fit_logits, eval_logits, metrics = cross_fitted_teacher(fit, ev, numeric, categorical, opts, log)
    n = train.num_rows
    train = train.append_column("teacher_logit", pa.array(fit_logits[:n], pa.float64()))
    if validation is not None:
        validation = validation.append_column("teacher_logit", pa.array(fit_logits[n:], pa.float64()))
    ev = ev.append_column("teacher_logit", pa.array(eval_logits, pa.float64()))
    features = fit_features(train, numeric, categorical, opts, log)
    return BenchData(name=name, train=train, eval=ev, validation=validation, features=features,
                     teacher=_teacher_source(metrics), teacher_metrics=metrics)


# --------------------------------------------------------------------------- sources


def generated(train_rows: int, eval_rows: int, seed: int = 0, small: bool = False, fitted: bool = False,
              opts: DataOptions = DataOptions(), log=print) -> BenchData:
    """The default Criteo-like generator (13 numeric, 26 categorical); `small` (4 + 6
    features) only keeps the smoke run's graph tracing short. The oracle teacher (noisy
    true logit) unless `fitted`: then the project's cross-fitted teacher."""
    from matta_tf.datasets import SyntheticLogConfig, generate_click_logs

    config = SyntheticLogConfig(num_numeric=4, num_categorical=6) if small else SyntheticLogConfig()
    table = generate_click_logs(train_rows + eval_rows, seed=seed, config=config)
    # Time split: the eval rows are the latest, as in production.
    train, ev = table.slice(0, train_rows), table.slice(train_rows)
    train, validation = carve_validation(train, opts.validation_fraction, "timestamp")
    numeric, categorical = config.numeric_names, config.categorical_names
    if fitted:
        return _with_teacher("generated:fitted", train, validation, ev, numeric, categorical, opts, log)
    return BenchData(name="generated", train=train, eval=ev, validation=validation,
                     features=fit_features(train, numeric, categorical, opts, log),
                     teacher="generator (noisy true logit)")


def logs(train_glob: str, eval_glob: str, schema_spec, name: str, opts: DataOptions = DataOptions(),
         validation_glob: str | None = None, log=print) -> BenchData:
    """Reads logs with the project's log contract (invalid rows are counted and reported by
    `components.teacher.read_valid_rows`); validation = `validation_glob` or the last part
    of train by time; the cross-fitted teacher scores every split."""
    from components import logschema, teacher

    schema = logschema.load_log_schema(schema_spec)
    train, bad_train = teacher.read_valid_rows(schema, train_glob)
    ev, bad_eval = teacher.read_valid_rows(schema, eval_glob)
    bad_val = 0
    if validation_glob:
        validation, bad_val = teacher.read_valid_rows(schema, validation_glob)
    else:
        train, validation = carve_validation(train, opts.validation_fraction, schema.timestamp)
    if bad_train or bad_eval or bad_val:
        log(f"bench data: {bad_train} train, {bad_val} validation and {bad_eval} eval rows failed "
            "validation and are excluded")
    return _with_teacher(name, train, validation, ev, list(schema.numeric_features),
                         list(schema.categorical_features), opts, log)


def recbole_wheel(cache_dir: str = CACHE_DIR, log=print) -> str:
    """The recbole 1.2.1 wheel (it ships MovieLens-100k), downloaded once with pip."""
    folder = os.path.join(cache_dir, "recbole")
    found = sorted(glob.glob(os.path.join(folder, "recbole-1.2.1-*.whl")))
    if not found:
        log(f"bench data: downloading the {RECBOLE} wheel (MovieLens-100k) to {folder}")
        os.makedirs(folder, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE, "-d", folder],
                       check=True)
        found = sorted(glob.glob(os.path.join(folder, "recbole-1.2.1-*.whl")))
    if not found:
        raise FileNotFoundError(f"pip download {RECBOLE} left no wheel in {folder}")
    return found[0]


def _atomic_rows(zf: zipfile.ZipFile, member: str):
    lines = zf.read(member).decode("utf-8", errors="replace").splitlines()
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    for line in lines[1:]:
        if line:
            cells = line.split("\t")
            yield dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))


def movielens_table(cache_dir: str = CACHE_DIR, log=print) -> pa.Table:
    """MovieLens-100k as a click log, ordered by time: one row per rating, label = rating >= 4;
    categorical features user, item, age, gender, occupation, zip2 (first 2 characters of
    the zip code), release_year, genre (the first listed)."""
    prefix = "recbole/dataset_example/ml-100k/ml-100k"
    with zipfile.ZipFile(recbole_wheel(cache_dir, log)) as zf:
        users = {r["user_id"]: r for r in _atomic_rows(zf, prefix + ".user")}
        items = {r["item_id"]: r for r in _atomic_rows(zf, prefix + ".item")}
        inter = list(_atomic_rows(zf, prefix + ".inter"))
    cols = {k: [] for k in ["impression_id", "timestamp", "label", *MOVIELENS_FEATURES]}
    for r in inter:
        u, i = users.get(r["user_id"], {}), items.get(r["item_id"], {})
        cols["impression_id"].append(f"u{r['user_id']}_i{r['item_id']}")
        cols["timestamp"].append(int(float(r["timestamp"])))
        cols["label"].append(int(float(r["rating"]) >= 4))
        cols["user"].append(r["user_id"])
        cols["item"].append(r["item_id"])
        cols["age"].append(u.get("age") or None)
        cols["gender"].append(u.get("gender") or None)
        cols["occupation"].append(u.get("occupation") or None)
        cols["zip2"].append((u.get("zip_code") or "")[:2] or None)
        cols["release_year"].append(i.get("release_year") or None)
        cols["genre"].append((i.get("class") or "").split(" ")[0] or None)
    table = pa.table({k: pa.array(v, pa.int64() if k in ("timestamp", "label") else pa.string())
                      for k, v in cols.items()})
    order = np.lexsort((table.column("item").to_numpy(zero_copy_only=False).astype(str),
                        table.column("user").to_numpy(zero_copy_only=False).astype(str),
                        table.column("timestamp").to_numpy()))
    return table.take(pa.array(order))


MOVIELENS_SCHEMA = {
    "format": "parquet", "label": "label", "impression_id": "impression_id", "timestamp": "timestamp",
    "columns": [{"name": "impression_id", "type": "string"}, {"name": "timestamp", "type": "int"},
                {"name": "label", "type": "int"}] + [{"name": n, "type": "string"} for n in MOVIELENS_FEATURES],
    "categorical_features": MOVIELENS_FEATURES}


def movielens(opts: DataOptions = DataOptions(), eval_fraction: float = 0.2, cache_dir: str = CACHE_DIR,
              log=print) -> BenchData:
    """MovieLens-100k, time-ordered 80/20 train/eval split (validation: last 10% of train by
    time), written once as Parquet logs under the cache and read through the log contract."""
    import pyarrow.parquet as pq

    folder = os.path.join(cache_dir, "movielens-100k")
    paths = {s: os.path.join(folder, f"{s}.parquet") for s in ("train", "eval")}
    if not all(os.path.exists(p) for p in paths.values()):
        table = movielens_table(cache_dir, log)
        n_train = table.num_rows - int(round(table.num_rows * eval_fraction))
        os.makedirs(folder, exist_ok=True)
        for split, part in (("train", table.slice(0, n_train)), ("eval", table.slice(n_train))):
            pq.write_table(part, paths[split] + ".tmp")
            os.replace(paths[split] + ".tmp", paths[split])
    return logs(paths["train"], paths["eval"], MOVIELENS_SCHEMA, "movielens", opts, log=log)


# --------------------------------------------------------------------------- --data specs

USAGE = ("use generated, generated:fitted, movielens, criteo:DIR or "
         "schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB")


def data_name(spec: str) -> str:
    """The name `load(spec, ...)` gives its data (results go to a folder named after it)."""
    if spec in ("generated", "generated:fitted", "movielens"):
        return spec
    if spec.startswith("criteo:"):
        return "criteo:" + os.path.basename(os.path.normpath(spec.split(":", 1)[1]))
    if spec.startswith("schema:") and len(spec.split(":")) == 4:
        return os.path.basename(spec.split(":")[1])
    raise ValueError(f"--data {spec!r}: {USAGE}")


def load(spec: str, train_rows: int, eval_rows: int, opts: DataOptions = DataOptions(), small: bool = False,
         log=print) -> BenchData:
    """`generated` | `generated:fitted` | `movielens` | `criteo:DIR` (train*, test*, and dev*
    as the validation split if present) | `schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB`."""
    if spec in ("generated", "generated:fitted"):
        return generated(train_rows, eval_rows, small=small, fitted=spec.endswith(":fitted"), opts=opts, log=log)
    if spec == "movielens":
        return movielens(opts, log=log)
    if spec.startswith("criteo:"):
        folder = spec.split(":", 1)[1]
        train_glob = os.path.join(folder, "train*")
        eval_glob = os.path.join(folder, "test*")
        dev_glob = os.path.join(folder, "dev*")
        if not glob.glob(train_glob) or not glob.glob(eval_glob):
            raise ValueError(f"criteo data dir {folder!r} needs train* and test* files")
        return logs(train_glob, eval_glob, "criteo", data_name(spec), opts,
                    validation_glob=dev_glob if glob.glob(dev_glob) else None, log=log)
    if spec.startswith("schema:"):
        parts = spec.split(":")
        if len(parts) != 4:
            raise ValueError(f"--data {spec!r}: use schema:SCHEMA_FILE:TRAIN_GLOB:EVAL_GLOB")
        _, schema_file, train_glob, eval_glob = parts
        if not glob.glob(train_glob) or not glob.glob(eval_glob):
            raise ValueError(f"--data {spec!r}: no files match {train_glob!r} or {eval_glob!r}")
        return logs(train_glob, eval_glob, schema_file, data_name(spec), opts, log=log)
    raise ValueError(f"--data {spec!r}: {USAGE}")
