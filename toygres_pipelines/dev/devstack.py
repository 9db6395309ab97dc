"""`make dev`: the embedded stack on one machine, and the Dagster UI + daemon on top of it.

    python -m toygres_pipelines.dev.devstack

Starts (or reuses) everything kept in the state dir (TOYGRES_STATE_DIR, default
/var/tmp/toygres-dev: outside the checkout, because the `postgres` OS user must traverse it):

    <state>/cms/             the CMS PostgreSQL server (data, credentials, port)
    <state>/azurite/         Azurite's blob data and log
    <state>/encryption-key   the Fernet key encrypting stored passwords (0600)
    <state>/instances/ ...   the local platform's instances (the pagila demo, restored ones)
    <state>/jobs/ ...        the local platform's job directories
    <state>/dev.env          the exported environment and the CLI on PATH, to `source` (0600)
    <state>/devstack.pid     this runner (`kill $(cat <state>/devstack.pid)` stops the stack)

then runs Dagster as the Helm chart does (topology.py: a code server, the daemon, the webserver and
the request listener (CMS requests launched on their notification), each in its own process group,
with PostgreSQL storage in the database `dagster` of the CMS server) with DAGSTER_HOME
(TOYGRES_DAGSTER_HOME, default <checkout>/.toygres/dagster_home). Ctrl-C (SIGINT) or SIGTERM stops
dagster, every local instance server, Azurite and the CMS server; the next start reuses the same key,
CMS data and demo instance.

Why one module of this size: it is one program (settings, start order, signals, stop order);
the services it starts are in stack.py and the demo instance in demo.py.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import yaml
from psycopg import sql
from pydantic import SecretStr

from records import ImageRequest, ImageType, Instance, InstanceRef, InstanceState
from records.requests import ImageRequestFields
from records.rows import instance_columns
from resources.blob import BlobStorageResource
from resources.cms import CMSResource
from resources.platform.base import PROJECT_DIR, DeploySpec, PlatformError
from resources.platform.local import LocalPlatform
from resources.platform.local_tools import azcopy_path
from resources.platform.postgres_server import (
    ServerCommandFailed,
    free_port,
    give_to_service_user,
    run_as_user,
    write_private_file,
)
from toygres_pipelines.dev.demo import PagilaMissing, load_pagila, pagila_dir
from toygres_pipelines.dev.run_feed import RunFeed
from toygres_pipelines.dev.stack import Azurite, CmsServer, require_tools
from toygres_pipelines.dev.topology import DagsterTopology, TopologyError, ensure_storage_database
from toygres_pipelines.shared.connections import connection_strings
from toygres_pipelines.shared.tags import BACKUP_KIND, KIND_TAG, RESTORE_KIND

DEFAULT_STATE_DIR = Path("/var/tmp/toygres-dev")
DEFAULT_AZURITE_PORT = 10000
DEFAULT_UI_PORT = 3000
CMS_DATABASE = "toygres"
DAGSTER_DATABASE = "dagster"  # Dagster's run, event-log and schedule storage, beside the CMS database
# The command line that identifies each Dagster process of an earlier, killed run (its pid file).
PROCESS_MARKERS = {
    "request-listener": "toygres_pipelines.request_listener",
    "webserver": "dagster-webserver",
    "daemon": "dagster-daemon",
    "code-server": "api grpc",
}

DEMO_NAME = "pagila-demo"
DEMO_NAMESPACE = "default"
DEMO_POSTGRES_VERSION = "15"
DEMO_STORAGE_GB = 1
DEMO_DATABASE = "pagila"
FIRST_BACKUP_NAME = f"{DEMO_NAME}__first-backup"


class DevStackError(RuntimeError):
    pass


class Stop(Exception):
    """Raised by the SIGTERM/SIGHUP handler so that cleanup runs."""


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    dagster_home: Path
    ui_host: str
    ui_port: int
    azurite_port: int
    blob_container: str
    pagila_dir: Path
    max_backups: int | None
    max_restores: int | None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def optional_int(name: str) -> int | None:
            value = env.get(name)
            if value in (None, ""):
                return None
            try:
                number = int(value)
            except ValueError:
                raise DevStackError(f"{name}={value!r}: must be an integer") from None
            if number < 1:
                raise DevStackError(f"{name}={value!r}: must be at least 1")
            return number

        return cls(
            state_dir=Path(env.get("TOYGRES_STATE_DIR") or DEFAULT_STATE_DIR).absolute(),
            dagster_home=Path(env.get("TOYGRES_DAGSTER_HOME") or PROJECT_DIR / ".toygres" / "dagster_home").absolute(),
            ui_host=env.get("TOYGRES_UI_HOST") or "127.0.0.1",
            ui_port=optional_int("TOYGRES_UI_PORT") or DEFAULT_UI_PORT,
            azurite_port=optional_int("TOYGRES_AZURITE_PORT") or DEFAULT_AZURITE_PORT,
            blob_container=env.get("TOYGRES_BLOB_CONTAINER") or "toygres-images",
            pagila_dir=pagila_dir(env),
            max_backups=optional_int("TOYGRES_MAX_CONCURRENT_BACKUPS"),
            max_restores=optional_int("TOYGRES_MAX_CONCURRENT_RESTORES"),
        )


# --------------------------------------------------------------------------------------------
# Small helpers


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def prepare_state_dir(state_dir: Path) -> None:
    """Create the state dir 0711 and check the service user can reach it (PostgreSQL runs as it)."""
    give_to_service_user(state_dir, mode=0o711)
    user = run_as_user()
    if user is None:
        return
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(state_dir)], capture_output=True)
    if probe.returncode != 0:
        raise DevStackError(
            f"the {user!r} OS user cannot traverse {state_dir}: PostgreSQL runs as that user, so every"
            " parent directory needs o+x; use a state dir such as /var/tmp/toygres-dev (TOYGRES_STATE_DIR)"
        )


def load_or_create_key(path: Path) -> str:
    """The Fernet key of this stack: created once (0600), then always the same."""
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = CMSResource.generate_key()
    tmp = path.with_name(path.name + ".tmp")
    write_private_file(tmp, key + "\n", for_service_user=False)
    tmp.replace(path)
    return key


def _pid_alive_with(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(pgid: int, grace_seconds: float, reap: Callable[[], object] = lambda: None) -> None:
    """SIGTERM every process of a group, SIGKILL what is left after the grace period.

    `reap` collects the leader when it is our child (a zombie still counts as a group member).
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        reap()
        if not group_exists(pgid):
            return
        time.sleep(0.2)
    log(f"process group {pgid} still running after {grace_seconds:.0f}s: killing it")
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reap()
        if not group_exists(pgid):
            return
        time.sleep(0.1)


