"""Point-in-time recovery numbers (docs/pitr.md), on the local platform with a real CMS, Azurite
and the WAL archiver:

  rpo_seconds                    a writer commits a timestamped row every 100 ms; at a random
                                 moment the source's postmaster gets SIGKILL and its data directory
                                 is removed; a restore to `latest` follows; RPO = kill time - newest
                                 row present (p50/p95/max over --trials)
  archiver_rss_mib_per_instance  resident memory of one archiver (the Python uploader and its
                                 pg_receivewal) while streaming
  wal_upload_bytes_per_wal_byte  bytes uploaded (zstd-compressed segments + partial re-uploads)
                                 per byte of WAL the source wrote

  pitr_restore_ratio             a --size-mib instance (default 1024), a base backup, then
                                 --steady-seconds (default 300) of steady writes; the restore to the
                                 end of them (restore_to_time: plan, download + check everything,
                                 replay, promote, deploy, ready) over a raw baseline in the same run
                                 (azcopy + zstd + tar of the base backup, a restore_command fetching
                                 each segment with azcopy, replay, promote)
  pitr_vs_logical_restore        that physical restore over a logical restore of the same instance
                                 (backup.sh image, restore.sh job + deploy + ready)

Usage: python bench/pitr.py [--trials 5] [--size-mib 1024] [--steady-seconds 300] [--json PATH] [--quick]
(--quick: 64 MiB, 15 s of writes, one RPO trial: a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from bench.backup_restore import shell  # noqa: E402
from records import InstanceRef  # noqa: E402
from records.parallel import SINGLE_STREAM  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.cms import CMSResource  # noqa: E402
from resources.platform.base import DeploySpec, JobKind, JobSpec, WalArchiverSpec  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_archivers import archiver_dir, pid_of  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from resources.platform.postgres_server import free_port, give_to_service_user, postgres_bindir  # noqa: E402
from toygres_pipelines.dev.demo import provision_server, register_running  # noqa: E402
from toygres_pipelines.dev.stack import Azurite, CmsServer, container_sas, require_tools  # noqa: E402
from toygres_pipelines.images.backup import backup_grant  # noqa: E402
from toygres_pipelines.images.verification import sha256sums  # noqa: E402
from toygres_pipelines.pitr.base_backups import take_base_backup  # noqa: E402
from toygres_pipelines.pitr.restore import restore_to_time  # noqa: E402
from toygres_pipelines.pitr.window import plan_recovery, window_of  # noqa: E402
from toygres_pipelines.restores.steps import restore_grant  # noqa: E402


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def rss_mib(pid: int) -> float:
    """VmRSS of a process and its children (the archiver and its pg_receivewal)."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for one in pids:
        for line in Path(f"/proc/{one}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def trial(cms, blob, platform, root: Path, number: int) -> dict:
    ref = InstanceRef(k8s_name=f"rpo-{number}-{secrets.token_hex(3)}", namespace="default")
    password = SecretStr(secrets.token_urlsafe(12))
    provision_server(platform, ref, password)
    endpoints = platform.endpoints(ref)
    dsn = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=password.get_secret_value()
    )
    source = register_running(cms, platform, ref)
    platform.ensure_wal_archiver(
        WalArchiverSpec(instance=ref, container_url=blob.container_url, blob_sas=blob.container_write_token(2 * 3600))
    )
    directory = archiver_dir(Path(platform.state_dir) / "archivers", ref)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE ticks (at timestamptz PRIMARY KEY)")
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    wait_for(lambda: (directory / "status.json").exists(), "archiver status")
    take_base_backup(cms, blob, platform, source, run_id=None, log=lambda _line: None)
    stop = threading.Event()

    def writer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute("INSERT INTO ticks VALUES (clock_timestamp())")
                except psycopg.Error:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    time.sleep(random.uniform(5, 15))  # the bench's random moment, not a test's wait
    archiver_pid = pid_of(directory)
    rss = rss_mib(archiver_pid) if archiver_pid else None
    with psycopg.connect(dsn, autocommit=True) as conn:
        wal_bytes = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", [start_lsn]).fetchone()[0]
    uploaded_before = json.loads((directory / "status.json").read_text())["uploaded_bytes"]
    pgdata = platform.volume_dir(ref) / "pgdata"
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    killed_at = datetime.now(UTC)
    stop.set()
    shutil.rmtree(pgdata, ignore_errors=True)
    time.sleep(3)  # let the archiver upload what it received before the kill (its next rounds)
    restored = restore_to_time(
        cms, blob, platform, source_instance=ref.k8s_name, name=f"rpo-r{number}", dns_label=f"rpo-r{number}-x",
        target_time=None, log=lambda _line: None,
    )  # fmt: skip
    new_ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    new = platform.endpoints(new_ref)
    with psycopg.connect(
        host=new.host, port=new.port, user="postgres", password=password.get_secret_value(), dbname="postgres"
    ) as conn:
        newest = conn.execute("SELECT max(at) FROM ticks").fetchone()[0]
    platform.delete_instance(new_ref)
    platform.remove_wal_archiver(ref)
    platform.delete_instance(ref)
    return {
        "rpo_seconds": (killed_at - newest).total_seconds(),
        "archiver_rss_mib": rss,
        "wal_bytes": int(wal_bytes),
        "uploaded_bytes": int(uploaded_before),
    }


