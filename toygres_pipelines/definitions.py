import warnings

import dagster as dg

from toygres_pipelines.automation import AutomationSettings, build_automation
from toygres_pipelines.drills.checks import restorable, size_plausible
from toygres_pipelines.drills.jobs import restore_drill
from toygres_pipelines.images.assets import image
from toygres_pipelines.images.janitor import purge_failed_image_blobs_hourly, purge_failed_image_blobs_job
from toygres_pipelines.images.reverify import reverify_image
from toygres_pipelines.lifecycle.jobs import delete_image_job, delete_instance_job
from toygres_pipelines.pitr.definitions import pitr_definitions
from toygres_pipelines.resources_from_env import resources_from_env
from toygres_pipelines.restores.jobs import restore_instance

# Dagster's own Definitions code copies every sensor that targets a job through a beta-flagged
# parameter (`owners`, which we never set) and warns once per sensor and load: not ours to fix.
warnings.filterwarnings(
    "ignore", message=r"Parameter `owners` of initializer `SensorDefinition.__init__`", category=dg.BetaWarning
)

# Partitioned asset checks (`restorable` on the image partition) are a preview feature of 1.13.
warnings.filterwarnings(
    "ignore", message=r"Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

automation = build_automation(AutomationSettings.from_env())

# Each domain owns its definitions (toygres_pipelines/pitr/definitions.py); they are composed here.
defs = dg.Definitions.merge(
    dg.Definitions(
        assets=[image, *automation.assets],
        asset_checks=[restorable, size_plausible, *automation.checks],
        jobs=[
            restore_instance,
            restore_drill,
            purge_failed_image_blobs_job,
            reverify_image,
            delete_image_job,
            delete_instance_job,
            *automation.jobs,
        ],
        schedules=[purge_failed_image_blobs_hourly, *automation.schedules],
        sensors=automation.sensors,
        resources=resources_from_env(),
        # Every job (the UI's Materialize of `image` included) runs its steps in its run worker: one
        # process per run, not one more per step (docs/benchmarks.md, orchestration overhead).
        executor=dg.in_process_executor,
    ),
    pitr_definitions(),
)
