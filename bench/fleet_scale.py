"""Fleet scale: the automation's ticks and the catalogue commands against a large CMS.

    .venv/bin/python bench/fleet_scale.py [--instances 2000] [--images 20000] [--repeat 3] [--json PATH]

Starts its own CMS PostgreSQL server (as the tests and `make dev` do), seeds it with a fleet in a
realistic mix of states (running, stopped, failed, deleted and restoring instances; ready,
deleted, failed, corrupt, deleting and creating images with their events; backup and restore
requests, a few pending or accepted), then times, against the real CMS resource:

    nightly_backups tick          the schedule's evaluation (one run request per running instance)
    <sensor> tick                 each sensor, with dg.build_sensor_context / build_run_status_sensor_context
    retention plan                what the retention job computes before it deletes anything
    toygres-pipelines images      the installed CLI (a process): the first page, the last page, and
                                  every image at once (--limit 0, what it printed before pages)

Each line shows the median seconds of --repeat evaluations (ticks that change the CMS, the
request sensors and the run-status sensors, are timed once: their first tick does the work) and
the rows the CMS read by sequential scans meanwhile (pg_stat_user_tables; a diagnostic, read
with EXPLAIN). Nothing here asserts a threshold: read the numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
import psycopg  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from resources.blob import BlobStorageResource  # noqa: E402
from resources.cms import CMSResource  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402

# The seeded fleet's "now" (rows under way changed moments ago) and the nightly tick being evaluated.
NOW = datetime.now(UTC).replace(microsecond=0)
NIGHTLY_AT = NOW
PENDING_PER_KIND = 20
ACCEPTED_PER_KIND = 30
# The ticks' platform: the local platform's request-time rules (nothing runs a job here).
RULES_ONLY = LocalPlatform(state_dir="/nonexistent/toygres-fleet-scale", azcopy_path="/bin/true")
# Never reached: no tick below touches blob storage (the rows it would clean up are in their grace period).
NO_STORAGE = BlobStorageResource(
    connection_string="DefaultEndpointsProtocol=http;AccountName=none;AccountKey=bm9uZQ==;"
    "BlobEndpoint=http://127.0.0.1:9/none;",
    container="none",
)


@dataclass
class Timing:
    operation: str
    seconds: float
    runs: int
    seq_scan_rows: dict[str, int]
    result: str


@dataclass
class Fleet:
    """What was seeded: counts by state, and what the ticks should see."""

    instances: dict[str, int]
    images: dict[str, int]
    image_requests: dict[str, int]
    restore_requests: dict[str, int]
    events: int


# ---- seeding -------------------------------------------------------------------------------------

INSTANCE_COLUMNS = (
    "id user_name k8s_name namespace postgres_version storage_size_gb use_load_balancer dns_name "
    "ip_connection_string dns_connection_string state image_type source_image_id run_id tags "
    "created_at updated_at retention_override"
).split()
IMAGE_COLUMNS = (
    "id name description source_instance_id source_k8s_name source_namespace blob_storage_url blob_container "
    "blob_path storage_size_gb postgres_version image_type backup_size_bytes backup_checksum state run_id "
    "error_message created_at updated_at ready_at deleted_at pinned"
).split()
EVENT_COLUMNS = "entity_type entity_id from_state to_state reason run_id created_at".split()
IMAGE_REQUEST_COLUMNS = "id image_name source_instance description state run_id reason created_at updated_at".split()
RESTORE_REQUEST_COLUMNS = (
    "id name dns_label source_image_id namespace storage_size_gb internal state instance_id run_id reason "
    "created_at updated_at"
).split()

# Paths through the state machines, newest state last (the first is the creation event).
IMAGE_PATHS = {
    "ready": ["creating", "ready"],
    "deleted": ["creating", "ready", "deleting", "deleted"],
    "failed": ["creating", "failed"],
    "corrupt": ["creating", "ready", "corrupt"],
    "deleting": ["creating", "ready", "deleting"],
    "creating": ["creating"],
}
INSTANCE_PATHS = {
    "running": ["creating", "running"],
    "stopped": ["creating", "running", "stopped"],
    "failed": ["creating", "failed"],
    "deleted": ["creating", "running", "deleting", "deleted"],
    "creating": ["creating"],
}
REQUEST_PATHS = {
    "succeeded": ["pending", "accepted", "succeeded"],
    "failed": ["pending", "accepted", "failed"],
    "rejected": ["pending", "rejected"],
    "accepted": ["pending", "accepted"],
    "pending": ["pending"],
}


def image_state(rng: random.Random, nights_ago: int) -> str:
    """Old nights are mostly deleted by retention; the rest ready, a few failed, corrupt or mid-deletion."""
    roll = rng.random()
    if nights_ago >= 8 and roll < 0.6:
        return "deleted"
    if roll < 0.06:
        return "failed"
    if roll < 0.062:
        return "corrupt"
    if roll < 0.063:
        return "deleting"
    return "ready"


def seed(dsn: str, instances: int, images: int, seed_value: int = 12) -> Fleet:
    """A fleet of `instances` running instances (plus stopped, failed, deleted and restoring ones)
    and `images` images of them, with their events and requests, written with COPY."""
    rng = random.Random(seed_value)
    rows: dict[str, list[tuple]] = {"instances": [], "images": [], "events": [], "ir": [], "rr": []}
    count: dict[str, dict[str, int]] = {"instances": {}, "images": {}, "ir": {}, "rr": {}}

    def events(kind: str, entity: uuid.UUID, path: list[str], at: datetime, run_id: str | None) -> None:
        for step, state in enumerate(path):
            previous = path[step - 1] if step else None
            rows["events"].append((kind, entity, previous, state, "seeded", run_id, at + timedelta(minutes=step)))

    def instance(n: int, state: str, source_image: uuid.UUID | None = None) -> tuple:
        name = f"fleet-{n:05d}"
        created = NOW - timedelta(days=400 - n % 300)
        updated = NOW - timedelta(seconds=5) if state == "creating" else created + timedelta(minutes=5)
        entity, run_id = uuid.uuid4(), str(uuid.uuid4())
        live = state in ("creating", "running")
        override = Jsonb({"keep_daily": 14}) if n % 20 == 0 and state == "running" else None
        row = (
            entity,
            name,
            name,
            ("default", "team-a", "team-b")[n % 3],
            "15",
            10,
            True,
            name if live else None,
            f"postgresql://postgres@10.0.{n // 250}.{n % 250}:5432/postgres" if state == "running" else None,
            f"postgresql://postgres@{name}.example:5432/postgres" if state == "running" else None,
            state,
            "stock",
            source_image,
            run_id,
            Jsonb({"request_key": str(uuid.uuid4())} if source_image else {}),
            created,
            updated,
            override,
        )
        rows["instances"].append(row)
        count["instances"][state] = count["instances"].get(state, 0) + 1
        events("instance", entity, INSTANCE_PATHS[state], created, run_id)
        return row

    running = [instance(n, "running") for n in range(instances)]
    extra = max(1, instances // 20)
    for n, state in enumerate(["stopped"] * extra + ["failed"] * extra + ["deleted"] * (2 * extra)):
        instance(instances + n, state)

    ready_images: list[tuple] = []
    per_instance, remainder = divmod(images, max(1, len(running)))
    creating_left = min(PENDING_PER_KIND, len(running))
    for index, source in enumerate(running):
        source_id, k8s_name, namespace = source[0], source[2], source[3]
        for nights_ago in range(per_instance + (1 if index < remainder else 0)):
            created = NIGHTLY_AT - timedelta(days=nights_ago + 1)
            state = image_state(rng, nights_ago)
            if nights_ago == 0 and creating_left:  # backups under way right now
                state, created, creating_left = "creating", NOW - timedelta(seconds=30), creating_left - 1
            entity, run_id = uuid.uuid4(), str(uuid.uuid4())
            ready_at = created + timedelta(minutes=3) if state in ("ready", "deleted", "corrupt", "deleting") else None
            row = (
                entity,
                f"{k8s_name}__nightly-{created:%Y%m%d}",
                f"nightly backup of {k8s_name}",
                source_id,
                k8s_name,
                namespace,
                "http://127.0.0.1:10000/devstoreaccount1",
                "toygres-images",
                f"images/{entity}",
                10,
                "15",
                "stock",
                rng.randint(1_000_000, 5_000_000_000) if ready_at else None,
                f"{rng.getrandbits(256):064x}" if ready_at else None,
                state,
                run_id,
                "pg_dump: connection refused" if state == "failed" else None,
                created,
                NOW - timedelta(seconds=30) if state == "creating" else created + timedelta(minutes=5),
                ready_at,
                created + timedelta(days=9) if state == "deleted" else None,
                state == "ready" and rng.random() < 0.01,
            )
            rows["images"].append(row)
            count["images"][state] = count["images"].get(state, 0) + 1
            events("image", entity, IMAGE_PATHS[state], created, run_id)
            if state == "ready":
                ready_images.append(row)

    # Restores under way: creating instances made from ready images.
    for n in range(min(10, len(ready_images))):
        instance(instances + 4 * extra + n, "creating", source_image=ready_images[n][0])

    def request(kind: str, state: str, n: int, values: tuple) -> None:
        entity = uuid.uuid4()
        created = NOW - timedelta(days=n % 200, minutes=n % 60) if state not in ("pending", "accepted") else NOW
        run_id = None if state in ("pending", "rejected") or (state == "accepted" and n % 3) else str(uuid.uuid4())
        reason = "seeded" if state in ("rejected", "failed") else None
        rows[kind].append(
            (entity, *values, state, *((None,) if kind == "rr" else ()), run_id, reason, created, created)
        )
        count[kind][state] = count[kind].get(state, 0) + 1
        events("image_request" if kind == "ir" else "restore_request", entity, REQUEST_PATHS[state], created, run_id)

    def mix(total: int) -> list[str]:
        settled = max(0, total - PENDING_PER_KIND - ACCEPTED_PER_KIND)
        failed = settled // 40
        return (
            ["pending"] * PENDING_PER_KIND
            + ["accepted"] * ACCEPTED_PER_KIND
            + ["failed"] * failed
            + ["rejected"] * failed
            + ["succeeded"] * (settled - 2 * failed)
        )

    for n, state in enumerate(mix(max(images // 5, 60))):
        source = running[n % len(running)]
        request("ir", state, n, (f"{source[2]}__manual-{n:06d}", source[2], "on demand"))
    for n, state in enumerate(mix(max(images // 10, 60))):
        image_row = ready_images[n % len(ready_images)]
        request("rr", state, n, (f"copy-{n:05d}", f"copy-{n:05d}", str(image_row[0]), "default", 10, True))

    with psycopg.connect(dsn) as conn:
        restoring = [row for row in rows["instances"] if row[12] is not None]  # their images come first
        rows["instances"] = [row for row in rows["instances"] if row[12] is None]
        rows["restoring"] = restoring
        for table, columns, key in (
            ("instances", INSTANCE_COLUMNS, "instances"),
            ("images", IMAGE_COLUMNS, "images"),
            ("instances", INSTANCE_COLUMNS, "restoring"),
            ("events", EVENT_COLUMNS, "events"),
            ("image_requests", IMAGE_REQUEST_COLUMNS, "ir"),
            ("restore_requests", RESTORE_REQUEST_COLUMNS, "rr"),
        ):
            with conn.cursor().copy(f"COPY toygres_cms.{table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows[key]:
                    copy.write_row(row)
        conn.execute("ANALYZE")
    return Fleet(
        instances=count["instances"],
        images=count["images"],
        image_requests=count["ir"],
        restore_requests=count["rr"],
        events=len(rows["events"]),
    )


# ---- measuring -----------------------------------------------------------------------------------


def seq_scans(dsn: str) -> dict[str, tuple[int, int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE schemaname = 'toygres_cms'"
        ).fetchall()
    return {name: (scans or 0, read or 0) for name, scans, read in rows}


def seq_scan_rows(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Rows read by sequential scans per table between two snapshots (tables with any)."""
    read = {name: after[name][1] - before.get(name, (0, 0))[1] for name in after}
    return {name: rows for name, rows in sorted(read.items()) if rows > 0}


