"""A hostile tenant's base backup replayed by restore-pitr.sh (docs/security.md, docs/pitr.md).

The tenant is the superuser of its instance: its base backup carries settings it wrote with ALTER
SYSTEM, files it wrote into its data directory and per-role settings in its catalogue. None of it
may run a command, load code, write outside the data directory, reach the network or hang the
restore, and the temporary server holds no secret of the deployment in its environment."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.postgres_server import postgres_bindir
from tests.test_pitr_archiving import archived, has_segment, switch_wal, wait_for  # noqa: F401
from tests.test_pitr_restore import archived_until, commit
from toygres_pipelines.dev.demo import register_running
from toygres_pipelines.pitr.base_backups import take_base_backup
from toygres_pipelines.pitr.restore import run_pitr_job
from toygres_pipelines.pitr.window import plan_recovery


@pytest.fixture
def loot():
    """A directory anyone may write into: where the tenant's code drops what it finds."""
    path = Path(tempfile.mkdtemp(prefix="toygres-loot-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener():
    """A TCP port on loopback that records whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    connected = threading.Event()
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connected.set()
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    stop.set()
    thread.join()
    server.close()


def hostile_backup(cms, blob, platform, archived, statements, after_base=()):  # noqa: F811
    """`statements` in the base backup, `after_base` in the WAL after it, archived up to the commit
    before `after_base`; returns the source, its DSN, that commit's time and the last segment."""
    ref, dsn, start = archived
    start()
    source = register_running(cms, platform, ref)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)
    commit(dsn, "before-base")
    take_base_backup(cms, blob, platform, source, run_id=None, log=print)
    moment = commit(dsn, "after-base")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in after_base:
            conn.execute(statement)
    segment = switch_wal(dsn)
    archived_until(cms, blob, source, moment)
    return source, dsn, moment, segment


def replay(cms, blob, platform, source, name: str) -> tuple[InstanceRef, Path]:
    """restore-pitr.sh of `source`'s archive to its end into a fresh volume (the job alone: the
    restored instance would then run the tenant's own settings, in the tenant's own realm)."""
    _, plan = plan_recovery(cms, blob, source, None)
    ref = InstanceRef(k8s_name=f"{name}-{uuid.uuid4().hex[:6]}", namespace="default")
    platform.ensure_instance_secret(ref, SecretStr(secrets.token_urlsafe(12)))
    platform.create_volume(ref, 1)
    run_pitr_job(platform, blob, ref, plan, "15", 240, print)
    return ref, platform.volume_dir(ref) / "pgdata"


def promoted(pgdata: Path) -> bool:
    tool = str(Path(postgres_bindir("15")) / "pg_controldata")
    state = subprocess.run([tool, str(pgdata)], capture_output=True, text=True, check=True)
    return "Database cluster state:               shut down\n" in state.stdout


def test_tenant_settings_and_files_run_nothing_reach_nothing_and_hang_nothing_in_a_pitr_restore(
    cms,
    blob,
    platform,
    archived,  # noqa: F811
    loot,
    listener,
):
    sh = f'env > {loot}/%s; cat "$AZCOPY_SAS_FILE" "$AGE_IDENTITY_FILE" "$POSTGRES_PASSWORD_FILE" >> {loot}/%s'
    port, connected = listener
    ref, dsn, start = archived
    with psycopg.connect(dsn, autocommit=True) as conn:
        datadir = conn.execute("SHOW data_directory").fetchone()[0]
    steal = (sh % ("search_path", "search_path")).replace("'", "''")
    statements = [
        f"ALTER SYSTEM SET recovery_end_command = '{sh % ('recovery_end', 'recovery_end')}'",
        f"ALTER SYSTEM SET archive_cleanup_command = '{sh % ('archive_cleanup', 'archive_cleanup')}'",
        f"ALTER SYSTEM SET external_pid_file = '{loot}/external_pid_file'",
        f"ALTER SYSTEM SET log_directory = '{loot}/log'",
        "ALTER SYSTEM SET logging_collector = on",
        "ALTER SYSTEM SET log_statement = 'all'",
        "ALTER SYSTEM SET shared_preload_libraries = '/nonexistent/tenant-library'",
        "ALTER SYSTEM SET session_preload_libraries = '/nonexistent/tenant-library'",
        "ALTER SYSTEM SET local_preload_libraries = '/nonexistent/tenant-library'",
        "ALTER SYSTEM SET jit_provider = '/nonexistent/tenant-library'",
        "ALTER SYSTEM SET ssl = on",
        f"ALTER SYSTEM SET ssl_passphrase_command = '{sh % ('ssl_passphrase', 'ssl_passphrase')}'",
        # The restore's own queries, hijacked through the role's search_path (a catalogue setting
        # that no server command-line option overrides).
        "CREATE SCHEMA evil",
        f"""CREATE FUNCTION evil.pg_is_in_recovery() RETURNS boolean LANGUAGE plpgsql AS $f$
            BEGIN
              IF current_setting('data_directory') <> '{datadir}' THEN
                EXECUTE 'COPY (SELECT 1) TO PROGRAM ''{steal.replace("'", "''")}''';
              END IF;
              RETURN pg_catalog.pg_is_in_recovery();
            END $f$""",
        "ALTER ROLE postgres SET search_path = evil, pg_catalog",
        # A standby that never promotes and streams from a server of the tenant's choosing; a
        # replay delayed by a day.
        f"COPY (SELECT '') TO '{datadir}/standby.signal'",
        f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={port} connect_timeout=2'",
        "ALTER SYSTEM SET recovery_min_apply_delay = '1d'",
    ]
    source, *_ = hostile_backup(cms, blob, platform, archived, statements)
    with psycopg.connect(dsn) as conn:
        (tenant_settings,) = conn.execute("SELECT pg_read_file('postgresql.auto.conf')").fetchone()
    ref, pgdata = replay(cms, blob, platform, source, "hostile")
    try:
        assert promoted(pgdata)
        assert (pgdata / "postgresql.auto.conf").read_text() == tenant_settings  # the tenant's, untouched
        assert not (pgdata / "recovery.signal").exists()
        found = {p.name: p.read_text(errors="replace") if p.is_file() else "(dir)" for p in loot.iterdir()}
        assert found == {}, f"the tenant's settings ran or wrote as the restore job: {found}"
        assert not connected.is_set(), "the restore's server connected to the tenant's primary_conninfo"
    finally:
        platform.delete_instance(ref)


def test_a_tenant_writing_wal_faster_than_it_uploads_cannot_fill_the_archivers_disk(archived, platform, tmp_path):  # noqa: F811
    """Blob storage unreachable, the tenant switching segments: the archiver's spool (the
    deployment's disk) stays bounded; the rest waits in the slot (bounded on the tenant's side)."""
    import sys

    from resources.platform.base import PROJECT_DIR
    from resources.platform.postgres_server import pgpass_line
    from resources.platform.wal_archiver import ArchiverConfig, config_path
    from tests.test_pitr_archiving import slot_active, wait_for

    ref, dsn, _ = archived
    endpoints = platform.endpoints(ref)
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    directory = tmp_path / "archiver"
    directory.mkdir(mode=0o700)
    (directory / "sas").write_text("")
    (directory / "pgpass").write_text(pgpass_line(endpoints.host, endpoints.port, "postgres", str(info["password"])))
    (directory / "pgpass").chmod(0o600)
    limit = 2
    config = {
        **ArchiverConfig(
            namespace=ref.namespace, k8s_name=ref.k8s_name, host=endpoints.host, port=endpoints.port,
            user="postgres", bindir=str(postgres_bindir("15")),
            container_url="http://127.0.0.1:9/devstoreaccount1/unreachable", poll_seconds=0.2,
        ).model_dump(),
        "spool_max_segments": limit,
    }  # fmt: skip
    config_path(directory).write_text(json.dumps(config))
    output = open(directory / "archiver.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "resources.platform.wal_archiver", str(directory)],
        cwd=PROJECT_DIR, start_new_session=True, stdout=output, stderr=output,
    )  # fmt: skip
    spool = directory / "spool"

    def spooled() -> list[str]:
        return sorted(p.name for p in spool.iterdir() if len(p.name) == 24) if spool.exists() else []

    try:
        wait_for(lambda: slot_active(dsn), "the archiver streaming from its slot")
        for _ in range(2 * limit + 2):
            name = switch_wal(dsn)
            # Spooled, or the receiver stopped (the slot idle: the rest waits on the tenant's side).
            wait_for(lambda n=name: n in spooled() or not slot_active(dsn), f"{name} spooled or streaming paused")
            assert len(spooled()) <= limit, f"the spool grows without bound: {spooled()}"
        assert not slot_active(dsn)
        status = directory / "status.json"  # written at the end of a round: the first one retries the storage
        wait_for(
            lambda: status.exists() and "spool full" in (json.loads(status.read_text()).get("error") or ""),
            "the pause named in status.json", timeout=240,
        )  # fmt: skip
    finally:
        with contextlib.suppress(ProcessLookupError):  # its final upload would retry the unreachable storage
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        output.close()
        for name in ("archiver.log", "status.json", "pg_receivewal.log"):  # shown when the test failed
            print(name, (directory / name).read_text() if (directory / name).exists() else "-")
        wait_for(lambda: not slot_active(dsn), "pg_receivewal gone")


# The tenant's catalogue is replayed as it is: a superuser tenant may rename a built-in function and
# put its own in its place, under the very name the restore's post-promote queries call (schema
# qualified: pg_catalog.pg_is_in_recovery()). Inert on its own server (which listens on TCP).
HIJACKED_BUILTIN = r"""
ALTER FUNCTION pg_catalog.pg_is_in_recovery() RENAME TO pg_is_in_recovery_before;
CREATE TABLE public.loot (found text);
CREATE FUNCTION pg_catalog.pg_is_in_recovery() RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE name text; got text;
BEGIN
  IF current_setting('listen_addresses') = '' AND NOT pg_catalog.pg_is_in_recovery_before()
     AND NOT EXISTS (SELECT FROM public.loot) THEN
    BEGIN
      EXECUTE format('COPY public.loot (found) FROM PROGRAM %L', {shell});
    EXCEPTION WHEN OTHERS THEN INSERT INTO public.loot VALUES ('copy program refused: ' || SQLERRM); END;
    FOR name IN SELECT pg_catalog.unnest({files}::text[]) LOOP
      BEGIN
        got := pg_catalog.pg_read_file(name);
        INSERT INTO public.loot VALUES ('pg_read_file ' || name || ': ' || got);
      EXCEPTION WHEN OTHERS THEN NULL; END;
    END LOOP;
    INSERT INTO public.loot VALUES ('probe ran in the pitr restore');
  END IF;
  RETURN pg_catalog.pg_is_in_recovery_before();
END $fn$;
"""


def test_tenant_code_run_by_a_pitr_restores_own_queries_finds_no_grant_no_identity_no_password(
    cms,
    blob,
    platform,
    archived,  # noqa: F811
    tmp_path,
):
    """The server of a point-in-time restore runs the tenant's catalogue once promoted; whatever
    runs in it finds none of the job's credentials: not in any process's environment or command
    line, not in any file it can read (the job's grant, age identity or password copy)."""
    from records import InstanceState
    from tests.test_encryption import new_identity, private_key, with_encryption
    from tests.test_restore_sandbox import PROBE_SHELL, Listener, loot_of
    from toygres_pipelines.pitr.restore import restore_to_time

    key = tmp_path / "pitr.key"
    key.parent.chmod(0o755)
    recipient = new_identity(key)
    sealed = with_encryption(
        platform, age_recipient=recipient, age_identity_file=str(key), age_identity_recipients=[recipient]
    )
    listener = Listener()
    jobs = Path(platform.state_dir) / "jobs"
    shell = PROBE_SHELL.format(roots=f"{platform.state_dir} /tmp /var/tmp", port=listener.port)
    files = [f"{jobs}/default/restore-{{name}}/{leaf}" for leaf in ("sas", "age-identities", "password")]
    ref, dsn, start = archived
    start()
    source = register_running(cms, platform, ref)
    name = f"pitr-loot-{uuid.uuid4().hex[:6]}"
    files = [f.format(name=name) for f in files]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            HIJACKED_BUILTIN.format(
                shell=_literal(shell), files=_literal("{" + ",".join(f'"{f}"' for f in files) + "}")
            )
        )
    commit(dsn, "before-base")
    take_base_backup(cms, blob, sealed, source, run_id=None, log=print)
    moment = commit(dsn, "after-base")
    switch_wal(dsn)
    archived_until(cms, blob, source, moment)
    restored = restore_to_time(
        cms, blob, sealed, source_instance=source.k8s_name, name=name, dns_label=name, target_time=None
    )
    restored_ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    try:
        assert restored.state is InstanceState.running
        password = platform.read_instance_password(restored_ref).get_secret_value()
        endpoints = platform.endpoints(restored_ref)
        loot = loot_of(
            psycopg.conninfo.make_conninfo(host=endpoints.host, port=endpoints.port, user="postgres", password=password)
        )
        assert "probe ran in the pitr restore" in loot, f"the hijacked function did not run:\n{loot[:2000]}"
        leaks = {
            "the age private key": private_key(key) in loot or "AGE-SECRET-KEY-" in loot,
            "a SAS signature": "sig=" in loot or '"signatures"' in loot,
            "the instance password": password in loot,
            "a password variable": "PGPASSWORD" in loot or "POSTGRES_PASSWORD_FILE" in loot,
            "a SAS or key path": "AZCOPY_SAS" in loot or "AGE_IDENTITY_FILE" in loot or "BLOB_URL" in loot,
            # (the probe's own text, in the cmdline of the shell running it, holds the marker too)
            "the listener": bool(listener.received) or re.search("^== TCP CONNECTED$", loot, re.MULTILINE) is not None,
        }
        found = [what for what, leaked in leaks.items() if leaked]
        assert not found, f"tenant code found {found} (listener: {listener.received}):\n{loot[:3000]}"
    finally:
        platform.delete_instance(restored_ref)


