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
            cms.attach_request_run(request.id, run.run_id)
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


def evaluate_image_requests(
    instance: dg.DagsterInstance,
    cms: CMSResource,
    platform: PlatformResource,
    *,
    limit: int = DEFAULTS.request_batch,
    relaunch_after: float = DEFAULTS.relaunch_after_seconds,
    log: LogSink = lambda _: None,
) -> Evaluation:
    done = Evaluation()

    def rerequest(request: ImageRequest) -> dg.RunRequest:
        source = cms.find_instance(request.source_instance)
        return image_run_request(request, source.k8s_name if source else request.source_instance)

    settle_unlaunched(instance, cms, cms.list_unlaunched_image_requests(), relaunch_after, rerequest, done, log)
    with cms.claim_pending_image_requests(limit) as claim:
        names_taken = {r.image_name for r in claim.already_accepted()}
        fresh = accept_or_reject(
            claim,
            lambda request, taken: check_image_request(cms, platform, request, taken),
            names_taken,
            lambda request: request.image_name,
            lambda request, source: image_run_request(request, source.k8s_name),
            done,
            log,
        )
    # committed: the accepted rows are durable before any run request leaves this evaluation
    done.run_requests.extend(fresh)
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


def evaluate_restore_requests(
    instance: dg.DagsterInstance,
    cms: CMSResource,
    platform: PlatformResource,
    *,
    limit: int = DEFAULTS.request_batch,
    relaunch_after: float = DEFAULTS.relaunch_after_seconds,
    log: LogSink = lambda _: None,
) -> Evaluation:
    done = Evaluation()

    def rerequest(request: RestoreRequest) -> dg.RunRequest:
        image = cms.find_image(request.source_image_id or "")
        return restore_run_request(request, str(image.id) if image else request.source_image_id or "")

    settle_unlaunched(instance, cms, cms.list_unlaunched_restore_requests(), relaunch_after, rerequest, done, log)
    with cms.claim_pending_restore_requests(limit) as claim:
        labels_taken = {r.dns_label for r in claim.already_accepted()}
        fresh = accept_or_reject(
            claim,
            lambda request, taken: check_restore_request(cms, platform, request, taken),
            labels_taken,
            lambda request: request.dns_label,
            restore_run_request,
            done,
            log,
        )
    done.run_requests.extend(fresh)
    return done


# ---- the sensors ----------------------------------------------------------------------------


def request_sensors(settings: AutomationSettings) -> list[dg.SensorDefinition]:
    """The two request sensors, with the interval, batch and relaunch delay of `settings`."""
    limits = {"limit": settings.request_batch, "relaunch_after": settings.relaunch_after_seconds}

    @dg.sensor(
        name="image_requests_sensor",
        job=backup_image,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Pending rows of toygres_cms.image_requests become backup_image runs (run key = request id); "
        "invalid ones are rejected with the reason.",
    )
    def image_requests_sensor(context: dg.SensorEvaluationContext, cms: CMSResource, platform: PlatformResource):
        done = evaluate_image_requests(context.instance, cms, platform, log=context.log.info, **limits)
        context.log.info(done.summary("image"))
        return done.result("image")

    @dg.sensor(
        name="restore_requests_sensor",
        job=restore_instance,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Pending rows of toygres_cms.restore_requests become restore_instance runs (run key = request "
        "id); invalid ones are rejected with the reason.",
    )
    def restore_requests_sensor(context: dg.SensorEvaluationContext, cms: CMSResource, platform: PlatformResource):
        done = evaluate_restore_requests(context.instance, cms, platform, log=context.log.info, **limits)
        context.log.info(done.summary("restore"))
        return done.result("restore")

    return [image_requests_sensor, restore_requests_sensor]
