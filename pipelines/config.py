"""PipelineConfig: everything `create_pipeline` needs, loadable from YAML or JSON."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


def _check_types(config) -> None:
    """Scalar fields have the type their annotation names (YAML `train_steps: 1e3` or
    `batch_size: "256"` are errors, not surprises in the Trainer)."""
    expected = {"int": int, "float": (int, float), "str": str, "bool": bool}
    for field in dataclasses.fields(config):
        want = expected.get(str(field.type))
        value = getattr(config, field.name)
        if want is None:
            continue
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):
            raise ValueError(f"pipeline config: {field.name} must be {field.type}, got {value!r}")


@dataclasses.dataclass
class PipelineConfig:
    """One MatTA TFX pipeline. Relative paths resolve against the config file's folder.

    data_root: the click-log input base; `input_pattern` (may contain {SPAN}/{VERSION})
    and `teacher_pattern` (Parquet `impression_id`, `teacher_logit`) are relative to it.
    """

    data_root: str
    pipeline_root: str
    name: str = "matta"
    log_schema: Any = "criteo"  # preset name, YAML path, or mapping
    input_pattern: str = "*"
    teacher_pattern: str | None = None
    split: dict | None = None
    max_quarantine_rate: float = 0.05
    metadata_path: str | None = None  # default <pipeline_root>/metadata.sqlite
    serving_dir: str | None = None  # default <pipeline_root>/serving
    model_name: str = "matta_ranker"
    arms: tuple[str, ...] = ("student", "mix_1", "ta")
    mixnmatch: int = 1
    ranker: dict = dataclasses.field(default_factory=dict)  # RankerConfig fields minus features
    train_steps: int = 500
    eval_steps: int = 50
    batch_size: int = 256
    epochs: int = 1
    optimizer: str = "shampoo"  # shampoo | adam
    learning_rate: float = 3e-3
    oov_buckets: int = 2
    vocab_top_k: int | None = 10_000
    min_auc: float = 0.5  # blessing threshold for each arm
    beam_args: list[str] = dataclasses.field(default_factory=list)
    direct_running_mode: str = "multi_processing"  # DirectRunner: multi_processing | in_memory
    direct_num_workers: int = 0  # 0 = all cores (DirectRunner multi_processing)
    enable_cache: bool = True
    # A Trainer model directory (the `model` artifact URI) to warm-start from instead of the
    # previous span's model; the only warm start compiled for Kubeflow V2 / Vertex.
    warm_start_uri: str | None = None
    # How the Trainer distributes training: matta_tf.distribute.DistributionConfig fields,
    # {strategy: none | mirrored | multi_worker_mirrored | parameter_server, ...}; the
    # cluster comes from TF_CONFIG at run time.
    distribution: dict = dataclasses.field(default_factory=lambda: {"strategy": "none"})
    # The Vertex AI Training job of the Trainer under `compile --runner vertex`: project,
    # region, image, machine/accelerator and the worker pools the strategy needs
    # (pipelines.vertex_training); other runners run the Trainer locally and ignore it.
    vertex_training: dict | None = None
    # Budget-aware students (components.student_budget): one export per budget, e.g.
    # [{max_madds: 60000}, {max_p99_ms: 2, batch: 64, label: p99_2ms}], chosen on the
    # `budget_search.selection_split` split (carve it from train with `split`).
    budgets: list = dataclasses.field(default_factory=list)
    budget_search: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from components.trainer_config import check_optimizer, ranker_dict
        from matta_tf.distribute import DistributionConfig

        self.arms = tuple(self.arms)
        if self.distribution is None:
            self.distribution = {"strategy": "none"}
        # Validated here, so a typo fails on load (`pipeline compile` / `run`), not in the
        # Trainer after ExampleGen and Transform ran.
        ranker_dict(self.ranker, where="pipeline config: ranker")
        check_optimizer(self.optimizer, where="pipeline config: optimizer")
        dist = DistributionConfig.from_dict(self.distribution, where="pipeline config: distribution")
        if self.vertex_training is not None:
            from pipelines.vertex_training import VertexTrainingConfig

            VertexTrainingConfig.from_dict(self.vertex_training, dist.strategy,
                                           where="pipeline config: vertex_training")
        _check_types(self)
        self.budget_labels()  # validates budgets and budget_search
        if self.direct_running_mode not in ("multi_processing", "multi_threading", "in_memory"):
            raise ValueError(f"pipeline config: direct_running_mode {self.direct_running_mode!r} is "
                             "not multi_processing, multi_threading or in_memory")
        if self.metadata_path is None:
            self.metadata_path = os.path.join(self.pipeline_root, "metadata.sqlite")
        if self.serving_dir is None:
            self.serving_dir = os.path.join(self.pipeline_root, "serving")

    def budget_labels(self) -> list[str]:
        """The version labels of the budget picks (validating `budgets`, `budget_search`)."""
        from components.student_budget import BudgetSearch
        from matta_tf.frontier import Budget

        if not isinstance(self.budgets, list):
            raise ValueError(f"pipeline config: budgets must be a list, got {self.budgets!r}")
        search = BudgetSearch.from_dict(self.budget_search or {}, where="pipeline config: budget_search")
        budgets = [Budget.from_dict(b, where=f"pipeline config: budgets[{i}]") for i, b in enumerate(self.budgets)]
        for i, b in enumerate(budgets):
            if b.kind == "p99_ms" and b.batch != search.latency_batch:
                raise ValueError(f"pipeline config: budgets[{i}] is a p99 at batch {b.batch}, but the search "
                                 f"times candidates at budget_search.latency_batch {search.latency_batch}; "
                                 "make them equal")
        labels = [b.label for b in budgets]
        clash = sorted({x for x in labels if labels.count(x) > 1} | (set(labels) & set(self.arms)))
        if clash:
            raise ValueError(f"pipeline config: budget labels {clash} repeat or equal an arm; give each "
                             "budget a distinct label")
        if labels:
            names = list((self.split or {}).get("names", ["train", "eval"]))
            if search.selection_split not in names:
                raise ValueError(
                    f"pipeline config: budgets pick students on the {search.selection_split!r} split, "
                    f"but split.names is {names}; carve it from train, e.g. split: {{names: [train, "
                    f"{search.selection_split}, eval], buckets: [8, 1, 2]}}")
            if search.selection_split in ("train", "eval"):
                raise ValueError(f"pipeline config: budget_search.selection_split {search.selection_split!r}: "
                                 "use a split carved from train that the Trainer does not fit and the "
                                 "Evaluator does not report")
        return labels

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | None = None) -> PipelineConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"pipeline config: unknown keys {sorted(unknown)}")
        data = dict(data)
        if base_dir:
            for key in ("data_root", "pipeline_root", "metadata_path", "serving_dir"):
                if data.get(key) and "://" not in data[key] and not os.path.isabs(data[key]):
                    data[key] = os.path.join(base_dir, data[key])
            ls = data.get("log_schema")
            if isinstance(ls, str) and ls.endswith((".yaml", ".yml", ".json")) and not os.path.isabs(ls):
                data["log_schema"] = os.path.join(base_dir, ls)
        return cls(**data)

    @classmethod
    def from_file(cls, path: str) -> PipelineConfig:
        import yaml

        if not os.path.exists(path):
            raise FileNotFoundError(f"pipeline config {path} does not exist")
        with open(path) as f:
            data = yaml.safe_load(f) if path.endswith((".yaml", ".yml")) else json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"pipeline config {path}: expected a mapping")
        return cls.from_dict(data, os.path.dirname(os.path.abspath(path)))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d

    def beam_pipeline_args(self) -> list[str]:
        args = list(self.beam_args)
        if not any(a.startswith("--runner") for a in args):
            args = [f"--direct_running_mode={self.direct_running_mode}",
                    f"--direct_num_workers={self.direct_num_workers}"] + args
        return args