def pitr_of_a_tenants_archive(cms, blob, platform, archived, statements, after_base=()):  # noqa: F811
    """`statements` in the base backup, `after_base` in the WAL after it (archived whole); returns the
    source, the server's clock after the last commit before `after_base`, and a fresh volume's ref."""
    source, _, moment, segment = hostile_backup(cms, blob, platform, archived, statements, after_base)
    ref = archived[0]
    wait_for(lambda: has_segment(blob, ref, segment), f"segment {segment} archived")
    restored = InstanceRef(k8s_name=f"pitr-{uuid.uuid4().hex[:6]}", namespace="default")
    platform.ensure_instance_secret(restored, SecretStr(secrets.token_urlsafe(12)))
    platform.create_volume(restored, 1)
    return source, moment, restored


def test_the_point_a_pitr_restore_reports_replayed_is_its_servers_not_the_tenants_sessions(
    cms,
    blob,
    platform,
    archived,  # noqa: F811
):
    """The pitr drill fails a restore that replayed past its target, by the job's line "last
    transaction replayed committed at ...". A tenant's DateStyle (ALTER ROLE ... SET DateStyle, in
    the WAL replayed) and its own pg_catalog.pg_last_xact_replay_timestamp() must not write it."""
    from toygres_pipelines.drills.pitr_drill import REPLAYED

    source, moment, restored = pitr_of_a_tenants_archive(
        cms, blob, platform, archived,
        [
            "ALTER FUNCTION pg_catalog.pg_last_xact_replay_timestamp() RENAME TO pg_last_xact_replay_timestamp_before",
            "CREATE FUNCTION pg_catalog.pg_last_xact_replay_timestamp() RETURNS timestamptz LANGUAGE sql"
            " AS $$SELECT '1999-01-01 00:00:00+00'::timestamptz$$",
        ],
        after_base=["ALTER ROLE postgres SET DateStyle = 'SQL, DMY'"],
    )  # fmt: skip
    lines: list[str] = []
    try:
        _, plan = plan_recovery(cms, blob, source, None)
        run_pitr_job(platform, blob, restored, plan, "15", 240, lambda line: (print(line), lines.append(line)))
        [replayed] = [m.group("at") for line in lines if (m := REPLAYED.search(line))]
        # the last commit replayed is switch_wal's, after `moment`, before now
        assert moment <= datetime.fromisoformat(replayed) <= datetime.now(UTC), replayed
    finally:
        platform.delete_instance(restored)


