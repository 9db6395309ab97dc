"""Orchestration overhead: how the bench reads it from a run's events, and what keeps it small."""

from __future__ import annotations

import dagster as dg
import pytest

from bench.overhead import Event, run_overhead


def test_every_job_runs_its_steps_in_the_run_worker_process():
    """One process per run, not one more per step: a step process re-imports the code location and
    set up the resources again (about 2 s of each backup run's overhead, docs/benchmarks.md)."""
    from toygres_pipelines.definitions import defs

    repository = defs.get_repository_def()
    jobs = repository.get_all_jobs()
    assert {"backup_image", "restore_instance", "retention"} <= {job.name for job in jobs}
    # the job the UI's Materialize button launches on the `image` asset is among them
    assert any(job.name.startswith("__ASSET_JOB") for job in jobs)
    executors = {job.name: job.executor_def.name for job in jobs}
    assert executors == {name: dg.in_process_executor.name for name in executors}


def events(*rows: tuple[str, float, str | None]) -> list[Event]:
    return [Event(kind=kind, at=at, step=step) for kind, at, step in rows]


def test_overhead_is_the_time_around_the_backup_step():
    run = run_overhead(
        events(
            ("RUN_STARTING", 100.0, None),
            ("RUN_START", 102.5, None),
            ("RESOURCE_INIT_STARTED", 102.75, "image"),
            ("STEP_START", 103.0, "image"),
            ("STEP_OUTPUT", 110.0, "image"),
            ("STEP_SUCCESS", 110.5, "image"),
            ("RUN_SUCCESS", 110.75, None),
        )
    )
    assert (run.before_step, run.after_step, run.seconds, run.launch) == (0.5, 0.25, 0.75, 2.5)
    assert [gap for _, gap in run.gaps] == [0.25, 0.25, 0.25]
    assert run.gaps[0][0].startswith("-> RESOURCE_INIT_STARTED")


def test_overhead_reads_events_in_time_order_and_only_the_backup_step():
    run = run_overhead(
        events(
            ("RUN_SUCCESS", 20.0, None),
            ("STEP_SUCCESS", 19.0, "image"),
            ("STEP_START", 12.0, "image"),
            ("STEP_START", 11.0, "other"),
            ("RUN_START", 10.0, None),
        )
    )
    assert (run.before_step, run.after_step, run.launch) == (2.0, 1.0, None)


def test_a_run_without_the_backup_step_is_refused_by_name():
    with pytest.raises(ValueError, match="no STEP_START event for step 'image'"):
        run_overhead(events(("RUN_START", 1.0, None), ("RUN_SUCCESS", 2.0, None)))


@pytest.mark.integration
def test_the_overhead_bench_measures_a_backup_run_launched_as_the_daemon_does():
    """bench/overhead.py end to end (its own embedded stack, one run): the run's step ran in the
    run worker (no step process was started) and the overhead is read from its events."""
    from bench.overhead import overhead_runs

    [run] = overhead_runs(1)
    assert run.launch is not None and run.launch > 0
    assert run.before_step >= 0 and run.after_step >= 0 and run.seconds == run.before_step + run.after_step
    labels = [label for label, _ in run.gaps]
    assert any("STEP_START" in label for label in labels)
    assert not any("STEP_WORKER" in label for label in labels), labels
