"""Training beyond one process: `tf.distribute` strategies for MatTA, from one config block.

A pipeline config's `distribution` section (or any mapping) becomes a `DistributionConfig`
(validated: an unknown strategy or key is an error, never a silent fallback), and
`make_strategy(config)` builds the strategy; the cluster comes from the `TF_CONFIG`
environment variable, as Vertex AI, Kubernetes (TFJob) and `LocalCluster` set it.

    strategy: none                   the default strategy (one device)
    strategy: mirrored               synchronous, the devices of this machine (`devices`)
    strategy: multi_worker_mirrored  synchronous data parallel over the workers of TF_CONFIG;
                                     every worker runs the same program, the global batch is
                                     split between them, gradients are all-reduced
    strategy: parameter_server       asynchronous: a coordinator (TF_CONFIG task `chief`)
                                     schedules steps on `worker` tasks; variables live on
                                     `ps` tasks, embedding tables split over them

Parameter servers: `partition: embeddings` (default) splits every embedding table (a
variable created in a name scope matching `embedding_pattern`, e.g.
`network/embedding_C1/embeddings`) along its rows into up to `max_shards` (default: the
number of ps tasks) `ShardedVariable` shards of at least `min_shard_bytes`; other
variables stay whole, placed round-robin. `partition: min_size` applies
`MinSizePartitioner` to every variable; `partition: none` splits nothing. Worker and ps
tasks only run a `tf.distribute.Server` (`run_server`, or `python -m matta_tf.distribute
serve`); the coordinator runs the training program (Keras `fit` with a `DatasetCreator`,
see `distributed_dataset`).

What holds under each strategy (tests/test_distribute*.py):

* MatTARanker's loss is the global batch's: the train step divides by the replicas in
  sync and its means use the global row / teacher-row counts (`matta_loss_terms`), the
  sampled Mix'n'Match size is the same on every replica (a stateless draw keyed by the
  step), so 2 workers of `multi_worker_mirrored` reproduce a one-process run with the same
  global batch and data order (Adam and Shampoo).
* `parameter_server` training is asynchronous (each worker's step applies its own batch's
  gradients to the shared variables, Hogwild-style), so it is not step-for-step equal to
  a one-process run. Adam and Shampoo update sharded tables shard by shard: row-sparse
  gradients arrive per shard with shard-local row ids, and their updates and slots are
  row-/element-wise, so they equal the unsharded table's. Shampoo refuses (ValueError)
  a *sharded* variable that would get Kronecker factors, because per-shard statistics are
  not the whole variable's. Model checkpoints written from sharded variables restore into
  unsharded ones (and any other sharding): the Trainer's model is saved like that and the
  students are extracted from an ordinary, unsharded model.

Example (`TF_CONFIG` set by the platform)::

    config = DistributionConfig.from_dict({"strategy": "multi_worker_mirrored"})
    strategy = make_strategy(config)
    with strategy.scope():
        model = MatTARanker(ranker_config)
        model.compile(optimizer=Shampoo(1e-3))
    model.fit(distributed_dataset(config, lambda: make_batches(global_batch)), ...)
"""
from __future__ import annotations

import matta_tf  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

# isort: split

import argparse
import atexit
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any

STRATEGIES = ("none", "mirrored", "multi_worker_mirrored", "parameter_server")
PARTITIONS = ("embeddings", "min_size", "none")
COMMUNICATIONS = ("auto", "ring", "nccl")
# Keys that only mean something for one strategy (given for another: an error).
_STRATEGY_KEYS = {
    "devices": ("mirrored",),
    "communication": ("multi_worker_mirrored",),
    "partition": ("parameter_server",),
    "max_shards": ("parameter_server",),
    "min_shard_bytes": ("parameter_server",),
    "embedding_pattern": ("parameter_server",),
}