def _read_pid(pid_file: Path) -> int:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return 0


def kill_leftover(pid_file: Path, marker: str) -> None:
    """A process group a previous, killed devstack left behind: stop it."""
    if not pid_file.exists():
        return
    pid = _read_pid(pid_file)
    if pid > 0 and _pid_alive_with(pid, marker):
        log(f"stopping a leftover {marker} (process group {pid}) from an earlier run")
        stop_process_group(pid, 10)
    pid_file.unlink(missing_ok=True)


def render_dagster_yaml(template: Path, target: Path, max_backups: int | None, max_restores: int | None) -> None:
    """Copy deploy/local/dagster.yaml to DAGSTER_HOME, applying the fleet-limit overrides."""
    config = yaml.safe_load(template.read_text())
    overrides = {BACKUP_KIND: max_backups, RESTORE_KIND: max_restores}
    if any(v is not None for v in overrides.values()):
        for limit in config.get("concurrency", {}).get("runs", {}).get("tag_concurrency_limits") or []:
            value = overrides.get(limit.get("value")) if limit.get("key") == KIND_TAG else None
            if value is not None:
                limit["limit"] = value
        text = f"# generated by toygres_pipelines.dev.devstack from {template}\n" + yaml.safe_dump(
            config, sort_keys=False
        )
    else:
        text = template.read_text()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


# --------------------------------------------------------------------------------------------
# The demo instance


def demo_ref() -> InstanceRef:
    return InstanceRef(k8s_name=DEMO_NAME, namespace=DEMO_NAMESPACE)


