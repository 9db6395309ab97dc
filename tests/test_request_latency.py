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


def test_the_local_queue_dequeues_every_second():
    """A launched request waits at most a second in the queue (the chart's values: tests/kubernetes)."""
    import yaml

    from toygres_pipelines.dev.topology import LOCAL_INSTANCE

    config = yaml.safe_load(LOCAL_INSTANCE.read_text())["run_coordinator"]["config"]
    assert config["dequeue_interval_seconds"] == 1


def test_the_code_location_does_not_import_the_listeners_graphql_client():
    """Every run worker imports the code location: the request listener's client (gql) stays out of
    it (python -X importtime: the run worker's load is dagster itself, the CMS and blob clients,
    which its ops use; nothing else worth deferring)."""
    import subprocess
    import sys

    probe = (
        "import sys, toygres_pipelines.definitions;"
        " print(sorted(m for m in ('gql', 'dagster_graphql') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"
