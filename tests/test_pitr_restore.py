"""Base backups and restores to a point in time on the real stack (docs/pitr.md)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from records import InstanceRef, InstanceState, ValidationFailed
from records.wal import BaseBackupState
from tests.test_pitr_archiving import archived, archived_segments, slot_active, switch_wal, wait_for  # noqa: F401
from toygres_pipelines.dev.demo import register_running
from toygres_pipelines.drills.pitr_drill import pitr_drill_run_config
from toygres_pipelines.pitr.base_backups import take_base_backup
from toygres_pipelines.pitr.restore import restore_to_time
from toygres_pipelines.pitr.window import window_of
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_form_run_config


def commit(dsn: str, label: str):
    """Insert a row; returns the server's clock after its commit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marks (label text PRIMARY KEY)")
        conn.execute("INSERT INTO marks VALUES (%s)", [label])
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def labels(platform, ref: InstanceRef) -> set[str]:
    endpoints = platform.endpoints(ref)
    dsn = psycopg.conninfo.make_conninfo(
        host=endpoints.host,
        port=endpoints.port,
        user="postgres",
        password=platform.read_instance_password(ref).get_secret_value(),
    )
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute("SELECT label FROM marks")}


@pytest.fixture
def backed_up(cms, blob, platform, archived):  # noqa: F811
    ref, dsn, start = archived
    start()
    source = register_running(cms, platform, ref)
    commit(dsn, "before-base")
    backup = take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    return source, dsn, backup


def archived_until(cms, blob, source, moment) -> None:
    def covered():
        state = window_of(cms, blob, source)
        return state.window is not None and state.window.latest >= moment

    wait_for(covered, f"the archive to cover {moment}")


def test_a_base_backup_is_verified_and_catalogued_with_its_start_segment(cms, blob, backed_up):
    source, _, backup = backed_up
    assert backup.state is BaseBackupState.ready and backup.kind == "base"
    assert backup.start_segment and backup.consistent_at and backup.sha256
    assert blob.stored_size(f"{backup.blob_path}/base.tar.zst") == backup.size_bytes
    assert [b.id for b in cms.base_backups.list(source.id)] == [backup.id]


def test_a_restore_to_t_has_the_rows_committed_before_t_and_none_after(cms, blob, platform, backed_up):
    source, dsn, backup = backed_up
    commit(dsn, "before-t")
    target = commit(dsn, "marker")  # the clock after that commit
    after = commit(dsn, "after-t")
    switch_wal(dsn)
    archived_until(cms, blob, source, after)
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="pitr-at-t", dns_label="pitr-at-t",
        target_time=target,
    )  # fmt: skip
    try:
        assert restored.state is InstanceState.running
        found = labels(platform, InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))
        assert {"before-base", "before-t", "marker"} <= found
        assert "after-t" not in found
    finally:
        platform.delete_instance(InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))


def test_a_target_after_the_archives_last_transaction_restores_everything_archived(cms, blob, platform, backed_up):
    """PostgreSQL stops a time-targeted replay that finds no transaction after the target
    ("recovery ended before configured recovery target was reached"); inside the window the
    archive holds every commit before the target, so its end is the state at the target."""
    source, dsn, backup = backed_up
    moment = commit(dsn, "last")
    archived_until(cms, blob, source, moment)
    window = window_of(cms, blob, source).window
    assert window is not None and window.latest >= moment
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="pitr-at-end", dns_label="pitr-at-end",
        target_time=window.latest,
    )  # fmt: skip
    try:
        assert restored.state is InstanceState.running
        found = labels(platform, InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))
        assert {"before-base", "last"} <= found
    finally:
        platform.delete_instance(InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))


