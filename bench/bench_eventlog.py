"""Acknowledged-event throughput of the A/B router's durable log (serving.ab.EventLog).

Each of T threads calls `log(event)` (append + wait until fsynced) in a loop, as the
router does for every exposure and outcome; prints acknowledged events/s, fsyncs and
events per fsync. The log file goes to --dir (default: a temp dir on the working disk,
since /tmp may be a tmpfs where fsync costs nothing).

    bin/matta-env python bench/bench_eventlog.py --threads 1 4 16 --seconds 3
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.timing import closed_loop  # noqa: E402  (needs the repository on the path)
from serving.ab import EventLog  # noqa: E402


def measure(directory: str, threads: int, seconds: float) -> dict:
    path = os.path.join(directory, f"events-{threads}.jsonl")
    if os.path.exists(path):
        os.remove(path)
    with EventLog(path) as log:
        total, elapsed = closed_loop(
            lambda t: log.log({"type": "outcome", "request_id": f"{t}", "clicks": 1}), threads, seconds)
        batches = log.batches_written
    return {"threads": threads, "events_per_s": total / elapsed, "fsyncs": batches,
            "events_per_fsync": total / max(batches, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="eventlog-") as tmp:
        print(f"{'threads':>7} {'acked events/s':>15} {'fsyncs':>7} {'events/fsync':>13}")
        for t in args.threads:
            r = measure(tmp, t, args.seconds)
            print(f"{r['threads']:>7} {r['events_per_s']:>15,.0f} {r['fsyncs']:>7} {r['events_per_fsync']:>13.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
