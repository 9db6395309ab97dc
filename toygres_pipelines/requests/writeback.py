"""Run status written back to the CMS: requests, images and instances end terminal with a reason.

One rule for every way a run can end: whatever image or instance the run left `creating` is
failed and cleaned up (its blobs, or the objects the restore created), and the run's request
(found by the `toygres/request-id` tag, else by its recorded run id) goes `succeeded` when the
run succeeded and left nothing behind, `failed` with the reason otherwise. Runs that were not
launched for a request (the schedule, the UI) only get the image/instance part. Rows that
another writer already made terminal are left alone.

The run-status sensors below apply it as runs start and end; `reconcile.py` applies it to rows
whose run ended without any sensor seeing it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import dagster as dg
from pydantic import BaseModel

from records import (
    ImageRequest,
    ImageState,
    InstanceState,
    LogSink,
    RequestState,
    RestoreRequest,
)
from resources.blob import BlobStorageResource
from resources.cms import CMSError, CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.images.backup import fail_image
from toygres_pipelines.restores.steps import clean_up_failed_restore
from toygres_pipelines.shared.settings import SharedSettings
from toygres_pipelines.shared.tags import REQUEST_ID_TAG

FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
REASON_MAX = 4000


class Settlement(BaseModel):
    run_id: str
    images_failed: list[str] = []
    instances_failed: list[str] = []
    request_id: str | None = None
    request_state: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.images_failed or self.instances_failed or self.request_state)

    def describe(self) -> str:
        parts = [f"image {i} failed" for i in self.images_failed]
        parts += [f"instance {i} failed" for i in self.instances_failed]
        if self.request_state:
            parts.append(f"request {self.request_id} {self.request_state}")
        return f"run {self.run_id}: " + (", ".join(parts) or "nothing to write back")


def request_for_run(cms: CMSResource, run_id: str, tags: Mapping[str, str]) -> ImageRequest | RestoreRequest | None:
    request_id = tags.get(REQUEST_ID_TAG)
    if request_id:
        found = cms.requests.get(ImageRequest, request_id) or cms.requests.get(RestoreRequest, request_id)
        if found is not None:
            return found
    return cms.requests.find_by_run(run_id)


def record_run_start(cms: CMSResource, run_id: str, tags: Mapping[str, str], log: LogSink) -> str | None:
    """Record the run id of an accepted request that has none yet; returns the request id."""
    request = request_for_run(cms, run_id, tags)
    if request is None or request.state is not RequestState.accepted or request.run_id is not None:
        return None
    cms.requests.attach_run(request.id, run_id)
    log(f"request {request.id}: run {run_id} started")
    return str(request.id)


def settle_run(
    *,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    run_id: str,
    tags: Mapping[str, str],
    succeeded: bool,
    reason: str | None,
    log: LogSink,
) -> Settlement:
    """Make the rows of an ended run terminal (see the module docstring)."""
    done = Settlement(run_id=run_id)
    failed_why = (reason or f"run {run_id} failed")[:REASON_MAX]

    def leftover_why(what: str) -> str:
        """Why a row this run left creating is failed (a succeeded run should have settled it)."""
        if succeeded and not reason:
            return f"run {run_id} succeeded without marking the {what}"
        return (reason or f"run {run_id} failed")[:REASON_MAX]

    image = cms.images.find_by_run(run_id)
    if image is not None and image.state is ImageState.creating:
        failed_why = leftover_why("image ready")
        try:
            fail_image(cms, blob, image, reason=failed_why, run_id=run_id, log=log)
            done.images_failed.append(str(image.id))
        except CMSError as error:  # InvalidTransition: another writer got there first
            log(f"image {image.id}: {error}")

    instance = cms.instances.find_by_run(run_id)
    if instance is not None and instance.state is InstanceState.creating:
        failed_why = leftover_why("instance running")
        try:
            clean_up_failed_restore(cms, platform, instance, reason=failed_why, log=log)
            done.instances_failed.append(str(instance.id))
        except CMSError as error:
            log(f"instance {instance.id}: {error}")

    request = request_for_run(cms, run_id, tags)
    if request is None:
        return done
    done.request_id = str(request.id)
    if request.state is not RequestState.accepted or request.run_id not in (None, run_id):
        log(f"request {request.id} is {request.state} (run {request.run_id}): left as it is")
        return done
    ok = succeeded and not done.images_failed and not done.instances_failed
    target = RequestState.succeeded if ok else RequestState.failed
    request_reason = None if ok else failed_why
    try:
        if isinstance(request, RestoreRequest):
            restored = cms.instances.find_by_run(run_id)
            cms.requests.transition(
                RestoreRequest,
                request.id,
                target,
                reason=request_reason,
                run_id=run_id,
                instance_id=restored.id if restored else None,
                expected=RequestState.accepted,
            )
        else:
            cms.requests.transition(
                ImageRequest,
                request.id,
                target,
                reason=request_reason,
                run_id=run_id,
                expected=RequestState.accepted,
            )
        done.request_state = target.value
    except CMSError as error:
        log(f"request {request.id}: {error}")
    return done


def failure_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """The failed steps and their errors (a dg.Failure's description), else the run failure message."""
    return run_failure_message(instance, run_id) or f"run {run_id} failed"


def run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """What Dagster recorded about why the run failed (failed steps, else the run failure event), if anything."""
    reasons: list[str] = []
    records = instance.get_records_for_run(
        run_id, of_type={dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE}
    ).records
    run_message = None
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is None:
            continue
        if event.event_type is dg.DagsterEventType.STEP_FAILURE:
            data = event.step_failure_data
            text = None
            if data.user_failure_data is not None and data.user_failure_data.description:
                text = data.user_failure_data.description
            elif data.error is not None:
                text = error_text(data.error)
            reasons.append(f"step {event.step_key} failed: {text}")
        else:
            run_message = event.message or record.event_log_entry.user_message
            failure_data = event.event_specific_data
            error = getattr(failure_data, "error", None)
            if error is not None:
                run_message = f"{run_message}: {error_text(error)}" if run_message else error_text(error)
    if reasons:
        return "; ".join(reasons)[:REASON_MAX]
    return run_message[:REASON_MAX] if run_message else None


def error_text(error) -> str:
    """`PlatformError: instance ... has no secret`: the user's exception inside Dagster's wrapper."""
    while error.cause is not None and error.cls_name in _DAGSTER_WRAPPERS:
        error = error.cause
    return re.sub(r"^(?:[A-Za-z_][\w]*\.)+(\w+): ", r"\1: ", error.message.strip())


_DAGSTER_WRAPPERS = {"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError"}


def cancel_reason(run_id: str) -> str:
    return f"run {run_id} was terminated (canceled) before it finished"


# ---- the sensors ----------------------------------------------------------------------------


def run_started_sensor(settings: SharedSettings) -> dg.SensorDefinition:
    @dg.run_status_sensor(
        name="request_run_started",
        run_status=dg.DagsterRunStatus.STARTED,
        description="Records the run id of the CMS request a run was launched for.",
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def request_run_started(context: dg.RunStatusSensorContext, cms: CMSResource):
        run = context.dagster_run
        record_run_start(cms, run.run_id, run.tags, context.log.info)

    return request_run_started


def settling_sensor(
    settings: SharedSettings,
    name: str,
    status: dg.DagsterRunStatus,
    description: str,
    reason: Callable[[dg.RunStatusSensorContext], str | None],
) -> dg.SensorDefinition:
    """A run-status sensor that applies `settle_run` to every run reaching `status`."""

    @dg.run_status_sensor(
        name=name,
        run_status=status,
        description=description,
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def settle(
        context: dg.RunStatusSensorContext, cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
    ):
        run = context.dagster_run
        done = settle_run(
            cms=cms,
            blob=blob,
            platform=platform,
            run_id=run.run_id,
            tags=run.tags,
            succeeded=status is dg.DagsterRunStatus.SUCCESS,
            reason=reason(context),
            log=context.log.info,
        )
        context.log.info(done.describe())

    return settle


def writeback_sensors(settings: SharedSettings) -> list[dg.SensorDefinition]:
    """Run-status sensors: record a request's run, then settle it when the run succeeds, fails or is canceled."""
    return [
        run_started_sensor(settings),
        settling_sensor(
            settings,
            "run_succeeded_writeback",
            dg.DagsterRunStatus.SUCCESS,
            "A finished backup/restore run: its request succeeded (restore: with the new instance id).",
            reason=lambda context: None,
        ),
        settling_sensor(
            settings,
            "run_failed_writeback",
            dg.DagsterRunStatus.FAILURE,
            "A failed run: its request failed with the reason; an image or instance it left creating "
            "is failed and cleaned up.",
            reason=lambda context: failure_reason(context.instance, context.dagster_run.run_id),
        ),
        settling_sensor(
            settings,
            "run_canceled_writeback",
            dg.DagsterRunStatus.CANCELED,
            "A terminated run: like a failure, with the reason that it was canceled.",
            reason=lambda context: cancel_reason(context.dagster_run.run_id),
        ),
    ]