def test_targets_outside_the_window_are_refused_naming_it_before_anything_exists(cms, blob, platform, backed_up):
    source, dsn, backup = backed_up
    moment = commit(dsn, "x")
    archived_until(cms, blob, source, moment)
    window = window_of(cms, blob, source).window
    assert window is not None
    before = cms.instances.list()
    for target in (backup.consistent_at - timedelta(seconds=5), window.latest + timedelta(hours=1)):
        with pytest.raises(ValidationFailed) as refused:
            restore_to_time(
                cms, blob, platform, source_instance=source.k8s_name, name="too-far", dns_label="too-far",
                target_time=target,
            )  # fmt: skip
        assert refused.value.field == "target_time"
        assert window.earliest.isoformat() in str(refused.value)
    with pytest.raises(ValidationFailed) as upgrade:
        restore_to_time(
            cms, blob, platform, source_instance=source.k8s_name, name="newer", dns_label="newer-major",
            target_time=None, postgres_version="16",
        )  # fmt: skip
    assert upgrade.value.field == "postgres_version" and "keeps the major of its base backup (15)" in str(upgrade.value)
    assert cms.instances.list() == before
    assert not any(r.k8s_name.startswith("too-far") for r in platform.wal_archivers())


def test_a_restore_across_a_deleted_segment_is_refused(cms, blob, platform, backed_up):
    source, dsn, backup = backed_up
    names = [switch_wal(dsn) for _ in range(3)]
    wait_for(lambda: any(s.segment == names[-1] and not s.partial for s in archived_segments(blob, source)), "archived")
    middle = next(s for s in archived_segments(blob, source) if s.segment == names[1] and not s.partial)
    blob._container.delete_blob(middle.blob_name)
    with pytest.raises(ValidationFailed) as refused:
        restore_to_time(
            cms, blob, platform, source_instance=source.k8s_name, name="gap", dns_label="gapped", target_time=None
        )
    assert f"segments missing between {names[0]} and {names[2]}" in str(refused.value)


def test_a_restored_instance_archives_into_its_own_prefix(cms, blob, platform, backed_up):
    from resources.platform.base import WalArchiverSpec
    from resources.wal_archive import list_timelines

    source, dsn, backup = backed_up
    moment = commit(dsn, "latest-row")
    switch_wal(dsn)
    archived_until(cms, blob, source, moment)
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="pitr-latest", dns_label="pitr-latest",
        target_time=None,
    )  # fmt: skip
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    try:
        assert "latest-row" in labels(platform, ref)
        platform.ensure_wal_archiver(
            WalArchiverSpec(instance=ref, container_url=blob.container_url, blob_sas=blob.container_write_token(3600))
        )
        timelines = wait_for(lambda: list_timelines(blob, ref.namespace, ref.k8s_name), "the restored instance's WAL")
        source_timelines = list_timelines(blob, source.namespace, source.k8s_name)
        # The same system (a physical copy), a new timeline (promoted), its own prefix.
        assert timelines[0].system_identifier == source_timelines[0].system_identifier
        assert timelines[0].timeline == source_timelines[0].timeline + 1
        assert all(s.blob_name.startswith(f"wal/{ref.namespace}/{ref.k8s_name}/") for s in timelines[0].segments)
    finally:
        platform.remove_wal_archiver(ref)
        platform.delete_instance(ref)


def test_a_deleted_segment_turns_wal_archive_continuous_red(cms, blob, platform, backed_up):
    import dagster as dg

    from toygres_pipelines.pitr.checks import FLEET, check_wal_archives, wal_archive_continuous, wal_archive_fresh_check
    from toygres_pipelines.pitr.settings import PitrSettings

    wal_archive_fresh = wal_archive_fresh_check(PitrSettings())
    source, dsn, backup = backed_up
    defs = dg.Definitions(
        assets=[dg.AssetSpec(FLEET)],
        asset_checks=[wal_archive_fresh, wal_archive_continuous],
        jobs=[check_wal_archives],
        resources={"cms": cms, "blob": blob, "platform": platform},
    )

    def evaluate(check):
        result = defs.resolve_job_def("check_wal_archives").execute_in_process(instance=dg.DagsterInstance.ephemeral())
        found = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return found[check.check_key.name]

    names = [switch_wal(dsn) for _ in range(3)]
    wait_for(lambda: any(s.segment == names[-1] and not s.partial for s in archived_segments(blob, source)), "archived")
    assert evaluate(wal_archive_continuous).passed
    assert evaluate(wal_archive_fresh).passed
    middle = next(s for s in archived_segments(blob, source) if s.segment == names[1] and not s.partial)
    blob._container.delete_blob(middle.blob_name)
    red = evaluate(wal_archive_continuous)
    assert not red.passed and red.severity is dg.AssetCheckSeverity.ERROR
    assert f"segments missing between {names[0]} and {names[2]}" in red.description


