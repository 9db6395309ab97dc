"""`reverify_image`: a corrupt image is offered again only once every byte verifies again."""

from typing import Any

import dagster as dg
from pydantic import Field

from records import Image, ImageState, LogSink, ValidationFailed
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from toygres_pipelines.images.verification import ImageCorrupt, verify_image
from toygres_pipelines.shared.run_config import RunConfigLike, op_config_of, op_run_config
from toygres_pipelines.shared.tags import KIND_TAG, MAINTENANCE_KIND


class ReverifyConfig(dg.Config):
    image: str = Field(description="Id or name of the corrupt image to verify again")


def reverify(cms: CMSResource, blob: BlobStorageResource, ref: str, run_id: str, log: LogSink) -> Image:
    """corrupt -> ready when every file (and the manifest, against the CMS checksum) verifies."""
    image = cms.images.find(ref)
    if image is None:
        raise ValidationFailed("image", f"no image {ref!r}")
    if image.state is not ImageState.corrupt:
        raise ValidationFailed("image", f"image {image.name!r} is {image.state}, only a corrupt image is re-verified")
    try:
        verify_image(blob, image.blob_path, expected_manifest_sha256=image.backup_checksum, log=log)
    except ImageCorrupt as error:
        log(f"image {image.name} still fails verification: {error}")
        raise
    return cms.images.transition(
        image.id,
        ImageState.ready,
        run_id=run_id,
        expected=ImageState.corrupt,
        reason="re-verified: every file matches its manifest and the CMS checksum",
        error_message=None,
    )


@dg.op(description="Verify a corrupt image's blobs again; ready again when every byte matches")
def reverify_corrupt_image(
    context: dg.OpExecutionContext, config: ReverifyConfig, cms: CMSResource, blob: BlobStorageResource
) -> None:
    try:
        image = reverify(cms, blob, config.image, context.run_id, context.log.info)
    except (ValidationFailed, ImageCorrupt) as error:
        raise dg.Failure(description=f"image {config.image} not re-verified: {error}", allow_retries=False) from error
    context.log.info(f"image {image.name} verified again: ready")


@dg.job(description="Re-verify a corrupt image (after its blobs were repaired)", tags={KIND_TAG: MAINTENANCE_KIND})
def reverify_image():
    reverify_corrupt_image()


def reverify_run_config(image: str) -> dg.RunConfig:
    return op_run_config(reverify_corrupt_image, ReverifyConfig(image=image))


def reverify_config_of(run_config: RunConfigLike) -> dict[str, Any]:
    return op_config_of(run_config, reverify_corrupt_image)
