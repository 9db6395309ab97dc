"""The sensor `wal_archivers`: every running instance has a WAL archiver; an archiver whose
instance is no longer running is stopped, its slot dropped (when the server is still up)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from pydantic import BaseModel

from records import InstanceRef, InstanceState, LogSink
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PlatformResource, WalArchiverSpec

# The archivers' SAS: written again on every tick, so a day of sensor outage is survived.
ARCHIVER_SAS_TTL = timedelta(days=2)
RECONCILE_SECONDS = 30


class ArchiverReconciliation(BaseModel):
    started: list[str] = []
    removed: list[str] = []
    failed: dict[str, str] = {}

    def summary(self) -> str:
        parts = [f"{len(self.started)} started", f"{len(self.removed)} removed", f"{len(self.failed)} failed"]
        parts += [f"{name}: {reason}" for name, reason in self.failed.items()]
        return "; ".join(parts)


def reconcile_archivers(
    cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource, log: LogSink
) -> ArchiverReconciliation:
    done = ArchiverReconciliation()
    running = {
        InstanceRef(k8s_name=i.k8s_name, namespace=i.namespace) for i in cms.instances.list([InstanceState.running])
    }
    sas = blob.container_write_token(int(ARCHIVER_SAS_TTL.total_seconds()))
    for ref in sorted(running, key=lambda r: (r.namespace, r.k8s_name)):
        name = f"{ref.namespace}/{ref.k8s_name}"
        try:  # one instance that cannot be archived never stops the others
            spec = WalArchiverSpec(
                instance=ref, container_url=blob.container_url, blob_sas=sas, age_recipient=platform.age_recipient
            )
            if platform.ensure_wal_archiver(spec):
                done.started.append(name)
                log(f"wal archiver of {name} started")
        except Exception as error:  # noqa: BLE001 - named in the summary, retried next tick
            done.failed[name] = f"{type(error).__name__}: {error}"
    for ref in platform.wal_archivers():
        if ref in running:
            continue
        name = f"{ref.namespace}/{ref.k8s_name}"
        try:
            platform.remove_wal_archiver(ref)
            done.removed.append(name)
            log(f"wal archiver of {name} removed (instance not running)")
        except Exception as error:  # noqa: BLE001
            done.failed[name] = f"{type(error).__name__}: {error}"
    return done


@dg.sensor(
    name="wal_archivers",
    minimum_interval_seconds=RECONCILE_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Every running instance streams its WAL into blob storage (docs/pitr.md); archivers of "
    "instances no longer running are removed and their replication slots dropped.",
)
def wal_archivers(
    context: dg.SensorEvaluationContext, cms: CMSResource, blob: BlobStorageResource, platform: PlatformResource
):
    return dg.SkipReason(reconcile_archivers(cms, blob, platform, context.log.info).summary())