def test_retention_never_deletes_wal_a_kept_base_backup_needs(cms, blob, platform, backed_up):
    from records.wal import segment_number
    from toygres_pipelines.pitr.retention import apply_wal_retention

    source, dsn, first = backed_up
    between = [switch_wal(dsn) for _ in range(2)]
    second = take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    after = switch_wal(dsn)
    wait_for(lambda: any(s.segment == after and not s.partial for s in archived_segments(blob, source)), "archived")

    # Both base backups kept: every segment since the first one's start stays, older ones go.
    start = segment_number(first.start_segment)
    before = {s.blob_name for s in archived_segments(blob, source) if s.number >= start}
    apply_wal_retention(cms, blob, keep=2, log=print)
    assert {s.blob_name for s in archived_segments(blob, source)} == before

    # Only the newest kept: the older base backup and the WAL before the newer one's start go.
    outcome = apply_wal_retention(cms, blob, keep=1, log=print)
    assert outcome.failed == {}
    left = archived_segments(blob, source)
    assert min(s.number for s in left) == segment_number(second.start_segment)
    assert all(
        name not in {s.segment for s in left}
        for name in between
        if segment_number(name) < segment_number(second.start_segment)
    )
    assert [b.id for b in cms.base_backups.list(source.id)] == [second.id]
    assert first.id not in [b.id for b in cms.base_backups.list(source.id)]
    # What is left still restores.
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="after-ret", dns_label="after-ret", target_time=None
    )
    platform.delete_instance(InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))


def test_pitr_status_shows_the_window_and_the_lag(cms, blob, platform, backed_up, monkeypatch, capsys):
    import json

    from tests.helpers import cli_runner
    from toygres_pipelines import cli

    source, dsn, backup = backed_up
    moment = commit(dsn, "status")
    archived_until(cms, blob, source, moment)
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.setenv("TOYGRES_BLOB_CONNECTION_STRING", blob.connection_string)
    monkeypatch.setenv("TOYGRES_BLOB_CONTAINER", blob.container)
    monkeypatch.setenv("TOYGRES_STATE_DIR", platform.state_dir)
    invoke = cli_runner(capsys)
    code, out, err = invoke("pitr-status", "--json")
    assert code == 0, err
    [row] = [r for r in json.loads(out) if r["instance"] == f"default/{source.k8s_name}"]
    assert row["earliest"] == backup.consistent_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert row["latest"] is not None and row["lag_seconds"] is not None and row["base_backups"] == 1
    assert row["problems"] == []

    # `status` and `images` show the same window and the lag; `images` the base backups with their kind.
    code, out, err = invoke("status", "--json")
    [status] = [r for r in json.loads(out) if r["instance"] == source.k8s_name]
    assert status["pitr_earliest"] == row["earliest"]
    assert status["pitr_latest"] is not None and status["archive_lag_seconds"] is not None
    code, out, err = invoke("status")
    assert "PITR WINDOW" in out and "ARCHIVE LAG (S)" in out and row["earliest"] in out
    code, out, err = invoke("images")
    assert code == 0, err
    [line] = [line for line in out.splitlines() if str(backup.id) in line]
    assert " base " in f" {line} " and source.k8s_name in line and row["earliest"] in line

    platform.remove_wal_archiver(InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace))
    code, out, _ = invoke("pitr-status")
    assert code == 4 and "archiver" in out


