"""The UI path, for real: the chart topology's webserver (toygres_pipelines/dev/topology.py: the code
location over gRPC, PostgreSQL storage), driven through the same GraphQL calls the UI makes to add
a partition and materialize it (no Python written by the user).
"""

from __future__ import annotations

import time

import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from records import ImageState
from resources.platform.postgres_server import free_port
from tests.test_daemon_e2e import dagster_instance, topology  # noqa: F401 - topology is a fixture
from toygres_pipelines.shared.tags import INSTANCE_TAG, KIND_TAG

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


@pytest.fixture
def webserver(topology):  # noqa: F811 - the fixture imported above
    """The chart's webserver over the gRPC code server; no daemon here, so it launches runs itself
    (DefaultRunCoordinator; the daemon path has its own test)."""
    config = yaml.safe_load((topology.home / "dagster.yaml").read_text())
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (topology.home / "dagster.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    topology.start_webserver("127.0.0.1", port)
    return port


@pytest.fixture
def queueing_webserver(topology):  # noqa: F811 - the fixture imported above
    """The webserver with the instance config `make dev` ships (runs are queued; no daemon here)."""
    port = free_port()
    topology.start_webserver("127.0.0.1", port)
    return port, topology


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
    port, dagster = queueing_webserver
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
    with dagster_instance(dagster, monkeypatch) as instance:
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
    image = cms.images.find(key)
    assert image.state is ImageState.ready and image.run_id == run_id
