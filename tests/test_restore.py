"""Restores through the Dagster job against real PostgreSQL, Azurite and azcopy."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from records import ImageState, InstanceState
from resources.platform.postgres_server import postgres_bindir
from tests import helpers
from tests.conftest import SOURCE_PASSWORD
from tests.helpers import cms_text, dagster_text, failure_text, materialize_image, run_logs
from toygres_pipelines.images.reverify import reverify_run_config
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import (
    REQUEST_ID_TAG,
    restore_form_fields,
    restore_form_run_config,
    restore_instance,
)
from toygres_pipelines.restores.steps import instance_ref

pytestmark = pytest.mark.integration


@pytest.fixture
def ready_image(resources, cms, source):
    assert materialize_image(resources, f"{source.k8s_name}__for-restore").success
    return cms.images.find(f"{source.k8s_name}__for-restore")


@pytest.fixture
def catalogued_image(cms, source):
    """A ready image row with no blobs: enough for requests that validation refuses."""
    return helpers.catalogued_image(cms, source, f"{source.k8s_name}__catalogued")


class RestoreFormWithPassword(RestoreConfig):
    password: str


def restore(resources, tags: dict | None = None, instance: dg.DagsterInstance | None = None, **config):
    config.setdefault("name", "restored")
    config.setdefault("dns_label", "restored-db")
    config.setdefault("storage_size_gb", 1)
    config.setdefault("ready_timeout_seconds", 60)
    # A field the form lacks (a typed `password`) is sent as typed: the launchpad's schema refuses it.
    form = RestoreConfig if set(config) <= set(RestoreConfig.model_fields) else RestoreFormWithPassword
    return restore_instance.execute_in_process(
        run_config=restore_form_run_config(form.model_construct(**config)),
        resources=resources,
        raise_on_error=False,
        tags=tags,
        instance=instance,
    )


def dsn_of(platform, instance, password: str, database: str) -> str:
    endpoints = platform.endpoints(instance_ref(instance))
    return psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=password, dbname=database
    )


def schema_dump(dsn: str, bindir: Path | None = None) -> list[str]:
    done = subprocess.run(
        [str((bindir or postgres_bindir()) / "pg_dump"), "--schema-only", "--dbname", dsn],
        capture_output=True,
        text=True,
        check=True,
    )
    # Comments carry versions and times; \restrict/\unrestrict carry a random key per dump.
    return [
        line
        for line in done.stdout.splitlines()
        if line.strip() and not line.startswith(("--", "\\restrict", "\\unrestrict"))
    ]


TABLE_FINGERPRINTS = """
SELECT c.oid::regclass::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (c.relkind IN ('r', 'p') OR (c.relkind = 'm' AND c.relispopulated))
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""


def table_fingerprints(dsn: str) -> dict[str, tuple[int, str]]:
    """Every table's row count and a checksum of its rows in a stable order."""
    fingerprints = {}
    with psycopg.connect(dsn) as conn:
        for (table,) in conn.execute(TABLE_FINGERPRINTS).fetchall():
            count, digest = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
            fingerprints[table] = (count, digest)
    return fingerprints


