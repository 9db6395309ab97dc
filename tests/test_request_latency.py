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


def test_the_bench_reports_nearest_rank_percentiles_of_both_figures():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "request_latency.py"
    spec = importlib.util.spec_from_file_location("bench_request_latency", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    samples = [bench.Sample(to_run_created=float(n), to_run_started=float(n) + 10) for n in range(1, 21)]
    assert bench.summary(samples) == {
        "requests": 20,
        "to_run_created_p50": 10.5,
        "to_run_created_p95": 19.0,
        "to_run_started_p50": 20.5,
        "to_run_started_p95": 29.0,
        "to_run_started_max": 30.0,
    }
