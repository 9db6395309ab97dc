"""Base backups (kind `base`): pg_basebackup of a running instance into blob storage, verified by
pg_verifybackup inside the job and by size and sha256 here before the row becomes `ready`.
Job `base_backup` (one instance, launchpad or schedule) and schedule `weekly_base_backups`
(each running instance on its own day: a stable hash of its name offset from its drill day)."""

from datetime import UTC, datetime

import dagster as dg
from pydantic import Field, ValidationError

from records import Instance, InstanceRef, InstanceState, LogSink
from records.freshness import BASE_BACKUP_DAY, due_on
from records.job_scripts import BaseBackupEnv
from records.wal import BaseBackup, BaseBackupResult, BaseBackupState
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import JobKind, JobSpec, PlatformResource
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.run_config import op_run_config
from toygres_pipelines.shared.schedules import running_schedule, scheduled_time
from toygres_pipelines.shared.tags import BACKUP_KIND, INSTANCE_TAG, KIND_TAG

BASE_BACKUP_TIMEOUT_SECONDS = 6 * 3600
RESULT_NAME = "pitr.json"
# What basebackup.sh may write besides RESULT_NAME: the tar, plain or age-encrypted
BASE_BACKUP_NAMES = ("base.tar.zst", "base.tar.zst.age")


class BaseBackupFailed(RuntimeError):
    pass


def take_base_backup(
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    source: Instance,
    run_id: str | None,
    log: LogSink,
) -> BaseBackup:
    if source.state is not InstanceState.running:
        raise BaseBackupFailed(f"source_instance: {source.k8s_name} is {source.state}, not running")
    ref = InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace)
    row = cms.base_backups.reserve(source, platform.read_instance_password(ref), run_id)
    spec = JobSpec(
        kind=JobKind.backup,
        name=f"basebackup-{row.id}",
        script="basebackup.sh",
        instance=ref,
        env=BaseBackupEnv.of_source(
            source,
            blob_url=blob.folder_url(row.blob_path),
            transfer_stall_seconds=blob.transfer_stall_seconds,
            age_recipient=platform.age_recipient,
        ).env(),
        blob_sas=blob.write_grant(row.blob_path, [*BASE_BACKUP_NAMES, RESULT_NAME], BASE_BACKUP_TIMEOUT_SECONDS),
        labels={"toygres.io/base-backup": str(row.id)},
        timeout_seconds=BASE_BACKUP_TIMEOUT_SECONDS,
    )
    try:
        platform.run_job(spec, log)
        result = BaseBackupResult.model_validate_json(blob.read_bytes(f"{row.blob_path}/{RESULT_NAME}"))
        for name in result.files:
            stored = blob.stored_size(f"{row.blob_path}/{name}")
            if stored != result.size_bytes:
                raise BaseBackupFailed(f"{name}: blob storage holds {stored} bytes, the job wrote {result.size_bytes}")
        if result.postgres_version != source.postgres_version:
            raise BaseBackupFailed(
                f"the source runs PostgreSQL {result.postgres_version}, the CMS says {source.postgres_version}"
            )
    except (Exception, ValidationError) as error:
        cms.base_backups.settle(row.id, BaseBackupState.failed, str(error)[:2000])
        blob.delete_prefix(row.blob_path)
        raise
    finally:
        platform.delete_job(spec.name, ref.namespace)
    ready = cms.base_backups.finish(row.id, result)
    log(f"base backup {ready.id} of {source.k8s_name} ready: consistent at {ready.consistent_at}")
    return ready


class BaseBackupConfig(dg.Config):
    source_instance: str = Field(description="The instance: its k8s_name or id; it must be running")


@dg.op(description="pg_basebackup into blob storage, pg_verifybackup, sizes and sha256 checked, row ready")
def base_backup_op(
    context: dg.OpExecutionContext,
    config: BaseBackupConfig,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> str:
    source = cms.instances.find(config.source_instance)
    if source is None:
        raise dg.Failure(f"source_instance: no instance {config.source_instance!r}")
    backup = take_base_backup(cms, blob, platform, source, context.run_id, context.log.info)
    context.add_output_metadata(
        {"kind": "base", "base_backup_id": str(backup.id), "consistent_at": str(backup.consistent_at),
         "size_bytes": backup.size_bytes or 0}
    )  # fmt: skip
    return str(backup.id)


def base_backup_run_config(source_instance: str) -> dg.RunConfig:
    return op_run_config(base_backup_op, BaseBackupConfig(source_instance=source_instance))


base_backup_job = one_op_job(
    base_backup_op, "base_backup", BACKUP_KIND, "A physical base backup of one instance (docs/pitr.md)"
)


@running_schedule(
    "weekly_base_backups",
    base_backup_job,
    "0 3 * * *",
    "Each running instance gets a base backup once a week, on its own day (a stable hash)",
)
def weekly_base_backups(context: dg.ScheduleEvaluationContext, cms: CMSResource):
    when = scheduled_time(context) or datetime.now(UTC)
    for instance in due_on(cms.instances.list([InstanceState.running]), when.weekday(), BASE_BACKUP_DAY):
        yield dg.RunRequest(
            run_key=f"base-{instance.k8s_name}-{when.date().isoformat()}",
            run_config=base_backup_run_config(instance.k8s_name),
            tags={KIND_TAG: BACKUP_KIND, INSTANCE_TAG: instance.k8s_name},
        )
