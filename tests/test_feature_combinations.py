"""Features together on one image: encryption + parallel mode + selective restore + upgrade,
drills and full re-reads of such images, `images --show` (PostgreSQL, Azurite, azcopy, age)."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from pydantic import SecretStr

from records import ImageState, InstanceRef, InstanceState, RestoreRequest
from resources.platform.base import JobFailed
from resources.platform.postgres_server import postgres_bindir
from tests.helpers import catalogued_image, failure_text, materialize_image, run_logs
from tests.test_cli_restore_options import run  # noqa: F401 - fixture
from tests.test_data_path import (
    alive,
    assert_nothing_of_the_job_left,
    connect_to_database,
    restore_spec,
    run_in_thread,
    script_running_pg_restore,
    serve_pgdata,
    server_dsn,
    temporary_server,
    wait_until,
)
from tests.test_drills import drill
from tests.test_encryption import encrypting, old_key  # noqa: F401 - fixture
from tests.test_restore import assert_cleaned_up, dsn_of, platform_instances, restore
from tests.test_restore_options_stack import ODD_NAME, TWO_DB_PASSWORD, databases_of, provision_two_databases
from tests.test_streaming_verification import backup_spec
from toygres_pipelines.dev.demo import provision_server, register_running
from toygres_pipelines.images.verification import verify_image


@pytest.fixture(scope="module")
def two_db_ref(platform) -> InstanceRef:
    """This module's own server with `alpha` and ODD_NAME (test_restore_options_stack's, under another name)."""
    return provision_two_databases(platform, InstanceRef(k8s_name="combo-two-dbs", namespace="default"))


@pytest.fixture(scope="module")
def combo_ref(platform) -> InstanceRef:
    """A server of this module's own (other modules' servers are their own fixtures' to set up)."""
    ref = InstanceRef(k8s_name="combo-src", namespace="default")
    provision_server(platform, ref, SecretStr("combo-src-Pw"))
    return ref


