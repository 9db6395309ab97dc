"""Parallel mode (`parallel_jobs` > 1) against the raw single stream, both ways, in the same run.

pg_dump -j N and pg_restore -j N work table by table: the data set decides what parallel mode can
gain. `measure_parallel` provisions its own source holding `tables` tables of `rows / tables`
rows each (plus the empty `postgres` database) and measures, `repeat` times each:

  backup   raw:      pg_dumpall --globals-only | azcopy; then per database pg_dump -Fc | azcopy PipeBlob
           parallel: the backup job script with PARALLEL_JOBS=N (pg_dump -Fd -j N, every file hashed,
                     one azcopy per database) + the verification the asset does before `ready`
  restore  raw:      initdb, start, download every dump, roles, pg_restore -j N --create per
                     database, vacuumdb --analyze-only, stop (the single-stream dump restored by a
                     competent script: pg_restore -j N works on a custom-format file too)
           parallel: the restore job script (download, sha256 check, initdb, roles,
                     pg_restore -j N of each directory, analyze)

Raw and parallel runs alternate (the same load on a shared machine); ratios are parallel / raw
medians. Run it through bench/backup_restore.py, or alone:

    .venv/bin/python bench/parallel.py [--rows 2000000] [--tables 4] [--jobs 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr  # noqa: E402

from records import InstanceRef  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.platform.base import JobKind, JobSpec  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from resources.platform.postgres_server import (  # noqa: E402
    as_service_user,
    free_port,
    give_to_service_user,
    postgres_bindir,
)
from toygres_pipelines.dev.demo import provision_server, psql  # noqa: E402
from toygres_pipelines.dev.stack import (  # noqa: E402
    Azurite,
    container_sas,  # noqa: E402
    require_tools,
)
from toygres_pipelines.images.backup import backup_grant  # noqa: E402
from toygres_pipelines.images.verification import sha256sums, verify_image  # noqa: E402
from toygres_pipelines.restores.steps import restore_grant  # noqa: E402

PASSWORD = SecretStr("bench-parallel-password")
DATABASE = "parallel_bench"


def _timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"baseline command failed: {(done.stdout + done.stderr).strip()[-1500:]}")


def load_tables(platform: LocalPlatform, source: InstanceRef, rows: int, tables: int) -> None:
    """`tables` tables of rows/tables rows each: what pg_dump -j can spread over its workers."""
    psql(platform, source, "-c", f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(platform, source, "-c", f"CREATE DATABASE {DATABASE}")
    for table in range(1, tables + 1):
        psql(
            platform,
            source,
            "-c",
            f"CREATE TABLE t{table} AS SELECT g AS id, md5(g::text) AS payload, md5((g * {table})::text) AS other, "
            f"now() - g * interval '1 second' AS at FROM generate_series(1, {rows // tables}) g",
            database=DATABASE,
        )


def process_cpu_seconds(pid: int | None) -> float:
    """A process's CPU seconds with those of its children it reaped (a postmaster's ended backends)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuUse:
    """Where one line's CPU seconds went: the job tree (this process's children: the raw script or the
    job), the source server (its postmaster and the backends it reaped) and Azurite."""

    def __init__(self, source_pid: Callable[[], int | None], azurite_pid: int | None) -> None:
        self.source_pid, self.azurite_pid = source_pid, azurite_pid
        self.runs: dict[str, list[dict[str, float]]] = {}

    def timed(self, line: str, action: Callable[[], object]) -> float:
        source = self.source_pid()
        before = (children_cpu_seconds(), process_cpu_seconds(source), process_cpu_seconds(self.azurite_pid))
        seconds = _timed(action)
        after = (children_cpu_seconds(), process_cpu_seconds(source), process_cpu_seconds(self.azurite_pid))
        deltas = [b - a for a, b in zip(before, after, strict=True)]
        used = dict(zip(("job", "source_server", "azurite"), deltas, strict=True))
        self.runs.setdefault(line, []).append({"seconds": seconds, **used})
        return seconds

    def medians(self) -> dict[str, dict[str, float]]:
        return {
            line: {key: round(statistics.median(run[key] for run in runs), 2) for key in runs[0]}
            for line, runs in self.runs.items()
        }