def timed(dsn: str, operation: str, action: Callable[[], str], repeat: int) -> Timing:
    seconds, result = [], ""
    before = seq_scans(dsn)
    for _ in range(repeat):
        started = time.perf_counter()
        result = action()
        seconds.append(time.perf_counter() - started)
    time.sleep(0.6)  # backends report their statistics when they end
    return Timing(operation, statistics.median(seconds), repeat, seq_scan_rows(before, seq_scans(dsn)), result)


def describe(result: Any) -> str:
    if isinstance(result, dg.SkipReason):
        return f"skipped: {(result.skip_message or '')[:80]}"
    if result is None:
        return "done"
    run_requests = getattr(result, "run_requests", None)
    if not run_requests and getattr(result, "skip_message", None):
        return f"skipped: {result.skip_message[:80]}"
    if run_requests is not None:
        return f"{len(run_requests)} run request(s)"
    return str(result)[:80]


def cli(dsn: str, *args: str) -> str:
    """The installed `toygres-pipelines` script, as an operator runs it; returns its summary line."""
    script = Path(sys.executable).parent / "toygres-pipelines"
    done = subprocess.run([str(script), "--dsn", dsn, *args], capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"toygres-pipelines {' '.join(args)} exited {done.returncode}: {done.stderr[-500:]}")
    lines = done.stdout.splitlines()
    return f"{len(lines)} line(s): {lines[-1][:80] if lines else ''}"


