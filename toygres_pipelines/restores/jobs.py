"""`restore_instance`: an image becomes a new, running, verified instance, one op per step."""

from typing import Any

import dagster as dg
from pydantic import BaseModel

from records import (
    ConnectionStrings,
    Endpoints,
    Instance,
    InstanceState,
    ValidationFailed,
)
from records.requests import RestoreRequestFields
from records.rows import instance_columns
from records.wal import PITR_BASE_BACKUP_TAG
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import DeploySpec, PlatformResource
from toygres_pipelines.forms import run_config_values
from toygres_pipelines.pitr.restore import run_pitr_job
from toygres_pipelines.restores.config import RestoreConfig, RestorePlan, check_timeouts, plan_restore
from toygres_pipelines.restores.steps import (
    check_connection,
    check_url,
    clean_up_failed_restore,
    dangerous_content,
    instance_ref,
    mark_image_corrupt,
    restore_job_spec,
    verification_failure,
)
from toygres_pipelines.shared import asset_keys
from toygres_pipelines.shared.connections import connection_strings
from toygres_pipelines.shared.run_config import RunConfigLike, op_config_fields, op_config_of, op_run_config
from toygres_pipelines.shared.tags import KIND_TAG, REQUEST_ID_TAG, REQUEST_KEY, RESTORE_KIND

CONNECT_TIMEOUT_SECONDS = 120


class TimedPlan(BaseModel):
    plan: RestorePlan
    job_timeout_seconds: int
    ready_timeout_seconds: int


class InstanceAddress(BaseModel):
    """Where the instance answers; connection strings here carry no password."""

    endpoints: Endpoints
    strings: ConnectionStrings


def invalid_request(error: ValidationFailed) -> dg.Failure:
    """One short failure naming the field, the rule and the value: no chained traceback under it."""
    return dg.Failure(
        description=f"Invalid restore request: {error}",
        metadata={"field": error.field, "rule": error.rule},
        allow_retries=False,
    )


def request_key(context: dg.OpExecutionContext) -> str:
    """Same request, same key: the request id from a sensor, else the root run of re-executions."""
    return context.run.tags.get(REQUEST_ID_TAG) or context.run.root_run_id or context.run_id


def still_creating(cms: CMSResource, instance: Instance) -> Instance:
    current = cms.instances.get(instance.id)
    if current is None or current.state is not InstanceState.creating:
        state = current.state if current else "gone"
        raise dg.Failure(
            description=f"instance {instance.k8s_name} is {state}: launch the restore again as a new run "
            "instead of re-executing a failed one from the failed step",
            allow_retries=False,
        )
    return current


def refuse_while_alive(context: dg.OpExecutionContext, earlier: Instance, key: str) -> None:
    """Only a run that has ended may have its half-made instance taken over."""
    if not earlier.run_id or earlier.run_id == context.run_id:
        return
    run = context.instance.get_run_by_id(earlier.run_id)
    if run is not None and not run.is_finished:
        raise dg.Failure(
            description=f"request {key} is being restored by run {earlier.run_id}, which is still {run.status.value}: "
            f"wait for it to end (or terminate it) before launching the request again",
            allow_retries=False,
        )


@dg.op(
    description="Check the request and the image (the databases named against its manifest); image_type from the "
    "image, the PostgreSQL major from the image or the newer one asked for"
)
def validate_request(
    context: dg.OpExecutionContext,
    config: RestoreConfig,
    cms: CMSResource,
    platform: PlatformResource,
    blob: BlobStorageResource,
) -> TimedPlan:
    try:
        check_timeouts(config)
        plan = plan_restore(config.request_fields(), cms, platform, blob)
    except ValidationFailed as error:
        raise invalid_request(error) from None
    upgrade = (
        f", upgraded from PostgreSQL {plan.source_postgres_version}"
        if plan.postgres_version != plan.source_postgres_version
        else ""
    )
    chosen = (
        "every database"
        if plan.selected_databases is None
        else f"database(s) {', '.join(map(repr, plan.selected_databases))}"
    )
    context.log.info(
        f"restoring {chosen} and the roles of image {plan.image_name} ({plan.image_type}, PostgreSQL "
        f"{plan.postgres_version}{upgrade}) into {plan.namespace}/{plan.k8s_name}, {plan.storage_size_gb} GiB"
    )
    return TimedPlan(
        plan=plan, job_timeout_seconds=config.job_timeout_seconds, ready_timeout_seconds=config.ready_timeout_seconds
    )


