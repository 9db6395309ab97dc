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
UI) gets `toygres/kind=checks`, never `backup`.

Configured in dagster.yaml (`run_coordinator: module: toygres_pipelines.run_coordinator, class:
TaggingRunCoordinator`); it takes QueuedRunCoordinator's config.
"""

from __future__ import annotations

from typing import Any

from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun

from toygres_pipelines.drills.jobs import restore_drill
from toygres_pipelines.images.backup import PARTITION_SOURCE_SEPARATOR
from toygres_pipelines.images.jobs import backup_image
from toygres_pipelines.restores.jobs import restore_instance
from toygres_pipelines.shared import asset_keys
from toygres_pipelines.shared.tags import BACKUP_KIND, CHECKS_KIND, INSTANCE_TAG, KIND_TAG

IMAGE_ASSET = asset_keys.IMAGE
PARTITION_TAG = "dagster/partition"
IMPLICIT_ASSET_JOB = "__ASSET_JOB"
RESTORE_JOB = restore_instance.name
DRILL_JOB = restore_drill.name


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


def op_config(run: DagsterRun, op: str) -> dict[str, Any]:
    config: Any = run.run_config or {}
    for key in ("ops", op, "config"):
        config = config.get(key) if isinstance(config, dict) else None
    return config if isinstance(config, dict) else {}


def instance_of_image_name(name: str) -> str | None:
    """The '<instance>__<suffix>' convention of image names (partition keys)."""
    if PARTITION_SOURCE_SEPARATOR in name:
        return name.split(PARTITION_SOURCE_SEPARATOR, 1)[0]
    return None


def source_instance(run: DagsterRun) -> str | None:
    """The configured source_instance, else the partition key's part before '__' (the asset's rule)."""
    configured = op_config(run, "image").get("source_instance")
    if configured:
        return str(configured)
    return instance_of_image_name(run.tags.get(PARTITION_TAG, ""))


def run_instance(run: DagsterRun) -> str | None:
    """The instance a restore makes (its requested name) or a drill restores (its image's instance)."""
    if run.job_name == RESTORE_JOB:
        return str(op_config(run, "validate_request").get("name") or "") or None
    if run.job_name == DRILL_JOB:
        return instance_of_image_name(str(op_config(run, "plan_drill").get("image") or ""))
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
    elif instance := run_instance(run):
        wanted[INSTANCE_TAG] = instance
    return {key: value for key, value in wanted.items() if key not in run.tags}


class TaggingRunCoordinator(QueuedRunCoordinator):
    """QueuedRunCoordinator that tags backup runs with toygres/kind and toygres/instance first."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        missing = fleet_tags(context.dagster_run)
        if missing:
            self._instance.add_run_tags(context.dagster_run.run_id, missing)
            tagged = self._instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
            context = SubmitRunContext(tagged, context.workspace)
        return super().submit_run(context)