def test_restore_reproduces_pagila_exactly(resources, cms, platform, source, source_dsn, ready_image):
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        resources,
        source_image_id=str(ready_image.id),
        name="pagila-copy",
        dns_label="pagila-copy",
        instance=dagster,
    )
    assert result.success, failure_text(result)

    instance = result.output_for_node("mark_instance_running")
    assert instance.state is InstanceState.running
    row = cms.instances.get(instance.id)
    assert row.state is InstanceState.running and row.source_image_id == ready_image.id
    assert row.image_type == ready_image.image_type and row.postgres_version == ready_image.postgres_version
    assert row.user_name == "pagila-copy" and row.k8s_name.startswith("pagila-copy-") and row.dns_name == "pagila-copy"
    assert row.ip_connection_string.startswith("postgresql://postgres@127.0.0.1:")
    assert [e.to_state for e in cms.events.of(row.id)] == ["creating", "running"]

    restored = lambda db: dsn_of(platform, row, SOURCE_PASSWORD, db)  # noqa: E731
    assert schema_dump(restored("pagila")) == schema_dump(source_dsn("pagila"))
    source_tables = table_fingerprints(source_dsn("pagila"))
    assert len(source_tables) >= 22 and source_tables["rental"][0] > 16000
    assert source_tables["rental_by_category"][0] > 0  # the materialized view is populated too
    assert table_fingerprints(restored("pagila")) == source_tables

    with psycopg.connect(restored("pagila")) as conn:
        assert conn.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pagila_app'").fetchone() == (True,)
    app = psycopg.conninfo.make_conninfo(restored("pagila"), user="pagila_app", password="pagila-app")
    with psycopg.connect(app) as conn:
        assert conn.execute("SELECT count(*) FROM film").fetchone()[0] == 1000
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn_of(platform, row, "wrong-password", "postgres"))

    assert SOURCE_PASSWORD not in run_logs(dagster, result.run_id)
    # Progress: each download against its size in the manifest, pg_restore's items against the archive's.
    logs = run_logs(dagster, result.run_id)
    assert re.search(r"databases/[0-9]+\.dump done: [0-9.]+ MiB of [0-9.]+ MiB downloaded \(100%\)", logs), logs
    done, total = map(
        int, re.search(r"pg_restore of database pagila done: ([0-9]+) of ([0-9]+) archive items", logs).groups()
    )
    # pg_restore exited 0 with --exit-on-error: it did every item, whatever its verbose log caught
    assert 0 < done == total
    # The run's last word says how to reach the instance, without the password.
    user_lines = [e.user_message for e in dagster.all_logs(result.run_id) if e.dagster_event is None]
    assert f"toygres-pipelines connect {row.k8s_name}" in user_lines[-1]
    assert row.ip_connection_string in user_lines[-1] and "--show-password" in user_lines[-1]
    output = next(
        e for e in result.all_events if e.event_type_value == "STEP_OUTPUT" and e.step_key == "mark_instance_running"
    )
    shown = output.event_specific_data.metadata
    assert shown["connect"].value == f"toygres-pipelines connect {row.k8s_name}"
    assert shown["source_image"].value == ready_image.name and shown["image asset"].value == dg.AssetKey("image")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"source_image_id": ""}, "source_image_id: required"),
        ({"source_image_id": "no-such-image"}, "source_image_id: no image with name 'no-such-image'"),
        ({"source_image_id": "00000000-0000-0000-0000-000000000000"}, "source_image_id: no image with id"),
        ({"name": "Upper_Case"}, "name: 'Upper_Case' must be a DNS-1123 label"),
        ({"name": "n" * 47}, "name: '" + "n" * 47 + "' must be 1-46 characters long"),
        ({"dns_label": "-bad-"}, "dns_label: '-bad-' must be a DNS-1123 label"),
        ({"dns_label": "pagila-src"}, "dns_label: 'pagila-src' is already used by another instance"),
        ({"namespace": "Not/A/Namespace"}, "namespace:"),
        ({"dns_label": "ab"}, "dns_label: 'ab' must be 3-63 characters"),
        ({"dns_label": "1st-copy"}, "dns_label: '1st-copy' must start with a letter"),
        ({"storage_size_gb": 0}, "storage_size_gb: 0 must be between 1 and"),
        ({"job_timeout_seconds": 0}, "job_timeout_seconds: 0 must be between 60 and 172800 seconds"),
        ({"job_timeout_seconds": -1}, "job_timeout_seconds: -1 must be between 60 and 172800 seconds"),
        ({"job_timeout_seconds": 10**9}, "job_timeout_seconds: 1000000000 must be between 60 and 172800 seconds"),
        ({"ready_timeout_seconds": 0}, "ready_timeout_seconds: 0 must be between 5 and 3600 seconds"),
        ({"ready_timeout_seconds": 86400}, "ready_timeout_seconds: 86400 must be between 5 and 3600 seconds"),
        ({"postgres_version": "14"}, "postgres_version: 14 is older than PostgreSQL 15 of image"),
        ({"postgres_version": "17"}, "postgres_version: the target of image"),
        ({"postgres_version": "17"}, "is PostgreSQL 17 and this machine has no server binaries for it"),
    ],
)
def test_invalid_requests_create_nothing(resources, cms, platform, source, catalogued_image, config, message):
    config = {"source_image_id": str(catalogued_image.id), **config}
    volumes_before = platform_instances(platform)
    result = restore(resources, **config)
    assert not result.success
    assert message in failure_text(result)
    assert cms.instances.list() == [cms.instances.get(source.id)]
    assert platform_instances(platform) == volumes_before


