"""The request listener through Dagster as the chart deploys it (toygres_pipelines/dev/topology.py):
its launches go through the real webserver's GraphQL API and TaggingRunCoordinator. No daemon
runs here, so no sensor ticks: whatever run exists was launched by the listener (or, in the race,
by the sweep's run requests submitted the way the daemon submits them: through the coordinator)."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest

from records import ImageRequest, RequestState
from resources.platform.postgres_server import free_port
from tests.helpers import image_request
from tests.test_daemon_e2e import dagster_instance, topology  # noqa: F401 - the fixture
from toygres_pipelines.images.sensors import evaluate_image_requests
from toygres_pipelines.requests.listener import RequestListener
from toygres_pipelines.shared.tags import REQUEST_ID_TAG
from toygres_pipelines.shared.webserver import LaunchRefused, Webserver

pytestmark = pytest.mark.integration

WAIT_SECONDS = 120


def request_runs(instance: dg.DagsterInstance, request_id: object) -> list[dg.DagsterRun]:
    return list(instance.get_runs(dg.RunsFilter(tags={REQUEST_ID_TAG: str(request_id)})))


def test_a_notified_request_is_launched_without_any_sensor_tick(cms, source, topology, monkeypatch):  # noqa: F811
    url = f"http://127.0.0.1:{free_port()}"
    topology.start_webserver("127.0.0.1", int(url.rsplit(":", 1)[1]))
    topology.start_listener(url)
    name = f"{source.k8s_name}__listened"
    with dagster_instance(topology, monkeypatch) as instance:
        request = image_request(cms, source.k8s_name, name)
        deadline = time.monotonic() + WAIT_SECONDS
        while not (cms.requests.get(ImageRequest, request.id).run_id and (runs := request_runs(instance, request.id))):
            topology.check_running()
            assert time.monotonic() < deadline, topology.log_tail("request-listener")
            time.sleep(0.2)
        [run] = runs
        assert run.job_name == "backup_image" and run.tags["dagster/partition"] == name
        assert run.tags["toygres/kind"] == "backup" and run.tags["toygres/instance"] == source.k8s_name
        assert "dagster/sensor_name" not in run.tags  # no sensor launched it: no daemon runs
        assert run.status is dg.DagsterRunStatus.QUEUED  # queued by the coordinator (no daemon to dequeue)
        assert instance.has_dynamic_partition("images", name)
        # the evaluation's question through the webserver's GraphQL API: submitted runs only
        orphan_of = "5b0e0a0e-0000-4000-8000-00000000dead"
        instance.add_run(dg.DagsterRun(job_name="backup_image", tags={REQUEST_ID_TAG: orphan_of}))
        assert Webserver(url).run_for_request(str(request.id)) == run.run_id
        assert Webserver(url).run_for_request(orphan_of) is None
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.accepted and row.run_id == run.run_id


def test_the_listener_and_the_sweep_racing_over_the_same_rows_launch_each_request_once(
    cms,
    source,
    platform,
    topology,  # noqa: F811
    monkeypatch,
):
    port = free_port()
    topology.start_webserver("127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    ids = {str(image_request(cms, source.k8s_name, f"{source.k8s_name}__race-{n}").id) for n in range(6)}
    listening = RequestListener(cms=cms, platform=platform, webserver=Webserver(url))
    webserver = Webserver(url)  # the sweep's own client (a transport serves one thread)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def listen() -> None:
        try:
            start.wait(timeout=10)
            for _ in range(4):
                listening.evaluate({"image"})
        except BaseException as error:  # noqa: BLE001 - read by the main thread
            errors.append(error)

    def sweep(instance: dg.DagsterInstance) -> None:
        """The request sensor's evaluation re-emitting at once (relaunch_after=0) whatever is
        accepted without a run, its run requests submitted through the coordinator as the daemon's."""
        try:
            start.wait(timeout=10)
            for _ in range(4):
                done = evaluate_image_requests(instance, cms, platform, limit=2, relaunch_after=0)
                for key in done.new_partitions:
                    webserver.add_image_partition("backup_image", key)
                for run_request in done.run_requests:
                    tags = {**run_request.tags, "dagster/partition": run_request.partition_key or ""}
                    try:
                        webserver.launch("backup_image", run_request.run_config, tags)
                    except LaunchRefused as refused:
                        assert refused.already_launched, refused
        except BaseException as error:  # noqa: BLE001 - read by the main thread
            errors.append(error)

    with dagster_instance(topology, monkeypatch) as instance:
        threads = [threading.Thread(target=listen), threading.Thread(target=sweep, args=(instance,))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_SECONDS * 2)
        assert not errors, errors
        runs = {request_id: request_runs(instance, request_id) for request_id in ids}
    assert {request_id: len(found) for request_id, found in runs.items()} == dict.fromkeys(ids, 1)
    assert {r.state for r in cms.requests.list(ImageRequest)} == {RequestState.accepted}