def in_flight(dsn: str) -> list[tuple[str, str | None]]:
    """(run id, request id) of every row a run is working on: creating images and instances,
    accepted requests whose run is recorded."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT run_id, NULL FROM toygres_cms.images WHERE state = 'creating'"
            " UNION ALL SELECT run_id, NULL FROM toygres_cms.instances WHERE state = 'creating'"
            " UNION ALL SELECT run_id, id::text FROM toygres_cms.image_requests"
            "  WHERE state = 'accepted' AND run_id IS NOT NULL"
            " UNION ALL SELECT run_id, id::text FROM toygres_cms.restore_requests"
            "  WHERE state = 'accepted' AND run_id IS NOT NULL"
        ).fetchall()


def start_runs(instance: dg.DagsterInstance, dsn: str) -> list[tuple[str, str]]:
    """The Dagster runs of the rows in flight, started (as the daemon launched them); returns the
    (run id, request id) of those launched for a request."""
    from dagster._core.test_utils import create_run_for_test

    from toygres_pipelines.shared.tags import REQUEST_ID_TAG

    for_requests = []
    for run_id, request_id in in_flight(dsn):
        tags = {REQUEST_ID_TAG: request_id} if request_id else {}
        create_run_for_test(
            instance, job_name="backup_image", run_id=run_id, status=dg.DagsterRunStatus.STARTED, tags=tags
        )
        if request_id:
            for_requests.append((run_id, request_id))
    return for_requests


def end_run(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterEvent:
    """The run ends (failed), as the run-status sensors see one; returns its status event."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
    instance.report_run_failed(run, message="seeded: the run failed")
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    event = records[-1].event_log_entry.dagster_event
    assert event is not None
    return event


