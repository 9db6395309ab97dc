"""Request -> run started in seconds (issue 23): the request sensors look as often as the daemon
evaluates sensors at all (Dagster's sensor loop runs at most every MIN_INTERVAL_LOOP_TIME
seconds), so a request waits for the next loop, never for a longer interval of ours.
bench/request_latency.py measures the whole path through the daemon."""

from __future__ import annotations

import pytest
from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

from toygres_pipelines.definitions import defs


@pytest.mark.parametrize("name", ["image_requests_sensor", "restore_requests_sensor"])
def test_a_request_sensor_looks_every_daemon_loop_by_default(name):
    sensor = defs.get_sensor_def(name)
    assert sensor.minimum_interval_seconds is not None
    assert sensor.minimum_interval_seconds <= MIN_INTERVAL_LOOP_TIME
