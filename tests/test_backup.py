"""Backups through Dagster against real PostgreSQL, Azurite and azcopy."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time

import dagster as dg
import psycopg
import pytest

from records import ImageState, InstanceRef, InstanceState, JobResult
from records.units import human_bytes
from resources.cms import CMSResource
from resources.cms.images import ImagesTable
from resources.platform.base import JobFailed, JobKind, JobSpec, PlatformError
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir
from tests.helpers import add_image, failure_text, materialize_image, run_logs
from toygres_pipelines.images.janitor import purge_failed_image_blobs

pytestmark = pytest.mark.integration


def test_backup_of_pagila_is_verified_and_restorable(resources, cms, blob, source, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_image(resources, f"{source.k8s_name}__t1", {"description": "first"}, instance=instance)
    assert result.success

    row = cms.images.find(f"{source.k8s_name}__t1")
    assert row.state is ImageState.ready
    assert row.source_instance_id == source.id and row.description == "first"
    assert row.ready_at is not None and row.blob_path == f"images/{row.id}"

    manifest_bytes = blob.read_bytes(f"{row.blob_path}/manifest.json")
    assert hashlib.sha256(manifest_bytes).hexdigest() == row.backup_checksum
    manifest, _ = blob.read_manifest(row.blob_path)
    assert manifest.image_name == row.name and manifest.source_instance == source.k8s_name
    assert {f.database for f in manifest.files if f.kind == "database"} >= {"pagila", "postgres"}
    assert row.backup_size_bytes == sum(f.size_bytes for f in manifest.files)

    pagila_dump = next(f for f in manifest.files if f.database == "pagila")
    dump_path = tmp_path / "pagila.dump"
    dump_path.write_bytes(blob.read_bytes(f"{row.blob_path}/{pagila_dump.path}"))
    assert hashlib.sha256(dump_path.read_bytes()).hexdigest() == pagila_dump.sha256
    listing = subprocess.run(
        [str(postgres_bindir() / "pg_restore"), "--list", str(dump_path)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public rental" in listing and "MATERIALIZED VIEW public rental_by_category" in listing

    globals_sql = blob.read_bytes(f"{row.blob_path}/globals.sql").decode()
    assert "CREATE ROLE pagila_app;" in globals_sql
    # dumped in the database's own encoding (a restore into another encoding converts from it)
    script = subprocess.run(
        [str(postgres_bindir() / "pg_restore"), "-f", "-", str(dump_path)], capture_output=True, check=True
    ).stdout
    assert b"SET client_encoding = 'UTF8';" in script
    assert "SET client_encoding = 'UTF8';" in globals_sql

    assert cms.images.password(row.id).get_secret_value() == source_password(resources, source)
    assert [e.to_state for e in cms.events.of(row.id)] == ["creating", "ready"]

    materialization = result.asset_materializations_for_node("image")[0]
    metadata = materialization.metadata
    assert metadata["bytes"].value == row.backup_size_bytes  # the raw number stays, for plots
    assert metadata["size"].value == human_bytes(row.backup_size_bytes)
    files = {r.data["path"]: r.data for r in metadata["files"].value.records}
    assert files.keys() == {f.path for f in manifest.files}
    assert files[pagila_dump.path]["database"] == "pagila" and files[pagila_dump.path]["kind"] == "database"
    assert files[pagila_dump.path]["size"] == human_bytes(pagila_dump.size_bytes)
    assert files[pagila_dump.path]["size_bytes"] == pagila_dump.size_bytes
    assert files[pagila_dump.path]["verified"].endswith("; the archive reader read every block of it while it streamed")
    assert metadata["manifest_sha256"].value == row.backup_checksum
    assert "sig=" not in metadata["blob_url"].value and metadata["blob_url"].value.endswith(row.blob_path)

    [check] = result.get_asset_check_evaluations()  # the Checks tab: verification passed, with its proof
    assert check.check_name == "verified" and check.passed
    assert {r.data["path"] for r in check.metadata["files"].value.records} == {f.path for f in manifest.files}

    logs = run_logs(instance, result.run_id)
    assert "uploaded databases/" in logs
    # verification is visible: one line per file, then the verdict
    assert f"verified {pagila_dump.path} (database pagila, {human_bytes(pagila_dump.size_bytes)})" in logs
    assert f"image verified: {len(manifest.files)} files" in logs
    # progress of each stream: its table data read against the tables' sizes, and all databases'
    assert re.search(
        rf"{re.escape(pagila_dump.path)} \(database pagila\) done: [0-9.]+ MiB dumped and uploaded in [0-9]+s "
        r"\([0-9.]+ MiB/s\); 100% of its tables read \(all databases: [0-9]+%\)",
        logs,
    ), logs
    assert "sig=" not in logs and source_password(resources, source) not in logs


def test_a_tenants_operators_never_run_in_the_backups_table_sizes_session(resources, cms, blob, source, source_dsn):
    """The tenant owns its database's settings: a search_path ahead of pg_catalog must not route
    the size query's operators into the tenant's functions (run as the job's login, in the job's session)."""
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS shadowed")
        admin.execute("CREATE DATABASE shadowed")
    try:
        with psycopg.connect(source_dsn("shadowed"), autocommit=True) as tenant:
            tenant.execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
            tenant.execute("CREATE SCHEMA evil")
            tenant.execute(
                "CREATE FUNCTION evil.plus(integer, integer) RETURNS integer LANGUAGE plpgsql"
                " AS $$BEGIN RAISE EXCEPTION 'the tenant''s operator ran'; END$$"
            )
            tenant.execute("CREATE OPERATOR evil.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.plus)")
            tenant.execute("ALTER DATABASE shadowed SET search_path = evil, pg_catalog")
        instance = dg.DagsterInstance.ephemeral()
        result = materialize_image(resources, f"{source.k8s_name}__shadowed", {}, instance=instance)
        assert result.success
        logs = run_logs(instance, result.run_id)
        assert "no table sizes for the percent" not in logs
        assert re.search(r"\(database shadowed\) done: .*; 100% of its tables read", logs), logs
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS shadowed WITH (FORCE)")


def test_a_tenants_search_path_cannot_hide_a_database_from_the_backup(resources, cms, blob, source, source_dsn):
    """The job lists databases in the tenant's `postgres` database: a tenant's view named pg_database
    ahead of pg_catalog's on its search_path must not decide what the image holds."""
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("CREATE SCHEMA decoy")
        admin.execute(
            "CREATE VIEW decoy.pg_database AS SELECT * FROM pg_catalog.pg_database WHERE datname = 'postgres'"
        )
        admin.execute("ALTER DATABASE postgres SET search_path = decoy, pg_catalog")
    try:
        result = materialize_image(resources, f"{source.k8s_name}__decoy", {})
        assert result.success
        manifest, _ = blob.read_manifest(cms.images.find(f"{source.k8s_name}__decoy").blob_path)
        assert {f.database for f in manifest.files if f.kind == "database"} == {"pagila", "postgres"}
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("ALTER DATABASE postgres RESET search_path")
            admin.execute("DROP SCHEMA decoy CASCADE")