def demo_deploy_spec() -> DeploySpec:
    return DeploySpec(
        instance=demo_ref(),
        postgres_version=DEMO_POSTGRES_VERSION,
        image_type=ImageType.stock,
        storage_size_gb=DEMO_STORAGE_GB,
        dns_label=DEMO_NAME,
    )


def _deploy_and_wait(platform: LocalPlatform, spec: DeploySpec, timeout_seconds: int = 60) -> None:
    platform.deploy_instance(spec)
    platform.wait_ready(spec.instance, timeout_seconds)


def ensure_demo_instance(cms: CMSResource, platform: LocalPlatform, pagila_dir: Path) -> Instance:
    """The pagila demo instance, running on the platform and registered `running` in the CMS.

    Idempotent: an instance already registered running is only (re)deployed when its server is
    down; a half-made one (a crash before the CMS row reached `running`) is made again.
    """
    ref = demo_ref()
    spec = demo_deploy_spec()
    existing = cms.instances.find(DEMO_NAME)
    if existing is not None and existing.state is InstanceState.running:
        _deploy_and_wait(platform, spec)
        return existing
    if existing is not None and existing.state not in (InstanceState.creating, InstanceState.stopped):
        raise DevStackError(
            f"the demo instance {DEMO_NAME} is {existing.state.value} in the CMS; reset the dev stack"
            " (stop it, then rm -rf the state dir) to recreate it"
        )

    if existing is not None and existing.state is InstanceState.stopped:
        # Stopped instances keep their data: start the server again and mark it running.
        _deploy_and_wait(platform, spec)
        instance = existing
    else:
        # Registered `creating` first; a crash before `running` leaves it so, and the next start
        # makes the server again from scratch.
        instance = existing or cms.instances.create(
            **instance_columns(name=DEMO_NAME, internal=True, dns_label=DEMO_NAME),
            k8s_name=DEMO_NAME,
            namespace=DEMO_NAMESPACE,
            postgres_version=DEMO_POSTGRES_VERSION,
            storage_size_gb=DEMO_STORAGE_GB,
            image_type=ImageType.stock,
            state=InstanceState.creating,
            tags={"toygres/demo": "pagila"},
        )
        try:
            password = platform.read_instance_password(ref)
        except PlatformError:
            password = SecretStr(secrets.token_urlsafe(24))
        platform.ensure_instance_secret(ref, password)
        platform.create_volume(ref, DEMO_STORAGE_GB)
        record = platform.server_record(ref)
        server = platform.server(ref, record.port if record else 0)
        if server.initialized and server.is_running():
            server.stop("immediate")
        if server.data_dir.exists():  # a data dir from an interrupted attempt is not trusted
            shutil.rmtree(server.data_dir)
        server.initdb(platform.superuser, password.get_secret_value())
        _deploy_and_wait(platform, spec)
        try:
            load_pagila(platform, ref, pagila_dir)
        except PagilaMissing as error:
            raise DevStackError(str(error)) from error

    # Same shape as the restore job's rows: no password in the CMS (it stays in the platform's secret).
    strings = connection_strings(platform.endpoints(ref), password=None)
    return cms.instances.transition(
        instance.id,
        InstanceState.running,
        reason="dev stack demo instance ready",
        ip_connection_string=strings.ip,
        dns_connection_string=strings.dns,
        external_ip=platform.endpoints(ref).external_ip,
    )


def request_first_backup(cms: CMSResource, demo: Instance) -> bool:
    """So `make dev` runs the main job at once: the demo's first image, through the request sensor.

    Only on a stack that has never had it; returns whether a request was made.
    """
    if cms.images.find(FIRST_BACKUP_NAME) is not None:
        return False
    if any(request.image_name == FIRST_BACKUP_NAME for request in cms.requests.list(ImageRequest)):
        return False
    cms.requests.create(
        ImageRequestFields(
            image_name=FIRST_BACKUP_NAME,
            source_instance=demo.k8s_name,
            description="first backup, requested by make dev",
        )
    )
    return True


