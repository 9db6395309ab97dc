"""Backup and restore speed and memory against fair raw baselines measured in the same run.

    .venv/bin/python bench/backup_restore.py [--rows 200000] [--scale 10] [--repeat 3] [--json PATH] [--quick]

Starts its own Azurite and a source server (pagila + a generated table of --rows rows: the 1x data).
At 1x: the peak memory (summed PSS) of our backup and restore job trees (the jobs' processes and
the restore's temporary server; the source server and Azurite are not part of them) and pg_dump's
size and speed at each gzip level.
Then the table grows to --scale x and, medians of --repeat runs each (with min-max):
  backup   floor: globals + every database, each pg_dump -Fc > a local file     (the physical floor)
           raw:   globals + every database, each pg_dump -Fc | azcopy PipeBlob  (what a competent script does)
           ours:  the backup job script + the verification the asset does before marking an image ready
  restore  raw:   initdb, start, download every file, roles, pg_restore -j2 each database,
                  vacuumdb --analyze-only
           ours:  the restore job script (download, sha256 check, initdb, roles, pg_restore -j2, analyze)
and the peak memory (PSS) of our job trees at that size (the 10x), each program's share too.
Every backup line uses the same --compression (the project's default). Prints a table; --json PATH
writes the same numbers.
Nothing here asserts a threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr  # noqa: E402

from bench.encryption import bench_encryption  # noqa: E402
from bench.overhead import measure_overhead  # noqa: E402
from bench.parallel import describe as describe_parallel  # noqa: E402
from bench.parallel import measure_parallel  # noqa: E402
from records import InstanceRef  # noqa: E402
from records.parallel import SINGLE_STREAM  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.platform.base import JobKind, JobSpec  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from resources.platform.postgres_server import as_service_user, free_port, give_to_service_user, postgres_bindir  # noqa: E402
from toygres_pipelines.dev.demo import load_pagila, provision_server, psql  # noqa: E402
from toygres_pipelines.dev.stack import Azurite, container_sas, require_tools  # noqa: E402
from toygres_pipelines.images.backup import CHECK_CHUNK_BYTES, DEFAULT_DUMP_COMPRESSION, backup_grant  # noqa: E402
from toygres_pipelines.images.verification import sha256sums, verify_image  # noqa: E402
from toygres_pipelines.restores.steps import restore_grant  # noqa: E402

PASSWORD = SecretStr("bench-password")
GZIP_LEVELS = tuple(range(10))
RESULT_KEYS = (
    "backup_ratio",
    "restore_ratio",
    "backup_ratio_unpinned",
    "restore_ratio_unpinned",
    "backup_ratio_1x",
    "restore_ratio_1x",
    "parallel_backup_ratio",
    "parallel_restore_ratio",
    "peak_rss_mib_1x",
    "peak_rss_mib_10x",
    "overhead_seconds",
    "encryption_ratio",
    "verify_mib_per_s",
)
READER = Path(__file__).resolve().parents[1] / "templates" / "scripts" / "archive_reader.py"


# ---- numbers -> results (pure: unit-tested) ----------------------------------------------------


@dataclass
class Samples:
    """Seconds of repeated runs of one line of the bench."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # the line's processes (the job tree), not the servers'

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, float]:
        rounded = [round(value, 3) for value in (self.median, min(self.seconds), max(self.seconds))]
        return dict(zip(("median", "min", "max"), rounded, strict=True))


def ratio(ours: Samples, raw: Samples) -> float:
    return round(ours.median / raw.median, 3)


def throughput(lines: dict[str, Samples], source_mib: float, dump_mib: float) -> dict[str, dict[str, float | None]]:
    """Each line's MiB/s of database and of dump (medians) and its CPU seconds per GiB of database."""
    return {
        name: {
            "database_mib_per_s": round(source_mib / samples.median, 1),
            "dump_mib_per_s": round(dump_mib / samples.median, 1),
            "cpu_s_per_gib": round(statistics.median(samples.cpu_seconds) / (source_mib / 1024), 2)
            if samples.cpu_seconds
            else None,
        }
        for name, samples in lines.items()
        if samples.seconds
    }