def test_a_bad_request_fails_in_one_short_failure_naming_field_rule_and_value(resources, catalogued_image):
    result = restore(resources, source_image_id=str(catalogued_image.id), name="Upper_Case")
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "validate_request"
    error = failure.event_specific_data.error
    assert "Invalid restore request: name: 'Upper_Case' must be a DNS-1123 label" in error.message
    # no chained ValidationFailed traceback under it: the description is the whole story
    assert error.cause is None and error.context is None


def platform_instances(platform) -> set[str]:
    return {p.name for p in (platform._root / "instances").glob("*/*")}


def test_image_that_is_not_ready_is_refused(resources, cms, source, ready_image):
    cms.images.transition(ready_image.id, ImageState.deleting, reason="test")
    result = restore(resources, source_image_id=ready_image.name)
    assert "source_image_id: no image with name" in failure_text(result) or "must be ready" in failure_text(result)
    result = restore(resources, source_image_id=str(ready_image.id))
    assert f"image {ready_image.name!r} is deleting, it must be ready" in failure_text(result)
    assert len(cms.instances.list()) == 1


def assert_cleaned_up(cms, platform, failed_step: str, reason: str):
    failed = [i for i in cms.instances.list() if i.state is InstanceState.failed]
    assert len(failed) == 1, cms.instances.list()
    instance = failed[0]
    assert f"step {failed_step} failed" in instance.error_message and reason in instance.error_message
    assert not platform.instance_exists(instance_ref(instance))
    assert not list((platform._root / "jobs").glob(f"*/restore-{instance.k8s_name}"))
    assert not cms.instances.dns_name_in_use(instance.dns_name)
    return instance


@pytest.mark.parametrize("flipped", ["pagila dump", "manifest.json"])
def test_flipped_byte_in_the_blob_never_becomes_an_instance_and_marks_the_image_corrupt(
    resources, cms, blob, platform, source, ready_image, flipped
):
    manifest, _ = blob.read_manifest(ready_image.blob_path)
    dump = next(f for f in manifest.files if f.database == "pagila")
    name = f"{ready_image.blob_path}/{dump.path if flipped == 'pagila dump' else 'manifest.json'}"
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(name, bytes(data), overwrite=True)

    result = restore(resources, source_image_id=ready_image.name)
    assert not result.success
    assert_cleaned_up(
        cms, platform, "run_restore_job", "checksum mismatch" if flipped == "pagila dump" else "manifest.json: sha256"
    )

    image = cms.images.get(ready_image.id)
    assert image.state is ImageState.corrupt
    assert "failed verification at restore" in image.error_message
    assert [e.to_state for e in cms.events.of(image.id)] == ["creating", "ready", "corrupt"]
    again = restore(resources, source_image_id=ready_image.name, dns_label="second-try")
    assert f"image {ready_image.name!r} is corrupt, it must be ready" in failure_text(again)


