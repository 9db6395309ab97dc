"""Parallel mode (`parallel_jobs` > 1): each database dumped with `pg_dump -Fd -j N`, every file of
the directory in the manifest, verified before ready, restored by the normal restore job."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import uuid

import dagster as dg
import pytest

from records import ImageRequest, ImageState, ValidationFailed
from records.parallel import MAX_PARALLEL_JOBS, validate_parallel_jobs
from records.requests import ImageRequestFields
from resources.blob import BlobStorageResource
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir
from tests.conftest import SOURCE_PASSWORD
from tests.helpers import failure_text, image_request, materialize_image, run_logs
from tests.test_restore import assert_cleaned_up, dsn_of, restore, schema_dump, table_fingerprints
from toygres_pipelines.forms import add_cli_arguments, fields_from_cli
from toygres_pipelines.images.assets import image
from toygres_pipelines.images.jobs import backup_config_of

# --- the rule (no services) ---------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, MAX_PARALLEL_JOBS])
def test_parallel_jobs_within_the_rule_are_accepted(value):
    assert validate_parallel_jobs(value) == value


@pytest.mark.parametrize("value", [0, -1, MAX_PARALLEL_JOBS + 1, 10**6])
def test_parallel_jobs_outside_the_rule_are_refused_naming_the_field_and_the_rule(value):
    with pytest.raises(ValidationFailed) as refused:
        validate_parallel_jobs(value)
    assert refused.value.field == "parallel_jobs"
    assert str(refused.value) == f"parallel_jobs: {value} must be between 1 and {MAX_PARALLEL_JOBS}"


def test_parallel_jobs_is_a_backup_request_field_with_a_cli_option_defaulting_to_one_stream():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser, ImageRequestFields)
    args = parser.parse_args(["--instance", "src", "--name", "img"])
    assert fields_from_cli(args, ImageRequestFields).parallel_jobs == 1
    args = parser.parse_args(["--instance", "src", "--name", "img", "--parallel-jobs", "4"])
    assert fields_from_cli(args, ImageRequestFields).parallel_jobs == 4
    assert "pg_dump -Fd -j" in ImageRequestFields.model_fields["parallel_jobs"].description


# --- the real stack ----------------------------------------------------------------------------


def database_files(manifest, database: str):
    return [f for f in manifest.files if f.database == database]


def test_parallel_backup_of_pagila_restores_exactly_through_the_normal_restore_job(
    resources, cms, blob, platform, source, source_dsn, tmp_path
):
    dagster = dg.DagsterInstance.ephemeral()
    key = f"{source.k8s_name}__parallel"
    result = materialize_image(resources, key, {"parallel_jobs": 2}, instance=dagster)
    assert result.success, failure_text(result)
    image = cms.images.find(key)
    assert image.state is ImageState.ready

    manifest, _ = blob.read_manifest(image.blob_path)
    assert manifest.dump_format == "directory" and manifest.parallel_jobs == 2
    pagila = database_files(manifest, "pagila")
    [archive] = {f.archive for f in pagila}
    assert archive and {f.dump_format for f in pagila} == {"directory"}
    names = {f.path.removeprefix(f"{archive}/") for f in pagila}
    assert "toc.dat" in names and len(names) > 10  # one data file per table
    # every file is in blob storage with exactly the recorded size and sha256
    for entry in pagila:
        data = blob.read_bytes(f"{image.blob_path}/{entry.path}")
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry.size_bytes, entry.sha256)
        (tmp_path / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / entry.path).write_bytes(data)
    listing = subprocess.run(
        [str(postgres_bindir() / "pg_restore"), "--list", str(tmp_path / archive)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "TABLE DATA public rental" in listing
    assert image.backup_size_bytes == manifest.total_bytes
    assert blob.staging_image_ids() == [], "the backup's staging container outlives its run"
    logs = run_logs(dagster, result.run_id)
    assert f"pg_restore lists the archive {archive}" in logs
    # its progress: the share of the tables' sizes whose data pg_dump finished, then all databases'
    assert re.search(
        rf"{re.escape(archive)} \(database pagila\) dumped: [0-9.]+ MiB dumped in [0-9]+s \([0-9.]+ MiB/s\); "
        r"100% of its tables read \(all databases: [0-9]+%\)",
        logs,
    ), logs

    restored_run = restore(resources, source_image_id=image.name, name="parallel-copy", dns_label="parallel-copy")
    assert restored_run.success, failure_text(restored_run)
    row = restored_run.output_for_node("mark_instance_running")
    restored = lambda db: dsn_of(platform, row, SOURCE_PASSWORD, db)  # noqa: E731
    assert schema_dump(restored("pagila")) == schema_dump(source_dsn("pagila"))
    source_tables = table_fingerprints(source_dsn("pagila"))
    assert len(source_tables) >= 22 and source_tables["rental"][0] > 16000
    assert table_fingerprints(restored("pagila")) == source_tables
    assert table_fingerprints(restored("postgres")) == table_fingerprints(source_dsn("postgres"))


def flip_a_byte(blob, name: str) -> bytes:
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(name, bytes(data), overwrite=True)
    return bytes(data)


def damaging_platform(platform: LocalPlatform, blob) -> LocalPlatform:
    """The real backup job runs; then the largest data file of the pagila directory is damaged in
    storage (in the backup's staging container, where the job wrote it: the run copies it on)."""

    class Damaging(LocalPlatform):
        def run_job(self, spec, log):
            result = super().run_job(spec, log)
            staging = BlobStorageResource(
                connection_string=blob.connection_string,
                container=blob.staging_name(uuid.UUID(spec.labels["toygres/image-id"])),
            )
            names = staging.list_names("databases")
            flip_a_byte(
                staging, max((n for n in names if n.endswith(".dat.gz")), key=lambda n: len(staging.read_bytes(n)))
            )
            return result

    return Damaging(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path)


def test_a_damaged_file_of_a_directory_image_is_caught_before_ready(resources, cms, blob, platform, source):
    key = f"{source.k8s_name}__parallel-damaged"
    damaging = damaging_platform(platform, blob)
    result = materialize_image({**resources, "platform": damaging}, key, {"parallel_jobs": 2}, raise_on_error=False)
    assert not result.success
    [row] = cms.images.list()
    assert row.state is ImageState.failed
    assert "sha256" in row.error_message and ".dat.gz" in row.error_message
    assert blob.list_names(row.blob_path) == []
    assert blob.staging_image_ids() == []


def test_a_directory_archive_pg_restore_cannot_read_is_caught_even_when_its_checksum_was_rewritten(
    resources, cms, blob, source
):
    from toygres_pipelines.images.verification import ImageCorrupt, verify_image

    key = f"{source.k8s_name}__parallel-toc"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest_doc = json.loads(blob.read_bytes(f"{image.blob_path}/manifest.json"))
    toc = next(f for f in manifest_doc["files"] if f["database"] == "pagila" and f["path"].endswith("/toc.dat"))
    truncated = blob.read_bytes(f"{image.blob_path}/{toc['path']}")[: toc["size_bytes"] // 2]
    blob.write_bytes(f"{image.blob_path}/{toc['path']}", truncated, overwrite=True)
    toc.update(size_bytes=len(truncated), sha256=hashlib.sha256(truncated).hexdigest())
    blob.write_bytes(f"{image.blob_path}/manifest.json", json.dumps(manifest_doc).encode(), overwrite=True)

    with pytest.raises(ImageCorrupt, match="pg_restore cannot list the archive"):
        verify_image(blob, image.blob_path)


def test_a_damaged_file_of_a_ready_directory_image_never_becomes_an_instance(resources, cms, blob, platform, source):
    key = f"{source.k8s_name}__parallel-rot"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    data_file = max(
        (f for f in database_files(manifest, "pagila") if f.path.endswith(".dat.gz")), key=lambda f: f.size_bytes
    )
    flip_a_byte(blob, f"{image.blob_path}/{data_file.path}")

    result = restore(resources, source_image_id=image.name, name="rotten", dns_label="rotten-copy")
    assert not result.success
    assert "checksum mismatch" in failure_text(result)
    assert cms.images.get(image.id).state is ImageState.corrupt
    assert_cleaned_up(cms, platform, "run_restore_job", "checksum mismatch")


@pytest.mark.parametrize("value", [0, MAX_PARALLEL_JOBS + 1])
def test_a_backup_with_parallel_jobs_outside_the_rule_is_refused_before_any_image(resources, cms, source, value):
    result = materialize_image(
        resources, f"{source.k8s_name}__parallel-bad", {"parallel_jobs": value}, raise_on_error=False
    )
    assert not result.success
    assert f"parallel_jobs: {value} must be between 1 and {MAX_PARALLEL_JOBS}" in failure_text(result)
    assert cms.images.list() == []


def test_a_backup_request_carries_parallel_jobs_to_its_run_and_one_outside_the_rule_is_rejected(resources, cms, source):
    from tests.test_automation import RULES_ONLY
    from toygres_pipelines.images.jobs import backup_image
    from toygres_pipelines.images.sensors import evaluate_image_requests

    parallel = image_request(cms, source.k8s_name, "req-parallel", parallel_jobs=3)
    too_many = image_request(cms, source.k8s_name, "req-too-many", parallel_jobs=64)
    with dg.instance_for_test() as dagster:
        done = evaluate_image_requests(dagster, cms, RULES_ONLY)
    [run_request] = done.run_requests
    assert run_request.run_key == str(parallel.id)
    assert backup_config_of(run_request.run_config)["parallel_jobs"] == 3
    job = dg.Definitions(assets=[image], jobs=[backup_image], resources=resources).resolve_job_def("backup_image")
    dg.validate_run_config(job, run_request.run_config)
    assert done.rejected == {str(too_many.id): f"parallel_jobs: 64 must be between 1 and {MAX_PARALLEL_JOBS}"}


def test_request_backup_cli_queues_parallel_jobs_and_refuses_one_outside_the_rule(cms, monkeypatch, capsys):
    from tests.helpers import add_instance
    from toygres_pipelines import cli

    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.delenv(cli.KEY_ENV, raising=False)
    db = add_instance(cms, "db-abcde")
    capsys.readouterr()
    code = cli.main(["request-backup", "--instance", db.k8s_name, "--name", "too-many", "--parallel-jobs", "17"])
    assert code == 2
    assert capsys.readouterr().err == f"error: parallel_jobs: 17 must be between 1 and {MAX_PARALLEL_JOBS}\n"
    assert cms.requests.list(ImageRequest) == []
    assert cli.main(["request-backup", "--instance", db.k8s_name, "--name", "four", "--parallel-jobs", "4"]) == 0
    [request] = cms.requests.list(ImageRequest)
    assert (request.image_name, request.parallel_jobs) == ("four", 4)


def test_a_parallel_pg_dump_that_fails_fails_the_image_and_leaves_no_blob(resources, cms, blob, source, source_dsn):
    import threading

    import psycopg

    from tests.test_backup import blocked_database, wait_for_pg_dump_blocked

    holder = blocked_database(source_dsn, "aaa_doomed_parallel")
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=materialize_image(
                resources, f"{source.k8s_name}__parallel-dropped", {"parallel_jobs": 2}, raise_on_error=False
            )
        )
    )
    runner.start()
    try:
        wait_for_pg_dump_blocked(source_dsn("postgres"), "aaa_doomed_parallel")
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute('DROP DATABASE "aaa_doomed_parallel" WITH (FORCE)')
    finally:
        runner.join(timeout=120)
        holder.close()
    assert not outcome["result"].success
    [row] = cms.images.list()
    assert row.state is ImageState.failed
    assert "pg_dump of database aaa_doomed_parallel failed" in row.error_message
    assert blob.list_names(row.blob_path) == []
    assert blob.staging_image_ids() == []


