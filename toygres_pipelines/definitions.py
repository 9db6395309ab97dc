import dagster as dg

from toygres_pipelines.images.assets import image
from toygres_pipelines.images.janitor import purge_failed_image_blobs_hourly, purge_failed_image_blobs_job
from toygres_pipelines.resources_from_env import resources_from_env
from toygres_pipelines.restores.jobs import restore_instance

defs = dg.Definitions(
    assets=[image],
    jobs=[restore_instance, purge_failed_image_blobs_job],
    schedules=[purge_failed_image_blobs_hourly],
    resources=resources_from_env(),
)
