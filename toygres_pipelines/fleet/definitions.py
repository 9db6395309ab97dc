"""Everything the fleet domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.fleet.freshness import (
    fleet,
    fleet_checks_after_runs_sensor,
    freshness_checks,
    freshness_job,
    freshness_schedule,
)
from toygres_pipelines.fleet.settings import FleetSettings


def fleet_definitions(settings: FleetSettings) -> dg.Definitions:
    """Asset `fleet`, backups_fresh + drills_fresh, check_freshness, freshness_checks, fleet_checks_after_runs."""
    checks = freshness_checks(settings)
    check_freshness = freshness_job(checks)
    return dg.Definitions(
        assets=[fleet],
        asset_checks=checks,
        jobs=[check_freshness],
        schedules=[freshness_schedule(settings, check_freshness)],
        sensors=[fleet_checks_after_runs_sensor(settings, check_freshness)],
    )