def redeploy_running_instances(cms: CMSResource, platform: LocalPlatform) -> list[str]:
    """After a reboot: start the servers of every instance the CMS says is running. Returns problems."""
    problems: list[str] = []
    for instance in cms.instances.list([InstanceState.running]):
        ref = InstanceRef(k8s_name=instance.k8s_name, namespace=instance.namespace)
        if platform.server_record(ref) is None:
            problems.append(f"{instance.namespace}/{instance.k8s_name}: running in the CMS but not on this platform")
            continue
        spec = DeploySpec(
            instance=ref,
            postgres_version=instance.postgres_version,
            image_type=instance.image_type,
            storage_size_gb=instance.storage_size_gb,
            dns_label=instance.dns_label or instance.k8s_name,
        )
        try:
            _deploy_and_wait(platform, spec)
        except (PlatformError, ServerCommandFailed, TimeoutError) as error:
            problems.append(f"{instance.namespace}/{instance.k8s_name}: {error}")
    return problems


def local_instances(platform: LocalPlatform) -> list[InstanceRef]:
    root = Path(platform.state_dir) / "instances"
    return [
        InstanceRef(k8s_name=path.parent.name, namespace=path.parent.parent.name)
        for path in sorted(root.glob("*/*/server.json"))
    ]


def stop_local_instances(platform: LocalPlatform) -> None:
    """Stop every instance server of the platform's state dir (the demo and restored ones)."""
    for ref in local_instances(platform):
        try:
            record = platform.server_record(ref)
            if record is not None and platform.server(ref, record.port).is_running():
                log(f"stopping instance {ref.namespace}/{ref.k8s_name}")
                platform.stop_instance(ref)
        except Exception as error:  # noqa: BLE001 - keep stopping the others
            log(f"could not stop {ref.namespace}/{ref.k8s_name}: {error}")
    platform.stop_wal_archivers()  # detached processes: they would outlive the stack


# --------------------------------------------------------------------------------------------
# Services


def start_azurite(state_dir: Path, preferred_port: int) -> Azurite:
    data_dir = state_dir / "azurite"
    data_dir.mkdir(parents=True, exist_ok=True)
    pid_file = data_dir / "azurite.pid"
    kill_leftover(pid_file, "azurite")
    port = preferred_port
    if port_in_use(port):
        port = free_port()
        log(
            f"port {preferred_port} is busy: Azurite listens on {port} instead"
            f" (blob URLs recorded so far name {preferred_port})"
        )
    azurite = Azurite(data_dir, port).start()
    assert azurite.process is not None  # start() made it
    pid_file.write_text(str(azurite.process.pid))
    return azurite


def cms_database_dsn(cms_server: CmsServer) -> str:
    with psycopg.connect(cms_server.dsn, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (CMS_DATABASE,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(CMS_DATABASE)))
    return cms_server.server.dsn(cms_server.user, cms_server.password, dbname=CMS_DATABASE)


def start_dagster(settings: Settings, storage_env: dict[str, str], code_env: dict[str, str]) -> DagsterTopology:
    """The chart's topology (topology.py): the code server, the daemon and the webserver.

    Leftovers of a killed earlier run are stopped first (their pid files name their process groups).
    """
    for name, marker in PROCESS_MARKERS.items():
        kill_leftover(settings.state_dir / f"dagster-{name}.pid", marker)
    if port_in_use(settings.ui_port, settings.ui_host):
        raise DevStackError(
            f"{settings.ui_host}:{settings.ui_port} is already in use: stop what listens there or set TOYGRES_UI_PORT"
        )
    topology = DagsterTopology(
        home=settings.dagster_home,
        workspace=settings.dagster_home / "workspace.yaml",
        log_dir=settings.state_dir / "dagster-logs",
        dagster_env={"DAGSTER_HOME": str(settings.dagster_home), **storage_env},
        code_env=code_env,
        code_port=free_port(),
    )
    try:
        topology.start_code_server()
        topology.start_daemon()
        topology.start_webserver(settings.ui_host, settings.ui_port)
        local = "127.0.0.1" if settings.ui_host in ("0.0.0.0", "::") else settings.ui_host  # noqa: S104 - a listen address
        topology.start_listener(f"http://{local}:{settings.ui_port}")
    except TopologyError as error:
        topology.stop()
        raise DevStackError(str(error)) from error
    finally:
        for name, process in topology.processes.items():
            (settings.state_dir / f"dagster-{name}.pid").write_text(str(process.pid))
    return topology


