"""`image_requests_sensor`: pending rows of toygres_cms.image_requests become backup_image runs, by
the request-claim machinery every request sensor shares (shared/request_claims.py)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from records import ImageRequest, Instance, ValidationFailed, validate_image_name
from records.parallel import validate_parallel_jobs
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.backup import check_name_free, running_source
from toygres_pipelines.images.jobs import backup_image, backup_run_config
from toygres_pipelines.shared.request_claims import (
    Evaluation,
    LaunchedRuns,
    RequestKind,
    evaluate_requests,
    launched_runs,
    request_sensor,
)
from toygres_pipelines.shared.settings import SharedSettings
from toygres_pipelines.shared.tags import BACKUP_KIND, INSTANCE_TAG, KIND_TAG, REQUEST_ID_TAG


def check_image_request(
    cms: CMSResource, platform: PlatformResource, request: ImageRequest, names_taken: set[str]
) -> Instance:
    """The asset's rules, checked before anything runs; returns the running source instance."""
    validate_image_name(request.image_name, field="image_name")
    validate_parallel_jobs(request.parallel_jobs)
    source = running_source(cms, platform, request.source_instance)
    check_name_free(cms, request.image_name, field="image_name")
    if request.image_name in names_taken:
        raise ValidationFailed("image_name", f"{request.image_name!r} is already requested by another accepted request")
    return source


def image_run_request(request: ImageRequest, source_k8s_name: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=str(request.id),
        partition_key=request.image_name,
        run_config=backup_run_config(request),
        tags={REQUEST_ID_TAG: str(request.id), KIND_TAG: BACKUP_KIND, INSTANCE_TAG: source_k8s_name},
    )


def rerequest_image(cms: CMSResource, request: ImageRequest) -> dg.RunRequest:
    source = cms.instances.find(request.source_instance)
    return image_run_request(request, source.k8s_name if source else request.source_instance)


def evaluate_image_requests(
    dagster: dg.DagsterInstance | LaunchedRuns, cms: CMSResource, platform: PlatformResource, **options: Any
) -> Evaluation:
    """One evaluation of the image requests, the sensor's and the request listener's."""
    runs = launched_runs(dagster)
    done = evaluate_requests(IMAGE_REQUESTS, runs, cms, platform, **options)
    keys = {r.partition_key for r in done.run_requests if r.partition_key is not None}
    done.new_partitions = sorted(k for k in keys if not runs.has_image_partition(k))
    return done


IMAGE_REQUESTS = RequestKind(
    record=ImageRequest,
    key=lambda request: request.image_name,
    check=lambda *args: check_image_request(*args),
    run_request=lambda request, source: image_run_request(request, source.k8s_name),
    rerequest=lambda cms, request: rerequest_image(cms, request),
)


def image_requests_sensor(settings: SharedSettings) -> dg.SensorDefinition:
    return request_sensor(
        settings,
        "image_requests_sensor",
        backup_image,
        "image",
        evaluate_image_requests,
        "Pending rows of toygres_cms.image_requests become backup_image runs (run key = request id); "
        "invalid ones are rejected with the reason.",
    )