def _spread(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def measure_parallel(
    platform: LocalPlatform,
    blob: BlobStorageResource,
    root: Path,
    *,
    rows: int = 2_000_000,
    tables: int = 4,
    jobs: int = 2,
    repeat: int = 3,
    pin_servers: Callable[[list[int]], None] | None = None,
    azurite_pid: int | None = None,
) -> dict[str, object]:
    """Seconds (median, min, max) of the raw single stream and of parallel mode, both ways, and
    `parallel_backup_ratio` / `parallel_restore_ratio` (parallel median / raw median); `cpu_seconds`:
    each backup line's CPU by where it went (CpuUse). `pin_servers` gets the source server's
    postmaster once it runs (bench/backup_restore.py --pin: on the servers' core, as its own source)."""
    assert blob.connection_string, "the bench runs on Azurite"
    sas = container_sas(blob.connection_string, blob.container, "racwdl", timedelta(hours=2))  # raw baselines only
    source = InstanceRef(k8s_name=f"bench-par-{tables}t", namespace="default")
    work = root / f"parallel-{tables}t"
    give_to_service_user(work, mode=0o711)
    provision_server(platform, source, PASSWORD)

    def source_pid() -> int | None:
        pid_file = platform.server(source, 0).data_dir / "postmaster.pid"
        return int(pid_file.read_text().split()[0]) if pid_file.exists() else None

    cpu = CpuUse(source_pid, azurite_pid)
    try:
        if pin_servers is not None and (pid := source_pid()) is not None:
            pin_servers([pid])
        load_tables(platform, source, rows, tables)
        endpoints = platform.endpoints(source)
        azcopy = str(azcopy_path())
        env = {
            "PATH": f"{postgres_bindir()}:{Path(azcopy).parent}:{os.environ['PATH']}",
            "PGPASSWORD": PASSWORD.get_secret_value(),
            "PGHOST": endpoints.host,
            "PGPORT": str(endpoints.port),
            "PGUSER": "postgres",
            "HOME": str(work),
            "AZCOPY_LOG_LOCATION": str(work),
            "AZCOPY_JOB_PLAN_LOCATION": str(work),
            "LC_ALL": "C.UTF-8",
        }
        databases = ["postgres", DATABASE]
        raw_prefix = f"raw-{tables}t"

        def url(name: str) -> str:
            return f"{blob.folder_url(f'{raw_prefix}/{name}')}?{sas}"

        raw_backup_script = f"set -eo pipefail; pg_dumpall --globals-only | {azcopy} copy '{url('globals.sql')}' "
        raw_backup_script += "--from-to=PipeBlob --output-level=quiet\n"
        for database in databases:
            raw_backup_script += (
                f"pg_dump -Fc -d {database} | {azcopy} copy '{url(database + '.dump')}' "
                "--from-to=PipeBlob --output-level=quiet\n"
            )
        # Raw and parallel runs alternate, so that both see the same load on a shared machine.
        raw_backup, parallel_backup, job_seconds, verify_seconds = [], [], [], []
        for attempt in range(repeat):
            raw_backup.append(
                cpu.timed("raw_backup", lambda: _run(as_service_user(["bash", "-c", raw_backup_script], env)))
            )
            prefix = f"images/parallel-{tables}t-{attempt}"
            staging_id = uuid.uuid4()
            blob.create_staging(staging_id)
            spec = JobSpec(
                kind=JobKind.backup,
                name=f"backup-parallel-{tables}t-{attempt}",
                script="backup.sh",
                instance=source,
                env={
                    "BLOB_URL": blob.staging_url(staging_id),
                    "IMAGE_NAME": f"parallel-{attempt}",
                    "SOURCE_INSTANCE": source.k8s_name,
                    "SOURCE_NAMESPACE": source.namespace,
                    "PARALLEL_JOBS": str(jobs),
                },
                blob_sas=backup_grant(blob, prefix, 7200, jobs, staging_id),
            )
            # the job, then the server-side copy out of its staging container (what the run does)
            job_seconds.append(
                cpu.timed("parallel_backup_job", lambda: platform.run_job(spec, lambda _line: None))
                + _timed(lambda: blob.promote_staging(staging_id, prefix))
            )
            blob.delete_staging(staging_id)
            verify_seconds.append(_timed(lambda: verify_image(blob, prefix)))
            parallel_backup.append(job_seconds[-1] + verify_seconds[-1])
        manifest, manifest_sha = blob.read_manifest(f"images/parallel-{tables}t-0")

        raw_restore, parallel_restore = [], []
        for attempt in range(repeat):
            target = work / f"raw-restore-{attempt}"
            give_to_service_user(target)
            script = "set -eo pipefail\n"
            script += f"initdb -D {target}/pgdata -U postgres --auth=trust >/dev/null\n"
            script += (
                f"pg_ctl -D {target}/pgdata -w -l {target}/log "
                f"-o \"-c port=5432 -c listen_addresses='' -c unix_socket_directories={target}\" start >/dev/null\n"
            )
            script += f"export PGHOST={target} PGPORT=5432 PGUSER=postgres\n"
            for name in ["globals.sql", *(f"{database}.dump" for database in databases)]:
                script += f"{azcopy} copy '{url(name)}' --from-to=BlobPipe --output-level=quiet > {target}/{name}\n"
            script += f"psql -X -q -d postgres -f {target}/globals.sql >/dev/null 2>&1 || true\n"
            script += f"pg_restore -j {jobs} -d postgres {target}/postgres.dump\n"
            script += f"pg_restore -j {jobs} --create -d postgres {target}/{DATABASE}.dump\n"
            script += "vacuumdb --all --analyze-only --quiet\n"
            script += f"pg_ctl -D {target}/pgdata -w -m fast stop >/dev/null\n"
            raw_restore.append(_timed(lambda: _run(as_service_user(["bash", "-c", script], env))))
            shutil.rmtree(target, ignore_errors=True)

            restored = InstanceRef(k8s_name=f"bench-par-restored-{tables}t-{attempt}", namespace="default")
            platform.ensure_instance_secret(restored, PASSWORD)
            platform.create_volume(restored, 1)
            spec = JobSpec(
                kind=JobKind.restore,
                name=f"restore-parallel-{tables}t-{attempt}",
                script="restore.sh",
                instance=restored,
                env={
                    "BLOB_URL": blob.folder_url(f"images/parallel-{tables}t-0"),
                    "MANIFEST_SHA256": manifest_sha,
                    "BACKUP_SHA256SUMS": sha256sums(manifest),
                    "POSTGRES_USER": "postgres",
                    "RESTORE_JOBS": str(manifest.parallel_jobs),
                },
                blob_sas=restore_grant(blob, f"images/parallel-{tables}t-0", manifest, None, 7200),
            )
            parallel_restore.append(_timed(lambda: platform.run_job(spec, lambda _line: None)))
            platform.delete_instance(restored)
    finally:
        platform.delete_instance(source)

    size = sum(f.size_bytes for f in manifest.files)
    return {
        "tables": tables,
        "rows": rows,
        "jobs": jobs,
        "repeat": repeat,
        "parallel_dump_mib": round(size / 2**20, 1),
        "raw_backup_seconds": _spread(raw_backup),
        "parallel_backup_seconds": _spread(parallel_backup),
        "parallel_backup_job_seconds": _spread(job_seconds),
        "parallel_verify_seconds": _spread(verify_seconds),
        "raw_restore_seconds": _spread(raw_restore),
        "parallel_restore_seconds": _spread(parallel_restore),
        "cpu_seconds": cpu.medians(),
        "pinned": pin_servers is not None,
        "parallel_backup_ratio": statistics.median(parallel_backup) / statistics.median(raw_backup),
        "parallel_restore_ratio": statistics.median(parallel_restore) / statistics.median(raw_restore),
    }


def describe(result: dict) -> str:
    """The measurement as table lines: seconds as median (min-max), then the ratio."""

    def cell(key: str) -> str:
        s = result[key]
        return f"{s['median']:6.2f} s ({s['min']:.2f}-{s['max']:.2f})"

    head = (
        f"parallel mode{' (pinned)' if result.get('pinned') else ''}, "
        f"{result['tables']} table(s) of {result['rows'] // result['tables']} rows, "
        f"-j {result['jobs']}, dump {result['parallel_dump_mib']} MiB, {result['repeat']} runs each"
    )
    return "\n".join(
        [
            head,
            f"  backup   raw single stream {cell('raw_backup_seconds')}   parallel {cell('parallel_backup_seconds')}"
            f"   ratio {result['parallel_backup_ratio']:.2f}",
            f"           of which the job {cell('parallel_backup_job_seconds')}, "
            f"verification {cell('parallel_verify_seconds')}",
            f"  restore  raw single stream {cell('raw_restore_seconds')}   parallel {cell('parallel_restore_seconds')}"
            f"   ratio {result['parallel_restore_ratio']:.2f}",
            *(
                f"  CPU s {line}: " + ", ".join(f"{key} {value}" for key, value in used.items())
                for line, used in result.get("cpu_seconds", {}).items()
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in all, spread over --tables tables")
    parser.add_argument("--tables", type=int, nargs="+", default=[4, 1], help="data shapes to measure")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    require_tools()
    root = Path(tempfile.mkdtemp(prefix="toygres-bench-parallel-"))
    root.chmod(0o711)
    azurite = Azurite(root / "azurite", free_port()).start()
    platform = LocalPlatform(state_dir=str(root / "platform"), azcopy_path=str(azcopy_path()))
    try:
        blob = BlobStorageResource(connection_string=azurite.connection_string, container="bench")
        blob.ensure_container()
        for tables in args.tables:
            result = measure_parallel(
                platform, blob, root, rows=args.rows, tables=tables, jobs=args.jobs, repeat=args.repeat
            )
            print(describe(result), flush=True)
    finally:
        azurite.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
