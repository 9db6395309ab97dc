"""Lifecycle against the real CMS and Azurite: retention runs, deleting and pinning images."""

from __future__ import annotations

import uuid

import dagster as dg
import psycopg
import pytest

from records import ImageState, InstanceState
from records.retention import RetentionPolicy
from resources.blob import BlobStorageResource
from tests.helpers import add_drill, add_image, add_instance, restore_request
from toygres_pipelines.images.assets import IMAGE_PARTITIONS
from toygres_pipelines.lifecycle.jobs import delete_image_run_config, delete_instance_run_config
from toygres_pipelines.lifecycle.retention_job import retention_job, retention_run_config

pytestmark = pytest.mark.integration

# Keep the newest two; nothing by calendar; no minimum age: older images expire.
POLICY = RetentionPolicy(keep_newest=2, keep_daily=0, keep_weekly=0, keep_monthly=0, min_age_hours=0)
FILES = ("manifest.json", "globals.sql", "databases/app.dump")


def running_instance(cms, k8s_name: str = "app-src"):
    return add_instance(cms, k8s_name, postgres_version="16")


def stored_image(cms, blob: BlobStorageResource, source, name: str, days_old: float, state=ImageState.ready):
    """An image row with blobs under its folder, created `days_old` days ago."""
    image = add_image(cms, source, name, blob=blob, state=state)
    for file in FILES:
        blob.write_bytes(f"{image.blob_path}/{file}", f"{name}/{file}".encode())
    with psycopg.connect(cms.dsn) as conn:
        conn.execute(
            "UPDATE toygres_cms.images SET created_at = now() - make_interval(secs => %s) WHERE id = %s",
            (days_old * 86400, image.id),
        )
    return cms.images.get(image.id)


@pytest.fixture
def catalogue(cms, blob):
    """Five ready images of one instance (1..5 days old), a failed one past the 7-day window and a
    stray blob folder no row owns; the Dagster instance has a partition per image."""
    source = running_instance(cms)
    ready = [stored_image(cms, blob, source, f"app-src__d{n}", days_old=n) for n in range(1, 6)]
    failed = stored_image(cms, blob, source, "app-src__broken", days_old=10, state=ImageState.failed)
    stray = f"images/{uuid.uuid4()}"
    blob.write_bytes(f"{stray}/manifest.json", b"{}")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(IMAGE_PARTITIONS, [i.name for i in [*ready, failed]])
    return {"source": source, "ready": ready, "failed": failed, "stray": stray, "instance": instance}