@dataclasses.dataclass(frozen=True)
class DistributionConfig:
    """How the Trainer distributes training (see the module docstring).

    Attributes:
      strategy: none | mirrored | multi_worker_mirrored | parameter_server.
      devices: mirrored only: device names (default: every GPU of this machine, else
        the CPU).
      communication: multi_worker_mirrored only: collective implementation auto | ring |
        nccl.
      partition: parameter_server only: embeddings | min_size | none.
      max_shards: parameter_server only: at most this many shards per variable (default:
        the number of ps tasks).
      min_shard_bytes: parameter_server only: a shard holds at least this many bytes
        (smaller tables get fewer shards; default 256 KiB).
      embedding_pattern: parameter_server only: regular expression on the name scope a
        variable is created in; `partition: embeddings` splits the variables whose scope
        matches.
      steps_per_execution: steps per `tf.function` call in Keras fit (fewer coordinator
        round trips with parameter servers).
    """

    strategy: str = "none"
    devices: tuple[str, ...] | None = None
    communication: str = "auto"
    partition: str = "embeddings"
    max_shards: int | None = None
    min_shard_bytes: int = 256 << 10
    embedding_pattern: str = r"(^|/)embedding[^/]*$"
    steps_per_execution: int = 1

    def __post_init__(self):
        def fail(message):
            raise ValueError(f"distribution: {message}")

        if not isinstance(self.strategy, str) or self.strategy not in STRATEGIES:
            fail(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.devices is not None:
            if isinstance(self.devices, str) or not all(isinstance(d, str) for d in self.devices):
                fail(f"devices must be a list of device names, got {self.devices!r}")
            if not self.devices:
                fail("devices must not be empty (leave it out for the default)")
            object.__setattr__(self, "devices", tuple(self.devices))
        if self.communication not in COMMUNICATIONS:
            fail(f"communication {self.communication!r} is not one of {', '.join(COMMUNICATIONS)}")
        if self.partition not in PARTITIONS:
            fail(f"partition {self.partition!r} is not one of {', '.join(PARTITIONS)}")
        for name, low, optional in (("max_shards", 1, True), ("min_shard_bytes", 1, False),
                                    ("steps_per_execution", 1, False)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                fail(f"{name} must be an int >= {low}, got {value!r}")
        try:
            re.compile(self.embedding_pattern)
        except (re.error, TypeError) as err:
            fail(f"embedding_pattern {self.embedding_pattern!r}: {err}")

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "distribution") -> DistributionConfig:
        """From a mapping (None or {} = strategy none); errors name `where` and the key."""
        if data is None:
            return cls()
        if isinstance(data, DistributionConfig):
            return data
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping like {{strategy: mirrored}}, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        strategy = data.get("strategy", "none")
        for key in data:
            allowed = _STRATEGY_KEYS.get(key)
            if allowed and strategy not in allowed:
                raise ValueError(f"{where}: {key} applies to strategy {' or '.join(allowed)} "
                                 f"only, not {strategy!r}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix('distribution: ')}") from None

    def to_dict(self) -> dict[str, Any]:
        """Only the keys that differ from the defaults (round-trips through from_dict)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return {"strategy": self.strategy, **out}


# ------------------------------------------------------------------------- TF_CONFIG


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment variable ({} if unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {raw[:100]!r}")
    return value


def task() -> tuple[str | None, int]:
    """(task type, index) of this process from TF_CONFIG, (None, 0) without one."""
    t = tf_config().get("task") or {}
    return t.get("type"), int(t.get("index", 0))


def is_chief(config: DistributionConfig) -> bool:
    """Whether this process writes the outputs: always for none / mirrored; for
    multi_worker_mirrored the `chief` task, or worker 0 when the cluster has no chief;
    for parameter_server the coordinator (`chief`)."""
    if config.strategy in ("none", "mirrored"):
        return True
    kind, index = task()
    cluster = tf_config().get("cluster") or {}
    if kind is None:
        return True  # a one-process "cluster"
    if kind == "chief":
        return True
    return config.strategy == "multi_worker_mirrored" and kind == "worker" and index == 0 \
        and not cluster.get("chief")


def is_server_task(config: DistributionConfig) -> bool:
    """True for the worker and ps tasks of a parameter-server cluster: they only serve."""
    return config.strategy == "parameter_server" and task()[0] in ("worker", "ps")


def _check_cluster(config: DistributionConfig) -> dict:
    cfg = tf_config()
    cluster = cfg.get("cluster") or {}
    if config.strategy == "parameter_server":
        missing = [job for job in ("ps", "worker") if not cluster.get(job)]
        if missing or not cfg.get("task"):
            raise ValueError("distribution: strategy parameter_server needs TF_CONFIG with a "
                             f"cluster of 'ps' and 'worker' (and 'chief') tasks and this task; "
                             f"missing: {missing or ['task']}")
        if task()[0] != "chief":
            raise ValueError(f"distribution: parameter_server training runs on the coordinator "
                             f"(TF_CONFIG task 'chief'); this is task {task()[0]!r} - call "
                             "run_server() there instead")
    return cluster


# ------------------------------------------------------------------------- strategies


class EmbeddingPartitioner:
    """A `variable_partitioner` that splits only the variables created in a name scope
    matching `pattern` (embedding tables), with `MinSizePartitioner(min_shard_bytes,
    max_shards)` rules; every other variable stays whole."""

    def __init__(self, pattern: str, max_shards: int, min_shard_bytes: int):
        import tensorflow as tf

        self.pattern = re.compile(pattern)
        self._min_size = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=min_shard_bytes, max_shards=max_shards)

    def __call__(self, shape, dtype, axis=0):
        import tensorflow as tf

        if shape.rank and self.pattern.search(tf.get_current_name_scope() or ""):
            return self._min_size(shape, dtype, axis)
        return [1] * (shape.rank or 0)


def make_partitioner(config: DistributionConfig, num_ps: int):
    import tensorflow as tf

    shards = config.max_shards or num_ps
    if config.partition == "none":
        return None
    if config.partition == "min_size":
        return tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=config.min_shard_bytes, max_shards=shards)
    return EmbeddingPartitioner(config.embedding_pattern, shards, config.min_shard_bytes)


def make_strategy(config: DistributionConfig | dict | None, cluster_resolver=None):
    """The `tf.distribute.Strategy` for `config` (cluster from TF_CONFIG)."""
    import tensorflow as tf

    config = DistributionConfig.from_dict(config)
    if config.strategy == "none":
        return tf.distribute.get_strategy()
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(config.devices) if config.devices else None)
    if config.strategy == "multi_worker_mirrored":
        _check_cluster(config)
        implementation = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                          "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                          "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=implementation[config.communication])
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver, communication_options=options)
    cluster = _check_cluster(config)
    # Fail RPCs to a lost worker fast so the coordinator can reschedule (TF's recommendation).
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    resolver = cluster_resolver or tf.distribute.cluster_resolver.TFConfigClusterResolver()
    return tf.distribute.ParameterServerStrategy(
        resolver, variable_partitioner=make_partitioner(config, len(cluster["ps"])))


def distributed_dataset(config: DistributionConfig, dataset_fn):
    """What to pass to Keras `fit` / `evaluate` under `config`.

    `dataset_fn()` returns a batched `tf.data.Dataset` of (features, label): global
    batches for none / mirrored / multi_worker_mirrored (with multi_worker_mirrored every
    worker builds the same dataset and keeps its part of every global batch, so the data
    order is that of one process), one worker's batches for parameter_server (wrapped in
    a `DatasetCreator`; worker k of n keeps every n-th batch).
    """
    import tensorflow as tf

    if config.strategy == "parameter_server":
        def per_worker(input_context):
            ds = dataset_fn()
            if input_context is not None and input_context.num_input_pipelines > 1:
                ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            return ds

        return tf.keras.utils.experimental.DatasetCreator(per_worker)
    ds = dataset_fn()
    if config.strategy == "multi_worker_mirrored":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    return ds


# ------------------------------------------------------------------------- variables


_PART = re.compile(r"/part_\d+(?=(:\d+)?$)")


def logical_name(variable) -> str:
    """A variable's name without the `/part_k` of a `ShardedVariable` shard (for a
    ShardedVariable: its shards' common name)."""
    shards = getattr(variable, "variables", None)
    if not hasattr(variable, "_sharded_container") and isinstance(shards, (list, tuple)) and shards \
            and hasattr(shards[0], "_sharded_container"):
        variable = shards[0]
    return _PART.sub("", variable.name)


