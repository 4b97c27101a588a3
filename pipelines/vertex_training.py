"""The Trainer as a Vertex AI custom job: worker pools that follow `distribution.strategy`.

A pipeline config's `vertex_training` section describes the Vertex AI Training job that
runs the Trainer when the pipeline is compiled with `matta pipeline compile --runner
vertex`. The Trainer is then TFX's Vertex Trainer extension
(`tfx.extensions.google_cloud_ai_platform.Trainer`): its pipeline step only submits a
Vertex `CustomJob` and waits for it; every replica of every worker pool runs the ordinary
TFX Trainer executor with matta's `run_fn`, and Vertex sets `TF_CONFIG` in each replica
(pool 0 = task `chief`, pool 1 = `worker`, pool 2 = `ps`, pool 3 = `evaluator`), which
`matta_tf.distribute` reads.

Worker pools per strategy (Vertex's pool order is fixed: chief, worker, ps, evaluator)::

    strategy               pool 0 (chief)     pool 1 (worker)          pool 2 (ps)
    none, mirrored         1 replica          -                        -
    multi_worker_mirrored  1 replica          worker.replica_count>=1  -
    parameter_server       1 (coordinator)    worker.replica_count>=1  ps.replica_count>=1

So `multi_worker_mirrored` with `worker: {replica_count: N-1}` trains on N workers (the
chief is worker 0 of the all-reduce), and `parameter_server` runs the coordinator on the
chief while the worker and ps replicas only serve (`run_fn` starts their
`tf.distribute.Server`). No evaluator pool is emitted: the Trainer evaluates on the chief
(Keras `validation_data`). `mirrored` uses the chief's accelerators
(`accelerator_count` > 1 for several GPUs).

The section::

    vertex_training:
      project: my-gcp-project        # required: the project the job runs in
      region: us-central1            # required: Vertex AI region of the job
      image: null                    # container of every pool (default: compile --image)
      machine_type: n1-standard-8    # every pool, unless the pool says otherwise
      accelerator_type: null         # e.g. NVIDIA_TESLA_T4 (Vertex AcceleratorType name)
      accelerator_count: null        # default 1 with an accelerator_type, else 0
      chief: {}                      # per-pool overrides: machine_type, accelerator_type,
      worker: {replica_count: 2}     #   accelerator_count; replica_count (worker, ps only)
      ps: {replica_count: 2, machine_type: n1-highmem-8, accelerator_type: null}

A pool inherits `machine_type`, `accelerator_type` and `accelerator_count` from the
section unless it sets them (`accelerator_type: null` in a pool = no accelerator there).
Every mistake is a one-line ValueError naming the key: unknown keys, a pool the strategy
does not use (`ps` with `multi_worker_mirrored`), a missing or too small replica count,
an accelerator name Vertex does not know, and, for `multi_worker_mirrored`, chief and
workers with different accelerator counts (the all-reduce needs the same devices on
every worker).

What the Trainer's `custom_config` gets (key names from
tfx/extensions/google_cloud_ai_platform/{constants.py,trainer/executor.py}):

    ai_platform_enable_vertex: true
    ai_platform_vertex_region: <region>
    ai_platform_training_args: {project: <project>,
                                job_spec: {worker_pool_specs: [<WorkerPoolSpec>, ...]}}

with each WorkerPoolSpec `{machine_spec: {machine_type[, accelerator_type,
accelerator_count]}, replica_count, container_spec: {image_uri}}`. At run time the
extension's `VertexJobClient.create_training_job` sets every pool's
`container_spec.command` to `python -m tfx.scripts.run_executor --executor_class_path
tfx.components.trainer.executor.GenericExecutor --inputs ... --outputs ...
--exec-properties ...` (the same Trainer in every replica) and submits the CustomJob.

Not run here: nothing in this repository submits the job (no cloud access). The tests
compile the spec, check it against the PipelineSpec proto, build the CustomJob with the
extension's own `create_training_job` and check that against Vertex's `CustomJob` proto;
whether Vertex accepts the job, schedules the pools and ends the worker/ps replicas when
the chief finishes was not exercised. After `run_fn`, TFX's Trainer executor
(tfx/components/trainer/executor.py) raises in any replica whose `serving_model_dir` does
not exist; a non-chief `multi_worker_mirrored` worker therefore waits for the chief's
model before its `run_fn` returns (`components.trainer_module.wait_for_file`).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

POOLS = ("chief", "worker", "ps")  # Vertex worker pools 0, 1, 2 (TF_CONFIG task types)
POOL_KEYS = ("replica_count", "machine_type", "accelerator_type", "accelerator_count")
# The pools each strategy runs, and the fewest replicas of each (chief: always exactly 1).
STRATEGY_POOLS = {
    "none": {"chief": 1},
    "mirrored": {"chief": 1},
    "multi_worker_mirrored": {"chief": 1, "worker": 1},
    "parameter_server": {"chief": 1, "worker": 1, "ps": 1},
}
# Keys of the extension (tfx.extensions.google_cloud_ai_platform.constants / trainer.executor).
ENABLE_VERTEX_KEY = "ai_platform_enable_vertex"
VERTEX_REGION_KEY = "ai_platform_vertex_region"
TRAINING_ARGS_KEY = "ai_platform_training_args"

_PROJECT = re.compile(r"^([a-z][a-z0-9-]{4,28}[a-z0-9]|[0-9]+)$")  # a project id or number
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")  # us-central1, europe-west4, ...
_MACHINE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")  # n1-standard-8, a2-highgpu-1g, ...


def _accelerator_names() -> tuple[str, ...]:
    try:
        from google.cloud.aiplatform_v1.types.accelerator_type import AcceleratorType
    except ImportError as err:
        raise RuntimeError(f"vertex_training: checking accelerator_type needs the "
                           f"google-cloud-aiplatform package ({err}); it is in requirements.lock "
                           "- rebuild the environment") from err
    return tuple(a.name for a in AcceleratorType if a.value != 0)


@dataclasses.dataclass(frozen=True)
class WorkerPool:
    """One Vertex worker pool: `replica_count` machines of `machine_type`, each with
    `accelerator_count` accelerators of `accelerator_type` (None = CPU only)."""

    name: str
    replica_count: int
    machine_type: str
    accelerator_type: str | None
    accelerator_count: int

    def spec(self, image: str) -> dict[str, Any]:
        """The Vertex `WorkerPoolSpec` (snake_case, as the extension and the Vertex client
        take it); the extension adds `container_spec.command` when it submits the job."""
        machine = {"machine_type": self.machine_type}
        if self.accelerator_type:
            machine.update(accelerator_type=self.accelerator_type,
                           accelerator_count=self.accelerator_count)
        return {"machine_spec": machine, "replica_count": self.replica_count,
                "container_spec": {"image_uri": image}}


@dataclasses.dataclass(frozen=True)
class VertexTrainingConfig:
    """The `vertex_training` section (see the module docstring), checked against the
    distribution `strategy` it is compiled with; `pools` in Vertex order."""

    project: str
    region: str
    strategy: str
    pools: tuple[WorkerPool, ...]
    image: str | None = None

    @classmethod
    def from_dict(cls, data: dict, strategy: str,
                  where: str = "vertex_training") -> VertexTrainingConfig:
        def fail(message):
            raise ValueError(f"{where}: {message}")

        if not isinstance(data, dict):
            fail(f"expected a mapping like {{project: p, region: us-central1}}, got {data!r}")
        if strategy not in STRATEGY_POOLS:
            fail(f"unknown distribution strategy {strategy!r}")
        known = ("project", "region", "image", "machine_type", "accelerator_type",
                 "accelerator_count", *POOLS)
        unknown = sorted(set(data) - set(known))
        if unknown:
            fail(f"unknown keys {unknown}; known: {sorted(known)}")
        for key in ("project", "region"):
            if key not in data:
                fail(f"{key} is required")
        project, region, image = data["project"], data["region"], data.get("image")
        if not isinstance(project, str) or not _PROJECT.match(project):
            fail(f"project {project!r} is not a GCP project id (6-30 of a-z, 0-9, '-') or number")
        if not isinstance(region, str) or not _REGION.match(region):
            fail(f"region {region!r} is not a Vertex AI region such as us-central1")
        if image is not None and (not isinstance(image, str) or not image or
                                  any(c.isspace() for c in image)):
            fail(f"image {image!r} is not a container image name")
        needs = STRATEGY_POOLS[strategy]
        for pool in POOLS:
            if pool in data and pool not in needs:
                users = [s for s, p in STRATEGY_POOLS.items() if pool in p]
                fail(f"{pool} applies to strategy {' or '.join(users)} only, not {strategy!r}")
        defaults = _pool_fields({k: data[k] for k in ("machine_type", "accelerator_type",
                                                      "accelerator_count") if k in data},
                                {"machine_type": "n1-standard-4", "accelerator_type": None,
                                 "accelerator_count": None}, fail, "")
        pools = []
        for name, fewest in needs.items():
            given = data.get(name) or {}
            if not isinstance(given, dict):
                fail(f"{name} must be a mapping like {{replica_count: 2}}, got {given!r}")
            bad = sorted(set(given) - set(POOL_KEYS))
            if bad:
                fail(f"{name}: unknown keys {bad}; known: {list(POOL_KEYS)}")
            fields = _pool_fields({k: v for k, v in given.items() if k != "replica_count"},
                                  defaults, fail, f"{name}.")
            if name == "chief":
                if given.get("replica_count", 1) != 1:
                    fail(f"chief.replica_count must be 1 (Vertex's primary pool has one "
                         f"replica), got {given['replica_count']!r}")
                count = 1
            else:
                if "replica_count" not in given:
                    fail(f"strategy {strategy} needs {name}.replica_count (an int >= {fewest})")
                count = given["replica_count"]
                if isinstance(count, bool) or not isinstance(count, int) or count < fewest:
                    fail(f"{name}.replica_count must be an int >= {fewest} for strategy "
                         f"{strategy}, got {count!r}")
            pools.append(WorkerPool(name, count, **fields))
        if strategy == "multi_worker_mirrored" and pools[0].accelerator_count != pools[1].accelerator_count:
            fail(f"multi_worker_mirrored needs the same accelerators on every worker: chief has "
                 f"{pools[0].accelerator_count}, worker has {pools[1].accelerator_count}")
        return cls(project=project, region=region, strategy=strategy, pools=tuple(pools),
                   image=image)

    def worker_pool_specs(self, default_image: str) -> list[dict[str, Any]]:
        """The `worker_pool_specs` of the CustomJob, in Vertex's pool order."""
        return [pool.spec(self.image or default_image) for pool in self.pools]

    def trainer_custom_config(self, default_image: str) -> dict[str, Any]:
        """The keys TFX's Vertex Trainer executor reads from the Trainer's custom_config."""
        return {ENABLE_VERTEX_KEY: True, VERTEX_REGION_KEY: self.region,
                TRAINING_ARGS_KEY: {"project": self.project,
                                    "job_spec": {"worker_pool_specs":
                                                 self.worker_pool_specs(default_image)}}}


