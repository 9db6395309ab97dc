"""A refused request never makes anything red (issue 23): the run coordinator checks every
submitted backup and restore with the rules the ops use, and a request they refuse leaves no run
(so no failed run, asset or check) and says the field, the rule and the value.

Submitted here the way the webserver and the daemon do (`TaggingRunCoordinator.submit_run`), on
a real DagsterInstance; the browser test walks the same through the UI."""

from __future__ import annotations

import dagster as dg
import pytest
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from resources.platform.postgres_server import free_port
from tests.helpers import topology_without_storage
from toygres_pipelines.drills.jobs import drill_run_config
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_form_run_config
from toygres_pipelines.run_coordinator import CMS_DSN_ENV, RequestRefused, TaggingRunCoordinator

IMAGE = frozenset({dg.AssetKey("image")})
LOCATION = GrpcServerCodeLocationOrigin(host="127.0.0.1", port=4000, location_name="toygres_pipelines")


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def coordinator(instance):
    coordinator = TaggingRunCoordinator()
    coordinator.register_instance(instance)
    return coordinator


def stored_run(instance: dg.DagsterInstance, job_name: str, tags: dict, config: dict, selection=None) -> DagsterRun:
    run = DagsterRun(
        job_name=job_name,
        run_config=config,
        tags=tags,
        asset_selection=selection,
        status=DagsterRunStatus.NOT_STARTED,
        remote_job_origin=RemoteJobOrigin(RemoteRepositoryOrigin(LOCATION, "__repository__"), job_name),
    )
    return instance.add_run(run)


def restore_config(**fields) -> dict:
    return restore_form_run_config(RestoreConfig.model_construct(**fields)).to_config_dict()


def test_a_restore_whose_name_breaks_the_rule_is_refused_before_a_run_exists(instance, coordinator, monkeypatch):
    monkeypatch.delenv(CMS_DSN_ENV, raising=False)  # the request's own rules need no CMS
    run = stored_run(
        instance,
        "restore_instance",
        {"toygres/kind": "restore"},
        restore_config(name="Bad_Name", dns_label="bad-name", source_image_id="pagila-demo__x"),
    )
    with pytest.raises(RequestRefused) as refused:
        coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert str(refused.value).startswith("Invalid restore request: name: 'Bad_Name' must be a DNS-1123 label")
    assert (refused.value.field, refused.value.value) == ("name", "Bad_Name")
    assert instance.get_run_by_id(run.run_id) is None


def test_a_version_the_form_cannot_hold_is_refused_naming_the_field(instance, coordinator, monkeypatch):
    monkeypatch.delenv(CMS_DSN_ENV, raising=False)
    run = stored_run(
        instance,
        "restore_instance",
        {},
        restore_config(name="copy", dns_label="copy-db", source_image_id="pagila-demo__x", postgres_version="16.2"),
    )
    with pytest.raises(RequestRefused, match=r"^Invalid restore request: postgres_version: '16.2' must be"):
        coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert instance.get_run_by_id(run.run_id) is None


def test_a_mistyped_partition_is_refused_and_leaves_neither_run_nor_partition(instance, coordinator, cms, monkeypatch):
    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    instance.add_dynamic_partitions("images", ["nosuch__x"])
    run = stored_run(instance, "__ASSET_JOB", {"dagster/partition": "nosuch__x"}, {}, IMAGE)
    with pytest.raises(RequestRefused) as refused:
        coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert str(refused.value).startswith("Invalid backup request: source_instance: no instance 'nosuch' in the CMS")
    assert instance.get_run_by_id(run.run_id) is None
    assert not instance.has_dynamic_partition("images", "nosuch__x")


def test_a_good_backup_request_is_queued_with_its_tags(instance, coordinator, cms, source, monkeypatch):
    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    key = f"{source.k8s_name}__fine"
    run = stored_run(instance, "__ASSET_JOB", {"dagster/partition": key}, {}, IMAGE)
    queued = coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert queued.status is DagsterRunStatus.QUEUED and queued.tags["toygres/instance"] == source.k8s_name


