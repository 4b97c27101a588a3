"""`matta teacher fit|score` (TensorFlow imported inside the handlers only)."""
from __future__ import annotations

import json
import sys

INPUT_BASE_HELP = ("directory that derived impression ids are relative to, as in the pipeline's "
                   "data_root (None: the part of --logs before its first wildcard)")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fit(args) -> int:
    from components.teacher import fit_teacher

    folds = 1 if args.no_cross_fit else args.folds
    result = fit_teacher(args.log_schema, args.logs, args.export_dir, steps=args.steps,
                         batch_size=args.batch_size, folds=folds, min_count=args.min_count,
                         max_vocabulary=args.max_vocabulary, seed=args.seed,
                         input_base=args.input_base, log=_log)
    result.pop("per_fold", None)
    print(json.dumps(result, indent=1))
    return 0


def _score(args) -> int:
    from components.teacher import TeacherLeakError, score_teacher

    try:
        result = score_teacher(args.log_schema, args.logs, args.teacher, args.output,
                               unverified=args.unverified, input_base=args.input_base, log=_log)
    except TeacherLeakError as err:
        print(f"matta teacher score: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


def register(subparsers) -> None:
    from components.logschema import PRESETS
    from components.teacher import DEFAULT_FOLDS
    from matta_tf.config import DEFAULT_MIN_COUNT

    schema_help = (f"log-schema: a preset ({', '.join(PRESETS)}; synthetic-*: the default logs "
                       "of `matta generate-logs`) or a YAML file")
    teacher = subparsers.add_parser("teacher", help="train a DCN teacher / write teacher logits")
    sub = teacher.add_subparsers(dest="teacher_command", metavar="ACTION")
    fit = sub.add_parser(
        "fit", help="train a large DCN teacher on click logs and export it",
        description="Trains the teacher. By default it cross-fits (--folds 4): each row's fold is "
                    "a hash of its impression id, fold model k trains on the other folds, and "
                    "`teacher score` gives every fitted row the logit of the model that never saw "
                    "it (new rows: the fold ensemble). The out-of-fold AUC / log-loss are printed "
                    "and stored in <export-dir>/teacher_metrics.json. Fitting on earlier logs to "
                    "score later ones: --no-cross-fit (one model on every row; it refuses to score "
                    "rows it was fitted on).")
    fit.add_argument("--logs", required=True, help="glob of log files")
    fit.add_argument("--log-schema", default="criteo", help=schema_help)
    fit.add_argument("--input-base", default=None, help=INPUT_BASE_HELP)
    fit.add_argument("--export-dir", required=True)
    fit.add_argument("--steps", type=int, default=2000, help="training steps per fold model")
    fit.add_argument("--batch-size", type=int, default=512)
    fit.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                     help="cross-fitting folds K >= 2; 1 = no cross-fitting")
    fit.add_argument("--no-cross-fit", action="store_true",
                     help="same as --folds 1: one model on all rows, for scoring later logs only")
    fit.add_argument("--min-count", type=int, default=DEFAULT_MIN_COUNT,
                     help="a categorical value needs this many occurrences for its own embedding row; "
                          "rarer and unseen values share the OOV row")
    fit.add_argument("--max-vocabulary", type=int, default=None,
                     help="hash a categorical feature into this many buckets when its vocabulary is "
                          "larger (None: no cap, exact vocabularies)")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(func=_fit)
    score = sub.add_parser(
        "score", help="score logs with a teacher export -> Parquet table",
        description="Writes (impression_id, teacher_logit). Rows the teacher was fitted on get "
                    "out-of-fold logits; other rows the fold ensemble. A teacher fitted with "
                    "--no-cross-fit refuses (exit 2) to score rows it was fitted on.")
    score.add_argument("--logs", required=True)
    score.add_argument("--log-schema", default="criteo", help=schema_help)
    score.add_argument("--input-base", default=None, help=INPUT_BASE_HELP)
    score.add_argument("--teacher", required=True, help="teacher export directory (`matta teacher fit`)")
    score.add_argument("--output", required=True, help="teacher table .parquet")
    score.add_argument("--unverified", action="store_true",
                       help="score with any SavedModel's serving_default (no record of its training "
                            "rows, so no check that it never scores them)")
    score.set_defaults(func=_score)
    teacher.set_defaults(func=lambda args: (teacher.print_help(sys.stderr), 2)[1])
