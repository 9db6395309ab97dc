"""PITR's pure rules (records/wal.py) and how the domain joins the code location."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from records import ValidationFailed
from records.wal import (
    BaseBackup,
    RecoveryWindow,
    StoredSegment,
    find_gaps,
    newest_partial,
    parse_stored_name,
    parse_target_time,
    plan_wal_retention,
    segment_name,
    segment_number,
    segment_of_lsn,
    stored_segment_name,
)
from tests.helpers import base_backup_record


def stored(number: int, partial: bool = False, timeline: int = 1, system: str = "7") -> StoredSegment:
    name = segment_name(timeline, number)
    return StoredSegment(
        blob_name=f"wal/default/x/{system}/{timeline:08X}/{name}{'.partial' if partial else ''}.zst",
        segment=name,
        partial=partial,
        encrypted=False,
    )


def test_segment_names_and_numbers_round_trip_across_an_xlogid():
    assert segment_number("000000010000000200000003") == 0x203
    assert segment_name(1, 0x2FF) == "0000000100000002000000FF"
    assert segment_name(1, 0x300) == "000000010000000300000000"
    assert segment_of_lsn(1, "0/3000028") == "000000010000000000000003"
    with pytest.raises(ValidationFailed, match="segment"):
        segment_number("00000001000000020000000\n")


def test_gaps_are_found_and_a_partial_continues_the_sequence():
    assert find_gaps([stored(1), stored(2), stored(3, partial=True)]) == []
    [gap] = find_gaps([stored(1), stored(3)])
    assert (gap.after, gap.before) == (segment_name(1, 1), segment_name(1, 3))
    # A sequence that starts after the base backup's start segment is a gap too.
    [gap] = find_gaps([stored(5), stored(6)], since=segment_name(1, 3))
    assert (gap.after, gap.before) == (segment_name(1, 2), segment_name(1, 5))


def test_a_target_needs_a_zone_and_must_fall_in_the_window():
    assert parse_target_time("latest") is None and parse_target_time(None) is None
    with pytest.raises(ValidationFailed, match="target_time: needs a time zone"):
        parse_target_time("2026-12-04T05:00:00")
    with pytest.raises(ValidationFailed, match="target_time: not an ISO 8601"):
        parse_target_time("yesterday")
    start = datetime(2026, 12, 4, tzinfo=UTC)
    window = RecoveryWindow(earliest=start, latest=start + timedelta(hours=1))
    window.check(start + timedelta(minutes=5))
    with pytest.raises(ValidationFailed, match=r"outside the recoverable window 2026-12-04T00:00:00\+00:00 \.\. "):
        window.check(start - timedelta(seconds=1))


def base(start: int, at: datetime, system: str = "7", timeline: int = 1) -> BaseBackup:
    return base_backup_record(
        k8s_name="x",
        blob_path="base/x",
        postgres_version="15",
        system_identifier=system,
        timeline=timeline,
        start_segment=segment_name(timeline, start),
        consistent_at=at,
        sha256="0" * 64,
        created_at=at,
    )


def test_retention_keeps_every_segment_the_oldest_kept_base_backup_needs():
    now = datetime.now(UTC)
    old, mid, new = base(2, now - timedelta(days=14)), base(5, now - timedelta(days=7)), base(9, now)
    segments = {("7", 1): [stored(n) for n in range(1, 12)], ("8", 1): [stored(1, system="8")]}
    plan = plan_wal_retention([old, mid, new], segments, keep=2)
    assert plan.expired_backups == [old.id] and plan.kept_from == segment_name(1, 5)
    assert plan.expired_blobs == sorted(stored(n).blob_name for n in range(1, 5))  # another system untouched
    assert plan_wal_retention([], segments, keep=1).expired_blobs == []  # no base backup: nothing goes


def upload(number: int, read_at: datetime | None) -> StoredSegment:
    """A segment as the archiver stores it: finished (read_at None) or one partial upload."""
    name = stored_segment_name(segment_name(1, number), encrypted=False, partial_read_at=read_at)
    parsed = parse_stored_name(f"wal/default/x/7/00000001/{name}")
    assert parsed is not None
    return parsed.model_copy(update={"archived_at": read_at or datetime.now(UTC)})


def test_every_partial_upload_has_a_name_of_its_own_and_the_newest_is_planned():
    now = datetime.now(UTC)
    first, second = upload(3, now - timedelta(seconds=4)), upload(3, now - timedelta(seconds=2))
    assert first.blob_name != second.blob_name and first.partial and first.segment == segment_name(1, 3)
    assert first.blob_name.endswith(".partial." + (now - timedelta(seconds=4)).strftime("%Y%m%dT%H%M%S%fZ") + ".zst")
    legacy = parse_stored_name(f"wal/default/x/7/00000001/{segment_name(1, 3)}.partial.zst.age")
    assert legacy is not None and legacy.partial and legacy.encrypted  # archives written before still read
    assert newest_partial([second, upload(2, None), first]) == second
    assert parse_stored_name(f"wal/default/x/7/00000001/{segment_name(1, 3)}.partial.2026.zst") is None


def test_retention_removes_a_partial_upload_only_when_superseded_for_longer_than_the_grace():
    now = datetime.now(UTC)
    backup = base(2, now - timedelta(days=1))
    hours = [upload(3, now - timedelta(hours=h)) for h in (9, 8, 1)]  # three uploads of the partial 3
    finished_2, partial_2 = (
        upload(2, None).model_copy(update={"archived_at": now - timedelta(hours=9)}),
        upload(2, now - timedelta(hours=10)),
    )
    segments = {("7", 1): [partial_2, finished_2, *hours]}
    plan = plan_wal_retention([backup], segments, keep=1, partials_superseded_before=now - timedelta(hours=7))
    # 2's partial: superseded by its finished segment 9 h ago; 3's first: by the second, 8 h ago.
    # 3's second was superseded 1 h ago (a restore may still read it); the newest is never superseded.
    assert plan.expired_blobs == sorted([partial_2.blob_name, hours[0].blob_name])
    assert plan_wal_retention([backup], segments, keep=1).expired_blobs == []  # no grace given: none


def test_the_code_location_module_holds_one_definitions_with_the_pitr_domain():
    from dagster._core.workspace.autodiscovery import loadable_targets_from_python_module

    from toygres_pipelines.definitions import defs

    assert [t.attribute for t in loadable_targets_from_python_module("toygres_pipelines.definitions", None)] == ["defs"]
    jobs = {job.name for job in defs.resolve_all_job_defs()}
    assert {"base_backup", "restore_to_time", "check_wal_archives", "wal_retention", "pitr_drill"} <= jobs
    assert "wal_archivers" in {sensor.name for sensor in defs.sensors or []}


def test_the_point_in_time_launchpad_declares_a_new_instance_as_a_restore_request_does():
    import dagster as dg

    from records.requests import NewInstanceFields
    from toygres_pipelines.pitr.restore import (
        RestoreToTimeConfig,
        restore_to_time_job,
        restore_to_time_op,
        restore_to_time_run_config,
    )
    from toygres_pipelines.shared.run_config import op_config_fields

    fields = op_config_fields(restore_to_time_job, restore_to_time_op)
    assert set(fields) == {*NewInstanceFields.model_fields, "source_instance", "target_time"}
    for name, info in NewInstanceFields.model_fields.items():
        assert fields[name].description == info.description, name
    config = {"source_instance": "app-abcde", "name": "copy", "dns_label": "copy-db"}
    assert dg.validate_run_config(
        restore_to_time_job, restore_to_time_run_config(RestoreToTimeConfig(**config)).to_config_dict()
    )
    with pytest.raises(dg.DagsterInvalidConfigError, match="storage_size_gb"):
        dg.validate_run_config(
            restore_to_time_job,
            restore_to_time_run_config(
                RestoreToTimeConfig.model_construct(**config, storage_size_gb="big")
            ).to_config_dict(),
        )