def test_an_unreachable_cms_lets_the_run_through_for_the_op_to_check(instance, coordinator, monkeypatch):
    monkeypatch.setenv(CMS_DSN_ENV, f"host=127.0.0.1 port={free_port()} dbname=cms user=nobody connect_timeout=2")
    run = stored_run(
        instance,
        "restore_instance",
        {},
        restore_config(name="copy", dns_label="copy-db", source_image_id="pagila-demo__x"),
    )
    queued = coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert queued.status is DagsterRunStatus.QUEUED


def test_the_webserver_and_the_daemon_get_the_cms_dsn_and_no_other_secret(tmp_path):
    topology = topology_without_storage(
        tmp_path,
        {
            CMS_DSN_ENV: "host=cms dbname=cms",
            "TOYGRES_ENCRYPTION_KEY": "k",
            "TOYGRES_BLOB_CONNECTION_STRING": "s",
        },
    )
    submitter = topology.submitter_env()
    assert submitter[CMS_DSN_ENV] == "host=cms dbname=cms"
    assert not {"TOYGRES_ENCRYPTION_KEY", "TOYGRES_BLOB_CONNECTION_STRING"} & set(submitter)


def test_every_check_of_the_image_asset_is_per_partition():
    # A check of one partition says nothing of another image: `verified` of partition B failing
    # must not show `verified` of partition A failed.
    from toygres_pipelines.definitions import defs
    from toygres_pipelines.images.assets import image_partitions

    checks = defs.resolve_asset_graph().asset_check_keys
    image_checks = [key for key in checks if key.asset_key == dg.AssetKey("image")]
    assert {key.name for key in image_checks} == {"verified", "restorable", "size_plausible"}
    for key in image_checks:
        spec = defs.resolve_asset_graph().get_check_spec(key)
        assert spec.partitions_def == image_partitions, key.name


def test_a_drill_launched_from_the_ui_is_queued_findable(instance, coordinator, monkeypatch):
    """Every run findable (issue 23): the instance, the kind and a readable name, set at submit."""
    monkeypatch.delenv(CMS_DSN_ENV, raising=False)
    config = drill_run_config("orders-x1y2z__nightly-20260101").to_config_dict()
    run = stored_run(instance, "restore_drill", {}, config)
    queued = coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    stored = instance.get_run_by_id(run.run_id)
    assert stored is not None and queued.status is DagsterRunStatus.QUEUED
    for tags in (queued.tags, stored.tags):
        assert tags["toygres/kind"] == "drill"
        assert tags["toygres/instance"] == "orders-x1y2z"
        assert tags["toygres/what"] == "drill orders-x1y2z__nightly-20260101"


# ---- one run per request, however many launches (the request listener and the sensors' sweep) --


