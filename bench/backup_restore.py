"""Backup and restore speed and memory against a raw baseline measured in the same run.

    .venv/bin/python bench/backup_restore.py [--rows 2000000] [--repeat 3]

Starts its own Azurite and a source server (pagila + a generated table of --rows rows), then:
  backup   raw:  pg_dump -Fc | azcopy PipeBlob              (what any script would do)
           ours: the backup job script (globals + every database, sha256, manifest) + the
                 image verification the asset does before marking an image ready
  restore  raw:  azcopy BlobPipe > file; pg_restore into a fresh server
           ours: the restore job script (download, sha256 check, initdb, roles, pg_restore -j2)
  encryption: the backup (job + verification) with an age recipient against without (bench/encryption.py)
Prints seconds (median), MiB/s and the ratio ours/raw, and the peak RSS of the job processes.
Then parallel mode against the raw single stream on its own data (bench/parallel.py).
Nothing here asserts a threshold: read the ratios.
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
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr  # noqa: E402

from bench.encryption import bench_encryption  # noqa: E402
from bench.parallel import describe as describe_parallel  # noqa: E402
from bench.parallel import measure_parallel  # noqa: E402
from records import InstanceRef  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.platform.base import JobKind, JobSpec  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from resources.platform.postgres_server import free_port, postgres_bindir  # noqa: E402
from toygres_pipelines.dev.demo import load_pagila, provision_server, psql  # noqa: E402
from toygres_pipelines.dev.stack import Azurite, require_tools  # noqa: E402
from toygres_pipelines.images.verification import sha256sums, verify_image  # noqa: E402

PASSWORD = SecretStr("bench-password")


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class PeakTreeRss:
    """Samples the summed RSS of every descendant process (the whole job tree) while active."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()

    def _descendants_rss_kib(self) -> int:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
                rss[int(entry.name)] = int(fields[21]) * resource.getpagesize() // 1024
            except (OSError, IndexError, ValueError):
                continue
        me, total = os.getpid(), 0
        for pid in rss:
            ancestor = parents.get(pid)
            while ancestor and ancestor != me:
                ancestor = parents.get(ancestor)
            if ancestor == me:
                total += rss[pid]
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._descendants_rss_kib() / 1024)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakTreeRss:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def shell(command: str, env: dict[str, str]) -> None:
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"baseline command failed: {done.stderr.strip()[-1000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the generated table")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallel-jobs", type=int, default=2, help="parallel mode: pg_dump/pg_restore -j")
    parser.add_argument("--parallel-tables", type=int, default=4, help="parallel mode: tables the --rows spread over")
    args = parser.parse_args()
    require_tools()

    root = Path(tempfile.mkdtemp(prefix="toygres-bench-"))
    root.chmod(0o711)
    azurite = Azurite(root / "azurite", free_port()).start()
    platform = LocalPlatform(state_dir=str(root / "platform"), azcopy_path=str(azcopy_path()))
    source = InstanceRef(k8s_name="bench-src", namespace="default")
    try:
        blob = BlobStorageResource(connection_string=azurite.connection_string, container="bench")
        blob.ensure_container()
        sas = blob.job_sas("racwdl", timedelta(hours=2))
        provision_server(platform, source, PASSWORD)
        load_pagila(platform, source)
        psql(
            platform,
            source,
            "-c",
            f"CREATE TABLE bench AS SELECT g AS id, md5(g::text) AS payload, now() - g * interval '1 second' AS at "
            f"FROM generate_series(1, {args.rows}) g",
            database="pagila",
        )
        endpoints = platform.endpoints(source)
        size = int(psql(platform, source, "-Atc", "SELECT sum(pg_database_size(datname)) FROM pg_database").strip())

        tools_env = {
            **os.environ,
            "PGPASSWORD": PASSWORD.get_secret_value(),
            "PGHOST": endpoints.host,
            "PGPORT": str(endpoints.port),
            "PGUSER": "postgres",
            "HOME": str(root / "home"),
            "AZCOPY_LOG_LOCATION": str(root / "home"),
            "AZCOPY_JOB_PLAN_LOCATION": str(root / "home"),
            "PATH": f"{postgres_bindir()}:{Path(azcopy_path()).parent}:{os.environ['PATH']}",
        }
        azcopy = str(azcopy_path())
        raw_url = f"{blob.folder_url('raw/pagila.dump')}?{sas.get_secret_value()}"
        with PeakTreeRss() as raw_backup_rss:
            raw_backup = [
                timed(
                    lambda: shell(
                        f"pg_dump -Fc -d pagila | {azcopy} copy '{raw_url}' --from-to=PipeBlob --output-level=quiet",
                        tools_env,
                    )
                )
                for _ in range(args.repeat)
            ]

        ours_backup, verify_seconds = [], []
        with PeakTreeRss() as ours_backup_rss:
            for attempt in range(args.repeat):
                prefix = f"images/bench-{attempt}"
                spec = JobSpec(
                    kind=JobKind.backup,
                    name=f"backup-bench-{attempt}",
                    script="backup.sh",
                    instance=source,
                    env={
                        "BLOB_URL": blob.folder_url(prefix),
                        "IMAGE_NAME": f"bench-{attempt}",
                        "SOURCE_INSTANCE": source.k8s_name,
                        "SOURCE_NAMESPACE": source.namespace,
                    },
                    blob_sas=sas,
                )
                job_seconds = timed(lambda: platform.run_job(spec, lambda _line: None))
                verify_seconds.append(timed(lambda: verify_image(blob, prefix)))
                ours_backup.append(job_seconds + verify_seconds[-1])
        manifest, manifest_sha = blob.read_manifest("images/bench-0")
        dump_bytes = manifest.total_bytes
        encryption = bench_encryption(platform, source, blob, sas, root, args.repeat)

        target = InstanceRef(k8s_name="bench-raw", namespace="default")
        raw_restore = []
        raw_restore_rss = PeakTreeRss()
        for _ in range(args.repeat):
            platform.delete_instance(target)
            provision_server(platform, target, PASSWORD)
            target_port = platform.endpoints(target).port
            with raw_restore_rss:
                raw_restore.append(
                    timed(
                        lambda: shell(
                            f"{azcopy} copy '{raw_url}' --from-to=BlobPipe --output-level=quiet > {root}/raw.dump && "
                            f"createdb -p {target_port} pagila && "
                            f"pg_restore -j2 --no-owner --no-acl -p {target_port} -d pagila {root}/raw.dump",
                            tools_env,
                        )
                    )
                )

        ours_restore = []
        ours_restore_rss = PeakTreeRss()
        for attempt in range(args.repeat):
            restored = InstanceRef(k8s_name=f"bench-restored-{attempt}", namespace="default")
            platform.ensure_instance_secret(restored, PASSWORD)
            platform.create_volume(restored, 1)
            spec = JobSpec(
                kind=JobKind.restore,
                name=f"restore-bench-{attempt}",
                script="restore.sh",
                instance=restored,
                env={
                    "BLOB_URL": blob.folder_url("images/bench-0"),
                    "MANIFEST_SHA256": manifest_sha,
                    "BACKUP_SHA256SUMS": sha256sums(manifest),
                    "POSTGRES_USER": "postgres",
                },
                blob_sas=sas,
            )
            with ours_restore_rss:
                ours_restore.append(timed(lambda: platform.run_job(spec, lambda _line: None)))
            platform.delete_instance(restored)

        print(
            f"source: {size / 2**20:.0f} MiB of databases, dump {dump_bytes / 2**20:.1f} MiB, {args.repeat} runs each"
        )
        for label, raw, ours, raw_rss, ours_rss in (
            ("backup ", raw_backup, ours_backup, raw_backup_rss, ours_backup_rss),
            ("restore", raw_restore, ours_restore, raw_restore_rss, ours_restore_rss),
        ):
            raw_s, ours_s = statistics.median(raw), statistics.median(ours)
            print(
                f"{label}  raw {raw_s:6.2f} s ({dump_bytes / 2**20 / raw_s:6.1f} MiB/s)   "
                f"ours {ours_s:6.2f} s ({dump_bytes / 2**20 / ours_s:6.1f} MiB/s)   "
                f"ratio ours/raw {ours_s / raw_s:4.2f}   "
                f"peak job-tree RSS: raw {raw_rss.peak_mib:.0f} MiB, ours {ours_rss.peak_mib:.0f} MiB"
            )
        print(
            f"         of which verification (re-read every byte, pg_restore reads every entry): "
            f"{statistics.median(verify_seconds):.2f} s"
        )
        print(encryption.line())
        # Parallel mode on its own source (bench/parallel.py): its ratios are to the raw single stream.
        parallel = measure_parallel(
            platform,
            blob,
            root,
            rows=args.rows,
            tables=args.parallel_tables,
            jobs=args.parallel_jobs,
            repeat=args.repeat,
        )
        print(describe_parallel(parallel))
    finally:
        for ref in (source, InstanceRef(k8s_name="bench-raw", namespace="default")):
            platform.delete_instance(ref)
        azurite.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
