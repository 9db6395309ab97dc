"""Proof that an image in blob storage is whole and restorable, before anyone relies on it."""

from __future__ import annotations

import subprocess
import threading

from pydantic import BaseModel

from resources.blob import MANIFEST_NAME, BlobStorageResource
from resources.platform.postgres_server import postgres_bindir
from toygres_pipelines.models import BackupFile, BackupManifest


class ImageCorrupt(RuntimeError):
    pass


class FileCheck(BaseModel):
    path: str
    size_bytes: int
    sha256: str
    toc_entries: int | None = None


class VerificationReport(BaseModel):
    manifest_sha256: str
    total_bytes: int
    files: list[FileCheck]


def _hash_and_list(blob: BlobStorageResource, name: str, is_dump: bool) -> FileCheck:
    """One download: hash every byte and, for a dump, feed it to `pg_restore --list`."""
    import hashlib

    digest = hashlib.sha256()
    size = 0
    lister = None
    listing: list[str] = []
    if is_dump:
        lister = subprocess.Popen(
            [str(postgres_bindir() / "pg_restore"), "--list"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        reader = threading.Thread(target=lambda: listing.extend(lister.stdout.read().decode(errors="replace").splitlines()))
        reader.start()
    try:
        for chunk in blob.iter_chunks(name):
            digest.update(chunk)
            size += len(chunk)
            if lister is not None:
                lister.stdin.write(chunk)
    except BrokenPipeError:
        pass  # pg_restore stopped reading: its exit code says why
    finally:
        if lister is not None:
            try:
                lister.stdin.close()
            except BrokenPipeError:
                pass
    toc_entries = None
    if lister is not None:
        returncode = lister.wait(timeout=300)
        reader.join()
        if returncode != 0:
            error = lister.stderr.read().decode(errors="replace").strip()
            raise ImageCorrupt(f"{name}: pg_restore --list rejects it: {error}")
        toc_entries = sum(1 for line in listing if line and not line.startswith(";"))
    return FileCheck(path=name, size_bytes=size, sha256=digest.hexdigest(), toc_entries=toc_entries)


def check_file(blob: BlobStorageResource, prefix: str, expected: BackupFile) -> FileCheck:
    name = f"{prefix.rstrip('/')}/{expected.path}"
    actual = _hash_and_list(blob, name, is_dump=expected.kind == "database")
    if actual.size_bytes != expected.size_bytes:
        raise ImageCorrupt(f"{expected.path}: {actual.size_bytes} bytes in blob storage, manifest says {expected.size_bytes}")
    if actual.sha256 != expected.sha256:
        raise ImageCorrupt(f"{expected.path}: sha256 {actual.sha256} in blob storage, manifest says {expected.sha256}")
    return actual


def verify_image(
    blob: BlobStorageResource, prefix: str, expected_manifest_sha256: str | None = None
) -> tuple[BackupManifest, VerificationReport]:
    """Every file the manifest lists is present, byte-exact, and every dump is a readable archive.

    With `expected_manifest_sha256` (the CMS row's checksum) the manifest itself is pinned too.
    """
    manifest, manifest_sha256 = blob.read_manifest(prefix)
    if expected_manifest_sha256 is not None and manifest_sha256 != expected_manifest_sha256:
        raise ImageCorrupt(
            f"{MANIFEST_NAME}: sha256 {manifest_sha256} in blob storage, the CMS recorded {expected_manifest_sha256}"
        )
    listed = {f.path for f in manifest.files}
    stored = {name.removeprefix(prefix.rstrip("/") + "/") for name in blob.list_names(prefix)} - {MANIFEST_NAME}
    if listed - stored:
        raise ImageCorrupt(f"missing from blob storage: {sorted(listed - stored)}")
    if not any(f.kind == "globals" for f in manifest.files) or not any(f.kind == "database" for f in manifest.files):
        raise ImageCorrupt("the manifest must list the roles (globals) and at least one database dump")
    checks = [check_file(blob, prefix, expected) for expected in manifest.files]
    return manifest, VerificationReport(
        manifest_sha256=manifest_sha256, total_bytes=manifest.total_bytes, files=checks
    )


def sha256sums(manifest: BackupManifest) -> str:
    """The manifest's files in `sha256sum --check` format, for the restore script."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in manifest.files)
