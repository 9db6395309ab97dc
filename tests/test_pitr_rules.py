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
    parse_target_time,
    plan_wal_retention,
    segment_name,
    segment_number,
    segment_of_lsn,
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
