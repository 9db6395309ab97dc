"""Proof that an image in blob storage is whole and restorable, before anyone relies on it."""

from __future__ import annotations

import hashlib
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from azure.core.exceptions import ResourceNotFoundError
from pydantic import BaseModel

from records import BackupFile, BackupManifest
from records.encryption import AGE_HEADER
from records.units import human_bytes
from resources.blob import MANIFEST_NAME, BlobStorageResource
from resources.platform.postgres_server import newest_postgres_bindir


class ImageCorrupt(RuntimeError):
    pass


class FileCheck(BaseModel):
    path: str
    size_bytes: int
    sha256: str
    archive_readable: bool | None = None
    kind: str = ""
    database: str | None = None
    encrypted: bool = False

    @property
    def holds(self) -> str:
        return f"database {self.database}" if self.database else self.kind

    @property
    def verdict(self) -> str:
        return (
            "sha256 matches"
            + (", pg_restore reads every entry" if self.archive_readable else "")
            + (", age-encrypted (the archive is read at restore, with the key)" if self.encrypted else "")
        )


class VerificationReport(BaseModel):
    manifest_sha256: str
    total_bytes: int
    files: list[FileCheck]


def _hash_and_read(blob: BlobStorageResource, name: str, is_dump: bool) -> FileCheck:
    """One download: hash every byte and, for a dump, have `pg_restore` read the whole archive
    (every entry decompressed, the SQL thrown away), so a damaged archive is caught here."""
    digest = hashlib.sha256()
    size = 0
    reader = None
    if is_dump:
        reader = subprocess.Popen(
            [str(newest_postgres_bindir() / "pg_restore"), "--file=/dev/null"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        errors: list[bytes] = []
        stderr = reader.stderr
        assert stderr is not None  # stderr=PIPE
        drain = threading.Thread(target=lambda: errors.append(stderr.read()))
        drain.start()
    for chunk in blob.iter_chunks(name):
        digest.update(chunk)
        size += len(chunk)
        if reader is not None and reader.stdin is not None:
            try:
                reader.stdin.write(chunk)
            except BrokenPipeError:
                reader.stdin = None  # pg_restore gave up; keep hashing, its exit code says why
    if reader is not None:
        if reader.stdin is not None:
            reader.stdin.close()
        returncode = reader.wait(timeout=600)
        drain.join()
        if returncode != 0:
            message = b"".join(errors).decode(errors="replace").strip()
            raise ImageCorrupt(f"{name}: pg_restore cannot read it: {message or f'exit code {returncode}'}")
    return FileCheck(path=name, size_bytes=size, sha256=digest.hexdigest(), archive_readable=is_dump or None)


def check_file(blob: BlobStorageResource, prefix: str, expected: BackupFile, encrypted: bool = False) -> FileCheck:
    """Size and sha256 of the stored bytes; a plaintext dump is read by pg_restore too. An encrypted
    file cannot be read without the key (which only restore jobs hold): it must be an age file."""
    name = f"{prefix.rstrip('/')}/{expected.path}"
    is_dump = expected.kind == "database" and expected.archive is None and not encrypted
    actual = _hash_and_read(blob, name, is_dump=is_dump)
    if actual.size_bytes != expected.size_bytes:
        raise ImageCorrupt(
            f"{expected.path}: {actual.size_bytes} bytes in blob storage, manifest says {expected.size_bytes}"
        )
    if actual.sha256 != expected.sha256:
        raise ImageCorrupt(f"{expected.path}: sha256 {actual.sha256} in blob storage, manifest says {expected.sha256}")
    if encrypted:
        check_age_header(blob, name, expected.path)
    return actual.model_copy(
        update={"path": expected.path, "kind": expected.kind, "database": expected.database, "encrypted": encrypted}
    )


def check_age_header(blob: BlobStorageResource, name: str, path: str) -> None:
    if blob.read_head(name, len(AGE_HEADER)) != AGE_HEADER:
        raise ImageCorrupt(f"{path}: the manifest says it is age-encrypted, its bytes are not an age file")


def read_manifest(
    blob: BlobStorageResource, prefix: str, expected_sha256: str | None = None
) -> tuple[BackupManifest, str]:
    """The manifest and the sha256 of its bytes, checked against `expected_sha256` before it is
    parsed: damaged bytes read as ImageCorrupt, never as a parse error."""
    try:
        raw = blob.read_bytes(f"{prefix.rstrip('/')}/{MANIFEST_NAME}")
    except ResourceNotFoundError as error:
        raise ImageCorrupt(f"{MANIFEST_NAME}: missing from blob storage under {prefix}") from error
    sha256 = hashlib.sha256(raw).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ImageCorrupt(f"{MANIFEST_NAME}: sha256 {sha256} in blob storage, the CMS recorded {expected_sha256}")
    try:
        return BackupManifest.model_validate_json(raw), sha256
    except ValueError as error:
        raise ImageCorrupt(f"{MANIFEST_NAME}: not a valid manifest: {error}") from error


def verify_image(
    blob: BlobStorageResource,
    prefix: str,
    expected_manifest_sha256: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[BackupManifest, VerificationReport]:
    """Every file the manifest lists is present, byte-exact, and every dump is a readable archive.

    With `expected_manifest_sha256` (the CMS row's checksum) the manifest itself is pinned too.
    Each file's result is logged as it is checked, then the verdict.
    """
    manifest, manifest_sha256 = read_manifest(blob, prefix, expected_manifest_sha256)
    listed = {f.path for f in manifest.files}
    stored = {name.removeprefix(prefix.rstrip("/") + "/") for name in blob.list_names(prefix)} - {MANIFEST_NAME}
    if listed - stored:
        raise ImageCorrupt(f"missing from blob storage: {sorted(listed - stored)}")
    if not any(f.kind == "globals" for f in manifest.files) or not any(f.kind == "database" for f in manifest.files):
        raise ImageCorrupt("the manifest must list the roles (globals) and at least one database dump")
    log(f"verifying {len(manifest.files)} files ({human_bytes(manifest.total_bytes)}) against manifest.json")
    checks = []
    for expected in manifest.files:
        check = check_file(blob, prefix, expected, encrypted=manifest.encryption is not None)
        log(f"verified {check.path} ({check.holds}, {human_bytes(check.size_bytes)}): {check.verdict}")
        checks.append(check)
    # An encrypted archive's TOC cannot be read without the key: the restore reads it.
    for archive, listed_files in directory_archives(manifest).items() if manifest.encryption is None else ():
        entries = check_directory_archive(blob, prefix, archive, listed_files)
        log(f"pg_restore lists the archive {archive} ({entries} entries), every data file it names is verified")
    log(f"image verified: {len(checks)} files, {human_bytes(manifest.total_bytes)}, manifest sha256 {manifest_sha256}")
    return manifest, VerificationReport(manifest_sha256=manifest_sha256, total_bytes=manifest.total_bytes, files=checks)


def directory_archives(manifest: BackupManifest) -> dict[str, list[BackupFile]]:
    """The directory-format dumps (parallel mode) of the manifest: archive -> its files."""
    archives: dict[str, list[BackupFile]] = {}
    for entry in manifest.files:
        if entry.archive is not None:
            archives.setdefault(entry.archive, []).append(entry)
    return archives


TABLE_DATA_ENTRY = re.compile(r"^(\d+); \d+ \d+ TABLE DATA ", re.MULTILINE)


def check_directory_archive(blob: BlobStorageResource, prefix: str, archive: str, files: list[BackupFile]) -> int:
    """A directory-format dump parses (`pg_restore --list` reads its toc.dat) and is whole: every
    table's data file the TOC names is one of the archive's (already hashed) files. Only toc.dat
    is downloaded; the data files were verified by their sha256. Returns the number of entries."""
    names = {f.path.removeprefix(f"{archive}/"): f for f in files}
    toc = names.get("toc.dat")
    if toc is None:
        raise ImageCorrupt(f"{archive}: the manifest lists no toc.dat for this directory-format dump")
    toc_bytes = blob.read_bytes(f"{prefix.rstrip('/')}/{toc.path}")
    if hashlib.sha256(toc_bytes).hexdigest() != toc.sha256:
        raise ImageCorrupt(f"{toc.path}: changed in blob storage since it was verified")
    with tempfile.TemporaryDirectory(prefix="toygres-verify-") as scratch:
        (Path(scratch) / "toc.dat").write_bytes(toc_bytes)
        listed = subprocess.run(
            [str(newest_postgres_bindir() / "pg_restore"), "--list", scratch],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if listed.returncode != 0:
        message = listed.stderr.strip() or f"exit code {listed.returncode}"
        raise ImageCorrupt(f"{archive}: pg_restore cannot list the archive: {message}")
    data_files = {name.split(".", 1)[0] for name in names if name.endswith(".dat") or ".dat." in name}
    missing = [dump_id for dump_id in TABLE_DATA_ENTRY.findall(listed.stdout) if dump_id not in data_files]
    if missing:
        raise ImageCorrupt(f"{archive}: the archive's TOC names data files the manifest lacks: {missing[:10]}")
    return sum(1 for line in listed.stdout.splitlines() if line[:1].isdigit())


def sha256sums(manifest: BackupManifest) -> str:
    """The manifest's files in `sha256sum --check` format, for the restore script."""
    return "".join(f"{f.sha256}  {f.path}\n" for f in manifest.files)
