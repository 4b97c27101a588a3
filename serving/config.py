"""TensorFlow Serving deployment artifacts: `models.config`, batching parameters, warm-up.

Layout written by `write_deployment` (see docs/CONTRACTS.md, "Serving layout"):

    <base>/models.config                      ModelServerConfig text proto
    <base>/batching_parameters.txt            BatchingParameters text proto
    <base>/<model_name>/<version>/saved_model.pb (+ variables/, assets/)
    <base>/<model_name>/<version>/assets.extra/tf_serving_warmup_requests

Every arm (e.g. `student`, `mid`, `ta`) is one version of one model, pinned with a
`specific` version policy and addressed by a version label, so clients say
`/v1/models/ranker/labels/student:predict` and the label can later be re-pointed.

The generated files are validated by parsing them back with the real protos:
`tensorflow_serving.config.model_server_config_pb2.ModelServerConfig` and
`tensorflow_serving.apis.prediction_log_pb2.PredictionLog`. The pip package
`tensorflow-serving-api` does not ship `session_bundle_config_pb2`, so the
`BatchingParameters` message is rebuilt here from its field numbers in
tensorflow_serving/servables/tensorflow/session_bundle_config.proto and the batching
file is parsed against that descriptor (unknown fields or wrong types fail).

The real server would serve the result with (see `tensorflow_model_server_command`):

    tensorflow_model_server --port=8500 --rest_api_port=8501 \
        --model_config_file=<base>/models.config \
        --enable_batching --batching_parameters_file=<base>/batching_parameters.txt \
        --allow_version_labels_for_unavailable_models=false
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import Iterable, Mapping, Sequence

# A model name or version label: what TF Serving accepts and nothing that could walk a path.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
WARMUP_RELATIVE_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODELS_CONFIG_FILENAME = "models.config"
BATCHING_FILENAME = "batching_parameters.txt"


def validate_name(kind: str, value: str) -> str:
    """Returns `value` if it is a safe model name / version label, else raises ValueError."""
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: must match {NAME_PATTERN.pattern} "
            "(letters, digits, '_' or '-', starting with a letter)"
        )
    return value


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """TF Serving `BatchingParameters` (session_bundle_config.proto).

    `allowed_batch_sizes` must increase and end at `max_batch_size` (TF Serving's rule).
    """

    max_batch_size: int = 512
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = (1, 8, 64, 512)
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                      "num_batch_threads"):
            if int(getattr(self, field)) < (0 if field == "batch_timeout_micros" else 1):
                raise ValueError(f"BatchingConfig.{field}={getattr(self, field)} is out of range")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes {sizes} must be strictly increasing and >= 1")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(
                    f"allowed_batch_sizes {sizes} must end with max_batch_size={self.max_batch_size}"
                )

    def to_text(self) -> str:
        lines = [
            f"max_batch_size {{ value: {int(self.max_batch_size)} }}",
            f"batch_timeout_micros {{ value: {int(self.batch_timeout_micros)} }}",
            f"max_enqueued_batches {{ value: {int(self.max_enqueued_batches)} }}",
            f"num_batch_threads {{ value: {int(self.num_batch_threads)} }}",
        ]
        lines += [f"allowed_batch_sizes: {int(s)}" for s in self.allowed_batch_sizes]
        lines.append(f"pad_variable_length_inputs: {str(bool(self.pad_variable_length_inputs)).lower()}")
        return "\n".join(lines) + "\n"


_BATCHING_CLASS = None


def batching_parameters_message_class():
    """The `tensorflow.serving.BatchingParameters` message class, built from its descriptor."""
    global _BATCHING_CLASS
    if _BATCHING_CLASS is not None:
        return _BATCHING_CLASS
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="matta_session_bundle_config_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    msg = fdp.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ]:
        msg.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=type_name)
    msg.field.add(name="allowed_batch_sizes", number=6, type=F.TYPE_INT64,
                  label=F.LABEL_REPEATED)
    msg.field.add(name="pad_variable_length_inputs", number=7, type=F.TYPE_BOOL,
                  label=F.LABEL_OPTIONAL)
    pool.Add(fdp)
    descriptor = pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    _BATCHING_CLASS = message_factory.GetMessageClass(descriptor)
    return _BATCHING_CLASS


def parse_batching_parameters(path: str):
    """Parses a batching parameters text file; raises ValueError naming the file on error."""
    from google.protobuf import text_format

    cls = batching_parameters_message_class()
    with open(path) as f:
        text = f.read()
    try:
        msg = text_format.Parse(text, cls())
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not a valid BatchingParameters text proto: {err}") from err
    sizes = list(msg.allowed_batch_sizes)
    if sizes and sizes[-1] != msg.max_batch_size.value:
        raise ValueError(f"{path}: last allowed_batch_sizes {sizes[-1]} != max_batch_size "
                         f"{msg.max_batch_size.value}")
    return msg


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One model in `models.config`: its version policy and the label pointing at each version.

    `policy` is TF Serving's `model_version_policy`: "specific" serves exactly `versions`
    (plus labelled ones); "latest" serves the `num_versions` highest versions found under
    `base_path` (TF Serving's default when no policy is given); "all" serves every version
    found there. With "latest"/"all", new versions are picked up by polling the file system.
    """

    name: str
    base_path: str
    labels: Mapping[str, int]  # version label -> version number
    versions: tuple[int, ...] = ()
    policy: str = "specific"
    num_versions: int = 1

    def all_versions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.versions) | set(self.labels.values())))

    def versions_to_serve(self, on_disk: Sequence[int]) -> tuple[int, ...]:
        """The versions the policy wants, given the complete versions under base_path."""
        if self.policy == "specific":
            return self.all_versions()
        found = sorted(set(on_disk))
        return tuple(found[-self.num_versions:] if self.policy == "latest" else found)


