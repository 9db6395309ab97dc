"""Everything the PITR domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.pitr.archivers import wal_archivers
from toygres_pipelines.pitr.base_backups import base_backup_job, weekly_base_backups
from toygres_pipelines.pitr.checks import (
    check_wal_archives,
    pitr_restorable,
    wal_archive_checks_schedule,
    wal_archive_continuous,
    wal_archive_fresh_check,
)
from toygres_pipelines.pitr.partials import wal_partials_prune_job, wal_partials_prune_schedule
from toygres_pipelines.pitr.restore import restore_to_time_job
from toygres_pipelines.pitr.retention import wal_retention_daily, wal_retention_job
from toygres_pipelines.pitr.settings import PitrSettings


def pitr_definitions(settings: PitrSettings) -> dg.Definitions:
    """A function, not a module-level object: Dagster refuses a code location module holding more
    than one Definitions (the daemon e2e test failed on it)."""
    return dg.Definitions(
        asset_checks=[wal_archive_fresh_check(settings), wal_archive_continuous, pitr_restorable],
        jobs=[base_backup_job, restore_to_time_job, check_wal_archives, wal_retention_job, wal_partials_prune_job],
        schedules=[weekly_base_backups, wal_archive_checks_schedule, wal_retention_daily, wal_partials_prune_schedule],
        sensors=[wal_archivers],
    )
