"""The WAL archiver of one instance: `pg_receivewal` on a physical replication slot, and an uploader
that puts every finished segment (once) and the partial segment being written (every
`partial_seconds`, when it changed) into blob storage, zstd-compressed, age-encrypted when the
deployment has a recipient, each with the sha256 of its plaintext in the blob's metadata.

Run as `python -m resources.platform.wal_archiver <dir>`; `<dir>/config.json` says what to stream.
It runs as the deployment's user, never as the server's: the SAS and the password files are
unreadable to anything the tenant's code can run (functions execute as the server's OS user).
A finished segment is deleted locally once uploaded: the slot, not the directory, is where the
archiver resumes from (pg_receivewal 15+ starts at the slot's restart_lsn in an empty directory).
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import NamedTuple

import psycopg
from azure.storage.blob import ContainerClient
from pydantic import BaseModel, Field

from records.tenant_sessions import tenant_session_options
from records.wal import SEGMENT_NAME, SLOT_NAME, segment_number, stored_segment_name, timeline_prefix

# The servers toygres runs keep initdb's default WAL segment size.
WAL_SEGMENT_BYTES = 16 * 1024 * 1024


class ArchiverConfig(BaseModel):
    namespace: str
    k8s_name: str
    host: str
    port: int
    user: str
    sslmode: str = "prefer"  # Kubernetes: "require" (its instances accept TLS only)
    bindir: str
    container_url: str
    age_recipient: str | None = None
    partial_seconds: float = 2.0
    poll_seconds: float = 0.5
    # Finished segments waiting for upload: past this the receiver stops (the slot keeps the rest
    # on the tenant's side, bounded there by max_slot_wal_keep_size), so a tenant writing WAL
    # faster than blob storage takes it never fills the deployment's disk.
    spool_max_segments: int = Field(default=64, ge=1)


def config_path(directory: Path) -> Path:
    return directory / "config.json"


# Marks kept: at one a round (poll_seconds), an hour and more of the receiver lagging behind.
MARKS_KEPT = 10_000
# The archiver's sessions on the tenant's server: its settings and schemas decide nothing (the system
# identifier the WAL is filed under, the slot) and no statement outlasts 10 s.
SESSION_OPTIONS = tenant_session_options(10_000)


class WalMark(NamedTuple):
    """The server's clock and WAL flush position read together: every commit that returned
    before `at` is at or below `lsn`."""

    at: datetime
    lsn: int


# Files beside config.json, each 0600: the container SAS and a pgpass line for the instance.
SAS_FILE = "sas"
PGPASS_FILE = "pgpass"
STATUS_FILE = "status.json"
RECEIVER_LOG = "pg_receivewal.log"
SPOOL_DIR = "spool"


def stored_bytes(plaintext: bytes, age_recipient: str | None) -> bytes:
    compressed = subprocess.run(["zstd", "-q", "-3", "-c"], input=plaintext, capture_output=True, check=True).stdout
    if age_recipient is None:
        return compressed
    return subprocess.run(["age", "-r", age_recipient], input=compressed, capture_output=True, check=True).stdout


def plaintext_of(stored: bytes, identity_file: str | None) -> bytes:
    """What `stored_bytes` made, back (age identity needed for an encrypted segment)."""
    if identity_file is not None:
        stored = subprocess.run(
            ["age", "-d", "-i", identity_file], input=stored, capture_output=True, check=True
        ).stdout
    return subprocess.run(["zstd", "-q", "-d", "-c"], input=stored, capture_output=True, check=True).stdout


class Archiver:
    def __init__(
        self,
        directory: Path,
        config: ArchiverConfig | None = None,
        *,
        sas_file: Path | None = None,
        pgpass_file: Path | None = None,
    ):
        self.directory = directory
        self.config = config or ArchiverConfig.model_validate_json(config_path(directory).read_text())
        # A supervisor serving many instances passes shared files (one SAS, one pgpass of every instance).
        self.sas_file = sas_file or directory / SAS_FILE
        self.pgpass_file = pgpass_file or directory / PGPASS_FILE
        self.spool = directory / SPOOL_DIR
        self.spool.mkdir(exist_ok=True)
        self.receiver: subprocess.Popen | None = None
        self.stopping = False
        self.system_identifier: str | None = None
        # Per partial file: its mtime when uploaded and whether that upload lagged the server.
        self.partial_sent: dict[str, tuple[float, datetime | None, bool]] = {}
        self.marks: deque[WalMark] = deque(maxlen=MARKS_KEPT)
        self.received_lsn = 0  # what pg_receivewal has confirmed flushed (its slot's restart_lsn)
        self.connection: psycopg.Connection | None = None
        self.mark_error: str | None = None
        self.last_partial_upload = 0.0
        self.uploaded_bytes = 0
        self.receiver_error: str | None = None

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.config.bindir}:/usr/bin:/bin",
            "PGPASSFILE": str(self.pgpass_file),
            "PGCONNECT_TIMEOUT": "10",
            "LANG": "C.UTF-8",
        }

    def _conninfo(self) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.config.host,
            port=self.config.port,
            user=self.config.user,
            sslmode=self.config.sslmode,
            dbname="postgres",
        )

    def _container(self) -> ContainerClient:
        sas = self.sas_file.read_text().strip()
        url = self.config.container_url + (f"?{sas}" if sas else "")
        return ContainerClient.from_container_url(url)

    def _identify(self) -> str:
        with psycopg.connect(
            self._conninfo(), connect_timeout=10, passfile=self._env()["PGPASSFILE"], options=SESSION_OPTIONS
        ) as conn:
            row = conn.execute("SELECT system_identifier::text FROM pg_catalog.pg_control_system()").fetchone()
        assert row is not None
        return str(row[0])

    def drop_slot(self) -> None:
        """Drop the instance's slot (its archiver removed); a server that does not answer keeps it, bounded
        by max_slot_wal_keep_size."""
        try:
            with psycopg.connect(
                self._conninfo(),
                connect_timeout=5,
                passfile=str(self.pgpass_file),
                autocommit=True,
                options=SESSION_OPTIONS,
            ) as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                    " WHERE slot_name = %s AND NOT active",
                    [SLOT_NAME],
                )
        except psycopg.Error as error:
            print(f"wal archiver {self.config.namespace}/{self.config.k8s_name}: slot kept: {error}", flush=True)

    def measure(self) -> None:
        """A mark (the server's clock and flush position) and how far the receiver has flushed.
        The tenant owns the server: only its own archive's claims depend on these answers."""
        try:
            if self.connection is None or self.connection.closed:
                self.connection = psycopg.connect(
                    self._conninfo(), connect_timeout=10, passfile=str(self.pgpass_file), autocommit=True,
                    options=tenant_session_options(5000),
                )  # fmt: skip
            row = self.connection.execute(
                "SELECT pg_catalog.clock_timestamp(),"
                " (pg_catalog.pg_current_wal_flush_lsn() - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8,"
                " (SELECT (restart_lsn - '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8"
                "  FROM pg_catalog.pg_replication_slots WHERE slot_name = %s)",
                [SLOT_NAME],
            ).fetchone()
        except psycopg.Error as error:
            if str(error) != self.mark_error:  # once per reason, not every poll
                print(f"wal archiver {self.config.namespace}/{self.config.k8s_name}: no mark: {error}", file=sys.stderr)
            self.mark_error = str(error)
            if self.connection is not None:
                self.connection.close()
            self.connection = None
            return
        assert row is not None
        self.mark_error = None
        at, lsn, received = row
        self.marks.append(WalMark(at=at.astimezone(UTC), lsn=int(lsn)))
        self.received_lsn = max(self.received_lsn, int(received or 0))

    def covered_until(self, upto_lsn: int) -> datetime | None:
        """The newest mark whose position bytes held up to `upto_lsn` include."""
        return max((mark.at for mark in self.marks if mark.lsn <= upto_lsn), default=None)

    def _start_receiver(self) -> None:
        bindir = Path(self.config.bindir)
        env = self._env()
        # Reserved at once: WAL written between now and pg_receivewal's first connection is kept.
        with psycopg.connect(
            self._conninfo(), connect_timeout=10, passfile=env["PGPASSFILE"], autocommit=True, options=SESSION_OPTIONS
        ) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS "
                "(SELECT FROM pg_replication_slots WHERE slot_name = %s)",
                [SLOT_NAME, SLOT_NAME],
            )
        with open(self.directory / RECEIVER_LOG, "ab") as log:
            self.receiver = subprocess.Popen(
                [str(bindir / "pg_receivewal"), "-d", self._conninfo(), "--slot", SLOT_NAME, "-D", str(self.spool),
                 "--synchronous", "--no-loop", "-s", "1"],
                env=env, stdout=log, stderr=log,
            )  # fmt: skip

    def _blob_name(self, segment: str, partial_read_at: datetime | None) -> str:
        assert self.system_identifier is not None
        prefix = timeline_prefix(
            self.config.namespace, self.config.k8s_name, self.system_identifier, int(segment[:8], 16)
        )
        return f"{prefix}/{stored_segment_name(segment, self.config.age_recipient is not None, partial_read_at)}"

    def _upload(self, container: ContainerClient, path: Path, covered_until: datetime | None, partial: bool) -> None:
        segment = path.name.removesuffix(".partial")
        plaintext = path.read_bytes()
        archived_at = datetime.now(UTC)
        data = stored_bytes(plaintext, self.config.age_recipient)
        name = self._blob_name(segment, archived_at if partial else None)
        # A partial upload is a blob of its own, never overwritten: a restore may be reading the
        # one it planned (the finished segment is uploaded again only after a failed round).
        container.upload_blob(
            name,
            data,
            overwrite=not partial,
            metadata={
                "sha256": hashlib.sha256(plaintext).hexdigest(),
                "archived_at": archived_at.isoformat(),
                "covered_until": covered_until.isoformat() if covered_until else "",
            },
        )
        self.uploaded_bytes += len(data)
        self.receiver_error = None

    def _finished(self) -> list[Path]:
        return sorted(p for p in self.spool.iterdir() if SEGMENT_NAME.fullmatch(p.name))

    def _guard_spool(self) -> None:
        """Stops the receiver the moment the spool is full, even while an upload round is still
        retrying an unreachable blob storage (the run loop then keeps it stopped)."""
        while not self.stopping:
            receiver = self.receiver
            try:
                full = len(self._finished()) >= self.config.spool_max_segments
            except OSError:  # the spool is gone with its directory: the run loop ends the receiver
                full = False
            if receiver is not None and full:
                receiver.terminate()
            time.sleep(self.config.poll_seconds)

    def _pause_when_spool_full(self) -> bool:
        """True (the receiver stopped, the reason kept) while the spool holds its maximum."""
        waiting = len(self._finished())
        if waiting < self.config.spool_max_segments:
            return False
        if self.receiver is not None and self.receiver.poll() is None:
            self.receiver.terminate()
            self.receiver.wait(timeout=30)
        self.receiver = None
        self.receiver_error = (
            f"spool full: {waiting} segment(s) await upload (at most {self.config.spool_max_segments}); "
            "streaming paused, the slot keeps the rest"
        )
        return True

    def upload_pending(self, container: ContainerClient) -> None:
        finished = self._finished()
        for path in finished:
            end = (segment_number(path.name) + 1) * WAL_SEGMENT_BYTES
            self._upload(container, path, self.covered_until(end), partial=False)
            # Its partial blobs are superseded by the finished one (left in place: the archiver's SAS
            # cannot delete; wal_retention removes them once no restore can still be reading them).
            self.partial_sent.pop(path.name + ".partial", None)
            path.unlink()
        for path in sorted(self.spool.glob("*.history")):
            timeline = int(path.name[:8], 16)
            assert self.system_identifier is not None
            prefix = timeline_prefix(self.config.namespace, self.config.k8s_name, self.system_identifier, timeline)
            container.upload_blob(f"{prefix}/{path.name}", path.read_bytes(), overwrite=True)
            path.rename(path.with_suffix(".history.done"))
        now = time.monotonic()
        if now - self.last_partial_upload < self.config.partial_seconds:
            return
        for path in self.spool.glob("*.partial"):
            stat = path.stat()
            # pg_receivewal zero-fills a new .partial to a whole segment before it writes WAL into
            # it: a shorter file is being filled, holds no WAL yet, and would replay as "wrong size".
            if stat.st_size < WAL_SEGMENT_BYTES:
                continue
            mtime = stat.st_mtime
            # Read after the receiver's position: these bytes hold at least up to it.
            end = (segment_number(path.name.removesuffix(".partial")) + 1) * WAL_SEGMENT_BYTES
            covered = self.covered_until(min(self.received_lsn, end))
            lagging = bool(self.marks) and self.received_lsn < self.marks[-1].lsn
            sent_mtime, sent_covered, sent_lagging = self.partial_sent.get(path.name, (None, None, False))
            # Unchanged bytes go up again only to claim what an upload behind the receiver could not.
            caught_up = sent_lagging and covered is not None and (sent_covered is None or covered > sent_covered)
            if sent_mtime != mtime or caught_up:
                self._upload(container, path, covered, partial=True)
                self.partial_sent[path.name] = (mtime, covered, lagging)
        self.last_partial_upload = now

    def _receiver_said(self) -> str:
        """pg_receivewal's last message (why it stopped: a refused replication connection...)."""
        try:
            lines = (self.directory / RECEIVER_LOG).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no message"
        return lines[-1][-500:] if lines else "no message"

    def write_status(self, error: str | None) -> None:
        status = {
            "at": datetime.now(UTC).isoformat(),
            "system_identifier": self.system_identifier,
            "error": error,
            "uploaded_bytes": self.uploaded_bytes,
        }
        tmp = self.directory / (STATUS_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(status))
            tmp.replace(self.directory / STATUS_FILE)
        except FileNotFoundError:
            pass  # the directory is gone mid-round: no one reads it, and the run loop ends here

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def step(self) -> float:
        """One round: (re)start pg_receivewal, upload what is new; the seconds until the next round."""
        error = None
        try:
            if self.system_identifier is None:
                self.system_identifier = self._identify()
            if self._pause_when_spool_full():
                pass
            elif self.receiver is not None and self.receiver.poll() is not None:
                # Kept until WAL flows again: a refused connection is the instance's named reason.
                self.receiver_error = f"pg_receivewal exited {self.receiver.returncode}: {self._receiver_said()}"
                self.receiver = None
            elif self.receiver is None:
                self._start_receiver()
            self.measure()
            self.upload_pending(self._container())
        except Exception as failure:  # noqa: BLE001 - reported in status.json and retried
            error = f"{type(failure).__name__}: {failure}".strip()
            print(f"wal archiver {self.config.namespace}/{self.config.k8s_name}: {error}", file=sys.stderr, flush=True)
        # Both when both: blob storage down *and* streaming paused on a full spool.
        self.write_status("; ".join(filter(None, [error, self.receiver_error])) or None)
        return self.config.poll_seconds if error is None else 2.0

    def close(self) -> None:
        """Stop pg_receivewal and upload what it wrote before it stopped."""
        if self.receiver is not None and self.receiver.poll() is None:
            self.receiver.terminate()
            try:
                self.receiver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.receiver.kill()
                self.receiver.wait()
        try:
            self.measure()
            if self.connection is not None:
                self.connection.close()
            self.last_partial_upload = 0.0
            self.upload_pending(self._container())
        except Exception as failure:  # noqa: BLE001
            print(f"wal archiver: final upload: {failure}", file=sys.stderr, flush=True)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        threading.Thread(target=self._guard_spool, daemon=True).start()
        try:
            while not self.stopping:
                if not config_path(self.directory).exists():
                    break  # forgotten (its instance removed, the state directory deleted): nothing to serve
                time.sleep(self.step())
        finally:  # whatever ended the loop, pg_receivewal never outlives its archiver
            self.stopping = True
            self.close()


def main(argv: list[str]) -> int:
    Archiver(Path(argv[1])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
