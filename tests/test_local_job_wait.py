"""The local platform's wait for a job's processes (resources/platform/local.py)."""

from __future__ import annotations

import collections
import subprocess
import threading

from resources.platform.local import _JobProcess, _wait_all


class EndsWhileLooked:
    """A process that is still running when first polled and has ended, successfully, by the next
    look: the moment a job's last process exits between two polls of the wait loop."""

    def __init__(self) -> None:
        self.polls = 0
        self.returncode: int | None = None

    def poll(self) -> int | None:
        self.polls += 1
        if self.polls > 1:
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("job", timeout or 0)


def test_a_job_whose_last_process_ends_between_two_polls_succeeds():
    """A loaded clean-clone run's restore failed with StopIteration: the loop looked for a running
    process to wait on right after the last one had ended."""
    reader = threading.Thread(target=lambda: None)
    reader.start()
    job = _JobProcess(EndsWhileLooked(), reader, collections.deque())  # type: ignore[arg-type]
    assert _wait_all([job], timeout=30, grace_seconds=1) == (0, None)
