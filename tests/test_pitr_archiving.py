"""Continuous WAL archiving on the local platform (docs/pitr.md): pg_receivewal on a slot, every
segment in blob storage with its checksum, gaps found, the slot resumed after a crash."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from records import InstanceRef
from records.wal import SLOT_NAME, find_gaps, segment_number
from resources.platform.base import WalArchiverSpec
from resources.platform.local_archivers import archiver_dir, pid_of
from resources.wal_archive import list_timelines, read_segment
from toygres_pipelines.dev.demo import provision_server


def wait_for(condition, what: str, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def archived(platform, blob):
    """A fresh instance of its own with an archiver streaming into the test's container."""
    ref = InstanceRef(k8s_name=f"wal-{uuid.uuid4().hex[:8]}", namespace="default")
    password = SecretStr(secrets.token_urlsafe(12))
    provision_server(platform, ref, password)
    endpoints = platform.endpoints(ref)
    dsn = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=password.get_secret_value()
    )

    def start(age_recipient: str | None = None) -> WalArchiverSpec:
        spec = WalArchiverSpec(
            instance=ref,
            container_url=blob.container_url,
            blob_sas=blob.container_write_token(3600),
            age_recipient=age_recipient,
            partial_seconds=0.5,
        )
        platform.ensure_wal_archiver(spec)
        wait_for(lambda: slot_active(dsn), "the archiver streaming from its slot")
        return spec

    yield ref, dsn, start
    directory = archiver_dir(Path(platform.state_dir) / "archivers", ref)
    for name in ("archiver.log", "status.json"):  # shown when the test failed
        print(name, (directory / name).read_text() if (directory / name).exists() else "-")
    platform.remove_wal_archiver(ref)
    platform.delete_instance(ref)


def pid_of_gone(pid: int) -> bool:
    """The process ended (a zombie not yet reaped by its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def slot_active(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [SLOT_NAME]).fetchone()
    return bool(row and row[0])


def switch_wal(dsn: str, rows: int = 1) -> str:
    """Commit rows, then close the segment; returns the segment just finished."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (id serial, at timestamptz default now())")
        for _ in range(rows):
            conn.execute("INSERT INTO t DEFAULT VALUES")
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
    assert row is not None
    return row[0]


def archived_segments(blob, ref):
    timelines = list_timelines(blob, ref.namespace, ref.k8s_name)
    return timelines[0].segments if timelines else []


def has_segment(blob, ref, name: str) -> bool:
    return any(s.segment == name and not s.partial for s in archived_segments(blob, ref))


def test_every_segment_reaches_blob_storage_with_its_checksum_under_the_instance_and_system_prefix(archived, blob):
    ref, dsn, start = archived
    start()
    first = switch_wal(dsn)
    second = switch_wal(dsn)
    wait_for(lambda: has_segment(blob, ref, second), f"segment {second} archived")
    timelines = list_timelines(blob, ref.namespace, ref.k8s_name)
    with psycopg.connect(dsn) as conn:
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    assert [(t.system_identifier, t.timeline) for t in timelines] == [(sysid, 1)]
    segment = next(s for s in timelines[0].segments if s.segment == first)
    assert segment.blob_name.startswith(f"wal/default/{ref.k8s_name}/{sysid}/00000001/")
    assert len(read_segment(blob, segment, None)) == 16 * 2**20  # checksum verified inside
    assert find_gaps(timelines[0].segments) == []


def test_a_killed_archiver_resumes_from_its_slot_without_a_gap(archived, blob, platform):
    ref, dsn, start = archived
    start()
    before = switch_wal(dsn)
    wait_for(lambda: has_segment(blob, ref, before), f"segment {before} archived")
    pid = pid_of(archiver_dir(Path(platform.state_dir) / "archivers", ref))
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # the archiver and its pg_receivewal, no chance to upload more
    wait_for(lambda: pid_of(archiver_dir(Path(platform.state_dir) / "archivers", ref)) is None, "archiver gone")
    # While it is down the server keeps writing: the slot holds that WAL back.
    missed = [switch_wal(dsn, rows=3) for _ in range(3)]
    start()  # what the reconciling sensor does on its next tick
    wait_for(lambda: all(has_segment(blob, ref, name) for name in missed), f"segments {missed} archived")
    segments = archived_segments(blob, ref)
    assert find_gaps(segments, since=before) == []
    assert segment_number(missed[-1]) - segment_number(before) == 3


