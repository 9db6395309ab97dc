"""Request -> run started, through the daemon: how long a CMS request waits before its run starts.

    source <state>/dev.env        # a running `make dev` (the chart's topology: daemon, webserver, code server)
    .venv/bin/python bench/request_latency.py [--requests 20] [--source pagila-demo] [--json]

Inserts backup requests of the source instance into the CMS (what `toygres request-backup`
does), one at a time, and reads from the Dagster instance when each request's run was created
(the request sensor's tick + the run coordinator) and when it started (dequeued by the daemon,
its run worker up), and from the run's events where the time went (queued by the run coordinator,
dequeued: RUN_STARTING). The next request is inserted once the previous run ended, so the fleet's
one-run-per-instance limit never queues a run behind another: the figure is the path's own.
Nothing here asserts a threshold: read the numbers (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Sample:
    to_run_created: float  # CMS insert -> the run exists (the listener's launch, else the sensor's tick)
    to_run_started: float  # CMS insert -> the run started (+ dequeue + run worker launch)
    # where the time went, from the run's own events (seconds after the insert; None: no such event)
    to_run_queued: float | None = None  # RUN_ENQUEUED: the run coordinator accepted it
    to_run_starting: float | None = None  # RUN_STARTING: dequeued, the launcher starts the run worker
    # the run worker's process is up (interpreter, dagster, the instance): its "Started process" event;
    # from there to RUN_START it loads the code location and plans the run
    to_process_started: float | None = None


def event_times(instance, run_id: str, inserted: float) -> dict[str, float | None]:
    """Seconds from the insert to the run's RUN_ENQUEUED and RUN_STARTING events and its run
    worker's "Started process for run" engine event."""
    import dagster as dg

    wanted = {dg.DagsterEventType.RUN_ENQUEUED: "to_run_queued", dg.DagsterEventType.RUN_STARTING: "to_run_starting"}
    times: dict[str, float | None] = dict.fromkeys([*wanted.values(), "to_process_started"])
    of_type = {*wanted, dg.DagsterEventType.ENGINE_EVENT}
    for record in instance.get_records_for_run(run_id, of_type=of_type).records:
        event = record.event_log_entry
        if event.dagster_event is None:
            continue
        if event.dagster_event.event_type in wanted:
            key = wanted[event.dagster_event.event_type]
        elif (event.dagster_event.message or "").startswith("Started process for run"):
            key = "to_process_started"
        else:
            continue
        if times[key] is None:
            times[key] = event.timestamp - inserted
    return times


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p95 of 20 samples is the 19th smallest)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-fraction * len(ordered) // 1))))
    return ordered[rank - 1]


def summary(samples: list[Sample]) -> dict[str, float | int]:
    created = [s.to_run_created for s in samples]
    started = [s.to_run_started for s in samples]
    queued = [s.to_run_queued for s in samples if s.to_run_queued is not None]
    starting = [s.to_run_starting for s in samples if s.to_run_starting is not None]
    process = [s.to_process_started for s in samples if s.to_process_started is not None]
    steps = {}
    if queued and starting and len(queued) == len(starting) == len(samples):
        steps = {
            "created_to_queued_p50": round(
                statistics.median(q - s.to_run_created for q, s in zip(queued, samples, strict=True)), 2
            ),
            "queued_to_starting_p50": round(statistics.median(b - a for a, b in zip(queued, starting, strict=True)), 2),
            "starting_to_started_p50": round(
                statistics.median(s.to_run_started - b for b, s in zip(starting, samples, strict=True)), 2
            ),
        }
    if starting and len(process) == len(starting) == len(samples):
        steps |= {
            "starting_to_process_p50": round(
                statistics.median(p - b for b, p in zip(starting, process, strict=True)), 2
            ),
            "process_to_started_p50": round(
                statistics.median(s.to_run_started - p for p, s in zip(process, samples, strict=True)), 2
            ),
        }
    return {
        "requests": len(samples),
        "to_run_created_p50": round(statistics.median(created), 2),
        "to_run_created_p95": round(percentile(created, 0.95), 2),
        "to_run_started_p50": round(statistics.median(started), 2),
        "to_run_started_p95": round(percentile(started, 0.95), 2),
        "to_run_started_max": round(max(started), 2),
        **steps,
    }


def measure_one(cms, instance, source: str) -> Sample:
    import dagster as dg

    from records.requests import ImageRequestFields
    from toygres_pipelines.shared.tags import REQUEST_ID_TAG

    name = f"{source}__latency-{uuid.uuid4().hex[:10]}"
    inserted = time.time()
    request = cms.requests.create(ImageRequestFields(image_name=name, source_instance=source))
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        records = instance.get_run_records(dg.RunsFilter(tags={REQUEST_ID_TAG: str(request.id)}), limit=1)
        if records and records[0].dagster_run.is_finished:
            record = records[0]
            if record.start_time is None:
                raise RuntimeError(f"run {record.dagster_run.run_id} of {name} ended without starting")
            return Sample(
                to_run_created=record.create_timestamp.timestamp() - inserted,
                to_run_started=record.start_time - inserted,
                **event_times(instance, record.dagster_run.run_id, inserted),
            )
        time.sleep(0.5)
    raise RuntimeError(f"request {request.id} ({name}): no finished run after {RUN_TIMEOUT_SECONDS} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--source", default="pagila-demo", help="the running instance to back up")
    parser.add_argument("--json", action="store_true", help="print the summary and the samples as JSON")
    args = parser.parse_args(argv)

    import dagster as dg

    from resources.cms import CMSResource

    if not os.environ.get("DAGSTER_HOME") or not os.environ.get("TOYGRES_CMS_DSN"):
        parser.error("source the running stack's dev.env first (DAGSTER_HOME, TOYGRES_CMS_DSN)")
    cms = CMSResource(dsn=os.environ["TOYGRES_CMS_DSN"], encryption_key=os.environ["TOYGRES_ENCRYPTION_KEY"])
    samples = []
    with dg.DagsterInstance.get() as instance:
        for n in range(args.requests):
            samples.append(measure_one(cms, instance, args.source))
            if not args.json:
                s = samples[-1]
                print(
                    f"{n + 1:2}: run created {s.to_run_created:6.2f} s, started {s.to_run_started:6.2f} s", flush=True
                )
    result = summary(samples)
    if args.json:
        print(json.dumps({**result, "samples": [asdict(s) for s in samples]}, indent=2))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