def load(dsn: str, size_mib: int) -> None:
    """About `size_mib` of table and indexes: ~1 KiB rows, a primary key and a secondary index."""
    rows = size_mib * 900
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE payload (id bigint PRIMARY KEY, filler text, at timestamptz)")
        for first in range(1, rows + 1, 100_000):
            conn.execute(
                "INSERT INTO payload SELECT g, repeat(md5(g::text), 28), clock_timestamp()"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                [first, min(rows, first + 99_999)],
            )
        conn.execute("CREATE INDEX payload_head ON payload (left(filler, 12))")
        conn.execute("CHECKPOINT")


def steady_writes(dsn: str, seconds: float, rows: int) -> datetime:
    """Commits every 100 ms for `seconds` (an update of 10 random rows and an insert); returns
    the server's time of the last one: the restores' target."""
    ends = time.monotonic() + seconds
    last = datetime.now(UTC)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz PRIMARY KEY)")
        while time.monotonic() < ends:
            with conn.transaction():
                conn.execute(
                    "UPDATE payload SET filler = md5(random()::text) || filler, at = clock_timestamp()"
                    " WHERE id IN (SELECT 1 + (random() * %s)::bigint FROM generate_series(1, 10))",
                    [rows - 1],
                )
                last = conn.execute("INSERT INTO ticks VALUES (clock_timestamp()) RETURNING at").fetchone()[0]
            time.sleep(0.1)  # the writer's pace, not a wait for a condition
    return last