def source_password(resources, source) -> str:
    from toygres_pipelines.restores.steps import instance_ref

    return resources["platform"].read_instance_password(instance_ref(source)).get_secret_value()


@pytest.mark.parametrize(
    ("key", "config", "message"),
    [
        ("bad.name", {"source_instance": "SOURCE"}, "image name (partition key): 'bad.name' must be"),
        ("x" * 101, {"source_instance": "SOURCE"}, "must be 1-100 characters"),
        ("no-source-given", {}, "source_instance: required"),
        ("unknown__1", {}, "source_instance: no instance 'unknown'"),
    ],
)
def test_invalid_requests_create_no_image_and_remove_their_partition(
    resources, cms, blob, source, key, config, message
):
    config = {k: v.replace("SOURCE", source.k8s_name) for k, v in config.items()}
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("images", ["kept-partition"])
    result = materialize_image(resources, key, config, raise_on_error=False, instance=instance)
    assert not result.success
    assert message in failure_text(result)
    assert f"partition {key!r} removed: no image row has this name" in failure_text(result)
    assert instance.get_dynamic_partitions("images") == ["kept-partition"]
    assert cms.images.list() == []
    assert blob.list_names("images") == []


def test_stopped_instance_is_refused(resources, cms, blob, source):
    cms.instances.transition(source.id, InstanceState.stopped, reason="test")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_image(resources, f"{source.k8s_name}__t2", raise_on_error=False, instance=instance)
    assert "source_instance: instance" in failure_text(result) and "must be running" in failure_text(result)
    assert cms.images.list() == []
    assert instance.get_dynamic_partitions("images") == []


