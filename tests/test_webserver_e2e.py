"""The UI path, for real: a dagster-webserver serving workspace.yaml, driven through the same
GraphQL calls the UI makes to add a partition and materialize it (no Python written by the user).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import requests
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from records import ImageState
from resources.platform.base import PROJECT_DIR
from resources.platform.local_tools import azcopy_path
from resources.platform.postgres_server import free_port
from toygres_pipelines.automation.jobs import INSTANCE_TAG, KIND_TAG
from toygres_pipelines.dev.stack import wait_for_port

pytestmark = pytest.mark.integration

ADD_PARTITION = """
mutation AddPartition($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName,
                      partitionKey: $partitionKey) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on PythonError { message }
  }
}
"""


def code_location_env(cms, blob, platform, dagster_home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "TOYGRES_CMS_DSN": cms.dsn,
        "TOYGRES_ENCRYPTION_KEY": cms.encryption_key,
        "TOYGRES_BLOB_CONNECTION_STRING": blob.connection_string,
        "TOYGRES_BLOB_CONTAINER": blob.container,
        "TOYGRES_PLATFORM": "local",
        "TOYGRES_STATE_DIR": platform.state_dir,
        "TOYGRES_AZCOPY": str(azcopy_path()),
    }


@contextmanager
def running_webserver(tmp_path: Path, env: dict[str, str], workspace: Path = PROJECT_DIR / "workspace.yaml"):
    """dagster-webserver on a free port, serving `workspace`; yields the port."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT_DIR,
        env=env,
        stdout=open(tmp_path / "webserver.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 90)
        deadline = time.monotonic() + 90
        while requests.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, (tmp_path / "webserver.log").read_text()[-3000:]
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def webserver(cms, blob, platform, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # No daemon here: the webserver launches runs itself (the daemon path has its own test).
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    with running_webserver(tmp_path, code_location_env(cms, blob, platform, dagster_home)) as port:
        yield port


@pytest.fixture
def queueing_webserver(cms, blob, platform, tmp_path):
    """The webserver with the instance config `make dev` ships (runs are queued; no daemon here)."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((PROJECT_DIR / "deploy" / "local" / "dagster.yaml").read_text())
    with running_webserver(tmp_path, code_location_env(cms, blob, platform, dagster_home)) as port:
        yield port, dagster_home


def add_partition(client: DagsterGraphQLClient, key: str) -> None:
    added = client._execute(
        ADD_PARTITION,
        {
            "repositorySelector": {"repositoryLocationName": "toygres_pipelines", "repositoryName": "__repository__"},
            "partitionsDefName": "images",
            "partitionKey": key,
        },
    )["addDynamicPartition"]
    assert added == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": key}


def test_a_backup_launched_like_the_ui_does_is_queued_with_the_fleet_tags(queueing_webserver, source, monkeypatch):
    port, dagster_home = queueing_webserver
    client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=60)
    key = f"{source.k8s_name}__materialize-button"
    add_partition(client, key)
    # What the UI's Materialize sends: the implicit asset job, the asset, the partition tag.
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name="toygres_pipelines",
        repository_name="__repository__",
        tags={"dagster/partition": key},
        asset_selection=[["image"]],
    )
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
    assert run.status is DagsterRunStatus.QUEUED  # no daemon here: it waits for the limits in the queue
    assert run.tags[KIND_TAG] == "backup" and run.tags[INSTANCE_TAG] == source.k8s_name


def test_backup_requested_through_the_ui_api(webserver, cms, source):
    client = DagsterGraphQLClient("127.0.0.1", port_number=webserver, timeout=60)
    key = f"{source.k8s_name}__from-the-ui"
    add_partition(client, key)

    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name="toygres_pipelines",
        repository_name="__repository__",
        tags={"dagster/partition": key},
    )
    deadline = time.monotonic() + 120
    while (status := client.get_run_status(run_id).value) not in ("SUCCESS", "FAILURE", "CANCELED"):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(1)
    assert status == "SUCCESS"
    image = cms.find_image(key)
    assert image.state is ImageState.ready and image.run_id == run_id