def raw_pitr_restore(platform, blob, azurite, root: Path, plan, port: int) -> tuple[float, int]:
    """The raw baseline: what any operator would script with the same tools. Its seconds and how
    many segments its restore_command fetched: the plan's, in order, from the first on (a baseline
    replaying only the base backup's own pg_wal would be no baseline)."""
    work = root / "raw-pitr"
    give_to_service_user(work, 0o755)
    shutil.copy(azcopy_path(), work / "azcopy")
    (work / "azcopy").chmod(0o755)
    sas = container_sas(azurite.connection_string, blob.container, "rl", timedelta(hours=3))
    # One file per segment holding its URL: the lookup is the file name, so the fetch cannot pick
    # another segment's URL (awk's `$1 == s` compared the all-digit names as numbers, matched every
    # line, and azcopy panicked on the multi-line URL: docs/benchmarks.md).
    urls = work / "urls"
    give_to_service_user(urls, 0o755)
    for s in plan.segments:
        (urls / s.segment).write_text(f"{blob.container_url}/{s.blob}?{sas}")
    home = work / "home"
    give_to_service_user(home, 0o700)
    # Every segment the replay asks for comes from blob storage (as in our restore: no local
    # archive), streamed through zstd into place; anything not in the plan (a .history) is absent.
    (work / "fetch").write_text(
        "#!/bin/bash\nset -o pipefail\n"
        f'[[ "$1" =~ ^[0-9A-F]{{24}}$ && -f {urls}/$1 ]] || exit 1\n'
        f'{work}/azcopy copy "$(<{urls}/$1)" --from-to=BlobPipe --log-level=ERROR --output-level=quiet'
        f' | zstd -q -d -c >"$2" && echo "$1" >>{work}/fetched\n'
    )
    (work / "fetch").chmod(0o755)
    (work / "pg_hba.conf").write_text("local all all trust\n")  # its own socket only, as restore-pitr.sh
    (work / "pg_hba.conf").chmod(0o644)
    pgdata = work / "pgdata"
    target = plan.target_time.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    script = f"""
mkdir -m 700 {pgdata}
{work}/azcopy copy '{blob.container_url}/{plan.base.blob}?{sas}' --from-to=BlobPipe --output-level=quiet \\
  | zstd -q -d -c | tar -C {pgdata} -xf -
rm -f {pgdata}/standby.signal {pgdata}/postmaster.pid
touch {pgdata}/recovery.signal
cat >>{pgdata}/postgresql.auto.conf <<CONF
listen_addresses = ''
hba_file = '{work}/pg_hba.conf'
port = {port}
unix_socket_directories = '{work}'
restore_command = '{work}/fetch %f %p'
recovery_target_time = '{target}'
recovery_target_action = 'promote'
hot_standby = off
archive_mode = off
CONF
pg_ctl -D {pgdata} -w -t 3600 -l {work}/log start >/dev/null
export PGHOST={work} PGPORT={port} PGUSER=postgres PGDATABASE=postgres
until [[ "$(psql -X -Atc 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f ]]; do
  pg_ctl -D {pgdata} status >/dev/null || {{ tail -n 20 {work}/log >&2; exit 1; }}
  sleep 0.2
done
pg_ctl -D {pgdata} -w stop -m fast >/dev/null
"""
    env = {
        "HOME": str(home), "AZCOPY_LOG_LOCATION": str(home), "AZCOPY_JOB_PLAN_LOCATION": str(home), "LC_ALL": "C.UTF-8",
        "PATH": f"{postgres_bindir()}:/usr/local/bin:/usr/bin:/bin",
    }  # fmt: skip
    started = time.perf_counter()
    try:
        shell(script, env, as_postgres=True)
        seconds = time.perf_counter() - started
        fetched = list(dict.fromkeys((work / "fetched").read_text().split())) if (work / "fetched").exists() else []
        planned = [s.segment for s in plan.segments]
        if not fetched or fetched != planned[: len(fetched)]:
            raise RuntimeError(f"the raw baseline fetched {fetched}, not a prefix of the plan's {planned}")
        return seconds, len(fetched)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def logical_restore(platform, blob, source: InstanceRef) -> float:
    """backup.sh into a logical image, then (timed) restore.sh into a new instance, deployed and ready."""
    name = f"bench-logical-{secrets.token_hex(3)}"
    prefix = f"images/{name}"
    platform.run_job(
        JobSpec(
            kind=JobKind.backup, name=f"backup-{name}", script="backup.sh", instance=source,
            env={"BLOB_URL": blob.folder_url(prefix), "IMAGE_NAME": name, "SOURCE_INSTANCE": source.k8s_name,
                 "SOURCE_NAMESPACE": source.namespace},
            blob_sas=backup_grant(blob, prefix, 3 * 3600, SINGLE_STREAM),
        ),
        lambda _line: None,
    )  # fmt: skip
    manifest, manifest_sha = blob.read_manifest(prefix)
    restored = InstanceRef(k8s_name=f"{name}-r", namespace="default")
    platform.ensure_instance_secret(restored, platform.read_instance_password(source))
    started = time.perf_counter()
    try:
        platform.create_volume(restored, 10)
        platform.run_job(
            JobSpec(
                kind=JobKind.restore, name=f"restore-{name}", script="restore.sh", instance=restored,
                env={"BLOB_URL": blob.folder_url(prefix), "MANIFEST_SHA256": manifest_sha,
                     "BACKUP_SHA256SUMS": sha256sums(manifest), "POSTGRES_USER": "postgres"},
                blob_sas=restore_grant(blob, prefix, manifest, None, 3 * 3600),
            ),
            lambda _line: None,
        )  # fmt: skip
        platform.deploy_instance(
            DeploySpec(
                instance=restored, postgres_version=manifest.postgres_version, storage_size_gb=10,
                dns_label=restored.k8s_name,
            )
        )  # fmt: skip
        platform.wait_ready(restored, 600)
        return time.perf_counter() - started
    finally:
        platform.delete_instance(restored)