def test_a_deleted_segment_is_reported_as_a_gap(archived, blob):
    ref, dsn, start = archived
    start()
    names = [switch_wal(dsn) for _ in range(3)]
    wait_for(lambda: has_segment(blob, ref, names[-1]), "segments archived")
    middle = next(s for s in archived_segments(blob, ref) if s.segment == names[1])
    blob._container.delete_blob(middle.blob_name)
    gaps = find_gaps(archived_segments(blob, ref))
    assert [(g.after, g.before) for g in gaps] == [(names[0], names[2])]


def test_encrypted_wal_round_trips(archived, blob, tmp_path):
    ref, dsn, start = archived
    identity = tmp_path / "identity"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True
    ).stdout.strip()
    start(age_recipient=recipient)
    name = switch_wal(dsn, rows=5)
    wait_for(lambda: has_segment(blob, ref, name), f"segment {name} archived")
    segment = next(s for s in archived_segments(blob, ref) if s.segment == name)
    assert segment.encrypted and segment.blob_name.endswith(".zst.age")
    assert blob.read_head(segment.blob_name, 21) == b"age-encryption.org/v1"
    plaintext = read_segment(blob, segment, str(identity))
    assert len(plaintext) == 16 * 2**20


def test_the_sensor_archives_every_running_instance_and_removes_the_archiver_of_one_gone(cms, blob, platform, archived):
    from records import InstanceState
    from toygres_pipelines.dev.demo import register_running
    from toygres_pipelines.pitr.archivers import reconcile_archivers

    ref, dsn, _ = archived
    instance = register_running(cms, platform, ref)
    done = reconcile_archivers(cms, blob, platform, log=print)
    assert done.started == [f"default/{ref.k8s_name}"] and done.failed == {}
    wait_for(lambda: slot_active(dsn), "the sensor's archiver streaming")
    assert reconcile_archivers(cms, blob, platform, log=print).started == []  # already running

    cms.instances.transition(instance.id, InstanceState.stopped, reason="test")
    done = reconcile_archivers(cms, blob, platform, log=print)
    assert done.removed == [f"default/{ref.k8s_name}"]
    assert ref not in platform.wal_archivers()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0


def test_an_instance_refusing_replication_gets_a_named_reason_not_a_silent_gap(archived, platform):
    ref, dsn, _ = archived
    hba = platform.instance_dir(ref) / "config" / "pg_hba.conf"
    hba.write_text("".join(line for line in hba.read_text().splitlines(keepends=True) if "replication" not in line))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    platform.ensure_wal_archiver(WalArchiverSpec(instance=ref, container_url="http://127.0.0.1:1/none", blob_sas=None))
    reason = wait_for(
        lambda: (
            (platform.wal_archiver_error(ref) or "") if "pg_hba" in (platform.wal_archiver_error(ref) or "") else ""
        ),
        "the archiver's reason",
    )
    assert "replication connection" in reason and reason.startswith("pg_receivewal exited")


def in_process_archiver_config(directory: Path, platform, blob, ref: InstanceRef, **settings):
    """The files and configuration of an archiver run in the test's own process (its pgpass, SAS)."""
    from resources.platform.postgres_server import pgpass_line, postgres_bindir, write_private_file
    from resources.platform.wal_archiver import ArchiverConfig

    endpoints = platform.endpoints(ref)
    directory.mkdir(exist_ok=True)
    write_private_file(
        directory / "pgpass",
        pgpass_line("127.0.0.1", endpoints.port, "postgres", platform.read_instance_password(ref).get_secret_value()),
        for_service_user=False,
    )
    (directory / "sas").write_text(blob.container_write_token(3600).get_secret_value())
    return ArchiverConfig(
        namespace=ref.namespace, k8s_name=ref.k8s_name, host="127.0.0.1", port=endpoints.port, user="postgres",
        bindir=str(postgres_bindir(None)), container_url=blob.container_url, **settings,
    )  # fmt: skip


