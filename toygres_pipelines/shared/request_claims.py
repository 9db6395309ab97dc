"""The request-claim machinery the request sensors share (images/sensors.py: image requests,
restores/sensors.py: restore requests): CMS requests turned into runs.

Every evaluation:
1. looks at accepted requests that have no run recorded: if Dagster has a run tagged with the
   request id, the run id is recorded; if not and the request was accepted more than
   TOYGRES_RELAUNCH_AFTER_SECONDS ago (a crash between the accept commit and the launch), it is
   checked again with the claim's rules and its run request is emitted again; one the rules refuse
   now (its source stopped, its image deleted meanwhile) is failed with the reason, since the run
   coordinator would refuse every relaunch of it. The run key is the request id, so the daemon
   never launches it twice.
2. claims pending requests (`SELECT ... FOR UPDATE SKIP LOCKED`, claims of one kind taking
   turns), validates each with the rules the launchpad uses and against the requests already
   accepted (read in the claim's transaction), rejects the invalid ones with the reason (naming
   the field) and accepts the valid ones; the claim commits, then the run requests are returned.

Two overlapping evaluations never see the same pending row (SKIP LOCKED) and never re-emit a
freshly accepted one, so each request is emitted exactly once unless its launch was lost.

Two callers run an evaluation: the request sensors (the sweep; the daemon launches their run
requests) and the request listener (requests/listener.py: at once on the CMS's notification; it
launches them through the webserver). They differ only in how they ask Dagster what exists
(`LaunchedRuns`: the daemon's instance, or the webserver's API). A run emitted twice (the sweep's
relaunch racing the listener's launch) is refused at submit by the run coordinator, which queues
one run per request id.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import dagster as dg
import pydantic

from records import LogSink, RequestState, ValidationFailed
from records.requests import MalformedRequest
from resources.cms import ClaimedRequests, CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS, image_partitions
from toygres_pipelines.shared.settings import SharedSettings
from toygres_pipelines.shared.tags import REQUEST_ID_TAG

DEFAULTS = SharedSettings()


# A run of a request counts as its launch once submitted: one left NOT_STARTED (its launcher died
# between creating and submitting it) never runs, and the run coordinator counts it as no launch.
LAUNCHED_STATUSES = [status for status in dg.DagsterRunStatus if status is not dg.DagsterRunStatus.NOT_STARTED]


def first_run_for_request(instance: dg.DagsterInstance, request_id: object) -> dg.DagsterRun | None:
    """The request's first submitted run (LAUNCHED_STATUSES)."""
    launched = dg.RunsFilter(tags={REQUEST_ID_TAG: str(request_id)}, statuses=LAUNCHED_STATUSES)
    runs = instance.get_runs(launched, limit=1, ascending=True)
    return runs[0] if runs else None


class LaunchedRuns(Protocol):
    """What an evaluation asks of Dagster: the run launched for a request, and whether an image
    partition exists."""

    def run_for_request(self, request_id: str) -> str | None: ...

    def has_image_partition(self, key: str) -> bool: ...


@dataclass(frozen=True)
class InstanceRuns:
    """The sensors' answer: the Dagster instance the daemon evaluates them with."""

    instance: dg.DagsterInstance

    def run_for_request(self, request_id: str) -> str | None:
        run = first_run_for_request(self.instance, request_id)
        return run.run_id if run else None

    def has_image_partition(self, key: str) -> bool:
        return self.instance.has_dynamic_partition(IMAGE_PARTITIONS, key)


def launched_runs(dagster: dg.DagsterInstance | LaunchedRuns) -> LaunchedRuns:
    return InstanceRuns(dagster) if isinstance(dagster, dg.DagsterInstance) else dagster


