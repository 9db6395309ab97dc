"""On-request jobs: delete one image, delete one instance (the CLI runs the same functions)."""

import dagster as dg
from pydantic import Field

from records import ValidationFailed
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.lifecycle.images import DagsterPartitions, delete_image
from toygres_pipelines.lifecycle.instances import delete_instance
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.run_config import op_run_config
from toygres_pipelines.shared.tags import MAINTENANCE_KIND


class DeleteImageConfig(dg.Config):
    image: str = Field(description="Id or name of the image to delete; refused when pinned or used by a restore")


class DeleteInstanceConfig(dg.Config):
    instance: str = Field(description="Id or k8s_name of the instance to delete")
    force: bool = Field(default=False, description="Also delete an instance that no toygres restore created")


@dg.op(description="Delete one image: row deleting, its blobs, row deleted, its partition")
def delete_one_image(
    context: dg.OpExecutionContext, config: DeleteImageConfig, cms: CMSResource, blob: BlobStorageResource
) -> None:
    try:
        image = delete_image(
            cms,
            blob,
            config.image,
            run_id=context.run_id,
            log=context.log.info,
            partitions=DagsterPartitions(context.instance, IMAGE_PARTITIONS),
        )
    except ValidationFailed as error:
        raise dg.Failure(description=f"image {config.image} not deleted: {error}", allow_retries=False) from error
    context.log.info(f"image {image.name} deleted")


@dg.op(description="Delete one instance: server, service, volume, secret; row deleted, DNS label freed")
def delete_one_instance(
    context: dg.OpExecutionContext, config: DeleteInstanceConfig, cms: CMSResource, platform: PlatformResource
) -> None:
    try:
        instance = delete_instance(
            cms, platform, config.instance, force=config.force, run_id=context.run_id, log=context.log.info
        )
    except ValidationFailed as error:
        raise dg.Failure(description=f"instance {config.instance} not deleted: {error}", allow_retries=False) from error
    context.log.info(f"instance {instance.k8s_name} is {instance.state}")


delete_image_job = one_op_job(delete_one_image, "delete_image", MAINTENANCE_KIND, "Delete one image on request")
delete_instance_job = one_op_job(
    delete_one_instance,
    "delete_instance",
    MAINTENANCE_KIND,
    "Delete an instance a restore created (force: any instance)",
)


def delete_image_run_config(image: str) -> dg.RunConfig:
    return op_run_config(delete_one_image, DeleteImageConfig(image=image))


def delete_instance_run_config(instance: str, force: bool = False) -> dg.RunConfig:
    return op_run_config(delete_one_instance, DeleteInstanceConfig(instance=instance, force=force))
