"""Sensors that turn CMS requests into runs.

Every evaluation:
1. looks at accepted requests that have no run recorded: if Dagster has a run tagged with the
   request id, the run id is recorded; if not and the request was accepted more than
   TOYGRES_RELAUNCH_AFTER_SECONDS ago (a crash between the accept commit and the launch), its run
   request is emitted again. The run key is the request id, so the daemon never launches it twice.
2. claims pending requests (`SELECT ... FOR UPDATE SKIP LOCKED`, claims of one kind taking
   turns), validates each with the rules the launchpad uses and against the requests already
   accepted (read in the claim's transaction), rejects the invalid ones with the reason (naming
   the field) and accepts the valid ones; the claim commits, then the run requests are returned.

Two overlapping evaluations never see the same pending row (SKIP LOCKED) and never re-emit a
freshly accepted one, so each request is emitted exactly once unless its launch was lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import dagster as dg
import pydantic

from records import (
    ImageRequest,
    Instance,
    LogSink,
    RestoreRequest,
    RestoreRequestFields,
    ValidationFailed,
    validate_image_name,
)
from records.parallel import validate_parallel_jobs
from records.requests import MalformedRequest
from resources.cms import ClaimedRequests, CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.automation.jobs import (
    INSTANCE_TAG,
    KIND_TAG,
    REQUEST_ID_TAG,
    backup_image,
    backup_run_config,
)
from toygres_pipelines.automation.settings import AutomationSettings
from toygres_pipelines.forms import run_config_values
from toygres_pipelines.images.assets import IMAGE_PARTITIONS, image_partitions
from toygres_pipelines.images.backup import check_name_free, running_source
from toygres_pipelines.restores.config import check_request_fields, plan_restore
from toygres_pipelines.restores.jobs import restore_instance

DEFAULTS = AutomationSettings()


def first_run_for_request(instance: dg.DagsterInstance, request_id: object) -> dg.DagsterRun | None:
    runs = instance.get_runs(dg.RunsFilter(tags={REQUEST_ID_TAG: str(request_id)}), limit=1, ascending=True)
    return runs[0] if runs else None


class Evaluation(pydantic.BaseModel):
    """What one evaluation did (for the tick's log and for tests)."""

    run_requests: list[dg.RunRequest] = []
    new_partitions: list[str] = []
    accepted: list[str] = []
    rejected: dict[str, str] = {}
    attached: dict[str, str] = {}
    relaunched: list[str] = []

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    def summary(self, what: str) -> str:
        parts = [
            f"{len(self.accepted)} {what} request(s) accepted",
            f"{len(self.rejected)} rejected",
        ]
        if self.relaunched:
            parts.append(f"{len(self.relaunched)} re-emitted (accepted, never launched)")
        if self.attached:
            parts.append(f"{len(self.attached)} run id(s) recorded")
        return ", ".join(parts)

    def result(self, what: str) -> dg.SensorResult | dg.SkipReason:
        if not self.run_requests:
            return dg.SkipReason(self.summary(what))
        partitions = [image_partitions.build_add_request(self.new_partitions)] if self.new_partitions else []
        return dg.SensorResult(run_requests=self.run_requests, dynamic_partitions_requests=partitions)


def settle_unlaunched(
    instance: dg.DagsterInstance,
    cms: CMSResource,
    unlaunched: list,
    relaunch_after: float,
    rerequest: Callable[[Any], dg.RunRequest],
    done: Evaluation,
    log: LogSink,
) -> None:
    """Accepted requests with no run id: record the run Dagster has, or emit a lost one again."""
    for request, age in unlaunched:
        run = first_run_for_request(instance, request.id)
        if run is not None:
            cms.requests.attach_run(request.id, run.run_id)
            done.attached[str(request.id)] = run.run_id
        elif age >= relaunch_after:
            done.run_requests.append(rerequest(request))
            done.relaunched.append(str(request.id))
            log(f"request {request.id} was accepted {age:.0f} s ago and has no run: emitting it again")


def accept_or_reject(
    claim: ClaimedRequests,
    check: Callable[[Any, set[str]], Any],
    taken: set[str],
    key: Callable[[Any], str],
    run_request_for: Callable[[Any, Any], dg.RunRequest],
    done: Evaluation,
    log: LogSink,
) -> list[dg.RunRequest]:
    """Validate each claimed row: reject it with the reason, or accept it and build its run request."""
    fresh = []
    for request in claim:
        if isinstance(request, MalformedRequest):
            reason = f"malformed row: {request.malformed}"
            claim.reject(request, reason)
            done.rejected[str(request.id)] = reason
            log(f"request {request.id} rejected: {reason}")
            continue
        try:
            checked = check(request, taken)
        except (ValidationFailed, pydantic.ValidationError) as error:
            claim.reject(request, str(error))
            done.rejected[str(request.id)] = str(error)
            log(f"request {request.id} rejected: {error}")
            continue
        claim.accept(request)
        taken.add(key(request))
        fresh.append(run_request_for(request, checked))
        done.accepted.append(str(request.id))
    return fresh


# ---- image requests -------------------------------------------------------------------------


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
        tags={REQUEST_ID_TAG: str(request.id), KIND_TAG: "backup", INSTANCE_TAG: source_k8s_name},
    )


def rerequest_image(cms: CMSResource, request: ImageRequest) -> dg.RunRequest:
    source = cms.instances.find(request.source_instance)
    return image_run_request(request, source.k8s_name if source else request.source_instance)


