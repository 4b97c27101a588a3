"""TF Serving's gRPC services on top of a `ModelServer`, with the official generated servicers.

PredictionService.Predict and GetModelMetadata (signature_def), ModelService.GetModelStatus;
Classify/Regress/MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED.
Every failure is a status with a message: ServingError's code, else INTERNAL (never UNKNOWN).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from serving.signatures import tensor_proto
from serving.status import ServingError

if TYPE_CHECKING:
    from serving.server import ModelServer

log = logging.getLogger("matta.serve")


def _grpc_servicers():
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    return (prediction_service_pb2_grpc.PredictionServiceServicer,
            model_service_pb2_grpc.ModelServiceServicer)


def _abort(context, err: ServingError):
    import grpc

    context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN), err.message)


def spec_version_label(model_spec):
    choice = model_spec.WhichOneof("version_choice")
    version = model_spec.version.value if choice == "version" else None
    label = model_spec.version_label if choice == "version_label" else None
    return version, label


_PredictionBase, _ModelBase = _grpc_servicers()


class PredictionServicer(_PredictionBase):
    """`tensorflow.serving.PredictionService` on top of `ModelServer`."""

    def __init__(self, core: ModelServer):
        self.core = core

    def Predict(self, request, context):
        from tensorflow_serving.apis import predict_pb2

        try:
            loaded, signature_name, outputs = self.core.predict_request(request)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature_name
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tensor_proto(v))
            return response
        except ServingError as err:
            error = err
        except Exception as err:  # noqa: BLE001 - INTERNAL with a message, not UNKNOWN
            log.exception("gRPC Predict failed")
            error = ServingError("INTERNAL", f"{type(err).__name__}: {err}")
        self.core.stats["errors"] += 1
        _abort(context, error)

    def GetModelMetadata(self, request, context):
        try:
            version, label = spec_version_label(request.model_spec)
            return self.core.model_metadata(request.model_spec.name, version, label,
                                            tuple(request.metadata_field))
        except ServingError as err:
            _abort(context, err)


class ModelStatusServicer(_ModelBase):
    """`tensorflow.serving.ModelService.GetModelStatus` (HandleReloadConfigRequest: UNIMPLEMENTED)."""

    def __init__(self, core: ModelServer):
        self.core = core

    def GetModelStatus(self, request, context):
        try:
            version, label = spec_version_label(request.model_spec)
            return self.core.model_status(request.model_spec.name, version, label)
        except ServingError as err:
            _abort(context, err)
