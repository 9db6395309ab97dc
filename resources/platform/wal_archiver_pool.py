"""One process archiving the WAL of many instances: one `pg_receivewal` per instance, one Python
interpreter (and one Azure SDK) for all of them. The Kubernetes platform runs it as the archiver
Deployment of an instance namespace (docs/pitr.md, "Who runs it").

    python -m resources.platform.wal_archiver_pool CONFIG_DIR WORK_DIR

CONFIG_DIR (on Kubernetes the mounted archiver Secret, rewritten by the platform; read every round):
    archivers.json   {"archivers": [ArchiverConfig, ...]}: the instances to serve
    sas              the container's create + write SAS (refreshed before expiry)
    pgpass           one line per instance
WORK_DIR/<namespace>/<k8s_name>/ holds an instance's spool, pg_receivewal.log and status.json.
An instance added to archivers.json is served from the next round; one removed is stopped (what
its pg_receivewal wrote is uploaded first). Each status change is printed as one JSON line
{"wal_archiver": "<namespace>/<k8s_name>", "error": ...}: the platform reads it from the pod's log.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from pydantic import BaseModel

from resources.platform.wal_archiver import PGPASS_FILE, SAS_FILE, Archiver, ArchiverConfig

ARCHIVERS_FILE = "archivers.json"
STATUS_KEY = "wal_archiver"


class ArchiverSet(BaseModel):
    archivers: list[ArchiverConfig] = []


def key_of(config: ArchiverConfig) -> str:
    return f"{config.namespace}/{config.k8s_name}"


class ArchiverPool:
    def __init__(self, config_dir: Path, work_dir: Path):
        self.config_dir = config_dir
        self.work_dir = work_dir
        self.served: dict[str, Archiver] = {}
        self.reported: dict[str, str | None] = {}
        self.stopping = False

    def _wanted(self) -> dict[str, ArchiverConfig]:
        try:
            wanted = ArchiverSet.model_validate_json((self.config_dir / ARCHIVERS_FILE).read_text())
        except (OSError, ValueError) as error:
            print(f"wal archiver pool: {ARCHIVERS_FILE} unreadable, serving what it served: {error}", flush=True)
            return {key: archiver.config for key, archiver in self.served.items()}
        return {key_of(config): config for config in wanted.archivers}

    def _private_pgpass(self) -> Path:
        """libpq ignores a pgpass readable by the group (a mounted Secret's file is): a 0600 copy."""
        copy = self.work_dir / PGPASS_FILE
        content = (self.config_dir / PGPASS_FILE).read_bytes()
        if not copy.exists() or copy.read_bytes() != content:
            fd = os.open(copy.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            copy.with_suffix(".tmp").replace(copy)
        return copy

    def reconcile(self) -> None:
        wanted = self._wanted()
        for key in sorted(set(self.served) - set(wanted)):
            # Its instance is no longer running: stopped, what it wrote uploaded, its slot dropped
            # (with the password still in the previous pgpass copy) when the server answers.
            removed = self.served.pop(key)
            removed.close()
            removed.drop_slot()
            self.reported.pop(key, None)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        pgpass = self._private_pgpass()
        for key, config in wanted.items():
            archiver = self.served.get(key)
            if archiver is not None and archiver.config == config:
                continue
            if archiver is not None:  # its settings changed: start again on the same slot
                archiver.close()
            directory = self.work_dir / config.namespace / config.k8s_name
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.served[key] = Archiver(
                directory,
                config,
                sas_file=self.config_dir / SAS_FILE,
                pgpass_file=pgpass,
            )

    def step(self) -> float:
        try:
            self.reconcile()
        except OSError as unreadable:  # the Secret mid-update or not mounted yet: serve what is served, retry
            print(f"wal archiver pool: configuration not read: {unreadable}", flush=True)
        wait = 2.0
        for key, archiver in self.served.items():
            wait = min(wait, archiver.step())
            error = json.loads((archiver.directory / "status.json").read_text()).get("error")
            if key not in self.reported or self.reported[key] != error:
                print(json.dumps({STATUS_KEY: key, "error": error}), flush=True)
                self.reported[key] = error
        return wait

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            while not self.stopping:
                time.sleep(self.step())
        finally:  # whatever ended the loop, no pg_receivewal outlives the pool
            for archiver in self.served.values():
                archiver.close()


def last_errors(log_lines: list[str]) -> dict[str, str | None]:
    """Each instance's last reported status in a pool's log (other lines ignored)."""
    errors: dict[str, str | None] = {}
    for line in log_lines:
        if not line.startswith("{"):
            continue
        try:
            status = json.loads(line)
        except ValueError:
            continue
        if isinstance(status, dict) and isinstance(status.get(STATUS_KEY), str):
            errors[status[STATUS_KEY]] = status.get("error")
    return errors


def main(argv: list[str]) -> int:
    ArchiverPool(Path(argv[1]), Path(argv[2])).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
