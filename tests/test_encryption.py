"""Client-side encryption of images with age: real PostgreSQL, Azurite, azcopy and the age CLI."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from records import ImageState, InstanceState, RestoreRequest
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir
from tests.conftest import SOURCE_PASSWORD
from tests.helpers import cms_text, dagster_text, failure_text, materialize_image, run_logs
from tests.test_restore import assert_cleaned_up, dsn_of, platform_instances, restore, schema_dump, table_fingerprints

AGE_HEADER = b"age-encryption.org/v1\n-> X25519 "


def new_identity(path: Path) -> str:
    """An age X25519 identity written to `path`; returns its recipient (the public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


def private_key(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-"))


def with_encryption(platform: LocalPlatform, **settings) -> LocalPlatform:
    """The tests' platform (same state directory, same source server) configured for encryption."""
    return LocalPlatform(state_dir=platform.state_dir, azcopy_path=platform.azcopy_path, **settings)


@pytest.fixture
def old_key(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "old.key"
    return path, new_identity(path)


@pytest.fixture
def new_key(tmp_path) -> tuple[Path, str]:
    path = tmp_path / "new.key"
    return path, new_identity(path)


def encrypting(resources: dict, platform: LocalPlatform, key: tuple[Path, str], **more) -> dict:
    path, recipient = key
    settings = {"age_recipient": recipient, "age_identity_file": str(path), "age_identity_recipients": [recipient]}
    return {**resources, "platform": with_encryption(platform, **(settings | more))}


def test_an_encrypted_image_stores_only_ciphertext_verifiable_without_the_key(
    resources, cms, blob, platform, source, old_key, tmp_path
):
    path, recipient = old_key
    dagster = dg.DagsterInstance.ephemeral()
    result = materialize_image(encrypting(resources, platform, old_key), f"{source.k8s_name}__sealed", instance=dagster)
    assert result.success, failure_text(result)
    row = cms.images.find(f"{source.k8s_name}__sealed")
    assert row.state is ImageState.ready and row.encryption_recipient == recipient

    manifest, _ = blob.read_manifest(row.blob_path)
    assert manifest.encryption is not None and manifest.encryption.recipient == recipient
    assert manifest.encryption.format == "age"
    for entry in manifest.files:
        stored = blob.read_bytes(f"{row.blob_path}/{entry.path}")
        assert stored.startswith(AGE_HEADER), entry.path
        # the manifest describes what is stored: integrity is checkable without the key
        assert len(stored) == entry.size_bytes and hashlib.sha256(stored).hexdigest() == entry.sha256

    globals_sql = blob.read_bytes(f"{row.blob_path}/globals.sql")
    assert b"CREATE ROLE" not in globals_sql and b"SCRAM-SHA-256" not in globals_sql
    pagila = next(f for f in manifest.files if f.database == "pagila")
    dump = tmp_path / "pagila.dump"
    dump.write_bytes(blob.read_bytes(f"{row.blob_path}/{pagila.path}"))
    listing = subprocess.run([str(postgres_bindir() / "pg_restore"), "--list", str(dump)], capture_output=True)
    assert listing.returncode != 0 and b"TABLE DATA" not in listing.stdout
    # with the key the stored bytes are the dump
    plain = subprocess.run(["age", "-d", "-i", str(path), str(dump)], check=True, capture_output=True).stdout
    assert plain.startswith(b"PGDMP")

    files = {
        r.data["path"]: r.data
        for r in result.asset_materializations_for_node("image")[0].metadata["files"].value.records
    }
    # the archive was parsed on the plaintext side as it streamed; storage holds only the ciphertext
    assert "age-encrypted" in files[pagila.path]["verified"]
    assert "the archive reader read every block of it while it streamed" in files[pagila.path]["verified"]
    metadata = result.asset_materializations_for_node("image")[0].metadata
    assert metadata["encryption"].value == f"age, recipient {recipient}"
    secret = private_key(path)
    assert secret not in run_logs(dagster, result.run_id) and secret not in dagster_text(dagster)
    assert secret not in cms_text(cms)


def test_an_encrypted_image_restores_pagila_exactly(resources, cms, platform, source, source_dsn, old_key):
    encrypted = encrypting(resources, platform, old_key)
    assert materialize_image(encrypted, f"{source.k8s_name}__sealed").success
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(encrypted, source_image_id=f"{source.k8s_name}__sealed", name="unsealed", instance=dagster)
    assert result.success, failure_text(result)

    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    restored = lambda db: dsn_of(platform, row, SOURCE_PASSWORD, db)  # noqa: E731
    assert schema_dump(restored("pagila")) == schema_dump(source_dsn("pagila"))
    assert table_fingerprints(restored("pagila")) == table_fingerprints(source_dsn("pagila"))
    logs = run_logs(dagster, result.run_id)
    assert "decrypting" in logs
    assert private_key(old_key[0]) not in logs and private_key(old_key[0]) not in dagster_text(dagster)
    assert private_key(old_key[0]) not in cms_text(cms)


@pytest.mark.parametrize("key", ["missing", "wrong"])
def test_a_restore_without_the_images_key_is_refused_before_anything_is_created(
    resources, cms, platform, source, old_key, new_key, key
):
    assert materialize_image(encrypting(resources, platform, old_key), f"{source.k8s_name}__sealed").success
    instances_before, volumes_before = cms.instances.list(), platform_instances(platform)
    jobs_before = set((Path(platform.state_dir) / "jobs").glob("*/restore-*"))
    if key == "missing":
        restoring = {**resources, "platform": with_encryption(platform)}
    else:
        restoring = encrypting(resources, platform, new_key)

    result = restore(restoring, source_image_id=f"{source.k8s_name}__sealed")
    assert not result.success
    message = failure_text(result)
    assert "Invalid restore request: source_image_id:" in message
    assert f"encrypted with age for recipient {old_key[1]}" in message
    assert "no identity for it" in message
    assert cms.instances.list() == instances_before and platform_instances(platform) == volumes_before
    assert set((Path(platform.state_dir) / "jobs").glob("*/restore-*")) == jobs_before


def test_an_identity_file_that_does_not_hold_the_declared_key_fails_before_initdb_and_is_cleaned_up(
    resources, cms, platform, source, old_key, new_key
):
    """The deployment declares the old recipient but mounts another key: the job says so and stops."""
    assert materialize_image(encrypting(resources, platform, old_key), f"{source.k8s_name}__sealed").success
    lying = encrypting(resources, platform, old_key, age_identity_file=str(new_key[0]))
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(lying, source_image_id=f"{source.k8s_name}__sealed", instance=dagster)
    assert not result.success
    logs = run_logs(dagster, result.run_id)
    assert f"holds no identity for recipient {old_key[1]}" in logs
    assert "initdb" not in logs and "downloading databases/" not in logs
    assert_cleaned_up(cms, platform, "run_restore_job", "holds no identity for recipient")
    assert cms.images.get(cms.images.find(f"{source.k8s_name}__sealed").id).state is ImageState.ready  # not corrupt


def test_key_rotation_new_images_use_the_new_key_old_ones_restore_with_the_old_key_beside_it(
    resources, cms, blob, platform, source, old_key, new_key, tmp_path
):
    assert materialize_image(encrypting(resources, platform, old_key), f"{source.k8s_name}__before").success

    both = tmp_path / "identities"
    both.write_text(new_key[0].read_text() + old_key[0].read_text())
    rotated = encrypting(
        resources, platform, new_key, age_identity_file=str(both), age_identity_recipients=[new_key[1], old_key[1]]
    )
    assert materialize_image(rotated, f"{source.k8s_name}__after").success
    after = cms.images.find(f"{source.k8s_name}__after")
    manifest, _ = blob.read_manifest(after.blob_path)
    assert manifest.encryption.recipient == new_key[1] and after.encryption_recipient == new_key[1]

    result = restore(rotated, source_image_id=f"{source.k8s_name}__before", name="old-key")
    assert result.success, failure_text(result)
    row = cms.instances.get(result.output_for_node("mark_instance_running").id)
    assert row.state is InstanceState.running
    # without the old key beside the new one, the old image is refused up front
    new_only = encrypting(resources, platform, new_key)
    refused = restore(new_only, source_image_id=f"{source.k8s_name}__before", dns_label="refused-db")
    assert f"encrypted with age for recipient {old_key[1]}" in failure_text(refused)


def test_an_unencrypted_deployment_stores_plain_dumps_and_says_so(resources, cms, blob, source):
    assert materialize_image(resources, f"{source.k8s_name}__plain").success
    row = cms.images.find(f"{source.k8s_name}__plain")
    manifest, _ = blob.read_manifest(row.blob_path)
    assert manifest.encryption is None and row.encryption_recipient is None
    assert blob.read_bytes(f"{row.blob_path}/globals.sql").startswith(b"--")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age_recipient", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI"),
        ("age_recipient", "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"),
        ("age_identity_recipients", ["age1short"]),
    ],
)
def test_a_setting_that_is_not_an_age_recipient_is_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"{field}: .*must be an age X25519 recipient \(age1") as refused:
        LocalPlatform(state_dir="/nonexistent", azcopy_path="/nonexistent", **{field: value})
    # a private key pasted into the wrong setting is never echoed back into a log
    assert str(value).strip("[]'") not in str(refused.value)