@dg.op(description="Create the CMS instance row (creating); this reserves the DNS name")
def create_instance_record(
    context: dg.OpExecutionContext, timed: TimedPlan, cms: CMSResource, platform: PlatformResource
) -> Instance:
    plan, key = timed.plan, request_key(context)
    for earlier in cms.instances.find_by_tag(REQUEST_KEY, key):
        if earlier.state is InstanceState.running:
            raise dg.Failure(description=f"request {key} already restored as {earlier.k8s_name}", allow_retries=False)
        if earlier.state is InstanceState.creating:
            refuse_while_alive(context, earlier, key)
            clean_up_failed_restore(
                cms,
                platform,
                earlier,
                reason=f"superseded by run {context.run_id} of the same request",
                log=context.log.info,
            )
    try:
        return cms.instances.create(
            **instance_columns(
                name=plan.request.name, internal=plan.request.internal, dns_label=plan.request.dns_label
            ),
            k8s_name=plan.k8s_name,
            namespace=plan.namespace,
            postgres_version=plan.postgres_version,
            source_postgres_version=plan.source_postgres_version,
            storage_size_gb=plan.storage_size_gb,
            image_type=plan.image_type,
            source_image_id=None if plan.point_in_time else plan.image_id,  # a base backup is no image row
            run_id=context.run_id,
            tags={REQUEST_KEY: key, **({PITR_BASE_BACKUP_TAG: str(plan.image_id)} if plan.point_in_time else {})},
        )
    except ValidationFailed as error:
        raise invalid_request(error) from None


@dg.op(description="Decrypt the source image's password into the new instance's Secret")
def create_instance_secret(
    instance: Instance, timed: TimedPlan, cms: CMSResource, platform: PlatformResource
) -> Instance:
    instance = still_creating(cms, instance)
    plan = timed.plan
    password = cms.base_backups.password(plan.image_id) if plan.point_in_time else cms.images.password(plan.image_id)
    platform.ensure_instance_secret(instance_ref(instance), password)
    return instance


@dg.op(description="Create the volume, sized max(requested, image's storage size)")
def create_volume(instance: Instance, cms: CMSResource, platform: PlatformResource) -> Instance:
    instance = still_creating(cms, instance)
    platform.create_volume(instance_ref(instance), instance.storage_size_gb)
    return instance


@dg.op(
    description="Download, verify sha256 against the manifest and the CMS, initdb, roles, pg_restore",
    pool="toygres-restore",  # however the run was launched, restores share this pool's slots
)
def run_restore_job(
    context: dg.OpExecutionContext,
    instance: Instance,
    timed: TimedPlan,
    cms: CMSResource,
    blob: BlobStorageResource,
    platform: PlatformResource,
) -> Instance:
    instance = still_creating(cms, instance)
    if timed.plan.point_in_time is not None:  # point in time: restore-pitr.sh (docs/pitr.md)
        if timed.plan.recovery is None:
            raise dg.Failure("target_time: the restore was planned without its WAL (no blob storage)")
        try:
            cms.base_backups.hold(instance.id, timed.plan.image_id)
        except ValidationFailed as error:
            raise invalid_request(error) from None
        run_pitr_job(platform, blob, instance_ref(instance), timed.plan.recovery, timed.plan.postgres_version,
                     timed.job_timeout_seconds, context.log.info)  # fmt: skip
        return instance
    try:
        spec = restore_job_spec(timed.plan, instance, blob, timed.job_timeout_seconds)
        result = platform.run_job(spec, context.log.info)
    except Exception as error:
        why = verification_failure(error)
        if why is not None:
            mark_image_corrupt(cms, timed.plan, why, context.run_id, context.log.warning)
        raise
    findings = dangerous_content(result.log_tail)
    context.add_output_metadata(
        {"dangerous_content": dg.MetadataValue.md("\n".join(f"- {f}" for f in findings) if findings else "none found")}
    )
    if findings:
        context.log.warning(f"the image's code that ran with the server's rights: {len(findings)} finding(s)")
    try:
        platform.delete_job(spec.name, instance.namespace)
    except Exception as error:  # noqa: BLE001 - the restore worked: a leftover job is the janitor's
        context.log.warning(f"could not remove job {spec.name} now ({error}); the janitor removes it")
    return instance


@dg.op(description="Deploy Postgres from the volume: Secret, pg_hba ConfigMap, server, Service")
def deploy_instance(instance: Instance, timed: TimedPlan, cms: CMSResource, platform: PlatformResource) -> Instance:
    instance = still_creating(cms, instance)
    plan = timed.plan
    platform.deploy_instance(
        DeploySpec(
            instance=instance_ref(instance),
            postgres_version=plan.postgres_version,
            image_type=plan.image_type,
            storage_size_gb=instance.storage_size_gb,
            internal=plan.request.internal,
            dns_label=plan.request.dns_label,
        )
    )
    return instance


@dg.op(description="Wait until the server accepts authenticated connections")
def wait_until_ready(instance: Instance, timed: TimedPlan, platform: PlatformResource) -> Instance:
    platform.wait_ready(instance_ref(instance), timed.ready_timeout_seconds)
    return instance


