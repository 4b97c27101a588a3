"""The servables of a `models.config`: loading versions, warm-up, version policies, lookup.

Like TF Serving's server_core: `resolve` answers NOT_FOUND ("Servable not found for
request: ...") for an unknown model or version and INVALID_ARGUMENT ("Unrecognized servable
version label: ...") for an unknown label; names and labels are only ever looked up in the
loaded table, never joined into a path.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from serving import config as serving_config
from serving.signatures import run_signature
from serving.status import ServingError

log = logging.getLogger("matta.serve")


@dataclasses.dataclass
class Signature:
    name: str
    function: Any
    inputs: dict[str, Any]  # name -> tf.TensorSpec
    outputs: dict[str, Any]


@dataclasses.dataclass
class LoadedVersion:
    model_name: str
    version: int
    path: str
    obj: Any
    signatures: dict[str, Signature]
    signature_def_map: Any  # tensorflow_serving.apis.get_model_metadata_pb2.SignatureDefMap
    load_seconds: float = 0.0
    warmup_requests: int = 0


def _load_version(model_name: str, version: int, path: str) -> LoadedVersion:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2

    pb_path = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb_path):
        raise FileNotFoundError(f"model {model_name!r} version {version}: no saved_model.pb in {path}")
    start = time.perf_counter()
    obj = tf.saved_model.load(path)
    signatures = {}
    for name, fn in obj.signatures.items():
        _, kwargs = fn.structured_input_signature
        signatures[name] = Signature(name, fn, dict(kwargs), dict(fn.structured_outputs))
    if "serving_default" not in signatures:
        raise ValueError(f"model {model_name!r} version {version} ({path}) has no "
                         f"serving_default signature; it has {sorted(signatures)}")
    saved = saved_model_pb2.SavedModel()
    with open(pb_path, "rb") as f:
        saved.ParseFromString(f.read())
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in saved.meta_graphs[0].signature_def.items():
        if not key.startswith("__"):
            sig_map.signature_def[key].CopyFrom(sig)
    return LoadedVersion(model_name, version, path, obj, signatures, sig_map,
                         load_seconds=time.perf_counter() - start)


class ModelRegistry:
    """The loaded servables of a `models.config`.

    `versions` (model -> version -> LoadedVersion) is replaced as a whole, never mutated,
    so a request that read it sees one consistent set while `refresh` loads new versions
    of "latest"/"all" models in the background.
    """

    def __init__(self, models: list[serving_config.ServedModel],
                 versions: dict[str, dict[int, LoadedVersion]], warmup: bool = True):
        self.models = {m.name: m for m in models}
        self.versions = versions
        self.warmup = warmup
        self._refresh_lock = threading.Lock()
        self.load_failures: dict[str, str] = {}  # "model/version" -> last load error

    def _load(self, model: serving_config.ServedModel, version: int) -> LoadedVersion:
        path = os.path.join(model.base_path, str(version))
        loaded = _load_version(model.name, version, path)
        if self.warmup:
            loaded.warmup_requests = _run_warmup(loaded)
        log.info("loaded %s version %d from %s in %.2fs (%d warm-up requests)",
                 model.name, version, path, loaded.load_seconds, loaded.warmup_requests)
        return loaded

    @classmethod
    def load(cls, models_config_path: str, warmup: bool = True) -> ModelRegistry:
        models = serving_config.parse_models_config(models_config_path)
        registry = cls(models, {}, warmup)
        versions: dict[str, dict[int, LoadedVersion]] = {}
        for model in models:
            wanted = model.versions_to_serve(serving_config.versions_on_disk(model.base_path))
            if not wanted:
                raise ValueError(f"{models_config_path}: model {model.name!r} ({model.policy} policy) "
                                 f"has no version with a saved_model.pb under {model.base_path}")
            versions[model.name] = {v: registry._load(model, v) for v in wanted}
            for label, v in model.labels.items():
                if v not in versions[model.name]:
                    raise ValueError(f"{models_config_path}: model {model.name!r} label {label!r} -> "
                                     f"version {v}, which the {model.policy} policy does not serve "
                                     f"(serving {sorted(versions[model.name])})")
        registry.versions = versions
        return registry

    def refresh(self) -> dict[str, dict[str, list[int]]]:
        """Rescans the base paths of "latest"/"all" models: loads new versions, unloads
        versions the policy no longer wants. A version that fails to load (e.g. still being
        copied) is skipped and retried on the next call; a model is never left with no
        version. Returns {model: {"loaded": [...], "unloaded": [...]}} for what changed."""
        changes: dict[str, dict[str, list[int]]] = {}
        with self._refresh_lock:
            current = self.versions
            updated = dict(current)
            for name, model in self.models.items():
                if model.policy == "specific":
                    continue
                wanted = model.versions_to_serve(serving_config.versions_on_disk(model.base_path))
                serving = dict(current[name])
                fresh = {}
                for v in wanted:
                    if v in serving:
                        continue
                    try:
                        fresh[v] = self._load(model, v)
                        self.load_failures.pop(f"{name}/{v}", None)
                    except Exception as err:  # noqa: BLE001 - keep serving what works
                        self.load_failures[f"{name}/{v}"] = str(err)
                        log.warning("could not load %s version %d (retrying on the next poll): %s",
                                    name, v, err)
                new = {v: fresh.get(v) or serving[v] for v in wanted if v in fresh or v in serving}
                if not new:  # nothing loadable: keep what is served rather than serve nothing
                    continue
                dropped = sorted(set(serving) - set(new))
                if fresh or dropped:
                    updated[name] = new
                    changes[name] = {"loaded": sorted(fresh), "unloaded": dropped}
                    for v in dropped:
                        log.info("unloaded %s version %d", name, v)
            if changes:
                self.versions = updated
        return changes

    def resolve(self, name: str, version: int | None = None,
                label: str | None = None) -> LoadedVersion:
        if not isinstance(name, str) or not serving_config.NAME_PATTERN.match(name):
            raise ServingError("INVALID_ARGUMENT", f"Invalid model name: {name!r}")
        if name not in self.models:
            what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError("NOT_FOUND", f"Servable not found for request: {what}")
        if version is not None and label is not None:
            raise ServingError("INVALID_ARGUMENT",
                               "Both version and version_label are set in model_spec")
        if label is not None:
            if not serving_config.NAME_PATTERN.match(label):
                raise ServingError("INVALID_ARGUMENT", f"Invalid version label: {label!r}")
            if label not in self.models[name].labels:
                raise ServingError("INVALID_ARGUMENT",
                                   f"Unrecognized servable version label: {label}")
            version = self.models[name].labels[label]
        available = self.versions[name]  # one snapshot: refresh swaps the dict, never edits it
        if version is None:
            version = max(available)
        if version not in available:
            raise ServingError("NOT_FOUND",
                               f"Servable not found for request: Specific({name}, {version})")
        return available[version]


def _run_warmup(loaded: LoadedVersion) -> int:
    """Replays `assets.extra/tf_serving_warmup_requests` like TF Serving does at load time."""
    import tensorflow as tf

    path = os.path.join(loaded.path, serving_config.WARMUP_RELATIVE_PATH)
    if not os.path.exists(path):
        return 0
    count = 0
    for record in serving_config.read_warmup_requests(path):
        if record.WhichOneof("log_type") != "predict_log":
            continue
        request = record.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        run_signature(loaded, request.model_spec.signature_name or "serving_default", inputs)
        count += 1
    return count