def test_an_archiver_whose_directory_is_gone_ends_with_its_pg_receivewal(archived, platform):
    """A deleted state directory (a test session's, a wiped dev stack) leaves no process behind."""
    import shutil

    ref, dsn, start = archived
    start()
    directory = archiver_dir(Path(platform.state_dir) / "archivers", ref)
    pid = pid_of(directory)
    assert pid is not None
    shutil.rmtree(directory)
    wait_for(lambda: pid_of_gone(pid), "the archiver gone")
    wait_for(lambda: not slot_active(dsn), "its pg_receivewal gone")


def test_a_directory_deleted_in_the_middle_of_a_round_still_ends_its_pg_receivewal(archived, blob, platform, tmp_path):
    """The directory can vanish while a round runs, not only between rounds (a loaded run left a
    pg_receivewal streaming from the slot after its archiver died on the status it could no longer
    write): the archiver still stops its receiver and ends."""
    import shutil

    from resources.platform.wal_archiver import Archiver, config_path

    ref, dsn, _ = archived
    directory = tmp_path / "archiver"
    config = in_process_archiver_config(directory, platform, blob, ref)
    config_path(directory).write_text(config.model_dump_json())
    archiver = Archiver(directory)
    measure = archiver.measure

    def measure_then_lose_the_directory():
        measure()
        if archiver.receiver is not None and directory.exists():
            wait_for(lambda: slot_active(dsn), "the receiver streaming")
            shutil.rmtree(directory)

    archiver.measure = measure_then_lose_the_directory
    try:
        archiver.run()
        wait_for(lambda: not slot_active(dsn), "its pg_receivewal gone", timeout=30)
    finally:
        if archiver.receiver is not None and archiver.receiver.poll() is None:
            archiver.receiver.kill()
            archiver.receiver.wait()


def test_wal_archive_fresh_judges_the_lag_against_the_rpo_target_setting(cms, blob, platform, archived, monkeypatch):
    """TOYGRES_RPO_TARGET_SECONDS, not a constant: an archive 2 s behind is an ERROR against a 2 s
    target and fine against an hour."""
    from datetime import UTC, datetime

    import dagster as dg

    from toygres_pipelines.dev.demo import register_running
    from toygres_pipelines.pitr.checks import (
        FLEET,
        archive_health,
        check_wal_archives,
        wal_archive_continuous,
        wal_archive_fresh_check,
    )
    from toygres_pipelines.pitr.settings import PitrSettings

    ref, dsn, start = archived
    start()
    source = register_running(cms, platform, ref)
    switch_wal(dsn)
    wait_for(lambda: archive_health(cms, blob, platform, source, datetime.now(UTC)).lag_seconds is not None, "WAL")
    platform.remove_wal_archiver(ref)  # nothing more is archived: the lag grows from here
    wait_for(lambda: (archive_health(cms, blob, platform, source, datetime.now(UTC)).lag_seconds or 0) > 2.5, "lag")

    def evaluate():
        settings = PitrSettings.from_env()  # as definitions.py reads it when the code location loads
        defs = dg.Definitions(
            assets=[dg.AssetSpec(FLEET)],
            asset_checks=[wal_archive_fresh_check(settings), wal_archive_continuous],
            jobs=[check_wal_archives],
            resources={"cms": cms, "blob": blob, "platform": platform},
        )
        result = defs.resolve_job_def("check_wal_archives").execute_in_process(instance=dg.DagsterInstance.ephemeral())
        found = {e.check_name: e for e in result.get_asset_check_evaluations()}
        return found["wal_archive_fresh"]

    monkeypatch.setenv("TOYGRES_RPO_TARGET_SECONDS", "2")
    red = evaluate()
    assert not red.passed and red.severity is dg.AssetCheckSeverity.ERROR
    assert f"default/{ref.k8s_name} (lag " in red.description and "s > 2s" in red.description
    assert red.metadata["rpo_target_seconds"].value == 2.0
    monkeypatch.setenv("TOYGRES_RPO_TARGET_SECONDS", "3600")
    green = evaluate()
    assert green.passed, green.description


