"""What `make dev` prints while it runs: one line per run event that matters (started, succeeded,
failed with the reason, canceled), read from the Dagster instance. The Dagster processes' own
logs (sensor ticks, gRPC, the webserver) go to files in the state dir (topology.py)."""

from __future__ import annotations

import dagster as dg
from dagster._core.events import DagsterEventType
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from toygres_pipelines.shared.tags import WHAT_TAG

ANNOUNCED = {
    DagsterRunStatus.STARTED: "started",
    DagsterRunStatus.SUCCESS: "succeeded",
    DagsterRunStatus.FAILURE: "failed",
    DagsterRunStatus.CANCELED: "canceled",
}
RECENT_RUNS = 200  # more runs than change between two polls a second apart


class RunFeed:
    """Remembers the runs' statuses; each poll returns a line per status change since the last poll
    (runs that existed at the first poll are not announced)."""

    def __init__(self, instance: dg.DagsterInstance):
        self._instance = instance
        self._seen: dict[str, DagsterRunStatus] | None = None

    def poll(self) -> list[str]:
        runs = self._instance.get_runs(limit=RECENT_RUNS)
        if self._seen is None:
            self._seen = {run.run_id: run.status for run in runs}
            return []
        lines = []
        for run in reversed(runs):  # oldest first
            if self._seen.get(run.run_id) == run.status:
                continue
            self._seen[run.run_id] = run.status
            if run.status in ANNOUNCED:
                lines.append(self.line(run))
        return lines

    def line(self, run: DagsterRun) -> str:
        text = f"run {run.run_id[:8]} {run.tags.get(WHAT_TAG) or run.job_name}: {ANNOUNCED[run.status]}"
        if run.status is DagsterRunStatus.FAILURE:
            text += f": {self.failure_reason(run.run_id)}"
        return text

    def failure_reason(self, run_id: str) -> str:
        """The first failed step's own description (a dg.Failure's), else its error, else the run's."""
        for record in self._instance.get_records_for_run(run_id, of_type=DagsterEventType.STEP_FAILURE).records:
            event = record.event_log_entry.dagster_event
            data = event.step_failure_data if event else None
            if data is None:
                continue
            if data.user_failure_data and data.user_failure_data.description:
                return first_line(data.user_failure_data.description)
            if data.error:
                return first_line(data.error.message)
        for record in self._instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records:
            return first_line(record.event_log_entry.message or "")
        return "see the run in the UI"


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no reason given"