@dg.op(description="Build the connection strings (the password stays in the Secret)")
def build_connection_strings(
    context: dg.OpExecutionContext, instance: Instance, platform: PlatformResource
) -> InstanceAddress:
    endpoints = platform.endpoints(instance_ref(instance))
    address = InstanceAddress(endpoints=endpoints, strings=connection_strings(endpoints, password=None))
    context.log.info(
        f"instance answers at {address.strings.ip}" + (f" and {address.strings.dns}" if address.strings.dns else "")
    )
    return address


@dg.op(
    description="SELECT version() over the new address; cloud load balancer DNS can take 60-90 s",
    retry_policy=dg.RetryPolicy(max_retries=4, delay=2, backoff=dg.Backoff.EXPONENTIAL),
)
def test_connection(
    context: dg.OpExecutionContext, instance: Instance, address: InstanceAddress, platform: PlatformResource
) -> str:
    password = platform.read_instance_password(instance_ref(instance))
    version = check_connection(check_url(address.endpoints, password), CONNECT_TIMEOUT_SECONDS)
    context.log.info(f"connected: {version}")
    return version


@dg.op(description="Mark the instance running with its connection strings and external address")
def mark_instance_running(
    context: dg.OpExecutionContext, instance: Instance, address: InstanceAddress, server_version: str, cms: CMSResource
) -> dg.Output[Instance]:
    still_creating(cms, instance)
    running = cms.instances.transition(
        instance.id,
        InstanceState.running,
        run_id=context.run_id,
        reason=f"restored and answering: {server_version}",
        ip_connection_string=address.strings.ip,
        dns_connection_string=address.strings.dns,
        external_ip=address.endpoints.external_ip,
    )
    connect = f"toygres-pipelines connect {running.k8s_name}"
    image = cms.images.get(running.source_image_id) if running.source_image_id else None
    context.log.info(
        f"instance {running.namespace}/{running.k8s_name} is running at {address.strings.ip}: connect with "
        f"`{connect}` (prints the psql command; add --show-password for one carrying the password, read from "
        f"the instance's Secret)"
    )
    return dg.Output(
        running,
        metadata={
            "instance_id": str(running.id),
            "k8s_name": running.k8s_name,
            "connection": address.strings.ip,
            "connect": connect,
            "source_image": image.name if image else str(running.source_image_id),
            "image asset": dg.MetadataValue.asset(asset_keys.IMAGE),
            "server_version": server_version,
        },
    )


@dg.failure_hook(required_resource_keys={"cms", "platform"})
def clean_up_failed_instance(context: dg.HookContext) -> None:
    """Whatever step failed: remove what this run created and mark its instance failed."""
    cms: CMSResource = context.resources.cms
    instance = cms.instances.find_by_run(context.run_id)
    if instance is None or instance.state is not InstanceState.creating:
        return
    reason = f"step {context.op.name} failed: {context.op_exception}"
    clean_up_failed_restore(cms, context.resources.platform, instance, reason=reason, log=context.log.info)


def restore_steps(timed):
    """Every step from a validated plan to a running instance, as ops of the calling job (the
    restore and the restore drill run the very same ones)."""
    instance = create_instance_record(timed)
    instance = create_instance_secret(instance, timed)
    instance = create_volume(instance)
    instance = run_restore_job(instance, timed)
    instance = deploy_instance(instance, timed)
    instance = wait_until_ready(instance, timed)
    address = build_connection_strings(instance)
    version = test_connection(instance, address)
    return mark_instance_running(instance, address, version)


@dg.job(
    description="Restore an image into a new instance: validate, create, restore, deploy, verify",
    tags={KIND_TAG: RESTORE_KIND},
    hooks={clean_up_failed_instance},
    executor_def=dg.in_process_executor,
)
def restore_instance():
    restore_steps(validate_request())


def restore_run_config(request: BaseModel, **overrides: Any) -> dg.RunConfig:
    """The run config of a restore request: the request's fields (forms.py), plus `overrides`
    (the image's id a sensor resolved, the job's own limits)."""
    values = run_config_values(request, RestoreRequestFields, **overrides)
    return restore_form_run_config(RestoreConfig(**values))


def restore_form_run_config(form: RestoreConfig) -> dg.RunConfig:
    """The run config of a filled launchpad form: the fields set on it, nothing else."""
    return op_run_config(validate_request, form)


def restore_config_of(run_config: RunConfigLike) -> dict[str, Any]:
    """What a launched restore run's config asks (`validate_request`'s config)."""
    return op_config_of(run_config, validate_request)


def restore_form_fields() -> dict[str, Any]:
    """The launchpad's fields of a restore (name -> dagster Field)."""
    return op_config_fields(restore_instance, validate_request)
