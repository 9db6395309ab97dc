"""The UI path, for real: the chart topology's webserver (toygres_pipelines/dev/topology.py: the code
location over gRPC, PostgreSQL storage), driven through the same GraphQL calls the UI makes to add
a partition and materialize it (no Python written by the user).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from records import ImageState
from resources.platform.postgres_server import free_port
from tests.helpers import materialize_image
from tests.test_daemon_e2e import dagster_instance, topology  # noqa: F401 - topology is a fixture
from toygres_pipelines.cli import DSN_ENV
from toygres_pipelines.cli.settings import DAGSTER_URL_ENV
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


def toygres_cli(cms, port: int, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, as an operator runs it: the CMS and the webserver from the
    environment, nothing else of the test's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOYGRES_", "DAGSTER_"))}
    env |= {DSN_ENV: cms.dsn, DAGSTER_URL_ENV: f"http://127.0.0.1:{port}"}
    script = Path(sys.executable).parent / "toygres-pipelines"
    # the timeout is the deadline; the command polls the run itself
    return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=600)


def printed_run(answer: subprocess.CompletedProcess, job: str, image) -> tuple[str, list[str], str]:
    """(run id, the event lines, the final line) of a `--wait` launch's output."""
    first, *events, last = answer.stdout.splitlines()
    assert first.startswith(f"{job} run ") and first.endswith(f" launched: image {image.name} ({image.id})")
    return first.split()[2], events, last


RUN_ENDS = {DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_CANCELED}


def logged_messages(topology, monkeypatch, run_id: str) -> list[str]:  # noqa: F811 - a parameter
    """The run's event messages in its event log, up to its end (the launcher's "Process for run
    exited" may come after the run ended, and after --wait stopped)."""
    lines: list[str] = []
    with dagster_instance(topology, monkeypatch) as instance:
        for entry in instance.all_logs(run_id):
            lines += entry.message.splitlines() if entry.message else []
            if entry.dagster_event_type in RUN_ENDS:
                return lines
    raise AssertionError(f"run {run_id} has no end event")


# A backup, a drill and two reverify runs through a live webserver: 211 s on the loaded 2-core
# machine, too close to the default 300 s.
@pytest.mark.timeout(900)
def test_drill_and_reverify_wait_for_their_runs_through_a_live_webserver(
    webserver,
    topology,  # noqa: F811 - the fixture imported above
    resources,
    cms,
    blob,
    source,
    monkeypatch,
):
    """`toygres-pipelines drill IMAGE --wait` and `reverify IMAGE --wait` against the chart's
    webserver: the run's events printed in the order of its event log, the last line its result,
    the exit code 0 or 1."""
    key = f"{source.k8s_name}__for-the-cli"
    assert materialize_image(resources, key).success
    image = cms.images.find(key)

    drill = toygres_cli(cms, webserver, "drill", image.name, "--wait", "--poll-seconds", "0.5")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    run_id, events, last = printed_run(drill, "restore_drill", image)
    assert last == f"run {run_id} succeeded"
    assert events == logged_messages(topology, monkeypatch, run_id)
    assert any("Started execution of run" in line for line in events[:3])
    assert any("Finished execution of run" in line for line in events)

    manifest, _ = blob.read_manifest(image.blob_path)
    dump = f"{image.blob_path}/{next(f for f in manifest.files if f.database == 'pagila').path}"
    original = blob.read_bytes(dump)
    damaged = bytearray(original)
    damaged[len(damaged) // 3] ^= 0x80
    blob.write_bytes(dump, bytes(damaged), overwrite=True)
    cms.images.transition(image.id, ImageState.corrupt, reason="a test damaged its dump", error_message="damaged")

    still_bad = toygres_cli(cms, webserver, "reverify", image.name, "--wait", "--poll-seconds", "0.5")
    assert still_bad.returncode == 1, still_bad.stdout + still_bad.stderr
    run_id, events, last = printed_run(still_bad, "reverify_image", image)
    assert last == f"run {run_id} failed"
    assert events == logged_messages(topology, monkeypatch, run_id)
    assert any(f"image {image.name} still fails verification" in line for line in events)
    assert cms.images.get(image.id).state is ImageState.corrupt

    blob.write_bytes(dump, original, overwrite=True)
    repaired = toygres_cli(cms, webserver, "reverify", str(image.id), "--wait", "--poll-seconds", "0.5")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    run_id, events, last = printed_run(repaired, "reverify_image", image)
    assert last == f"run {run_id} succeeded"
    assert events == logged_messages(topology, monkeypatch, run_id)
    assert f"image {image.name} verified again: ready" in events
    assert cms.images.get(image.id).state is ImageState.ready