def test_a_corrupt_image_is_ready_again_only_once_its_bytes_verify(resources, cms, blob, platform, source, ready_image):
    from toygres_pipelines.images.reverify import reverify_image

    manifest, _ = blob.read_manifest(ready_image.blob_path)
    dump = next(f for f in manifest.files if f.database == "pagila")
    name = f"{ready_image.blob_path}/{dump.path}"
    original = blob.read_bytes(name)
    damaged = bytearray(original)
    damaged[len(damaged) // 3] ^= 0x80
    blob.write_bytes(name, bytes(damaged), overwrite=True)
    assert not restore(resources, source_image_id=ready_image.name).success
    assert cms.images.get(ready_image.id).state is ImageState.corrupt

    def reverify():
        return reverify_image.execute_in_process(
            run_config=reverify_run_config(ready_image.name),
            resources={"cms": cms, "blob": blob},
            raise_on_error=False,
        )

    still_bad = reverify()
    assert not still_bad.success and f"{dump.path}: " in failure_text(still_bad)
    assert cms.images.get(ready_image.id).state is ImageState.corrupt

    blob.write_bytes(name, original, overwrite=True)
    assert reverify().success
    image = cms.images.get(ready_image.id)
    assert image.state is ImageState.ready and image.error_message is None
    assert [e.to_state for e in cms.events.of(image.id)] == ["creating", "ready", "corrupt", "ready"]
    assert restore(resources, source_image_id=ready_image.name, dns_label="after-repair").success


def test_restore_script_failing_midway_is_cleaned_up(resources, cms, blob, platform, source, ready_image):
    """A consistent image (manifest and CMS agree) whose roles script breaks after initdb."""
    broken = b"CREATE ROLE broken_role;\nTHIS IS NOT SQL;\n"
    blob.write_bytes(f"{ready_image.blob_path}/globals.sql", broken, overwrite=True)
    manifest_doc = json.loads(blob.read_bytes(f"{ready_image.blob_path}/manifest.json"))
    for entry in manifest_doc["files"]:
        if entry["path"] == "globals.sql":
            entry.update(size_bytes=len(broken), sha256=hashlib.sha256(broken).hexdigest())
    manifest_bytes = json.dumps(manifest_doc).encode()
    blob.write_bytes(f"{ready_image.blob_path}/manifest.json", manifest_bytes, overwrite=True)
    with psycopg.connect(cms.dsn) as conn:
        conn.execute(
            "UPDATE toygres_cms.images SET backup_checksum = %s WHERE id = %s",
            (hashlib.sha256(manifest_bytes).hexdigest(), ready_image.id),
        )

    dagster = dg.DagsterInstance.ephemeral()
    result = restore(resources, source_image_id=ready_image.name, instance=dagster)
    assert not result.success
    logs = run_logs(dagster, result.run_id)
    assert "restoring roles" in logs and "syntax error" in logs  # the job's own log reached the run
    assert_cleaned_up(cms, platform, "run_restore_job", "restoring roles failed")


def test_same_request_twice_restores_once(resources, cms, source, ready_image):
    tags = {REQUEST_ID_TAG: "7b0d3f8e-request"}
    assert restore(resources, tags=tags, source_image_id=ready_image.name).success
    again = restore(resources, tags=tags, source_image_id=ready_image.name, dns_label="another-label")
    assert not again.success and "already restored" in failure_text(again)
    restored = [i for i in cms.instances.list() if i.source_image_id == ready_image.id]
    assert [i.state for i in restored] == [InstanceState.running]


def test_launchpad_form_describes_every_field():
    form_fields = restore_form_fields()
    expected = {
        "name",
        "dns_label",
        "source_image_id",
        "namespace",
        "storage_size_gb",
        "internal",
        "databases",
        "postgres_version",
        "target_time",
    }
    assert expected <= set(form_fields)
    # Not for restores (a request row carrying one is rejected): not on the form either.
    assert not {"runtime_image_id", "image_override"} & set(form_fields)
    assert "password" not in form_fields  # run config is stored in plaintext
    for name, field in form_fields.items():
        assert field.description, f"{name} has no description in the launchpad"
    assert "password" not in form_fields  # a password typed in the launchpad would sit in run storage
    assert form_fields["name"].is_required
    # No fixed default: an empty namespace means the platform's own (TOYGRES_K8S_NAMESPACE on Kubernetes).
    assert not form_fields["namespace"].is_required
    assert form_fields["namespace"].default_value == ""


def test_restore_job_is_registered_with_its_tags():
    from toygres_pipelines.definitions import defs

    job = defs.resolve_job_def("restore_instance")
    assert job.tags["toygres/kind"] == "restore"
    assert isinstance(job, dg.JobDefinition)


def test_backups_and_restores_take_slots_of_their_pools():
    from toygres_pipelines.definitions import defs

    image_job = defs.resolve_implicit_global_asset_job_def()
    pools = {name: node.definition.pool for name, node in image_job.graph.node_dict.items()}
    assert pools.pop("image") == "toygres-backup"
    # beside the backup only asset checks run, which read the CMS (and blob storage) and take no backup slot
    assert set(pools) == {
        "image_restorable",
        "image_size_plausible",
        "fleet_backups_fresh",
        "fleet_drills_fresh",
        "fleet_wal_archive_fresh",
        "fleet_wal_archive_continuous",
        "fleet_pitr_restorable",
    }
    assert set(pools.values()) == {None}
    restore_job = defs.resolve_job_def("restore_instance")
    assert restore_job.graph.node_named("run_restore_job").definition.pool == "toygres-restore"


def test_connection_test_retries_without_cleaning_up_in_between(resources, cms, platform, source, ready_image):
    """The first connection test meets a wrong password, like a server not reachable yet: the
    RetryPolicy tries again and the failure hook (which would remove everything) stays quiet."""
    from pydantic import SecretStr

    from resources.platform.local import LocalPlatform

    calls = []

    class Flaky(LocalPlatform):
        def read_instance_password(self, instance):
            calls.append(instance.k8s_name)
            password = super().read_instance_password(instance)
            # call 1: wait_until_ready; call 2: the first test_connection attempt
            return SecretStr("not-yet") if len(calls) == 2 else password

    flaky = Flaky(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path)
    result = restore(
        {**resources, "platform": flaky}, source_image_id=ready_image.name, name="retried", dns_label="retried"
    )
    assert result.success, failure_text(result)
    assert result.retry_attempts_for_node("test_connection") == 1
    restored = [i for i in cms.instances.list() if i.user_name == "retried"]
    assert [i.state for i in restored] == [InstanceState.running]
    assert [e.to_state for e in cms.events.of(restored[0].id)] == ["creating", "running"]


def test_a_password_typed_in_the_launchpad_is_refused_and_stored_nowhere(resources, cms, ready_image):
    secret = "s3cret-Launchpad-pw"
    dagster = dg.DagsterInstance.ephemeral()
    with pytest.raises(dg.DagsterInvalidConfigError, match='"password"'):
        restore(resources, source_image_id=str(ready_image.id), password=secret, instance=dagster)
    assert secret not in dagster_text(dagster)
    assert secret not in cms_text(cms)


def test_a_second_run_of_a_request_leaves_the_first_runs_live_restore_alone(
    resources, cms, platform, source, ready_image
):
    from dagster._core.test_utils import create_run_for_test

    dagster = dg.DagsterInstance.ephemeral()
    key = "5d1c2f0e-in-flight"
    first = create_run_for_test(
        dagster, job_name="restore_instance", status=dg.DagsterRunStatus.STARTED, tags={REQUEST_ID_TAG: key}
    )
    in_flight = helpers.add_instance(
        cms,
        "restored-first",
        state=InstanceState.creating,
        user_name="restored",
        postgres_version=ready_image.postgres_version,
        dns_name="first-label",
        image_type=ready_image.image_type,
        source_image_id=ready_image.id,
        run_id=first.run_id,
        tags={"request_key": key},
    )

    second = restore(resources, tags={REQUEST_ID_TAG: key}, instance=dagster, source_image_id=ready_image.name)
    assert not second.success
    assert f"request {key} is being restored by run {first.run_id}, which is still STARTED" in failure_text(second)
    assert cms.instances.get(in_flight.id).state is InstanceState.creating

    # Once the first run has ended, a new run of the request takes its leftovers over.
    dagster.report_run_failed(first)
    third = restore(resources, tags={REQUEST_ID_TAG: key}, instance=dagster, source_image_id=ready_image.name)
    assert third.success, failure_text(third)
    assert cms.instances.get(in_flight.id).state is InstanceState.failed


def test_a_job_cleanup_error_after_a_good_restore_job_does_not_undo_the_restore(resources, cms, source, ready_image):
    """Removing the finished restore Job can fail (a transient API error): the restore goes on,
    the job is left to the janitor; the failure hook never tears down a restore that worked."""
    from tests.test_backup import CleanupFailingPlatform

    platform = resources["platform"]
    failing = CleanupFailingPlatform(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path)
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        {**resources, "platform": failing},
        source_image_id=ready_image.name,
        name="kept",
        dns_label="kept-db",
        instance=dagster,
    )
    assert result.success, failure_text(result)
    assert result.output_for_node("mark_instance_running").state is InstanceState.running
    assert "500 Internal Server Error" in run_logs(dagster, result.run_id)


