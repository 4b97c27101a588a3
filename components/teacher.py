"""`matta teacher fit|score`: a large DCN teacher for users without one, and its logit table.

A teacher that scores the rows it was trained on returns memorised labels, not knowledge,
and distilling from those logits teaches the Student nothing. So:

fit:   read logs with a log-schema (invalid rows skipped and counted) and train standalone
       DCNs (`matta_tf.model.StandaloneRanker`, exact vocabularies from
       `matta_tf.config.feature_spec_from_table`, log1p numerics) with binary
       cross-entropy. With `folds` K >= 2 (the default, 4) it *cross-fits*: every row is
       assigned to fold `h(impression_id) mod K` (h = 64-bit BLAKE2b of the id, so the
       assignment is reproducible) and fold model k is trained on every fold but k. With
       K = 1 one model is trained on all rows (the production protocol: fit on earlier
       spans, score a later one). The export is one SavedModel holding the K models:
         serving_default(examples)  -> logit, probability: the fold ensemble (mean logit);
         fold_logits(examples)      -> logits [B, K];  fold_logits_raw(raw features) -> same;
       beside it `teacher_metrics.json` (folds, rows, out-of-fold AUC / log-loss, in-sample
       AUC, per-fold counts, features, settings) and `teacher_fitted_ids.npy` (the sorted
       id hashes of every row it was fitted on).
score: run the teacher over logs and write the Parquet teacher table (`impression_id`,
       `teacher_logit`) that ClickLogExampleGen joins. A row the teacher was fitted on gets
       the logit of the one fold model that never saw it; any other row gets the fold
       ensemble. A K = 1 teacher refuses to score rows it was fitted on. Impression ids are
       derived exactly as ExampleGen does.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

from components import logschema
from matta_tf.metrics import binary_metrics

DEFAULT_TEACHER_SPEC = {"embedding_dim": 16, "cross_layers": 3, "mlp_widths": [256, 128]}
DEFAULT_FOLDS = 4
METRICS_FILE = "teacher_metrics.json"
FITTED_IDS_FILE = "teacher_fitted_ids.npy"
_FOLD_KEY = b"matta-teacher-fold"


def glob_base(pattern: str) -> str:
    """The directory part of `pattern` before its first wildcard (`/logs/day=*/x.tsv` -> `/logs`)."""
    head = pattern
    for i, ch in enumerate(pattern):
        if ch in "*?[":
            head = pattern[:i]
            break
    return os.path.dirname(head) if head != pattern or not os.path.isdir(pattern) else pattern


def read_valid_rows(schema: logschema.LogSchema, pattern: str, input_base: str | None = None):
    """(pyarrow table of valid rows, number of skipped rows) for every file matching pattern.

    Columns: `impression_id`, `label`, the schema's timestamp column (if it has one), then
    the features. Derived impression ids are `<path relative to input_base>:<row>` as in
    ClickLogExampleGen (`input_base` defaults to the directory of `pattern` before its first
    wildcard, i.e. the pipeline's data root when `pattern` is `<data_root>/<input_pattern>`)."""
    import pyarrow as pa

    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no log files match {pattern}")
    base = glob_base(pattern) if input_base is None else input_base
    extra = [schema.timestamp] if schema.timestamp and schema.timestamp not in schema.feature_names else []
    names = extra + list(schema.feature_names)
    cols = {"impression_id": [], "label": [], **{n: [] for n in names}}
    skipped = 0
    reasons: dict[str, list] = {}  # reason -> [count, first error message]
    for path in files:
        id_source = logschema.relative_source(path, base)
        try:
            for row, line, raw in logschema.iter_records(schema, path):
                try:
                    rec = logschema.validate_row(schema, raw, path, row, id_source)
                except logschema.RowError as err:
                    skipped += 1
                    seen = reasons.setdefault(err.reason, [0, None])
                    seen[0] += 1
                    if seen[1] is None:
                        seen[1] = logschema.error_message(path, line, err.reason, err.detail, err.column,
                                                          err.value)
                    continue
                cols["impression_id"].append(rec["impression_id"])
                cols["label"].append(rec[schema.label])
                for n in names:
                    cols[n].append(rec[n])
        except logschema.RowError:
            raise
        except ValueError as err:  # the whole file failed (header, missing Parquet columns)
            raise ValueError(f"{err}{_did_you_mean(path, schema)}") from err
    if skipped and not cols["impression_id"]:
        raise ValueError(no_valid_rows_message(schema, pattern, files, skipped, reasons))
    types = {"impression_id": pa.string(), "label": pa.int64(), **{n: pa.int64() for n in extra},
             **{n: pa.float64() for n in schema.numeric_features},
             **{n: pa.string() for n in schema.categorical_features}}
    return pa.table({k: pa.array(v, types[k]) for k, v in cols.items()}), skipped


def no_valid_rows_message(schema, pattern: str, files: list[str], read: int, reasons: dict) -> str:
    """One line: rows read, none valid, the top quarantine reason with an example, and the
    presets that would read the first file (a log read with the wrong --log-schema)."""
    name = logschema.preset_name(schema)
    reason, (count, example) = max(reasons.items(), key=lambda kv: kv[1][0])
    return (f"read {read:,} rows from {len(files)} file(s) matching {pattern} with log-schema "
            f"{repr(name) if name else '(the given one)'}, none valid: top reason {reason} "
            f"({count:,} rows), e.g. {example}{_did_you_mean(files[0], schema)}")


def _did_you_mean(path: str, schema) -> str:
    candidates = logschema.presets_that_read(path, exclude=schema)
    return f"; did you mean --log-schema {' or '.join(candidates)}?" if candidates else ""


# --------------------------------------------------------------------------- folds


def id_hashes(ids) -> np.ndarray:
    """uint64 keyed BLAKE2b-64 hash of every impression id (list or pyarrow array of strings)."""
    if hasattr(ids, "to_pylist"):
        ids = ids.to_pylist()
    out = np.empty(len(ids), np.uint64)
    for i, v in enumerate(ids):
        out[i] = int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8, key=_FOLD_KEY).digest(),
                                "little")
    return out


