"""Every domain's definitions, composed from the settings (`definitions.py` adds the resources and
the executor). What each domain schedules and senses:

    images     backup_image (asset job over `image`, tag toygres/kind=backup); nightly_backups
               (one `<k8s_name>__nightly-<YYYYMMDD>` partition and run per running instance, run key =
               partition key); image_requests_sensor (image_requests pending -> accepted/rejected ->
               backup_image runs); purge_failed_image_blobs_job + purge_failed_image_blobs_hourly
    restores   restore_instance; restore_requests_sensor (restore_requests pending -> accepted/rejected
               -> restore_instance runs)
    drills     restore_drill; weekly_drills (each running instance once a week); drill_run_canceled (a
               terminated drill: scratch instance deleted, drill failed at once); abandoned_drills
               (drills whose run ended without finishing); checks restorable, size_plausible
    lifecycle  retention (dry_run by default in the launchpad) + retention_daily (TOYGRES_RETENTION_CRON);
               delete_image, delete_instance
    fleet      asset `fleet`; backups_fresh, drills_fresh, run by check_freshness on freshness_checks and
               by fleet_checks_after_runs after every successful backup, restore and drill
    requests   request_run_started, run_{succeeded,failed,canceled}_writeback (writeback.settle_run),
               reconcile_stuck_rows (rows left creating/accepted by runs that ended without reporting)
    pitr       toygres_pipelines/pitr/definitions.py
"""

import dagster as dg

from toygres_pipelines.drills.definitions import drills_definitions
from toygres_pipelines.fleet.definitions import fleet_definitions
from toygres_pipelines.images.definitions import images_definitions
from toygres_pipelines.lifecycle.definitions import lifecycle_definitions
from toygres_pipelines.pitr.definitions import pitr_definitions
from toygres_pipelines.requests.definitions import requests_definitions
from toygres_pipelines.restores.definitions import restores_definitions
from toygres_pipelines.settings import Settings


def domain_definitions(settings: Settings) -> dg.Definitions:
    """Every domain's definitions, built from the settings, without resources."""
    return dg.Definitions.merge(
        images_definitions(settings),
        restores_definitions(settings),
        drills_definitions(settings),
        lifecycle_definitions(settings),
        fleet_definitions(settings),
        requests_definitions(settings),
        pitr_definitions(settings),
    )
