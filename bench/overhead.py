"""Orchestration overhead of a backup run: what Dagster adds around the backup step itself.

    .venv/bin/python bench/overhead.py [--runs 3] [--json PATH]

Starts its own embedded stack (CMS server, Azurite, a pagila source instance on the local
platform) and a Dagster instance in a temporary DAGSTER_HOME, then launches `backup_image` runs
the way the daemon does: a code server process and the default run launcher, one run worker
process per run. From each run's Dagster events:

    overhead = (STEP_START - RUN_START) + (RUN_SUCCESS - STEP_SUCCESS)     of the `image` step

`measure_overhead()` returns its median; the CLI also prints where the time goes: every gap
between consecutive events inside those two windows, the launch (RUN_STARTING -> RUN_START, the
run worker's process start and code load, not part of the figure above) and how long a fresh
interpreter takes to import the code location, with the heaviest imports.
Nothing here asserts a threshold: read the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BACKUP_STEP = "image"
SOURCE_NAME = "overhead-src"
RUN_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class Event:
    kind: str  # DagsterEventType value, e.g. "STEP_START"
    at: float  # epoch seconds
    step: str | None = None
    message: str = ""


@dataclass
class RunOverhead:
    """One run's overhead and the gaps it is made of (label, seconds), in order."""

    before_step: float
    after_step: float
    launch: float | None
    gaps: list[tuple[str, float]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.before_step + self.after_step


def label(event: Event) -> str:
    text = event.message.split("\n", 1)[0][:70]
    return f"{event.kind} {text}".strip()


def run_overhead(events: Sequence[Event], step: str = BACKUP_STEP) -> RunOverhead:
    """The overhead of one finished, successful run, from its events (any order)."""
    ordered = sorted(events, key=lambda e: e.at)

    def first(kind: str, of_step: str | None = None) -> Event:
        for event in ordered:
            if event.kind == kind and (of_step is None or event.step == of_step):
                return event
        raise ValueError(f"the run has no {kind} event" + (f" for step {of_step!r}" if of_step else ""))

    run_start, run_success = first("RUN_START"), first("RUN_SUCCESS")
    step_start, step_success = first("STEP_START", step), first("STEP_SUCCESS", step)
    starting = [e for e in ordered if e.kind == "RUN_STARTING"]
    gaps: list[tuple[str, float]] = []
    for window_start, window_end in ((run_start, step_start), (step_success, run_success)):
        inside = [e for e in ordered if window_start.at <= e.at <= window_end.at]
        gaps += [
            (f"-> {label(later)}", later.at - earlier.at) for earlier, later in zip(inside, inside[1:], strict=False)
        ]
    return RunOverhead(
        before_step=step_start.at - run_start.at,
        after_step=run_success.at - step_success.at,
        launch=run_start.at - starting[0].at if starting else None,
        gaps=gaps,
    )


# ---- the embedded stack and a Dagster instance -------------------------------------------------


@dataclass
class Bench:
    instance: object  # dg.DagsterInstance
    workspace: object  # the request context of a WorkspaceProcessContext
    repository: object  # the RepositoryDefinition of the code location
    source: str


@contextmanager
def embedded_stack(root: Path) -> Iterator[dict[str, str]]:
    """CMS, Azurite and a running pagila instance; yields the code location's environment."""
    from pydantic import SecretStr

    from records import InstanceRef
    from resources.blob import BlobStorageResource
    from resources.cms import CMSResource
    from resources.platform.local import LocalPlatform
    from resources.platform.local_tools import azcopy_path
    from resources.platform.postgres_server import free_port
    from toygres_pipelines.dev.demo import load_pagila, provision_server, register_running
    from toygres_pipelines.dev.stack import Azurite, CmsServer, require_tools

    require_tools()
    server = CmsServer.in_dir(root / "cms")
    azurite = Azurite(root / "azurite", free_port()).start()
    platform = LocalPlatform(state_dir=str(root / "platform"), azcopy_path=str(azcopy_path()))
    ref = InstanceRef(k8s_name=SOURCE_NAME, namespace="default")
    try:
        cms = CMSResource(dsn=server.dsn, encryption_key=CMSResource.generate_key())
        cms.migrations.apply()
        blob = BlobStorageResource(connection_string=azurite.connection_string, container="overhead")
        blob.ensure_container()
        provision_server(platform, ref, SecretStr("overhead-bench"))
        load_pagila(platform, ref)
        register_running(cms, platform, ref)
        yield {
            "TOYGRES_CMS_DSN": cms.dsn,
            "TOYGRES_ENCRYPTION_KEY": cms.encryption_key,
            "TOYGRES_BLOB_CONNECTION_STRING": azurite.connection_string,
            "TOYGRES_BLOB_CONTAINER": blob.container,
            "TOYGRES_PLATFORM": "local",
            "TOYGRES_STATE_DIR": platform.state_dir,
            "TOYGRES_AZCOPY": str(azcopy_path()),
        }
    finally:
        platform.delete_instance(ref)
        azurite.stop()
        server.server.stop("immediate")


@contextmanager
def dagster_bench(root: Path, env: dict[str, str]) -> Iterator[Bench]:
    """A Dagster instance in root/dagster_home and the code location served by a code server."""
    import dagster as dg
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    from resources.platform.base import PROJECT_DIR

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    saved = {key: os.environ.get(key) for key in [*env, "DAGSTER_HOME", "TOYGRES_BLOB_ACCOUNT_URL"]}
    os.environ.update(env, DAGSTER_HOME=str(home))
    os.environ.pop("TOYGRES_BLOB_ACCOUNT_URL", None)
    try:
        from toygres_pipelines.definitions import defs

        target = ModuleTarget(
            module_name="toygres_pipelines.definitions",
            attribute=None,
            working_directory=str(PROJECT_DIR),
            location_name="toygres_pipelines",
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            with WorkspaceProcessContext(instance, target) as process_context:
                yield Bench(instance, process_context.create_request_context(), defs.get_repository_def(), SOURCE_NAME)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch_backup(bench: Bench, key: str) -> str:
    """Launch one backup_image run as the daemon does (code server + run launcher); returns its id."""
    from records.requests import BackupFields
    from toygres_pipelines.images.assets import IMAGE_PARTITIONS, image
    from toygres_pipelines.images.jobs import backup_image, backup_run_config
    from toygres_pipelines.shared.tags import INSTANCE_TAG

    instance, workspace = bench.instance, bench.workspace
    instance.add_dynamic_partitions(IMAGE_PARTITIONS, [key])  # type: ignore[attr-defined]
    location = workspace.get_code_location("toygres_pipelines")  # type: ignore[attr-defined]
    remote_job = location.get_repository("__repository__").get_full_job("backup_image")
    run = instance.create_run_for_job(  # type: ignore[attr-defined]
        job_def=bench.repository.get_job("backup_image"),  # type: ignore[attr-defined]
        run_config=backup_run_config(BackupFields(source_instance=bench.source)).to_config_dict(),
        tags={**backup_image.tags, "dagster/partition": key, INSTANCE_TAG: bench.source},
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=frozenset({image.key}),
    )
    instance.launch_run(run.run_id, workspace)  # type: ignore[attr-defined]
    return run.run_id


def wait_and_read(bench: Bench, run_id: str) -> list[Event]:
    import dagster as dg

    instance = bench.instance
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        run = instance.get_run_by_id(run_id)  # type: ignore[attr-defined]
        if run.is_finished:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} did not finish within {RUN_TIMEOUT_SECONDS} s")
        time.sleep(0.2)
    entries = instance.all_logs(run_id)  # type: ignore[attr-defined]
    if run.status is not dg.DagsterRunStatus.SUCCESS:
        failures = [e.user_message or "" for e in entries if e.is_dagster_event and "FAILURE" in e.dagster_event_type]
        raise RuntimeError(f"run {run_id} ended {run.status.value}: {' | '.join(failures)[-2000:]}")
    return [
        Event(
            kind=entry.dagster_event_type.name,
            at=entry.timestamp,
            step=entry.step_key,
            message=entry.dagster_event.message or entry.user_message or "",
        )
        for entry in entries
        if entry.is_dagster_event and entry.dagster_event is not None
    ]


def overhead_runs(runs: int, progress: Callable[[str], None] = lambda _: None) -> list[RunOverhead]:
    """`runs` backups of pagila through a fresh embedded stack; each run's overhead."""
    root = Path(tempfile.mkdtemp(prefix="toygres-overhead-"))
    root.chmod(0o711)  # servers run as the unprivileged service user, who must reach inside
    try:
        with embedded_stack(root) as env, dagster_bench(root, env) as bench:
            measured = []
            for attempt in range(runs):
                run_id = launch_backup(bench, f"{SOURCE_NAME}__overhead-{attempt}")
                measured.append(run_overhead(wait_and_read(bench, run_id)))
                progress(f"run {attempt + 1}/{runs}: overhead {measured[-1].seconds:.2f} s")
            return measured
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_overhead(runs: int = 3, progress: Callable[[str], None] = lambda _: None) -> float:
    """Median orchestration overhead (seconds) of `runs` pagila backups on the embedded stack."""
    return statistics.median(r.seconds for r in overhead_runs(runs, progress))


# ---- where the time goes outside the runs' events -----------------------------------------------


def import_seconds(module: str = "toygres_pipelines.definitions", repeat: int = 3) -> float:
    """Median wall time of a fresh interpreter importing the code location (a process start)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=Path(__file__).parents[1])
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def heaviest_imports(module: str = "toygres_pipelines.definitions", top: int = 8) -> list[tuple[str, float]]:
    """Import time (`python -X importtime`, each module's own time) summed per top-level package, seconds."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        root = parts[2].strip().split(".")[0]
        packages[root] = packages.get(root, 0.0) + int(parts[0]) / 1e6
    return sorted(packages.items(), key=lambda item: -item[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as a JSON object")
    args = parser.parse_args()

    measured = overhead_runs(args.runs, progress=lambda line: print(line, flush=True))
    median_run = sorted(measured, key=lambda r: r.seconds)[len(measured) // 2]
    seconds = [r.seconds for r in measured]
    launches = [r.launch for r in measured if r.launch is not None]
    imports, heavy = import_seconds(), heaviest_imports()
    print(
        f"\norchestration overhead (RUN_START->STEP_START + STEP_SUCCESS->RUN_SUCCESS), {args.runs} runs: "
        f"median {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f})"
    )
    print(f"  before the step {median_run.before_step:.2f} s, after it {median_run.after_step:.2f} s (median run)")
    print("  gaps between consecutive events in those windows (median run):")
    for text, gap in median_run.gaps:
        if gap >= 0.005:
            print(f"    {gap:6.2f} s  {text}")
    if launches:
        print(
            "launch (RUN_STARTING->RUN_START: run worker process start + code load): "
            f"{statistics.median(launches):.2f} s"
        )
    print(f"a fresh interpreter importing toygres_pipelines.definitions: {imports:.2f} s; heaviest imports:")
    for name, cumulative in heavy:
        print(f"    {cumulative:6.2f} s  {name}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "overhead_seconds": statistics.median(seconds),
                    "overhead_min_seconds": min(seconds),
                    "overhead_max_seconds": max(seconds),
                    "before_step_seconds": median_run.before_step,
                    "after_step_seconds": median_run.after_step,
                    "launch_seconds": statistics.median(launches) if launches else None,
                    "import_seconds": imports,
                    "runs": args.runs,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
