"""Deleting an instance this system created: its server, service, volume and secret go, the row
ends `deleted` (with events) and its DNS label is free again.

"Created by this system" means made by a restore (the `restore_instance` job or a drill built on
it): the row has a `source_image_id` and the `request_key` tag `create_instance_record` writes,
or, for a point-in-time restore (no image row behind it), the `pitr_base_backup` tag.
Instances registered from elsewhere (e.g. a backup source) are refused unless `force`.
The DNS label is reserved only by creating or running rows (`instances_dns_name_active_key`,
`cms.instances.dns_name_in_use`): the row leaves both at `deleting`, so a new restore may take the label.
"""

from __future__ import annotations

from records import Instance, InstanceState, LogSink, ValidationFailed
from records.wal import PITR_BASE_BACKUP_TAG
from resources.cms import CMSResource
from resources.platform.base import PlatformResource
from toygres_pipelines.restores.steps import instance_ref, restore_job_name
from toygres_pipelines.shared.tags import REQUEST_KEY

DELETABLE = (InstanceState.running, InstanceState.stopped, InstanceState.failed, InstanceState.deleting)


def created_by_restore(instance: Instance) -> bool:
    if instance.source_image_id is not None and REQUEST_KEY in instance.tags:
        return True
    return bool(instance.tags.get(PITR_BASE_BACKUP_TAG))


def check_deletable(instance: Instance, force: bool) -> None:
    """The rules a live instance must meet to be deleted (the CLI checks them before it asks)."""
    if instance.state not in DELETABLE:
        raise ValidationFailed(
            "instance",
            f"instance {instance.k8s_name!r} is {instance.state}: its restore run {instance.run_id} is still making "
            "it (a failed run removes what it made); terminate that run first",
        )
    if not force and not created_by_restore(instance):
        raise ValidationFailed(
            "force",
            f"instance {instance.k8s_name!r} was not created by a toygres restore (no source_image_id and "
            "request_key tag, no pitr_base_backup tag): pass force to delete it anyway",
        )


def delete_instance(
    cms: CMSResource,
    platform: PlatformResource,
    ref: str,
    *,
    force: bool = False,
    reason: str = "deleted on request",
    run_id: str | None = None,
    log: LogSink = lambda _: None,
) -> Instance:
    """Remove the instance's objects and mark it deleted. A failure leaves the row `deleting`;
    calling again finishes the job. An already deleted instance is returned as it is."""
    instance = cms.instances.find(ref)
    if instance is None:
        raise ValidationFailed("instance", f"no instance {ref!r} (an instance id or k8s_name)")
    if instance.state is InstanceState.deleted:
        log(f"instance {instance.k8s_name} is already deleted")
        return instance
    check_deletable(instance, force)
    if instance.state is not InstanceState.deleting:
        instance = cms.instances.transition(
            instance.id, InstanceState.deleting, reason=reason, run_id=run_id, expected=instance.state
        )
    try:
        platform.delete_job(restore_job_name(instance), instance.namespace)
    except Exception as error:  # noqa: BLE001 - a leftover job is the janitor's; the instance still goes
        log(f"restore job of {instance.k8s_name} not removed now: {error}")
    platform.delete_instance(instance_ref(instance))
    deleted = cms.instances.transition(
        instance.id,
        InstanceState.deleted,
        reason=f"{reason}: server, service, config, secret and volume removed",
        run_id=run_id,
        expected=InstanceState.deleting,
    )
    log(f"instance {instance.namespace}/{instance.k8s_name} deleted; DNS label {instance.dns_name or '-'} is free")
    return deleted