def test_an_image_carrying_its_tenants_session_settings_restores(resources, cms, platform, source, source_dsn):
    """A valid image carries its tenant's settings: the role's (globals.sql: ALTER ROLE postgres SET)
    and each database's (pg_restore --create). A read-only default and a 1 ms statement timeout are
    the tenant's to have, and so is a library loaded at each connection; they must not stop the
    backup's or the restore's own sessions (the queries, pg_dump, pg_restore, analyze, the password).
    Nor does a database whose sessions SET ROLE to a role of no rights (ALTER DATABASE ... SET role):
    the backup's pg_dump and the restore's pg_restore run as the deployment's superuser; nor one
    that allows no temporary file (temp_file_limit 0, maintenance_work_mem 1 MB: the restore's
    CREATE INDEX sorts on disk)."""
    override = "-c default_transaction_read_only=off -c statement_timeout=0 -c local_preload_libraries= -c role=none"
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS settled")
        admin.execute("CREATE DATABASE settled")
        admin.execute("DROP ROLE IF EXISTS settled_nobody")
        admin.execute("CREATE ROLE settled_nobody")
    try:
        with psycopg.connect(source_dsn("settled"), autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 200000) g")
            conn.execute("CREATE INDEX ON t (g)")
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("ALTER DATABASE settled SET default_transaction_read_only = on")
            admin.execute("ALTER DATABASE settled SET statement_timeout = '1ms'")
            admin.execute("ALTER DATABASE settled SET local_preload_libraries = 'tenant_plugin'")
            admin.execute("ALTER DATABASE settled SET role = 'settled_nobody'")
            admin.execute("ALTER DATABASE settled SET temp_file_limit = 0")
            admin.execute("ALTER DATABASE settled SET maintenance_work_mem = '1MB'")
            admin.execute("ALTER ROLE postgres SET default_transaction_read_only = on")
        try:
            assert materialize_image(resources, f"{source.k8s_name}__settled").success
        finally:
            with psycopg.connect(source_dsn("postgres"), autocommit=True, options=override) as admin:
                admin.execute("ALTER ROLE postgres RESET default_transaction_read_only")
        image = cms.images.find(f"{source.k8s_name}__settled")
        result = restore(resources, source_image_id=str(image.id), name="settled", dns_label="settled",
                         databases=["settled"])  # fmt: skip
        assert result.success, failure_text(result)
        row = result.output_for_node("mark_instance_running")
        restored = dsn_of(platform, row, SOURCE_PASSWORD, "settled")
        with psycopg.connect(restored, options=override) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (200000,)
            # the tenant's settings are restored as they were
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("off",)
        with psycopg.connect(restored, options="-c local_preload_libraries=") as conn:
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1ms",)
            assert conn.execute("SELECT current_user").fetchone() == ("settled_nobody",)
            assert conn.execute("SHOW temp_file_limit").fetchone() == ("0",)
        with pytest.raises(psycopg.OperationalError, match="tenant_plugin"):
            psycopg.connect(restored).close()
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True, options=override) as admin:
            admin.execute("DROP DATABASE IF EXISTS settled WITH (FORCE)")
            admin.execute("DROP ROLE IF EXISTS settled_nobody")