def test_materializing_a_ready_partition_again_reports_the_image_and_touches_nothing(resources, cms, blob, source):
    key = f"{source.k8s_name}__dup"
    instance = dg.DagsterInstance.ephemeral()
    first_run = materialize_image(resources, key, instance=instance)
    assert first_run.success
    first = cms.images.find(key)
    blobs = blob.list_names(first.blob_path)
    again = materialize_image(resources, key, instance=instance)
    assert again.success
    assert cms.images.list() == [first]  # same row, same updated_at: untouched
    assert [e.to_state for e in cms.events.of(first.id)] == ["creating", "ready"]
    assert blob.list_names(first.blob_path) == blobs
    before = first_run.asset_materializations_for_node("image")[0].metadata
    after = again.asset_materializations_for_node("image")[0].metadata
    same = ("image_id", "source_instance", "bytes", "manifest_sha256", "blob_url", "postgres_version")
    assert {k: after[k] for k in same} == {k: before[k] for k in same}

    def files(metadata, without: str = "verified") -> list[dict]:
        return [{k: v for k, v in r.data.items() if k != without} for r in metadata["files"].value.records]

    assert files(after) == files(before)
    # the backup relied on what it proved while streaming; materializing again re-reads every byte
    assert {r.data["verified"] for r in after["files"].value.records} >= {
        "sha256 matches, pg_restore reads every entry"
    }
    assert "already ready" in run_logs(instance, again.run_id)


def test_a_ready_partition_whose_bytes_no_longer_verify_fails_and_marks_the_image_corrupt(resources, cms, blob, source):
    key = f"{source.k8s_name}__rotten"
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_image(resources, key, instance=instance).success
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    name = f"{image.blob_path}/{next(f for f in manifest.files if f.database == 'pagila').path}"
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(name, bytes(data), overwrite=True)

    again = materialize_image(resources, key, instance=instance, raise_on_error=False)
    assert not again.success
    assert "its bytes no longer verify: marked corrupt" in failure_text(again)
    assert cms.images.get(image.id).state is ImageState.corrupt
    assert [e.to_state for e in cms.events.of(image.id)] == ["creating", "ready", "corrupt"]


def test_a_partition_whose_image_is_not_ready_fails_and_keeps_the_partition(resources, cms, source):
    key = f"{source.k8s_name}__busy"
    add_image(cms, source, key, run_id="another-run")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_image(resources, key, raise_on_error=False, instance=instance)
    assert not result.success
    assert f"image name (partition key): {key!r} is already used by image" in failure_text(result)
    assert "removed" not in failure_text(result)
    assert instance.get_dynamic_partitions("images") == [key]


def wait_for_pg_dump_blocked(dsn: str, database: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pg_dump'"
                " AND wait_event_type = 'Lock'",
                (database,),
            ).fetchone()
            if row[0]:
                return
            time.sleep(0.1)
    raise TimeoutError(f"pg_dump never waited on {database}")


def blocked_database(source_dsn, name: str) -> psycopg.Connection:
    """A database with a table locked by the returned connection: pg_dump waits on it."""
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    holder = psycopg.connect(source_dsn(name))
    holder.execute("CREATE TABLE t (id int)")
    holder.commit()
    holder.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    return holder


def test_pg_dump_of_a_dropped_database_fails_the_image(resources, cms, blob, source, source_dsn):
    key = f"{source.k8s_name}__dropped"
    holder = blocked_database(source_dsn, "aaa_doomed")
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(result=materialize_image(resources, key, raise_on_error=False))
    )
    runner.start()
    try:
        wait_for_pg_dump_blocked(source_dsn("postgres"), "aaa_doomed")
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute('DROP DATABASE "aaa_doomed" WITH (FORCE)')
    finally:
        runner.join(timeout=120)
        holder.close()
    result = outcome["result"]
    assert not result.success
    row = cms.images.list()[0]
    assert row.state is ImageState.failed
    assert "pg_dump of database aaa_doomed failed" in row.error_message
    assert blob.list_names(row.blob_path) == []
    assert [e.to_state for e in cms.events.of(row.id)] == ["creating", "failed"]


