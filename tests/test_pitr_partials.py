"""Superseded partial WAL uploads are pruned every few minutes (docs/pitr.md), never one a running
restore's plan names, never the newest, never one superseded for less than the plan grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from records import InstanceRef
from records.wal import PlanBlob, PlanSegment, RecoveryPlanFile, segment_name, stored_segment_name, timeline_prefix
from tests.helpers import add_instance

SYSTEM = "7000000000000000007"


def put_upload(blob, k8s_name: str, number: int, read_at: datetime | None) -> str:
    """A segment upload as the archiver writes it (finished: read_at None) -> its blob name."""
    prefix = timeline_prefix("default", k8s_name, SYSTEM, 1)
    name = f"{prefix}/{stored_segment_name(segment_name(1, number), encrypted=False, partial_read_at=read_at)}"
    at = (read_at or datetime.now(UTC)).isoformat()
    blob._container.upload_blob(name, b"wal", metadata={"sha256": "0" * 64, "archived_at": at, "covered_until": at})
    return name


def put_plan(blob, restored: str, segments: list[str]) -> None:
    from toygres_pipelines.pitr.restore import plan_blob

    plan = RecoveryPlanFile(
        base=PlanBlob(blob="base/x/base.tar.zst", sha256="0" * 64, encrypted=False),
        segments=[PlanSegment(blob=s, segment=segment_name(1, 3), sha256="0" * 64, encrypted=False) for s in segments],
    )
    blob.write_bytes(plan_blob(InstanceRef(k8s_name=restored, namespace="default")), plan.model_dump_json().encode())


def test_superseded_partials_go_within_minutes_unless_a_running_plan_names_them(cms, blob):
    from toygres_pipelines.pitr.partials import prune_partials

    source = add_instance(cms, "writes-abcde")
    now = datetime.now(UTC)
    minutes = [put_upload(blob, source.k8s_name, 3, now - timedelta(minutes=m)) for m in (120, 100, 80, 60, 20, 1)]
    put_plan(blob, "restored-fghij", [minutes[1]])  # a restore planned 100 minutes ago, still running
    pruned = prune_partials(cms, blob, print, now=now)
    left = set(blob.list_names(f"wal/default/{source.k8s_name}"))
    # 120' (superseded 100' ago) and 80' (60' ago) go; 100' is planned; 60' and 20' were superseded
    # less than 30' ago (a restore planned then may not have written its plan yet); the newest stays.
    assert pruned == {f"default/{source.k8s_name}": 2}
    assert left == {minutes[1], minutes[3], minutes[4], minutes[5]}


def test_a_finished_segment_supersedes_its_partials(cms, blob):
    from toygres_pipelines.pitr.partials import prune_partials

    source = add_instance(cms, "fills-abcde")
    now = datetime.now(UTC)
    partial = put_upload(blob, source.k8s_name, 4, now - timedelta(hours=1))
    finished = put_upload(blob, source.k8s_name, 4, None)
    # Superseded just now: kept for the grace, gone after it.
    assert prune_partials(cms, blob, print, now=now) == {f"default/{source.k8s_name}": 0}
    assert prune_partials(cms, blob, print, now=now + timedelta(hours=1))[f"default/{source.k8s_name}"] == 1
    assert set(blob.list_names(f"wal/default/{source.k8s_name}")) == {finished}
    assert partial not in blob.list_names("wal/")


def test_an_unreadable_plan_stops_the_prune_before_anything_is_deleted(cms, blob):
    import pytest

    from toygres_pipelines.pitr.partials import prune_partials
    from toygres_pipelines.pitr.restore import plan_blob

    source = add_instance(cms, "unsure-abcde")
    now = datetime.now(UTC)
    names = [put_upload(blob, source.k8s_name, 3, now - timedelta(hours=h)) for h in (3, 2, 1)]
    blob.write_bytes(plan_blob(InstanceRef(k8s_name="broken-abcde", namespace="default")), b"{not json")
    with pytest.raises(ValueError, match="broken-abcde"):
        prune_partials(cms, blob, print, now=now)
    assert set(blob.list_names(f"wal/default/{source.k8s_name}")) == set(names)


def test_the_prune_runs_every_few_minutes():
    from toygres_pipelines.definitions import defs

    schedule = defs.get_schedule_def("wal_partials_prune_schedule")
    assert schedule.cron_schedule == "*/10 * * * *"
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "wal_partials_prune"