def evaluate_image_requests(
    instance: dg.DagsterInstance, cms: CMSResource, platform: PlatformResource, **options: Any
) -> Evaluation:
    done = evaluate_requests(IMAGE_REQUESTS, instance, cms, platform, **options)
    keys = {r.partition_key for r in done.run_requests if r.partition_key is not None}
    done.new_partitions = sorted(k for k in keys if not instance.has_dynamic_partition(IMAGE_PARTITIONS, k))
    return done


# ---- restore requests -----------------------------------------------------------------------


def check_restore_request(
    cms: CMSResource, platform: PlatformResource, request: RestoreRequest, labels_taken: set[str]
) -> str:
    """The launchpad's rules; returns the id of the (ready) image to restore."""
    if not request.source_image_id:  # the column is nullable; the request record requires it
        raise ValidationFailed("source_image_id", "required: the id or name of the image to restore")
    fields = RestoreRequestFields.of(request)
    check_request_fields(fields)
    plan = plan_restore(fields, cms, platform)
    if request.dns_label in labels_taken:
        raise ValidationFailed("dns_label", f"{request.dns_label!r} is already requested by another accepted request")
    return str(plan.image_id)


def restore_run_request(request: RestoreRequest, image_id: str) -> dg.RunRequest:
    config = run_config_values(request, RestoreRequestFields, source_image_id=image_id)
    return dg.RunRequest(
        run_key=str(request.id),
        run_config={"ops": {"validate_request": {"config": config}}},
        tags={REQUEST_ID_TAG: str(request.id), KIND_TAG: "restore"},
    )


def rerequest_restore(cms: CMSResource, request: RestoreRequest) -> dg.RunRequest:
    image = cms.images.find(request.source_image_id or "")
    return restore_run_request(request, str(image.id) if image else request.source_image_id or "")


def evaluate_restore_requests(
    instance: dg.DagsterInstance, cms: CMSResource, platform: PlatformResource, **options: Any
) -> Evaluation:
    return evaluate_requests(RESTORE_REQUESTS, instance, cms, platform, **options)


# ---- one evaluation, whatever the kind ------------------------------------------------------


@dataclass(frozen=True)
class RequestKind:
    """How one kind of request is listed, claimed, checked and launched. The functions are looked
    up when called, so what a test puts in their place is what runs."""

    unlaunched: Callable[[CMSResource], list[tuple[Any, float]]]
    claim: Callable[[CMSResource, int], Any]
    key: Callable[[Any], str]
    check: Callable[[CMSResource, PlatformResource, Any, set[str]], Any]
    run_request: Callable[[Any, Any], dg.RunRequest]
    rerequest: Callable[[CMSResource, Any], dg.RunRequest]


IMAGE_REQUESTS = RequestKind(
    unlaunched=lambda cms: cms.requests.unlaunched(ImageRequest),
    claim=lambda cms, limit: cms.requests.claim(ImageRequest, limit),
    key=lambda request: request.image_name,
    check=lambda *args: check_image_request(*args),
    run_request=lambda request, source: image_run_request(request, source.k8s_name),
    rerequest=lambda cms, request: rerequest_image(cms, request),
)
RESTORE_REQUESTS = RequestKind(
    unlaunched=lambda cms: cms.requests.unlaunched(RestoreRequest),
    claim=lambda cms, limit: cms.requests.claim(RestoreRequest, limit),
    key=lambda request: request.dns_label,
    check=lambda *args: check_restore_request(*args),
    run_request=lambda request, image_id: restore_run_request(request, image_id),
    rerequest=lambda cms, request: rerequest_restore(cms, request),
)


def evaluate_requests(
    kind: RequestKind,
    instance: dg.DagsterInstance,
    cms: CMSResource,
    platform: PlatformResource,
    *,
    limit: int = DEFAULTS.request_batch,
    relaunch_after: float = DEFAULTS.relaunch_after_seconds,
    log: LogSink = lambda _: None,
) -> Evaluation:
    done = Evaluation()
    rerequest = partial(kind.rerequest, cms)
    settle_unlaunched(instance, cms, kind.unlaunched(cms), relaunch_after, rerequest, done, log)
    with kind.claim(cms, limit) as claim:
        taken = {kind.key(r) for r in claim.already_accepted() if not isinstance(r, MalformedRequest)}
        check = partial(kind.check, cms, platform)
        fresh = accept_or_reject(claim, check, taken, kind.key, kind.run_request, done, log)
    # committed: the accepted rows are durable before any run request leaves this evaluation
    done.run_requests.extend(fresh)
    return done


# ---- the sensors ----------------------------------------------------------------------------


def request_sensor(
    settings: AutomationSettings,
    name: str,
    job: Any,
    what: str,
    evaluate: Callable[..., Evaluation],
    description: str,
) -> dg.SensorDefinition:
    """A request sensor with the interval, batch and relaunch delay of `settings`."""

    @dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def request_sensor(context: dg.SensorEvaluationContext, cms: CMSResource, platform: PlatformResource):
        done = evaluate(
            context.instance,
            cms,
            platform,
            limit=settings.request_batch,
            relaunch_after=settings.relaunch_after_seconds,
            log=context.log.info,
        )
        context.log.info(done.summary(what))
        return done.result(what)

    return request_sensor


def request_sensors(settings: AutomationSettings) -> list[dg.SensorDefinition]:
    return [
        request_sensor(
            settings,
            "image_requests_sensor",
            backup_image,
            "image",
            evaluate_image_requests,
            "Pending rows of toygres_cms.image_requests become backup_image runs (run key = request id); "
            "invalid ones are rejected with the reason.",
        ),
        request_sensor(
            settings,
            "restore_requests_sensor",
            restore_instance,
            "restore",
            evaluate_restore_requests,
            "Pending rows of toygres_cms.restore_requests become restore_instance runs (run key = request id); "
            "invalid ones are rejected with the reason.",
        ),
    ]
