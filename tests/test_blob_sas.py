"""Issue 25, least-privilege SAS: what a job's blob credential can do against Azurite.

Everything a job is handed (the restore's and the backup's `JobSpec.blob_sas`) is tried the way
tenant code that stole it would: against other images, the container listing, the job's own
files. Azurite checks blob-level SAS scope and create-versus-write like Azure does."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote

import dagster as dg
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, ContainerClient
from pydantic import SecretStr

from records import (
    BackupManifest,
    Image,
    ImageState,
    ImageType,
    Instance,
    InstanceRef,
    InstanceState,
    RestoreRequestFields,
)
from resources.blob import BlobStorageResource
from resources.platform.base import SCRIPTS_DIR, JobFailed, JobKind, JobSpec
from resources.platform.local_tools import azcopy_path
from tests.helpers import cms_text, dagster_text, failure_text, image_record, instance_record, materialize_image
from tests.test_restore import restore
from toygres_pipelines.images.backup import backup_job_spec, image_prefix
from toygres_pipelines.restores.config import RestorePlan
from toygres_pipelines.restores.steps import restore_job_spec

pytestmark = pytest.mark.integration

TIMEOUT = 3600
NOW = datetime.now(UTC)


def tokens_handed(secret: SecretStr | None) -> list[str]:
    """Every SAS token in what a job is handed: the grant (its blobs' tokens, and a container
    token if it carries one), or a bare token (what jobs were handed before the grant)."""
    assert secret is not None, "the job is handed no blob credential at all"
    text = secret.get_secret_value()
    try:
        grant = json.loads(text)
    except ValueError:
        return [text.removeprefix("?")]
    tokens = [f"{grant['query']}&sig={sig}" for sig in grant["signatures"].values()]
    return tokens + ([grant["container"]] if grant.get("container") else [])


def sample(tokens: list[str]) -> list[str]:
    """A backup's grant holds a thousand blob tokens sharing one set of permissions (they differ in
    the name they sign only): the first and last few (a container token, if any, is last) stand for all."""
    return tokens[:3] + tokens[-3:]


def denied(action) -> bool:
    try:
        action()
    except HttpResponseError as error:
        return error.status_code == 403
    return False


def blob_client(blob: BlobStorageResource, name: str, token: str) -> BlobClient:
    return BlobClient.from_blob_url(f"{blob.container_url}/{name}?{token}")


def can_list(blob: BlobStorageResource, token: str) -> bool:
    return not denied(lambda: list(ContainerClient.from_container_url(f"{blob.container_url}?{token}").list_blobs()))


def can_read(blob: BlobStorageResource, name: str, token: str) -> bool:
    return not denied(lambda: blob_client(blob, name, token).download_blob().readall())


def manifest_of(name: str, files: dict[str, bytes], database_of: dict[str, str]) -> bytes:
    return (
        BackupManifest.model_validate(
            {
                "format_version": 2,
                "image_name": name,
                "source_instance": "src",
                "source_namespace": "default",
                "postgres_version": "16",
                "server_version_num": 160000,
                "dump_format": "custom",
                "started_at": NOW,
                "finished_at": NOW,
                "tools": {},
                "files": [
                    {
                        "path": path,
                        "kind": "database" if path in database_of else "globals",
                        "database": database_of.get(path),
                        "size_bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                    for path, data in files.items()
                ],
            }
        )
        .model_dump_json()
        .encode()
    )


def stored_image(blob: BlobStorageResource, name: str) -> tuple[uuid.UUID, str]:
    """An image in blob storage (globals + two databases + manifest); its id and manifest sha256."""
    image_id = uuid.uuid4()
    files = {"globals.sql": b"-- roles", "databases/001.dump": b"one" * 100, "databases/002.dump": b"two" * 100}
    for path, data in files.items():
        blob.write_bytes(f"{image_prefix(image_id)}/{path}", data)
    manifest = manifest_of(name, files, {"databases/001.dump": "one", "databases/002.dump": "two"})
    blob.write_bytes(f"{image_prefix(image_id)}/manifest.json", manifest)
    return image_id, hashlib.sha256(manifest).hexdigest()


def instance_row(name: str) -> Instance:
    return instance_record(name, state=InstanceState.creating, created_at=NOW)


def restore_spec(blob: BlobStorageResource, image_id: uuid.UUID, sha256: str, databases: list[str] | None = None):
    plan = RestorePlan(
        request=RestoreRequestFields(name="copy", dns_label="copy", internal=True, source_image_id=str(image_id)),
        k8s_name="copy",
        namespace="default",
        storage_size_gb=1,
        image_id=image_id,
        image_name="a",
        image_type=ImageType.stock,
        postgres_version="16",
        source_postgres_version="16",
        selected_databases=databases,
        manifest_sha256=sha256,
        blob_path=image_prefix(image_id),
    )
    return restore_job_spec(plan, instance_row("copy"), blob, TIMEOUT)


def image_row(image_id: uuid.UUID) -> Image:
    return image_record(
        None,
        "src__b",
        id=image_id,
        source_k8s_name="src",
        blob_storage_url="http://unused",
        blob_container="unused",
        blob_path=image_prefix(image_id),
        state=ImageState.creating,
        created_at=NOW,
    )


def expiry_of(token: str) -> datetime:
    return datetime.fromisoformat(unquote(parse_qs(token)["se"][0]).replace("Z", "+00:00"))


# --- restore -----------------------------------------------------------------------------------


def test_a_restore_jobs_sas_reads_its_images_files_only_and_lists_nothing(blob):
    a, a_sha = stored_image(blob, "a")
    b, _ = stored_image(blob, "b")
    spec = restore_spec(blob, a, a_sha)
    tokens = tokens_handed(spec.blob_sas)
    for token in tokens:
        assert not can_list(blob, token), "a restore's SAS lists the container (every tenant's images)"
        for path in ("manifest.json", "globals.sql", "databases/001.dump"):
            assert not can_read(blob, f"{image_prefix(b)}/{path}", token), f"a restore of A reads B's {path}"
        assert denied(lambda t=token: blob_client(blob, f"{image_prefix(a)}/new", t).upload_blob(b"x"))
        assert denied(lambda t=token: blob_client(blob, f"{image_prefix(a)}/globals.sql", t).delete_blob())
        assert expiry_of(token) <= datetime.now(UTC) + timedelta(seconds=TIMEOUT + 15 * 60), "not short-lived"
    # and it does read every file of A the job downloads
    for path in ("manifest.json", "globals.sql", "databases/001.dump", "databases/002.dump"):
        assert any(can_read(blob, f"{image_prefix(a)}/{path}", t) for t in tokens), path


def test_a_selective_restores_sas_reads_only_the_files_it_downloads(blob):
    a, a_sha = stored_image(blob, "a")
    tokens = tokens_handed(restore_spec(blob, a, a_sha, databases=["two"]).blob_sas)
    for path in ("manifest.json", "globals.sql", "databases/002.dump"):
        assert any(can_read(blob, f"{image_prefix(a)}/{path}", t) for t in tokens), path
    assert not any(can_read(blob, f"{image_prefix(a)}/databases/001.dump", t) for t in tokens)


# --- backup ------------------------------------------------------------------------------------


def backup_spec_with_its_folder(blob: BlobStorageResource, image_id: uuid.UUID, parallel_jobs: int) -> JobSpec:
    """The backup's job spec, with the folder its BLOB_URL names existing (a parallel backup's
    staging container is made by the run before the job starts)."""
    spec = backup_job_spec(image_row(image_id), instance_row("src"), blob, TIMEOUT, parallel_jobs=parallel_jobs)
    container_url = spec.env["BLOB_URL"].rstrip("/")
    if not container_url.startswith(blob.container_url + "/"):
        blob.create_staging(image_id)
    return spec


def own_client(spec: JobSpec, name: str, token: str) -> BlobClient:
    return BlobClient.from_blob_url(f"{spec.env['BLOB_URL'].rstrip('/')}/{name}?{token}")


@pytest.mark.parametrize("parallel_jobs", [1, 4])
def test_a_backup_jobs_sas_reads_lists_and_deletes_nothing(blob, parallel_jobs):
    """Both modes: each writes where its BLOB_URL says (a parallel backup: its staging container)."""
    other, _ = stored_image(blob, "other")
    image_id = uuid.uuid4()
    spec = backup_spec_with_its_folder(blob, image_id, parallel_jobs)
    tokens = tokens_handed(spec.blob_sas)
    assert any(not denied(lambda t=t: own_client(spec, "globals.sql", t).upload_blob(b"-- roles")) for t in tokens)
    own = f"{image_prefix(image_id)}/globals.sql"
    for token in sample(tokens):
        assert not can_list(blob, token), "a backup's SAS lists the container"
        if parallel_jobs > 1:  # nor its own staging container
            staging = ContainerClient.from_container_url(f"{spec.env['BLOB_URL'].rstrip('/')}?{token}")
            assert denied(lambda s=staging: list(s.list_blobs())), "a parallel backup's SAS lists its staging"
        assert denied(lambda t=token: own_client(spec, "globals.sql", t).download_blob().readall()), (
            "a backup's SAS reads its own file back"
        )
        assert not can_read(blob, own, token), "a backup's SAS reads its own image back"
        assert not can_read(blob, f"{image_prefix(other)}/globals.sql", token), "a backup's SAS reads another image"
        assert denied(lambda t=token: blob_client(blob, f"{image_prefix(other)}/globals.sql", t).delete_blob())
        assert expiry_of(token) <= datetime.now(UTC) + timedelta(seconds=TIMEOUT + 15 * 60), "not short-lived"
    assert blob.read_bytes(f"{image_prefix(other)}/globals.sql") == b"-- roles"


def test_a_parallel_backups_sas_creates_or_overwrites_nothing_outside_its_own_staging(blob):
    """Parallel mode's file names (pg_dump -Fd's) are known to nobody ahead, yet its grant opens
    nothing of the images container: not another image's names, not its own image's, no stray name."""
    other, _ = stored_image(blob, "other")
    image_id = uuid.uuid4()
    spec = backup_spec_with_its_folder(blob, image_id, 4)
    tokens = tokens_handed(spec.blob_sas)
    for token in sample(tokens):
        for name in (
            f"{image_prefix(other)}/databases/003/toc.dat",
            f"{image_prefix(image_id)}/databases/001/toc.dat",
            "images/planted/manifest.json",
            "stray",
        ):
            assert denied(lambda t=token, n=name: blob_client(blob, n, t).upload_blob(b"x")), name
        for path in ("globals.sql", "manifest.json", "databases/001.dump"):
            assert denied(
                lambda t=token, p=path: blob_client(blob, f"{image_prefix(other)}/{p}", t).upload_blob(
                    b"x", overwrite=True
                )
            ), f"a parallel backup's SAS overwrites another image's {path}"
    assert [blob.read_bytes(f"{image_prefix(other)}/{p}")[:3] for p in ("globals.sql", "databases/001.dump")] == [
        b"-- ",
        b"one",
    ]
    assert blob.list_names(image_prefix(other)) == [
        f"{image_prefix(other)}/{p}"
        for p in ("databases/001.dump", "databases/002.dump", "globals.sql", "manifest.json")
    ]
    assert blob.list_names("images/planted") == [] and blob.list_names(image_prefix(image_id)) == []


def test_a_single_stream_backups_sas_writes_nothing_outside_its_images_names(blob):
    other, _ = stored_image(blob, "other")
    image_id = uuid.uuid4()
    tokens = tokens_handed(backup_job_spec(image_row(image_id), instance_row("src"), blob, TIMEOUT).blob_sas)
    for token in sample(tokens):
        for name in (f"{image_prefix(other)}/databases/003.dump", "images/planted/manifest.json", "stray"):
            assert denied(lambda t=token, n=name: blob_client(blob, n, t).upload_blob(b"x")), name
        assert denied(
            lambda t=token: blob_client(blob, f"{image_prefix(other)}/globals.sql", t).upload_blob(b"x", overwrite=True)
        ), "a single-stream backup's SAS overwrites another image's file"
        assert denied(
            lambda t=token: blob_client(blob, f"{image_prefix(image_id)}/databases/x.dat", t).upload_blob(b"x")
        )
    assert blob.list_names(image_prefix(other)) == [
        f"{image_prefix(other)}/{p}"
        for p in ("databases/001.dump", "databases/002.dump", "globals.sql", "manifest.json")
    ]


# --- the scripts use what they are handed, and never show it -------------------------------------


def run_common(tmp_path: Path, sas: SecretStr | None, blob_url: str, commands: str) -> subprocess.CompletedProcess:
    """common.sh as a job runs it: the SAS in a 0600 AZCOPY_SAS_FILE, the real azcopy."""
    sas_file = tmp_path / "sas"
    assert sas is not None
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "azcopy").symlink_to(azcopy_path())
    sas_file.write_text(sas.get_secret_value())
    sas_file.chmod(0o600)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "AZCOPY_LOG_LOCATION": str(tmp_path / "azcopy-logs"),
        "AZCOPY_JOB_PLAN_LOCATION": str(tmp_path / "azcopy-plans"),
        "AZCOPY_SAS_FILE": str(sas_file),
        "BLOB_URL": blob_url,
        "TRANSFER_STALL_SECONDS": "30",
        "TOYGRES_JOB": "t",
    }
    script = f"source {SCRIPTS_DIR}/common.sh; load_secrets; {commands}"
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)


def signatures_in(sas: SecretStr | None) -> set[str]:
    found = set()
    for token in tokens_handed(sas):
        sig = parse_qs(token)["sig"][0]
        found |= {sig, unquote(sig), token.split("sig=")[1]}
    return found


def test_a_restore_job_downloads_with_its_grant_and_never_shows_a_signature(blob, tmp_path):
    tmp_path.chmod(0o700)
    a, a_sha = stored_image(blob, "a")
    b, _ = stored_image(blob, "b")
    spec = restore_spec(blob, a, a_sha)
    folder = blob.folder_url(image_prefix(a))
    done = run_common(
        tmp_path, spec.blob_sas, folder, f'download_file databases/001.dump "{tmp_path}/one" && cat "{tmp_path}/one"'
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.endswith("one" * 100)
    # a file it holds no SAS for, and one it does but that is gone: both fail, neither shows a signature
    blob._container.delete_blob(f"{image_prefix(a)}/databases/002.dump")
    for name in (f"../{b}/globals.sql", "databases/002.dump"):
        failed = run_common(tmp_path, spec.blob_sas, folder, f'download_file "{name}" "{tmp_path}/x"')
        assert failed.returncode != 0
        shown = failed.stdout + failed.stderr
        assert not [s for s in signatures_in(spec.blob_sas) if s in shown], shown


def test_a_backup_job_uploads_with_its_grant_and_the_stall_probe_needs_no_read(blob, tmp_path):
    tmp_path.chmod(0o700)
    image_id = uuid.uuid4()
    spec = backup_job_spec(image_row(image_id), instance_row("src"), blob, TIMEOUT)
    folder = blob.folder_url(image_prefix(image_id))
    done = run_common(
        tmp_path,
        spec.blob_sas,
        folder,
        "printf roles | upload_stdin globals.sql && probe_blob_storage 10 && echo probed",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("probed")
    assert blob.read_bytes(f"{image_prefix(image_id)}/globals.sql") == b"roles"
    refused = run_common(tmp_path, spec.blob_sas, folder, "printf x | upload_stdin ../planted.sql")
    assert refused.returncode != 0
    assert not [s for s in signatures_in(spec.blob_sas) if s in refused.stdout + refused.stderr]


def test_redact_hides_every_form_of_a_grant(blob):
    """The grant file's JSON and each URL built from it, passed through common.sh's redact."""
    grants = [
        backup_job_spec(image_row(uuid.uuid4()), instance_row("src"), blob, TIMEOUT, parallel_jobs=4).blob_sas,
        restore_spec(blob, *stored_image(blob, "a")).blob_sas,
    ]
    for grant in grants:
        assert grant is not None
        urls = "\n".join(f"{blob.container_url}/x?{token}" for token in sample(tokens_handed(grant)))
        text = f"{grant.get_secret_value()}\n{urls}\n"
        shown = subprocess.run(
            ["bash", "-c", f"source {SCRIPTS_DIR}/common.sh; redact"], input=text, capture_output=True, text=True
        ).stdout
        assert shown.count("\n") == text.count("\n")
        assert not [s for s in signatures_in(grant) if s in shown], shown


# --- through the real jobs ------------------------------------------------------------------------


def test_a_single_stream_backup_with_more_databases_than_its_grant_names_is_refused_before_dumping(
    blob, platform, source
):
    """backup.sh checks, right after listing the databases, that its grant names a dump for each."""
    prefix = f"images/{uuid.uuid4()}"
    spec = JobSpec(
        kind=JobKind.backup,
        name="backup-too-many",
        script="backup.sh",
        instance=InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace),
        env={
            "BLOB_URL": blob.folder_url(prefix),
            "IMAGE_NAME": "x",
            "SOURCE_INSTANCE": source.k8s_name,
            "SOURCE_NAMESPACE": source.namespace,
        },
        blob_sas=blob.write_grant(prefix, ["globals.sql", "manifest.json", "databases/001.dump"], 600),
    )
    with pytest.raises(JobFailed) as failed:
        platform.run_job(spec, lambda _line: None)
    assert any(
        "more than this job's blob grant names dumps for: back it up in parallel mode" in line
        for line in failed.value.result.log_tail
    ), failed.value.result.log_tail
    assert not [name for name in blob.list_names(prefix) if name.endswith(".dump")]


UNREDACTED_SIGNATURE = re.compile(r"sig=(?!REDACTED)[^&\s\"']+")


def test_no_signature_reaches_the_run_logs_or_the_cms_of_a_backup_and_a_restore(resources, cms, source):
    dagster = dg.DagsterInstance.ephemeral()
    assert materialize_image(resources, f"{source.k8s_name}__sas", instance=dagster).success
    image = cms.images.find(f"{source.k8s_name}__sas")
    result = restore(resources, source_image_id=str(image.id), name="sas-copy", dns_label="sas-copy", instance=dagster)
    assert result.success, failure_text(result)
    for text in (dagster_text(dagster), cms_text(cms)):
        assert not UNREDACTED_SIGNATURE.search(text)
        assert '"signatures"' not in text


def test_a_grant_is_signed_from_any_spelling_of_an_account_key_connection_string(blob):
    """Connection string keys are case-insensitive (the SDK reads `accountkey=` as AccountKey):
    the grant is signed with the key the client uses, not a KeyError mid-run."""
    lowered = ";".join(
        f"{key.lower()}={value}"
        for key, _, value in (part.partition("=") for part in (blob.connection_string or "").split(";") if part)
    )
    same = BlobStorageResource(connection_string=lowered, container=blob.container)
    image, sha = stored_image(blob, "a")
    tokens = tokens_handed(restore_spec(same, image, sha).blob_sas)
    assert any(can_read(blob, f"{image_prefix(image)}/globals.sql", t) for t in tokens)


def test_a_connection_string_without_an_account_key_is_refused_by_name_without_its_secret(blob):
    """A SAS connection string reaches blob storage but cannot sign grants: a clear error naming
    the setting and the rule, never the SAS it holds."""
    secret = "sv=2024-11-04&ss=b&srt=sco&sp=rwdlac&se=2099-01-01T00:00:00Z&sig=c2VjcmV0LXNpZw%3D%3D"
    endpoint = blob.storage_url.rstrip("/")
    sas_only = BlobStorageResource(
        connection_string=f"BlobEndpoint={endpoint};SharedAccessSignature={secret}", container=blob.container
    )
    with pytest.raises(Exception) as refused:
        sas_only.read_grant("images/x", ["manifest.json"], TIMEOUT)
    assert "connection_string" in str(refused.value) and "AccountKey" in str(refused.value)
    assert "c2VjcmV0" not in str(refused.value) and "sig=" not in str(refused.value)