def run_retention_job(resources, instance, dry_run: bool | None = None, policy: RetentionPolicy = POLICY):
    return retention_job(policy).execute_in_process(
        run_config={} if dry_run is None else retention_run_config(dry_run),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def plan_metadata(result) -> dict:
    materialized = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    if materialized:
        return materialized[0].event_specific_data.metadata
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return failure.event_specific_data.user_failure_data.metadata


def snapshot(cms, blob):
    return (
        {i.id: (i.state, i.updated_at) for i in cms.images.list()},
        sorted(blob.list_names("images")),
    )


def test_dry_run_is_the_default_and_deletes_nothing(resources, cms, blob, catalogue):
    before = snapshot(cms, blob)
    result = run_retention_job(resources, catalogue["instance"])
    assert result.success
    assert snapshot(cms, blob) == before
    assert sorted(catalogue["instance"].get_dynamic_partitions(IMAGE_PARTITIONS)) == sorted(
        i.name for i in [*catalogue["ready"], catalogue["failed"]]
    )
    metadata = plan_metadata(result)
    assert metadata["dry_run"].value is True
    table = metadata["plan"].value
    assert table.splitlines()[0] == "| image | instance | state | age | kept by |"
    d1, d2, d3 = catalogue["ready"][:3]
    assert f"| {d1.name} | default/app-src | ready | 24 h | newest ready, newest 2 |" in table
    assert f"| {d2.name} | default/app-src | ready | 2 d | newest 2 |" in table
    assert f"| {d3.name} | default/app-src | ready | 3 d | expired |" in table
    assert f"| {catalogue['failed'].name} | default/app-src | failed | 10 d | expired |" in table
    assert metadata["stray_blob_folders"].value == [catalogue["stray"].split("/")[1]]


def test_real_run_deletes_exactly_the_planned_blobs_rows_and_partitions(resources, cms, blob, catalogue):
    instance = catalogue["instance"]
    result = run_retention_job(resources, instance, dry_run=False)
    assert result.success, result
    kept, expired = catalogue["ready"][:2], [*catalogue["ready"][2:], catalogue["failed"]]
    for image in kept:
        assert cms.images.get(image.id).state is ImageState.ready
        assert len(blob.list_names(image.blob_path)) == len(FILES)
        assert [e.to_state for e in cms.events.of(image.id)] == ["creating", "ready"]
    for image in expired:
        assert cms.images.get(image.id).state is ImageState.deleted
        assert blob.list_names(image.blob_path) == []
        assert [e.to_state for e in cms.events.of(image.id)][-2:] == ["deleting", "deleted"]
        assert cms.events.of(image.id)[-1].run_id == result.run_id
    assert blob.list_names(catalogue["stray"]) == []
    assert sorted(instance.get_dynamic_partitions(IMAGE_PARTITIONS)) == sorted(i.name for i in kept)
    assert plan_metadata(result)["dry_run"].value is False


class StorageFailingOnSecondDelete(BlobStorageResource):
    """Azurite, except that the second image folder's deletion fails after its first blob."""

    def delete_prefix(self, prefix: str) -> int:
        calls = FAILURES.setdefault(self.container, [])
        calls.append(prefix)
        if len(calls) == 2:
            first = self.list_names(prefix)[0]
            self._container.delete_blob(first)
            raise ConnectionError("blob storage went away mid-delete")
        return super().delete_prefix(prefix)


FAILURES: dict[str, list[str]] = {}


def test_blob_storage_failing_mid_run_leaves_consistent_state_and_the_next_run_finishes(
    resources, cms, blob, catalogue
):
    instance = catalogue["instance"]
    failing = StorageFailingOnSecondDelete(connection_string=blob.connection_string, container=blob.container)
    result = run_retention_job({**resources, "blob": failing}, instance, dry_run=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "blob storage went away mid-delete" in failure.event_specific_data.user_failure_data.description
    expired = [*catalogue["ready"][2:], catalogue["failed"]]
    states = {cms.images.get(i.id).state for i in expired}
    assert ImageState.deleting in states
    for image in cms.images.list():
        # never a ready row without its blobs
        if image.state is ImageState.ready:
            assert len(blob.list_names(image.blob_path)) == len(FILES)
        else:
            assert image.state in (ImageState.deleting, ImageState.deleted)
    half_done = next(i for i in expired if cms.images.get(i.id).state is ImageState.deleting)
    assert half_done.name in instance.get_dynamic_partitions(IMAGE_PARTITIONS)

    again = run_retention_job(resources, instance, dry_run=False)
    assert again.success
    for image in expired:
        assert cms.images.get(image.id).state is ImageState.deleted
        assert blob.list_names(image.blob_path) == []
    assert sorted(instance.get_dynamic_partitions(IMAGE_PARTITIONS)) == sorted(i.name for i in catalogue["ready"][:2])


def test_pinned_and_in_use_images_survive_retention(resources, cms, blob, catalogue):
    from toygres_pipelines.lifecycle.images import pin_image

    d4, d5 = catalogue["ready"][3:5]
    pin_image(cms, d4.name)
    restore_request(cms, source_image_id=d5.name)
    result = run_retention_job(resources, catalogue["instance"], dry_run=False)
    assert result.success
    table = plan_metadata(result)["plan"].value
    assert f"| {d4.name} | default/app-src | ready | 4 d | pinned |" in table
    assert f"| {d5.name} | default/app-src | ready | 5 d | in use: source_image_id of pending restore request" in table
    assert cms.images.get(d4.id).state is ImageState.ready and cms.images.get(d5.id).state is ImageState.ready
    assert cms.images.get(catalogue["ready"][2].id).state is ImageState.deleted


def test_a_per_instance_override_in_the_cms_changes_the_plan(resources, cms, blob, catalogue):
    cms.instances.set_retention_override(catalogue["source"].id, {"keep_newest": 4})
    result = run_retention_job(resources, catalogue["instance"], dry_run=False)
    assert result.success
    states = [cms.images.get(i.id).state for i in catalogue["ready"]]
    assert states == [ImageState.ready] * 4 + [ImageState.deleted]


def test_deleting_an_image_in_use_is_refused_with_the_reason(resources, cms, blob, catalogue):
    from toygres_pipelines.lifecycle.jobs import delete_image_job

    target = catalogue["ready"][2]
    request = restore_request(cms, source_image_id=str(target.id))
    result = delete_image_job.execute_in_process(
        run_config=delete_image_run_config(target.name),
        resources=resources,
        instance=catalogue["instance"],
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert (
        f"image: image {target.name!r} is in use: it is the source_image_id of pending restore request {request.id}"
        in failure.event_specific_data.user_failure_data.description
    )
    assert cms.images.get(target.id).state is ImageState.ready
    assert len(blob.list_names(target.blob_path)) == len(FILES)


def test_delete_image_job_deletes_blobs_row_and_partition(resources, cms, blob, catalogue):
    from toygres_pipelines.lifecycle.jobs import delete_image_job

    target = catalogue["ready"][0]  # the newest: deleting on request is the user's call
    result = delete_image_job.execute_in_process(
        run_config=delete_image_run_config(str(target.id)),
        resources=resources,
        instance=catalogue["instance"],
    )
    assert result.success
    assert cms.images.get(target.id).state is ImageState.deleted
    assert blob.list_names(target.blob_path) == []
    assert target.name not in catalogue["instance"].get_dynamic_partitions(IMAGE_PARTITIONS)
    assert [e.reason for e in cms.events.of(target.id)][-2:] == [
        "deleted on request",
        "deleted on request: 3 blob(s) removed",
    ]


def test_a_pinned_image_is_refused_until_unpinned(resources, cms, blob, catalogue):
    from records import ValidationFailed
    from toygres_pipelines.lifecycle.images import delete_image, pin_image

    target = catalogue["ready"][1]
    assert pin_image(cms, target.name).pinned
    with pytest.raises(ValidationFailed, match="is pinned: unpin it first"):
        delete_image(cms, blob, target.name, run_id=None, log=print, partitions=None)
    assert not pin_image(cms, target.name, pinned=False).pinned
    assert delete_image(cms, blob, target.name, run_id=None, log=print, partitions=None).state is ImageState.deleted
    with pytest.raises(ValidationFailed, match="only a ready or corrupt image can be pinned"):
        pin_image(cms, str(target.id))


# ---- deleting instances -----------------------------------------------------------------------


def test_delete_instance_removes_everything_and_frees_the_dns_label_for_a_new_restore(resources, cms, platform, source):
    from tests.helpers import materialize_image
    from tests.test_restore import restore
    from toygres_pipelines.lifecycle.jobs import delete_instance_job
    from toygres_pipelines.restores.steps import instance_ref

    assert materialize_image(resources, f"{source.k8s_name}__for-delete").success
    image = cms.images.find(f"{source.k8s_name}__for-delete")
    first = restore(resources, name="first", dns_label="reused-label", source_image_id=image.name)
    assert first.success
    restored = cms.instances.find_by_run(first.run_id)
    assert platform.instance_exists(instance_ref(restored))

    refused = restore(resources, name="second", dns_label="reused-label", source_image_id=image.name)
    assert not refused.success  # the label is taken while the first instance lives

    result = delete_instance_job.execute_in_process(
        run_config=delete_instance_run_config(restored.k8s_name), resources=resources
    )
    assert result.success
    gone = cms.instances.get(restored.id)
    assert gone.state is InstanceState.deleted
    assert [e.to_state for e in cms.events.of(restored.id)][-2:] == ["deleting", "deleted"]
    assert not platform.instance_exists(instance_ref(restored))
    assert not cms.instances.dns_name_in_use("reused-label")

    second = restore(resources, name="second", dns_label="reused-label", source_image_id=image.name)
    assert second.success
    assert cms.instances.find_by_run(second.run_id).dns_name == "reused-label"


def test_an_instance_no_restore_created_is_refused_unless_forced(resources, cms, platform):
    from records import ValidationFailed
    from toygres_pipelines.lifecycle.instances import delete_instance

    outsider = running_instance(cms, "registered-elsewhere")
    with pytest.raises(ValidationFailed, match="force: instance 'registered-elsewhere' was not created by a toygres"):
        delete_instance(cms, platform, outsider.k8s_name)
    assert cms.instances.get(outsider.id).state is InstanceState.running
    assert delete_instance(cms, platform, str(outsider.id), force=True).state is InstanceState.deleted
    assert delete_instance(cms, platform, str(outsider.id)).state is InstanceState.deleted  # idempotent


def test_a_creating_instance_is_refused(resources, cms, platform):
    from records import ValidationFailed
    from toygres_pipelines.lifecycle.instances import delete_instance

    making = running_instance(cms, "being-made")
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.instances SET state = 'creating', run_id = 'r1' WHERE id = %s", (making.id,))
    with pytest.raises(ValidationFailed, match="instance: instance 'being-made' is creating: its restore run r1"):
        delete_instance(cms, platform, making.k8s_name, force=True)


class BackupStartsDuringTheListing(BlobStorageResource):
    """A backup reserves its row and writes its first blob just as retention lists the folders."""

    def list_folders(self, prefix: str) -> list[str]:
        started = STARTED.pop(self.container, None)
        if started is not None:
            started()
        return super().list_folders(prefix)


STARTED: dict = {}


def test_a_backup_starting_during_a_retention_run_is_never_taken_for_stray_blobs(resources, cms, blob, catalogue):
    fresh = {}
    STARTED[blob.container] = lambda: fresh.update(
        image=stored_image(cms, blob, catalogue["source"], "app-src__now", days_old=0, state=ImageState.creating)
    )
    racing = BackupStartsDuringTheListing(connection_string=blob.connection_string, container=blob.container)
    result = run_retention_job({**resources, "blob": racing}, catalogue["instance"], dry_run=False)
    assert result.success
    assert cms.images.get(fresh["image"].id).state is ImageState.creating
    assert len(blob.list_names(fresh["image"].blob_path)) == len(FILES)
    assert blob.list_names(catalogue["stray"]) == []


# ---- a restore and a deletion of the same image at the same time ------------------------------


def wait_until_a_lock_is_awaited(dsn: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0]:
                return
            time.sleep(0.05)
    raise TimeoutError("no session ever waited for a lock")


def test_a_restore_creating_its_instance_during_a_deletion_keeps_the_image(resources, cms, blob, catalogue):
    import threading

    from records import ValidationFailed
    from toygres_pipelines.lifecycle.images import delete_image

    target = catalogue["ready"][2]
    # What the restore's cms.instances.create does in one transaction, held open: lock the image row
    # (FOR SHARE) and insert the creating instance that uses it.
    restore_tx = psycopg.connect(cms.dsn)
    restore_tx.execute("SELECT state FROM toygres_cms.images WHERE id = %s FOR SHARE", (target.id,))
    restore_tx.execute(
        "INSERT INTO toygres_cms.instances (id, user_name, k8s_name, namespace, postgres_version, storage_size_gb,"
        " state, source_image_id) VALUES (%s, 'copy', 'copy-x1y2z', 'default', '16', 1, 'creating', %s)",
        (uuid.uuid4(), target.id),
    )
    outcome: dict = {}

    def delete() -> None:
        try:
            outcome["image"] = delete_image(cms, blob, target.name, run_id=None, log=print, partitions=None)
        except ValidationFailed as refused:
            outcome["refused"] = refused

    deleter = threading.Thread(target=delete)
    deleter.start()
    try:
        wait_until_a_lock_is_awaited(cms.dsn)
        restore_tx.commit()
    finally:
        deleter.join(timeout=60)
        restore_tx.close()
    assert "image" not in outcome
    assert "is in use: it is the source_image_id of creating instance copy-x1y2z" in str(outcome["refused"])
    assert cms.images.get(target.id).state is ImageState.ready
    assert len(blob.list_names(target.blob_path)) == len(FILES)


def test_a_restore_cannot_create_its_instance_from_an_image_being_deleted(cms, blob, catalogue):
    from records import ValidationFailed

    target = catalogue["ready"][2]
    cms.images.transition(target.id, ImageState.deleting, reason="test")
    with pytest.raises(ValidationFailed, match=f"source_image_id: image {target.name!r} is deleting, it must be ready"):
        add_instance(
            cms,
            "copy-x1y2z",
            state=InstanceState.creating,
            postgres_version="16",
            dns_name="copy-db",
            source_image_id=target.id,
        )
    assert cms.instances.find("copy-x1y2z") is None


# ---- the newest ready image changes while a retention run goes on (issue 19) -------------------

KEEP_ONE = RetentionPolicy(keep_newest=1, keep_daily=0, keep_weekly=0, keep_monthly=0, min_age_hours=0)


def run_retention_after(monkeypatch, resources, catalogue, meanwhile) -> object:
    """A real retention run with `meanwhile()` run between its plan and its first deletion."""
    from toygres_pipelines.lifecycle import retention_job as module

    planned = module.compute_plan

    def plan_then_race(*args, **kwargs):
        result = planned(*args, **kwargs)
        meanwhile()
        return result

    monkeypatch.setattr(module, "compute_plan", plan_then_race)
    return run_retention_job(resources, catalogue["instance"], dry_run=False, policy=KEEP_ONE)


def ready_images(cms, source) -> list:
    return [i for i in cms.images.list([ImageState.ready]) if i.source_instance_id == source.id]


def test_the_newest_ready_image_turning_corrupt_after_the_plan_keeps_the_next_newest(
    monkeypatch, resources, cms, blob, catalogue
):
    d1, d2 = catalogue["ready"][:2]
    result = run_retention_after(
        monkeypatch,
        resources,
        catalogue,
        lambda: cms.images.transition(d1.id, ImageState.corrupt, reason="bytes failed verification"),
    )
    assert result.success, result
    assert [i.id for i in ready_images(cms, catalogue["source"])] == [d2.id]
    assert len(blob.list_names(d2.blob_path)) == len(FILES)
    assert [cms.images.get(i.id).state for i in catalogue["ready"][2:]] == [ImageState.deleted] * 3


def test_the_newest_ready_image_deleted_on_request_after_the_plan_keeps_the_next_newest(
    monkeypatch, resources, cms, blob, catalogue
):
    from toygres_pipelines.lifecycle.images import delete_image

    d1, d2 = catalogue["ready"][:2]
    result = run_retention_after(
        monkeypatch,
        resources,
        catalogue,
        lambda: delete_image(cms, blob, str(d1.id), run_id=None, log=print, partitions=None),
    )
    assert result.success, result
    assert cms.images.get(d1.id).state is ImageState.deleted
    assert [i.id for i in ready_images(cms, catalogue["source"])] == [d2.id]
    assert len(blob.list_names(d2.blob_path)) == len(FILES)


def test_retention_never_turns_the_newest_ready_image_deleting_even_when_asked_directly(cms, blob, catalogue):
    from records import ValidationFailed

    d1, d2 = catalogue["ready"][:2]
    cms.images.transition(d1.id, ImageState.corrupt, reason="bytes failed verification")
    with pytest.raises(
        ValidationFailed, match=f"image {d2.name!r} is the newest ready image of instance default/app-src"
    ):
        cms.images.begin_deletion(d2.id, reason="expired by retention", run_id=None, keep_newest_ready=True)
    assert cms.images.get(d2.id).state is ImageState.ready
    # an older one still goes: the rule is about the newest only
    assert (
        cms.images.begin_deletion(
            catalogue["ready"][2].id, reason="expired by retention", run_id=None, keep_newest_ready=True
        ).state
        is ImageState.deleting
    )


# ---- a running drill holds its image (issue 19) -------------------------------------------------


def test_a_running_drill_holds_its_image_against_delete_image_and_retention(resources, cms, blob, catalogue):
    from records import ValidationFailed
    from records.drills import DrillResult
    from toygres_pipelines.lifecycle.images import delete_image

    target = catalogue["ready"][3]  # expired by POLICY
    drill = add_drill(cms, target, "drill-run-1")
    held = f"image {target.name!r} is in use: it is the image of running restore drill {drill.id} (run drill-run-1)"
    with pytest.raises(ValidationFailed, match=held.replace("(", r"\(").replace(")", r"\)")):
        delete_image(cms, blob, target.name, run_id=None, log=print, partitions=None)
    with pytest.raises(ValidationFailed, match="running restore drill"):
        cms.images.begin_deletion(target.id, reason="test", run_id=None)
    result = run_retention_job(resources, catalogue["instance"], dry_run=False)
    assert result.success
    assert f"| {target.name} | default/app-src | ready | 4 d | in use: image of running restore drill {drill.id}" in (
        plan_metadata(result)["plan"].value
    )
    assert cms.images.get(target.id).state is ImageState.ready
    assert len(blob.list_names(target.blob_path)) == len(FILES)

    cms.drills.finish(drill.id, DrillResult.passed, None)
    delete_image(cms, blob, target.name, run_id=None, log=print, partitions=None)
    assert cms.images.get(target.id).state is ImageState.deleted


# ---- the CMS connection cut in the middle of a retention run (issue 19) -------------------------


class StorageCuttingTheCMSOnSecondDelete(BlobStorageResource):
    """Azurite; at the second image folder's deletion the CMS stops taking connections (the
    database refuses new ones and every open one is terminated) before the blobs go."""

    def delete_prefix(self, prefix: str) -> int:
        calls = CUTS.setdefault(self.container, [])
        calls.append(prefix)
        if len(calls) == 2:
            CUT_CMS[self.container]()
        return super().delete_prefix(prefix)


CUTS: dict[str, list[str]] = {}
CUT_CMS: dict[str, object] = {}


def test_a_cms_connection_cut_mid_retention_lists_what_was_and_was_not_deleted(resources, cms, blob, stack, catalogue):
    database = psycopg.conninfo.conninfo_to_dict(cms.dsn)["dbname"]
    admin_dsn = stack.cms.server.dsn(stack.cms.user, stack.cms.password, dbname="postgres")

    def cut() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))

    CUT_CMS[blob.container] = cut
    cutting = StorageCuttingTheCMSOnSecondDelete(connection_string=blob.connection_string, container=blob.container)
    try:
        result = run_retention_job({**resources, "blob": cutting}, catalogue["instance"], dry_run=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.event_specific_data.user_failure_data.description
    first_deleted = CUTS[blob.container][0]
    deleted = next(i for i in cms.images.list() if i.blob_path == first_deleted)
    assert deleted.state is ImageState.deleted
    assert description.startswith("retention: the CMS became unreachable"), description
    assert f"deleted: {deleted.name}" in description
    expired = [*catalogue["ready"][2:], catalogue["failed"]]
    left = sorted(i.name for i in expired if i.id != deleted.id)
    assert f"not deleted (retried by the next run): {', '.join(left)}" in description
    for image in cms.images.list():  # consistent: never a ready row without its blobs
        if image.state is ImageState.ready:
            assert len(blob.list_names(image.blob_path)) == len(FILES)
    again = run_retention_job(resources, catalogue["instance"], dry_run=False)
    assert again.success
    assert all(cms.images.get(i.id).state is ImageState.deleted for i in expired)


def test_a_drill_cannot_start_on_an_image_a_deletion_has_taken(cms, blob, catalogue):
    """The drill read the image ready (ready_image), then a deletion turned it deleting before the
    drill recorded itself: the drill is refused, no running drill holds a deleting image."""
    from records import ValidationFailed

    target = catalogue["ready"][3]
    cms.images.begin_deletion(target.id, reason="deleted on request", run_id=None)
    with pytest.raises(ValidationFailed, match=f"image: image {target.name!r} is deleting, it must be ready"):
        cms.drills.start(target.id, catalogue["source"].id, run_id="drill-run-late")
    assert cms.drills.find_by_run("drill-run-late") is None