def test_a_pitr_drill_restores_inside_the_window_checks_and_leaves_nothing(cms, blob, platform, backed_up):
    from toygres_pipelines.drills.pitr_drill import pitr_drill

    source, dsn, backup = backed_up
    for label in ("d1", "d2", "d3"):
        moment = commit(dsn, label)
    archived_until(cms, blob, source, moment)
    result = pitr_drill(cms, blob, platform, source, log=print)
    assert result.passed, result.reason
    assert result.rto_seconds and result.rto_seconds > 0
    assert result.replayed_at is None or result.replayed_at <= result.target_time
    scratch = cms.instances.find(result.scratch)
    assert scratch is not None and scratch.state is InstanceState.deleted
    assert not platform.instance_exists(InstanceRef(k8s_name=scratch.k8s_name, namespace=scratch.namespace))


def test_restore_instance_with_target_time_restores_to_that_second(cms, blob, platform, backed_up):
    """The restore_instance job (launchpad, request sensor, CLI) takes target_time: source_image_id
    names a base backup, and the same rows-before/after rule holds."""
    import dagster as dg

    from toygres_pipelines.restores.jobs import restore_instance

    source, dsn, backup = backed_up
    commit(dsn, "before-t")
    target = commit(dsn, "marker")
    after = commit(dsn, "after-t")
    switch_wal(dsn)
    archived_until(cms, blob, source, after)

    def run(**config):
        return restore_instance.execute_in_process(
            run_config=restore_form_run_config(RestoreConfig.model_construct(
                name="via-job", dns_label="via-job-pitr", storage_size_gb=1, ready_timeout_seconds=60,
                source_image_id=str(backup.id), **config)),
            resources={"cms": cms, "blob": blob, "platform": platform},
            raise_on_error=False,
            instance=dg.DagsterInstance.ephemeral(),
        )  # fmt: skip

    refused = run(target_time=(target + timedelta(hours=1)).isoformat())
    assert not refused.success and "is outside the recoverable window" in helpers_failure(refused)
    assert cms.instances.find("via-job") is None and not [i for i in cms.instances.list() if i.user_name == "via-job"]

    result = run(target_time=target.isoformat())
    assert result.success, helpers_failure(result)
    [restored] = [i for i in cms.instances.list([InstanceState.running]) if i.user_name == "via-job"]
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    try:
        found = labels(platform, ref)
        assert {"before-t", "marker"} <= found and "after-t" not in found
        assert restored.tags["pitr_base_backup"] == str(backup.id)
    finally:
        platform.delete_instance(ref)


def helpers_failure(result) -> str:
    from tests.helpers import failure_text

    return failure_text(result)


def test_retention_never_deletes_the_base_backup_or_wal_a_running_restore_planned_from(
    cms, blob, platform, backed_up, monkeypatch
):
    """Retention runs exactly between the restore's plan and its replay (a deterministic hook):
    the base backup the restore holds and the WAL from its start stay until the restore ends."""
    from records.wal import segment_number
    from toygres_pipelines.pitr import restore as restore_module
    from toygres_pipelines.pitr.retention import apply_wal_retention

    source, dsn, first = backed_up
    target = commit(dsn, "between")
    switch_wal(dsn)
    second = take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    archived_until(cms, blob, source, target)
    outcomes = []
    real_run_pitr_job = restore_module.run_pitr_job

    def retention_then_replay(*args, **kwargs):
        outcomes.append(apply_wal_retention(cms, blob, keep=1, log=print))
        return real_run_pitr_job(*args, **kwargs)

    monkeypatch.setattr(restore_module, "run_pitr_job", retention_then_replay)
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="held", dns_label="held", target_time=target
    )
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    assert outcomes and outcomes[0].failed == {}
    assert restored.state is InstanceState.running and "between" in labels(platform, ref)
    assert [b.id for b in cms.base_backups.list(source.id)] == [first.id, second.id]

    # The restore ended: the hold is gone, the next retention removes the older base backup and its WAL.
    monkeypatch.setattr(restore_module, "run_pitr_job", real_run_pitr_job)
    assert apply_wal_retention(cms, blob, keep=1, log=print).failed == {}
    assert [b.id for b in cms.base_backups.list(source.id)] == [second.id]
    assert min(s.number for s in archived_segments(blob, source)) == segment_number(second.start_segment)
    platform.delete_instance(ref)


