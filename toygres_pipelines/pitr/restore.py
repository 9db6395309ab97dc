"""Restore to a point in time (docs/pitr.md): a new instance from the newest base backup before
the target and the archived WAL after it, replayed to `target_time` (or everything: `latest`)
and promoted. The target is checked against the recoverable window before anything is created;
same major only (the base backup's: a physical copy cannot change major)."""

import hashlib
from datetime import datetime

import dagster as dg
from pydantic import Field

from records import (
    Instance,
    InstanceRef,
    InstanceState,
    LogSink,
    ValidationFailed,
    new_k8s_name,
    validate_azure_dns_label,
    validate_dns_label,
)
from records.job_scripts import PitrRestoreFetchEnv, PitrRestoreServeEnv, job_env
from records.requests import NewInstanceFields
from records.rows import instance_columns
from records.wal import PITR_BASE_BACKUP_TAG, RecoveryPlanFile, parse_target_time
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import DeploySpec, JobKind, JobSpec, PlatformResource
from toygres_pipelines.pitr.window import plan_recovery
from toygres_pipelines.shared.connections import connection_strings
from toygres_pipelines.shared.jobs import one_op_job
from toygres_pipelines.shared.run_config import op_run_config
from toygres_pipelines.shared.tags import RESTORE_KIND

RESTORE_TIMEOUT_SECONDS = 6 * 3600
READY_TIMEOUT_SECONDS = 600
PLANS_PREFIX = "restores/pitr/"


def plan_blob(ref: InstanceRef) -> str:
    """Where a running point-in-time restore's plan.json is, while its job runs."""
    return f"{PLANS_PREFIX}{ref.namespace}/{ref.k8s_name}/plan.json"


def restore_to_time(
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
    *,
    source_instance: str,
    name: str,
    dns_label: str,
    target_time: datetime | None,
    namespace: str | None = None,
    storage_size_gb: int = 10,
    postgres_version: str | None = None,
    run_id: str | None = None,
    log: LogSink = print,
) -> Instance:
    """ValidationFailed (naming the field and the window) before anything exists; else the new
    instance, running. A failure removes what was made and leaves the row failed with the reason."""
    source = cms.instances.find(source_instance)
    if source is None:
        raise ValidationFailed("source_instance", f"no instance {source_instance!r}")
    validate_dns_label(name, "name")
    validate_azure_dns_label(dns_label, "dns_label")
    if cms.instances.dns_name_in_use(dns_label):
        raise ValidationFailed("dns_label", f"{dns_label} is used by another instance")
    base, plan = plan_recovery(cms, blob, source, target_time)
    if postgres_version is not None and postgres_version != base.postgres_version:
        raise ValidationFailed(
            "postgres_version",
            f"a point-in-time restore keeps the major of its base backup ({base.postgres_version}); "
            f"restore to {base.postgres_version}, then upgrade with a logical image",
        )
    platform.check_postgres_version(base.postgres_version, "postgres_version", "the base backup")
    ref = InstanceRef(k8s_name=new_k8s_name(name), namespace=platform.resolve_namespace(namespace))
    instance = cms.instances.create(
        **instance_columns(name=name, internal=False, dns_label=dns_label),
        k8s_name=ref.k8s_name,
        namespace=ref.namespace,
        postgres_version=base.postgres_version,
        storage_size_gb=max(storage_size_gb, source.storage_size_gb),
        image_type=source.image_type,
        run_id=run_id,
        tags={
            "pitr_source": source.k8s_name,
            PITR_BASE_BACKUP_TAG: str(base.id),
            "pitr_target": target_time.isoformat() if target_time else "latest",
        },
        source_postgres_version=base.postgres_version,
    )
    try:
        cms.base_backups.hold(instance.id, base.id)
        platform.ensure_instance_secret(ref, cms.base_backups.password(base.id))
        platform.create_volume(ref, instance.storage_size_gb)
        log(f"restoring {ref.k8s_name} from base backup {base.id} + {len(plan.segments)} WAL segment(s) "
            f"to {target_time.isoformat() if target_time else 'latest'}")  # fmt: skip
        run_pitr_job(platform, blob, ref, plan, base.postgres_version, RESTORE_TIMEOUT_SECONDS, log)
        platform.deploy_instance(
            DeploySpec(
                instance=ref,
                postgres_version=base.postgres_version,
                image_type=source.image_type,
                storage_size_gb=instance.storage_size_gb,
                dns_label=dns_label,
            )
        )
        platform.wait_ready(ref, READY_TIMEOUT_SECONDS)
        endpoints = platform.endpoints(ref)
        strings = connection_strings(endpoints, password=None)
        return cms.instances.transition(
            instance.id,
            InstanceState.running,
            reason=f"restored from base backup {base.id} to {plan.target_time or 'latest'}",
            ip_connection_string=strings.ip,
            dns_connection_string=strings.dns,
            external_ip=endpoints.external_ip,
        )
    except BaseException as error:
        cms.instances.transition(instance.id, InstanceState.failed, reason=str(error)[:2000])
        platform.delete_instance(ref)
        raise