def versions_on_disk(base_path: str) -> list[int]:
    """Version directories under `base_path` that hold a SavedModel (`<n>/saved_model.pb`)."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(d) for d in os.listdir(base_path)
                  if d.isdigit() and int(d) > 0
                  and os.path.isfile(os.path.join(base_path, d, "saved_model.pb")))


def build_model_server_config(models: Sequence[ServedModel]):
    """Builds a `ModelServerConfig` proto (specific version policy + version labels)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    seen = set()
    for model in models:
        validate_name("model name", model.name)
        if model.name in seen:
            raise ValueError(f"model {model.name!r} appears twice in models.config")
        seen.add(model.name)
        entry = config.model_config_list.config.add()
        entry.name = model.name
        entry.base_path = model.base_path
        entry.model_platform = "tensorflow"
        versions = model.all_versions()
        if not versions:
            raise ValueError(f"model {model.name!r} has no versions")
        for v in versions:
            if int(v) < 1:
                raise ValueError(f"model {model.name!r}: version {v} must be a positive integer")
        entry.model_version_policy.specific.versions.extend(int(v) for v in versions)
        for label, version in sorted(model.labels.items()):
            validate_name("version label", label)
            entry.version_labels[label] = int(version)
    return config


def model_server_config_text(models: Sequence[ServedModel]) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(build_model_server_config(models))