@pytest.mark.parametrize("decoy", [False, True], ids=["plain", "behind-a-decoy-catalogue-view"])
def test_a_source_with_a_tablespace_is_refused_naming_the_reason_not_backed_up(cms, blob, platform, archived, decoy):  # noqa: F811
    """A plain-format copy of a server with tablespaces cannot be restored into one volume: the base
    backup fails naming the tablespace instead of becoming a `ready` backup that restores nothing.
    The tenant's own view named pg_tablespace, ahead of pg_catalog on its search_path, hides nothing."""
    from resources.platform.base import JobFailed

    ref, dsn, start = archived
    start()
    source = register_running(cms, platform, ref)
    with psycopg.connect(dsn, autocommit=True) as conn:
        data_directory = Path(conn.execute("SHOW data_directory").fetchone()[0])
        # Beside the data directory: a path the server's user reaches, owned by it like a tablespace must be.
        location = data_directory.parent / f"tablespace-{data_directory.name}"
        location.mkdir()
        owner = data_directory.stat()
        os.chown(location, owner.st_uid, owner.st_gid)
        conn.execute(psycopg.sql.SQL("CREATE TABLESPACE tenant_space LOCATION {}").format(str(location)))
        if decoy:
            conn.execute("CREATE SCHEMA decoy")
            conn.execute("CREATE VIEW decoy.pg_tablespace AS SELECT * FROM pg_catalog.pg_tablespace WHERE false")
            conn.execute("ALTER DATABASE postgres SET search_path = decoy, pg_catalog")
    with pytest.raises(JobFailed, match=r"ERROR: the source has tablespaces \(tenant_space\)"):
        take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    [row] = cms.base_backups.list(source.id, states=list(BaseBackupState))
    assert row.state is BaseBackupState.failed and "tenant_space" in (row.reason or "")
    assert cms.base_backups.list(source.id) == []


def test_a_restore_whose_base_backup_retention_deleted_after_planning_is_refused_before_any_download(
    cms, blob, platform, backed_up, monkeypatch
):
    """The other order: retention commits between the plan and the hold. The hold sees the base
    backup deleted and refuses, naming the field, before any replay; the instance row is failed."""
    from toygres_pipelines.pitr import restore as restore_module
    from toygres_pipelines.pitr.retention import apply_wal_retention

    source, dsn, first = backed_up
    target = commit(dsn, "between")
    switch_wal(dsn)
    take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    archived_until(cms, blob, source, target)
    real_plan_recovery = restore_module.plan_recovery
    replays = []

    def plan_then_retention(*args, **kwargs):
        planned = real_plan_recovery(*args, **kwargs)
        assert apply_wal_retention(cms, blob, keep=1, log=print).plans[f"{source.namespace}/{source.k8s_name}"]
        return planned

    monkeypatch.setattr(restore_module, "plan_recovery", plan_then_retention)
    monkeypatch.setattr(restore_module, "run_pitr_job", lambda *args, **kwargs: replays.append(args))
    with pytest.raises(ValidationFailed, match=f"target_time.*base backup {first.id} is deleted"):
        restore_to_time(
            cms, blob, platform, source_instance=source.k8s_name, name="late", dns_label="late", target_time=target
        )
    assert replays == []
    [late] = [i for i in cms.instances.list() if i.user_name == "late"]
    assert late.state is InstanceState.failed


def run_pitr_drill(cms, blob, platform, source, instance):
    from toygres_pipelines.drills.pitr_drill import pitr_drill_job

    return pitr_drill_job.execute_in_process(
        run_config=pitr_drill_run_config(source.k8s_name),
        resources={"cms": cms, "blob": blob, "platform": platform},
        instance=instance,
        raise_on_error=False,
    )


def pitr_check_evaluations(instance) -> list:
    import dagster as dg

    from toygres_pipelines.pitr.checks import PITR_RESTORABLE_CHECK

    records = instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION), ascending=True
    )
    found = [r.event_log_entry.dagster_event.event_specific_data for r in records]
    return [e for e in found if e.check_name == PITR_RESTORABLE_CHECK]