def logical_variables(variables) -> list:
    """`variables` with the shards of each `ShardedVariable` replaced by the sharded
    variable (once, at its first shard's position)."""
    out, seen = [], set()
    for var in variables:
        container = var._sharded_container() if hasattr(var, "_sharded_container") else None
        key = id(container) if container is not None else id(var)
        if key not in seen:
            seen.add(key)
            out.append(container if container is not None else var)
    return out


def sharding(model) -> dict[str, list[tuple[str, list[int]]]]:
    """{logical variable name: [(device, shape) per shard]} of a model's variables."""
    out: dict[str, list] = {}
    for var in model.variables:
        out.setdefault(logical_name(var), []).append((var.device, var.shape.as_list()))
    return out


# ------------------------------------------------------------------------- servers


def run_server(join: bool = True):
    """Starts the `tf.distribute.Server` of this TF_CONFIG task (a parameter-server
    cluster's `worker` or `ps`) and, with `join`, serves until the process is killed."""
    import tensorflow as tf

    kind, index = task()
    cluster = tf_config().get("cluster")
    if kind not in ("worker", "ps") or not cluster:
        raise ValueError(f"run_server needs TF_CONFIG with a cluster and a worker/ps task, "
                         f"got task {kind!r}")
    os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    if kind == "worker":  # one step at a time per worker; the coordinator schedules
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ.get(
            "MATTA_WORKER_INTER_OP_THREADS", "1")))
    server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=kind,
                                  task_index=index, protocol="grpc", start=True)
    print(f"[matta distribute] {kind}:{index} serving at {cluster[kind][index]}", flush=True)
    if join:
        server.join()
    return server