def run_pitr_job(
    platform: PlatformResource,
    blob: BlobStorageResource,
    ref: InstanceRef,
    plan: RecoveryPlanFile,
    postgres_version: str,
    timeout_seconds: int,
    log: LogSink,
) -> None:
    """restore-pitr.sh into the instance's volume from `plan` (written beside it for the job, with
    its sha256 in the job's env; both removed afterwards)."""
    plan_name = plan_blob(ref)
    job_name = f"restore-{ref.k8s_name}"
    raw = plan.model_dump_json().encode()
    blob.write_bytes(plan_name, raw, overwrite=True)
    try:
        platform.run_job(
            JobSpec(
                kind=JobKind.restore,
                name=job_name,
                script="restore-pitr.sh",
                instance=ref,
                env=job_env(
                    PitrRestoreFetchEnv(
                        BLOB_URL=blob.container_url,
                        PLAN_BLOB=plan_name,
                        PLAN_SHA256=hashlib.sha256(raw).hexdigest(),
                        POSTGRES_VERSION=postgres_version,
                        TRANSFER_STALL_SECONDS=blob.transfer_stall_seconds,
                    ),
                    PitrRestoreServeEnv(),
                ),
                blob_sas=blob.read_grant(
                    "", [plan_name, plan.base.blob, *(s.blob for s in plan.segments)], timeout_seconds
                ),
                timeout_seconds=timeout_seconds,
            ),
            log,
        )
    finally:
        platform.delete_job(job_name, ref.namespace)
        blob.delete_prefix(plan_name.rsplit("/", 1)[0])


class RestoreToTimeConfig(NewInstanceFields, dg.Config):
    """The new instance as a restore request names it, from an instance's history."""

    source_instance: str = Field(description="The instance whose history is restored (k8s_name or id)")
    target_time: str | None = Field(
        default=None, description="ISO 8601 timestamp with a time zone; empty: `latest` (everything archived)"
    )


@dg.op(description="Refused before anything is created when the target is outside the window")
def restore_to_time_op(
    context: dg.OpExecutionContext,
    config: RestoreToTimeConfig,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> str:
    try:
        instance = restore_to_time(
            cms,
            blob,
            platform,
            source_instance=config.source_instance,
            name=config.name,
            dns_label=config.dns_label,
            target_time=parse_target_time(config.target_time),
            namespace=config.namespace,
            storage_size_gb=config.storage_size_gb,
            run_id=context.run_id,
            log=context.log.info,
        )
    except ValidationFailed as error:
        raise dg.Failure(str(error)) from None
    return instance.k8s_name


def restore_to_time_run_config(config: RestoreToTimeConfig) -> dg.RunConfig:
    return op_run_config(restore_to_time_op, config)


restore_to_time_job = one_op_job(
    restore_to_time_op, "restore_to_time", RESTORE_KIND, "A new instance restored to a point in time (docs/pitr.md)"
)
