"""`matta ab simulate`: replay held-out click logs as live traffic through the A/B router.

Each simulated request is a user (unit id) with `items_per_request` candidate items cut
from consecutive log rows. The router sends the candidates' serialized tf.Examples to the
assigned arm's student on a running server (gRPC or REST over loopback), the items are
shown in descending score order, and a position-based click model decides clicks:

    P(click on the item at 0-based position k) = examination(k) * relevance(item),
    examination(k) = 1 / (k + 1) ** position_decay,

where relevance is the log's true `click_prob` for generated data, else the teacher's
probability sigmoid(`teacher_logit`) (real data). A better ranking puts relevant items
where they are examined, so it earns more clicks. Exposures and outcomes go to the
router's durable event log and from there into `matta ab report`.

The run stops by itself after `num_requests` requests or `max_seconds`, whichever is
first; requests run on `concurrency` threads so the log's group commit can batch them.
"""
from __future__ import annotations

import dataclasses
import math
import threading
import time
from concurrent import futures
from typing import Sequence

import numpy as np

from matta_tf.metrics import log_loss_from_probabilities, roc_auc


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    num_requests: int = 500
    items_per_request: int = 10
    max_seconds: float = 60.0
    num_users: int = 2000
    position_decay: float = 1.0
    concurrency: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.num_requests < 1 or self.items_per_request < 1 or self.num_users < 1:
            raise ValueError("num_requests, items_per_request and num_users must be >= 1")
        if self.max_seconds <= 0 or self.concurrency < 1:
            raise ValueError("max_seconds must be > 0 and concurrency >= 1")


def examination_probability(position: np.ndarray, decay: float) -> np.ndarray:
    return 1.0 / (np.asarray(position, dtype=np.float64) + 1.0) ** decay


def relevance_from_table(table) -> np.ndarray:
    """True click probabilities if the log has them, else the teacher's probabilities."""
    if "click_prob" in table.column_names:
        rel = np.asarray(table.column("click_prob").to_pylist(), dtype=np.float64)
        source = "click_prob"
    elif "teacher_logit" in table.column_names:
        logits = np.asarray(table.column("teacher_logit").to_pylist(), dtype=np.float64)
        rel = 1.0 / (1.0 + np.exp(-logits))
        source = "teacher_logit"
    else:
        raise ValueError("the log has neither 'click_prob' nor 'teacher_logit': "
                         f"columns are {table.column_names}")
    bad = np.flatnonzero(~np.isfinite(rel) | (rel < 0) | (rel > 1))
    if bad.size:
        raise ValueError(f"{source}: row {int(bad[0])} gives relevance {rel[bad[0]]!r}, "
                         "not a probability")
    return rel


def load_log_table(path: str, teacher_path: str | None = None):
    """Reads a held-out log (parquet/csv/jsonl) and joins teacher logits if separate."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        table = pq.read_table(path)
    elif path.endswith((".jsonl", ".json")):
        table = pajson.read_json(path)
    elif path.endswith(".csv"):
        table = pacsv.read_csv(path)
    else:
        raise ValueError(f"{path}: unknown log format (want .parquet, .csv or .jsonl)")
    if teacher_path:
        teacher = pq.read_table(teacher_path)
        by_id = dict(zip(teacher.column("impression_id").to_pylist(),
                         teacher.column("teacher_logit").to_pylist(), strict=True))
        ids = table.column("impression_id").to_pylist()
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(f"{teacher_path}: no teacher logit for impression {missing[0]!r}")
        table = table.append_column("teacher_logit", pa.array([by_id[i] for i in ids],
                                                              pa.float64()))
    return table


def run_simulation(router, examples: Sequence[bytes], relevance: np.ndarray,
                   config: SimulationConfig = SimulationConfig()) -> dict:
    """Replays requests through `router` (an `ABRouter`); returns run statistics."""
    n_rows = len(examples)
    if n_rows != len(relevance):
        raise ValueError(f"{n_rows} examples but {len(relevance)} relevance values")
    k = config.items_per_request
    if n_rows < k:
        raise ValueError(f"the log has {n_rows} rows, fewer than items_per_request={k}")
    deadline = time.monotonic() + config.max_seconds
    stats = {"requests": 0, "clicks": 0, "errors": 0, "stopped_by": "num_requests"}
    lock = threading.Lock()

    def one(i: int):
        if time.monotonic() > deadline:
            return "deadline"
        rng = np.random.default_rng([config.seed, i])
        start = (i * k) % (n_rows - k + 1)
        rows = np.arange(start, start + k)
        unit = f"user-{int(rng.integers(config.num_users))}"
        try:
            result = router.rank(unit, [examples[r] for r in rows], request_id=f"sim-{config.seed}-{i}")
        except Exception as err:  # counted; the router already logged what it could
            with lock:
                stats["errors"] += 1
                stats.setdefault("first_error", str(err))
            return "error"
        order = np.argsort(-result.scores, kind="stable")
        shown = rows[order]
        p_click = examination_probability(np.arange(k), config.position_decay) * relevance[shown]
        clicks = np.flatnonzero(rng.random(k) < p_click)
        router.record_outcome(result, clicks.tolist())
        with lock:
            stats["requests"] += 1
            stats["clicks"] += int(clicks.size)
        return "ok"

    t0 = time.monotonic()
    with futures.ThreadPoolExecutor(config.concurrency, thread_name_prefix="matta-sim") as pool:
        outcomes = list(pool.map(one, range(config.num_requests)))
    if "deadline" in outcomes:
        stats["stopped_by"] = "max_seconds"
    stats["seconds"] = time.monotonic() - t0
    stats["router"] = router.summary()
    return stats


def offline_metrics(client, model_name: str, arm_labels: dict[str, str],
                    examples: Sequence[bytes], labels: np.ndarray,
                    batch_size: int = 256) -> dict[str, dict]:
    """Offline AUC (and log loss) of each arm's served model on held-out rows."""
    out = {}
    for arm, label in arm_labels.items():
        scores = []
        for i in range(0, len(examples), batch_size):
            res = client.predict_examples(model_name, examples[i:i + batch_size], label=label)
            scores.append(np.asarray(res["probability"], dtype=np.float64))
        p = np.concatenate(scores)
        y = np.asarray(labels, dtype=np.float64)
        out[arm] = {"auc": roc_auc(y, p), "logloss": log_loss_from_probabilities(y, p, eps=1e-7),
                    "rows": int(len(y))}
        if not math.isfinite(out[arm]["auc"]):
            out[arm]["auc"] = None
    return out