def stop_dagster(topology: DagsterTopology, state_dir: Path) -> None:
    log("stopping dagster (request listener, webserver, daemon, code server and its run workers)")
    topology.stop()
    for name in PROCESS_MARKERS:
        (state_dir / f"dagster-{name}.pid").unlink(missing_ok=True)


def wait_while_running(topology: DagsterTopology, feed: RunFeed, say: Callable[[str], None] = log) -> str:
    """Until one of the Dagster processes exits, saying each run event (the feed): returns what happened."""
    while True:
        try:
            for line in feed.poll():
                say(line)
        except Stop:
            raise  # SIGTERM/SIGHUP arrived while the feed read: stop, as anywhere else
        except Exception as error:  # noqa: BLE001 - a storage hiccup must not stop the dev stack; the runs go on
            say(f"warning: could not read the runs ({type(error).__name__}); see the Dagster UI")
        try:
            topology.check_running()
        except TopologyError as error:
            return str(error)
        time.sleep(1)


def open_dagster_instance(topology: DagsterTopology) -> dg.DagsterInstance:
    """The deployment's Dagster instance, read here for the run feed (dagster.yaml reads the storage
    settings from the environment, as in every Dagster process)."""
    os.environ.update(topology.dagster_env)
    return dg.DagsterInstance.from_config(str(topology.home))


# --------------------------------------------------------------------------------------------
# Main


def stack_environment(settings: Settings, cms_dsn: str, key: str, azurite: Azurite) -> dict[str, str]:
    """What the code location reads (see toygres_pipelines/resources_from_env.py)."""
    return {
        "TOYGRES_CMS_DSN": cms_dsn,
        "TOYGRES_ENCRYPTION_KEY": key,
        "TOYGRES_BLOB_CONNECTION_STRING": azurite.connection_string,
        "TOYGRES_BLOB_CONTAINER": settings.blob_container,
        "TOYGRES_PLATFORM": "local",
        "TOYGRES_STATE_DIR": str(settings.state_dir),
        "TOYGRES_AZCOPY": str(azcopy_path().absolute()),
        "DAGSTER_HOME": str(settings.dagster_home),
    }


def dev_env_text(env_vars: dict[str, str]) -> str:
    """dev.env: the stack's environment, and this checkout's venv first on PATH (the CLI lives there)."""
    exports = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env_vars.items())
    return exports + f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"\n'


def _on_signal(signum: int, _frame) -> None:
    raise Stop(signal.Signals(signum).name)


def run(settings: Settings) -> int:
    require_tools()
    if not settings.pagila_dir.is_dir():
        raise DevStackError(f"pagila fixtures not found in {settings.pagila_dir} (set TOYGRES_PAGILA_DIR)")
    prepare_state_dir(settings.state_dir)
    pid_file = settings.state_dir / "devstack.pid"
    other = _read_pid(pid_file)
    if other and other != os.getpid() and _pid_alive_with(other, "toygres_pipelines.dev.devstack"):
        raise DevStackError(
            f"a dev stack already runs on {settings.state_dir} (pid {other}): stop it first (kill {other})"
        )
    pid_file.write_text(f"{os.getpid()}\n")

    with ExitStack() as cleanup:
        cleanup.callback(pid_file.unlink, missing_ok=True)
        try:
            return _run_stack(settings, cleanup)
        finally:
            # Cleanup (the ExitStack, in reverse order of start) must not be cut short by a
            # second Ctrl-C or a SIGTERM.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            log("shutting down")


