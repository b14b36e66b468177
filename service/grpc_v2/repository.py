"""The statistics and repository extensions over gRPC (Triton's ``ModelStatistics``,
``RepositoryIndex``, ``RepositoryModelLoad`` and ``RepositoryModelUnload``), answering what the
HTTP routes answer (``service.api.kserve_stats``, ``service.model_control``)."""

from __future__ import annotations

from typing import Any

from service.api.kserve_stats import statistics
from service.errors import BadRequest
from service.grpc_v2 import grpc_predict_v2_pb2 as pb
from service.metrics import Metrics
from service.model_control import ModelControl
from service.registry import ModelRegistry


def model_statistics(
    registry: ModelRegistry, metrics: Metrics, request: pb.ModelStatisticsRequest
) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for entry in statistics(registry, metrics, request.name, request.version or None):
        stats = response.model_stats.add(
            name=entry["name"],
            version=entry["version"],
            last_inference=entry["last_inference"],
            inference_count=entry["inference_count"],
            execution_count=entry["execution_count"],
        )
        for key, value in entry["inference_stats"].items():
            getattr(stats.inference_stats, key).CopyFrom(_duration(value))
        for batch in entry["batch_stats"]:
            stats.batch_stats.add(
                batch_size=batch["batch_size"], compute_infer=_duration(batch["compute_infer"])
            )
    return response


def _duration(value: dict[str, Any]) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value["count"], ns=value["ns"])


def _one_repository(repository_name: str) -> None:
    if repository_name:  # the server has one repository, which has no name to give
        raise BadRequest("this server has one model repository; leave repository_name empty")


def repository_index(
    control: ModelControl, request: pb.RepositoryIndexRequest
) -> pb.RepositoryIndexResponse:
    _one_repository(request.repository_name)
    response = pb.RepositoryIndexResponse()
    for entry in control.index(ready_only=request.ready):
        response.models.add(
            name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
        )
    return response


async def load(
    control: ModelControl, request: pb.RepositoryModelLoadRequest
) -> pb.RepositoryModelLoadResponse:
    control.check_allowed()
    _one_repository(request.repository_name)
    if request.parameters:
        raise BadRequest("load parameters (config, files) are not supported")
    await control.load(request.model_name)
    return pb.RepositoryModelLoadResponse()


async def unload(
    control: ModelControl, request: pb.RepositoryModelUnloadRequest
) -> pb.RepositoryModelUnloadResponse:
    control.check_allowed()
    _one_repository(request.repository_name)
    # Triton's one unload parameter, unload_dependents, has nothing to act on here.
    await control.unload(request.model_name)
    return pb.RepositoryModelUnloadResponse()