def parallel_ratios(result: dict[str, Any]) -> tuple[float | None, float | None]:
    """The parallel mode's (backup, restore) medians over the raw single stream (bench/parallel.py)."""
    return result.get("parallel_backup_ratio"), result.get("parallel_restore_ratio")


def assemble_results(
    *,
    lines: dict[str, Samples],
    rss_mib: dict[str, float],
    compression: Sequence[dict[str, Any]],
    context: dict[str, Any],
    parallel: tuple[float | None, float | None] = (None, None),
    overhead: float | None = None,
    encryption_ratio: float | None = None,
    unpinned: dict[str, Samples] | None = None,
    lines_1x: dict[str, Samples] | None = None,
    verify_mib_per_s: float | None = None,
    rss_by_command: dict[str, dict[str, dict[str, float]]] | None = None,
) -> dict[str, Any]:
    """The bench's JSON object: the ratios first, then every line's median and min-max. `lines` are
    the 10x lines (pinned with --pin), `unpinned` the same unpinned, `lines_1x` at 1x; `rss_by_command`:
    each memory line's PeakTreeRss.breakdown()."""

    def ratios(measured: dict[str, Samples] | None) -> tuple[float | None, float | None]:
        if not measured:
            return None, None
        return ratio(measured["backup_ours"], measured["backup_raw"]), ratio(
            measured["restore_ours"], measured["restore_raw"]
        )

    backup_unpinned, restore_unpinned = ratios(unpinned)
    backup_1x, restore_1x = ratios(lines_1x)
    return {
        **context,
        "backup_ratio": ratio(lines["backup_ours"], lines["backup_raw"]),
        "restore_ratio": ratio(lines["restore_ours"], lines["restore_raw"]),
        "backup_ratio_unpinned": backup_unpinned,
        "restore_ratio_unpinned": restore_unpinned,
        "backup_ratio_1x": backup_1x,
        "restore_ratio_1x": restore_1x,
        "verify_mib_per_s": verify_mib_per_s,
        "parallel_backup_ratio": parallel[0],
        "parallel_restore_ratio": parallel[1],
        "peak_rss_mib_1x": round(max(rss_mib["backup_1x"], rss_mib["restore_1x"]), 1),
        "peak_rss_mib_10x": round(max(rss_mib["backup_10x"], rss_mib["restore_10x"]), 1),
        "overhead_seconds": overhead,
        "encryption_ratio": encryption_ratio,
        "backup_raw_over_floor": ratio(lines["backup_raw"], lines["backup_floor"]),
        "seconds": {name: samples.summary() for name, samples in lines.items()},
        "seconds_unpinned": {name: samples.summary() for name, samples in (unpinned or {}).items()},
        "seconds_1x": {name: samples.summary() for name, samples in (lines_1x or {}).items()},
        "peak_rss_mib": {name: round(value, 1) for name, value in rss_mib.items()},
        "peak_rss_by_command_mib": rss_by_command or {},
        "compression": list(compression),
    }


