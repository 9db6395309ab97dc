"""The checks the UI shows, evaluated by the jobs and schedules that run them, against a real CMS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from records import InstanceState
from records.drills import DrillResult
from records.freshness import BASE_BACKUP_DAY, PITR_DRILL_DAY, drill_weekday, weekday_for
from records.requests import ImageRequestFields
from records.wal import BaseBackupResult
from tests import helpers
from toygres_pipelines.domains import domain_definitions
from toygres_pipelines.drills.checks import size_result
from toygres_pipelines.drills.jobs import drill_config_of
from toygres_pipelines.images.assets import IMAGE_PARTITIONS
from toygres_pipelines.images.jobs import backup_run_config
from toygres_pipelines.settings import Settings
from toygres_pipelines.shared.tags import INSTANCE_TAG, KIND_TAG

pytestmark = pytest.mark.integration


def definitions(resources, settings: Settings | None = None) -> tuple[dg.Definitions, dg.Definitions]:
    automation = domain_definitions(settings or Settings())
    defs = dg.Definitions.merge(automation, dg.Definitions(resources=resources))
    return defs, automation


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def set_image(cms, image_id, **columns) -> None:
    assignments = ", ".join(f"{name} = %s" for name in columns)
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE toygres_cms.images SET {assignments} WHERE id = %s", [*columns.values(), image_id])


def test_a_backup_reports_verified_and_size_plausible_on_its_partition(resources, cms, source):
    defs, _ = definitions(resources)
    instance = dg.DagsterInstance.ephemeral()
    key = f"{source.k8s_name}__checked"
    instance.add_dynamic_partitions(IMAGE_PARTITIONS, [key])
    request = ImageRequestFields(image_name=key, source_instance=str(source.id))
    result = defs.resolve_job_def("backup_image").execute_in_process(
        run_config=backup_run_config(request), partition_key=key, instance=instance
    )
    assert result.success
    found = evaluations(result)
    assert found.keys() == {"verified", "size_plausible", "restorable"}  # the fleet's checks are not a backup's
    assert not found["restorable"].passed and "never been drilled" in found["restorable"].description
    assert found["restorable"].partition == key
    assert found["size_plausible"].passed and found["size_plausible"].partition == key
    assert found["size_plausible"].description == "first image of its instance"


def test_an_image_more_than_double_its_previous_one_warns(resources, cms, source):
    earlier = helpers.catalogued_image(cms, source, f"{source.k8s_name}__small")
    later = helpers.catalogued_image(cms, source, f"{source.k8s_name}__large")
    set_image(cms, earlier.id, backup_size_bytes=1000, created_at=datetime.now(UTC) - timedelta(days=1))
    set_image(cms, later.id, backup_size_bytes=2500)
    evaluation = size_result(cms, later.name)
    assert not evaluation.passed and evaluation.severity is dg.AssetCheckSeverity.WARN
    assert "more than double the previous image's 1000" in evaluation.description
    assert evaluation.metadata["previous_image"].value == earlier.name


def test_a_new_instance_passes_the_freshness_checks_during_its_grace_period(resources, cms, source):
    """The source was registered just now: no image and no drill yet is no offence (issue 23)."""
    defs, _ = definitions(resources, Settings(drill_freshness_severity="ERROR"))
    found = evaluations(
        defs.resolve_job_def("check_freshness").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    assert found["backups_fresh"].passed and found["drills_fresh"].passed


def test_a_stale_instance_fails_the_freshness_checks_by_name(resources, cms, source):
    defs, _ = definitions(resources, Settings(drill_freshness_severity="ERROR", new_instance_grace_hours=0))
    check_freshness = defs.resolve_job_def("check_freshness")

    result = check_freshness.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    found = evaluations(result)
    assert not found["backups_fresh"].passed and found["backups_fresh"].severity is dg.AssetCheckSeverity.ERROR
    assert f"{source.k8s_name} (no ready image)" in found["backups_fresh"].description
    assert not found["drills_fresh"].passed and found["drills_fresh"].severity is dg.AssetCheckSeverity.ERROR
    assert f"{source.k8s_name} (no successful drill)" in found["drills_fresh"].description

    ready = helpers.catalogued_image(cms, source, f"{source.k8s_name}__recent")
    found = evaluations(check_freshness.execute_in_process(instance=dg.DagsterInstance.ephemeral()))
    assert found["backups_fresh"].passed and found["backups_fresh"].metadata["stale_instances"].value == 0

    set_image(cms, ready.id, ready_at=datetime.now(UTC) - timedelta(hours=30))
    found = evaluations(check_freshness.execute_in_process(instance=dg.DagsterInstance.ephemeral()))
    assert not found["backups_fresh"].passed
    assert f"{source.k8s_name} (newest ready image 30.0 h old (window 26.0 h))" in found["backups_fresh"].description


def test_the_weekly_schedule_drills_an_instance_on_its_day_only(resources, cms, source):
    defs, automation = definitions(resources)
    ready = helpers.catalogued_image(cms, source, f"{source.k8s_name}__weekly")
    schedule = helpers.schedule_named(automation, "weekly_drills")
    monday = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    day = drill_weekday(source.k8s_name)
    for offset in range(7):
        when = monday + timedelta(days=offset)
        with dg.build_schedule_context(scheduled_execution_time=when, resources=resources) as context:
            result = schedule.evaluate_tick(context)
        if offset == day:
            [request] = result.run_requests
            assert drill_config_of(request.run_config) == {"image": str(ready.id)}
            assert request.run_key == f"drill-{ready.name}-{when:%Y%m%d}"
            assert request.tags["toygres/kind"] == "drill"
        else:
            assert not result.run_requests


@pytest.mark.parametrize(
    ("kind", "requested"), [("backup", True), ("restore", True), ("drill", True), ("checks", False)]
)
def test_the_fleet_checks_run_after_every_successful_backup_restore_and_drill(kind, requested):
    """Not only hourly: a finished backup, restore or drill changes the fleet, so its checks run then
    (a run of the checks themselves does not start another one)."""
    from toygres_pipelines.shared.tags import KIND_TAG

    @dg.op
    def noop():
        pass

    @dg.job(name=f"some_{kind}", tags={KIND_TAG: kind})
    def some_job():
        noop()

    instance = dg.DagsterInstance.ephemeral()
    done = some_job.execute_in_process(instance=instance)
    sensor = helpers.sensor_named(domain_definitions(Settings()), "fleet_checks_after_runs")
    [record] = instance.get_records_for_run(done.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS).records
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(done.run_id),
    )
    result = sensor(context)
    if not requested:
        assert result is None or isinstance(result, dg.SkipReason), result
        return
    assert isinstance(result, dg.RunRequest), result
    assert result.job_name == "check_freshness" and result.run_key == f"fleet-after-{done.run_id}"
    assert result.tags[KIND_TAG] == "checks"


@pytest.mark.parametrize(
    ("schedule_name", "work", "kind", "run_key"),
    [
        ("weekly_base_backups", BASE_BACKUP_DAY, "backup", "base-{name}-{day}"),
        ("weekly_pitr_drills", PITR_DRILL_DAY, "drill", "pitr-drill-{name}-{day}"),
    ],
)
def test_the_weekly_pitr_schedules_run_an_instance_on_its_day_only_with_its_kind_and_instance(
    resources, cms, source, platform, pagila_ref, schedule_name, work, kind, run_key
):
    reserved = cms.base_backups.reserve(source, platform.read_instance_password(pagila_ref), None)
    cms.base_backups.finish(reserved.id, BaseBackupResult(
        system_identifier="7000000000000000001", timeline=1, start_segment="000000010000000000000002",
        consistent_at=datetime(2026, 11, 20, tzinfo=UTC), size_bytes=1, sha256="0" * 64,
        postgres_version=source.postgres_version, files=["base.tar.zst"],
    ))  # fmt: skip
    defs, automation = definitions(resources)
    schedule = helpers.schedule_named(automation, schedule_name)
    monday = datetime(2026, 11, 23, 5, 45, tzinfo=UTC)
    for offset in range(7):
        when = monday + timedelta(days=offset)
        with dg.build_schedule_context(scheduled_execution_time=when, resources=resources) as context:
            requests = list(schedule.evaluate_tick(context).run_requests or [])
        if offset == weekday_for(source.k8s_name, work):
            [request] = requests
            assert request.run_key == run_key.format(name=source.k8s_name, day=when.date().isoformat())
            assert request.tags[KIND_TAG] == kind
            assert request.tags[INSTANCE_TAG] == source.k8s_name
        else:
            assert requests == []


def test_the_fleet_check_shows_every_instance_on_one_table(resources, cms, source):
    """The fleet on one page (issue 23): each running instance, its status, newest image and age,
    last drill, its result and recovery time, in the backups_fresh evaluation the fleet's Checks tab shows."""
    ready = helpers.catalogued_image(cms, source, f"{source.k8s_name}__tabled")
    drill = helpers.add_drill(cms, ready, "run-tabled")
    cms.drills.finish(drill.id, DrillResult.passed, "restored", recovery_seconds=12.5)
    stale = helpers.add_instance(cms, "stale-abcde", state=InstanceState.running)
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE toygres_cms.instances SET created_at = now() - interval '3 days' WHERE id = %s", [stale.id]
        )
    defs, _ = definitions(resources)
    found = evaluations(
        defs.resolve_job_def("check_freshness").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    )
    table = found["backups_fresh"].metadata["fleet"]
    assert isinstance(table, dg.TableMetadataValue)
    assert [c.name for c in table.schema.columns] == [
        "instance", "status", "newest_image", "image_age_hours", "last_drill", "drill_result", "recovery_seconds"
    ]  # fmt: skip
    rows = {r.data["instance"]: r.data for r in table.records}
    assert rows[source.k8s_name]["newest_image"] == ready.name
    assert rows[source.k8s_name]["drill_result"] == "passed" and rows[source.k8s_name]["recovery_seconds"] == 12.5
    assert rows[source.k8s_name]["status"] == "new"  # registered just now: within its grace period
    assert rows["stale-abcde"]["newest_image"] is None and "no ready image" in rows["stale-abcde"]["status"]
