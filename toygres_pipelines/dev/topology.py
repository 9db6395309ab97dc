"""Dagster as the Helm chart runs it, on one machine: `make dev` and the tests that exercise the daemon.

    code server   `dagster api grpc` with the user deployment's dagsterApiGrpcArgs
                  (deploy/kubernetes/dagster-values.yaml), its own process, the only one holding
                  the TOYGRES_* environment (the chart's envSecrets); runs are launched from it
    webserver     `dagster-webserver`  ┐ load the code location over gRPC from a workspace.yaml
    daemon        `dagster-daemon run` ┘ like the chart's (configmap-workspace.yaml: grpc_server);
                  both submit runs through the run coordinator, so both get the CMS DSN (only
                  that of the code server's secrets: the Helm values give them the same one key)
    listener      `python -m toygres_pipelines.request_listener` (the Kubernetes Deployment
                  deploy/kubernetes/request-listener.yaml): CMS requests launched through the webserver
                  on their notification; the code server's settings without the encryption key and
                  the blob credentials (it reads neither), and the webserver's URL
    instance      deploy/local/dagster.yaml: dagster_postgres run, event-log and schedule storage in
                  a database of its own on the stack's PostgreSQL server (DAGSTER_PG_* variables),
                  TaggingRunCoordinator by module path, DefaultRunLauncher (one process per run: the
                  local stand-in for K8sRunLauncher)

Each process leads its own process group; `stop` ends them listener and webserver first, code
server last (its group holds the run workers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from resources.platform.base import PROJECT_DIR
from resources.platform.postgres_server import DEFAULT_SIGNALS
from toygres_pipelines.request_listener import NOT_FOR_THE_LISTENER
from toygres_pipelines.run_coordinator import CMS_DSN_ENV
from toygres_pipelines.shared.webserver import DAGSTER_URL_ENV

LOCATION_NAME = "toygres_pipelines"
CHART_VALUES = PROJECT_DIR / "deploy" / "kubernetes" / "dagster-values.yaml"
LOCAL_INSTANCE = PROJECT_DIR / "deploy" / "local" / "dagster.yaml"
# What every Dagster process of the topology needs, besides DAGSTER_HOME (deploy/local/dagster.yaml).
STORAGE_ENV = ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB")
STOP_GRACE_SECONDS = 20


class TopologyError(RuntimeError):
    pass


def ensure_storage_database(admin_dsn: str, database: str) -> dict[str, str]:
    """Dagster's storage database on the server of `admin_dsn` (created once); its DAGSTER_PG_* variables."""
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    server = conninfo_to_dict(admin_dsn)
    return {
        "DAGSTER_PG_USERNAME": str(server["user"]),
        "DAGSTER_PG_PASSWORD": str(server.get("password") or ""),
        "DAGSTER_PG_HOST": str(server.get("host") or "127.0.0.1"),
        "DAGSTER_PG_PORT": str(server.get("port") or 5432),
        "DAGSTER_PG_DB": database,
    }


