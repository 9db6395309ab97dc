"""End to end through Dagster deployed as the Helm chart deploys it (toygres_pipelines/dev/topology.py:
PostgreSQL storage, a gRPC code server, daemon and webserver loading it over gRPC, one process per
run): CMS requests → sensor ticks → queued runs → run workers → CMS rows written back. The instance
config is the one `make dev` ships."""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from records import ImageRequest, ImageState, InstanceState, RequestState, RestoreRequest
from records.requests import ImageRequestFields, RestoreRequestFields
from tests.helpers import materialize_image
from toygres_pipelines.shared.tags import KIND_TAG, REQUEST_ID_TAG

pytestmark = pytest.mark.integration

from resources.platform.postgres_server import free_port  # noqa: E402
from toygres_pipelines.dev.topology import LOCAL_INSTANCE, DagsterTopology, ensure_storage_database  # noqa: E402

WAIT_SECONDS = 180


@pytest.fixture
def topology(tmp_path, stack, cms, blob, platform):
    """The chart's topology (toygres_pipelines/dev/topology.py) over this test's CMS and blob
    container: a storage database of its own, the shipped dagster.yaml, the code server running."""
    from resources.platform.local_tools import azcopy_path

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(LOCAL_INSTANCE.read_text())
    database = f"dagster_{uuid.uuid4().hex[:12]}"
    storage_env = ensure_storage_database(stack.cms.dsn, database)
    code_env = {
        "TOYGRES_CMS_DSN": cms.dsn,
        "TOYGRES_ENCRYPTION_KEY": cms.encryption_key,
        "TOYGRES_BLOB_CONNECTION_STRING": stack.azurite.connection_string,
        "TOYGRES_BLOB_CONTAINER": blob.container,
        "TOYGRES_PLATFORM": "local",
        "TOYGRES_STATE_DIR": platform.state_dir,
        "TOYGRES_AZCOPY": str(azcopy_path()),
        "TOYGRES_SENSOR_INTERVAL_SECONDS": "5",
    }
    dagster = DagsterTopology(
        home=home,
        workspace=tmp_path / "workspace.yaml",
        log_dir=tmp_path / "dagster-logs",
        dagster_env={"DAGSTER_HOME": str(home), **storage_env},
        code_env=code_env,
        code_port=free_port(),
    )
    try:
        dagster.start_code_server()
        yield dagster
    finally:
        dagster.stop()
        with psycopg.connect(stack.cms.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@contextmanager
def dagster_instance(topology: DagsterTopology, monkeypatch):
    """This process's view of the topology's instance (the same storage variables)."""
    for name, value in topology.dagster_env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(topology.home)) as instance:
        yield instance


def test_requests_run_through_the_chart_topology(resources, cms, source, topology, monkeypatch):
    """Request → sensor tick in the daemon → queued run → TaggingRunCoordinator → run worker
    launched by the code server → CMS write-back, with the webserver up as in a deployment."""
    key = f"{source.k8s_name}__for-daemon"
    assert materialize_image(resources, key).success
    ready = cms.images.find(key)
    assert ready.state is ImageState.ready

    topology.start_daemon()
    topology.start_webserver("127.0.0.1", free_port())
    restore = cms.requests.create(
        RestoreRequestFields(
            name="via-daemon",
            dns_label="via-daemon",
            source_image_id=ready.name,
            namespace="default",
            storage_size_gb=1,
            internal=True,
        )
    )
    backup = cms.requests.create(
        ImageRequestFields(image_name="daemon-backup", source_instance=source.k8s_name, description="e2e")
    )
    invalid = cms.requests.create(
        RestoreRequestFields(
            name="Invalid_Name",
            dns_label="never",
            source_image_id=ready.name,
            namespace="default",
            storage_size_gb=1,
            internal=True,
        )
    )

    deadline = time.monotonic() + WAIT_SECONDS
    terminal = {RequestState.succeeded, RequestState.failed, RequestState.rejected}
    while time.monotonic() < deadline:
        topology.check_running()
        states = (cms.requests.get(RestoreRequest, restore.id).state, cms.requests.get(ImageRequest, backup.id).state)
        if all(state in terminal for state in states):
            break
        time.sleep(1)

    restored = cms.requests.get(RestoreRequest, restore.id)
    backed_up = cms.requests.get(ImageRequest, backup.id)
    context = (
        f"restore request: {restored}\nimage request: {backed_up}\ndaemon log:\n{topology.log_tail('daemon')}"
        f"\ncode server log:\n{topology.log_tail('code-server')}"
    )
    assert restored.state is RequestState.succeeded, context
    assert backed_up.state is RequestState.succeeded, context
    rejected = cms.requests.get(RestoreRequest, invalid.id)
    assert rejected.state is RequestState.rejected and rejected.reason.startswith("name: 'Invalid_Name'")

    instance_row = cms.instances.get(restored.instance_id)
    assert instance_row.state is InstanceState.running and instance_row.user_name == "via-daemon"
    assert instance_row.run_id == restored.run_id
    image_row = cms.images.find("daemon-backup")
    assert image_row.state is ImageState.ready and image_row.run_id == backed_up.run_id
    assert image_row.description == "e2e"

    with dagster_instance(topology, monkeypatch) as dagster:
        restore_run = dagster.get_run_by_id(restored.run_id)
        assert restore_run.job_name == "restore_instance" and restore_run.status is dg.DagsterRunStatus.SUCCESS
        assert restore_run.tags[REQUEST_ID_TAG] == str(restore.id) and restore_run.tags[KIND_TAG] == "restore"
        assert restore_run.tags["dagster/run_key"] == str(restore.id)
        assert restore_run.tags["dagster/sensor_name"] == "restore_requests_sensor"
        backup_run = dagster.get_run_by_id(backed_up.run_id)
        assert backup_run.job_name == "backup_image" and backup_run.tags["dagster/partition"] == "daemon-backup"
        assert "daemon-backup" in dagster.get_dynamic_partitions("images")
        # Nothing launched twice, nothing for the rejected request. Runs of the schedules and of the
        # fleet-check sensor may come and go while the daemon runs (a busy machine crosses their ticks).
        request_runs = [run for run in dagster.get_runs() if run.job_name in ("restore_instance", "backup_image")]
        assert sorted(run.run_id for run in request_runs) == sorted([restored.run_id, backed_up.run_id])
