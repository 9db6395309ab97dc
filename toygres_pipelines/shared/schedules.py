"""What every schedule of the domains asks of its tick."""

from __future__ import annotations

from datetime import datetime

import dagster as dg


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
