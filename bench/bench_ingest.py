"""P3 (issue 14): ClickLogExampleGen ingestion rows/s against the row path and the limit.

    bin/matta-env python -m bench.bench_ingest [--rows 100000] [--repeats 3] [--workers 1,2]

On one generated CSV (`matta generate-logs`: 13 numeric + 26 categorical columns, teacher
logits in a separate Parquet table) and the same runner (Beam DirectRunner) it times:

  columnar  ClickLogExecutor.Do (the TFX executor: validation, teacher join, dedup, split,
            gzipped TFRecords, quarantine, counts + accounting), the default engine
  rows      the same executor with engine="rows" (one row at a time in Python)
  *_graph   run_click_log_graph in a plain Beam pipeline + counts written with
            WriteToText + accounting (what bench/run.py's P3 times)
  limit     a Beam pipeline doing only pyarrow.csv.read_csv + tfx_bsl
            RecordBatchToExamples + an uncompressed TFRecord write (tf.io.TFRecordWriter)
  limit_gz  the same, written as ExampleGen writes (gzip level 1, columnar.TFRecordGzipWriter)

plus `limit_inprocess` (the limit without Beam). After --warmup untimed runs of each, the
cases run --repeats times round-robin (one run of each per round, so a change in the
machine's load hits them alike); the JSON
(bench/results/ingest/ingest.json) keeps every time, the median, rows/s, the ratios
(columnar / limit, columnar / limit_gz, columnar / rows; by wall time and by CPU seconds
of this process, which the DirectRunner's in-process workers run in), failed runs (e.g.
the executor's accounting check) and `uptime` load averages before and after (the
machine is shared: read wall-clock rows/s with the load in mind). Workers: 1 = `--direct_num_workers=1` (in_memory); N > 1 =
`--direct_num_workers=N --direct_running_mode=multi_threading`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time

import matta_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results", "ingest", "ingest.json")
DEFAULT_WORKDIR = os.path.join(HERE, "results", "tmp", "ingest")


def log_schema() -> dict:
    """Log schema of the generated CSV (header row; teacher logits in their own table)."""
    from components.logschema import synthetic_schema

    return synthetic_schema("csv").to_dict()


def load() -> list[float]:
    return list(os.getloadavg())


def beam_args(workers: int) -> list[str]:
    args = ["--runner=DirectRunner", f"--direct_num_workers={workers}"]
    if workers > 1:
        args.append("--direct_running_mode=multi_threading")
    return args


def run_examplegen(workdir: str, log_path: str, teacher_path: str, engine: str,
                   workers: int) -> dict:
    """One ClickLogExecutor.Do run; returns its counts (the artifact properties)."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components import example_gen

    out = os.path.join(workdir, f"out-{engine}")
    shutil.rmtree(out, ignore_errors=True)
    config = example_gen.make_click_log_config(
        log_schema(), teacher_pattern=os.path.basename(teacher_path), engine=engine,
        max_quarantine_rate=1.0)
    examples = standard_artifacts.Examples()
    examples.uri = os.path.join(out, "examples")
    quarantine = example_gen.QuarantinedRows()
    quarantine.uri = os.path.join(out, "quarantine")
    os.makedirs(quarantine.uri, exist_ok=True)
    input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
        name="single_split", pattern=os.path.basename(log_path))])
    props = {"input_base": os.path.dirname(log_path),
             "input_config": proto_utils.proto_to_json(input_config),
             "click_log_config": json.dumps(config), "span": 0, "version": None}
    ctx = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args(workers), tmp_dir=os.path.join(out, "tmp"))
    example_gen.ClickLogExecutor(ctx).Do({}, {"examples": [examples], "quarantine": [quarantine]},
                                         props)
    return {k: v.int_value for k, v in examples.mlmd_artifact.custom_properties.items()
            if v.HasField("int_value")}


def run_graph(workdir: str, log_path: str, teacher_path: str, engine: str,
              workers: int) -> dict:
    """`run_click_log_graph` in a DirectRunner pipeline + counts and accounting (what
    bench/run.py's P3 times): the executor without TFX's per-execution set-up."""
    import apache_beam as beam

    from components import example_gen, logschema

    out = os.path.join(workdir, f"graph-{engine}")
    shutil.rmtree(out, ignore_errors=True)
    schema = logschema.load_log_schema(log_schema()).to_dict()
    split = example_gen.make_click_log_config(schema)["split"]
    counts_path = os.path.join(out, "counts.json")
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
            beam_args(workers))) as p:
        counts = example_gen.run_click_log_graph(
            p, [log_path], [teacher_path], schema, split,
            {n: os.path.join(out, n) for n in split["names"]},
            os.path.join(out, "quarantine", "quarantine.jsonl"), engine=engine)
        _ = (counts
             | beam.combiners.ToDict()
             | beam.Map(lambda d: json.dumps(d, sort_keys=True))
             | beam.io.WriteToText(counts_path, shard_name_template=""))
    with open(counts_path) as f:
        return example_gen.accounting({k: int(v) for k, v in json.load(f).items()},
                                      split["names"])


