"""Resolver strategy: the latest MatTA Trainer model trained on an *earlier* span.

Given `examples` (this run's ExampleGen output) and `model` (every Model artifact of the
pipeline), it returns the newest Trainer model whose training data (found by walking the
MLMD lineage upstream to an Examples artifact carrying a `span`) has a span below the
current one. So re-running a span resolves the same base model as before (or none) and
the Trainer is a cache hit; a new span warm-starts from the previous span's TA.
"""
from __future__ import annotations

import os

from tfx.dsl.components.common import resolver

TRAINER_MARKER = os.path.join("Format-Serving", "ranker_config.json")


def _span(artifact) -> int | None:
    mlmd = artifact.mlmd_artifact
    for props in (mlmd.custom_properties, mlmd.properties):
        if "span" in props:
            return int(props["span"].int_value)
    return None


def _upstream_span(store, artifact_id: int, max_depth: int = 3) -> int | None:
    from ml_metadata.proto import metadata_store_pb2

    frontier, seen = [artifact_id], {artifact_id}
    for _ in range(max_depth):
        events = store.get_events_by_artifact_ids(frontier)
        exec_ids = {e.execution_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT}
        if not exec_ids:
            return None
        inputs = [e.artifact_id for e in store.get_events_by_execution_ids(list(exec_ids))
                  if e.type == metadata_store_pb2.Event.INPUT and e.artifact_id not in seen]
        spans = []
        for art in store.get_artifacts_by_id(inputs):
            for props in (art.custom_properties, art.properties):
                if "span" in props:
                    spans.append(int(props["span"].int_value))
                    break
        if spans:
            return max(spans)
        seen.update(inputs)
        frontier = inputs
    return None


class PreviousSpanModelStrategy(resolver.ResolverStrategy):
    def resolve_artifacts(self, store, input_dict):
        import tensorflow as tf

        examples = input_dict.get("examples") or []
        current = max((s for s in (_span(e) for e in examples) if s is not None), default=None)
        candidates = []
        for model in sorted(input_dict.get("model") or [], key=lambda a: a.id, reverse=True):
            if not tf.io.gfile.exists(os.path.join(model.uri, TRAINER_MARKER)):
                continue  # an extracted student, not a Trainer model
            span = _upstream_span(store, model.id)
            if current is not None and span is not None and span < current:
                candidates.append(model)
                break
        return {"examples": list(examples), "model": candidates}
