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
    from toygres_pipelines.dev.topology import DagsterTopology

    storage = {name: "x" for name in ("DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST")}
    topology = DagsterTopology(
        home=tmp_path,
        workspace=tmp_path / "workspace.yaml",
        log_dir=tmp_path / "logs",
        dagster_env={"DAGSTER_HOME": str(tmp_path), "DAGSTER_PG_PORT": "1", "DAGSTER_PG_DB": "d", **storage},
        code_env={
            CMS_DSN_ENV: "host=cms dbname=cms",
            "TOYGRES_ENCRYPTION_KEY": "k",
            "TOYGRES_BLOB_CONNECTION_STRING": "s",
        },
        code_port=4000,
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