def code_server_args(values_path: Path = CHART_VALUES) -> list[str]:
    """The arguments the chart gives the user deployment's `dagster api grpc` (its dagsterApiGrpcArgs)."""
    values = yaml.safe_load(values_path.read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    return list(deployment["dagsterApiGrpcArgs"])


def workspace_yaml(port: int, host: str = "127.0.0.1") -> str:
    """The chart's workspace (configmap-workspace.yaml): each user deployment as a grpc_server."""
    return yaml.safe_dump(
        {"load_from": [{"grpc_server": {"host": host, "port": port, "location_name": LOCATION_NAME}}]},
        sort_keys=False,
    )


def dagster_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class DagsterTopology:
    """The three Dagster processes of the chart, each in its own process group.

    `dagster_env`: DAGSTER_HOME and the storage variables (every process); `code_env`: what only the
    code server and its run workers get (the deployment's secrets: TOYGRES_*).
    """

    home: Path
    workspace: Path
    log_dir: Path
    dagster_env: Mapping[str, str]
    code_env: Mapping[str, str]
    code_port: int
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [name for name in ("DAGSTER_HOME", *STORAGE_ENV) if not self.dagster_env.get(name)]
        if missing:
            raise TopologyError(f"dagster_env lacks {', '.join(missing)}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.workspace.write_text(workspace_yaml(self.code_port))

    def _base_env(self) -> dict[str, str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("TOYGRES_", "DAGSTER_"))}
        return {**inherited, **self.dagster_env, "PYTHONUNBUFFERED": "1"}

    def submitter_env(self) -> dict[str, str]:
        """The webserver's and the daemon's: the run coordinator checks requests against the CMS."""
        dsn = self.code_env.get(CMS_DSN_ENV)
        return {**self._base_env(), **({CMS_DSN_ENV: dsn} if dsn else {})}

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        if name in self.processes and self.processes[name].poll() is None:
            raise TopologyError(f"the {name} already runs (pid {self.processes[name].pid})")
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                [*DEFAULT_SIGNALS, *argv],
                cwd=PROJECT_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log_tail(self, name: str, lines: int = 60) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise TopologyError(f"the {name} exited with status {process.returncode}:\n{self.log_tail(name)}")

    def start_code_server(self, timeout_seconds: float = 180) -> subprocess.Popen:
        argv = [
            dagster_bin("dagster"),
            "api",
            "grpc",
            *code_server_args(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.code_port),
            "--location-name",
            LOCATION_NAME,
        ]
        process = self._start("code-server", argv, {**self._base_env(), **self.code_env})
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(port=self.code_port, host="127.0.0.1")
        deadline = time.monotonic() + timeout_seconds
        while True:
            self._check_alive("code-server")
            try:
                client.ping("")
                return process
            except Exception:  # noqa: BLE001 - not serving yet
                if time.monotonic() > deadline:
                    raise TopologyError(
                        f"the code server did not answer on port {self.code_port} within {timeout_seconds:.0f}s:\n"
                        f"{self.log_tail('code-server')}"
                    ) from None
                time.sleep(0.5)

    def start_daemon(self) -> subprocess.Popen:
        return self._start(
            "daemon", [dagster_bin("dagster-daemon"), "run", "-w", str(self.workspace)], self.submitter_env()
        )

    def start_webserver(self, host: str, port: int, timeout_seconds: float = 180) -> subprocess.Popen:
        argv = [dagster_bin("dagster-webserver"), "-w", str(self.workspace), "-h", host, "-p", str(port)]
        process = self._start("webserver", argv, self.submitter_env())
        deadline = time.monotonic() + timeout_seconds
        while True:
            self._check_alive("webserver")
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/server_info", timeout=2) as response:
                    if response.status == 200:
                        return process
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TopologyError(f"the webserver did not answer on {host}:{port} within {timeout_seconds:.0f}s")
            time.sleep(0.5)

    def listener_env(self, webserver_url: str) -> dict[str, str]:
        code = {name: value for name, value in self.code_env.items() if name not in NOT_FOR_THE_LISTENER}
        return {**self._base_env(), **code, DAGSTER_URL_ENV: webserver_url}

    def start_listener(self, webserver_url: str) -> subprocess.Popen:
        """The request listener, launching through the webserver at `webserver_url` (started first)."""
        argv = [sys.executable, "-m", "toygres_pipelines.request_listener"]
        return self._start("request-listener", argv, self.listener_env(webserver_url))

    def check_running(self) -> None:
        """Raise (with its log) when a started process has exited."""
        for name in self.processes:
            self._check_alive(name)

    def stop(self) -> None:
        for name in ("request-listener", "webserver", "daemon", "code-server"):
            process = self.processes.pop(name, None)
            if process is not None:
                stop_group(process, STOP_GRACE_SECONDS)


def stop_group(process: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the process group `process` leads, SIGKILL what is left after the grace period."""
    for sig, grace in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            process.wait()
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                process.wait()
                return
            time.sleep(0.1)
    process.wait()