def test_declared_identities_without_an_identity_file_are_refused():
    recipient = "age1" + "q" * 58
    with pytest.raises(ValueError, match="age_identity_file: required when age_identity_recipients"):
        LocalPlatform(state_dir="/nonexistent", azcopy_path="/nonexistent", age_identity_recipients=[recipient])


def test_the_bench_measures_an_encrypted_backup_against_a_plain_one_in_the_same_run(
    platform, pagila_ref, blob, tmp_path
):
    from bench.encryption import bench_encryption

    result = bench_encryption(platform, pagila_ref, blob, tmp_path, repeat=1)
    plain, _ = blob.read_manifest(result.plain_prefix)
    encrypted, _ = blob.read_manifest(result.encrypted_prefix)
    assert plain.encryption is None and encrypted.encryption is not None
    assert result.plain_bytes == plain.total_bytes and result.encrypted_bytes == encrypted.total_bytes
    # age adds a header and 16 bytes per 64 KiB chunk: a little more, never less
    assert plain.total_bytes < encrypted.total_bytes < plain.total_bytes * 1.01 + 4096
    assert result.ratio == pytest.approx(result.encrypted_seconds / result.plain_seconds)
    assert f"ratio encrypted/plain {result.ratio:4.2f}" in result.line()


def test_local_encryption_settings_come_from_the_environment(monkeypatch, tmp_path):
    from toygres_pipelines.resources_from_env import platform_from_env

    recipient = "age1" + "q" * 58
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TOYGRES_AGE_RECIPIENT", recipient)
    monkeypatch.setenv("TOYGRES_AGE_IDENTITY_RECIPIENTS", recipient)
    monkeypatch.setenv("TOYGRES_AGE_IDENTITY_FILE", str(tmp_path / "identities"))
    platform = platform_from_env()
    assert isinstance(platform, LocalPlatform)
    assert platform.age_recipient == recipient and platform.age_identity_recipients == [recipient]
    assert platform.age_identity_file == str(tmp_path / "identities")


