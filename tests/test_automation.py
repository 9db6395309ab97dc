"""The nightly schedule, the CMS request sensors, run-status write-back and the reconciler."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import partial

import dagster as dg
import psycopg
import pytest
from dagster._core.test_utils import create_run_for_test

from records import ImageRequest, ImageState, InstanceState, RequestState, RestoreRequest
from resources.platform.local import LocalPlatform
from tests.helpers import (
    add_drill,
    add_image,
    add_instance,
    failure_text,
    image_request,
    insert_restore_request,
    materialize_image,
    restore_request,
    schedule_named,
    sensor_named,
)
from toygres_pipelines.domains import domain_definitions
from toygres_pipelines.images.assets import image
from toygres_pipelines.images.jobs import backup_image
from toygres_pipelines.images.schedules import night_of, nightly_run_requests
from toygres_pipelines.images.sensors import evaluate_image_requests
from toygres_pipelines.requests.reconcile import reconcile
from toygres_pipelines.requests.writeback import settle_run
from toygres_pipelines.restores.jobs import restore_instance
from toygres_pipelines.restores.sensors import evaluate_restore_requests
from toygres_pipelines.settings import Settings
from toygres_pipelines.shared.tags import INSTANCE_TAG, KIND_TAG, REQUEST_ID_TAG

pytestmark = pytest.mark.integration

AUTOMATION = domain_definitions(Settings())
# The local platform's request-time rules (any valid namespace, every PostgreSQL major): enough
# for the request checks these tests exercise; nothing here runs a job on it.
RULES_ONLY = LocalPlatform(state_dir="/nonexistent/toygres-rules-only", azcopy_path="/bin/true")
image_requests_sensor = sensor_named(AUTOMATION, "image_requests_sensor")
restore_requests_sensor = sensor_named(AUTOMATION, "restore_requests_sensor")
request_run_started = sensor_named(AUTOMATION, "request_run_started")
run_succeeded_writeback = sensor_named(AUTOMATION, "run_succeeded_writeback")
run_failed_writeback = sensor_named(AUTOMATION, "run_failed_writeback")
run_canceled_writeback = sensor_named(AUTOMATION, "run_canceled_writeback")
reconcile_stuck_rows = sensor_named(AUTOMATION, "reconcile_stuck_rows")
nightly_backups = schedule_named(AUTOMATION, "nightly_backups")

from resources.platform.base import PROJECT_DIR  # noqa: E402
from toygres_pipelines.images.assets import BackupConfig  # noqa: E402
from toygres_pipelines.images.jobs import backup_config_of, backup_form_run_config  # noqa: E402
from toygres_pipelines.restores.config import RestoreConfig  # noqa: E402
from toygres_pipelines.restores.jobs import restore_config_of, restore_form_run_config  # noqa: E402


@pytest.fixture
def dagster_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture(scope="module")
def repository_def():
    from toygres_pipelines.definitions import defs

    return defs.get_repository_def()


def evaluate_sensor(sensor, instance, resources, repository_def=None):
    """One evaluation as the daemon runs it: the context holds an instance ref; with a repository
    the whole tick is evaluated, so partition keys must resolve against the job and the instance."""
    with dg.build_sensor_context(
        instance_ref=instance.get_ref(), resources=resources, repository_def=repository_def
    ) as context:
        return sensor.evaluate_tick(context) if repository_def is not None else sensor(context)


def run_requests_of(result) -> list[dg.RunRequest]:
    if isinstance(result, dg.SkipReason) or result is None:
        return []
    return list(result.run_requests or [])


# ---- image requests -------------------------------------------------------------------------


def test_image_requests_become_backup_runs_and_invalid_ones_are_rejected(
    resources, cms, blob, source, dagster_instance, repository_def
):
    stopped = add_instance(cms, "stopped-one", state=InstanceState.stopped)
    add_image(cms, source, "taken-name", blob=blob, run_id=None)
    good = image_request(cms, source.k8s_name, "req-a", description="on demand")
    by_id = image_request(cms, str(source.id), "req-b")
    bad = {
        image_request(cms, source.k8s_name, "bad.name").id: "image_name: 'bad.name' must be",
        image_request(cms, "nope", "req-c").id: "source_instance: no instance 'nope'",
        image_request(cms, stopped.k8s_name, "req-d").id: "source_instance: instance 'stopped-one' is stopped",
        image_request(cms, source.k8s_name, "taken-name").id: "image_name: 'taken-name' is already used",
        image_request(cms, source.k8s_name, "req-a").id: "image_name: 'req-a' is already requested",
    }

    assert image_requests_sensor.job_name == "backup_image"
    data = evaluate_sensor(
        image_requests_sensor, dagster_instance, {"cms": cms, "platform": RULES_ONLY}, repository_def
    )
    requests = {r.run_key: r for r in data.run_requests}
    assert set(requests) == {str(good.id), str(by_id.id)}

    first = requests[str(good.id)]
    assert first.partition_key == "req-a"
    assert backup_config_of(first.run_config) == {
        "source_instance": source.k8s_name,
        "description": "on demand",
        "parallel_jobs": 1,
    }
    assert first.tags[REQUEST_ID_TAG] == str(good.id)
    assert first.tags[KIND_TAG] == "backup" and first.tags[INSTANCE_TAG] == source.k8s_name
    assert requests[str(by_id.id)].tags[INSTANCE_TAG] == source.k8s_name
    # the partitions travel in the SensorResult; the daemon adds them before launching the runs
    [added] = data.dynamic_partitions_requests
    assert added.partitions_def_name == "images" and sorted(added.partition_keys) == ["req-a", "req-b"]
    job = dg.Definitions(assets=[image], jobs=[backup_image], resources=resources).resolve_job_def("backup_image")
    dg.validate_run_config(job, first.run_config)

    for request_id, reason in bad.items():
        row = cms.requests.get(ImageRequest, request_id)
        assert row.state is RequestState.rejected, row
        assert reason in row.reason, row.reason
    assert cms.requests.get(ImageRequest, good.id).state is RequestState.accepted
    assert [e.to_state for e in cms.events.of(good.id)] == ["pending", "accepted"]

    again = evaluate_sensor(image_requests_sensor, dagster_instance, {"cms": cms, "platform": RULES_ONLY})
    assert isinstance(again, dg.SkipReason) and "0 image request(s) accepted" in again.skip_message


def test_racing_evaluations_emit_every_request_exactly_once(cms, source, dagster_instance):
    ids = {str(image_request(cms, source.k8s_name, f"race-{n:02d}").id) for n in range(24)}
    emitted: list[list[str]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def evaluate(slot: int) -> None:
        try:
            start.wait(timeout=10)
            for _ in range(20):
                done = evaluate_image_requests(dagster_instance, cms, RULES_ONLY, limit=3)
                emitted[slot].extend(r.run_key for r in done.run_requests)
                if not done.accepted and not cms.requests.list(ImageRequest, [RequestState.pending]):
                    return
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=evaluate, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    everything = emitted[0] + emitted[1]
    assert len(everything) == len(set(everything)), "a request was emitted twice"
    assert set(everything) == ids, "a request was lost"
    assert emitted[0] and emitted[1], "the two evaluations did not overlap"
    assert {r.state for r in cms.requests.list(ImageRequest)} == {RequestState.accepted}


def test_accepted_request_without_a_run_is_emitted_again_and_a_launched_one_is_recorded(cms, source, dagster_instance):
    lost = image_request(cms, source.k8s_name, "lost-launch")
    launched = image_request(cms, source.k8s_name, "launched")
    first = evaluate_image_requests(dagster_instance, cms, RULES_ONLY)
    assert sorted(first.accepted) == sorted([str(lost.id), str(launched.id)])

    # Fresh acceptances are not emitted again (a racing evaluation must not double them).
    assert evaluate_image_requests(dagster_instance, cms, RULES_ONLY).run_requests == []

    # `launched` got its run (submitted, as the daemon would have), `lost` never did (crash before
    # launch; a run created and never submitted counts as none: test_request_listener.py)
    run = create_run_for_test(
        dagster_instance,
        job_name="backup_image",
        status=dg.DagsterRunStatus.STARTED,
        tags={REQUEST_ID_TAG: str(launched.id)},
    )
    later = evaluate_image_requests(dagster_instance, cms, RULES_ONLY, relaunch_after=0)
    assert later.attached == {str(launched.id): run.run_id}
    assert [r.run_key for r in later.run_requests] == [str(lost.id)]
    assert later.run_requests[0].partition_key == "lost-launch"
    assert cms.requests.get(ImageRequest, launched.id).run_id == run.run_id
    assert cms.requests.get(ImageRequest, lost.id).state is RequestState.accepted


# ---- restore requests -----------------------------------------------------------------------


@pytest.fixture
def ready_image(resources, cms, source):
    assert materialize_image(resources, f"{source.k8s_name}__auto").success
    return cms.images.find(f"{source.k8s_name}__auto")


def test_restore_requests_become_restore_runs_and_invalid_ones_are_rejected(
    cms, platform, source, ready_image, dagster_instance
):
    good = restore_request(cms, source_image_id=ready_image.name, name="copy", dns_label="copy-db", internal=True)
    bad = {
        restore_request(
            cms, source_image_id=ready_image.name, name="Bad_Name", dns_label="req-1"
        ).id: "name: 'Bad_Name' must be a DNS-1123 label",
        restore_request(
            cms, source_image_id="no-such-image", dns_label="req-2"
        ).id: "source_image_id: no image with name 'no-such-image'",
        restore_request(cms, source_image_id=None, dns_label="req-3").id: "source_image_id: required",
        restore_request(
            cms, source_image_id=ready_image.name, dns_label="req-4", runtime_image_id="rt"
        ).id: "runtime_image_id: cannot be combined",
        restore_request(
            cms, source_image_id=ready_image.name, dns_label=source.k8s_name
        ).id: f"dns_label: '{source.k8s_name}' is already used",
        restore_request(
            cms, source_image_id=ready_image.name, dns_label="copy-db"
        ).id: "dns_label: 'copy-db' is already requested",
        restore_request(
            cms, source_image_id=ready_image.name, dns_label="req-5", storage_size_gb=0
        ).id: "storage_size_gb: 0 must be between",
    }

    result = evaluate_sensor(restore_requests_sensor, dagster_instance, {"cms": cms, "platform": platform})
    assert restore_requests_sensor.job_name == "restore_instance"
    [run_request] = run_requests_of(result)
    assert run_request.run_key == str(good.id)
    assert run_request.tags == {REQUEST_ID_TAG: str(good.id), KIND_TAG: "restore"}
    assert restore_config_of(run_request.run_config) == {
        "name": "copy",
        "dns_label": "copy-db",
        "source_image_id": str(ready_image.id),
        "namespace": "default",
        "storage_size_gb": 1,
        "internal": True,
    }
    dg.validate_run_config(restore_instance, run_request.run_config)
    for request_id, reason in bad.items():
        row = cms.requests.get(RestoreRequest, request_id)
        assert row.state is RequestState.rejected and reason in row.reason, row.reason
    assert cms.requests.get(RestoreRequest, good.id).state is RequestState.accepted
    assert (
        run_requests_of(evaluate_sensor(restore_requests_sensor, dagster_instance, {"cms": cms, "platform": platform}))
        == []
    )


def test_on_kubernetes_the_sensor_rejects_what_the_deployment_cannot_run(cms, ready_image, dagster_instance):
    from resources.platform.kubernetes import KubernetesPlatform

    k8s = KubernetesPlatform(
        namespace="toygres-instances",
        instance_namespaces=["team-a"],
        job_images={ready_image.postgres_version: f"acr.io/toygres-job@sha256:{'ab' * 32}"},
        load_balancer_source_ranges=["203.0.113.0/24"],
    )
    good = restore_request(cms, source_image_id=ready_image.name, dns_label="req-ok", namespace="team-a")
    bad = restore_request(cms, source_image_id=ready_image.name, dns_label="req-ns", namespace="default")
    result = evaluate_sensor(restore_requests_sensor, dagster_instance, {"cms": cms, "platform": k8s})
    assert [r.run_key for r in run_requests_of(result)] == [str(good.id)]
    row = cms.requests.get(RestoreRequest, bad.id)
    assert row.state is RequestState.rejected and "namespace: 'default' is not enabled" in row.reason, row.reason

    # A public instance on a deployment without source ranges: refused before any run.
    open_to_all = KubernetesPlatform(
        namespace="toygres-instances",
        instance_namespaces=["team-a"],
        job_images={ready_image.postgres_version: f"acr.io/toygres-job@sha256:{'ab' * 32}"},
    )
    public = restore_request(cms, source_image_id=ready_image.name, dns_label="req-pub", namespace="team-a")
    result = evaluate_sensor(restore_requests_sensor, dagster_instance, {"cms": cms, "platform": open_to_all})
    assert str(public.id) not in [r.run_key for r in run_requests_of(result)]
    row = cms.requests.get(RestoreRequest, public.id)
    assert row.state is RequestState.rejected and row.reason.startswith("internal: a public instance needs"), row.reason


# ---- the nightly schedule -------------------------------------------------------------------


def test_nightly_schedule_backs_up_every_running_instance_once(cms, dagster_instance, repository_def):
    running = [add_instance(cms, name) for name in ("alpha", "bravo", "charlie")]
    add_instance(cms, "delta", state=InstanceState.stopped)
    assert nightly_backups.cron_schedule == "0 2 * * *" and nightly_backups.execution_timezone == "UTC"
    assert nightly_backups.job_name == "backup_image"
    assert nightly_backups.default_status is dg.DefaultScheduleStatus.RUNNING

    tick = datetime(2026, 3, 14, 2, 0, tzinfo=UTC)

    def evaluate():
        with dg.build_schedule_context(
            instance_ref=dagster_instance.get_ref(),
            scheduled_execution_time=tick,
            resources={"cms": cms, "platform": RULES_ONLY},
            repository_def=repository_def,
        ) as context:
            return nightly_backups.evaluate_tick(context).run_requests

    requests = evaluate()
    expected = {f"{i.k8s_name}__nightly-20260314": i for i in running}
    assert sorted(r.run_key for r in requests) == sorted(expected)
    for request in requests:
        source = expected[request.run_key]
        assert request.partition_key == request.run_key
        assert request.tags[INSTANCE_TAG] == source.k8s_name and request.tags[KIND_TAG] == "backup"
        assert backup_config_of(request.run_config)["source_instance"] == str(source.id)
    assert sorted(dagster_instance.get_dynamic_partitions("images")) == sorted(expected)

    again = evaluate()
    assert sorted(r.run_key for r in again) == sorted(expected)
    assert sorted(dagster_instance.get_dynamic_partitions("images")) == sorted(expected)


def test_nightly_schedule_leaves_out_a_running_drills_scratch_instance(cms, blob, dagster_instance, repository_def):
    source = add_instance(cms, "echo")
    image = add_image(cms, source, "echo__drilled", blob=blob, state=ImageState.ready)
    scratch = add_instance(cms, "drill-echo-x1y2z", run_id="drill-run-1")
    add_drill(cms, image, "drill-run-1")
    with dg.build_schedule_context(
        instance_ref=dagster_instance.get_ref(),
        scheduled_execution_time=datetime(2026, 3, 15, 2, 0, tzinfo=UTC),
        resources={"cms": cms, "platform": RULES_ONLY},
        repository_def=repository_def,
    ) as context:
        requests = nightly_backups.evaluate_tick(context).run_requests
    assert [r.run_key for r in requests] == ["echo__nightly-20260315"], scratch.k8s_name


def test_nightly_key_uses_the_date_in_the_schedule_timezone(cms, dagster_instance):
    add_instance(cms, "echo")
    late_evening_utc = datetime(2026, 3, 14, 1, 30, tzinfo=UTC)
    assert night_of(late_evening_utc, "America/New_York") == "20260313"
    [request] = nightly_run_requests(dagster_instance, cms, RULES_ONLY, late_evening_utc, "America/New_York")
    assert request.partition_key == "echo__nightly-20260313"
    assert (
        nightly_run_requests(dg.DagsterInstance.ephemeral(), cms, RULES_ONLY, late_evening_utc, "UTC")[0].run_key
        == "echo__nightly-20260314"
    )


def test_schedule_without_running_instances_skips(cms, dagster_instance):
    with dg.build_schedule_context(
        instance=dagster_instance, resources={"cms": cms, "platform": RULES_ONLY}
    ) as context:
        result = nightly_backups(context)
    assert isinstance(result, dg.SkipReason)


# ---- write-back -----------------------------------------------------------------------------


def status_event(instance, run_id: str, event_type: dg.DagsterEventType):
    records = instance.get_records_for_run(run_id, of_type=event_type).records
    assert records, f"no {event_type} event for run {run_id}"
    return records[-1].event_log_entry.dagster_event


def evaluate_status_sensor(sensor, instance, run_id, event_type, resources):
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=status_event(instance, run_id, event_type),
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(run_id),
        resources=resources,
    )
    return sensor(context)


def test_failed_backup_run_fails_its_request_and_image(resources, cms, blob, dagster_instance):
    ghost = add_instance(cms, "ghost")  # running in the CMS, unknown to the platform: fails after the image row exists
    request = image_request(cms, ghost.k8s_name, "will-fail")
    evaluation = evaluate_image_requests(dagster_instance, cms, RULES_ONLY)
    [run_request] = evaluation.run_requests
    dagster_instance.add_dynamic_partitions("images", evaluation.new_partitions)  # as the daemon does
    result = dg.materialize(
        [image],
        partition_key="will-fail",
        resources=resources,
        instance=dagster_instance,
        run_config=run_request.run_config,
        tags=run_request.tags,
        raise_on_error=False,
    )
    assert not result.success
    evaluate_status_sensor(
        request_run_started, dagster_instance, result.run_id, dg.DagsterEventType.RUN_START, resources
    )
    assert cms.requests.get(ImageRequest, request.id).run_id == result.run_id

    evaluate_status_sensor(
        run_failed_writeback, dagster_instance, result.run_id, dg.DagsterEventType.RUN_FAILURE, resources
    )
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.failed and row.run_id == result.run_id
    image_row = cms.images.find("will-fail")
    assert image_row.state is ImageState.failed and image_row.run_id == result.run_id
    assert row.reason.startswith("step image failed: ") and image_row.error_message in row.reason, row.reason


def test_failure_write_back_fails_an_image_the_run_left_creating(resources, cms, blob, source, dagster_instance):
    """The run worker died inside the backup: nothing in the run marked the image failed."""
    request = image_request(cms, source.k8s_name, "orphan")
    evaluate_image_requests(dagster_instance, cms, RULES_ONLY)
    run = create_run_for_test(
        dagster_instance,
        job_name="backup_image",
        status=dg.DagsterRunStatus.STARTED,
        tags={REQUEST_ID_TAG: str(request.id)},
    )
    left = add_image(cms, source, "orphan", blob=blob, run_id=run.run_id)
    blob.write_bytes(f"{left.blob_path}/globals.sql", b"partial")
    dagster_instance.report_run_failed(run, "the run worker vanished")

    evaluate_status_sensor(
        run_failed_writeback, dagster_instance, run.run_id, dg.DagsterEventType.RUN_FAILURE, resources
    )
    image_row = cms.images.get(left.id)
    assert image_row.state is ImageState.failed and "the run worker vanished" in image_row.error_message
    assert blob.list_names(left.blob_path) == []
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.failed and "the run worker vanished" in row.reason

    # A second report of the same end changes nothing and does not raise.
    evaluate_status_sensor(
        run_failed_writeback, dagster_instance, run.run_id, dg.DagsterEventType.RUN_FAILURE, resources
    )
    assert cms.requests.get(ImageRequest, request.id) == row


def test_successful_restore_run_succeeds_its_request_with_the_instance(
    resources, cms, platform, source, ready_image, dagster_instance
):
    request = restore_request(cms, source_image_id=ready_image.name, name="from-request", dns_label="from-request")
    [run_request] = run_requests_of(
        evaluate_sensor(restore_requests_sensor, dagster_instance, {"cms": cms, "platform": platform})
    )
    run_config = restore_form_run_config(
        RestoreConfig(**restore_config_of(run_request.run_config), ready_timeout_seconds=60)
    )
    result = restore_instance.execute_in_process(
        run_config=run_config,
        resources=resources,
        instance=dagster_instance,
        tags=run_request.tags,
        raise_on_error=False,
    )
    assert result.success, failure_text(result)

    evaluate_status_sensor(
        run_succeeded_writeback, dagster_instance, result.run_id, dg.DagsterEventType.RUN_SUCCESS, resources
    )
    row = cms.requests.get(RestoreRequest, request.id)
    restored = result.output_for_node("mark_instance_running")
    assert row.state is RequestState.succeeded and row.run_id == result.run_id and row.reason is None
    assert row.instance_id == restored.id
    assert cms.instances.get(restored.id).state is InstanceState.running


def test_canceled_restore_run_fails_request_and_instance(
    resources, cms, platform, source, ready_image, dagster_instance
):
    request = restore_request(cms, source_image_id=ready_image.name, name="cut-short", dns_label="cut-short")
    evaluate_restore_requests(dagster_instance, cms, platform)
    run = create_run_for_test(
        dagster_instance,
        job_name="restore_instance",
        status=dg.DagsterRunStatus.STARTED,
        tags={REQUEST_ID_TAG: str(request.id)},
    )
    left = add_instance(
        cms,
        "cut-short-abcde",
        state=InstanceState.creating,
        dns_name="cut-short",
        source_image_id=ready_image.id,
        run_id=run.run_id,
    )
    dagster_instance.report_run_canceled(run)
    evaluate_status_sensor(
        run_canceled_writeback, dagster_instance, run.run_id, dg.DagsterEventType.RUN_CANCELED, resources
    )
    assert cms.instances.get(left.id).state is InstanceState.failed
    assert "terminated" in cms.instances.get(left.id).error_message
    assert not cms.instances.dns_name_in_use("cut-short")
    row = cms.requests.get(RestoreRequest, request.id)
    assert row.state is RequestState.failed and row.instance_id == left.id and "canceled" in row.reason


# ---- the reconciler -------------------------------------------------------------------------


def test_reconciler_settles_rows_of_runs_that_ended_without_reporting(resources, cms, blob, source, dagster_instance):
    def run_with(status, **tags):
        return create_run_for_test(dagster_instance, job_name="backup_image", status=status, tags=tags)

    failed_run = run_with(dg.DagsterRunStatus.STARTED)
    failed_image = add_image(cms, source, "died-failed", blob=blob, run_id=failed_run.run_id)
    dagster_instance.report_run_failed(failed_run)

    canceled_run = run_with(dg.DagsterRunStatus.STARTED)
    canceled_image = add_image(cms, source, "died-canceled", blob=blob, run_id=canceled_run.run_id)
    dagster_instance.report_run_canceled(canceled_run)

    missing_image = add_image(cms, source, "died-missing", blob=blob, run_id="0f0f0f0f-dead-beef-0000-000000000000")

    live = {}
    for status in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED):
        run = run_with(status)
        live[status] = add_image(cms, source, f"alive-{status.value.lower()}", blob=blob, run_id=run.run_id)

    request = image_request(cms, source.k8s_name, "req-died")
    evaluate_image_requests(dagster_instance, cms, RULES_ONLY)
    request_run = run_with(dg.DagsterRunStatus.STARTED, **{REQUEST_ID_TAG: str(request.id)})
    dagster_instance.report_run_failed(request_run)

    # Within the grace period the run-status sensors are left to do it.
    assert reconcile(dagster_instance, cms, blob, resources["platform"], grace_seconds=3600).settled == []

    result = evaluate_sensor(reconcile_stuck_rows, dagster_instance, resources)
    assert isinstance(result, dg.SkipReason)  # default grace applies to the sensor: nothing yet
    done = reconcile(dagster_instance, cms, blob, resources["platform"], grace_seconds=0)
    assert "4 run(s) settled" in done.summary()

    for row, run_id, status in (
        (failed_image, failed_run.run_id, "FAILURE"),
        (canceled_image, canceled_run.run_id, "CANCELED"),
        (missing_image, missing_image.run_id, "missing"),
    ):
        current = cms.images.get(row.id)
        assert current.state is ImageState.failed, current
        assert current.error_message.startswith(f"run {run_id} ended without reporting ({status}")
    for row in live.values():
        assert cms.images.get(row.id).state is ImageState.creating
    settled = cms.requests.get(ImageRequest, request.id)
    assert settled.state is RequestState.failed and settled.run_id == request_run.run_id
    assert settled.reason == (
        f"run {request_run.run_id} ended without reporting (FAILURE): "
        "This run has been marked as failed from outside the execution context."
    )

    # Idempotent: nothing left to do but the live runs.
    again = reconcile(dagster_instance, cms, blob, resources["platform"], grace_seconds=0)
    assert not any(s.changed for s in again.settled) and len(again.waiting) == 3


# ---- a real run, terminated mid-backup ------------------------------------------------------


@pytest.fixture
def code_location_env(monkeypatch, stack, cms, blob):
    from resources.platform.local_tools import azcopy_path

    env = {
        "TOYGRES_CMS_DSN": cms.dsn,
        "TOYGRES_ENCRYPTION_KEY": cms.encryption_key,
        "TOYGRES_BLOB_CONNECTION_STRING": stack.azurite.connection_string,
        "TOYGRES_BLOB_CONTAINER": blob.container,
        "TOYGRES_PLATFORM": "local",
        "TOYGRES_STATE_DIR": str(stack.root / "platform"),
        "TOYGRES_AZCOPY": str(azcopy_path()),
    }
    monkeypatch.delenv("TOYGRES_BLOB_ACCOUNT_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def test_run_terminated_mid_backup_leaves_its_image_failed(
    code_location_env, resources, cms, blob, source, source_dsn, dagster_instance, repository_def
):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    from tests.test_backup import blocked_database, wait_for_pg_dump_blocked

    key = f"{source.k8s_name}__terminated"
    dagster_instance.add_dynamic_partitions("images", [key])
    holder = blocked_database(source_dsn, "aaa_terminated")
    target = ModuleTarget(
        module_name="toygres_pipelines.definitions",
        attribute=None,
        working_directory=str(PROJECT_DIR),
        location_name="toygres_pipelines",
    )
    try:
        with WorkspaceProcessContext(dagster_instance, target) as process_context:
            workspace = process_context.create_request_context()
            location = workspace.get_code_location("toygres_pipelines")
            remote_job = location.get_repository("__repository__").get_full_job("backup_image")
            run = dagster_instance.create_run_for_job(
                job_def=repository_def.get_job("backup_image"),
                run_config=backup_form_run_config(BackupConfig(source_instance=source.k8s_name)).to_config_dict(),
                tags={**backup_image.tags, "dagster/partition": key, INSTANCE_TAG: source.k8s_name},
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
                asset_selection=frozenset({image.key}),
            )
            dagster_instance.launch_run(run.run_id, workspace)
            wait_for_pg_dump_blocked(source_dsn("postgres"), "aaa_terminated", timeout=90)
            reserved = cms.images.find_by_run(run.run_id)
            assert reserved.state is ImageState.creating and blob.list_names(reserved.blob_path)

            assert dagster_instance.run_launcher.terminate(run.run_id)
            ended = wait_for(
                lambda: (r := dagster_instance.get_run_by_id(run.run_id)).is_finished and r, 60, "the run to end"
            )
    finally:
        holder.close()
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:  # the source is shared
            admin.execute('DROP DATABASE IF EXISTS "aaa_terminated" WITH (FORCE)')
    assert ended.status is dg.DagsterRunStatus.CANCELED
    row = cms.images.get(reserved.id)
    assert row.state is ImageState.failed, row
    assert "terminated" in row.error_message
    assert blob.list_names(row.blob_path) == []


def test_success_that_left_an_image_creating_still_fails_it(resources, cms, blob, source, dagster_instance):
    request = image_request(cms, source.k8s_name, "odd-success")
    evaluate_image_requests(dagster_instance, cms, RULES_ONLY)
    run = create_run_for_test(
        dagster_instance,
        job_name="backup_image",
        status=dg.DagsterRunStatus.SUCCESS,
        tags={REQUEST_ID_TAG: str(request.id)},
    )
    left = add_image(cms, source, "odd-success", blob=blob, run_id=run.run_id)
    settled = settle_run(
        cms=cms,
        blob=blob,
        platform=resources["platform"],
        run_id=run.run_id,
        tags=run.tags,
        succeeded=True,
        reason=None,
        log=lambda _: None,
    )
    assert settled.images_failed == [str(left.id)] and settled.request_state == "failed"
    expected = f"run {run.run_id} succeeded without marking the image ready"
    assert cms.images.get(left.id).error_message == expected
    assert cms.requests.get(ImageRequest, request.id).reason == expected


def test_reconciler_records_the_dead_runs_own_failure_message(resources, cms, blob, source, dagster_instance):
    run = create_run_for_test(dagster_instance, job_name="backup_image", status=dg.DagsterRunStatus.STARTED)
    row = add_image(cms, source, "died-oom", blob=blob, run_id=run.run_id)
    dagster_instance.report_run_failed(run, message="Run worker process died: exit code -9 (killed by the OOM killer)")

    reconcile(dagster_instance, cms, blob, resources["platform"], grace_seconds=0)

    assert cms.images.get(row.id).error_message == (
        f"run {run.run_id} ended without reporting (FAILURE): "
        "Run worker process died: exit code -9 (killed by the OOM killer)"
    )


@pytest.mark.parametrize("kind", ["image", "restore"])
def test_racing_claims_never_accept_two_requests_for_the_same_name(
    request, cms, source, dagster_instance, monkeypatch, kind
):
    from toygres_pipelines.images import sensors as image_sensors
    from toygres_pipelines.restores import sensors as restore_sensors

    if kind == "image":

        def create():
            return image_request(cms, source.k8s_name, "same-name")

        sensors, check_name, listing = image_sensors, "check_image_request", partial(cms.requests.list, ImageRequest)
        evaluate_kind = lambda instance, cms_, limit: evaluate_image_requests(instance, cms_, RULES_ONLY, limit=limit)  # noqa: E731
        reason = "'same-name' is already requested by another accepted request"
    else:
        image_name = request.getfixturevalue("ready_image").name
        create = lambda: restore_request(cms, source_image_id=image_name, dns_label="same-label")  # noqa: E731
        platform = request.getfixturevalue("platform")
        sensors, check_name, listing = (
            restore_sensors,
            "check_restore_request",
            partial(cms.requests.list, RestoreRequest),
        )
        evaluate_kind = lambda instance, cms_, limit: evaluate_restore_requests(instance, cms_, platform, limit=limit)  # noqa: E731
        reason = "'same-label' is already requested by another accepted request"
    first, second = create(), create()
    # Each evaluation claims one request; both then check the name at the same moment when the
    # claims can overlap (when they cannot, the barrier times out and the evaluations run in turn).
    both_checking = threading.Barrier(2)
    check = getattr(sensors, check_name)

    def check_together(*args):
        checked = check(*args)
        try:
            both_checking.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass
        return checked

    monkeypatch.setattr(sensors, check_name, check_together)
    errors = []

    def evaluate() -> None:
        try:
            evaluate_kind(dagster_instance, cms, limit=1)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=evaluate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    states = {r.id: r.state for r in listing()}
    assert sorted(states.values()) == [RequestState.accepted, RequestState.rejected], states
    rejected = next(r for r in listing() if r.state is RequestState.rejected)
    assert rejected.id in (first.id, second.id)
    assert reason in rejected.reason


# ---- a malformed request row never stops the others (issue 19) ----------------------------------


def without_the_databases_check(cms) -> None:
    """A CMS whose restore_requests table lacks migration 011's CHECK (a row written before it, or
    by a client bypassing it): the readers themselves must cope."""
    import psycopg

    with psycopg.connect(cms.dsn) as conn:
        conn.execute("ALTER TABLE toygres_cms.restore_requests DROP CONSTRAINT restore_requests_databases_check")


def test_a_malformed_request_row_is_rejected_with_its_reason_and_the_others_go_on(
    cms, blob, platform, source, dagster_instance
):
    import psycopg

    from tests.test_lifecycle import stored_image

    image = stored_image(cms, blob, source, f"{source.k8s_name}__ok", days_old=1)
    without_the_databases_check(cms)
    with psycopg.connect(cms.dsn) as conn:
        for n, value in enumerate(("ARRAY[NULL]::text[]", "ARRAY[ARRAY['a','b'],ARRAY['c','d']]")):
            insert_restore_request(
                conn,
                id=uuid.UUID(int=n + 1),
                name="bad",
                dns_label=f"bad-{n}",
                source_image_id=image.name,
                created_at=datetime.now(UTC) - timedelta(hours=1),
                databases_sql=value,
            )
    good = restore_request(cms, source_image_id=image.name, dns_label="good-db")
    done = evaluate_restore_requests(dagster_instance, cms, platform)
    assert done.accepted == [str(good.id)]
    for n in (1, 2):
        row = cms.requests.get(RestoreRequest, uuid.UUID(int=n))
        assert row.state is RequestState.rejected
        assert row.reason.startswith("malformed row: databases")
    assert cms.requests.get(RestoreRequest, good.id).state is RequestState.accepted
