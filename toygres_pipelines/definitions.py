import dagster as dg

from toygres_pipelines.images.assets import image
from toygres_pipelines.resources_from_env import resources_from_env

defs = dg.Definitions(
    assets=[image],
    resources=resources_from_env(),
)