def measure(dsn: str, repeat: int = 3) -> list[Timing]:
    """Every timed operation against the CMS at `dsn` (seeded), in order."""
    from toygres_pipelines.definitions import defs
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.lifecycle.retention_job import compute_plan
    from toygres_pipelines.settings import Settings

    settings = Settings()
    automation = domain_definitions(settings)
    sensors = {s.name: s for s in automation.sensors or []}
    schedules = {s.name: s for s in automation.schedules or []}
    cms = CMSResource(dsn=dsn, encryption_key=CMSResource.generate_key())
    resources = {"cms": cms, "platform": RULES_ONLY, "blob": NO_STORAGE}
    repository = defs.get_repository_def()
    timings = []
    with dg.instance_for_test() as instance:

        def nightly() -> str:
            with dg.build_schedule_context(
                instance_ref=instance.get_ref(),
                scheduled_execution_time=NIGHTLY_AT,
                resources=resources,
                repository_def=repository,
            ) as context:
                return describe(schedules["nightly_backups"].evaluate_tick(context))

        def sensor_tick(name: str) -> Callable[[], str]:
            def tick() -> str:
                with dg.build_sensor_context(
                    instance_ref=instance.get_ref(), resources=resources, repository_def=repository
                ) as context:
                    return describe(sensors[name].evaluate_tick(context))

            return tick

        launched = start_runs(instance, dsn)
        timings.append(timed(dsn, "nightly_backups tick", nightly, repeat))
        for name in ("image_requests_sensor", "restore_requests_sensor"):
            timings.append(timed(dsn, f"{name} tick", sensor_tick(name), 1))
        timings.append(timed(dsn, "reconcile_stuck_rows tick", sensor_tick("reconcile_stuck_rows"), repeat))

        # The run-status sensors, each on a run of an accepted request that just ended.
        status_sensors = ("request_run_started", "run_succeeded_writeback", "run_failed_writeback")
        for name, (run_id, _) in zip(status_sensors + ("run_canceled_writeback",), launched, strict=False):
            event = end_run(instance, run_id)

            def status_tick(name: str = name, event: dg.DagsterEvent = event, run_id: str = run_id) -> str:
                context = dg.build_run_status_sensor_context(
                    sensor_name=name,
                    dagster_event=event,
                    dagster_instance=instance,
                    dagster_run=instance.get_run_by_id(run_id),
                    resources=resources,
                )
                return describe(sensors[name](context))

            timings.append(timed(dsn, f"{name} tick", status_tick, 1))

    def plan() -> str:
        _, computed = compute_plan(cms, settings.retention, NOW)
        computed.markdown(NOW)
        return f"{len(computed.decisions)} image(s) planned, {len(computed.expired)} expired"

    timings.append(timed(dsn, "retention plan", plan, repeat))
    timings.append(timed(dsn, "toygres-pipelines images", lambda: cli(dsn, "images"), repeat))
    last = str(-(-sum(1 for _ in cms.images.list()) // 50))
    timings.append(
        timed(dsn, f"toygres-pipelines images --page {last}", lambda: cli(dsn, "images", "--page", last), repeat)
    )
    everything = timed(dsn, "toygres-pipelines images --limit 0", lambda: cli(dsn, "images", "--limit", "0"), 1)
    timings.append(everything)  # the whole catalogue at once: what the command printed before it had pages
    return timings


# ---- the CMS server and the report ---------------------------------------------------------------


@contextmanager
def scratch_cms() -> Iterator[str]:
    """A CMS PostgreSQL server of its own, in a temporary directory; yields a migrated database's DSN."""
    from toygres_pipelines.dev.stack import CmsServer

    root = Path(tempfile.mkdtemp(prefix="toygres-fleet-"))
    root.chmod(0o711)  # the server runs as the unprivileged service user, who must reach inside
    server = CmsServer.in_dir(root / "cms")
    try:
        CMSResource(dsn=server.dsn, encryption_key=CMSResource.generate_key()).migrations.apply()
        yield server.dsn
    finally:
        server.server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def table(fleet: Fleet, timings: list[Timing]) -> str:
    out = io.StringIO()
    out.write(
        f"fleet: instances {fleet.instances}, images {fleet.images}, image requests {fleet.image_requests}, "
        f"restore requests {fleet.restore_requests}, {fleet.events} events\n\n"
    )
    width = max(len(t.operation) for t in timings)
    out.write(f"{'operation':<{width}}  {'seconds':>8}  runs  result / rows read by sequential scans\n")
    for t in timings:
        scans = ", ".join(f"{name} {rows}" for name, rows in t.seq_scan_rows.items()) or "none"
        out.write(f"{t.operation:<{width}}  {t.seconds:8.2f}  {t.runs:>4}  {t.result}; seq scans: {scans}\n")
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000, help="running instances")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3, help="evaluations of each read-only operation")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as a JSON object")
    args = parser.parse_args(argv)
    with scratch_cms() as dsn:
        started = time.perf_counter()
        fleet = seed(dsn, args.instances, args.images)
        print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)
        timings = measure(dsn, args.repeat)
    print(table(fleet, timings))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"fleet": asdict(fleet), "timings": [asdict(t) for t in timings]}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