def test_blob_storage_stopping_mid_run_fails_the_image_and_leaves_no_blob(
    resources, cms, blob, source, source_dsn, stack
):
    key = f"{source.k8s_name}__azurite-down"
    holder = blocked_database(source_dsn, "aaa_blocked")
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=materialize_image(resources, key, {"job_timeout_seconds": 15}, raise_on_error=False)
        )
    )
    runner.start()
    try:
        wait_for_pg_dump_blocked(source_dsn("postgres"), "aaa_blocked")
        assert blob.list_names(cms.images.list()[0].blob_path) == [f"images/{cms.images.list()[0].id}/globals.sql"]
        stack.azurite.stop()
        holder.rollback()
        runner.join(timeout=180)
    finally:
        holder.close()
        if stack.azurite.process is None:
            stack.azurite.start()
    result = outcome["result"]
    assert not result.success
    row = cms.images.list()[0]
    assert row.state is ImageState.failed and row.error_message
    # Blob storage was down when the op cleaned up; the janitor removes what is left.
    assert purge_failed_image_blobs(cms, blob) >= 1
    assert blob.list_names(row.blob_path) == []
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute('DROP DATABASE IF EXISTS "aaa_blocked" WITH (FORCE)')


def test_source_password_never_reaches_the_cms_in_plaintext(resources, cms, source, stack):
    assert materialize_image(resources, f"{source.k8s_name}__enc").success
    row = cms.images.find(f"{source.k8s_name}__enc")
    password = source_password(resources, source)
    with psycopg.connect(cms.dsn) as conn:
        stored = conn.execute(
            "SELECT source_password_encrypted::text FROM toygres_cms.images WHERE id = %s", (row.id,)
        ).fetchone()[0]
        whole_row = conn.execute(
            "SELECT row_to_json(i)::text FROM toygres_cms.images i WHERE id = %s", (row.id,)
        ).fetchone()[0]
        events = conn.execute(
            "SELECT coalesce(string_agg(row_to_json(e)::text, ''), '') FROM toygres_cms.events e"
        ).fetchone()[0]
    assert stored and password not in stored
    assert password not in whole_row and password not in events
    assert cms.images.password(row.id).get_secret_value() == password