def test_a_pitr_drill_is_recorded_in_the_cms_and_shown_by_the_fleet_check(cms, blob, platform, backed_up):
    """Result, target time, replayed point and RTO in toygres_cms.pitr_drills; the drill reports
    `pitr_restorable` on the fleet asset, and executing the check reports the same from the CMS."""
    import dagster as dg

    from records.drills import DrillResult
    from toygres_pipelines.pitr.checks import FLEET, pitr_restorable

    source, dsn, backup = backed_up
    for label in ("r1", "r2"):
        moment = commit(dsn, label)
    archived_until(cms, blob, source, moment)
    # The archive stops changing: a partial segment re-uploaded between the drill's plan and its
    # download fails the restore's sha256 check (a known race of active archives, docs/pitr.md).
    platform.remove_wal_archiver(InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace))
    instance = dg.DagsterInstance.ephemeral()
    started = datetime.now(UTC)
    result = run_pitr_drill(cms, blob, platform, source, instance)
    assert result.success
    [row] = cms.pitr_drills.list(source_instance_id=source.id)
    assert row.result is DrillResult.passed and row.run_id == result.run_id and row.base_backup_id == backup.id
    # inside the window the drill planned from: the archive covers past `moment` by the time the
    # archiver stops (how far depends on the machine's load), the middle of the window may too
    window = window_of(cms, blob, source).window
    assert row.target_time is not None and backup.consistent_at <= row.target_time <= window.latest
    assert row.replayed_at is None or row.replayed_at <= row.target_time
    assert row.rto_seconds is not None and 0 < row.rto_seconds <= (datetime.now(UTC) - started).total_seconds()
    assert row.scratch and row.scratch.startswith("pitr-drill-") and row.finished_at is not None

    [evaluation] = pitr_check_evaluations(instance)
    assert evaluation.passed and evaluation.asset_key == FLEET
    assert evaluation.metadata["max_rto_seconds"].value == pytest.approx(row.rto_seconds)
    [shown] = evaluation.metadata["instances"].value
    assert shown["instance"] == f"default/{source.k8s_name}" and shown["result"] == "passed"

    defs = dg.Definitions(
        assets=[dg.AssetSpec(FLEET)],
        asset_checks=[pitr_restorable],
        jobs=[dg.define_asset_job("evaluate", selection=dg.AssetSelection.checks(pitr_restorable))],
        resources={"cms": cms},
    )
    again = defs.resolve_job_def("evaluate").execute_in_process(instance=dg.DagsterInstance.ephemeral())
    [executed] = again.get_asset_check_evaluations()
    assert executed.passed and executed.metadata["max_rto_seconds"].value == pytest.approx(row.rto_seconds)


def test_a_failed_pitr_drill_is_recorded_and_turns_the_fleet_check_red(cms, blob, platform, archived):  # noqa: F811
    import dagster as dg

    from records.drills import DrillResult

    ref, _, _ = archived
    source = register_running(cms, platform, ref)  # no base backup: no recoverable window
    instance = dg.DagsterInstance.ephemeral()
    result = run_pitr_drill(cms, blob, platform, source, instance)
    assert not result.success
    [row] = cms.pitr_drills.list(source_instance_id=source.id)
    assert row.result is DrillResult.failed and row.run_id == result.run_id
    assert row.reason and "no recoverable window" in row.reason and row.rto_seconds is None
    [evaluation] = pitr_check_evaluations(instance)
    assert not evaluation.passed and evaluation.severity is dg.AssetCheckSeverity.ERROR
    assert f"default/{source.k8s_name}" in (evaluation.description or "")


