"""Per-backup verification without a second full transfer: the archive is parsed while it streams,
blob storage's sizes and sampled ranges are compared with what was sent, and an image whose stored
bytes differ from the stream never becomes ready."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import pytest
from azure.storage.blob import ContainerClient

from records import ImageState, InstanceRef
from records.parallel import SINGLE_STREAM
from resources.platform.base import JobFailed, JobKind, JobSpec
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir
from tests.helpers import failure_text, materialize_image
from toygres_pipelines.images import backup as backup_module
from toygres_pipelines.images.backup import backup_grant
from toygres_pipelines.images.verification import ImageCorrupt, verify_image

pytestmark = pytest.mark.integration


def backup_spec(blob, source, name: str, **env: str) -> JobSpec:
    return JobSpec(
        kind=JobKind.backup,
        name=f"backup-{name}",
        script="backup.sh",
        instance=InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace),
        env={
            "BLOB_URL": blob.folder_url(f"images/{name}"),
            "IMAGE_NAME": name,
            "SOURCE_INSTANCE": source.k8s_name,
            "SOURCE_NAMESPACE": source.namespace,
            **env,
        },
        blob_sas=backup_grant(blob, f"images/{name}", 3600, SINGLE_STREAM),
    )


def test_a_dump_that_does_not_parse_fails_the_backup_job_itself(blob, platform, source, stack):
    """pg_dump exits 0 but its archive is cut short: the parser on the stream fails the job, no manifest."""
    fake_bin = Path(tempfile.mkdtemp(dir=stack.root, prefix="fake-bin-"))
    fake_bin.chmod(0o755)
    (fake_bin / "pg_dump").write_text(f'#!/bin/bash\n"{postgres_bindir()}/pg_dump" "$@" | head -c 300\nexit 0\n')
    (fake_bin / "pg_dump").chmod(0o755)
    job_path = f"{fake_bin}:{platform._shared_bin()}:{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin"
    spec = backup_spec(blob, source, "unparseable", PATH=job_path)
    with pytest.raises(JobFailed, match="does not parse as an archive"):
        platform.run_job(spec, lambda _line: None)
    assert "images/unparseable/manifest.json" not in blob.list_names("images/unparseable")


class DownloadCounter:
    """Counts the bytes every download from blob storage returns, per blob name."""

    def __init__(self, monkeypatch):
        self.bytes: dict[str, int] = {}
        original = ContainerClient.download_blob

        def counting(client, blob, *args, **kwargs):
            downloader = original(client, blob, *args, **kwargs)
            self.bytes[str(blob)] = self.bytes.get(str(blob), 0) + downloader.size
            return downloader

        monkeypatch.setattr(ContainerClient, "download_blob", counting)


def test_per_backup_verification_reads_sampled_ranges_not_the_whole_dump(resources, cms, blob, source, monkeypatch):
    monkeypatch.setattr(backup_module, "CHECK_CHUNK_BYTES", 64 * 1024)
    downloads = DownloadCounter(monkeypatch)
    result = materialize_image(resources, f"{source.k8s_name}__sampled", raise_on_error=False)
    assert result.success, failure_text(result)
    image = cms.images.find(f"{source.k8s_name}__sampled")
    manifest, _ = blob.read_manifest(image.blob_path)
    pagila = next(f for f in manifest.files if f.database == "pagila")
    assert pagila.size_bytes > 8 * 64 * 1024  # many ranges, so a sample is far from the whole
    read = downloads.bytes.get(f"{image.blob_path}/{pagila.path}", 0)
    assert 0 < read <= 4 * 64 * 1024, f"read {read} of {pagila.size_bytes} bytes"
    assert manifest.compression
    [check] = result.get_asset_check_evaluations()
    verdicts = {r.data["path"]: r.data["verified"] for r in check.metadata["files"].value.records}
    assert "the archive reader read every block of it while it streamed" in verdicts[pagila.path]
    assert "sha256" not in verdicts[pagila.path]  # no claim that every byte was re-hashed
    assert check.metadata["method"].value.startswith("streamed")


def truncate_tail(data: bytes) -> bytes:
    return data[:-10]


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


@pytest.mark.parametrize("tamper", [truncate_tail, flip_last_byte, flip_first_byte])
def test_stored_bytes_that_differ_from_the_stream_never_become_ready(resources, cms, blob, source, monkeypatch, tamper):
    """Blob storage ends up holding other bytes than were sent: the image fails before ready."""
    original = LocalPlatform.run_job

    def run_then_tamper(platform, spec, log):
        result = original(platform, spec, log)
        dump = f"{spec.env['BLOB_URL'].split('/' + blob.container + '/', 1)[1]}/databases/001.dump"
        blob.write_bytes(dump, tamper(blob.read_bytes(dump)), overwrite=True)
        return result

    monkeypatch.setattr(LocalPlatform, "run_job", run_then_tamper)
    result = materialize_image(resources, f"{source.k8s_name}__tampered", raise_on_error=False)
    assert not result.success
    assert "databases/001.dump: " in failure_text(result)
    image = cms.images.find(f"{source.k8s_name}__tampered")
    assert image.state is ImageState.failed
    assert [e.to_state for e in cms.events.of(image.id)] == ["creating", "failed"]


def test_the_full_re_read_stays_available_and_catches_what_a_sample_cannot(resources, cms, blob, source, monkeypatch):
    """A byte changed in a range the sample skipped: only the full mode (reverify, drills, restore) sees it."""
    monkeypatch.setattr(backup_module, "CHECK_CHUNK_BYTES", 64 * 1024)
    assert materialize_image(resources, f"{source.k8s_name}__full").success
    image = cms.images.find(f"{source.k8s_name}__full")
    manifest, _ = blob.read_manifest(image.blob_path)
    pagila = next(f for f in manifest.files if f.database == "pagila")
    name = f"{image.blob_path}/{pagila.path}"
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(name, bytes(data), overwrite=True)
    with pytest.raises(ImageCorrupt, match=f"{pagila.path}: (sha256|pg_restore cannot read)"):
        verify_image(blob, image.blob_path, expected_manifest_sha256=image.backup_checksum)


def programs_a_backup_runs(blob, platform, source, stack, name: str, chunk_bytes: int) -> list[str]:
    """Every program the backup job executes (strace -f on the job's shell), in order."""
    traced = Path(tempfile.mkdtemp(dir=stack.root, prefix="traced-bin-"))
    traced.chmod(0o777)  # the job account writes the trace here
    trace = traced / "execs"
    # the platform starts the job as `bash backup.sh` found on the job's PATH
    (traced / "bash").write_text(
        f'#!/bin/sh\nexec strace -f -qq --seccomp-bpf -e trace=execve -e signal=none -o "{trace}" /bin/bash "$@"\n'
    )
    (traced / "bash").chmod(0o755)
    job_path = f"{traced}:{platform._shared_bin()}:{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin"
    # no reporter or watchdog turn during the job: their processes depend on time, not on the stream
    spec = backup_spec(
        blob,
        source,
        name,
        PATH=job_path,
        CHECK_CHUNK_BYTES=str(chunk_bytes),
        PROGRESS_SECONDS="3600",
        TRANSFER_STALL_SECONDS="3600",
    )
    platform.run_job(spec, lambda _line: None)
    started: dict[str, str] = {}
    programs = []
    for line in trace.read_text().splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        if call.startswith("execve("):
            started[pid] = call.split('"', 2)[1]
            if "<unfinished ...>" in call:
                continue
        elif not call.startswith("<... execve resumed>"):
            continue
        if call.rstrip().endswith("= 0"):
            programs.append(Path(started[pid]).name)
    return programs


def test_the_processes_a_backup_starts_do_not_grow_with_its_streams_length(blob, platform, source, stack):
    """Each byte of a dump is copied into as few processes as the stream's length allows: hashing,
    range hashes and the byte count are one process per file, not one pair per 64 KiB range."""
    one_range = programs_a_backup_runs(blob, platform, source, stack, "processes-one-range", 64 * 1024 * 1024)
    many_ranges = programs_a_backup_runs(blob, platform, source, stack, "processes-many-ranges", 64 * 1024)
    manifest, _ = blob.read_manifest("images/processes-many-ranges")
    pagila = next(f for f in manifest.files if f.database == "pagila")
    assert pagila.stream_check is not None
    assert len(pagila.stream_check.chunk_sha256) > 8  # the stream is many ranges long
    grown = Counter(many_ranges) - Counter(one_range)
    assert sum(grown.values()) <= 2, f"{len(many_ranges)} programs against {len(one_range)}, more: {dict(grown)}"


def test_a_digest_that_stops_reading_early_fails_the_backup_job(blob, platform, source, stack):
    """The stream's hashes and size come from one reader of it: when that reader stops early (and
    even claims success with results of its own), the stream to blob storage breaks and the job fails."""
    fake_bin = Path(tempfile.mkdtemp(dir=stack.root, prefix="short-digest-bin-"))
    fake_bin.chmod(0o755)
    (fake_bin / "python3").write_text(
        "#!/bin/bash\n"
        'if [[ "$1" == */stream_digest.py && "$3" == *.dump ]]; then\n'
        "  head -c 100 >/dev/null\n"
        '  echo 100 >"$3.size"; echo 100 >"$3.count"; : >"$3.chunks"; printf "%064d\\n" 0 >"$3.sha256"\n'
        "  exit 0\n"
        "fi\n"
        'exec /usr/bin/python3 "$@"\n'
    )
    (fake_bin / "python3").chmod(0o755)
    job_path = f"{fake_bin}:{platform._shared_bin()}:{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin"
    spec = backup_spec(blob, source, "short-digest", PATH=job_path)
    with pytest.raises(JobFailed, match="pg_dump of database pagila failed"):
        platform.run_job(spec, lambda _line: None)
    assert "images/short-digest/manifest.json" not in blob.list_names("images/short-digest")
