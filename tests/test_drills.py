"""Restore drills against real PostgreSQL, Azurite and azcopy: restore into a scratch instance,
compare row counts with the manifest, record, delete the scratch instance."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import dagster as dg
import psycopg
import pytest

from records import ImageState, InstanceState
from records.drills import DrillResult
from resources.platform.postgres_server import postgres_bindir
from tests.helpers import add_drill, materialize_image
from tests.test_restore import restore
from toygres_pipelines.drills.checks import RESTORABLE_CHECK
from toygres_pipelines.drills.janitor import settle_abandoned_drills
from toygres_pipelines.drills.jobs import drill_run_config, restore_drill
from toygres_pipelines.restores.steps import instance_ref

pytestmark = pytest.mark.integration


@pytest.fixture
def ready_image(resources, cms, source):
    assert materialize_image(resources, f"{source.k8s_name}__drilled").success
    return cms.images.find(f"{source.k8s_name}__drilled")


def drill(resources, image_ref: str, instance: dg.DagsterInstance):
    return restore_drill.execute_in_process(
        run_config=drill_run_config(image_ref, ready_timeout_seconds=60),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def check_evaluations(instance: dg.DagsterInstance, check_name: str) -> list[dg.AssetCheckEvaluation]:
    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), ascending=True
    )
    found = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return [e for e in found if e.check_name == check_name]


def assert_scratch_gone(cms, platform, run_id: str) -> None:
    scratch = cms.instances.find_by_run(run_id)
    assert scratch is not None and scratch.k8s_name.startswith("drill-")
    assert scratch.state is InstanceState.deleted
    assert not platform.instance_exists(instance_ref(scratch))


def test_drill_of_pagila_passes_records_its_recovery_time_and_deletes_the_scratch_instance(
    resources, cms, platform, ready_image
):
    instance = dg.DagsterInstance.ephemeral()
    started = time.monotonic()
    result = drill(resources, ready_image.name, instance)
    took = time.monotonic() - started
    print(f"\ndrill of {ready_image.name}: launch to verified and torn down in {took:.1f}s")
    assert result.success

    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.passed and row.run_id == result.run_id
    assert row.source_instance_id == ready_image.source_instance_id
    assert 0 < row.recovery_seconds <= took
    assert row.seconds_per_gib is not None and row.seconds_per_gib > 0
    assert row.backup_size_bytes == ready_image.backup_size_bytes
    assert row.tables_checked and row.tables_checked > 20
    assert row.reason and "pg_amcheck clean" in row.reason  # heap and btree of every database checked
    assert_scratch_gone(cms, platform, result.run_id)

    [evaluation] = check_evaluations(instance, RESTORABLE_CHECK)
    assert evaluation.passed and evaluation.partition == ready_image.name
    assert evaluation.metadata["recovery_seconds"].value == pytest.approx(row.recovery_seconds)
    assert evaluation.metadata["tables_checked"].value == row.tables_checked


def test_a_parallel_mode_image_records_its_counts_and_its_drill_compares_them(resources, cms, platform, source):
    key = f"{source.k8s_name}__drilled-parallel"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    instance = dg.DagsterInstance.ephemeral()
    result = drill(resources, image.name, instance)
    assert result.success
    [row] = cms.drills.list(image_id=image.id)
    assert row.result is DrillResult.passed, row.reason
    assert row.tables_checked and row.tables_checked > 20
    assert_scratch_gone(cms, platform, result.run_id)


def valid_dump_of_other_data(source_dsn) -> bytes:
    """pagila without the rows of one partition: a dump pg_restore takes without complaint."""
    return subprocess.run(
        [
            str(postgres_bindir() / "pg_dump"),
            "-Fc",
            "--exclude-table-data=public.payment_p2022_01",
            "--dbname",
            source_dsn("pagila"),
        ],
        capture_output=True,
        check=True,
    ).stdout


def rewrite_manifest(cms, blob, image, change) -> None:
    """Apply `change` to the manifest document and record the new manifest's checksum in the CMS,
    so that every byte verifies again."""
    document = json.loads(blob.read_bytes(f"{image.blob_path}/manifest.json"))
    change(document)
    raw = json.dumps(document).encode()
    blob.write_bytes(f"{image.blob_path}/manifest.json", raw, overwrite=True)
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE toygres_cms.images SET backup_checksum = %s WHERE id = %s",
            (hashlib.sha256(raw).hexdigest(), image.id),
        )


def test_a_dump_swapped_for_valid_other_data_fails_the_drill_and_leaves_nothing_running(
    resources, cms, blob, platform, ready_image, source_dsn
):
    other = valid_dump_of_other_data(source_dsn)
    manifest, _ = blob.read_manifest(ready_image.blob_path)
    entry = next(f for f in manifest.files if f.database == "pagila")
    blob.write_bytes(f"{ready_image.blob_path}/{entry.path}", other, overwrite=True)

    def swap(document: dict) -> None:
        swapped = next(f for f in document["files"] if f["path"] == entry.path)
        swapped.update(sha256=hashlib.sha256(other).hexdigest(), size_bytes=len(other))

    rewrite_manifest(cms, blob, ready_image, swap)

    instance = dg.DagsterInstance.ephemeral()
    result = drill(resources, ready_image.name, instance)
    assert not result.success

    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.failed
    assert "public.payment_p2022_01: manifest" in row.reason and "restored 0" in row.reason
    assert_scratch_gone(cms, platform, result.run_id)
    [evaluation] = check_evaluations(instance, RESTORABLE_CHECK)
    assert not evaluation.passed and evaluation.partition == ready_image.name
    assert "public.payment_p2022_01" in evaluation.description


def test_an_image_whose_manifest_has_no_counts_still_restores_and_says_counts_were_not_compared(
    resources, cms, blob, platform, ready_image
):
    def as_format_1(document: dict) -> None:
        document["format_version"] = 1
        for entry in document["files"]:
            entry.pop("row_counts", None)

    rewrite_manifest(cms, blob, ready_image, as_format_1)

    instance = dg.DagsterInstance.ephemeral()
    result = drill(resources, ready_image.name, instance)
    assert result.success

    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.uncounted and "counts not compared" in row.reason
    assert row.recovery_seconds is not None
    assert_scratch_gone(cms, platform, result.run_id)
    [evaluation] = check_evaluations(instance, RESTORABLE_CHECK)
    assert evaluation.passed and evaluation.metadata["counts_compared"].value is False


def test_a_drill_whose_restore_fails_is_failed_with_the_reason_and_leaves_nothing(
    resources, cms, blob, platform, ready_image
):
    manifest, _ = blob.read_manifest(ready_image.blob_path)
    blob.write_bytes(f"{ready_image.blob_path}/{manifest.files[-1].path}", b"not a dump", overwrite=True)

    instance = dg.DagsterInstance.ephemeral()
    result = drill(resources, ready_image.name, instance)
    assert not result.success

    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.failed and row.reason.startswith("step run_restore_job failed")
    assert "checksum mismatch" in row.reason
    assert cms.images.get(ready_image.id).state is ImageState.corrupt  # as any restore of these bytes would
    scratch = cms.instances.find_by_run(result.run_id)
    assert scratch.state is InstanceState.deleted and not platform.instance_exists(instance_ref(scratch))
    [evaluation] = check_evaluations(instance, RESTORABLE_CHECK)
    assert not evaluation.passed


def test_the_janitor_deletes_the_scratch_instance_of_a_drill_whose_run_ended_without_finishing(
    resources, cms, platform, ready_image
):
    """A drill run killed after its scratch instance was running: no hook ran, the row says running."""
    instance = dg.DagsterInstance.ephemeral()
    restored = restore(
        resources, instance=instance, name="drill-killed", dns_label="drill-killed", source_image_id=ready_image.name
    )
    assert restored.success
    scratch = cms.instances.find_by_run(restored.run_id)
    assert scratch.state is InstanceState.running
    add_drill(cms, ready_image, restored.run_id)

    settled = settle_abandoned_drills(instance, cms, platform, log=print)

    assert [d.run_id for d in settled] == [restored.run_id]
    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.failed and "ended without finishing" in row.reason
    assert cms.instances.get(scratch.id).state is InstanceState.deleted
    assert not platform.instance_exists(instance_ref(scratch))
    assert settle_abandoned_drills(instance, cms, platform, log=print) == []


def test_the_janitor_deletes_a_scratch_instance_its_finished_drill_could_not_delete(
    resources, cms, platform, ready_image
):
    """The drill ended (its own removal failed, say) but its scratch instance is still there."""
    instance = dg.DagsterInstance.ephemeral()
    restored = restore(
        resources,
        instance=instance,
        name="drill-leftover",
        dns_label="drill-leftover",
        source_image_id=ready_image.name,
    )
    assert restored.success
    scratch = cms.instances.find_by_run(restored.run_id)
    row = add_drill(cms, ready_image, restored.run_id)
    cms.drills.finish(row.id, DrillResult.failed, "step finish_drill failed: platform unreachable")

    settle_abandoned_drills(instance, cms, platform, log=print)

    assert cms.instances.get(scratch.id).state is InstanceState.deleted
    assert not platform.instance_exists(instance_ref(scratch))
    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.failed and row.reason == "step finish_drill failed: platform unreachable"


def test_a_canceled_drill_run_is_settled_by_the_run_status_sensor(resources, cms, platform, ready_image):
    """Terminated while its scratch instance was running: the sensor settles it without waiting for the janitor."""
    from tests.helpers import sensor_named
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.settings import Settings

    instance = dg.DagsterInstance.ephemeral()
    restored = restore(
        resources,
        instance=instance,
        name="drill-canceled",
        dns_label="drill-canceled",
        source_image_id=ready_image.name,
    )
    assert restored.success
    scratch = cms.instances.find_by_run(restored.run_id)
    add_drill(cms, ready_image, restored.run_id)
    run = instance.get_run_by_id(restored.run_id)
    event = instance.report_run_canceled(run)

    sensor = sensor_named(domain_definitions(Settings()), "drill_run_canceled")
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(restored.run_id),
        resources=resources,
    )
    sensor(context)

    [row] = cms.drills.list(image_id=ready_image.id)
    assert row.result is DrillResult.failed and "canceled" in row.reason
    assert cms.instances.get(scratch.id).state is InstanceState.deleted
    assert not platform.instance_exists(instance_ref(scratch))


def test_pg_amcheck_of_a_drill_runs_with_the_deployments_settings_not_the_tenants(platform, pagila_ref, source_dsn):
    """A scratch instance keeps the tenant's settings: a database that is read-only by default and
    cuts statements at 1 ms is the tenant's to have, and must not fail the drill's pg_amcheck
    (which installs amcheck where it is missing, then reads every page)."""
    from toygres_pipelines.drills.amcheck import AMCHECK_CLEAN, amcheck

    version = platform.server_record(pagila_ref).postgres_version
    override = "-c default_transaction_read_only=off"
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS settled")
        admin.execute("CREATE DATABASE settled")
    try:
        with psycopg.connect(source_dsn("settled"), autocommit=True) as tenant:
            tenant.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 200000) g")
            tenant.execute("CREATE INDEX ON t (g)")
            tenant.execute("ALTER DATABASE settled SET default_transaction_read_only = on")
            tenant.execute("ALTER DATABASE settled SET statement_timeout = '1ms'")
        said = amcheck(platform, pagila_ref, version)
        assert said == AMCHECK_CLEAN, said
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS settled WITH (FORCE)")
            databases = [row[0] for row in admin.execute("SELECT datname FROM pg_database WHERE datallowconn")]
        for database in databases:  # what --install-missing left in the shared source
            with psycopg.connect(source_dsn(database), autocommit=True, options=override) as conn:
                conn.execute("DROP EXTENSION IF EXISTS amcheck")
