"""An instance's recoverable window and archive lag in one line, for the listings that are not
about PITR (`status`, `images`); `pitr-status` says more (gaps, the archiver's error)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from records import Instance
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.wal_archive import list_timelines
from toygres_pipelines.pitr.window import window_of


class PitrSummary(BaseModel):
    earliest: datetime | None = None
    latest: datetime | None = None
    lag_seconds: float | None = None

    def window_text(self, when) -> str | None:
        return f"{when(self.earliest)} .. {when(self.latest)}" if self.earliest and self.latest else None


def pitr_summary(cms: CMSResource, blob: BlobStorageResource, instance: Instance, now: datetime) -> PitrSummary:
    state = window_of(cms, blob, instance)
    archived = [t.covered_until for t in list_timelines(blob, instance.namespace, instance.k8s_name)]
    newest = max((at for at in archived if at is not None), default=None)
    return PitrSummary(
        earliest=state.window.earliest if state.window else None,
        latest=state.window.latest if state.window else None,
        lag_seconds=None if newest is None else max(0.0, (now - newest).total_seconds()),
    )


def pitr_summaries(cms: CMSResource, instances: list[Instance], now: datetime) -> dict[str, PitrSummary] | None:
    """By k8s_name; None when blob storage is not configured here (the listing then says so)."""
    from toygres_pipelines.resources_from_env import blob_from_env

    try:
        blob = blob_from_env().process_config_and_initialize()
    except Exception:  # noqa: BLE001 - no blob settings in this shell: the CMS columns still show
        return None
    return {instance.k8s_name: pitr_summary(cms, blob, instance, now) for instance in instances}