def test_verification_reads_every_archive_entry(resources, cms, blob, source):
    """A dump whose manifest entry was rewritten to match (so the sha256 agrees) is still caught."""
    import json

    from toygres_pipelines.images.verification import ImageCorrupt, verify_image

    assert materialize_image(resources, f"{source.k8s_name}__verify").success
    row = cms.images.find(f"{source.k8s_name}__verify")
    manifest_doc = json.loads(blob.read_bytes(f"{row.blob_path}/manifest.json"))
    entry = next(f for f in manifest_doc["files"] if f["database"] == "pagila")
    truncated = blob.read_bytes(f"{row.blob_path}/{entry['path']}")[: entry["size_bytes"] * 2 // 3]
    blob.write_bytes(f"{row.blob_path}/{entry['path']}", truncated, overwrite=True)
    entry.update(size_bytes=len(truncated), sha256=hashlib.sha256(truncated).hexdigest())
    blob.write_bytes(f"{row.blob_path}/manifest.json", json.dumps(manifest_doc).encode(), overwrite=True)

    with pytest.raises(ImageCorrupt, match=f"{entry['path']}: pg_restore cannot read it"):
        verify_image(blob, row.blob_path)
    with pytest.raises(ImageCorrupt, match="manifest.json: sha256 .* the CMS recorded"):
        verify_image(blob, row.blob_path, expected_manifest_sha256=row.backup_checksum)


def test_unreachable_blob_storage_fails_the_image_with_the_cause(resources, cms, source):
    from resources.blob import BlobStorageResource
    from resources.platform.postgres_server import free_port
    from toygres_pipelines.dev.stack import azurite_connection_string

    unreachable = BlobStorageResource(
        connection_string=azurite_connection_string(free_port()), container="images", retry_total=0
    )
    result = materialize_image({**resources, "blob": unreachable}, f"{source.k8s_name}__nowhere", raise_on_error=False)
    assert not result.success
    row = cms.images.list()[0]
    assert row.state is ImageState.failed
    assert "blob storage at http://127.0.0.1:" in row.error_message and "unreachable" in row.error_message


class CleanupFailingPlatform(LocalPlatform):
    """The local platform, except that removing a finished job fails (as a Kubernetes API error would)."""

    def delete_job(self, name: str, namespace: str) -> None:
        raise PlatformError(f"API error while deleting job {name}: 500 Internal Server Error")


def test_cleanup_error_after_ready_never_destroys_the_verified_image(resources, cms, blob, source, platform):
    failing = CleanupFailingPlatform(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path)
    instance = dg.DagsterInstance.ephemeral()
    key = f"{source.k8s_name}__cleanup-fails"
    result = materialize_image({**resources, "platform": failing}, key, instance=instance, raise_on_error=False)

    row = cms.images.find(key)
    assert row.state is ImageState.ready
    manifest, _ = blob.read_manifest(row.blob_path)
    assert sorted(blob.list_names(row.blob_path)) == sorted(
        [f"{row.blob_path}/manifest.json", *(f"{row.blob_path}/{f.path}" for f in manifest.files)]
    )
    assert [e.to_state for e in cms.events.of(row.id)] == ["creating", "ready"]
    assert result.success
    assert "500 Internal Server Error" in run_logs(instance, result.run_id)


def test_image_named_with_a_trailing_newline_is_refused_before_any_row(resources, cms, source):
    result = materialize_image(resources, f"{source.k8s_name}__nl\n", raise_on_error=False)
    assert not result.success
    assert "image name (partition key): " in failure_text(result)
    assert cms.images.list() == []


class FailingAfterJobPlatform(LocalPlatform):
    """The real backup job runs, then the platform reports it failed."""

    def run_job(self, spec, log):
        super().run_job(spec, log)
        raise JobFailed(JobResult(name=spec.name, succeeded=False, reason="exit code 1"))


class ImagesDownOnFailure(ImagesTable):
    def get(self, image_id):
        raise psycopg.OperationalError("connection to server at 127.0.0.1 failed: Connection refused")


class CMSDownOnFailure(CMSResource):
    """The CMS answers until the backup fails, then is unreachable."""

    @property
    def images(self) -> ImagesTable:
        return ImagesDownOnFailure(self)


def job_dirs(platform) -> set[str]:
    return {str(p) for p in (platform._root / "jobs").glob("*/backup-*")}


def test_job_directory_and_its_sas_are_removed_even_when_the_cms_is_unreachable(resources, cms, source, platform):
    failing = FailingAfterJobPlatform(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path)
    down = CMSDownOnFailure(dsn=cms.dsn, encryption_key=cms.encryption_key)
    before = job_dirs(platform)
    result = materialize_image(
        {**resources, "platform": failing, "cms": down}, f"{source.k8s_name}__cms-down", raise_on_error=False
    )
    assert not result.success
    assert job_dirs(platform) == before
    # The row stays creating (the CMS could not be told); the blobs stay for the reconciler.
    [row] = cms.images.list()
    assert row.state is ImageState.creating


def test_janitor_removes_local_job_directories_past_their_timeout(cms, blob, platform, tmp_path):
    import os

    from toygres_pipelines.images.janitor import janitor_job
    from toygres_pipelines.images.settings import ImagesSettings

    tmp_path.chmod(0o711)
    local = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path=platform.azcopy_path, job_timeout_seconds=600)
    ref = InstanceRef(k8s_name="x", namespace="default")
    stale = local._fresh_job_dir(JobSpec(kind=JobKind.backup, name="backup-stale", script="backup.sh", instance=ref))
    (stale / "sas").write_text("sv=1&sig=secret")
    fresh = local._fresh_job_dir(JobSpec(kind=JobKind.backup, name="backup-fresh", script="backup.sh", instance=ref))
    old = time.time() - 600 - 3600
    os.utime(stale, (old, old))

    # The janitor's grace as the code location reads it when it loads (TOYGRES_STALE_JOB_GRACE_SECONDS).
    janitor = janitor_job(ImagesSettings.from_env({"TOYGRES_STALE_JOB_GRACE_SECONDS": "3600"}))
    instance = dg.DagsterInstance.ephemeral()
    result = janitor.execute_in_process(resources={"cms": cms, "blob": blob, "platform": local}, instance=instance)
    assert result.success
    assert not stale.exists() and fresh.exists()
    assert "removed stale job default/backup-stale" in run_logs(instance, result.run_id)


