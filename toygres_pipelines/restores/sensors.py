"""`restore_requests_sensor`: pending rows of toygres_cms.restore_requests become restore_instance
runs, by the request-claim machinery every request sensor shares (shared/request_claims.py)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from records import RestoreRequest, RestoreRequestFields, ValidationFailed
from records.requests import require_source_image
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.restores.config import check_request_fields, plan_restore
from toygres_pipelines.restores.jobs import restore_instance, restore_run_config
from toygres_pipelines.shared.request_claims import (
    Evaluation,
    LaunchedRuns,
    RequestKind,
    evaluate_requests,
    request_sensor,
)
from toygres_pipelines.shared.settings import SharedSettings
from toygres_pipelines.shared.tags import KIND_TAG, REQUEST_ID_TAG, RESTORE_KIND


def check_restore_request(
    cms: CMSResource, platform: PlatformResource, request: RestoreRequest, labels_taken: set[str]
) -> str:
    """The launchpad's rules; returns the id of the (ready) image to restore."""
    require_source_image(request.source_image_id)  # the column is nullable; the request record requires it
    fields = RestoreRequestFields.of(request)
    check_request_fields(fields)
    plan = plan_restore(fields, cms, platform)
    if request.dns_label in labels_taken:
        raise ValidationFailed("dns_label", f"{request.dns_label!r} is already requested by another accepted request")
    return str(plan.image_id)


def restore_run_request(request: RestoreRequest, image_id: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=str(request.id),
        run_config=restore_run_config(request, source_image_id=image_id),
        tags={REQUEST_ID_TAG: str(request.id), KIND_TAG: RESTORE_KIND},
    )


def rerequest_restore(cms: CMSResource, request: RestoreRequest) -> dg.RunRequest:
    image = cms.images.find(request.source_image_id or "")
    return restore_run_request(request, str(image.id) if image else request.source_image_id or "")


def evaluate_restore_requests(
    dagster: dg.DagsterInstance | LaunchedRuns, cms: CMSResource, platform: PlatformResource, **options: Any
) -> Evaluation:
    """One evaluation of the restore requests, the sensor's and the request listener's."""
    return evaluate_requests(RESTORE_REQUESTS, dagster, cms, platform, **options)


RESTORE_REQUESTS = RequestKind(
    record=RestoreRequest,
    key=lambda request: request.dns_label,
    check=lambda *args: check_restore_request(*args),
    run_request=lambda request, image_id: restore_run_request(request, image_id),
    rerequest=lambda cms, request: rerequest_restore(cms, request),
)


def restore_requests_sensor(settings: SharedSettings) -> dg.SensorDefinition:
    return request_sensor(
        settings,
        "restore_requests_sensor",
        restore_instance,
        "restore",
        evaluate_restore_requests,
        "Pending rows of toygres_cms.restore_requests become restore_instance runs (run key = request id); "
        "invalid ones are rejected with the reason.",
    )