def fold_of(hashes: np.ndarray, folds: int) -> np.ndarray:
    """Fold index in [0, folds) of every id hash (deterministic, ~uniform)."""
    return (hashes % np.uint64(folds)).astype(np.int64)


# --------------------------------------------------------------------------- fit


def _predict(model, table, features, batch_size: int = 4096) -> np.ndarray:
    from matta_tf.datasets import table_to_dataset

    if table.num_rows == 0:
        return np.zeros([0])
    ds = table_to_dataset(table, features, batch_size=batch_size)
    return np.concatenate([model(f, training=False).numpy() for f, _ in ds]).astype(np.float64)


def _ensemble_module(models, features):
    """A tf.Module holding the fold models, with the teacher's three signatures."""
    import tensorflow as tf

    from matta_tf.export import parse_spec

    examples_spec = tf.TensorSpec([None], tf.string, name="examples")

    class TeacherEnsemble(tf.Module):
        def __init__(self):
            super().__init__(name="teacher_ensemble")
            self.folds = list(models)
            self.parse_spec = parse_spec(features)
            raw = {n: tf.TensorSpec([None], s.dtype, name=n) for n, s in self.parse_spec.items()}
            self.fold_logits_raw = tf.function(self._fold_logits, input_signature=[raw])
            self.fold_logits = tf.function(self._fold_logits_examples, input_signature=[examples_spec])
            self.serve = tf.function(self._serve, input_signature=[examples_spec])

        def _fold_logits(self, raw):
            logits = [tf.reshape(tf.cast(m(raw, training=False), tf.float32), [-1]) for m in self.folds]
            return {"logits": tf.stack(logits, axis=1)}

        def _fold_logits_examples(self, examples):
            return self._fold_logits(tf.io.parse_example(examples, self.parse_spec))

        def _serve(self, examples):
            logit = tf.reduce_mean(self._fold_logits_examples(examples)["logits"], axis=1)
            return {"logit": logit, "probability": tf.sigmoid(logit)}

    return TeacherEnsemble()