def test_the_cli_refuses_a_restore_request_no_identity_opens_and_queues_nothing(
    cms, source, tmp_path, monkeypatch, capsys
):
    import psycopg

    from tests import helpers
    from toygres_pipelines import cli

    recipient = "age1" + "q" * 58
    image = helpers.catalogued_image(cms, source, f"{source.k8s_name}__sealed-row")
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.images SET encryption_recipient = %s WHERE id = %s", (recipient, image.id))
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_STATE_DIR", str(tmp_path))
    for name in ("TOYGRES_AGE_RECIPIENT", "TOYGRES_AGE_IDENTITY_RECIPIENTS", "TOYGRES_AGE_IDENTITY_FILE"):
        monkeypatch.delenv(name, raising=False)

    code = cli.main(["request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", image.name])
    err = capsys.readouterr().err
    assert code == 2
    assert f"source_image_id: image '{image.name}' is encrypted with age for recipient {recipient}" in err
    assert cms.requests.list(RestoreRequest) == []


class JobIgnoringTheRecipient(LocalPlatform):
    """A backup job that stored plaintext although the deployment encrypts (an old job image, say)."""

    def run_job(self, spec, log):
        env = {k: v for k, v in spec.env.items() if k != "AGE_RECIPIENT"}
        return super().run_job(spec.model_copy(update={"env": env}), log)


