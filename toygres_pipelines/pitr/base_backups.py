"""Base backups (kind `base`): pg_basebackup of a running instance into blob storage, verified by
pg_verifybackup inside the job and by size and sha256 here before the row becomes `ready`.
Job `base_backup` (one instance, launchpad or schedule) and schedule `weekly_base_backups`
(each running instance on its own day: a stable hash of its name offset from its drill day)."""

import hashlib

import dagster as dg
from pydantic import Field, ValidationError

from records import Instance, InstanceRef, InstanceState, LogSink
from records.job_scripts import BaseBackupEnv
from records.wal import BaseBackup, BaseBackupResult, BaseBackupState
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import JobKind, JobSpec, PlatformResource
from toygres_pipelines.shared.run_config import op_run_config

BASE_BACKUP_TIMEOUT_SECONDS = 6 * 3600
RESULT_NAME = "pitr.json"
# What basebackup.sh may write besides RESULT_NAME: the tar, plain or age-encrypted
BASE_BACKUP_NAMES = ("base.tar.zst", "base.tar.zst.age")


class BaseBackupFailed(RuntimeError):
    pass


def base_backup_weekday(k8s_name: str) -> int:
    """The weekday (0 = Monday) of an instance's base backup, spread over the fleet like drills."""
    return int.from_bytes(hashlib.sha256(f"base:{k8s_name}".encode()).digest()[:8], "big") % 7


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


@dg.job(name="base_backup", description="A physical base backup of one instance (docs/pitr.md)")
def base_backup_job() -> None:
    base_backup_op()


def due_base_backups(instances: list[Instance], weekday: int) -> list[Instance]:
    return [i for i in sorted(instances, key=lambda i: i.k8s_name) if base_backup_weekday(i.k8s_name) == weekday]


@dg.schedule(
    name="weekly_base_backups",
    cron_schedule="0 3 * * *",
    job=base_backup_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Each running instance gets a base backup once a week, on its own day (a stable hash)",
)
def weekly_base_backups(context: dg.ScheduleEvaluationContext, cms: CMSResource):
    when = context.scheduled_execution_time
    assert when is not None
    for instance in due_base_backups(cms.instances.list([InstanceState.running]), when.weekday()):
        yield dg.RunRequest(
            run_key=f"base-{instance.k8s_name}-{when.date().isoformat()}",
            run_config=base_backup_run_config(instance.k8s_name),
            tags={"toygres.io/instance": instance.k8s_name},
        )