def test_an_image_of_a_source_with_a_tablespace_restores_into_the_instances_one_volume(
    resources, cms, platform, source, source_dsn
):
    """A logical image names its tablespaces (globals.sql's CREATE TABLESPACE, each object's
    tablespace, a role's default_tablespace): the restored instance has one volume and none of the
    source's paths, so everything lands in the default tablespace instead of failing the restore."""
    import os
    import shutil

    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        data_directory = Path(admin.execute("SHOW data_directory").fetchone()[0])
        location = data_directory.parent / f"tablespace-{data_directory.name}"
        location.mkdir()
        owner = data_directory.stat()
        os.chown(location, owner.st_uid, owner.st_gid)
        admin.execute(psycopg.sql.SQL("CREATE TABLESPACE tenant_space LOCATION {}").format(str(location)))
        admin.execute("DROP DATABASE IF EXISTS spaced")
        admin.execute("CREATE DATABASE spaced")
        admin.execute("ALTER ROLE pagila_app SET default_tablespace = 'tenant_space'")
    try:
        with psycopg.connect(source_dsn("spaced"), autocommit=True) as tenant:
            tenant.execute("CREATE TABLE t TABLESPACE tenant_space AS SELECT g FROM generate_series(1, 11) g")
            tenant.execute("CREATE INDEX ON t (g) TABLESPACE tenant_space")
        assert materialize_image(resources, f"{source.k8s_name}__spaced").success
        image = cms.images.find(f"{source.k8s_name}__spaced")
        result = restore(resources, source_image_id=str(image.id), name="spaced", dns_label="spaced",
                         databases=["spaced"])  # fmt: skip
        assert result.success, failure_text(result)
        row = result.output_for_node("mark_instance_running")
        with psycopg.connect(dsn_of(platform, row, SOURCE_PASSWORD, "spaced")) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (11,)
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("ALTER ROLE pagila_app RESET default_tablespace")
            admin.execute("DROP DATABASE IF EXISTS spaced WITH (FORCE)")
            admin.execute("DROP TABLESPACE IF EXISTS tenant_space")
        shutil.rmtree(location, ignore_errors=True)