def _pool_fields(given: dict, defaults: dict, fail, prefix: str) -> dict:
    """machine_type / accelerator_type / accelerator_count of a pool: `given` over
    `defaults`; an accelerator_type without a count gets 1, none gets 0."""
    machine = given.get("machine_type", defaults["machine_type"])
    if not isinstance(machine, str) or not _MACHINE.match(machine):
        fail(f"{prefix}machine_type {machine!r} is not a Compute Engine machine type such as "
             "n1-standard-8")
    kind = given.get("accelerator_type", defaults["accelerator_type"])
    # A pool that names its own accelerator_type does not inherit the section's count.
    count = given["accelerator_count"] if "accelerator_count" in given else (
        None if "accelerator_type" in given else defaults["accelerator_count"])
    if kind is not None:
        names = _accelerator_names()
        if kind not in names:
            fail(f"{prefix}accelerator_type {kind!r} is not one of {', '.join(names)}")
        count = 1 if count is None else count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            fail(f"{prefix}accelerator_count must be an int >= 1 with accelerator_type "
                 f"{kind}, got {count!r}")
    elif count not in (None, 0):
        fail(f"{prefix}accelerator_count {count!r} needs an accelerator_type")
    return {"machine_type": machine, "accelerator_type": kind,
            "accelerator_count": count if kind is not None else 0}


def vertex_trainer(config, image: str, **trainer_kwargs):
    """TFX's Vertex Trainer extension with the worker pools of `config.vertex_training`
    for `config.distribution`; `trainer_kwargs` are the local Trainer's (run_fn, channels,
    args, custom_config), and the extension's keys are added to its custom_config."""
    try:
        from tfx import v1 as tfx

        trainer_cls = tfx.extensions.google_cloud_ai_platform.Trainer
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"the Vertex Trainer needs TFX's google_cloud_ai_platform extension "
                           f"and google-cloud-aiplatform ({err}); they are in requirements.lock "
                           "- rebuild the environment") from err
    vertex = VertexTrainingConfig.from_dict(
        config.vertex_training, config.distribution.get("strategy", "none"),
        where="pipeline config: vertex_training")
    custom_config = {**trainer_kwargs.pop("custom_config", {}), **vertex.trainer_custom_config(image)}
    return trainer_cls(custom_config=custom_config, **trainer_kwargs)