def parse_models_config(path: str) -> list[ServedModel]:
    """Parses and checks a `models.config`; relative base paths resolve against its folder.

    Raises ValueError naming the file and the problem (bad proto, unsafe name, a label
    pointing at a version that the version policy does not load, ...).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(path) as f:
        text = f.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise ValueError(f"{path}: not a valid ModelServerConfig text proto: {err}") from err
    if not config.HasField("model_config_list"):
        raise ValueError(f"{path}: model_config_list is missing")
    root = os.path.dirname(os.path.abspath(path))
    out = []
    for i, entry in enumerate(config.model_config_list.config):
        where = f"{path}: model_config_list.config[{i}]"
        try:
            validate_name("model name", entry.name)
            for label in entry.version_labels:
                validate_name("version label", label)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{where}: model_platform {entry.model_platform!r} is not 'tensorflow'")
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        versions: tuple[int, ...] = ()
        num_versions = 1
        if policy == "specific":
            versions = tuple(int(v) for v in entry.model_version_policy.specific.versions)
            for label, version in entry.version_labels.items():
                if version not in versions:
                    raise ValueError(f"{where} ({entry.name}): label {label!r} -> version {version} "
                                     f"which is not in the specific versions {list(versions)}")
        elif policy == "latest":
            # As in TF Serving, an unset num_versions means 1.
            num_versions = int(entry.model_version_policy.latest.num_versions) or 1
        elif policy != "all":
            raise ValueError(f"{where} ({entry.name}): unknown version policy {policy!r}")
        base = entry.base_path if os.path.isabs(entry.base_path) else os.path.join(root, entry.base_path)
        out.append(ServedModel(name=entry.name, base_path=os.path.normpath(base),
                               labels=dict(entry.version_labels), versions=versions,
                               policy=policy, num_versions=num_versions))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate model names {names}")
    return out


def make_warmup_logs(model_name: str, serialized_examples: Sequence[bytes],
                     batch_sizes: Iterable[int] = (1, 8), signature_name: str = "serving_default"):
    """PredictionLog records that call `signature_name` with the given example batches."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    examples = list(serialized_examples)
    if not examples:
        raise ValueError("warm-up needs at least one serialized example")
    logs = []
    for size in batch_sizes:
        batch = [examples[i % len(examples)] for i in range(int(size))]
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature_name
        request.inputs["examples"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(version_dir: str, logs) -> str:
    """Writes PredictionLog TFRecords to `<version_dir>/assets.extra/tf_serving_warmup_requests`."""
    import tensorflow as tf

    path = os.path.join(version_dir, WARMUP_RELATIVE_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str):
    """Parses a warm-up file; raises ValueError naming the record that is not a PredictionLog."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for i, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except DecodeError as err:
            raise ValueError(f"{path}: record {i} is not a PredictionLog: {err}") from err
        if log.WhichOneof("log_type") is None:
            raise ValueError(f"{path}: record {i} has no log_type set")
        logs.append(log)
    return logs


@dataclasses.dataclass
class Deployment:
    base_dir: str
    model_name: str
    models_config_path: str
    batching_parameters_path: str
    version_dirs: dict[str, str]  # label -> version dir
    labels: dict[str, int]  # label -> version

    def command(self, grpc_port: int = 8500, rest_port: int = 8501) -> str:
        return tensorflow_model_server_command(self.models_config_path,
                                               self.batching_parameters_path, grpc_port, rest_port)


def write_deployment(base_dir: str, model_name: str, arms: Mapping[str, str],
                     warmup_examples: Sequence[bytes] = (),
                     batching: BatchingConfig | None = None,
                     warmup_batch_sizes: Sequence[int] = (1, 8)) -> Deployment:
    """Copies one SavedModel per arm into the serving layout and writes all configs.

    Args:
      base_dir: output folder (created).
      model_name: the served model name, e.g. "ranker".
      arms: version label -> exported SavedModel directory, in version order
        (the first arm becomes version 1, ...).
      warmup_examples: serialized tf.Examples used to build the warm-up requests (none:
        no warm-up file is written).
      batching: batching parameters (default `BatchingConfig()`).
    """
    validate_name("model name", model_name)
    if not arms:
        raise ValueError("write_deployment needs at least one arm")
    base_dir = os.path.abspath(base_dir)
    model_dir = os.path.join(base_dir, model_name)
    os.makedirs(model_dir, exist_ok=True)
    labels: dict[str, int] = {}
    version_dirs: dict[str, str] = {}
    for version, (label, source) in enumerate(arms.items(), start=1):
        validate_name("version label", label)
        if not os.path.isfile(os.path.join(source, "saved_model.pb")):
            raise FileNotFoundError(f"arm {label!r}: no saved_model.pb in {source}")
        dest = os.path.join(model_dir, str(version))
        if os.path.exists(dest):
            shutil.rmtree(dest)
        shutil.copytree(source, dest)
        if warmup_examples:
            write_warmup_requests(dest, make_warmup_logs(model_name, warmup_examples,
                                                         warmup_batch_sizes))
        labels[label] = version
        version_dirs[label] = dest
    config_path = os.path.join(base_dir, MODELS_CONFIG_FILENAME)
    with open(config_path, "w") as f:
        f.write(model_server_config_text([ServedModel(model_name, model_dir, labels)]))
    batching_path = os.path.join(base_dir, BATCHING_FILENAME)
    with open(batching_path, "w") as f:
        f.write((batching or BatchingConfig()).to_text())
    # Validate what was written by parsing it back with the serving protos.
    parse_models_config(config_path)
    parse_batching_parameters(batching_path)
    for dest in version_dirs.values():
        if warmup_examples:
            read_warmup_requests(os.path.join(dest, WARMUP_RELATIVE_PATH))
    return Deployment(base_dir, model_name, config_path, batching_path, version_dirs, labels)


def tensorflow_model_server_command(models_config_path: str, batching_parameters_path: str,
                                    grpc_port: int = 8500, rest_port: int = 8501) -> str:
    """The `tensorflow_model_server` command line that serves a deployment."""
    return (
        "tensorflow_model_server"
        f" --port={grpc_port} --rest_api_port={rest_port}"
        f" --model_config_file={models_config_path}"
        " --enable_batching"
        f" --batching_parameters_file={batching_parameters_path}"
        " --allow_version_labels_for_unavailable_models=false"
    )
