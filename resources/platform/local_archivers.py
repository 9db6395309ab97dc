"""The local platform's WAL archivers: one detached process per instance (wal_archiver.py),
supervised like its servers: a pid file, started again when it is not running.

    <root>/<namespace>/<k8s_name>/{config.json, sas, pgpass, spool/, status.json, archiver.log, pid}
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from pydantic import SecretStr

from records import InstanceRef
from records.wal import SLOT_NAME
from resources.platform.base import PROJECT_DIR, WalArchiverSpec
from resources.platform.postgres_server import pgpass_line, write_private_file
from resources.platform.wal_archiver import (
    PGPASS_FILE,
    SAS_FILE,
    SESSION_OPTIONS,
    STATUS_FILE,
    ArchiverConfig,
    config_path,
)


def archiver_dir(root: Path, instance: InstanceRef) -> Path:
    return root / instance.namespace / instance.k8s_name


def pid_of(directory: Path) -> int | None:
    """The archiver's pid when that process is alive (not a zombie) and is this directory's archiver."""
    try:
        pid = int((directory / "pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it was ours and ended
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if stat.rsplit(")", 1)[1].split()[0] == "Z" or str(directory).encode() not in cmdline:
        return None
    return pid


def ensure(root: Path, spec: WalArchiverSpec, *, port: int, user: str, password: SecretStr, bindir: Path) -> bool:
    directory = archiver_dir(root, spec.instance)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)  # the deployment's user only: never the server's OS user
    config = ArchiverConfig(
        namespace=spec.instance.namespace,
        k8s_name=spec.instance.k8s_name,
        host="127.0.0.1",
        port=port,
        user=user,
        bindir=str(bindir),
        container_url=spec.container_url,
        age_recipient=spec.age_recipient,
        partial_seconds=spec.partial_seconds,
    )
    # The SAS is refreshed on every reconcile; the archiver reads the file before each upload round.
    write_private_file(directory / SAS_FILE, spec.blob_sas.get_secret_value() if spec.blob_sas else "",
                       for_service_user=False)  # fmt: skip
    if pid_of(directory) is not None:
        return False
    write_private_file(
        directory / PGPASS_FILE, pgpass_line("127.0.0.1", port, user, password.get_secret_value()),
        for_service_user=False,
    )  # fmt: skip
    config_path(directory).write_text(config.model_dump_json())
    with open(directory / "archiver.log", "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "resources.platform.wal_archiver", str(directory)],
            cwd=PROJECT_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"},
        )
    (directory / "pid").write_text(str(process.pid))
    return True


def listed(root: Path) -> list[InstanceRef]:
    if not root.exists():
        return []
    return [
        InstanceRef(namespace=path.parent.name, k8s_name=path.name)
        for path in sorted(root.glob("*/*"))
        if config_path(path).exists()
    ]


def stop(root: Path, instance: InstanceRef, timeout_seconds: float = 30) -> None:
    """SIGTERM (the archiver uploads what it has, then ends), SIGKILL to its group past the timeout."""
    directory = archiver_dir(root, instance)
    pid = pid_of(directory)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline and pid_of(directory) is not None:
        time.sleep(0.1)
    if pid_of(directory) is not None:
        os.killpg(pid, signal.SIGKILL)


def drop_slot(*, port: int, user: str, password: SecretStr) -> None:
    conninfo = psycopg.conninfo.make_conninfo(
        host="127.0.0.1", port=port, user=user, password=password.get_secret_value(), dbname="postgres"
    )
    with psycopg.connect(conninfo, connect_timeout=10, autocommit=True, options=SESSION_OPTIONS) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [SLOT_NAME]
        )


def last_error(root: Path, instance: InstanceRef) -> str | None:
    directory = archiver_dir(root, instance)
    if not config_path(directory).exists():
        return "no archiver"
    if pid_of(directory) is None:
        return "archiver not running"
    try:
        status = json.loads((directory / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return status.get("error")


def forget(root: Path, instance: InstanceRef) -> None:
    shutil.rmtree(archiver_dir(root, instance), ignore_errors=True)