def test_a_promoted_server_whose_catalogue_lies_fails_the_pitr_restore_at_once_instead_of_hanging(
    cms,
    blob,
    platform,
    archived,  # noqa: F811
):
    """Once promoted, the restore's sessions run the tenant's catalogue: a pg_is_in_recovery() that
    always says true (or a postgres database gone) must not keep the job waiting until its timeout."""
    source, _, restored = pitr_of_a_tenants_archive(
        cms, blob, platform, archived,
        [
            "ALTER FUNCTION pg_catalog.pg_is_in_recovery() RENAME TO pg_is_in_recovery_before",
            "CREATE FUNCTION pg_catalog.pg_is_in_recovery() RETURNS boolean LANGUAGE sql AS 'SELECT true'",
        ],
    )  # fmt: skip
    lines: list[str] = []
    timeout = 200
    try:
        _, plan = plan_recovery(cms, blob, source, None)
        started = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 - the platform's failure; its reason is in the log
            run_pitr_job(platform, blob, restored, plan, "15", timeout, lambda line: (print(line), lines.append(line)))
        assert time.monotonic() - started < timeout - 30, "the restore waited on the tenant's answer until its timeout"
        assert any("still in recovery" in line for line in lines), lines[-10:]
    finally:
        platform.delete_instance(restored)


def test_sizes_the_tenant_set_but_never_ran_with_do_not_stop_its_pitr_restore(
    cms,
    blob,
    platform,
    archived,  # noqa: F811
):
    """ALTER SYSTEM is the tenant's, and until its server restarts the values wait in
    postgresql.auto.conf: 10000 connections, locks and prepared transactions would take about 149
    GB of shared memory. The replay server is sized by what the source ran with (its control file),
    so its restore still replays and promotes."""
    source, _, restored = pitr_of_a_tenants_archive(
        cms, blob, platform, archived,
        [
            "ALTER SYSTEM SET max_connections = 10000",
            "ALTER SYSTEM SET max_locks_per_transaction = 10000",
            "ALTER SYSTEM SET max_prepared_transactions = 10000",
        ],
    )  # fmt: skip
    lines: list[str] = []
    try:
        _, plan = plan_recovery(cms, blob, source, None)
        run_pitr_job(platform, blob, restored, plan, "15", 240, lambda line: (print(line), lines.append(line)))
        assert any("promoted" in line for line in lines), lines[-10:]
    finally:
        platform.delete_instance(restored)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
