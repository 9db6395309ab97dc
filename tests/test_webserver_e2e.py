"""The UI path, for real: a dagster-webserver serving workspace.yaml, driven through the same
GraphQL calls the UI makes to add a partition and materialize it (no Python written by the user).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster_graphql import DagsterGraphQLClient

from records import ImageState
from resources.platform.base import PROJECT_DIR
from resources.platform.local_tools import azcopy_path
from resources.platform.postgres_server import free_port
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


@pytest.fixture
def webserver(cms, blob, platform, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    # No daemon here: the webserver launches runs itself (the daemon path has its own test).
    (dagster_home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            str(PROJECT_DIR / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=PROJECT_DIR,
        env=code_location_env(cms, blob, platform, dagster_home),
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


def test_backup_requested_through_the_ui_api(webserver, cms, source):
    client = DagsterGraphQLClient("127.0.0.1", port_number=webserver, timeout=60)
    key = f"{source.k8s_name}__from-the-ui"
    added = client._execute(
        ADD_PARTITION,
        {
            "repositorySelector": {"repositoryLocationName": "toygres_pipelines", "repositoryName": "__repository__"},
            "partitionsDefName": "images",
            "partitionKey": key,
        },
    )["addDynamicPartition"]
    assert added == {"__typename": "AddDynamicPartitionSuccess", "partitionKey": key}

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