def test_a_restore_planned_while_the_archiver_reuploads_the_partial_still_replays_to_its_target(
    cms, blob, platform, backed_up, monkeypatch
):
    """The archiver uploads the partial segment again (the source kept writing) exactly between the
    restore's plan and its download (a deterministic hook): the restore downloads the partial it
    planned, not the newer one, and replays to its target (it once failed: sha256 mismatch)."""
    from toygres_pipelines.pitr import restore as restore_module

    source, dsn, backup = backed_up
    target = commit(dsn, "planned")
    after = commit(dsn, "after-t")  # a commit past the target in the planned WAL: replay stops there
    archived_until(cms, blob, source, after)
    real_run_pitr_job = restore_module.run_pitr_job
    planned_partials = []

    def reupload_then_replay(platform_, blob_, ref, plan, *args, **kwargs):
        [partial] = [s for s in plan.segments if ".partial" in s.blob]
        planned_partials.append(partial)
        commit(dsn, "after-plan")  # the source keeps writing into the same partial segment

        def reuploaded():
            return any(
                s.partial and s.segment == partial.segment and s.sha256 not in (None, partial.sha256)
                for s in archived_segments(blob, source)
            )

        wait_for(reuploaded, f"the archiver to upload {partial.segment}'s partial again")
        return real_run_pitr_job(platform_, blob_, ref, plan, *args, **kwargs)

    monkeypatch.setattr(restore_module, "run_pitr_job", reupload_then_replay)
    restored = restore_to_time(
        cms, blob, platform, source_instance=source.k8s_name, name="raced", dns_label="raced", target_time=target
    )
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    try:
        assert planned_partials, "the plan held no partial segment: the race was not exercised"
        assert restored.state is InstanceState.running
        found = labels(platform, ref)
        assert {"before-base", "planned"} <= found and not {"after-t", "after-plan"} & found
    finally:
        platform.delete_instance(ref)


def test_a_segment_changed_after_planning_fails_the_restore_with_3_and_leaves_no_instance(
    cms, blob, platform, backed_up, monkeypatch
):
    """The fetch role downloads segments several at a time: the one whose bytes are not the planned
    ones (another segment's, valid zstd) stops every download, exits 3 naming it, and nothing is
    handed to the serve role or left running."""
    from resources.platform.base import JobFailed
    from toygres_pipelines.pitr import restore as restore_module

    source, dsn, backup = backed_up
    for label in ("one", "two", "three", "four", "five"):
        commit(dsn, label)
        switch_wal(dsn)
    target = commit(dsn, "target")
    switch_wal(dsn)
    archived_until(cms, blob, source, target)
    real_run = restore_module.run_pitr_job

    def swap_a_segment_then_run(platform_, blob_, ref, plan, *args, **kwargs):
        victim, donor = plan.segments[2], plan.segments[1]
        blob._container.upload_blob(victim.blob, blob.read_bytes(donor.blob), overwrite=True)
        return real_run(platform_, blob_, ref, plan, *args, **kwargs)

    monkeypatch.setattr(restore_module, "run_pitr_job", swap_a_segment_then_run)
    with pytest.raises(JobFailed) as failed:
        restore_to_time(
            cms, blob, platform, source_instance=source.k8s_name, name="swapped", dns_label="swapped",
            target_time=target,
        )  # fmt: skip
    assert failed.value.result.reason == "exit code 3", failed.value
    assert "sha256 mismatch" in str(failed.value)
    [row] = [i for i in cms.instances.list() if i.user_name == "swapped"]
    assert row.state is InstanceState.failed