def restore_comparison(cms, blob, platform, azurite, root: Path, size_mib: int, steady_seconds: float) -> dict:
    ref = InstanceRef(k8s_name=f"size-{secrets.token_hex(3)}", namespace="default")
    password = SecretStr(secrets.token_urlsafe(12))
    provision_server(platform, ref, password)
    endpoints = platform.endpoints(ref)
    dsn = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=password.get_secret_value()
    )
    try:
        source = register_running(cms, platform, ref)
        platform.ensure_wal_archiver(
            WalArchiverSpec(
                instance=ref, container_url=blob.container_url, blob_sas=blob.container_write_token(6 * 3600)
            )
        )
        loaded = time.perf_counter()
        load(dsn, size_mib)
        load_seconds = time.perf_counter() - loaded
        with psycopg.connect(dsn) as conn:
            database_bytes = conn.execute("SELECT sum(pg_database_size(datname)) FROM pg_database").fetchone()[0]
        take_base_backup(cms, blob, platform, source, run_id=None, log=lambda _line: None)
        target = steady_writes(dsn, steady_seconds, size_mib * 900)
        steady_writes(dsn, 2, size_mib * 900)  # transactions after the target: replay can stop at it

        def covered() -> bool:
            state = window_of(cms, blob, source)
            return state.window is not None and state.window.latest > target + timedelta(seconds=1)

        wait_for(covered, "the archive to cover the target", timeout=600)
        # Stopped so that both restores are timed without the archiver's load (a restore no longer
        # races it: every partial upload is a blob of its own, docs/pitr.md).
        platform.remove_wal_archiver(ref)
        _base, plan = plan_recovery(cms, blob, source, target)
        raw, raw_fetched = raw_pitr_restore(platform, blob, azurite, root, plan, free_port())
        started = time.perf_counter()
        steps: list[tuple[float, str]] = []  # where our restore's time goes: its log lines, timed

        def timed(line: str) -> None:
            steps.append((round(time.perf_counter() - started, 2), line[:160]))

        restored = restore_to_time(
            cms, blob, platform, source_instance=ref.k8s_name, name="pitr-bench",
            dns_label=f"pitr-bench-{ref.k8s_name}", target_time=target, log=timed,
        )  # fmt: skip
        pitr_seconds = time.perf_counter() - started
        platform.delete_instance(InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace))
        logical = logical_restore(platform, blob, ref)
        return {
            "size_mib": size_mib,
            "database_mib": round(int(database_bytes) / 2**20, 1),
            "load_seconds": round(load_seconds, 1),
            "steady_seconds": steady_seconds,
            "wal_segments_replayed": len(plan.segments),
            "raw_segments_fetched": raw_fetched,
            "pitr_seconds": pitr_seconds,
            "raw_seconds": raw,
            "logical_seconds": logical,
            "pitr_log": steps,
        }
    finally:
        platform.remove_wal_archiver(ref)
        platform.delete_instance(ref)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5, help="RPO trials")
    parser.add_argument("--size-mib", type=int, default=1024, help="the restored instance's size")
    parser.add_argument("--steady-seconds", type=float, default=300, help="writes between base backup and target")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--quick", action="store_true", help="64 MiB, 15 s of writes, one RPO trial")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.size_mib, args.steady_seconds = 1, 64, 15.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    require_tools()
    root = Path(tempfile.mkdtemp(prefix="toygres-bench-pitr-"))
    root.chmod(0o711)
    azurite = Azurite(root / "azurite", free_port()).start()
    cms_server = CmsServer.in_dir(root / "cms")
    try:
        cms = CMSResource(dsn=cms_server.dsn, encryption_key=CMSResource.generate_key())
        cms.migrations.apply()
        blob = BlobStorageResource(connection_string=azurite.connection_string, container="bench-pitr")
        blob.ensure_container()
        platform = LocalPlatform(state_dir=str(root / "platform"), azcopy_path=str(azcopy_path()))
        restores = restore_comparison(cms, blob, platform, azurite, root, args.size_mib, args.steady_seconds)
        trials = [trial(cms, blob, platform, root, n) for n in range(args.trials)]
        rpos = [t["rpo_seconds"] for t in trials]
        rss = [t["archiver_rss_mib"] for t in trials if t["archiver_rss_mib"] is not None]
        result = {
            "rpo_seconds": {"p50": statistics.median(rpos), "p95": percentile(rpos, 0.95), "max": max(rpos)},
            "archiver_rss_mib_per_instance": statistics.median(rss) if rss else None,
            "wal_upload_bytes_per_wal_byte": statistics.median(t["uploaded_bytes"] / t["wal_bytes"] for t in trials),
            "pitr_restore_ratio": restores["pitr_seconds"] / restores["raw_seconds"],
            "pitr_vs_logical_restore": restores["pitr_seconds"] / restores["logical_seconds"],
            "restores": restores,
            "trials": trials,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        azurite.stop()
        cms_server.server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
