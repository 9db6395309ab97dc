"""The run queue of every toygres deployment: Dagster's QueuedRunCoordinator, plus the fleet tags
on every backup, restore, drill and check run.

The schedule and the sensors tag their backup runs `toygres/kind=backup` and `toygres/instance`.
A run launched from the UI (Materialize on the `image` asset runs as `__ASSET_JOB`) carries only
the tags the user typed, and the queue's tag limits (`concurrency.runs.tag_concurrency_limits`)
look at run tags only. So this coordinator adds the missing tags when a run is submitted, before
it is queued: every backup run, however launched, meets the same limits. (The `image` asset's
pool covers the op side; pools cannot limit per instance.)

Restores launched from the UI get `toygres/instance` from the requested name, drills from their
image's name ('<instance>__…'), and a run of asset checks only (the fleet's checks executed from the
UI) gets `toygres/kind=checks`, never `backup`. Every run also gets `toygres/what`, a readable name
("backup <partition>", "restore <image> as <name>", "drill <image>", ...): Dagster 1.13 runs have no
name field. A UI Materialize stays `__ASSET_JOB`: a run's job name is bound to the execution plan
snapshot its launcher runs, so it cannot be renamed here.

Every backup and restore is checked here first, with the rules the ops use (images/backup.py
`check_backup_request`, restores/config.py `check_request_fields` + `request_source`): a request
they refuse leaves no run (the run is deleted, and a partition with no image row too), so nothing
turns red, and the launch dialog's error is one line naming the field, the rule and the value.
The rules that need the CMS read it through TOYGRES_CMS_DSN where this coordinator runs (the
webserver and the daemon); without it, or with the CMS unreachable, only the request's own rules
apply here and the run goes on: its first step checks everything again. The platform's rules
(namespaces served, a job image per major) are the code server's settings: its steps check them.

One run per CMS request: the request listener and the request sensors' sweep may both launch a
request (the sweep re-emits an accepted request with no run while the listener is still launching
it). A run tagged toygres/request-id is queued only if no other run of that request was queued
before it, the check and the queueing under the request's advisory lock in the CMS (no write);
the later launch is refused (RequestAlreadyLaunched) and leaves no run. With the CMS configured
but giving no lock (unreachable, restarting), a request's run is not queued (LaunchLockUnavailable):
the request stays accepted with no run and the sweep launches it once the CMS answers. A
re-execution (dagster/parent_run_id) is no launch of the request.

Configured in dagster.yaml (`run_coordinator: module: toygres_pipelines.run_coordinator, class:
TaggingRunCoordinator`); it takes QueuedRunCoordinator's config.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
import psycopg
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.tags import PARENT_RUN_ID_TAG
from dagster_graphql.implementation.utils import UserFacingGraphQLError
from dagster_graphql.schema.errors import GraphenePythonError
from dagster_shared.error import SerializableErrorInfo
from pydantic import ValidationError

from records import ImageState, ValidationFailed
from resources.cms import CMSResource
from resources.cms.resource import CMS_DSN_ENV
from toygres_pipelines.drills.jobs import drill_config_of, restore_drill
from toygres_pipelines.images.assets import BackupConfig, image_named
from toygres_pipelines.images.backup import PARTITION_SOURCE_SEPARATOR, check_backup_request, source_ref_for
from toygres_pipelines.images.jobs import backup_config_of, backup_image
from toygres_pipelines.images.reverify import reverify_config_of, reverify_image
from toygres_pipelines.lifecycle.retention_job import retention_config_of
from toygres_pipelines.restores.config import RestoreConfig, check_request_fields, check_timeouts, request_source
from toygres_pipelines.restores.jobs import restore_config_of, restore_instance
from toygres_pipelines.shared import asset_keys
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS
from toygres_pipelines.shared.request_claims import LAUNCHED_STATUSES
from toygres_pipelines.shared.tags import (
    BACKUP_KIND,
    CHECKS_KIND,
    DRILL_KIND,
    INSTANCE_TAG,
    KIND_TAG,
    MAINTENANCE_KIND,
    REQUEST_ID_TAG,
    RESTORE_KIND,
    WHAT_TAG,
)

# A submit waits at most this long for the CMS before letting the run through (its step checks again).
SUBMIT_CMS_TIMEOUT_SECONDS = 5
log = logging.getLogger(__name__)

IMAGE_ASSET = asset_keys.IMAGE
PARTITION_TAG = "dagster/partition"
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
RESTORE_JOB = restore_instance.name
DRILL_JOB = restore_drill.name
REVERIFY_JOB = reverify_image.name
RETENTION_JOB = "retention"  # built per policy (lifecycle/retention_job.py)
# The reader of each job's config and its field naming the image the job reads.
IMAGE_FIELDS: dict[str, tuple[Callable[[Any], dict[str, Any]], str]] = {
    RESTORE_JOB: (restore_config_of, "source_image_id"),
    DRILL_JOB: (drill_config_of, "image"),
    REVERIFY_JOB: (reverify_config_of, "image"),
}
JOB_VERBS = {DRILL_JOB: "drill", REVERIFY_JOB: "reverify"}
# The kind a job's own tags give it (a run launched without them, e.g. re-executed, gets it here).
JOB_KINDS = {
    RESTORE_JOB: RESTORE_KIND,
    DRILL_JOB: DRILL_KIND,
    REVERIFY_JOB: MAINTENANCE_KIND,
    RETENTION_JOB: MAINTENANCE_KIND,
}


def is_check_run(run: DagsterRun) -> bool:
    """A run of asset checks only (the UI's "Execute" on the fleet's checks): no asset is materialized."""
    return bool(run.asset_check_selection) and not run.asset_selection


def is_backup(run: DagsterRun) -> bool:
    if run.job_name == backup_image.name:
        return True
    if is_check_run(run):
        return False
    if run.asset_selection is not None:
        return IMAGE_ASSET in run.asset_selection
    # The implicit asset job with no selection materializes every asset: `image` is the only one.
    return run.job_name.startswith(IMPLICIT_ASSET_JOB)


def instance_of_image_name(name: str) -> str | None:
    """The '<instance>__<suffix>' convention of image names (partition keys)."""
    if PARTITION_SOURCE_SEPARATOR in name:
        return name.split(PARTITION_SOURCE_SEPARATOR, 1)[0]
    return None


def source_instance(run: DagsterRun) -> str | None:
    """The configured source_instance, else the partition key's part before '__' (the asset's rule)."""
    configured = backup_config_of(run.run_config).get("source_instance")
    if configured:
        return str(configured)
    return instance_of_image_name(run.tags.get(PARTITION_TAG, ""))


def run_instance(run: DagsterRun) -> str | None:
    """The instance a restore makes (its requested name), a drill or a reverify works on (its image's instance)."""
    if run.job_name == RESTORE_JOB:
        return str(restore_config_of(run.run_config).get("name") or "") or None
    image = image_of(run)
    return instance_of_image_name(image) if image else None


def image_of(run: DagsterRun) -> str | None:
    """The image a drill, a reverify or a restore reads (as configured: a name or an id)."""
    reader, key = IMAGE_FIELDS.get(run.job_name, (None, ""))
    return str(reader(run.run_config).get(key) or "") or None if reader else None


def run_what(run: DagsterRun) -> str | None:
    """A readable name for the run (the `toygres/what` tag): Dagster 1.13 runs have no name field."""
    if is_check_run(run) or run.tags.get(KIND_TAG) == CHECKS_KIND:
        return "fleet checks"
    if is_backup(run):
        target = run.tags.get(PARTITION_TAG) or source_instance(run)
        return f"backup {target}" if target else None
    if run.job_name == RETENTION_JOB:
        dry = retention_config_of(run.run_config).get("dry_run", True)
        return "retention (dry run: plan only)" if dry else "retention (deletes what expired)"
    image = image_of(run)
    if run.job_name == RESTORE_JOB:
        name = run_instance(run)
        return f"restore {image} as {name}" if image and name else None
    if image:
        return f"{JOB_VERBS[run.job_name]} {image}"
    return None


def fleet_tags(run: DagsterRun) -> dict[str, str]:
    """The fleet tags this run lacks (a tag the run already carries is never changed)."""
    wanted: dict[str, str] = {}
    if is_check_run(run):
        wanted[KIND_TAG] = CHECKS_KIND
    elif is_backup(run):
        wanted[KIND_TAG] = BACKUP_KIND
        instance = source_instance(run)
        if instance:
            wanted[INSTANCE_TAG] = instance
    else:
        if run.job_name in JOB_KINDS:
            wanted[KIND_TAG] = JOB_KINDS[run.job_name]
        if instance := run_instance(run):
            wanted[INSTANCE_TAG] = instance
    if what := run_what(run):
        wanted[WHAT_TAG] = what
    return {key: value for key, value in wanted.items() if key not in run.tags}


class SubmitRefused(UserFacingGraphQLError):
    """A launch refused at submit, leaving no run. The launch mutation answers it as a PythonError
    with this message and no stack, named by the subclass (the UI's dialog shows the message alone;
    the request listener reads the name); elsewhere (the daemon's sensors) it is an ordinary
    exception with the same message."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(GraphenePythonError(SerializableErrorInfo(message, [], type(self).__name__)))

    def __str__(self) -> str:
        return self.message


class RequestRefused(SubmitRefused):
    """A submitted request that breaks a rule."""

    def __init__(self, kind: str, error: ValidationFailed, value: Any):
        self.field, self.rule, self.value = error.field, error.rule, value
        super().__init__(f"Invalid {kind} request: {error}")


class RequestAlreadyLaunched(SubmitRefused):
    """A second run for a CMS request that already has one (the request listener and the request
    sensors' sweep may both launch a request): refused, so each request runs once."""

    def __init__(self, request_id: str, run_id: str):
        self.request_id, self.run_id = request_id, run_id
        super().__init__(f"request {request_id} already has run {run_id}: not launched again")


class LaunchLockUnavailable(SubmitRefused):
    """A launch of a CMS request while the CMS gives no launch lock (unreachable, restarting, the
    lock held too long): the check alone cannot keep two racing launches apart, so none is queued.
    The request stays accepted with no run; the sweep launches it once the CMS answers."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        super().__init__(
            f"request {request_id}: the CMS gives no launch lock now, so it is not launched; "
            "the request sensors launch it once the CMS answers"
        )


def launched_run(instance: dg.DagsterInstance, request_id: str, run_id: str) -> str | None:
    """Another run already submitted (LAUNCHED_STATUSES) for this request, if any. A re-execution
    (dagster/parent_run_id) copies the request tag but is no launch of the request."""
    launched = dg.RunsFilter(tags={REQUEST_ID_TAG: request_id}, statuses=LAUNCHED_STATUSES)
    for record in instance.get_run_records(launched):
        other = record.dagster_run
        if other.run_id != run_id and PARENT_RUN_ID_TAG not in other.tags:
            return other.run_id
    return None


def submit_cms() -> CMSResource | None:
    """The CMS where the coordinator runs (read only: no encryption key, it never reads a password)."""
    dsn = os.environ.get(CMS_DSN_ENV, "").strip()
    if not dsn:
        return None
    return CMSResource(dsn=dsn, encryption_key="", connect_timeout=SUBMIT_CMS_TIMEOUT_SECONDS)


def field_error(error: ValidationError) -> ValidationFailed:
    """A form value of the wrong shape (e.g. a list for postgres_version), as one named field."""
    first = error.errors()[0]
    return ValidationFailed(".".join(str(p) for p in first["loc"]) or "config", first["msg"])


def form(model: type[dg.Config], config: dict[str, Any]) -> Any:
    try:
        return model.model_validate(config)
    except ValidationError as error:
        raise field_error(error) from None


def check_backup_run(run: DagsterRun, cms: CMSResource | None) -> None:
    """The image asset's rules for its partition: an image already ready is verified again (no
    rule applies); else a new image's name, parallel_jobs and the source instance in the CMS."""
    name = run.tags.get(PARTITION_TAG)
    if not name:
        return
    config = form(BackupConfig, backup_config_of(run.run_config))
    source_ref = source_ref_for(name, config.source_instance)
    if cms is None:
        return
    existing = image_named(cms, name)
    if existing is None or existing.state is not ImageState.ready:
        check_backup_request(cms, name, source_ref, config.parallel_jobs)


def check_restore_run(run: DagsterRun, cms: CMSResource | None) -> None:
    config = form(RestoreConfig, restore_config_of(run.run_config))
    check_timeouts(config)
    fields = config.request_fields()
    if cms is None:
        check_request_fields(fields)
    else:
        request_source(fields, cms)


def refusal(run: DagsterRun, cms: CMSResource | None) -> RequestRefused | None:
    """Why the rules refuse this run's request, if they do."""
    if is_check_run(run):
        return None
    if is_backup(run):
        kind, config_of, check = "backup", backup_config_of, check_backup_run
    elif run.job_name == RESTORE_JOB:
        kind, config_of, check = "restore", restore_config_of, check_restore_run
    else:
        return None
    try:
        check(run, cms)
    except ValidationFailed as error:
        key = error.field.split(".")[-1]
        value = config_of(run.run_config).get(key, run.tags.get(PARTITION_TAG) if kind == "backup" else None)
        return RequestRefused(kind, error, value)
    return None


class TaggingRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that refuses a request the rules refuse (leaving no run) and tags
    backup, restore, drill and check runs with toygres/kind and toygres/instance first."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        refused = self._refusal(run)
        if refused is not None:
            self._forget(run)
            raise refused
        missing = fleet_tags(run)
        if missing:
            self._instance.add_run_tags(run.run_id, missing)
            tagged = self._instance.get_run_by_id(run.run_id) or run
            context = SubmitRunContext(tagged, context.workspace)
        with self._only_launch(run):
            return super().submit_run(context)

    @contextmanager
    def _only_launch(self, run: DagsterRun) -> Iterator[None]:
        """Queue a request's run only if no other run of the request was queued before it: the
        check and the queueing under the request's launch lock in the CMS, so two launches at
        once (the listener's and the sweep's) end in one run. No lock from a CMS configured here
        (unreachable, restarting): no run (LaunchLockUnavailable), never the check alone, which
        two racing launches both pass. No CMS configured at all: the check alone."""
        request_id = run.tags.get(REQUEST_ID_TAG)
        if not request_id or PARENT_RUN_ID_TAG in run.tags:
            yield
            return
        with ExitStack() as locked:
            cms = submit_cms()
            if cms is not None:
                try:
                    locked.enter_context(cms.requests.launch_lock(request_id))
                except (psycopg.Error, OSError) as error:
                    log.warning("run %s: no launch lock from the CMS (%s); not launched", run.run_id, error)
                    self._forget(run, partition=False)
                    raise LaunchLockUnavailable(request_id) from None
            other = launched_run(self._instance, request_id, run.run_id)
            if other is not None:
                self._forget(run, partition=False)
                raise RequestAlreadyLaunched(request_id, other)
            yield

    def _refusal(self, run: DagsterRun) -> RequestRefused | None:
        cms = submit_cms()
        try:
            return refusal(run, cms)
        except (psycopg.Error, OSError) as error:
            log.warning(
                "run %s: the CMS did not answer at submit (%s); its first step checks the request", run.run_id, error
            )
            return refusal(run, None)

    def _forget(self, run: DagsterRun, partition: bool = True) -> None:
        """No trace of a refused request: the run, the check executions it planned (Dagster's
        delete_run keeps them, shown as skipped) and (`partition`) a partition added for it with
        no image row."""
        instance = self._instance
        instance.delete_run(run.run_id)
        storage = instance.event_log_storage
        if isinstance(storage, SqlEventLogStorage) and storage.has_table(AssetCheckExecutionsTable.name):
            with storage.index_connection() as conn:
                conn.execute(AssetCheckExecutionsTable.delete().where(AssetCheckExecutionsTable.c.run_id == run.run_id))
        partition_key = run.tags.get(PARTITION_TAG) if partition else None
        if partition_key and is_backup(run) and instance.has_dynamic_partition(IMAGE_PARTITIONS, partition_key):
            cms = submit_cms()
            try:
                unknown = cms is not None and image_named(cms, partition_key) is None
            except (psycopg.Error, OSError):
                unknown = False
            if unknown:
                instance.delete_dynamic_partition(IMAGE_PARTITIONS, partition_key)
