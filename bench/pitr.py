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

Not measured here (docs/pitr.md says so): pitr_restore_ratio, pitr_vs_logical_restore.
Usage: python bench/pitr.py [--trials 5] [--json PATH]
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
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from records import InstanceRef  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.cms import CMSResource  # noqa: E402
from resources.platform.base import WalArchiverSpec  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_archivers import archiver_dir, pid_of  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from resources.platform.postgres_server import free_port  # noqa: E402
from toygres_pipelines.dev.demo import provision_server, register_running  # noqa: E402
from toygres_pipelines.dev.stack import Azurite, CmsServer, require_tools  # noqa: E402
from toygres_pipelines.pitr.base_backups import take_base_backup  # noqa: E402
from toygres_pipelines.pitr.restore import restore_to_time  # noqa: E402


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
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
        trials = [trial(cms, blob, platform, root, n) for n in range(args.trials)]
        rpos = [t["rpo_seconds"] for t in trials]
        rss = [t["archiver_rss_mib"] for t in trials if t["archiver_rss_mib"] is not None]
        result = {
            "rpo_seconds": {"p50": statistics.median(rpos), "p95": percentile(rpos, 0.95), "max": max(rpos)},
            "archiver_rss_mib_per_instance": statistics.median(rss) if rss else None,
            "wal_upload_bytes_per_wal_byte": statistics.median(t["uploaded_bytes"] / t["wal_bytes"] for t in trials),
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
    main()
