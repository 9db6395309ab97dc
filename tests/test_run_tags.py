"""Every backup run carries the fleet tags, however it was launched (the UI's Materialize included),
so the queue's tag limits (one run per instance, N backups at once) see it."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from toygres_pipelines.drills.jobs import drill_run_config
from toygres_pipelines.images.assets import BackupConfig
from toygres_pipelines.images.jobs import backup_form_run_config
from toygres_pipelines.images.reverify import reverify_run_config
from toygres_pipelines.lifecycle.retention_job import retention_run_config
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_form_run_config
from toygres_pipelines.run_coordinator import fleet_tags
from toygres_pipelines.shared.tags import INSTANCE_TAG, KIND_TAG, WHAT_TAG

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
    assert fleet_tags(run) == {
        KIND_TAG: "backup",
        INSTANCE_TAG: "pagila-demo",
        WHAT_TAG: "backup pagila-demo__before-upgrade",
    }


def test_the_configured_source_instance_wins_over_the_partition_key():
    config = backup_form_run_config(BackupConfig(source_instance="orders-x1y2z")).to_config_dict()
    run = run_of("__ASSET_JOB", {"dagster/partition": "pagila-demo__copy"}, config)
    assert fleet_tags(run) == {KIND_TAG: "backup", INSTANCE_TAG: "orders-x1y2z", WHAT_TAG: "backup pagila-demo__copy"}


def test_tags_a_run_already_carries_are_kept():
    tags = {
        KIND_TAG: "backup",
        INSTANCE_TAG: "pagila-demo",
        WHAT_TAG: "nightly",
        "dagster/partition": "pagila-demo__nightly-20260101",
    }
    assert fleet_tags(run_of("backup_image", tags)) == {}


def test_other_runs_get_nothing():
    assert fleet_tags(run_of("restore_instance", {KIND_TAG: "restore"}, selection=None)) == {}
    assert fleet_tags(run_of("purge_failed_image_blobs", {}, selection=None)) == {}


# ---- every run findable (issue 23) ------------------------------------------------------------


def test_a_ui_launched_restore_is_tagged_with_the_instance_it_makes():
    form = RestoreConfig.model_construct(name="orders-copy", source_image_id="orders__n1")
    config = restore_form_run_config(form).to_config_dict()
    run = run_of("restore_instance", {KIND_TAG: "restore"}, config, selection=None)
    assert fleet_tags(run) == {INSTANCE_TAG: "orders-copy", WHAT_TAG: "restore orders__n1 as orders-copy"}


def test_a_ui_launched_drill_is_tagged_with_the_image_s_instance():
    config = drill_run_config("orders-x1y2z__nightly-20260101").to_config_dict()
    run = run_of("restore_drill", {KIND_TAG: "drill"}, config, selection=None)
    assert fleet_tags(run) == {INSTANCE_TAG: "orders-x1y2z", WHAT_TAG: "drill orders-x1y2z__nightly-20260101"}
    scheduled = run_of("restore_drill", {KIND_TAG: "drill", INSTANCE_TAG: "orders-x1y2z"}, config, selection=None)
    assert fleet_tags(scheduled) == {WHAT_TAG: "drill orders-x1y2z__nightly-20260101"}


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
        assert fleet_tags(run) == {KIND_TAG: "checks", WHAT_TAG: "fleet checks"}


# ---- a readable run name: Dagster 1.13 runs have no name field, so every run carries toygres/what ----


def test_every_kind_of_run_gets_a_readable_what_tag_however_launched():
    backup = run_of("__ASSET_JOB", {"dagster/partition": "pagila-demo__before-upgrade"})
    assert fleet_tags(backup)[WHAT_TAG] == "backup pagila-demo__before-upgrade"
    scheduled = {KIND_TAG: "backup", INSTANCE_TAG: "pagila-demo", "dagster/partition": "pagila-demo__nightly-1"}
    assert fleet_tags(run_of("backup_image", scheduled)) == {WHAT_TAG: "backup pagila-demo__nightly-1"}

    restore_config = restore_form_run_config(
        RestoreConfig.model_construct(name="orders-copy", source_image_id="orders__n1")
    ).to_config_dict()
    restore = run_of("restore_instance", {KIND_TAG: "restore"}, restore_config, selection=None)
    assert fleet_tags(restore)[WHAT_TAG] == "restore orders__n1 as orders-copy"

    drill_config = drill_run_config("orders__n1").to_config_dict()
    assert fleet_tags(run_of("restore_drill", {}, drill_config, selection=None)) == {
        KIND_TAG: "drill",
        INSTANCE_TAG: "orders",
        WHAT_TAG: "drill orders__n1",
    }

    reverify_config = reverify_run_config("orders__n1").to_config_dict()
    assert fleet_tags(run_of("reverify_image", {KIND_TAG: "maintenance"}, reverify_config, selection=None)) == {
        INSTANCE_TAG: "orders",
        WHAT_TAG: "reverify orders__n1",
    }


def test_retention_runs_say_whether_they_delete():
    dry = run_of("retention", {KIND_TAG: "maintenance"}, selection=None)
    assert fleet_tags(dry) == {WHAT_TAG: "retention (dry run: plan only)"}
    config = retention_run_config(dry_run=False).to_config_dict()
    assert fleet_tags(run_of("retention", {}, config, selection=None)) == {
        KIND_TAG: "maintenance",
        WHAT_TAG: "retention (deletes what expired)",
    }


def test_fleet_check_runs_are_named_as_such_and_a_what_tag_already_set_is_kept():
    after_run = run_of("check_freshness", {KIND_TAG: "checks"}, selection=None)
    assert fleet_tags(after_run) == {WHAT_TAG: "fleet checks"}
    named = run_of("restore_drill", {KIND_TAG: "drill", INSTANCE_TAG: "orders", WHAT_TAG: "mine"}, selection=None)
    assert fleet_tags(named) == {}


def test_every_job_of_the_deployment_declares_its_kind():
    """The queue's tag limits and the run feed's filters see every job by its kind: a PITR base
    backup counts against the backups at once, a PITR drill against the drills."""
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.settings import Settings
    from toygres_pipelines.shared.tags import BACKUP_KIND, CHECKS_KIND, DRILL_KIND, MAINTENANCE_KIND, RESTORE_KIND

    kinds = {BACKUP_KIND, CHECKS_KIND, DRILL_KIND, MAINTENANCE_KIND, RESTORE_KIND}
    jobs = list(domain_definitions(Settings()).jobs or [])
    untagged = {job.name: (job.tags or {}).get(KIND_TAG) for job in jobs if (job.tags or {}).get(KIND_TAG) not in kinds}
    assert len(jobs) > 10
    assert untagged == {}
