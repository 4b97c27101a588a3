"""CLI: `matta generate-logs` (synthetic click logs) and `matta ranker-cost`.

    matta generate-logs --rows 1000000 --seed 0 --format parquet --out logs/train.parquet \
        --teacher-out logs/teacher.parquet
    matta ranker-cost --config matta_tf/configs/default_ranker.yaml --mixnmatch 2
"""
from __future__ import annotations

import json
import os
import sys
import time


def register(subparsers) -> None:
    gen = subparsers.add_parser("generate-logs", help="write synthetic click logs with planted crosses")
    gen.add_argument("--rows", type=int, required=True, help="number of impressions")
    gen.add_argument("--seed", type=int, default=0, help="row seed (same seed = same rows)")
    gen.add_argument("--format", choices=("csv", "parquet", "jsonl"), default=None,
                     help="output format (default: from the --out extension .csv/.parquet/.jsonl)")
    gen.add_argument("--out", required=True, help="output file (.csv, .parquet or .jsonl)")
    gen.add_argument("--teacher-out", help="write teacher logits to this Parquet file instead "
                                           "of a teacher_logit column")
    gen.add_argument("--num-numeric", type=int, default=13, help="numeric feature columns I1..In")
    gen.add_argument("--num-categorical", type=int, default=26,
                     help="categorical feature columns C1..Cm")
    gen.add_argument("--cardinalities", help="comma-separated category counts, one per categorical feature")
    gen.add_argument("--missing-rate", type=float, default=0.02,
                     help="fraction of feature cells left empty (null)")
    gen.add_argument("--teacher-noise-std", type=float, default=0.5,
                     help="std of the noise added to the true logit to make the teacher logit")
    gen.add_argument("--teacher-coverage", type=float, default=1.0,
                     help="fraction of rows with a teacher logit (the rest are null / absent)")
    gen.add_argument("--world-seed", type=int, default=0,
                     help="seed of the ground truth (keep it equal for train and eval logs)")
    gen.add_argument("--feature-spec-out", help="also write the matching FeatureSpec as JSON")
    gen.set_defaults(func=_generate_logs)

    cost = subparsers.add_parser("ranker-cost", help="params and multiply-adds of Student, TA and Mix'n'Match sizes")
    cost.add_argument("--config", required=True, help="RankerConfig .yaml/.json")
    cost.add_argument("--mixnmatch", type=int, default=2, help="number of intermediate sizes")
    cost.set_defaults(func=_ranker_cost)


LOG_EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl"}


def output_format(path: str, fmt: str | None) -> str:
    """The log format: `fmt` if given (it must agree with a known extension), else from
    the extension. Writing CSV into `x.parquet` would be a silent wrong result."""
    ext = os.path.splitext(path)[1].lower()
    inferred = LOG_EXTENSIONS.get(ext)
    if fmt is None:
        if inferred is None:
            raise ValueError(f"cannot tell the format of --out {path!r} from its extension; "
                             f"use {', '.join(LOG_EXTENSIONS)} or pass --format")
        return inferred
    if inferred is not None and inferred != fmt:
        raise ValueError(f"--format {fmt} does not match the extension of --out {path!r} ({inferred})")
    return fmt


def _generate_logs(args) -> int:
    from matta_tf.datasets import SyntheticLogConfig, default_feature_spec, write_click_logs

    cardinalities = None
    if args.cardinalities:
        try:
            cardinalities = tuple(int(c) for c in args.cardinalities.split(","))
        except ValueError:
            raise ValueError(f"--cardinalities must be comma-separated integers, got {args.cardinalities!r}") from None
    config = SyntheticLogConfig(num_numeric=args.num_numeric, num_categorical=args.num_categorical,
                                cardinalities=cardinalities, missing_rate=args.missing_rate,
                                teacher_noise_std=args.teacher_noise_std,
                                teacher_coverage=args.teacher_coverage, world_seed=args.world_seed)
    fmt = output_format(args.out, args.format)
    if args.rows <= 0:
        raise ValueError(f"--rows must be > 0, got {args.rows}")
    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a directory; give a file name such as {args.out}/logs.{fmt}")
    start = time.perf_counter()
    write_click_logs(args.out, args.rows, seed=args.seed, fmt=fmt,
                     teacher_path=args.teacher_out, config=config)
    if args.feature_spec_out:
        with open(args.feature_spec_out, "w", encoding="utf-8") as f:
            json.dump(default_feature_spec(config).to_dict(), f, indent=1)
    print(f"wrote {args.rows} rows to {args.out} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


def _ranker_cost(args) -> int:
    from matta_tf.config import RankerConfig
    from matta_tf.extract import cost

    if os.path.isdir(args.config):
        raise ValueError(f"--config {args.config} is a directory; give a RankerConfig .yaml/.json file")
    config = RankerConfig.from_file(args.config)
    specs = {"student": config.student_spec(), **config.mixnmatch_specs(args.mixnmatch), "ta": config.ta_spec()}
    for name, spec in specs.items():
        print(json.dumps({"name": name, **cost(config, spec), "spec": spec.to_dict()}))
    return 0