class Evaluation(pydantic.BaseModel):
    """What one evaluation did (for the tick's log and for tests)."""

    run_requests: list[dg.RunRequest] = []
    new_partitions: list[str] = []
    accepted: list[str] = []
    rejected: dict[str, str] = {}
    attached: dict[str, str] = {}
    relaunched: list[str] = []
    failed: dict[str, str] = {}  # accepted, never launched, refused by the rules now: request id -> reason

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
        if self.failed:
            parts.append(f"{len(self.failed)} failed (accepted, never launched, refused by the rules now)")
        return ", ".join(parts)

    def result(self, what: str) -> dg.SensorResult | dg.SkipReason:
        if not self.run_requests:
            return dg.SkipReason(self.summary(what))
        partitions = [image_partitions.build_add_request(self.new_partitions)] if self.new_partitions else []
        return dg.SensorResult(run_requests=self.run_requests, dynamic_partitions_requests=partitions)


def settle_unlaunched(
    dagster: LaunchedRuns,
    cms: CMSResource,
    unlaunched: list,
    relaunch_after: float,
    rerequest: Callable[[Any], dg.RunRequest],
    done: Evaluation,
    log: LogSink,
    recheck: Callable[[Any], Any] = lambda _: None,
) -> None:
    """Accepted requests with no run id: record the run Dagster has, or emit a lost one again once
    `recheck` (the claim's rules) passes; one it refuses is failed with the reason."""
    for request, age in unlaunched:
        run_id = dagster.run_for_request(str(request.id))
        if run_id is not None:
            cms.requests.attach_run(request.id, run_id)
            done.attached[str(request.id)] = run_id
        elif age >= relaunch_after:
            try:
                recheck(request)
            except (ValidationFailed, pydantic.ValidationError) as error:
                reason = f"{error} (checked again before relaunching it: accepted, its launch was lost)"
                cms.requests.transition(
                    type(request), request.id, RequestState.failed, reason=reason, expected=RequestState.accepted
                )
                done.failed[str(request.id)] = reason
                log(f"request {request.id} failed: {reason}")
                continue
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


# ---- one evaluation, whatever the kind ------------------------------------------------------


@dataclass(frozen=True)
class RequestKind:
    """How one kind of request is listed, claimed, checked and launched. The functions are looked
    up when called, so what a test puts in their place is what runs."""

    record: type[Any]  # ImageRequest or RestoreRequest: the CMS lists and claims requests of this record
    key: Callable[[Any], str]
    check: Callable[[CMSResource, PlatformResource, Any, set[str]], Any]
    run_request: Callable[[Any, Any], dg.RunRequest]
    rerequest: Callable[[CMSResource, Any], dg.RunRequest]


def evaluate_requests(
    kind: RequestKind,
    dagster: dg.DagsterInstance | LaunchedRuns,
    cms: CMSResource,
    platform: PlatformResource,
    *,
    limit: int = DEFAULTS.request_batch,
    relaunch_after: float = DEFAULTS.relaunch_after_seconds,
    log: LogSink = lambda _: None,
) -> Evaluation:
    done = Evaluation()
    rerequest = partial(kind.rerequest, cms)
    runs = launched_runs(dagster)

    # duplicates were checked at the accept: each request's own key is among the accepted ones now
    def recheck(request: Any) -> None:
        kind.check(cms, platform, request, set())

    unlaunched = cms.requests.unlaunched(kind.record)
    settle_unlaunched(runs, cms, unlaunched, relaunch_after, rerequest, done, log, recheck)
    with cms.requests.claim(kind.record, limit) as claim:
        taken = {kind.key(r) for r in claim.already_accepted() if not isinstance(r, MalformedRequest)}
        check = partial(kind.check, cms, platform)
        fresh = accept_or_reject(claim, check, taken, kind.key, kind.run_request, done, log)
    # committed: the accepted rows are durable before any run request leaves this evaluation
    done.run_requests.extend(fresh)
    return done


# ---- the sensors ----------------------------------------------------------------------------


def request_sensor(
    settings: SharedSettings,
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