def test_a_partial_segment_still_being_zero_filled_is_not_uploaded_until_it_is_whole(blob, tmp_path):
    """pg_receivewal zero-fills a new .partial to a whole segment before writing WAL into it: a
    read in the middle is short (a loaded run replayed one: "has wrong size: 11853824 instead of
    16777216"). Such a read holds nothing (zeros) and is not uploaded; the whole file is."""
    from records.wal import timeline_prefix
    from resources.platform.wal_archiver import Archiver, ArchiverConfig

    config = ArchiverConfig(
        namespace="default", k8s_name="short-abcde", host="127.0.0.1", port=1, user="postgres",
        bindir="/usr/bin", container_url=blob.container_url,
    )  # fmt: skip
    archiver = Archiver(tmp_path, config)
    archiver.system_identifier = "7000000000000000001"
    partial = archiver.spool / "000000010000000000000003.partial"
    container = blob._container
    prefix = timeline_prefix("default", "short-abcde", archiver.system_identifier, 1)

    partial.write_bytes(b"\0" * (11 * 1024 * 1024))
    archiver.upload_pending(container)
    assert list(container.list_blob_names(name_starts_with=prefix)) == []

    partial.write_bytes(b"\1" + b"\0" * (16 * 1024 * 1024 - 1))
    archiver.last_partial_upload = 0.0
    archiver.upload_pending(container)
    assert len(list(container.list_blob_names(name_starts_with=prefix))) == 1


def test_an_upload_never_claims_wal_the_receiver_has_not_flushed(archived, blob, platform, tmp_path):
    """The window's end is what the archive holds: an upload read while pg_receivewal lags behind
    the server (a loaded run restored "latest" without a commit made before the window's end)
    claims only the server's time at which its flush position was confirmed received."""
    from resources.platform.wal_archiver import Archiver

    ref, dsn, _ = archived
    archiver = Archiver(tmp_path, in_process_archiver_config(tmp_path, platform, blob, ref, partial_seconds=0.0))

    def covered():
        archiver.step()
        timelines = list_timelines(blob, ref.namespace, ref.k8s_name)
        return timelines[0].covered_until if timelines else None

    try:
        wait_for(lambda: archiver.step() and slot_active(dsn), "the receiver streaming")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE marks (label text)")
            received = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        wait_for(lambda: (at := covered()) is not None and at >= received, "the first commit covered")
        assert archiver.receiver is not None
        os.kill(archiver.receiver.pid, signal.SIGSTOP)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO marks VALUES ('unreceived')")
                unreceived = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            for partial in archiver.spool.glob("*.partial"):  # as if the receiver had written something
                os.utime(partial)
            assert (covered() or received) < unreceived
        finally:
            os.kill(archiver.receiver.pid, signal.SIGCONT)
        wait_for(lambda: (at := covered()) is not None and at >= unreceived, "the second commit covered")
    finally:
        archiver.close()
        archiver.drop_slot()


def test_a_tenants_decoy_catalogue_function_never_decides_where_its_wal_is_archived(archived, blob):
    """The archiver asks the server its system identifier (the WAL's prefix, matched against the base
    backups'): the tenant's own pg_control_system() ahead of pg_catalog on its search_path must not answer."""
    ref, dsn, start = archived
    with psycopg.connect(dsn, autocommit=True) as conn:
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
        conn.execute("CREATE SCHEMA decoy")
        conn.execute(
            "CREATE FUNCTION decoy.pg_control_system(OUT system_identifier bigint) LANGUAGE sql AS 'SELECT 42::bigint'"
        )
        conn.execute("ALTER ROLE postgres SET search_path = decoy, pg_catalog")
    start()
    second = switch_wal(dsn)
    wait_for(lambda: list_timelines(blob, ref.namespace, ref.k8s_name), "a segment archived")
    assert [t.system_identifier for t in list_timelines(blob, ref.namespace, ref.k8s_name)] == [sysid], second


def test_a_tenants_date_style_never_stops_its_wal_archiving(archived, blob):
    """DateStyle is a tenant's to set for its role (ALTER ROLE ... SET DateStyle = 'SQL, DMY', a
    European habit), and it applies to every session that logs in: the archiver's mark query reads
    the server's clock, which psycopg parses in ISO only. The archiver's sessions take the deployment's
    DateStyle, so its segments are still uploaded."""
    ref, dsn, start = archived
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres SET DateStyle = 'SQL, DMY'")
    start()
    segment = switch_wal(dsn)
    wait_for(lambda: has_segment(blob, ref, segment), f"segment {segment} archived")