def limit_rows(log_path: str, out_path: str, gzip: bool) -> int:
    """pyarrow read + tfx_bsl encode + TFRecord write of every column (the limit)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from components.click_log_example_gen import columnar

    table = pacsv.read_csv(log_path)
    columns = []
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_string(col.type):
            col = col.cast(pa.binary())
        elif pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
            col = col.cast(pa.float32(), safe=False)
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        offsets = np.zeros(len(col) + 1, np.int32)
        np.cumsum(valid, out=offsets[1:])
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), col.drop_null()))
    n = table.num_rows
    encoder = example_coder.RecordBatchToExamplesEncoder()
    if gzip:
        writer = columnar.TFRecordGzipWriter(out_path)
        write, close = writer.write_all, writer.close
    else:
        tf_writer = tf.io.TFRecordWriter(out_path)

        def write(records):
            for r in records:
                tf_writer.write(r)

        close = tf_writer.close
    for start in range(0, n, columnar.ENCODE_BATCH_ROWS):
        rb = pa.RecordBatch.from_arrays(
            [c.slice(start, columnar.ENCODE_BATCH_ROWS) for c in columns], table.column_names)
        write(encoder.encode(rb))
    close()
    return n


def run_limit(workdir: str, log_path: str, gzip: bool, workers: int) -> dict:
    import apache_beam as beam

    out = os.path.join(workdir, "out-limit")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    target = os.path.join(out, "data.tfrecord" + (".gz" if gzip else ""))
    counts = os.path.join(out, "counts.json")
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(
            beam_args(workers))) as p:
        _ = (p
             | beam.Create([log_path])
             | beam.Map(lambda path: limit_rows(path, target, gzip))
             | beam.Map(lambda n: json.dumps({"rows": n}))
             | beam.io.WriteToText(counts, shard_name_template=""))
    with open(counts) as f:
        return json.load(f)


def timed(fn, repeats: int, log, warmup: int = 0) -> dict:
    """Times `repeats` runs after `warmup` untimed ones. A run that fails (e.g. the
    executor's accounting check) is recorded in `failures` and left out of the medians."""
    times, cpu, result, failures = [], [], None, []
    for i in range(warmup + repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001  (reported, not hidden)
            failures.append(f"{type(err).__name__}: {str(err)[:1000]}")
            log(f"    run {i + 1}: FAILED {failures[-1][:300]}")
            continue
        if i < warmup:
            continue
        result = out
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        log(f"    run {i + 1 - warmup}: {times[-1]:.2f} s (cpu {cpu[-1]:.2f} s)")
    return {"seconds": times, "cpu_seconds": cpu, "failures": failures, "result": result,
            "median_seconds": statistics.median(times) if times else None,
            "median_cpu_seconds": statistics.median(cpu) if cpu else None}


def check_rows(props: dict, rows: int) -> dict:
    if not props["rows_in"] == rows == props["rows_written"]:
        raise RuntimeError(f"rows_in {props['rows_in']}, rows_written {props['rows_written']}, "
                           f"expected {rows}")
    return props


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows-engine-repeats", type=int, default=1,
                        help="repeats of the (slow) row engine")
    parser.add_argument("--workers", default="1,2", help="comma list of DirectRunner workers")
    parser.add_argument("--cases", default="limit_inprocess,limit,limit_gz,columnar_graph,"
                        "columnar,rows_graph,rows")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of each fast case before timing (imports, caches)")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    from matta_tf.datasets import write_click_logs

    os.makedirs(args.workdir, exist_ok=True)
    log_path = os.path.join(args.workdir, f"logs-{args.rows}.csv")
    teacher_path = os.path.join(args.workdir, f"teacher-{args.rows}.parquet")
    if not (os.path.exists(log_path) and os.path.exists(teacher_path)):
        write_click_logs(log_path, args.rows, seed=7, fmt="csv", teacher_path=teacher_path)
    cases = args.cases.split(",")
    workers_list = [int(w) for w in args.workers.split(",")]
    result = {"rows": args.rows, "log_bytes": os.path.getsize(log_path),
              "command": "bin/matta-env python -m bench.bench_ingest " + " ".join(
                  argv if argv is not None else sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "load_before": load(), "cases": {}}
    log(f"bench_ingest: {args.rows:,} rows, {result['log_bytes'] / 1e6:.1f} MB CSV, "
        f"load {result['load_before']}")
    # Every case as (key, fn, repeats, warmup); timed round-robin (one run of each case per
    # round) so that a change of the machine's load hits all cases alike.
    jobs = []
    if "limit_inprocess" in cases:
        out = os.path.join(args.workdir, "inprocess.tfrecord")
        jobs.append(("limit_inprocess", lambda: limit_rows(log_path, out, False), args.repeats,
                     args.warmup))
    for workers in workers_list:
        for case in cases:
            if case == "limit_inprocess":
                continue
            if case in ("columnar", "rows", "columnar_graph", "rows_graph"):
                engine = case.split("_")[0]
                run = run_graph if case.endswith("_graph") else run_examplegen
                fast = engine != "rows"
                jobs.append((f"{case}@{workers}",
                             lambda e=engine, w=workers, run=run: check_rows(run(
                                 args.workdir, log_path, teacher_path, e, w), args.rows),
                             args.repeats if fast else args.rows_engine_repeats,
                             args.warmup if fast else 0))
            elif case in ("limit", "limit_gz"):
                jobs.append((f"{case}@{workers}", lambda c=case, w=workers: run_limit(
                    args.workdir, log_path, c == "limit_gz", w), args.repeats, args.warmup))
            else:
                raise ValueError(f"unknown case {case!r}")
    for key, fn, _, warmup in jobs:
        if warmup:
            log(f"  warm-up {key}")
            timed(fn, 0, log, warmup)
    partial = {key: [] for key, _, _, _ in jobs}
    for round_ in range(max(reps for _, _, reps, _ in jobs)):
        log(f"  round {round_ + 1}")
        for key, fn, reps, _ in jobs:
            if round_ < reps:
                log(f"   {key}")
                partial[key].append(timed(fn, 1, log))
    for key, runs in partial.items():
        merged = {"seconds": [], "cpu_seconds": [], "failures": [], "result": None}
        for r in runs:
            merged["seconds"] += r["seconds"]
            merged["cpu_seconds"] += r["cpu_seconds"]
            merged["failures"] += r["failures"]
            merged["result"] = r["result"] if r["result"] is not None else merged["result"]
        merged["median_seconds"] = (statistics.median(merged["seconds"])
                                    if merged["seconds"] else None)
        merged["median_cpu_seconds"] = (statistics.median(merged["cpu_seconds"])
                                        if merged["cpu_seconds"] else None)
        result["cases"][key] = merged
    for r in result["cases"].values():
        r["rows_per_s"] = args.rows / r["median_seconds"] if r["median_seconds"] else None
        r["rows_per_cpu_s"] = (args.rows / r["median_cpu_seconds"]
                               if r["median_cpu_seconds"] else None)
    ratios = {}
    for workers in workers_list:
        for mine, others in (("columnar", ("limit", "limit_gz", "rows")),
                             ("columnar_graph", ("limit", "limit_gz", "rows_graph"))):
            c = result["cases"].get(f"{mine}@{workers}")
            for other in others:
                o = result["cases"].get(f"{other}@{workers}")
                if c and o and c["rows_per_s"] and o["rows_per_s"]:
                    ratios[f"{mine}/{other}@{workers}"] = c["rows_per_s"] / o["rows_per_s"]
                    ratios[f"{mine}/{other}@{workers} (cpu)"] = (c["rows_per_cpu_s"]
                                                                 / o["rows_per_cpu_s"])
    result["ratios"] = ratios
    result["load_after"] = load()
    log("rows/s (median):")
    for key, r in result["cases"].items():
        if not r["seconds"]:
            log(f"  {key:22s} every run failed: {r['failures'][0][:200]}")
            continue
        fails = f", {len(r['failures'])} failed run(s)" if r["failures"] else ""
        log(f"  {key:22s} {r['rows_per_s']:9.0f} rows/s  ({r['median_seconds']:.2f} s, "
            f"cpu {r['median_cpu_seconds']:.2f} s{fails})")
    for key, v in ratios.items():
        log(f"  {key:30s} {v:.2f}x")
    log(f"load before {result['load_before']} after {result['load_after']}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