def fit_teacher_table(table, numeric, categorical, export_dir: str, steps: int = 2000,
                      batch_size: int = 512, folds: int = DEFAULT_FOLDS, min_count: int | None = None,
                      max_vocabulary: int | None = None, spec: dict | None = None, seed: int = 0,
                      learning_rate: float = 1e-3, sources=None, skipped: int = 0, log=None,
                      on_fold_trained=None) -> dict:
    """Fits the teacher on a table (`impression_id`, `label`, features) and exports it.

    `folds` >= 2 cross-fits (see the module docstring), 1 fits one model on every row.
    Features (vocabularies, numeric moments) are fitted per fold on that fold's training
    rows only, so a held-out row's unseen values go to OOV exactly as new data's would.
    `on_fold_trained(k, train_table)` (optional) is called with the rows fold model k is
    trained on. Returns the metrics dict also written to `<export_dir>/teacher_metrics.json`.
    """
    import pyarrow as pa
    import tensorflow as tf

    import matta_tf  # noqa: F401
    from matta_tf.config import DEFAULT_MIN_COUNT, SubmodelSpec, feature_spec_from_table
    from matta_tf.datasets import table_to_dataset
    from matta_tf.model import StandaloneRanker

    log = log or (lambda msg: None)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be an int >= 1, got {folds!r}")
    min_count = DEFAULT_MIN_COUNT if min_count is None else min_count
    if table.num_rows < max(2, folds):
        raise ValueError(f"the teacher needs at least {max(2, folds)} rows, got {table.num_rows}")
    numeric, categorical = list(numeric), list(categorical)
    table = table.select(["impression_id", "label", *numeric, *categorical])
    hashes = id_hashes(table.column("impression_id"))
    fold = fold_of(hashes, folds) if folds > 1 else np.full(len(hashes), -1)
    labels = table.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    submodel = SubmodelSpec.from_dict(spec or DEFAULT_TEACHER_SPEC)
    models, per_fold, feature_specs, in_sample = [], [], [], []
    oof = np.full(table.num_rows, np.nan)
    for k in range(folds):
        train_mask = fold != k
        train = table.filter(pa.array(train_mask))
        heldout = table.filter(pa.array(~train_mask))
        if on_fold_trained is not None:
            on_fold_trained(k, train)
        features = feature_spec_from_table(train, numeric, categorical, min_count=min_count,
                                           max_vocabulary=max_vocabulary, log=log if k == 0 else None)
        feature_specs.append(features)
        tf.keras.utils.set_random_seed(seed + k)
        model = StandaloneRanker(features, submodel, seed=seed + k, name=f"teacher_fold_{k}")
        model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate),
                      loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))
        ds = table_to_dataset(train, features, batch_size=batch_size, shuffle_seed=seed + k, repeat=True)
        ds = ds.map(lambda f, y: ({n: v for n, v in f.items() if n != "teacher_logit"}, y))
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        fit_m = binary_metrics(_predict(model, train, features), labels[train_mask])
        in_sample.append(fit_m["auc"])
        row = {"fold": k, "train_rows": train.num_rows, "heldout_rows": heldout.num_rows,
               "train_auc": fit_m["auc"], "train_logloss": fit_m["logloss"]}
        if heldout.num_rows:
            oof[~train_mask] = _predict(model, heldout, features)
            held = binary_metrics(oof[~train_mask], labels[~train_mask])
            row.update(heldout_auc=held["auc"], heldout_logloss=held["logloss"])
            log(f"teacher fold {k + 1}/{folds}: trained on {train.num_rows:,} rows ({steps} steps), "
                f"in-sample AUC {fit_m['auc']:.4f}, held-out AUC {held['auc']:.4f} "
                f"on {heldout.num_rows:,} rows")
        else:
            log(f"teacher: trained on all {train.num_rows:,} rows ({steps} steps), in-sample AUC "
                f"{fit_m['auc']:.4f} (no held-out estimate with --folds 1)")
        per_fold.append(row)
        models.append(model)

    os.makedirs(export_dir, exist_ok=True)
    module = _ensemble_module(models, feature_specs[0])
    tf.saved_model.save(module, export_dir, signatures={
        "serving_default": module.serve.get_concrete_function(),
        "fold_logits": module.fold_logits.get_concrete_function(),
        "fold_logits_raw": module.fold_logits_raw.get_concrete_function()})
    np.save(os.path.join(export_dir, FITTED_IDS_FILE), np.unique(hashes))
    metrics = {
        "export_dir": export_dir, "rows": table.num_rows, "skipped": skipped, "folds": folds,
        "cross_fitted": folds > 1, "steps_per_fold": steps, "batch_size": batch_size,
        "learning_rate": learning_rate, "seed": seed, "spec": submodel.to_dict(),
        "min_count": min_count, "max_vocabulary": max_vocabulary,
        "features": {f.name: ({"vocabulary": len(f.vocabulary)} if f.vocabulary is not None
                              else {"hash_buckets": f.hash_buckets}) for f in feature_specs[0].categorical},
        "numeric_features": numeric, "categorical_features": categorical,
        "in_sample_auc": float(np.mean(in_sample)), "per_fold": per_fold,
        "sources": [os.path.abspath(s) for s in sources] if sources else None,
        "fold_rule": "fold = blake2b-64(impression_id, key='matta-teacher-fold') mod folds"}
    if folds > 1:
        held = binary_metrics(oof, labels)
        metrics.update(oof_auc=held["auc"], oof_logloss=held["logloss"])
        log(f"teacher: out-of-fold AUC {held['auc']:.4f}, log-loss {held['logloss']:.4f} on "
            f"{table.num_rows:,} rows ({folds} folds; in-sample AUC {metrics['in_sample_auc']:.4f})")
    with open(os.path.join(export_dir, METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=1)
    return metrics


def fit_teacher(schema, pattern: str, export_dir: str, steps: int = 2000, batch_size: int = 512,
                folds: int = DEFAULT_FOLDS, min_count: int | None = None, max_vocabulary: int | None = None,
                spec: dict | None = None, seed: int = 0, input_base: str | None = None, log=None) -> dict:
    """`matta teacher fit`: reads the logs matching `pattern` and runs `fit_teacher_table`."""
    schema = logschema.load_log_schema(schema)
    table, skipped = read_valid_rows(schema, pattern, input_base)
    return fit_teacher_table(table, schema.numeric_features, schema.categorical_features, export_dir,
                             steps=steps, batch_size=batch_size, folds=folds, min_count=min_count,
                             max_vocabulary=max_vocabulary, spec=spec, seed=seed,
                             sources=sorted(glob.glob(pattern)), skipped=skipped, log=log)


# --------------------------------------------------------------------------- score


class TeacherLeakError(ValueError):
    """Scoring would give a row the logit of a model that was trained on it."""


def load_teacher_metadata(teacher_dir: str) -> dict | None:
    path = os.path.join(teacher_dir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _raw_columns(table, numeric, categorical) -> dict:
    """Model-input arrays: numeric float32 (NaN = missing), categorical strings ("" = missing)."""
    import pyarrow as pa

    cols = {}
    for name in numeric:
        cols[name] = table.column(name).cast(pa.float32()).to_numpy(zero_copy_only=False).astype(np.float32)
    for name in categorical:
        cols[name] = (table.column(name).cast(pa.string()).fill_null("")
                      .to_numpy(zero_copy_only=False).astype(object))
    return cols


def score_teacher_table(table, teacher_dir: str, batch_size: int = 4096, unverified: bool = False,
                        log=None):
    """Teacher logits for every row of `table` (`impression_id` + the teacher's features).

    Returns (logits float64 [N], scored_by int64 [N], info): `scored_by` is the fold whose
    model gave the row its logit - for a row the teacher was fitted on (cross-fitted), the
    one fold model that never saw it - or -1: the mean of all fold models, for a row it was
    not fitted on. Raises `TeacherLeakError` when a teacher fitted without cross-fitting
    is asked to score rows it was fitted on. `unverified` scores any SavedModel with a
    `serving_default` (no fitted-row check is possible), for teachers made elsewhere.
    """
    import tensorflow as tf

    import matta_tf  # noqa: F401

    log = log or (lambda msg: None)
    meta = load_teacher_metadata(teacher_dir)
    n = table.num_rows
    if meta is None:
        if not unverified:
            raise TeacherLeakError(
                f"{teacher_dir} has no {METRICS_FILE}: not a `matta teacher fit` export, so there is "
                "no record of the rows it was trained on. Pass --unverified (unverified=True) to "
                "score with its serving_default anyway.")
        from matta_tf.contract import NON_FEATURE_COLUMNS, encode_examples

        serve = tf.saved_model.load(teacher_dir).signatures["serving_default"]
        names = [c for c in table.column_names if c not in NON_FEATURE_COLUMNS]
        chunks = [serve(examples=tf.constant(encode_examples(table.slice(s, batch_size).select(names).to_pydict())))
                  ["logit"].numpy() for s in range(0, n, batch_size)]
        logits = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros([0])
        log(f"teacher score: {n:,} rows scored by an unverified teacher (no fitted-row check)")
        return logits, np.full(n, -1, np.int64), {"rows": n, "verified": False}

    folds = int(meta["folds"])
    fitted = np.load(os.path.join(teacher_dir, FITTED_IDS_FILE))
    hashes = id_hashes(table.column("impression_id"))
    in_fit = np.isin(hashes, fitted)
    if folds == 1 and in_fit.any():
        raise TeacherLeakError(
            f"{int(in_fit.sum()):,} of {n:,} rows to score were in this teacher's training data "
            f"({teacher_dir} was fitted without cross-fitting, --folds 1). A teacher must not score "
            "rows it trained on (its logits there are memorised labels): refit with --folds K >= 2 "
            "to get out-of-fold logits for them, or score only logs it was not fitted on.")
    cols = _raw_columns(table, meta["numeric_features"], meta["categorical_features"])
    fold_fn = tf.saved_model.load(teacher_dir).signatures["fold_logits_raw"]
    parts = [fold_fn(**{k: tf.constant(v[s:s + batch_size]) for k, v in cols.items()})["logits"].numpy()
             for s in range(0, n, batch_size)]
    all_folds = np.concatenate(parts).astype(np.float64) if parts else np.zeros([0, folds])
    scored_by = np.where(in_fit, fold_of(hashes, folds), -1) if folds > 1 else np.full(n, -1, np.int64)
    own = all_folds[np.arange(n), np.maximum(scored_by, 0)]
    logits = np.where(scored_by >= 0, own, all_folds.mean(axis=1))
    info = {"rows": n, "verified": True, "folds": folds, "rows_out_of_fold": int((scored_by >= 0).sum()),
            "rows_ensemble": int((scored_by < 0).sum())}
    if "label" in table.column_names and n:
        labels = table.column("label").to_numpy(zero_copy_only=False)
        for key, mask in (("out_of_fold", scored_by >= 0), ("ensemble", scored_by < 0)):
            if mask.any():
                info[f"{key}_metrics"] = binary_metrics(logits[mask], labels[mask])
    log(f"teacher score: {info['rows_out_of_fold']:,} fitted rows scored out-of-fold, "
        f"{info['rows_ensemble']:,} other rows scored by the {folds}-model ensemble"
        + "".join(f"; {k[:-8].replace('_', '-')} AUC {info[k]['auc']:.4f}" for k in
                  ("out_of_fold_metrics", "ensemble_metrics") if k in info))
    return logits, scored_by.astype(np.int64), info


def score_teacher(schema, pattern: str, teacher_dir: str, output: str, batch_size: int = 4096,
                  unverified: bool = False, input_base: str | None = None, log=None) -> dict:
    """`matta teacher score`: reads the logs, scores them, writes the Parquet teacher table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = logschema.load_log_schema(schema)
    table, skipped = read_valid_rows(schema, pattern, input_base)
    logits, _, info = score_teacher_table(table, teacher_dir, batch_size=batch_size, unverified=unverified,
                                          log=log)
    out = pa.table({"impression_id": table.column("impression_id"),
                    "teacher_logit": pa.array(logits, pa.float64())})
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    pq.write_table(out, output)
    return {**info, "skipped": skipped, "output": output}
