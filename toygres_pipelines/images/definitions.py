"""Everything the images domain defines; `toygres_pipelines/definitions.py` merges it in."""

import dagster as dg

from toygres_pipelines.images.assets import image
from toygres_pipelines.images.janitor import janitor_job, janitor_schedule
from toygres_pipelines.images.jobs import backup_image
from toygres_pipelines.images.reverify import reverify_image
from toygres_pipelines.images.schedules import nightly_schedule
from toygres_pipelines.images.sensors import image_requests_sensor
from toygres_pipelines.images.settings import ImagesSettings


def images_definitions(settings: ImagesSettings) -> dg.Definitions:
    """The `image` asset, backup_image and its nightly schedule, the image request sensor, the janitor."""
    janitor = janitor_job(settings)
    return dg.Definitions(
        assets=[image],
        jobs=[backup_image, janitor, reverify_image],
        schedules=[nightly_schedule(settings), janitor_schedule(janitor)],
        sensors=[image_requests_sensor(settings)],
    )