def test_encrypted_parallel_image_selective_upgrade_restore_drill_and_reverify(
    resources,
    cms,
    blob,
    platform,
    two_db_ref,
    old_key,  # noqa: F811
):
    source = register_running(cms, platform, two_db_ref)
    encrypted = encrypting(resources, platform, old_key)
    key = f"{source.k8s_name}__sealed-par"
    made = materialize_image(encrypted, key, {"parallel_jobs": 2})
    assert made.success, failure_text(made)
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    assert manifest.encryption is not None and manifest.parallel_jobs == 2
    assert manifest.row_counts_by_database()[ODD_NAME] == {"public.items": 2}

    # a full re-read of the encrypted directory archives
    verify_image(blob, image.blob_path, expected_manifest_sha256=image.backup_checksum, full=True)

    # selective + upgrade restore of the odd-named database
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        encrypted,
        source_image_id=image.name,
        databases=[ODD_NAME],
        postgres_version="16",
        name="odd-16",
        dns_label="odd-16",
        instance=dagster,
    )
    assert result.success, failure_text(result)
    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    assert row.state is InstanceState.running and row.postgres_version == "16"
    restored = lambda db: dsn_of(platform, row, TWO_DB_PASSWORD, db)  # noqa: E731
    assert databases_of(restored("postgres")) == {"postgres", ODD_NAME}
    with psycopg.connect(restored(ODD_NAME)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    assert "decrypting" in run_logs(dagster, result.run_id)

    # a drill of the encrypted parallel image compares the odd-named database's counts
    dagster = dg.DagsterInstance.ephemeral()
    drilled = drill(encrypted, image.name, dagster)
    assert drilled.success, failure_text(drilled)
    assert cms.images.find(key).state is ImageState.ready


def test_images_show_of_a_parallel_image_lists_each_database_once_with_its_rows(
    resources,
    cms,
    blob,
    platform,
    two_db_ref,
    run,  # noqa: F811
):
    source = register_running(cms, platform, two_db_ref)
    key = f"{source.k8s_name}__par-show"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    code, out, err = run("images", "--show", image.name, "--json")
    assert code == 0, err
    shown = {d["database"]: d for d in json.loads(out)["databases"]}
    assert set(shown) == {"alpha", "postgres", ODD_NAME}
    assert shown[ODD_NAME]["rows"] == 2 and shown["alpha"]["rows"] == 3
    assert shown[ODD_NAME]["size_bytes"] == sum(f.size_bytes for f in manifest.database_files()[ODD_NAME])
    code, out, err = run("images", "--show", image.name)
    assert code == 0, err
    assert repr(ODD_NAME) in out


@pytest.mark.parametrize("state", ["creating", "ready_without_manifest"])
def test_images_show_of_an_image_without_a_manifest_says_so_clearly(cms, source, run, state):  # noqa: F811
    if state == "creating":
        image = cms.images.reserve(
            image_id=None,
            name=f"{source.k8s_name}__pending-show",
            description=None,
            source=source,
            blob_storage_url="http://127.0.0.1:1/none",
            blob_container="none",
            blob_path="images/none-pending",
            run_id=None,
        )
    else:
        image = catalogued_image(cms, source, f"{source.k8s_name}__lost-show")
    code, out, err = run("images", "--show", image.name)
    assert "unexpected" not in err and "Traceback" not in err, err
    if state == "creating":
        assert code == 2 and err.startswith(f"error: image: {image.name!r} is creating: it has no manifest"), err
    else:
        assert code == 1 and err.startswith(f"error: image {image.name!r} is ready but its manifest cannot be read: ")
        assert "manifest.json: missing from blob storage" in err, err


def test_an_encrypted_parallel_dump_whose_toc_does_not_parse_fails_the_backup_job(
    blob,
    platform,
    source,
    stack,
    old_key,  # noqa: F811
):
    """Verification cannot read an encrypted toc.dat (no key): the job itself lists each directory
    archive before it is recorded, as verification does for a plaintext one."""
    fake_bin = Path(tempfile.mkdtemp(dir=stack.root, prefix="fake-bin-"))
    fake_bin.chmod(0o755)
    (fake_bin / "pg_dump").write_text(
        "#!/bin/bash\n"
        f'"{postgres_bindir()}/pg_dump" "$@" || exit\n'
        'previous=""; for arg in "$@"; do\n'
        '  [[ "$previous" == -f ]] && truncate -s 40 "$arg/toc.dat"; previous=$arg\n'
        "done\n"
    )
    (fake_bin / "pg_dump").chmod(0o755)
    job_path = f"{fake_bin}:{platform._shared_bin()}:{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin"
    spec = backup_spec(blob, source, "sealed-unparseable", PATH=job_path, AGE_RECIPIENT=old_key[1], PARALLEL_JOBS="2")
    with pytest.raises(JobFailed, match="does not parse as an archive"):
        platform.run_job(spec, lambda _line: None)
    assert "images/sealed-unparseable/manifest.json" not in blob.list_names("images/sealed-unparseable")


def test_a_later_file_of_an_encrypted_parallel_image_flipped_never_becomes_an_instance(
    resources,
    cms,
    blob,
    platform,
    source,
    old_key,  # noqa: F811
):
    """The restore overlaps: pagila is restored while later files download; the postgres
    database's toc.dat (the last file) is damaged."""
    encrypted = encrypting(resources, platform, old_key)
    key = f"{source.k8s_name}__sealed-flip"
    assert materialize_image(encrypted, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    last = manifest.files[-1]
    assert last.database == "postgres" and last.path.endswith("/toc.dat")
    name = f"{image.blob_path}/{last.path}"
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(name, bytes(data), overwrite=True)

    dagster = dg.DagsterInstance.ephemeral()
    result = restore(encrypted, source_image_id=image.name, instance=dagster)
    assert not result.success
    assert "restoring database pagila" in run_logs(dagster, result.run_id)  # the overlap reached pagila first
    assert_cleaned_up(cms, platform, "run_restore_job", "checksum mismatch")
    assert cms.images.get(image.id).state is ImageState.corrupt


def test_sigterm_during_an_encrypted_parallel_overlapped_restore_leaves_nothing_running(
    resources,
    cms,
    blob,
    platform,
    combo_ref,
    old_key,  # noqa: F811
):
    """SIGTERM to the script alone (as Kubernetes sends it) while pg_restore -j runs a directory
    archive that was decrypted while the downloader went on: no process, server or staging left."""
    small_source = register_running(cms, platform, combo_ref)
    with psycopg.connect(server_dsn(platform, combo_ref), autocommit=True) as admin:
        admin.execute("CREATE DATABASE slow_restore")
    with connect_to_database(server_dsn(platform, combo_ref), "slow_restore") as conn:
        conn.execute("CREATE TABLE delay (seconds int)")
        conn.execute("INSERT INTO delay VALUES (0)")
        conn.execute("CREATE MATERIALIZED VIEW slow AS SELECT pg_sleep(seconds) IS NULL AS slept FROM delay")
        conn.execute("UPDATE delay SET seconds = 3600")
    encrypted = encrypting(resources, platform, old_key)
    sealed = encrypted["platform"]
    key = f"{small_source.k8s_name}__sigterm-sealed"
    assert materialize_image(encrypted, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    ref = InstanceRef(k8s_name="sigterm-sealed", namespace="default")
    spec = restore_spec(cms, blob, sealed, image, ref, RESTORE_JOBS="2")
    pgdata = serve_pgdata(sealed, spec, ref)
    thread, outcome = run_in_thread(sealed, spec)
    postmaster = None
    try:
        postmaster, _ = temporary_server(pgdata)
        script, job_group = script_running_pg_restore(sealed, spec, ref)
        os.kill(script, signal.SIGTERM)
        thread.join(timeout=120)
        assert not thread.is_alive(), "the job is still running after SIGTERM"
        assert isinstance(outcome.get("error"), JobFailed), outcome
        assert wait_until(lambda: not alive(postmaster), timeout=30), ("the temporary server outlived its job", outcome)
        assert_nothing_of_the_job_left(sealed, spec, ref, job_group)
    finally:
        if postmaster is not None and alive(postmaster):
            os.kill(postmaster, signal.SIGQUIT)
        thread.join(timeout=120)
        sealed.delete_instance(ref)


def test_a_16_source_backed_up_zstd_parallel_encrypted_restores_reverifies_and_drills(
    resources,
    cms,
    blob,
    platform,
    two_db_ref,
    old_key,  # noqa: F811
):
    """PostgreSQL 16 (an upgrade restore of a 15 image) as a source: compression zstd:1 (or gzip 1
    where this pg_dump lacks zstd), parallel mode and encryption on the same image."""
    source = register_running(cms, platform, two_db_ref)
    encrypted = encrypting(resources, platform, old_key)
    assert materialize_image(encrypted, f"{source.k8s_name}__to16").success
    upgraded = restore(
        encrypted, source_image_id=f"{source.k8s_name}__to16", postgres_version="16", name="src16", dns_label="src16"
    )
    assert upgraded.success, failure_text(upgraded)
    source16 = cms.instances.get(upgraded.output_for_node("mark_instance_running").id)

    key = f"{source16.k8s_name}__zpar"
    made = materialize_image(encrypted, key, {"parallel_jobs": 2})
    assert made.success, failure_text(made)
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    assert manifest.postgres_version == "16" and manifest.compression in ("zstd:1", "gzip:1")
    assert manifest.encryption is not None and manifest.parallel_jobs == 2
    verify_image(blob, image.blob_path, expected_manifest_sha256=image.backup_checksum, full=True)

    result = restore(encrypted, source_image_id=key, name="from-zpar", dns_label="from-zpar")
    assert result.success, failure_text(result)
    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    with psycopg.connect(dsn_of(platform, row, TWO_DB_PASSWORD, ODD_NAME)) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2,)
    drilled = drill(encrypted, key, dg.DagsterInstance.ephemeral())
    assert drilled.success, failure_text(drilled)


def test_a_drill_of_an_encrypted_image_without_its_key_fails_clearly_and_leaves_nothing(
    resources,
    cms,
    platform,
    source,
    old_key,  # noqa: F811
):
    key = f"{source.k8s_name}__sealed-drill"
    assert materialize_image(encrypting(resources, platform, old_key), key).success
    before = platform_instances(platform)
    dagster = dg.DagsterInstance.ephemeral()
    drilled = drill(resources, key, dagster)  # this deployment holds no identity
    assert not drilled.success
    [row] = [d for d in cms.drills.list() if d.run_id == drilled.run_id]
    assert row.result.value == "failed" and "identit" in (row.reason or ""), row
    assert platform_instances(platform) == before
    assert all(
        i.state in (InstanceState.running, InstanceState.deleted, InstanceState.failed) for i in cms.instances.list()
    )
    assert [i for i in cms.instances.list() if i.state is InstanceState.running] == [cms.instances.get(source.id)]
    assert cms.images.find(key).state is ImageState.ready


def test_an_encrypted_parallel_dump_missing_a_data_file_its_toc_names_fails_the_backup_job(
    blob,
    platform,
    source,
    stack,
    old_key,  # noqa: F811
):
    """Verification checks a plaintext archive's TOC against its files; an encrypted one is checked by the job."""
    fake_bin = Path(tempfile.mkdtemp(dir=stack.root, prefix="fake-bin-"))
    fake_bin.chmod(0o755)
    (fake_bin / "pg_dump").write_text(
        "#!/bin/bash\n"
        'args=(); previous=""; for arg in "$@"; do\n'
        '  if [[ "$previous" == -f ]]; then target=$arg; arg=$arg.real; fi; args+=("$arg"); previous=$arg\n'
        "done\n"
        f'"{postgres_bindir()}/pg_dump" "${{args[@]}}" || exit\n'
        '[[ -n "${target:-}" ]] || exit 0\n'
        'first=$(ls "$target.real" | grep -E "^[0-9]+[.]dat" | head -n 1) && rm "$target.real/$first"\n'
        'mv "$target.real" "$target"\n'
    )
    (fake_bin / "pg_dump").chmod(0o755)
    job_path = f"{fake_bin}:{platform._shared_bin()}:{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin"
    spec = backup_spec(blob, source, "sealed-holey", PATH=job_path, AGE_RECIPIENT=old_key[1], PARALLEL_JOBS="2")
    with pytest.raises(JobFailed, match="names data files the dump lacks"):
        platform.run_job(spec, lambda _line: None)
    assert "images/sealed-holey/manifest.json" not in blob.list_names("images/sealed-holey")


def test_request_restore_of_databases_of_an_image_whose_manifest_is_gone_says_so(cms, source, run):  # noqa: F811
    image = catalogued_image(cms, source, f"{source.k8s_name}__lost-pick")
    code, _, err = run("request-restore", "--name", "pick", "--dns-label", "pick-db", "--image", image.name,
                       "--database", "pagila")  # fmt: skip
    assert "unexpected" not in err, err
    assert code == 2 and err.startswith(f"error: source_image_id: image {image.name!r}: its manifest cannot be read"), (
        err
    )
    assert cms.requests.list(RestoreRequest) == []


def test_a_drill_compares_counts_of_tables_with_odd_names_in_an_odd_database(
    resources,
    cms,
    blob,
    platform,
    two_db_ref,
):
    source = register_running(cms, platform, two_db_ref)
    endpoints = platform.endpoints(two_db_ref)
    with psycopg.connect(
        host=endpoints.host, port=endpoints.port, user="postgres", password=TWO_DB_PASSWORD, dbname=ODD_NAME
    ) as conn:
        conn.execute('CREATE SCHEMA IF NOT EXISTS "Odd.Schema\n\'x"')
        conn.execute('CREATE TABLE IF NOT EXISTS "Odd.Schema\n\'x"."T""able.1" (v int)')
        conn.execute('INSERT INTO "Odd.Schema\n\'x"."T""able.1" VALUES (1), (2), (3)')
    key = f"{source.k8s_name}__odd-tables"
    assert materialize_image(resources, key).success
    manifest, _ = blob.read_manifest(cms.images.find(key).blob_path)
    assert manifest.row_counts_by_database()[ODD_NAME]['"Odd.Schema\n\'x"."T""able.1"'] == 3
    dagster = dg.DagsterInstance.ephemeral()
    drilled = drill(resources, key, dagster)
    assert drilled.success, failure_text(drilled)
    [row] = [d for d in cms.drills.list() if d.run_id == drilled.run_id]
    assert row.result.value == "passed" and row.tables_checked >= 3, row


@pytest.mark.parametrize("selected", [None, ["pagila"]])
def test_restore_sh_without_the_sums_in_its_env_reads_them_from_the_verified_manifest(
    resources, cms, blob, platform, source, selected
):
    """What a parallel image of thousands of tables gets (the list would not fit an environment variable)."""
    key = f"{source.k8s_name}__no-sums-{len(selected or [])}"
    assert materialize_image(resources, key, {"parallel_jobs": 2}).success
    image = cms.images.find(key)
    manifest, _ = blob.read_manifest(image.blob_path)
    expected = [f for f in manifest.files if selected is None or f.kind != "database" or f.database in selected]
    ref = InstanceRef(k8s_name=f"no-sums-{len(selected or [])}", namespace="default")
    spec = restore_spec(cms, blob, platform, image, ref, RESTORE_JOBS="2")
    env = {k: v for k, v in spec.env.items() if k != "BACKUP_SHA256SUMS"}
    if selected:
        env["RESTORE_DATABASES"] = json.dumps(selected)
    lines: list[str] = []
    try:
        platform.run_job(spec.model_copy(update={"env": env}), lines.append)
        assert any(f"all {len(expected)} file(s) match their sha256" in line for line in lines), lines[-5:]
        # a damaged file is still caught by its sha256 from the manifest
        damaged = next(f for f in expected if f.database == "pagila" and f.path.endswith("toc.dat"))
        data = bytearray(blob.read_bytes(f"{image.blob_path}/{damaged.path}"))
        data[len(data) // 2] ^= 0x01
        blob.write_bytes(f"{image.blob_path}/{damaged.path}", bytes(data), overwrite=True)
        with pytest.raises(JobFailed, match="checksum mismatch"):
            platform.run_job(spec.model_copy(update={"env": env}), lines.append)
    finally:
        platform.delete_instance(ref)
