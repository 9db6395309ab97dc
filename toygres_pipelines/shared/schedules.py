"""What every schedule of the domains asks of its tick."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

# define_asset_job's return type is not exported by dagster
Job = dg.JobDefinition | UnresolvedAssetJobDefinition


def scheduled_time(context: dg.ScheduleEvaluationContext) -> datetime | None:
    """The tick's scheduled time; None when evaluated by hand without one (then: now)."""
    try:
        return context.scheduled_execution_time
    except dg.DagsterInvariantViolationError:
        return None
    except Exception as error:  # noqa: BLE001 - dagster's check.failed raises a CheckError
        if "scheduled_execution_time" in str(error):
            return None
        raise


def running_schedule(
    name: str, job: Job, cron: str, description: str, timezone: str = "UTC"
) -> Callable[[Callable[..., Any]], dg.ScheduleDefinition]:
    """A schedule that evaluates `job`'s run requests, running from the first deployment on."""
    return dg.schedule(
        name=name,
        job=job,
        cron_schedule=cron,
        execution_timezone=timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


def every(name: str, job: Job, cron: str, description: str) -> dg.ScheduleDefinition:
    """A schedule that launches `job` as it is (no run config), running from the first deployment on."""
    return dg.ScheduleDefinition(
        name=name, job=job, cron_schedule=cron, default_status=dg.DefaultScheduleStatus.RUNNING, description=description
    )