@pytest.fixture
def postgres_instance(stack):
    """A Dagster instance on PostgreSQL storage (the deployments' storage) in a database of its own:
    submits from several threads at once see each other as the webserver's and the daemon's do."""
    import uuid

    import psycopg
    from psycopg import sql

    from toygres_pipelines.dev.topology import ensure_storage_database

    database = f"dagster_{uuid.uuid4().hex[:12]}"
    env = ensure_storage_database(stack.cms.dsn, database)
    url = (
        f"postgresql+psycopg2://{env['DAGSTER_PG_USERNAME']}:{env['DAGSTER_PG_PASSWORD']}"
        f"@{env['DAGSTER_PG_HOST']}:{env['DAGSTER_PG_PORT']}/{database}"
    )
    try:
        with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
            yield instance
    finally:
        with psycopg.connect(stack.cms.dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def request_run(instance, request_id: str, source: str) -> DagsterRun:
    """A backup run launched for a CMS request, as the sensor and the listener launch it."""
    key = f"{source}__requested"
    tags = {"toygres/request-id": request_id, "toygres/kind": "backup", "dagster/partition": key}
    return stored_run(instance, "backup_image", tags, {}, IMAGE)


def test_a_second_launch_of_one_request_is_refused_and_leaves_one_run(instance, coordinator, cms, monkeypatch):
    from tests.helpers import add_instance
    from toygres_pipelines.run_coordinator import RequestAlreadyLaunched

    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    source = add_instance(cms, "dup-abcde")
    instance.add_dynamic_partitions("images", [f"{source.k8s_name}__requested"])
    first = request_run(instance, "5b0e0a0e-0000-4000-8000-000000000001", source.k8s_name)
    second = request_run(instance, "5b0e0a0e-0000-4000-8000-000000000001", source.k8s_name)
    assert coordinator.submit_run(SubmitRunContext(first, workspace=None)).status is DagsterRunStatus.QUEUED  # type: ignore[arg-type]
    with pytest.raises(RequestAlreadyLaunched, match=rf"already has run {first.run_id}"):
        coordinator.submit_run(SubmitRunContext(second, workspace=None))  # type: ignore[arg-type]
    runs = instance.get_runs(dg.RunsFilter(tags={"toygres/request-id": "5b0e0a0e-0000-4000-8000-000000000001"}))
    assert [run.run_id for run in runs] == [first.run_id]
    # the winner's partition stays: only the refused run is forgotten
    assert instance.has_dynamic_partition("images", f"{source.k8s_name}__requested")


def test_a_reexecution_of_a_request_run_is_not_a_second_launch(instance, coordinator, cms, monkeypatch):
    from tests.helpers import add_instance

    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    source = add_instance(cms, "rex-abcde")
    first = request_run(instance, "5b0e0a0e-0000-4000-8000-000000000002", source.k8s_name)
    coordinator.submit_run(SubmitRunContext(first, workspace=None))  # type: ignore[arg-type]
    again = stored_run(
        instance,
        "backup_image",
        {**first.tags, "dagster/parent_run_id": first.run_id, "dagster/root_run_id": first.run_id},
        {},
        IMAGE,
    )
    assert coordinator.submit_run(SubmitRunContext(again, workspace=None)).status is DagsterRunStatus.QUEUED  # type: ignore[arg-type]


def race_two_launches(postgres_instance, monkeypatch, request_id: str, source: str) -> dict[str, object]:
    """Two launches of one request submitted at the same moment (both runs already stored, both
    checking together, if the lock lets them): each run id -> its status or the error raised."""
    import threading

    from toygres_pipelines import run_coordinator

    runs = [request_run(postgres_instance, request_id, source) for _ in range(2)]
    coordinators = []
    for _ in runs:
        coordinator = TaggingRunCoordinator()
        coordinator.register_instance(postgres_instance)
        coordinators.append(coordinator)
    both_looking = threading.Barrier(2)
    look = run_coordinator.launched_run

    def look_together(*args):
        try:
            both_looking.wait(timeout=5)
        except threading.BrokenBarrierError:
            pass  # the lock let one through first: it never meets the other here
        return look(*args)

    monkeypatch.setattr(run_coordinator, "launched_run", look_together)
    outcomes: dict[str, object] = {}

    def submit(coordinator, run) -> None:
        try:
            outcomes[run.run_id] = coordinator.submit_run(SubmitRunContext(run, workspace=None)).status
        except BaseException as error:  # noqa: BLE001 - read by the main thread
            outcomes[run.run_id] = error

    threads = [threading.Thread(target=submit, args=pair) for pair in zip(coordinators, runs, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_racing_launches_of_one_request_end_in_one_run(postgres_instance, cms, monkeypatch):
    """The listener's launch and the sweep's relaunch submitted at the same moment: one is queued,
    the other refused and gone."""
    from tests.helpers import add_instance
    from toygres_pipelines.run_coordinator import RequestAlreadyLaunched

    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    source = add_instance(cms, "race-abcde")
    request_id = "5b0e0a0e-0000-4000-8000-000000000003"
    outcomes = race_two_launches(postgres_instance, monkeypatch, request_id, source.k8s_name)
    assert sorted(type(o).__name__ for o in outcomes.values()) == ["DagsterRunStatus", "RequestAlreadyLaunched"], (
        outcomes
    )
    left = postgres_instance.get_runs(dg.RunsFilter(tags={"toygres/request-id": request_id}))
    assert len(left) == 1 and left[0].status is DagsterRunStatus.QUEUED
    assert isinstance(next(o for o in outcomes.values() if not isinstance(o, DagsterRunStatus)), RequestAlreadyLaunched)


def test_racing_launches_with_the_cms_unreachable_never_make_two_runs(postgres_instance, cms, monkeypatch):
    """The CMS gone between the claim and the submit (restarting, partitioned): without its launch
    lock the check alone cannot keep two racing launches apart, so neither is queued; the request
    stays accepted with no run, and the sweep launches it once the CMS answers again."""
    from tests.helpers import add_instance

    source = add_instance(cms, "gone-abcde")
    monkeypatch.setenv(CMS_DSN_ENV, f"host=127.0.0.1 port={free_port()} dbname=cms user=nobody connect_timeout=2")
    request_id = "5b0e0a0e-0000-4000-8000-000000000004"
    outcomes = race_two_launches(postgres_instance, monkeypatch, request_id, source.k8s_name)
    left = postgres_instance.get_runs(dg.RunsFilter(tags={"toygres/request-id": request_id}))
    assert [run.status for run in left if run.status is not DagsterRunStatus.NOT_STARTED] == [], outcomes
    from toygres_pipelines.run_coordinator import LaunchLockUnavailable

    assert all(isinstance(o, LaunchLockUnavailable) for o in outcomes.values()), outcomes
    assert not left, "a refused launch leaves no run"
    message = str(next(iter(outcomes.values())))
    assert request_id in message and "TOYGRES_CMS_DSN" not in message and "nobody" not in message


def test_a_cms_dsn_libpq_cannot_parse_is_never_echoed_at_submit(instance, coordinator, monkeypatch, caplog):
    """libpq's message for a DSN it cannot parse quotes the text around the fault (an unquoted
    password with a space: its tail). The coordinator's warnings and the launch's error (what the
    listener logs) say the variable and the rule, never the value; the launch gets no lock."""
    from toygres_pipelines.run_coordinator import LaunchLockUnavailable

    monkeypatch.setenv(CMS_DSN_ENV, "host=127.0.0.1 port=1 dbname=cms user=nobody password=hunter2 tail-of-it")
    run = request_run(instance, "5b0e0a0e-0000-4000-8000-000000000005", "dsn-abcde")
    with caplog.at_level("WARNING", logger="toygres_pipelines.run_coordinator"):
        with pytest.raises(LaunchLockUnavailable) as refused:
            coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    said = caplog.text + str(refused.value)
    assert "tail-of-it" not in said and "hunter2" not in said, said
    assert "TOYGRES_CMS_DSN" in caplog.text


def test_the_cms_lost_after_the_run_is_queued_does_not_fail_the_launch(instance, coordinator, cms, monkeypatch):
    """The CMS restarting while the coordinator holds a request's launch lock (its session ended
    between the check and the lock's release): the run is queued by then and the lost session has
    released the lock, so the launch succeeds; it never raises, which Dagster would answer by
    marking the queued run failed (a request failed that never ran)."""
    import psycopg

    from resources.cms.requests import LAUNCH_LOCK_KEY
    from tests.helpers import add_instance
    from toygres_pipelines import run_coordinator

    monkeypatch.setenv(CMS_DSN_ENV, cms.dsn)
    source = add_instance(cms, "blip-abcde")
    look = run_coordinator.launched_run
    ended: list[bool] = []

    def cms_restarts_meanwhile(*args):
        with psycopg.connect(cms.dsn, autocommit=True) as admin:
            [(killed,)] = admin.execute(
                "SELECT coalesce(bool_and(pg_terminate_backend(pid)), false) FROM pg_locks"
                " WHERE locktype = 'advisory' AND classid = %s AND granted",
                (LAUNCH_LOCK_KEY,),
            ).fetchall()
        ended.append(killed)
        return look(*args)

    monkeypatch.setattr(run_coordinator, "launched_run", cms_restarts_meanwhile)
    run = request_run(instance, "5b0e0a0e-0000-4000-8000-000000000006", source.k8s_name)
    queued = coordinator.submit_run(SubmitRunContext(run, workspace=None))  # type: ignore[arg-type]
    assert ended == [True], "the lock's session was found and ended"
    assert queued.status is DagsterRunStatus.QUEUED
