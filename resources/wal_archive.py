"""The WAL archive in blob storage, read: which segments an instance has, per system identifier and
timeline (records/wal.py names the layout), and a segment's bytes checked against its sha256."""

from __future__ import annotations

import hashlib
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from records.wal import SYSTEM_IDENTIFIER, StoredSegment, parse_stored_name, wal_prefix
from resources.blob import BlobStorageResource
from resources.platform.wal_archiver import plaintext_of


class SegmentCorrupt(RuntimeError):
    pass


class Timeline(BaseModel):
    """The segments one system identifier wrote on one timeline into an instance's archive."""

    model_config = ConfigDict(frozen=True)

    system_identifier: str
    timeline: int
    segments: list[StoredSegment]

    @property
    def covered_until(self) -> datetime | None:
        """The server's time up to which the archive holds every flushed commit (the window's end)."""
        times = [s.covered_until for s in self.segments if s.covered_until is not None]
        return max(times) if times else None


def list_timelines(blob: BlobStorageResource, namespace: str, k8s_name: str) -> list[Timeline]:
    grouped: dict[tuple[str, int], list[StoredSegment]] = {}
    prefix = wal_prefix(namespace, k8s_name)
    for name, metadata in blob.list_with_metadata(prefix):
        parts = name[len(prefix) + 1 :].split("/")
        if len(parts) != 3 or not SYSTEM_IDENTIFIER.fullmatch(parts[0]):
            continue
        stored = parse_stored_name(name)
        if stored is None:
            continue
        archived_at = datetime.fromisoformat(metadata["archived_at"]) if metadata.get("archived_at") else None
        # Archivers before `covered_until` claimed their read time (optimistic by the streaming lag).
        covered = metadata.get("covered_until", metadata.get("archived_at"))
        stored = stored.model_copy(
            update={
                "sha256": metadata.get("sha256"),
                "archived_at": archived_at,
                "covered_until": datetime.fromisoformat(covered) if covered else None,
            }
        )
        grouped.setdefault((parts[0], int(parts[1], 16)), []).append(stored)
    return [
        Timeline(system_identifier=sysid, timeline=tli, segments=sorted(segs, key=lambda s: (s.number, s.partial)))
        for (sysid, tli), segs in sorted(grouped.items())
    ]


def read_segment(blob: BlobStorageResource, segment: StoredSegment, identity_file: str | None) -> bytes:
    """The plaintext segment, its sha256 checked against the one the archiver recorded."""
    if segment.encrypted and identity_file is None:
        raise SegmentCorrupt(f"{segment.blob_name} is encrypted and no age identity is configured")
    plaintext = plaintext_of(blob.read_bytes(segment.blob_name), identity_file if segment.encrypted else None)
    if segment.sha256 is None or hashlib.sha256(plaintext).hexdigest() != segment.sha256:
        raise SegmentCorrupt(f"{segment.blob_name}: sha256 does not match the archiver's")
    return plaintext
