"""End to end through a real `dagster-daemon`: CMS requests → sensor ticks → queued runs → run
workers → CMS rows written back. The instance config is the one `make dev` ships."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from records import ImageState, InstanceState, RequestState
from records.requests import ImageRequestFields, RestoreRequestFields
from tests.helpers import materialize_image
from toygres_pipelines.automation.jobs import KIND_TAG, REQUEST_ID_TAG

pytestmark = pytest.mark.integration

from resources.platform.base import PROJECT_DIR  # noqa: E402

WAIT_SECONDS = 180


@pytest.fixture
def daemon_home(tmp_path, stack, cms, blob, platform):
    """DAGSTER_HOME with the dev stack's dagster.yaml, a workspace, and the environment of the code location."""
    from resources.platform.local_tools import azcopy_path

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT_DIR / "deploy" / "local" / "dagster.yaml").read_text())
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: toygres_pipelines.definitions\n"
        f"      working_directory: {PROJECT_DIR}\n"
        "      location_name: toygres_pipelines\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TOYGRES_", "DAGSTER_"))},
        "DAGSTER_HOME": str(home),
        "TOYGRES_CMS_DSN": cms.dsn,
        "TOYGRES_ENCRYPTION_KEY": cms.encryption_key,
        "TOYGRES_BLOB_CONNECTION_STRING": stack.azurite.connection_string,
        "TOYGRES_BLOB_CONTAINER": blob.container,
        "TOYGRES_PLATFORM": "local",
        "TOYGRES_STATE_DIR": platform.state_dir,
        "TOYGRES_AZCOPY": str(azcopy_path()),
        "TOYGRES_SENSOR_INTERVAL_SECONDS": "5",
    }
    return home, workspace, env


@pytest.fixture
def daemon(daemon_home, tmp_path):
    home, workspace, env = daemon_home
    log_path = tmp_path / "daemon.log"
    daemon_bin = Path(sys.executable).parent / "dagster-daemon"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(daemon_bin), "run", "-w", str(workspace)],
            cwd=str(PROJECT_DIR),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process, home, log_path
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """The daemon, its code server and any run worker: the whole process group it leads."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            # run workers may outlive the daemon briefly; the group is signalled again below
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def test_requests_run_through_the_daemon(resources, cms, source, daemon, monkeypatch):
    key = f"{source.k8s_name}__for-daemon"
    assert materialize_image(resources, key).success
    ready = cms.find_image(key)
    assert ready.state is ImageState.ready

    process, home, log_path = daemon
    restore = cms.create_restore_request(
        RestoreRequestFields(
            name="via-daemon",
            dns_label="via-daemon",
            source_image_id=ready.name,
            namespace="default",
            storage_size_gb=1,
            internal=True,
        )
    )
    backup = cms.create_image_request(
        ImageRequestFields(image_name="daemon-backup", source_instance=source.k8s_name, description="e2e")
    )
    invalid = cms.create_restore_request(
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
        assert process.poll() is None, f"dagster-daemon exited ({process.returncode}):\n{log_tail(log_path)}"
        states = (cms.get_restore_request(restore.id).state, cms.get_image_request(backup.id).state)
        if all(state in terminal for state in states):
            break
        time.sleep(1)

    restored = cms.get_restore_request(restore.id)
    backed_up = cms.get_image_request(backup.id)
    context = f"restore request: {restored}\nimage request: {backed_up}\ndaemon log:\n{log_tail(log_path)}"
    assert restored.state is RequestState.succeeded, context
    assert backed_up.state is RequestState.succeeded, context
    rejected = cms.get_restore_request(invalid.id)
    assert rejected.state is RequestState.rejected and rejected.reason.startswith("name: 'Invalid_Name'")

    instance_row = cms.get_instance(restored.instance_id)
    assert instance_row.state is InstanceState.running and instance_row.user_name == "via-daemon"
    assert instance_row.run_id == restored.run_id
    image_row = cms.find_image("daemon-backup")
    assert image_row.state is ImageState.ready and image_row.run_id == backed_up.run_id
    assert image_row.description == "e2e"

    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the shipped dagster.yaml reads it
    with dg.DagsterInstance.from_config(str(home)) as dagster:
        restore_run = dagster.get_run_by_id(restored.run_id)
        assert restore_run.job_name == "restore_instance" and restore_run.status is dg.DagsterRunStatus.SUCCESS
        assert restore_run.tags[REQUEST_ID_TAG] == str(restore.id) and restore_run.tags[KIND_TAG] == "restore"
        assert restore_run.tags["dagster/run_key"] == str(restore.id)
        assert restore_run.tags["dagster/sensor_name"] == "restore_requests_sensor"
        backup_run = dagster.get_run_by_id(backed_up.run_id)
        assert backup_run.job_name == "backup_image" and backup_run.tags["dagster/partition"] == "daemon-backup"
        assert "daemon-backup" in dagster.get_dynamic_partitions("images")
        assert len(dagster.get_runs()) == 2  # nothing launched twice, nothing for the rejected request
