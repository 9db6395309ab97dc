"""One process archiving many instances (resources/platform/wal_archiver_pool.py, the Kubernetes
archiver's program): one pg_receivewal per instance under one Python interpreter, instances added
and removed by rewriting its configuration, every segment archived."""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from records import InstanceRef
from records.wal import SLOT_NAME
from resources.platform.base import PROJECT_DIR
from resources.platform.postgres_server import pgpass_line, postgres_bindir, write_private_file
from resources.platform.wal_archiver import ArchiverConfig
from resources.platform.wal_archiver_pool import ARCHIVERS_FILE, ArchiverSet, last_errors
from tests.test_pitr_archiving import has_segment, slot_active, switch_wal, wait_for
from toygres_pipelines.dev.demo import provision_server


def slot_exists(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT FROM pg_replication_slots WHERE slot_name = %s", [SLOT_NAME]).fetchone() is not None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.fixture
def two_instances(platform):
    made = []
    for _ in range(2):
        ref = InstanceRef(k8s_name=f"pool-{uuid.uuid4().hex[:8]}", namespace="default")
        password = SecretStr(secrets.token_urlsafe(12))
        provision_server(platform, ref, password)
        made.append((ref, password, platform.server_record(ref).port))
    yield made
    for ref, _, _ in made:
        platform.delete_instance(ref)


def test_one_process_archives_many_instances_and_follows_its_configuration(two_instances, platform, blob, tmp_path):
    config_dir, work_dir = tmp_path / "config", tmp_path / "work"
    config_dir.mkdir()
    bindir = str(postgres_bindir("15"))
    configs = [
        ArchiverConfig(
            namespace=ref.namespace, k8s_name=ref.k8s_name, host="127.0.0.1", port=port, user="postgres",
            bindir=bindir, container_url=blob.container_url, partial_seconds=0.5,
        )
        for ref, _, port in two_instances
    ]  # fmt: skip
    write_private_file(config_dir / "sas", blob.container_write_token(3600).get_secret_value(), for_service_user=False)
    write_private_file(
        config_dir / "pgpass",
        "".join(pgpass_line("127.0.0.1", port, "postgres", pw.get_secret_value()) for _, pw, port in two_instances),
        for_service_user=False,
    )
    (config_dir / ARCHIVERS_FILE).write_text(ArchiverSet(archivers=configs).model_dump_json())
    dsns = [
        psycopg.conninfo.make_conninfo(host="127.0.0.1", port=port, user="postgres", password=pw.get_secret_value())
        for _, pw, port in two_instances
    ]
    log = tmp_path / "pool.log"
    with open(log, "w") as out:
        pool = subprocess.Popen(
            [sys.executable, "-m", "resources.platform.wal_archiver_pool", str(config_dir), str(work_dir)],
            cwd=PROJECT_DIR, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        for dsn in dsns:
            wait_for(lambda dsn=dsn: slot_active(dsn), "each instance streaming from its slot")
        # One interpreter: the pool's children are its pg_receivewal processes, one per instance.
        # (Polled: a slot reads active as soon as a receiver holds it, and one loaded run listed a
        # single child right then.)
        receivers = lambda: [k for k in children(pool.pid) if comm(k) == "pg_receivewal"]  # noqa: E731
        wait_for(lambda: len(receivers()) == 2, "one pg_receivewal per instance")
        kids = children(pool.pid)
        assert len(kids) == 2 and all(comm(k) == "pg_receivewal" for k in kids)
        segments = [switch_wal(dsn) for dsn in dsns]
        for (ref, _, _), segment in zip(two_instances, segments, strict=True):
            wait_for(lambda ref=ref, segment=segment: has_segment(blob, ref, segment), f"{segment} of {ref.k8s_name}")
        pool_kib, receiver_kib = rss_kib(pool.pid), sum(rss_kib(k) for k in kids)
        print(f"pool RSS {pool_kib} KiB for 2 instances, pg_receivewal {receiver_kib / 2:.0f} KiB each")
        # An instance removed from the configuration is stopped; the other keeps streaming.
        (config_dir / ARCHIVERS_FILE).write_text(ArchiverSet(archivers=configs[1:]).model_dump_json())
        wait_for(lambda: not slot_exists(dsns[0]), "the removed instance's receiver stopped, its slot dropped")
        assert slot_active(dsns[1])
        after = switch_wal(dsns[1])
        ref1 = two_instances[1][0]
        wait_for(lambda: has_segment(blob, ref1, after), "the kept instance still archived")
        assert len(children(pool.pid)) == 1
    finally:
        pool.terminate()
        pool.wait(timeout=60)
    statuses = last_errors(log.read_text().splitlines())
    assert set(statuses) == {f"default/{ref.k8s_name}" for ref, _, _ in two_instances}
    assert statuses[f"default/{ref1.k8s_name}"] is None