def test_a_database_the_tenant_made_a_template_is_in_the_image(resources, cms, blob, source, source_dsn):
    """IS_TEMPLATE is the tenant's to set on its own database: the database is still its data (pg_dumpall
    dumps it too), so the image holds it; only template0 and template1 are PostgreSQL's own."""
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS app_template")
        admin.execute("CREATE DATABASE app_template")
    try:
        with psycopg.connect(source_dsn("app_template"), autocommit=True) as tenant:
            tenant.execute("CREATE TABLE seed AS SELECT g FROM generate_series(1, 7) g")
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("ALTER DATABASE app_template IS_TEMPLATE true")
        assert materialize_image(resources, f"{source.k8s_name}__templated").success
        manifest, _ = blob.read_manifest(cms.images.find(f"{source.k8s_name}__templated").blob_path)
        assert {f.database for f in manifest.files if f.kind == "database"} == {"app_template", "pagila", "postgres"}
        [entry] = [f for f in manifest.files if f.database == "app_template"]
        assert entry.row_counts == {"public.seed": 7}
        from tests.conftest import SOURCE_PASSWORD
        from tests.test_restore import dsn_of, restore

        image = cms.images.find(f"{source.k8s_name}__templated")
        restored = restore(resources, source_image_id=str(image.id), name="templated", dns_label="templated",
                           databases=["app_template"])  # fmt: skip
        assert restored.success, failure_text(restored)
        row = restored.output_for_node("mark_instance_running")
        platform = resources["platform"]
        with psycopg.connect(dsn_of(platform, row, SOURCE_PASSWORD, "app_template")) as conn:
            assert conn.execute("SELECT count(*) FROM seed").fetchone() == (7,)
            assert conn.execute("SELECT datistemplate FROM pg_database WHERE datname = 'app_template'").fetchone() == (
                True,
            )
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("ALTER DATABASE app_template IS_TEMPLATE false")
            admin.execute("DROP DATABASE IF EXISTS app_template WITH (FORCE)")


def test_a_database_the_tenant_closed_to_connections_fails_the_backup_naming_it(resources, cms, source, source_dsn):
    """ALLOW_CONNECTIONS false keeps pg_dump out: the backup fails naming the database instead of
    becoming a `ready` image without it."""
    with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS closed_app")
        admin.execute("CREATE DATABASE closed_app")
        admin.execute("ALTER DATABASE closed_app ALLOW_CONNECTIONS false")
    try:
        result = materialize_image(resources, f"{source.k8s_name}__closed", raise_on_error=False)
        assert not result.success
        row = cms.images.find(f"{source.k8s_name}__closed")
        assert row.state is ImageState.failed
        assert "database(s) closed_app of" in row.error_message and "allow no connections" in row.error_message
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS closed_app WITH (FORCE)")


def test_a_damaged_page_fails_the_backup_whatever_the_tenants_zero_damaged_pages(resources, cms, platform):
    """A tenant's role may say zero_damaged_pages = on (ALTER ROLE ... SET): a page whose header is
    damaged is then read as empty, with a WARNING. The backup's pg_dump must not take that as
    the table: the backup fails naming the page, rather than a `ready` image without its rows."""
    import secrets
    import uuid

    from pydantic import SecretStr

    from resources.platform.base import DeploySpec
    from toygres_pipelines.dev.demo import provision_server, register_running

    ref = InstanceRef(k8s_name=f"damaged-{uuid.uuid4().hex[:6]}", namespace="default")
    password = SecretStr(secrets.token_urlsafe(12))
    provision_server(platform, ref, password)
    try:
        endpoints = platform.endpoints(ref)
        dsn = psycopg.conninfo.make_conninfo(
            host=endpoints.host, port=endpoints.port, user="postgres", password=password.get_secret_value()
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 5000) g")
            (path,) = conn.execute(
                "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('t')"
            ).fetchone()
            conn.execute("ALTER ROLE postgres SET zero_damaged_pages = on")
            conn.execute("CHECKPOINT")
        platform.stop_instance(ref)
        with open(path, "r+b") as relation:  # block 3's pd_lower past its pd_upper: an invalid page header
            relation.seek(3 * 8192 + 12)
            relation.write(b"\xff\xff")
        platform.deploy_instance(
            DeploySpec(instance=ref, postgres_version="15", storage_size_gb=1, dns_label=ref.k8s_name)
        )
        register_running(cms, platform, ref)
        result = materialize_image(resources, f"{ref.k8s_name}__damaged", raise_on_error=False)
        assert not result.success, "a backup of a table with a damaged page became ready"
        assert "invalid page in block 3" in failure_text(result)
    finally:
        platform.delete_instance(ref)