def test_a_backup_stored_in_plaintext_by_an_encrypting_deployment_fails_and_leaves_no_blob(
    resources, cms, blob, platform, source, old_key
):
    path, recipient = old_key
    ignoring = JobIgnoringTheRecipient(
        state_dir=platform.state_dir, azcopy_path=platform.azcopy_path, age_recipient=recipient
    )
    result = materialize_image({**resources, "platform": ignoring}, f"{source.k8s_name}__leaky", raise_on_error=False)
    assert not result.success
    assert f"this deployment encrypts for {recipient}" in failure_text(result)
    row = cms.images.find(f"{source.k8s_name}__leaky")
    assert row.state is ImageState.failed and blob.list_names(row.blob_path) == []


def test_verification_of_an_encrypted_image_catches_a_file_that_is_not_age(
    resources, cms, blob, platform, source, old_key
):
    """A file swapped for plaintext with its manifest entry rewritten to match is still caught, without the key."""
    import json

    from toygres_pipelines.images.verification import ImageCorrupt, verify_image

    assert materialize_image(encrypting(resources, platform, old_key), f"{source.k8s_name}__swapped").success
    row = cms.images.find(f"{source.k8s_name}__swapped")
    manifest_doc = json.loads(blob.read_bytes(f"{row.blob_path}/manifest.json"))
    entry = next(f for f in manifest_doc["files"] if f["kind"] == "globals")
    plaintext = b"CREATE ROLE intruder LOGIN PASSWORD 'x';\n"
    blob.write_bytes(f"{row.blob_path}/globals.sql", plaintext, overwrite=True)
    entry.update(size_bytes=len(plaintext), sha256=hashlib.sha256(plaintext).hexdigest())
    blob.write_bytes(f"{row.blob_path}/manifest.json", json.dumps(manifest_doc).encode(), overwrite=True)

    with pytest.raises(ImageCorrupt, match="globals.sql: the manifest says it is age-encrypted, its bytes are not"):
        verify_image(blob, row.blob_path)


def test_on_the_local_platform_only_restore_jobs_get_a_private_copy_of_the_identities(
    platform, pagila_ref, old_key, tmp_path
):
    from resources.platform.base import JobKind, JobSpec

    path, recipient = old_key
    encrypting_platform = with_encryption(
        platform, age_recipient=recipient, age_identity_file=str(path), age_identity_recipients=[recipient]
    )
    envs = {}
    for kind in JobKind:
        job_dir = tmp_path / kind.value
        job_dir.mkdir()
        spec = JobSpec(kind=kind, name=f"{kind.value}-x", script=f"{kind.value}.sh", instance=pagila_ref)
        envs[kind] = encrypting_platform._job_env(spec, job_dir)
        assert (job_dir / "age-identities").exists() is (kind is JobKind.restore)
    assert "AGE_IDENTITY_FILE" not in envs[JobKind.backup]
    copy = Path(envs[JobKind.restore]["AGE_IDENTITY_FILE"])
    assert copy.read_text() == path.read_text() and copy.stat().st_mode & 0o777 == 0o600


def test_a_parallel_mode_image_is_encrypted_file_by_file_and_restores_pagila_exactly(
    resources, cms, blob, platform, source, source_dsn, old_key
):
    encrypted = encrypting(resources, platform, old_key)
    key = f"{source.k8s_name}__sealed-parallel"
    result = materialize_image(encrypted, key, {"parallel_jobs": 2})
    assert result.success, failure_text(result)
    row = cms.images.find(key)
    manifest, _ = blob.read_manifest(row.blob_path)
    assert manifest.parallel_jobs == 2 and manifest.encryption is not None
    directory_files = [f for f in manifest.files if f.archive is not None]
    assert len(directory_files) > 10
    for entry in manifest.files:
        stored = blob.read_bytes(f"{row.blob_path}/{entry.path}")
        assert stored.startswith(AGE_HEADER), entry.path
        assert len(stored) == entry.size_bytes and hashlib.sha256(stored).hexdigest() == entry.sha256

    restored_run = restore(encrypted, source_image_id=key, name="unsealed-parallel", dns_label="unsealed-parallel")
    assert restored_run.success, failure_text(restored_run)
    instance = restored_run.output_for_node("mark_instance_running")
    restored = lambda db: dsn_of(platform, instance, SOURCE_PASSWORD, db)  # noqa: E731
    assert table_fingerprints(restored("pagila")) == table_fingerprints(source_dsn("pagila"))
    assert schema_dump(restored("pagila")) == schema_dump(source_dsn("pagila"))
