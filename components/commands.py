"""`matta teacher fit|score` (TensorFlow imported inside the handlers only)."""
from __future__ import annotations

import json
import sys


def _fit(args) -> int:
    from components.teacher import fit_teacher

    print(json.dumps(fit_teacher(args.log_schema, args.logs, args.export_dir, steps=args.steps,
                                 batch_size=args.batch_size), indent=1))
    return 0


def _score(args) -> int:
    from components.teacher import score_teacher

    print(json.dumps(score_teacher(args.log_schema, args.logs, args.teacher, args.output),
                     indent=1))
    return 0


def register(subparsers) -> None:
    teacher = subparsers.add_parser("teacher", help="train a DCN teacher / write teacher logits")
    sub = teacher.add_subparsers(dest="teacher_command", metavar="ACTION")
    fit = sub.add_parser("fit", help="train a large DCN teacher on click logs and export it")
    fit.add_argument("--logs", required=True, help="glob of log files")
    fit.add_argument("--log-schema", default="criteo", help="preset name or YAML file")
    fit.add_argument("--export-dir", required=True)
    fit.add_argument("--steps", type=int, default=2000)
    fit.add_argument("--batch-size", type=int, default=512)
    fit.set_defaults(func=_fit)
    score = sub.add_parser("score", help="score logs with a teacher SavedModel -> Parquet table")
    score.add_argument("--logs", required=True)
    score.add_argument("--log-schema", default="criteo")
    score.add_argument("--teacher", required=True, help="teacher SavedModel directory")
    score.add_argument("--output", required=True, help="teacher table .parquet")
    score.set_defaults(func=_score)
    teacher.set_defaults(func=lambda args: (teacher.print_help(sys.stderr), 2)[1])
