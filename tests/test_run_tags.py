"""Every backup run carries the fleet tags, however it was launched (the UI's Materialize included),
so the queue's tag limits (one run per instance, N backups at once) see it."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from toygres_pipelines.drills.jobs import drill_run_config
from toygres_pipelines.images.assets import BackupConfig
from toygres_pipelines.images.jobs import backup_form_run_config
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_form_run_config
from toygres_pipelines.run_coordinator import fleet_tags
from toygres_pipelines.shared.tags import INSTANCE_TAG, KIND_TAG

IMAGE = frozenset({dg.AssetKey("image")})


def run_of(job_name: str, tags: dict, config: dict | None = None, selection=IMAGE) -> DagsterRun:
    return DagsterRun(
        job_name=job_name,
        run_config=config or {},
        tags=tags,
        asset_selection=selection,
        status=DagsterRunStatus.NOT_STARTED,
    )


def test_ui_materialize_of_an_image_partition_gets_kind_and_instance_from_the_partition_key():
    run = run_of("__ASSET_JOB", {"dagster/partition": "pagila-demo__before-upgrade"})
    assert fleet_tags(run) == {KIND_TAG: "backup", INSTANCE_TAG: "pagila-demo"}


def test_the_configured_source_instance_wins_over_the_partition_key():
    config = backup_form_run_config(BackupConfig(source_instance="orders-x1y2z")).to_config_dict()
    run = run_of("__ASSET_JOB", {"dagster/partition": "pagila-demo__copy"}, config)
    assert fleet_tags(run) == {KIND_TAG: "backup", INSTANCE_TAG: "orders-x1y2z"}


def test_tags_a_run_already_carries_are_kept():
    tags = {KIND_TAG: "backup", INSTANCE_TAG: "pagila-demo", "dagster/partition": "pagila-demo__nightly-20260101"}
    assert fleet_tags(run_of("backup_image", tags)) == {}


def test_other_runs_get_nothing():
    assert fleet_tags(run_of("restore_instance", {KIND_TAG: "restore"}, selection=None)) == {}
    assert fleet_tags(run_of("purge_failed_image_blobs", {}, selection=None)) == {}


# ---- every run findable (issue 23) ------------------------------------------------------------


def test_a_ui_launched_restore_is_tagged_with_the_instance_it_makes():
    form = RestoreConfig.model_construct(name="orders-copy", source_image_id="orders__n1")
    config = restore_form_run_config(form).to_config_dict()
    run = run_of("restore_instance", {KIND_TAG: "restore"}, config, selection=None)
    assert fleet_tags(run) == {INSTANCE_TAG: "orders-copy"}


def test_a_ui_launched_drill_is_tagged_with_the_image_s_instance():
    config = drill_run_config("orders-x1y2z__nightly-20260101").to_config_dict()
    run = run_of("restore_drill", {KIND_TAG: "drill"}, config, selection=None)
    assert fleet_tags(run) == {INSTANCE_TAG: "orders-x1y2z"}
    scheduled = run_of("restore_drill", {KIND_TAG: "drill", INSTANCE_TAG: "orders-x1y2z"}, config, selection=None)
    assert fleet_tags(scheduled) == {}


def test_fleet_checks_executed_from_the_ui_are_tagged_as_checks_not_as_a_backup():
    checks = frozenset(
        {
            dg.AssetCheckKey(dg.AssetKey("fleet"), "backups_fresh"),
            dg.AssetCheckKey(dg.AssetKey("fleet"), "drills_fresh"),
        }
    )
    for selection in (None, frozenset()):
        run = DagsterRun(
            job_name="__ASSET_JOB",
            run_config={},
            tags={},
            asset_selection=selection,
            asset_check_selection=checks,
            status=DagsterRunStatus.NOT_STARTED,
        )
        assert fleet_tags(run) == {KIND_TAG: "checks"}