def _run_stack(settings: Settings, cleanup: ExitStack) -> int:
    log(f"state dir {settings.state_dir}")
    cms_server = CmsServer.in_dir(settings.state_dir / "cms")
    cleanup.callback(_stop_cms, cms_server)

    azurite = start_azurite(settings.state_dir, settings.azurite_port)
    cleanup.callback(_stop_azurite, azurite, settings.state_dir / "azurite" / "azurite.pid")

    key = load_or_create_key(settings.state_dir / "encryption-key")
    cms = CMSResource(dsn=cms_database_dsn(cms_server), encryption_key=key)
    applied = cms.migrations.apply()
    log(f"CMS migrations applied now: {', '.join(applied) if applied else 'none (up to date)'}")

    BlobStorageResource(
        container=settings.blob_container, connection_string=azurite.connection_string
    ).ensure_container()

    platform = LocalPlatform(state_dir=str(settings.state_dir), azcopy_path=str(azcopy_path().absolute()))
    cleanup.callback(stop_local_instances, platform)
    for problem in redeploy_running_instances(cms, platform):
        log(f"warning: {problem}")
    log(f"demo instance {DEMO_NAME}: checking (the first start creates it and loads pagila)")
    demo = ensure_demo_instance(cms, platform, settings.pagila_dir)
    demo_port = platform.endpoints(demo_ref()).port
    if request_first_backup(cms, demo):
        log(f"requested the first backup of {DEMO_NAME} ({FIRST_BACKUP_NAME}): the image_requests_sensor runs it")

    env_vars = stack_environment(settings, cms.dsn, key, azurite)
    storage_env = ensure_storage_database(cms_server.dsn, DAGSTER_DATABASE)
    render_dagster_yaml(
        PROJECT_DIR / "deploy" / "local" / "dagster.yaml",
        settings.dagster_home / "dagster.yaml",
        settings.max_backups,
        settings.max_restores,
    )
    write_private_file(
        settings.state_dir / "dev.env", dev_env_text({**env_vars, **storage_env}), for_service_user=False
    )

    code_env = {name: value for name, value in env_vars.items() if name != "DAGSTER_HOME"}
    dagster = start_dagster(settings, storage_env, code_env)
    cleanup.callback(stop_dagster, dagster, settings.state_dir)

    url = f"http://{settings.ui_host}:{settings.ui_port}"
    log(f"Dagster UI: {url}")
    log(
        f"running: Dagster webserver {settings.ui_host}:{settings.ui_port}, daemon, request listener, code server"
        f" 127.0.0.1:{dagster.code_port} (logs {dagster.log_dir}) | CMS PostgreSQL 127.0.0.1:"
        f"{cms_server.server.port} db {CMS_DATABASE}, Dagster storage db {DAGSTER_DATABASE} | Azurite 127.0.0.1:"
        f"{azurite.port} container {settings.blob_container} | demo instance {demo.k8s_name} 127.0.0.1:{demo_port}"
        f" db {DEMO_DATABASE} | state {settings.state_dir} | DAGSTER_HOME {settings.dagster_home}"
    )
    log(f"for the CLI: source {settings.state_dir / 'dev.env'}   |   Ctrl-C stops everything")
    log(f"quiet: one line per run started, succeeded or failed; the full Dagster logs are in {dagster.log_dir}")
    instance = cleanup.enter_context(open_dagster_instance(dagster))
    log(f"error: {wait_while_running(dagster, RunFeed(instance))}")
    return 1


def _stop_cms(cms_server: CmsServer) -> None:
    log("stopping the CMS server")
    cms_server.server.stop("fast")


def _stop_azurite(azurite: Azurite, pid_file: Path) -> None:
    log("stopping Azurite")
    azurite.stop()
    pid_file.unlink(missing_ok=True)


def main() -> int:
    # A process started in the background by a non-interactive shell (`make dev &`, CI) inherits
    # SIGINT ignored, and Dagster maps SIGTERM to its SIGINT handler: ignored too. Installing
    # a handler here means children start with the default disposition (handlers reset on exec).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        settings = Settings.from_env()
        return run(settings)
    except (KeyboardInterrupt, Stop):
        log("stopped")
        return 0
    except DevStackError as error:
        log(f"error: {error}")
        return 1
    except Exception:  # noqa: BLE001 - the stack is already stopped; show what went wrong
        traceback.print_exc()
        log("error: the dev stack could not start (see above); everything it started is stopped")
        return 1


if __name__ == "__main__":
    sys.exit(main())