def test_the_postgres_databases_own_settings_comment_and_grants_are_restored(
    resources, cms, platform, source, source_dsn
):
    """The restored instance's `postgres` database is initdb's; pg_dump keeps a database's settings,
    its role-in-database settings, its comment and its grants for --create only, and they must
    still come back."""
    reset = "-c default_transaction_read_only=off -c statement_timeout=0 -c local_preload_libraries="
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("ALTER DATABASE postgres SET work_mem = '7MB'")
        admin.execute("ALTER ROLE pagila_app IN DATABASE postgres SET work_mem = '9MB'")
        admin.execute("COMMENT ON DATABASE postgres IS 'the tenant''s own words'")
        admin.execute("GRANT CREATE ON DATABASE postgres TO pagila_app")
    try:
        assert materialize_image(resources, f"{source.k8s_name}__ownsettings").success
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True, options=reset) as admin:
            admin.execute("ALTER DATABASE postgres RESET work_mem")
            admin.execute("ALTER ROLE pagila_app IN DATABASE postgres RESET work_mem")
            admin.execute("COMMENT ON DATABASE postgres IS NULL")
            admin.execute("REVOKE CREATE ON DATABASE postgres FROM pagila_app")
    image = cms.images.find(f"{source.k8s_name}__ownsettings")
    result = restore(resources, source_image_id=str(image.id), name="ownsettings", dns_label="ownsettings",
                     databases=["postgres"])  # fmt: skip
    assert result.success, failure_text(result)
    row = result.output_for_node("mark_instance_running")
    with psycopg.connect(dsn_of(platform, row, SOURCE_PASSWORD, "postgres")) as conn:
        settings = conn.execute(
            "SELECT coalesce(r.rolname, '-'), s.setconfig FROM pg_db_role_setting s"
            " JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole"
            " WHERE d.datname = 'postgres' ORDER BY 1"
        ).fetchall()
        assert settings == [("-", ["work_mem=7MB"]), ("pagila_app", ["work_mem=9MB"])]
        comment = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = 'postgres'"
        assert conn.execute(comment).fetchone() == ("the tenant's own words",)
        granted = conn.execute("SELECT has_database_privilege('pagila_app', 'postgres', 'CREATE')").fetchone()
        assert granted == (True,)
