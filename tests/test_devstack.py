"""The `make dev` runner: demo instance, instance config, key, process-group handling."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from cryptography.fernet import Fernet

from records import ImageRequest, ImageType, InstanceRef, InstanceState
from resources.platform.base import PROJECT_DIR
from resources.platform.local import LocalPlatform
from resources.platform.local_tools import azcopy_path
from tests.helpers import add_instance
from toygres_pipelines.dev import demo, devstack

SHIPPED_DAGSTER_YAML = PROJECT_DIR / "deploy" / "local" / "dagster.yaml"


# ---- the demo instance (real PostgreSQL) ---------------------------------------------------


@pytest.fixture
def dev_platform(stack):
    """A local platform of its own: stop_local_instances() stops every server in its state dir,
    which must not include the `pagila-src` server the other tests of this worker share."""
    state_dir = stack.root / f"devstack-{uuid.uuid4().hex[:8]}"
    platform = LocalPlatform(state_dir=str(state_dir), azcopy_path=str(azcopy_path()))
    yield platform
    for ref in devstack.local_instances(platform):
        platform.delete_instance(ref)


@pytest.mark.integration
def test_demo_instance_is_created_once_and_redeployed_when_down(cms, dev_platform):
    platform = dev_platform
    pagila_dir = devstack.Settings.from_env().pagila_dir

    demo = devstack.ensure_demo_instance(cms, platform, pagila_dir)

    assert demo.state is InstanceState.running
    assert (demo.k8s_name, demo.namespace, demo.user_name, demo.dns_name) == (
        "pagila-demo",
        "default",
        "pagila-demo",
        "pagila-demo",
    )
    assert demo.postgres_version == "15" and demo.storage_size_gb == 1 and demo.image_type is ImageType.stock
    endpoints = platform.endpoints(devstack.demo_ref())
    assert demo.ip_connection_string == f"postgresql://postgres@{endpoints.external_ip}:{endpoints.port}/postgres"
    assert demo.dns_connection_string is not None
    password = platform.read_instance_password(devstack.demo_ref()).get_secret_value()
    assert password not in demo.ip_connection_string
    assert [e.to_state for e in cms.events.of(demo.id)] == ["creating", "running"]

    def pagila_counts() -> tuple[int, int]:
        dsn = psycopg.conninfo.make_conninfo(
            host=endpoints.host, port=endpoints.port, user="postgres", password=password, dbname="pagila"
        )
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            films = conn.execute("SELECT count(*) FROM film").fetchone()[0]
            payments = conn.execute("SELECT count(*) FROM payment").fetchone()[0]
        return films, payments

    counts = pagila_counts()
    assert counts[0] == 1000 and counts[1] > 10000

    # The first start asks for the demo's first backup (the sensor runs it), and only once.
    assert devstack.request_first_backup(cms, demo) is True
    assert devstack.request_first_backup(cms, demo) is False
    [request] = cms.requests.list(ImageRequest)
    assert (request.image_name, request.source_instance) == (devstack.FIRST_BACKUP_NAME, "pagila-demo")

    # Running again reuses it: same row, no new event, same data.
    again = devstack.ensure_demo_instance(cms, platform, pagila_dir)
    assert again.id == demo.id
    assert len(cms.events.of(demo.id)) == 2
    assert pagila_counts() == counts

    # After a reboot the CMS says running but the server is down: it is deployed again.
    platform.stop_instance(devstack.demo_ref())
    assert not platform.server(devstack.demo_ref(), endpoints.port).is_running()
    assert devstack.redeploy_running_instances(cms, platform) == []
    assert pagila_counts() == counts
    platform.stop_instance(devstack.demo_ref())
    assert devstack.ensure_demo_instance(cms, platform, pagila_dir).id == demo.id
    assert pagila_counts() == counts

    # Shutdown stops every instance server of the state dir.
    devstack.stop_local_instances(platform)
    assert not platform.server(devstack.demo_ref(), endpoints.port).is_running()


@pytest.mark.integration
def test_running_instance_unknown_to_the_platform_is_reported(cms, dev_platform):
    platform = dev_platform
    row = add_instance(cms, "ghost-abcde", state=InstanceState.creating, dns_name="ghost")
    cms.instances.transition(row.id, InstanceState.running)

    problems = devstack.redeploy_running_instances(cms, platform)

    assert problems == ["default/ghost-abcde: running in the CMS but not on this platform"]
    assert not platform.instance_exists(InstanceRef(k8s_name="ghost-abcde", namespace="default"))


# ---- the Dagster instance config -------------------------------------------------------------


@pytest.fixture
def dagster_storage(fresh_database, monkeypatch):
    """The DAGSTER_PG_* variables of the shipped instance config, naming a database of its own."""
    from psycopg.conninfo import conninfo_to_dict

    from toygres_pipelines.dev.topology import ensure_storage_database

    env = ensure_storage_database(fresh_database, conninfo_to_dict(fresh_database)["dbname"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _limits(home: Path) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        config = instance.get_concurrency_config()
        assert instance.run_monitoring_enabled
        assert type(instance.run_coordinator).__name__ == "TaggingRunCoordinator"  # a QueuedRunCoordinator
    limits = {}
    for limit in config.run_queue_config.tag_concurrency_limits:
        value = limit.get("value")
        limits[(limit["key"], value if isinstance(value, str) else "per-value")] = limit["limit"]
    return limits


def test_shipped_instance_config_loads_with_the_fleet_limits(tmp_path, monkeypatch, dagster_storage):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))  # local artifacts live there
    devstack.render_dagster_yaml(SHIPPED_DAGSTER_YAML, tmp_path / "dagster.yaml", None, None)

    assert (tmp_path / "dagster.yaml").read_text() == SHIPPED_DAGSTER_YAML.read_text()
    assert _limits(tmp_path) == {
        ("toygres/kind", "backup"): 2,
        ("toygres/kind", "restore"): 2,
        ("toygres/instance", "per-value"): 1,
    }


def test_fleet_limits_can_be_overridden(tmp_path, monkeypatch, dagster_storage):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    devstack.render_dagster_yaml(SHIPPED_DAGSTER_YAML, tmp_path / "dagster.yaml", 5, 3)

    assert _limits(tmp_path) == {
        ("toygres/kind", "backup"): 5,
        ("toygres/kind", "restore"): 3,
        ("toygres/instance", "per-value"): 1,
    }


# ---- settings, key, processes ----------------------------------------------------------------


def test_settings_defaults_and_overrides():
    defaults = devstack.Settings.from_env({})
    assert defaults.state_dir == Path("/var/tmp/toygres-dev")
    assert defaults.dagster_home == PROJECT_DIR / ".toygres" / "dagster_home"
    assert (defaults.ui_host, defaults.ui_port, defaults.azurite_port) == ("127.0.0.1", 3000, 10000)
    assert defaults.blob_container == "toygres-images"
    assert defaults.pagila_dir == demo.pagila_dir({})
    assert demo.pagila_dir({}) in demo.PAGILA_CANDIDATES
    assert (defaults.max_backups, defaults.max_restores) == (None, None)

    custom = devstack.Settings.from_env(
        {"TOYGRES_STATE_DIR": "/srv/t", "TOYGRES_UI_PORT": "3100", "TOYGRES_MAX_CONCURRENT_BACKUPS": "4"}
    )
    assert (custom.state_dir, custom.ui_port, custom.max_backups) == (Path("/srv/t"), 3100, 4)

    with pytest.raises(devstack.DevStackError, match="TOYGRES_UI_PORT='x'"):
        devstack.Settings.from_env({"TOYGRES_UI_PORT": "x"})
    with pytest.raises(devstack.DevStackError, match="at least 1"):
        devstack.Settings.from_env({"TOYGRES_MAX_CONCURRENT_RESTORES": "0"})


def test_encryption_key_is_created_private_and_then_kept(tmp_path):
    path = tmp_path / "encryption-key"

    key = devstack.load_or_create_key(path)

    Fernet(key.encode())  # a valid key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert devstack.load_or_create_key(path) == key


def test_process_group_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path):
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        ["bash", "-c", f"trap '' TERM; sleep 60 & sleep 60 & touch {ready}; wait"], start_new_session=True
    )
    deadline = time.monotonic() + 60
    while not ready.exists():  # the trap is set and both children run: the group ignores SIGTERM
        assert time.monotonic() < deadline, "the process group never started"
        time.sleep(0.02)
    started = time.monotonic()

    devstack.stop_process_group(process.pid, 1, process.poll)

    assert time.monotonic() - started < 5
    assert process.poll() is not None
    assert not devstack.group_exists(process.pid)


def test_process_group_stops_at_once_on_sigterm():
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started = time.monotonic()

    devstack.stop_process_group(process.pid, 20, process.poll)

    assert time.monotonic() - started < 5
    assert process.returncode == -15
    assert not devstack.group_exists(process.pid)


def ignored_signals(status_line: str) -> set[signal.Signals]:
    mask = int(status_line.split()[1], 16)
    return {s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT) if mask & (1 << (s - 1))}


def test_children_get_default_signals_after_a_dagster_run_in_a_background_session():
    """Started as `cmd &` from a non-interactive shell (SIGINT and SIGQUIT ignored), a Dagster
    execution copies SIGINT's disposition to SIGTERM (dagster._utils.interrupts): the suite must
    hand neither an ignored SIGTERM nor the inherited SIGINT/SIGQUIT to the children it starts."""
    code = textwrap.dedent(
        """
        import subprocess
        import tests.conftest  # what pytest loads before any test
        import dagster as dg

        @dg.op
        def noop():
            pass

        @dg.job
        def one_op():
            noop()

        one_op.execute_in_process()
        print(subprocess.run(["grep", "SigIgn", "/proc/self/status"], capture_output=True, text=True).stdout)
        """
    )
    out = subprocess.run(
        ["bash", "-c", 'trap "" INT QUIT; exec "$0" -c "$1"', sys.executable, code],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # SIGHUP may be ignored by whoever started the suite (nohup): that choice is theirs to pass on.
    assert ignored_signals(out) - {signal.SIGHUP} == set()


def test_service_processes_start_with_default_signals_whatever_the_parent_ignores():
    from resources.platform.postgres_server import as_service_user

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in before:
            signal.signal(s, signal.SIG_IGN)
        for argv in (
            as_service_user(["grep", "SigIgn", "/proc/self/status"], {}),
            as_service_user(["grep", "SigIgn", "/proc/self/status"]),
        ):
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            assert ignored_signals(out) == set(), argv
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def test_sourcing_dev_env_puts_the_cli_on_path(tmp_path):
    env_file = tmp_path / "dev.env"
    env_file.write_text(devstack.dev_env_text({"TOYGRES_CMS_DSN": "host=/tmp dbname=x user='o''neil'"}))
    found = subprocess.run(
        ["bash", "-c", f'source {env_file} && command -v toygres-pipelines && echo "$TOYGRES_CMS_DSN"'],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert found == [str(Path(sys.executable).parent / "toygres-pipelines"), "host=/tmp dbname=x user='o''neil'"]


def test_our_definitions_load_without_a_warning():
    """`make dev` starts quietly: loading the code location (what every code server does) warns of nothing."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            "import toygres_pipelines.definitions as d; d.defs.get_repository_def().get_all_jobs()",
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]


