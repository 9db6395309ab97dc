"""The `retention` job: plan (always shown in the run), then, unless dry, delete what expired.

Expired ready images and failed images past the window go through `remove_image` (row deleting,
blobs, row deleted, partition), images left `deleting` by an earlier run are finished, blob
folders no live row owns (stray) are removed, and partitions whose images are all deleted go.
Before each deletion the image is read again and checked like a deletion on request: a pin or a
restore that appeared since the plan keeps it, and under the instance's lock, at the moment the row
turns deleting, an image that has become the instance's newest ready one since the plan is kept.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import psycopg
from pydantic import BaseModel, Field

from records import Image, ImageState, LogSink, ValidationFailed, parse_uuid
from records.retention import RetentionPolicy
from resources.blob import BlobStorageResource
from resources.cms import CMSError, CMSResource
from toygres_pipelines.lifecycle.images import (
    DagsterPartitions,
    Partitions,
    check_deletable,
    in_use_by,
    remove_image,
    tidy_partitions,
)
from toygres_pipelines.lifecycle.retention import RetentionPlan, plan_retention
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS
from toygres_pipelines.shared.run_config import RunConfigLike, op_config_of, op_run_config
from toygres_pipelines.shared.tags import KIND_TAG, MAINTENANCE_KIND

IMAGES_PREFIX = "images"


class RetentionOutcome(BaseModel):
    dry_run: bool
    plan: RetentionPlan
    stray_folders: list[str]
    deleted: list[str] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    partitions_removed: list[str] = []
    cms_unreachable: str | None = None

    def not_deleted(self) -> list[str]:
        return sorted({d.image_name for d in self.plan.expired} - set(self.deleted))

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        count = len(self.plan.expired) if self.dry_run else len(self.deleted)
        text = (
            f"{verb} {count} image(s), kept {len(self.plan.kept)}; "
            f"{len(self.stray_folders)} stray blob folder(s)" + (" found" if self.dry_run else " removed")
        )
        if self.skipped:
            text += f"; {len(self.skipped)} skipped"
        if self.failed:
            text += f"; {len(self.failed)} failed (left deleting or untouched, retried next run)"
        return text


def stray_folders(folders: list[str], images: list[Image]) -> list[str]:
    """Folders under images/ named by an image id that no live row (any state but deleted) owns."""
    live = {str(i.id) for i in images if i.state is not ImageState.deleted}
    return sorted(f for f in folders if parse_uuid(f) is not None and f not in live)


def compute_plan(cms: CMSResource, default: RetentionPolicy, now: datetime) -> tuple[list[Image], RetentionPlan]:
    images = cms.images.list()
    overrides = {}
    for instance in cms.instances.list():
        if instance.retention_override:
            try:
                overrides[instance.id] = default.with_override(instance.retention_override)
            except ValidationFailed as error:
                raise ValidationFailed(
                    "retention_override",
                    f"instance {instance.k8s_name}: {error} (fix it with toygres-pipelines retention)",
                ) from None
    plan = plan_retention(images, default=default, overrides=overrides, in_use=in_use_by(cms, images), now=now)
    return images, plan


def run_retention(
    cms: CMSResource,
    blob: BlobStorageResource,
    *,
    default: RetentionPolicy,
    dry_run: bool,
    run_id: str | None,
    log: LogSink,
    partitions: Partitions | None,
    now: datetime | None = None,
) -> RetentionOutcome:
    # Folders first: a backup reserves its row before it writes a blob, so every folder listed
    # here has its row in the catalogue read after it, and a backup starting now is never stray.
    folders = blob.list_folders(IMAGES_PREFIX)
    images, plan = compute_plan(cms, default, now or datetime.now(UTC))
    strays = stray_folders(folders, images)
    outcome = RetentionOutcome(dry_run=dry_run, plan=plan, stray_folders=strays)
    if dry_run:
        return outcome
    for decision in plan.expired:
        current = cms.images.get(decision.image_id)
        try:
            if current is None or current.state is not decision.state:
                raise ValidationFailed("image", f"changed since the plan (now {current.state if current else 'gone'})")
            check_deletable(cms, current)
            remove_image(
                cms,
                blob,
                current,
                reason="expired by retention",
                run_id=run_id,
                log=log,
                partitions=None,
                keep_newest_ready=True,
            )
            outcome.deleted.append(decision.image_name)
        except psycopg.OperationalError as lost:  # the CMS went away: nothing more is deleted now
            outcome.cms_unreachable = " ".join(str(lost).split()) or type(lost).__name__
            log(f"the CMS became unreachable at image {decision.image_name}: {outcome.cms_unreachable}")
            break
        except (ValidationFailed, CMSError) as refused:
            outcome.skipped[decision.image_name] = str(refused)
            log(f"image {decision.image_name} kept: {refused}")
        except Exception as error:  # noqa: BLE001 - storage down: this image stays deleting, the next run retries
            outcome.failed[decision.image_name] = f"{type(error).__name__}: {error}"
            log(f"image {decision.image_name} not deleted now ({error}); it stays deleting, the next run retries")
    for folder in strays:
        try:
            removed = blob.delete_prefix(f"{IMAGES_PREFIX}/{folder}")
            log(f"stray blob folder {IMAGES_PREFIX}/{folder}: {removed} blob(s) removed")
        except Exception as error:  # noqa: BLE001 - retried next run
            outcome.failed[f"{IMAGES_PREFIX}/{folder}"] = f"{type(error).__name__}: {error}"
    if partitions is not None and outcome.cms_unreachable is None:
        outcome.partitions_removed = tidy_partitions(cms.images.list(), partitions, log)
    return outcome


class RetentionConfig(dg.Config):
    dry_run: bool = Field(
        default=True,
        description="Only compute and show the plan (the run's metadata: every image, its age and the tier "
        "that keeps it, or 'expired'). Set false to delete what expired.",
    )


RETENTION_OP = "apply_retention"


def retention_run_config(dry_run: bool) -> dg.RunConfig:
    """The run config of a retention run; the launchpad's default is a dry run."""
    return op_run_config(RETENTION_OP, RetentionConfig(dry_run=dry_run))


