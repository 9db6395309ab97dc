"""What client-side encryption costs a backup: the backup job (and the verification the asset runs
after it) with an age recipient against the same job without one, interleaved in the same run so
that both see the same machine. bench/backup_restore.py prints `line()`."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from records import InstanceRef
from records.parallel import SINGLE_STREAM
from resources.blob import BlobStorageResource
from resources.platform.base import JobKind, JobSpec
from resources.platform.local import LocalPlatform
from toygres_pipelines.images.backup import backup_grant
from toygres_pipelines.images.verification import verify_image


@dataclass(frozen=True)
class EncryptionBench:
    plain_seconds: float
    encrypted_seconds: float
    plain_bytes: int
    encrypted_bytes: int
    plain_prefix: str
    encrypted_prefix: str

    @property
    def ratio(self) -> float:
        return self.encrypted_seconds / self.plain_seconds

    def line(self) -> str:
        return (
            f"encryption  plain {self.plain_seconds:6.2f} s ({self.plain_bytes / 2**20:.1f} MiB)   "
            f"age {self.encrypted_seconds:6.2f} s ({self.encrypted_bytes / 2**20:.1f} MiB)   "
            f"ratio encrypted/plain {self.ratio:4.2f}   (backup job + verification, median)"
        )


def new_recipient(work_dir: Path) -> str:
    """A throwaway age identity for the bench; only its public key is used."""
    key = work_dir / "bench-age.key"
    key.unlink(missing_ok=True)
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    return subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()


def _backup(platform: LocalPlatform, source: InstanceRef, blob: BlobStorageResource, name: str, env: dict) -> float:
    prefix = f"images/{name}"
    spec = JobSpec(
        kind=JobKind.backup,
        name=f"backup-{name}",
        script="backup.sh",
        instance=source,
        env={
            "BLOB_URL": blob.folder_url(prefix),
            "IMAGE_NAME": name,
            "SOURCE_INSTANCE": source.k8s_name,
            "SOURCE_NAMESPACE": source.namespace,
            **env,
        },
        blob_sas=backup_grant(blob, prefix, 3600, SINGLE_STREAM),
    )
    started = time.perf_counter()
    platform.run_job(spec, lambda _line: None)
    verify_image(blob, prefix, full=False)  # what the image asset does before marking it ready
    return time.perf_counter() - started


def bench_encryption(
    platform: LocalPlatform,
    source: InstanceRef,
    blob: BlobStorageResource,
    work_dir: Path,
    repeat: int,
    base_env: dict[str, str] | None = None,
) -> EncryptionBench:
    recipient = new_recipient(work_dir)
    plain, encrypted = [], []
    for attempt in range(repeat):
        plain.append(_backup(platform, source, blob, f"bench-plain-{attempt}", dict(base_env or {})))
        encrypted.append(
            _backup(platform, source, blob, f"bench-age-{attempt}", {**(base_env or {}), "AGE_RECIPIENT": recipient})
        )
    plain_manifest, _ = blob.read_manifest("images/bench-plain-0")
    encrypted_manifest, _ = blob.read_manifest("images/bench-age-0")
    return EncryptionBench(
        plain_seconds=statistics.median(plain),
        encrypted_seconds=statistics.median(encrypted),
        plain_bytes=plain_manifest.total_bytes,
        encrypted_bytes=encrypted_manifest.total_bytes,
        plain_prefix="images/bench-plain-0",
        encrypted_prefix="images/bench-age-0",
    )