def format_table(results: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return "n/a" if value is None else str(value)

    rows = [f"{key:<24} {shown(results[key])}" for key in RESULT_KEYS]
    rows.append(f"{'backup_raw_over_floor':<24} {results['backup_raw_over_floor']}")
    rows.append("")
    rows.append(f"{'line':<16} {'median s':>9} {'min':>8} {'max':>8}")
    for name, summary in results["seconds"].items():
        rows.append(f"{name:<16} {summary['median']:>9.2f} {summary['min']:>8.2f} {summary['max']:>8.2f}")
    rows.append("")
    rows.append("peak job-tree PSS (MiB): " + ", ".join(f"{k} {v}" for k, v in results["peak_rss_mib"].items()))
    for name, breakdown in results["peak_rss_by_command_mib"].items():
        top = ", ".join(f"{command} {mib}" for command, mib in list(breakdown["at_peak"].items())[:6])
        rows.append(f"  {name} at its peak: {top}")
    if results["compression"]:
        rows.append("")
        rows.append(f"{'pg_dump -Z':<11} {'MiB':>8} {'seconds':>8} {'MiB/s in':>9} {'CPU s':>7}")
        for entry in results["compression"]:
            level, mib, seconds, speed = (entry[k] for k in ("level", "dump_mib", "seconds", "source_mib_per_s"))
            rows.append(
                f"{level:<11} {mib:>8.2f} {seconds:>8.2f} {speed:>9.1f} {entry.get('pg_dump_cpu_seconds', 0):>7.2f}"
            )
    return "\n".join(rows)


# ---- measuring -------------------------------------------------------------------------------


def proportional_set_kib(process: Path) -> int:
    """The process's PSS: each shared page divided among the processes that map it. A summed RSS
    counts a server's shared memory (shared_buffers, mapped by every backend) once per process."""
    for line in (process / "smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise ValueError(f"no Pss in {process}/smaps_rollup")


INTERPRETERS = ("python", "bash", "sh")


def command_label(comm: str, argv: Sequence[bytes]) -> str:
    """A process's name in the breakdown: its program (`comm`), an interpreter's with its script
    (`python3 stream_digest.py`, `bash backup.sh`): the job runs several of each."""
    if comm.startswith(INTERPRETERS):
        for argument in argv[1:]:
            if argument.endswith((b".py", b".sh")) and not any(c in argument for c in b" \n;|"):
                return f"{comm} {os.path.basename(argument).decode(errors='replace')}"
    return comm


class PeakTreeRss:
    """Samples the summed PSS of every descendant process (the whole job tree) while active,
    except the subtrees of `exclude` (the bench's own Azurite): the tree's peak (`peak_mib`), each
    command's PSS in the sample of that peak (`at_peak`) and each command's own peak, summed over its
    processes in one sample (`by_command`), in MiB."""

    exclude: tuple[int, ...] = ()

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root  # whose descendants count
        self.peak_mib = 0.0
        self.at_peak: dict[str, float] = {}
        self.by_command: dict[str, float] = {}
        self._stop = threading.Event()

    def tree(self) -> dict[int, str]:
        """The processes that count, by pid, with their command labels: the root's descendants (and
        the root unless it is the bench), never the bench itself nor a fork of it before its exec
        (it shares, and shows, all of the bench's memory)."""
        bench_pid, bench_cmdline = os.getpid(), Path("/proc/self/cmdline").read_bytes()
        parents: dict[int, int] = {}
        labels: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                pid, stat = int(entry.name), (entry / "stat").read_text()
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
                if pid == bench_pid or cmdline == bench_cmdline:
                    continue
                comm = stat[stat.index("(") + 1 : stat.rindex(")")]
                labels[pid] = command_label(comm, cmdline.rstrip(b"\0").split(b"\0"))
            except (OSError, IndexError, ValueError):
                continue
        counted = {}
        for pid, label in labels.items():
            ancestor = parents.get(pid) if pid not in self.exclude else None
            while ancestor and ancestor != self.root and ancestor not in self.exclude:
                ancestor = parents.get(ancestor)
            if pid == self.root or ancestor == self.root:
                counted[pid] = label
        return counted

    def _descendants_pss_kib(self) -> dict[str, int]:
        """The tree's PSS (KiB) by command."""
        total: dict[str, int] = {}
        for pid, label in self.tree().items():
            try:
                total[label] = total.get(label, 0) + proportional_set_kib(Path(f"/proc/{pid}"))
            except (OSError, ValueError):
                continue  # ended meanwhile
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            sample = {label: kib / 1024 for label, kib in self._descendants_pss_kib().items()}
            if sum(sample.values()) > self.peak_mib:
                self.peak_mib, self.at_peak = sum(sample.values()), sample
            for label, mib in sample.items():
                self.by_command[label] = max(self.by_command.get(label, 0.0), mib)
            self._stop.wait(0.05)

    def breakdown(self) -> dict[str, dict[str, float]]:
        """`at_peak` and `by_command`, rounded, biggest first (the JSON's peak_rss_by_command_mib)."""

        def ordered(values: dict[str, float]) -> dict[str, float]:
            return {k: round(v, 1) for k, v in sorted(values.items(), key=lambda kv: -kv[1]) if v >= 0.05}

        return {"at_peak": ordered(self.at_peak), "peak": ordered(self.by_command)}

    def __enter__(self) -> PeakTreeRss:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def shell(command: str, env: dict[str, str], as_postgres: bool = False) -> str:
    argv = ["bash", "-o", "pipefail", "-e", "-c", command]
    done = subprocess.run(as_service_user(argv, env) if as_postgres else argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"baseline command failed: {done.stderr.strip()[-1500:]}")
    return done.stdout


def tree_tasks(root_pid: int) -> list[int]:
    """Every thread of `root_pid` and of its descendants (affinity is per thread)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, grown = {root_pid}, True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grown = bool(children)
    tasks = []
    for pid in tree:
        try:
            tasks += [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
    return tasks


class Pinning:
    """--pin: production's shape on one machine. The source server and Azurite (another pod and the
    cloud) get the first core, the job tree (ours and raw alike: every line runs as a child of this
    process) the others; new server backends inherit the postmaster's set, new job processes ours."""

    def __init__(self, server_pids: Callable[[], list[int]]) -> None:
        self.all = set(os.sched_getaffinity(0))
        cores = sorted(self.all)
        self.servers, self.jobs = {cores[0]}, set(cores[1:]) or {cores[0]}
        self.server_pids = server_pids

    def pin_servers(self, pids: list[int]) -> None:
        """Another server (the parallel bench's source) on the servers' core."""
        for pid in pids:
            for task in tree_tasks(pid):
                try:
                    os.sched_setaffinity(task, self.servers)
                except OSError:
                    continue

    def apply(self, pinned: bool) -> None:
        for pid in self.server_pids():
            for task in tree_tasks(pid):
                try:
                    os.sched_setaffinity(task, self.servers if pinned else self.all)
                except OSError:
                    continue  # a backend that just ended
        os.sched_setaffinity(0, self.jobs if pinned else self.all)


def reader_mib_per_s(dump: Path, python: str, core: int) -> tuple[float, int]:
    """The archive reader alone on one core (taskset): MiB/s of table data it yields, and that size."""
    started = time.perf_counter()
    with open(dump, "rb") as stdin:
        done = subprocess.run(
            ["taskset", "-c", str(core), python, str(READER), "custom"], stdin=stdin, capture_output=True, check=True
        )
    seconds = time.perf_counter() - started
    data_bytes = json.loads(done.stdout)["data_bytes"]
    return round(data_bytes / 2**20 / seconds, 1), data_bytes


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        self.azurite = Azurite(root / "azurite", free_port()).start()
        PeakTreeRss.exclude = (self.azurite.process.pid,)
        self.platform = LocalPlatform(state_dir=str(root / "platform"), azcopy_path=str(azcopy_path()))
        self.source = InstanceRef(k8s_name="bench-src", namespace="default")
        self.blob = BlobStorageResource(connection_string=self.azurite.connection_string, container="bench")
        self.blob.ensure_container()
        # The raw baselines' azcopy only; the jobs get least-privilege grants as the pipelines mint them
        self.raw_sas = container_sas(self.azurite.connection_string, "bench", "racwdl", timedelta(hours=3))
        self.work = root / "work"
        give_to_service_user(self.work, 0o755)
        self.azcopy = str(self.work / "azcopy")
        shutil.copyfile(azcopy_path(), self.azcopy)
        Path(self.azcopy).chmod(0o755)
        self.attempt = 0

    def tools_env(self) -> dict[str, str]:
        endpoints = self.platform.endpoints(self.source)
        home = self.work / "home"
        give_to_service_user(home, 0o700)
        return {
            "PGPASSWORD": PASSWORD.get_secret_value(),
            "PGHOST": endpoints.host,
            "PGPORT": str(endpoints.port),
            "PGUSER": "postgres",
            "HOME": str(home),
            "AZCOPY_LOG_LOCATION": str(home),
            "AZCOPY_JOB_PLAN_LOCATION": str(home),
            "LC_ALL": "C.UTF-8",
            "PATH": f"{postgres_bindir()}:{self.work}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        }

    def url(self, name: str) -> str:
        return f"{self.blob.folder_url(name)}?{self.raw_sas}"

    def load_source(self) -> None:
        provision_server(self.platform, self.source, PASSWORD)
        load_pagila(self.platform, self.source)
        self.add_rows(self.args.rows)

    def add_rows(self, rows: int) -> None:
        """Rows of realistic width (text, numerics, timestamps; about 200 bytes with its two indexes)."""
        psql(
            self.platform,
            self.source,
            "-c",
            "CREATE TABLE IF NOT EXISTS bench (id bigint PRIMARY KEY, customer text, email text, amount numeric(12,2),"
            " quantity int, created_at timestamptz, note text);"
            "CREATE INDEX IF NOT EXISTS bench_created_at ON bench (created_at);"
            f"INSERT INTO bench SELECT g, 'customer ' || (g % 50000), md5(g::text) || '@example.com',"
            " (g % 100000) / 100.0, g % 17, now() - g * interval '1 second',"
            " repeat(chr((97 + g % 26)::int), (20 + g % 60)::int)"
            f" FROM generate_series((SELECT count(*) FROM bench) + 1, (SELECT count(*) FROM bench) + {rows}) g",
            database="pagila",
        )

    def server_pids(self) -> list[int]:
        """The source server's postmaster and Azurite: what --pin keeps off the job's cores."""
        pids = []
        pid_file = self.platform.server(self.source, 0).data_dir / "postmaster.pid"
        if pid_file.exists():
            pids.append(int(pid_file.read_text().split()[0]))
        if self.azurite.process is not None:
            pids.append(self.azurite.process.pid)
        return pids

    def verify_speed(self, prefix: str, core: int) -> dict[str, Any]:
        """The reader alone on the biggest dump of an image: with isal (the job image's inflate) when
        this Python has it, and with the standard library's zlib (a job python3 without isal)."""
        manifest, _ = self.blob.read_manifest(prefix)
        biggest = max((f for f in manifest.files if f.path.endswith(".dump")), key=lambda f: f.size_bytes)
        dump = self.work / "verify.dump"
        with open(dump, "wb") as out:
            for chunk in self.blob.iter_chunks(f"{prefix}/{biggest.path}"):
                out.write(chunk)
        try:
            speeds: dict[str, Any] = {"dump_mib": round(biggest.size_bytes / 2**20, 1)}
            speeds["python_job"], table_bytes = reader_mib_per_s(dump, "/usr/bin/python3", core)
            speeds["table_mib"] = round(table_bytes / 2**20, 1)
            speeds["python_bench"], _ = reader_mib_per_s(dump, sys.executable, core)
            try:
                import isal  # noqa: F401

                speeds["python_bench_inflate"] = "isal"
            except ImportError:
                speeds["python_bench_inflate"] = "zlib"
            return speeds
        finally:
            dump.unlink(missing_ok=True)

    def databases(self) -> list[str]:
        listed = psql(
            self.platform,
            self.source,
            "-Atc",
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
        )
        return listed.split()

    def source_mib(self) -> float:
        size = psql(self.platform, self.source, "-Atc", "SELECT sum(pg_database_size(datname)) FROM pg_database")
        return int(size.strip()) / 2**20

    # -- backup lines --

    def backup_script(self, sink: Callable[[str], str]) -> str:
        """globals + every database, each pg_dump -Fc into `sink(name)` (a shell redirection)."""
        lines = [f"pg_dumpall -w --globals-only {sink('globals.sql')}"]
        level = f"-Z {self.args.compression}"
        lines += [f"pg_dump -w -Fc {level} -d {db} {sink(f'{db}.dump')}" for db in self.databases()]
        return "\n".join(lines)

    def backup_floor(self) -> float:
        target = self.work / "floor"
        give_to_service_user(target, 0o700)
        script = self.backup_script(lambda name: f"> {target}/{name}")
        return timed(lambda: shell(script, self.tools_env(), as_postgres=True))

    def backup_raw(self) -> float:
        self.attempt += 1
        prefix = f"raw/{self.attempt}"
        script = self.backup_script(
            lambda name: f"| azcopy copy '{self.url(f'{prefix}/{name}')}' --from-to=PipeBlob --output-level=quiet"
        )
        return timed(lambda: shell(script, self.tools_env(), as_postgres=True))

    def backup_env(self) -> dict[str, str]:
        """What the image asset gives every backup job beyond where things are."""
        return {"CHECK_CHUNK_BYTES": str(CHECK_CHUNK_BYTES), "DUMP_COMPRESSION": self.args.compression}

    def backup_ours(self, rss: PeakTreeRss | None = None) -> tuple[float, str]:
        self.attempt += 1
        prefix = f"images/bench-{self.attempt}"
        spec = JobSpec(
            kind=JobKind.backup,
            name=f"backup-bench-{self.attempt}",
            script="backup.sh",
            instance=self.source,
            env={
                "BLOB_URL": self.blob.folder_url(prefix),
                "IMAGE_NAME": f"bench-{self.attempt}",
                "SOURCE_INSTANCE": self.source.k8s_name,
                "SOURCE_NAMESPACE": self.source.namespace,
                **self.backup_env(),
            },
            blob_sas=backup_grant(self.blob, prefix, 3 * 3600, SINGLE_STREAM),
        )

        def backup_and_verify() -> None:
            if rss is None:
                self.platform.run_job(spec, lambda _line: None)
            else:
                with rss:
                    self.platform.run_job(spec, lambda _line: None)
            verify_image(self.blob, prefix, full=False)  # what the asset does before marking it ready

        seconds = timed(backup_and_verify)
        return seconds, prefix

    # -- restore lines --

    def restore_raw(self, raw_prefix: str) -> float:
        target = self.work / f"raw-restore-{self.attempt}"
        self.attempt += 1
        give_to_service_user(target, 0o700)
        sockets = Path(tempfile.mkdtemp(prefix="bench-sock-"))
        give_to_service_user(sockets, 0o700)
        port = free_port()
        download = "\n".join(
            f"azcopy copy '{self.url(f'{raw_prefix}/{name}')}' --from-to=BlobPipe --output-level=quiet >{target}/{name}"
            for name in ["globals.sql", *(f"{db}.dump" for db in self.databases())]
        )
        restores = "\n".join(
            f"pg_restore -j2 -d {db} {target}/{db}.dump"
            if db == "postgres"
            else f"pg_restore -j2 --create -d postgres {target}/{db}.dump"
            for db in self.databases()
        )
        script = f"""
initdb -D {target}/pgdata -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
options="-c listen_addresses='' -c port={port} -c unix_socket_directories={sockets}"
pg_ctl -D {target}/pgdata -w -l {target}/log start -o "$options" >/dev/null
export PGHOST={sockets} PGPORT={port} PGDATABASE=postgres
{download}
grep -v '^CREATE ROLE postgres;' {target}/globals.sql | psql -X -q -v ON_ERROR_STOP=1 >/dev/null
{restores}
vacuumdb --all --analyze-only --quiet
pg_ctl -D {target}/pgdata -w stop -m fast >/dev/null
"""
        env = {key: value for key, value in self.tools_env().items() if key not in ("PGHOST", "PGPORT", "PGPASSWORD")}
        try:
            return timed(lambda: shell(script, env, as_postgres=True))
        finally:
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(sockets, ignore_errors=True)

    def restore_ours(self, prefix: str, rss: PeakTreeRss | None = None) -> float:
        manifest, manifest_sha = self.blob.read_manifest(prefix)
        self.attempt += 1
        restored = InstanceRef(k8s_name=f"bench-restored-{self.attempt}", namespace="default")
        self.platform.ensure_instance_secret(restored, PASSWORD)
        self.platform.create_volume(restored, 1)
        spec = JobSpec(
            kind=JobKind.restore,
            name=f"restore-bench-{self.attempt}",
            script="restore.sh",
            instance=restored,
            env={
                "BLOB_URL": self.blob.folder_url(prefix),
                "MANIFEST_SHA256": manifest_sha,
                "BACKUP_SHA256SUMS": sha256sums(manifest),
                "POSTGRES_USER": "postgres",
            },
            blob_sas=restore_grant(self.blob, prefix, manifest, None, 3 * 3600),
        )
        try:
            if rss is None:
                return timed(lambda: self.platform.run_job(spec, lambda _line: None))
            with rss:
                return timed(lambda: self.platform.run_job(spec, lambda _line: None))
        finally:
            self.platform.delete_instance(restored)

    # -- compression --

    def compression_table(self, levels: Sequence[int]) -> list[dict[str, Any]]:
        """pg_dump -Fc -Z level of every database into a pipe that only counts: size and seconds."""
        source_mib = self.source_mib()
        table = []
        for level in levels:
            script = "\n".join(f"pg_dump -w -Fc -Z {level} -d {db} | wc -c" for db in self.databases())
            runs, cpu = [], []
            for _ in range(self.args.repeat):
                started, used = time.perf_counter(), children_cpu_seconds()
                out = shell(script, self.tools_env(), as_postgres=True)
                runs.append(time.perf_counter() - started)
                cpu.append(children_cpu_seconds() - used)
            seconds = statistics.median(runs)
            dump_mib = sum(int(n) for n in out.split()) / 2**20
            table.append(
                {
                    "level": f"gzip:{level}" if level else "none",
                    "dump_mib": round(dump_mib, 2),
                    "seconds": round(seconds, 2),
                    # pg_dump's own CPU (compression happens there): what a noisy neighbour does not skew
                    "pg_dump_cpu_seconds": round(statistics.median(cpu), 2),
                    "source_mib_per_s": round(source_mib / seconds, 1),
                }
            )
        return table

    def close(self) -> None:
        for ref in (self.source,):
            self.platform.delete_instance(ref)
        self.azurite.stop()


LINES = ("backup_floor", "backup_raw", "backup_ours", "restore_raw", "restore_ours")


def cpu_timed(samples: Samples, action: Callable[[], Any]) -> Any:
    """Runs one line: its seconds and its processes' CPU seconds go into `samples`."""
    used = children_cpu_seconds()
    started = time.perf_counter()
    result = action()
    samples.seconds.append(time.perf_counter() - started)
    samples.cpu_seconds.append(children_cpu_seconds() - used)
    return result


def measure_lines(bench: Bench, repeat: int, rss: tuple[PeakTreeRss, PeakTreeRss] | None = None) -> tuple:
    """Every line `repeat` times, interleaved (a noisy neighbour hits every line alike); returns
    the lines and the last ours image's prefix."""
    lines = {name: Samples() for name in LINES}
    raw_prefix, ours_prefix = "", ""
    for _ in range(repeat):
        cpu_timed(lines["backup_floor"], bench.backup_floor)
        cpu_timed(lines["backup_raw"], bench.backup_raw)
        raw_prefix = f"raw/{bench.attempt}"
        ours_prefix = cpu_timed(lines["backup_ours"], lambda: bench.backup_ours(rss[0] if rss else None)[1])
    for _ in range(repeat):
        cpu_timed(lines["restore_raw"], lambda: bench.restore_raw(raw_prefix))
        cpu_timed(lines["restore_ours"], lambda: bench.restore_ours(ours_prefix, rss[1] if rss else None))
    return lines, ours_prefix


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="toygres-bench-"))
    root.chmod(0o711)
    bench = Bench(root, args)
    pinning = Pinning(bench.server_pids) if args.pin else None
    try:
        bench.load_source()
        context: dict[str, Any] = {"rows_1x": args.rows, "scale": args.scale, "repeat": args.repeat}
        context["pinned"] = (
            {"servers": sorted(pinning.servers), "jobs": sorted(pinning.jobs)} if pinning is not None else None
        )
        context["dump_compression"] = args.compression
        context["source_mib_1x"] = round(bench.source_mib(), 1)
        if pinning is not None:
            pinning.apply(True)
        rss: dict[str, float] = {}
        backup_rss, restore_rss = PeakTreeRss(), PeakTreeRss()
        _, prefix = bench.backup_ours(backup_rss)
        bench.restore_ours(prefix, restore_rss)
        rss["backup_1x"], rss["restore_1x"] = backup_rss.peak_mib, restore_rss.peak_mib
        rss_by_command = {"backup_1x": backup_rss.breakdown(), "restore_1x": restore_rss.breakdown()}
        context["dump_mib_1x"] = round(bench.blob.read_manifest(prefix)[0].total_bytes / 2**20, 2)
        lines_1x, _ = measure_lines(bench, 1)
        context["throughput_1x"] = throughput(lines_1x, context["source_mib_1x"], context["dump_mib_1x"])
        compression = bench.compression_table(args.levels)

        # The timed lines run on --scale x the data, which is also the memory line's 10x
        bench.add_rows(args.rows * (args.scale - 1))
        context["source_mib_10x"] = round(bench.source_mib(), 1)
        backup_rss, restore_rss = PeakTreeRss(), PeakTreeRss()
        lines, ours_prefix = measure_lines(bench, args.repeat, (backup_rss, restore_rss))
        rss["backup_10x"], rss["restore_10x"] = backup_rss.peak_mib, restore_rss.peak_mib
        rss_by_command |= {"backup_10x": backup_rss.breakdown(), "restore_10x": restore_rss.breakdown()}
        context["dump_mib_10x"] = round(bench.blob.read_manifest(ours_prefix)[0].total_bytes / 2**20, 2)
        context["throughput_10x"] = throughput(lines, context["source_mib_10x"], context["dump_mib_10x"])
        core = min(pinning.jobs) if pinning is not None else 0
        context["verify"] = bench.verify_speed(ours_prefix, core)
        print(f"archive reader alone on one core: {context['verify']}", flush=True)
        encryption = bench_encryption(bench.platform, bench.source, bench.blob, root, args.repeat, bench.backup_env())
        print(encryption.line(), flush=True)
        parallel: dict[str, Any] = {}
        if not args.skip_parallel:
            parallel = measure_parallel(
                bench.platform,
                bench.blob,
                root,
                rows=args.rows * args.scale,
                tables=args.parallel_tables,
                jobs=args.parallel_jobs,
                repeat=args.repeat,
                # pinned like the lines above: its source server on the servers' core, the jobs on the others
                pin_servers=pinning.pin_servers if pinning is not None else None,
                azurite_pid=bench.azurite.process.pid if bench.azurite.process is not None else None,
            )
            print(describe_parallel(parallel), flush=True)
            context["parallel"] = parallel
        unpinned = None
        if pinning is not None:  # the same 10x lines with every process free to use every core
            pinning.apply(False)
            unpinned, _ = measure_lines(bench, args.unpinned_repeat)
            context["throughput_10x_unpinned"] = throughput(
                unpinned, context["source_mib_10x"], context["dump_mib_10x"]
            )
        overhead = None if args.skip_overhead else measure_overhead(args.repeat)
        context["versions"] = {
            "pg_dump": shell("pg_dump --version", bench.tools_env()).strip(),
            "azcopy": shell("azcopy --version", bench.tools_env()).strip(),
        }
        return assemble_results(
            lines=lines,
            rss_mib=rss,
            compression=compression,
            context=context,
            parallel=parallel_ratios(parallel),
            overhead=overhead,
            encryption_ratio=round(encryption.ratio, 3),
            unpinned=unpinned,
            lines_1x=lines_1x,
            verify_mib_per_s=max(context["verify"]["python_job"], context["verify"]["python_bench"]),
            rss_by_command=rss_by_command,
        )
    finally:
        if pinning is not None:
            pinning.apply(False)
        bench.close()
        shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="rows in the generated table at 1x (about 200 MiB of databases)"
    )
    parser.add_argument(
        "--compression", default=DEFAULT_DUMP_COMPRESSION, help="pg_dump -Z of every backup line (ours and raw)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each line (medians, min-max)")
    parser.add_argument("--scale", type=int, default=10, help="the data multiplier of the memory line")
    parser.add_argument("--parallel-jobs", type=int, default=2, help="parallel mode: pg_dump/pg_restore -j")
    parser.add_argument("--parallel-tables", type=int, default=4, help="parallel mode: tables the rows spread over")
    parser.add_argument("--skip-parallel", action="store_true", help="leave out the parallel-mode lines")
    parser.add_argument("--skip-overhead", action="store_true", help="leave out the orchestration overhead runs")
    parser.add_argument("--json", type=Path, help="also write the results to this file as JSON")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rows, one run, two gzip levels")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None,
        help="source server + Azurite on the first core, the job tree on the others (default with >= 2 cores); "
        "the 10x lines then run unpinned too",
    )
    parser.add_argument("--unpinned-repeat", type=int, default=1, help="runs of each unpinned 10x line")
    args = parser.parse_args(argv)
    args.levels = GZIP_LEVELS
    if args.quick:
        args.rows, args.repeat, args.levels = 20_000, 1, (1, 6)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    require_tools()
    results = run(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))


if __name__ == "__main__":
    main()
