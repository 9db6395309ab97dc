"""Quiet by default (issue 23): `make dev` prints one line per run event that matters (started,
succeeded, failed with the reason); the Dagster processes' full logs go to files. The feed reads
a real DagsterInstance where real runs executed."""

from __future__ import annotations

import subprocess

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from toygres_pipelines.dev import devstack
from toygres_pipelines.dev.run_feed import RunFeed
from toygres_pipelines.dev.topology import STORAGE_ENV, DagsterTopology
from toygres_pipelines.shared.tags import WHAT_TAG


@dg.op
def fine() -> None:
    pass


@dg.op
def broken() -> None:
    raise dg.Failure(description="source_instance: no instance 'nosuch' in the CMS")


@dg.job(tags={WHAT_TAG: "backup pagila-demo__ok"}, executor_def=dg.in_process_executor)
def good_job():
    fine()


@dg.job(tags={WHAT_TAG: "restore orders__n1 as copy"}, executor_def=dg.in_process_executor)
def bad_job():
    broken()


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def test_runs_that_existed_before_the_feed_are_not_announced(instance):
    dg.execute_job(dg.reconstructable(good_job), instance=instance).success  # noqa: B018
    assert RunFeed(instance).poll() == []


def test_a_run_s_start_success_and_failure_each_print_one_line_naming_the_run(instance):
    feed = RunFeed(instance)
    assert feed.poll() == []
    started = instance.add_run(
        DagsterRun(job_name="restore_drill", tags={WHAT_TAG: "drill orders__n1"}, status=DagsterRunStatus.STARTED)
    )
    assert feed.poll() == [f"run {started.run_id[:8]} drill orders__n1: started"]
    assert feed.poll() == []  # one line per event

    good = dg.execute_job(dg.reconstructable(good_job), instance=instance)
    bad = dg.execute_job(dg.reconstructable(bad_job), instance=instance, raise_on_error=False)
    lines = feed.poll()
    assert f"run {good.run_id[:8]} backup pagila-demo__ok: succeeded" in lines
    assert (
        f"run {bad.run_id[:8]} restore orders__n1 as copy: failed: source_instance: no instance 'nosuch' in the CMS"
        in lines
    )
    assert len(lines) == 2
    assert feed.poll() == []


def test_a_run_without_a_readable_name_is_named_by_its_job(instance):
    feed = RunFeed(instance)
    feed.poll()
    run = instance.add_run(DagsterRun(job_name="purge_failed_image_blobs", status=DagsterRunStatus.STARTED))
    assert feed.poll() == [f"run {run.run_id[:8]} purge_failed_image_blobs: started"]


def test_the_dev_stack_prints_the_feed_until_a_dagster_process_exits(instance, tmp_path):
    exited = subprocess.Popen(["true"])
    exited.wait()
    topology = DagsterTopology(
        home=tmp_path,
        workspace=tmp_path / "workspace.yaml",
        log_dir=tmp_path / "dagster-logs",
        dagster_env={"DAGSTER_HOME": str(tmp_path), **{name: "unused" for name in STORAGE_ENV}},
        code_env={},
        code_port=0,
        processes={"daemon": exited},
    )
    feed = RunFeed(instance)
    feed.poll()
    run = instance.add_run(
        DagsterRun(job_name="restore_drill", tags={WHAT_TAG: "drill x__y"}, status=DagsterRunStatus.STARTED)
    )
    printed: list[str] = []
    reason = devstack.wait_while_running(topology, feed, say=printed.append)
    assert printed == [f"run {run.run_id[:8]} drill x__y: started"]
    assert reason.startswith("the daemon exited with status 0")