def test_a_directory_archive_missing_a_table_data_file_is_caught(resources, cms, blob, source):
    """The file and its manifest entry are both gone (every remaining sha256 agrees): the TOC still names it."""
    from toygres_pipelines.images.verification import ImageCorrupt, verify_image

    key = f"{source.k8s_name}__parallel-gap"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest_doc = json.loads(blob.read_bytes(f"{image.blob_path}/manifest.json"))
    gone = max(
        (f for f in manifest_doc["files"] if f["database"] == "pagila" and f["path"].endswith(".dat.gz")),
        key=lambda f: f["size_bytes"],
    )
    manifest_doc["files"].remove(gone)
    blob.delete_prefix(f"{image.blob_path}/{gone['path']}")
    blob.write_bytes(f"{image.blob_path}/manifest.json", json.dumps(manifest_doc).encode(), overwrite=True)
    dump_id = gone["path"].rsplit("/", 1)[1].split(".", 1)[0]

    with pytest.raises(ImageCorrupt, match=rf"TOC names data files the manifest lacks: \['{dump_id}'\]"):
        verify_image(blob, image.blob_path)


def test_the_janitor_removes_staging_containers_no_running_backup_writes_into(cms, blob, source):
    """A run killed between its job and the copy leaves its staging container: the janitor removes
    it once the image is not `creating` any more (or is unknown), never another deployment's."""
    from toygres_pipelines.images.backup import image_prefix
    from toygres_pipelines.images.janitor import purge_orphan_staging

    def reserve() -> uuid.UUID:
        image_id = uuid.uuid4()
        cms.images.reserve(
            image_id=image_id,
            name=f"{source.k8s_name}__staged-{image_id.hex[:8]}",
            description=None,
            source=source,
            blob_storage_url=blob.storage_url,
            blob_container=blob.container,
            blob_path=image_prefix(image_id),
            run_id="r",
        )
        return image_id

    writing, dead, unknown = reserve(), reserve(), uuid.uuid4()
    cms.images.transition(dead, ImageState.failed, reason="the run died", run_id="r")
    for image_id in (writing, dead, unknown):
        blob.create_staging(image_id)
    neighbour = BlobStorageResource(connection_string=blob.connection_string, container=f"{blob.container}-other")
    neighbours_staging = uuid.uuid4()
    neighbour.create_staging(neighbours_staging)
    try:
        assert set(blob.staging_image_ids()) == {writing, dead, unknown}
        assert purge_orphan_staging(cms, blob) == 2
        assert blob.staging_image_ids() == [writing]
        assert neighbour.staging_image_ids() == [neighbours_staging]
    finally:
        blob.delete_staging(writing)
        neighbour.delete_staging(neighbours_staging)