@pytest.fixture
def open_tmp():
    """A directory the job accounts can reach (pytest's tmp_path sits under a private one)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="toygres-held-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def hold_the_last_segment_until_replay(platform, tmp_path: Path, monkeypatch, when_replaying=lambda plan: None):
    """A platform whose azcopy holds the download of the restore's last planned segment until the
    serve role logs its replay start (`when_replaying(plan)` runs then, before the download goes on):
    a deterministic hook, the real azcopy then runs; 60 s without it fail. Returns the platform, the
    job's log function and the lines it logged."""
    from resources.platform.local import LocalPlatform
    from toygres_pipelines.pitr import restore as restore_module

    gate = tmp_path / "gate"
    gate.mkdir()
    gate.chmod(0o755)
    real = Path(platform.state_dir) / "bin" / "azcopy"
    wrapper = tmp_path / "azcopy"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        f"victim=$(cat {gate}/victim 2>/dev/null || true)\n"
        'if [[ -n "$victim" && " $* " == *"/${victim}"* ]]; then\n'
        "  deadline=$((SECONDS + 60))\n"
        f"  until [[ -e {gate}/open ]]; do ((SECONDS < deadline)) || exit 7; sleep 0.05; done\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    real_run = restore_module.run_pitr_job
    planned = []

    def run_holding_the_last_segment(platform_, blob_, ref, plan, *args, **kwargs):
        planned.append(plan)
        (gate / "victim").write_text(plan.segments[-1].blob.rsplit("/", 1)[1])
        return real_run(platform_, blob_, ref, plan, *args, **kwargs)

    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "replaying WAL to" in line:
            [plan] = planned
            when_replaying(plan)
            (gate / "open").touch()

    monkeypatch.setattr(restore_module, "run_pitr_job", run_holding_the_last_segment)
    return LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path=str(wrapper)), log, lines


def test_the_server_replays_while_the_last_segment_is_still_being_fetched(
    cms, blob, platform, backed_up, monkeypatch, open_tmp
):
    """The serve role starts its server once the base backup is extracted: the last planned
    segment's download is held until the serve role logs its replay start, and the restore still
    reaches its target (before the overlap the server waited for every segment: no replay ever
    began, and the held download failed)."""
    source, dsn, backup = backed_up
    for label in ("one", "two", "three"):
        commit(dsn, label)
        switch_wal(dsn)
    target = commit(dsn, "target")
    commit(dsn, "after-t")
    switch_wal(dsn)
    archived_until(cms, blob, source, target)
    local, log, lines = hold_the_last_segment_until_replay(platform, open_tmp, monkeypatch)
    restored = restore_to_time(
        cms, blob, local, source_instance=source.k8s_name, name="overlap", dns_label="overlap",
        target_time=target, log=log,
    )  # fmt: skip
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    try:
        replaying = next(i for i, line in enumerate(lines) if "replaying WAL to" in line)
        verified = next(i for i, line in enumerate(lines) if "verified and handed over" in line)
        assert replaying < verified, lines
        found = labels(local, ref)
        assert {"before-base", "three", "target"} <= found and "after-t" not in found
    finally:
        local.delete_instance(ref)


def test_a_segment_changed_after_replay_began_fails_with_3_and_never_promotes(
    cms, blob, platform, backed_up, monkeypatch, open_tmp
):
    """The last planned segment is swapped for another (valid zstd) once the server replays: the
    fetch role exits 3, the server's restore_command reports it as fatal (not as the end of the
    archive), nothing is promoted and no instance is left."""
    from resources.platform.base import JobFailed

    source, dsn, backup = backed_up
    for label in ("one", "two", "three"):
        commit(dsn, label)
        switch_wal(dsn)
    target = commit(dsn, "target")
    switch_wal(dsn)
    archived_until(cms, blob, source, target)

    def swap_the_last_segment(plan):
        victim, donor = plan.segments[-1], plan.segments[0]
        blob._container.upload_blob(victim.blob, blob.read_bytes(donor.blob), overwrite=True)

    local, log, lines = hold_the_last_segment_until_replay(platform, open_tmp, monkeypatch, swap_the_last_segment)
    with pytest.raises(JobFailed) as failed:
        restore_to_time(
            cms, blob, local, source_instance=source.k8s_name, name="late", dns_label="late",
            target_time=target, log=log,
        )  # fmt: skip
    assert any("replaying WAL to" in line for line in lines), lines
    assert failed.value.result.reason == "exit code 3", failed.value
    assert "sha256 mismatch" in str(failed.value)
    assert not any("promoted" in line for line in lines), lines
    [row] = [i for i in cms.instances.list() if i.user_name == "late"]
    assert row.state is InstanceState.failed
    assert not local.instance_exists(InstanceRef(k8s_name=row.k8s_name, namespace=row.namespace))