def free_ports(n: int) -> list[int]:
    """`n` distinct free TCP ports on loopback (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("localhost", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """A `TF_CONFIG` cluster of processes on loopback (tests, benchmarks, trying things).

    `LocalCluster({"worker": 2, "ps": 2, "chief": 1})` picks free ports; `tf_config(kind,
    index)` is that task's TF_CONFIG; `start(kind, index, argv)` runs a process with it
    (its own process group, output to `log_dir`); `stop()` kills every process group it
    started (also used as a context manager, so a failing test still stops them).
    """

    def __init__(self, jobs: dict[str, int], log_dir: str | None = None, env: dict | None = None):
        ports = iter(free_ports(sum(jobs.values())))
        self.cluster = {job: [f"localhost:{next(ports)}" for _ in range(n)]
                        for job, n in jobs.items() if n}
        self.log_dir = log_dir
        self.env = dict(env or {})
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        atexit.register(self.stop)  # also when the caller dies without reaching stop()

    def tf_config(self, kind: str, index: int = 0) -> str:
        return json.dumps({"cluster": self.cluster, "task": {"type": kind, "index": index}})

    def start(self, kind: str, index: int, argv: list[str], env: dict | None = None):
        """Runs `argv` as task (kind, index); `env` overrides the environment (a value of
        None removes the variable, e.g. {"TF_CONFIG": None} for a process outside the
        cluster)."""
        full_env = {**os.environ, **self.env, "TF_CONFIG": self.tf_config(kind, index), **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v is not None}
        out = subprocess.DEVNULL
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            out = open(os.path.join(self.log_dir, f"{kind}-{index}.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        self.procs[(kind, index)] = proc
        return proc

    def start_servers(self, jobs=("ps", "worker"), env: dict | None = None):
        """`python -m matta_tf.distribute serve` for every task of `jobs`."""
        for kind in jobs:
            for index in range(len(self.cluster.get(kind, []))):
                self.start(kind, index, [sys.executable, "-m", "matta_tf.distribute", "serve"], env)

    def log(self, kind: str, index: int = 0) -> str:
        if not self.log_dir:
            return ""
        path = os.path.join(self.log_dir, f"{kind}-{index}.log")
        if not os.path.exists(path):
            return ""
        with open(path, errors="replace") as f:
            return f.read()

    def wait(self, kind: str, index: int = 0, timeout: float | None = None) -> int:
        """The exit code of task (kind, index); raises RuntimeError (with its log) as soon
        as another task of the cluster fails first (a server that died would leave the
        coordinator waiting for it), and TimeoutError after `timeout` seconds."""
        proc = self.procs[(kind, index)]
        deadline = None if timeout is None else time.time() + timeout
        while proc.poll() is None:
            for key, other in self.procs.items():
                if key != (kind, index) and other.poll() not in (None, 0):
                    raise RuntimeError(f"task {key[0]}:{key[1]} exited with code {other.returncode} "
                                       f"before {kind}:{index} finished:\n{self.log(*key)[-3000:]}")
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"{kind}:{index} still running after {timeout} s:\n"
                                   f"{self.log(kind, index)[-3000:]}")
            time.sleep(0.2)
        return proc.returncode

    def stop(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m matta_tf.distribute")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run this TF_CONFIG task's tf.distribute.Server (worker/ps of a "
                                 "parameter-server cluster) until killed")
    args = parser.parse_args(argv)
    if args.command == "serve":
        run_server(join=True)


if __name__ == "__main__":
    main()