def retention_config_of(run_config: RunConfigLike) -> dict[str, Any]:
    return op_config_of(run_config, RETENTION_OP)


def retention_job(policy: RetentionPolicy) -> dg.JobDefinition:
    @dg.op(
        name=RETENTION_OP,
        description="Plan which images the retention policy keeps; unless dry_run, delete the expired ones "
        "(blobs, CMS row, partition), failed images past their window and stray blob folders",
    )
    def apply_retention(
        context: dg.OpExecutionContext, config: RetentionConfig, cms: CMSResource, blob: BlobStorageResource
    ) -> dg.Output[str]:
        now = datetime.now(UTC)
        outcome = run_retention(
            cms,
            blob,
            default=policy,
            dry_run=config.dry_run,
            run_id=context.run_id,
            log=context.log.info,
            partitions=DagsterPartitions(context.instance, IMAGE_PARTITIONS),
            now=now,
        )
        metadata = {
            "plan": dg.MetadataValue.md(outcome.plan.markdown(now)),
            "dry_run": dg.MetadataValue.bool(outcome.dry_run),
            "expired": dg.MetadataValue.int(len(outcome.plan.expired)),
            "kept": dg.MetadataValue.int(len(outcome.plan.kept)),
            "stray_blob_folders": dg.MetadataValue.json(outcome.stray_folders),
            "default_policy": dg.MetadataValue.json(policy.model_dump()),
        }
        context.log.info(outcome.summary())
        if outcome.cms_unreachable is not None:
            raise dg.Failure(
                description=f"retention: the CMS became unreachable ({outcome.cms_unreachable}); "
                f"deleted: {', '.join(outcome.deleted) or 'none'}; "
                f"not deleted (retried by the next run): {', '.join(outcome.not_deleted())}. Each image is untouched, "
                "deleting (finished by the next run) or deleted",
                metadata=metadata,
            )
        if outcome.failed:
            raise dg.Failure(
                description=f"retention: {outcome.summary()}: "
                + "; ".join(f"{name}: {why}" for name, why in outcome.failed.items()),
                metadata=metadata,
            )
        return dg.Output(outcome.summary(), metadata=metadata)

    @dg.job(
        name="retention",
        description="Apply the retention policy (TOYGRES_RETENTION_*, per-instance overrides in the CMS). "
        "dry_run (the default in the launchpad) only shows the plan.",
        tags={KIND_TAG: MAINTENANCE_KIND},
    )
    def retention():
        apply_retention()

    return retention
