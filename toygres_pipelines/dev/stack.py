"""The embedded stack's services: a CMS PostgreSQL and Azurite, used by `make dev` and the tests.

Tools (Azurite, azcopy) are installed by the Makefile into `.tools/` (TOYGRES_TOOLS_DIR).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from resources.platform.local_tools import azcopy_path, tools_dir
from resources.platform.postgres_server import (
    DEFAULT_SIGNALS,
    LocalPostgresServer,
    free_port,
    give_to_service_user,
    write_private_file,
)

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def azurite_path() -> Path:
    return tools_dir() / "node_modules" / ".bin" / "azurite-blob"


def azurite_connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


def container_sas(connection_string: str, container: str, permissions: str, ttl: timedelta) -> str:
    """A container SAS for the benchmarks' raw azcopy baselines only: jobs get least-privilege
    grants (resources/blob_sas.py), never this."""
    parts = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    start = datetime.now(UTC) - timedelta(minutes=5)
    return generate_container_sas(
        account_name=parts["AccountName"],
        container_name=container,
        account_key=parts["AccountKey"],
        permission=ContainerSasPermissions.from_string(permissions),
        start=start,
        expiry=start + ttl,
    )


def wait_for_port(port: int, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_seconds}s")


@dataclass
class Azurite:
    """An Azurite blob service in its own process group on 127.0.0.1."""

    data_dir: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.port)

    def start(self) -> Azurite:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Private, and without the access log (--silent): request URLs carry SAS signatures.
        log_path = self.data_dir / "azurite.log"
        log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        os.chmod(log_path, 0o600)  # a log left by an older stack
        self.process = subprocess.Popen(
            [
                *DEFAULT_SIGNALS,
                str(azurite_path()),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(self.data_dir),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, 30)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


@dataclass
class CmsServer:
    """The CMS database server of the embedded stack (credentials kept beside its data)."""

    server: LocalPostgresServer
    password: str
    user: str = "toygres"

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.user, self.password)

    @classmethod
    def in_dir(cls, state_dir: Path, port: int | None = None) -> CmsServer:
        """Open (or create and start) the CMS server kept in state_dir."""
        give_to_service_user(state_dir, mode=0o711)
        credentials = state_dir / "cms-credentials"
        port_file = state_dir / "cms-port"
        if credentials.exists():
            password = credentials.read_text().strip()
            port = int(port_file.read_text())
        else:
            password = secrets.token_urlsafe(24)
            port = port or free_port()
        server = LocalPostgresServer(
            data_dir=state_dir / "cms-data",
            port=port,
            socket_dir=state_dir / "cms-socket",
            log_file=state_dir / "cms-socket" / "postgres.log",
        )
        cms = cls(server=server, password=password)
        if not server.initialized:
            server.initdb(cms.user, password)
            write_private_file(credentials, password, for_service_user=False)
            port_file.write_text(str(port))
        if not server.is_running():
            server.start()
        server.wait_accepting(cms.user, password, 30)
        return cms


def require_tools() -> None:
    missing = [str(p) for p in (azcopy_path(), azurite_path()) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing tools {missing}: run `make tools` (or `make dev` / `make test`)")
    if not os.access(azcopy_path(), os.X_OK):
        raise PermissionError(f"{azcopy_path()} is not executable: run `make tools`")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