def test_the_code_server_runs_as_the_charts_user_deployment():
    """The chart starts `dagster api grpc` with the values' dagsterApiGrpcArgs; the webserver and the
    daemon load it over gRPC (the chart's workspace: one grpc_server per user deployment)."""
    from toygres_pipelines.dev import topology

    assert topology.code_server_args() == ["--module-name", "toygres_pipelines.definitions"]
    workspace = yaml.safe_load(topology.workspace_yaml(4321))
    assert workspace == {
        "load_from": [{"grpc_server": {"host": "127.0.0.1", "port": 4321, "location_name": "toygres_pipelines"}}]
    }


def test_the_azurite_log_holds_no_sas_signature_and_is_private(tmp_path):
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerClient, ContainerSasPermissions, generate_container_sas

    from resources.blob import BlobStorageResource
    from toygres_pipelines.dev.stack import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, free_port

    azurite = Azurite(data_dir=tmp_path / "azurite", port=free_port()).start()
    try:
        blob = BlobStorageResource(connection_string=azurite.connection_string, container="sas-log")
        blob.ensure_container()
        sas = generate_container_sas(
            AZURITE_ACCOUNT,
            "sas-log",
            account_key=AZURITE_KEY,
            permission=ContainerSasPermissions(read=True, list=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        assert list(ContainerClient.from_container_url(f"{blob.container_url}?{sas}").list_blobs()) == []
    finally:
        azurite.stop()  # the log is complete once the process is gone
    log = tmp_path / "azurite" / "azurite.log"
    assert "sig=" not in log.read_text() and "sas-log" not in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_a_sigterm_while_the_run_feed_reads_stops_the_stack():
    """SIGTERM raises Stop wherever the runner is; in the run feed's poll it was taken for a storage
    hiccup ("could not read the runs (Stop)") and the stack went on running."""
    from toygres_pipelines.dev.devstack import Stop, wait_while_running

    class Feed:
        def poll(self):
            raise Stop("SIGTERM")

    class Topology:
        checks = 0

        def check_running(self):
            self.checks += 1
            if self.checks > 2:  # the stack would have gone on: end the loop as a dead daemon would
                from toygres_pipelines.dev.topology import TopologyError

                raise TopologyError("still running after SIGTERM")

    said: list[str] = []
    with pytest.raises(Stop):
        wait_while_running(Topology(), Feed(), said.append)  # type: ignore[arg-type]
    assert said == []
