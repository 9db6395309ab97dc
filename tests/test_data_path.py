"""The job scripts' data path on the real stack: hostile database names, byte-exact passwords,
SIGTERM during a restore and blob storage stalling mid-transfer."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from records import ImageState, InstanceRef, InstanceState
from resources.blob import BlobStorageResource
from resources.platform.base import JobFailed, JobKind, JobSpec
from tests.helpers import failure_text, materialize_image, run_logs
from tests.test_restore import dsn_of, restore
from toygres_pipelines.dev.demo import provision_server, register_running
from toygres_pipelines.images.verification import sha256sums
from toygres_pipelines.restores.steps import restore_grant

pytestmark = pytest.mark.integration

SMALL_SOURCE_PASSWORD = "small-source-password"


@pytest.fixture(scope="module")
def small_ref(platform) -> InstanceRef:
    """An empty server of its own: tests add (and drop) databases with hostile names on it."""
    ref = InstanceRef(k8s_name="names-src", namespace="default")
    provision_server(platform, ref, SecretStr(SMALL_SOURCE_PASSWORD))
    return ref


@pytest.fixture
def small_source(cms, platform, small_ref):
    return register_running(cms, platform, small_ref)


def server_dsn(platform, ref: InstanceRef, database: str = "postgres") -> str:
    endpoints = platform.endpoints(ref)
    return psycopg.conninfo.make_conninfo(
        host=endpoints.host,
        port=endpoints.port,
        user="postgres",
        password=platform.read_instance_password(ref).get_secret_value(),
        dbname=database,
    )


def connect_to_database(dsn: str, name: str) -> psycopg.Connection:
    """A connection to the database literally named `name` (passed as a keyword, never expanded)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["dbname"] = name
    return psycopg.connect(**params)


@pytest.fixture
def databases_named(platform, small_ref) -> Iterator:
    """create(names): each database holds a table with a value of its own; all dropped afterwards."""
    created: list[str] = []

    def create(names: list[str]) -> dict[str, str]:
        contents = {}
        with psycopg.connect(server_dsn(platform, small_ref), autocommit=True) as admin:
            for index, name in enumerate(names):
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                created.append(name)
                contents[name] = f"content {index} of {name!r}"
                with connect_to_database(server_dsn(platform, small_ref), name) as conn:
                    conn.execute("CREATE TABLE marker (v text)")
                    conn.execute("INSERT INTO marker VALUES (%s)", (contents[name],))
        return contents

    yield create
    with psycopg.connect(server_dsn(platform, small_ref), autocommit=True) as admin:
        for name in created:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def databases_and_contents(dsn: str) -> dict[str, list[str]]:
    """Every connectable non-template database and the rows of its `marker` table (if any)."""
    with psycopg.connect(dsn) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate")]
    found = {}
    for name in names:
        with connect_to_database(dsn, name) as conn:
            has_marker = conn.execute("SELECT to_regclass('public.marker') IS NOT NULL").fetchone()[0]
            found[name] = [r[0] for r in conn.execute("SELECT v FROM marker ORDER BY v")] if has_marker else []
    return found


def round_trip(resources, cms, platform, source, key: str, restored_name: str) -> dict[str, list[str]]:
    """Back `source` up as image `key`, restore it as `restored_name`, return what the copy holds."""
    backup = materialize_image(resources, f"{source.k8s_name}__{key}", raise_on_error=False)
    assert backup.success, failure_text(backup)
    image = cms.images.find(f"{source.k8s_name}__{key}")
    assert image.state is ImageState.ready
    result = restore(resources, source_image_id=str(image.id), name=restored_name, dns_label=restored_name)
    assert result.success, failure_text(result)
    copy = result.output_for_node("mark_instance_running")
    assert copy.state is InstanceState.running
    password = platform.read_instance_password(InstanceRef(k8s_name=source.k8s_name, namespace=source.namespace))
    return databases_and_contents(dsn_of(platform, copy, password.get_secret_value(), "postgres"))


class PasswordTrap:
    """A TCP listener posing as a PostgreSQL server: records every connection and any password sent."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.passwords: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    self._talk(conn)
                except OSError:
                    pass

    @staticmethod
    def _read_exact(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    def _talk(self, conn: socket.socket) -> None:
        while True:
            length = int.from_bytes(self._read_exact(conn, 4), "big")
            body = self._read_exact(conn, length - 4)
            if body[:4] in (b"\x04\xd2\x16\x2f", b"\x04\xd2\x16\x30"):  # SSLRequest / GSSENCRequest
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + (8).to_bytes(4, "big") + (3).to_bytes(4, "big"))  # cleartext password, please
        kind = self._read_exact(conn, 1)
        length = int.from_bytes(self._read_exact(conn, 4), "big")
        body = self._read_exact(conn, length - 4)
        if kind == b"p":
            self.passwords.append(body.rstrip(b"\0"))

    def close(self) -> None:
        self.sock.close()


def test_database_named_dbname_postgres_round_trips_exactly(resources, cms, platform, small_source, databases_named):
    contents = databases_named(["dbname=postgres"])
    copy = round_trip(resources, cms, platform, small_source, "dbname-eq", "dbname-eq-copy")
    assert copy["dbname=postgres"] == [contents["dbname=postgres"]]
    assert copy["postgres"] == []  # not overwritten by (nor dumped in place of) the other one


def test_database_named_like_a_conninfo_never_makes_a_tool_connect_elsewhere(
    resources, cms, platform, small_source, databases_named
):
    trap = PasswordTrap()
    try:
        name = f"host=127.0.0.1 port={trap.port} dbname=x sslmode=disable"
        contents = databases_named([name, f"postgresql://postgres@127.0.0.1:{trap.port}/x"])
        copy = round_trip(resources, cms, platform, small_source, "conninfo", "conninfo-copy")
    finally:
        trap.close()
        assert (trap.connections, trap.passwords) == (0, [])  # checked even when the round trip failed
    for database, value in contents.items():
        assert copy[database] == [value]


HOSTILE_NAMES = [
    "line\nbreak",
    "trailing newline\n",
    "\x01control\x1fchars\x7f",
    "tab\there\rand cr",
    'quote\'s "double" \\back\\slash',
    "-leading-dash",
    "--help",
    "a=b c=d",
    " spaces around ",
    "$(touch /tmp/toygres-pwned) `x` ;|&",
    "%s %n {} [] ,:",
    "é" * 31 + "x",  # 63 bytes: the longest name PostgreSQL keeps
    "日本語のデータベース名前は長いです😀x",
]


def test_databases_with_any_allowed_name_round_trip_exactly(resources, cms, platform, small_source, databases_named):
    assert len(("é" * 31 + "x").encode()) == 63
    contents = databases_named(HOSTILE_NAMES)
    copy = round_trip(resources, cms, platform, small_source, "hostile-names", "hostile-copy")
    assert set(copy) == set(HOSTILE_NAMES) | {"postgres"}
    for database, value in contents.items():
        assert copy[database] == [value]


NEWLINE_PASSWORD = "ends in a newline\r\n'quote\\\n"


@pytest.fixture(scope="module")
def newline_password_ref(platform) -> InstanceRef:
    """A server whose superuser password ends in a newline (set by ALTER ROLE: initdb takes one line)."""
    ref = InstanceRef(k8s_name="newline-pw-src", namespace="default")
    provision_server(platform, ref, SecretStr("temporary-password"))
    with psycopg.connect(server_dsn(platform, ref), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(NEWLINE_PASSWORD)))
    platform.ensure_instance_secret(ref, SecretStr(NEWLINE_PASSWORD))
    return ref


def test_source_password_ending_in_a_newline_is_carried_exactly(resources, cms, platform, newline_password_ref):
    assert platform.read_instance_password(newline_password_ref).get_secret_value() == NEWLINE_PASSWORD
    source = register_running(cms, platform, newline_password_ref)
    copy = round_trip(resources, cms, platform, source, "newline-pw", "newline-pw-copy")
    assert set(copy) == {"postgres"}
    image = cms.images.find(f"{source.k8s_name}__newline-pw")
    assert cms.images.password(image.id).get_secret_value() == NEWLINE_PASSWORD
    restored = next(i for i in cms.instances.list() if i.user_name == "newline-pw-copy")
    ref = InstanceRef(k8s_name=restored.k8s_name, namespace=restored.namespace)
    assert platform.read_instance_password(ref).get_secret_value() == NEWLINE_PASSWORD
    with psycopg.connect(dsn_of(platform, restored, NEWLINE_PASSWORD, "postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn_of(platform, restored, NEWLINE_PASSWORD.rstrip("\r\n"), "postgres"))


# ---- a restore job that is SIGTERMed, a transfer whose blob storage stalls -------------------


def processes() -> Iterator[tuple[int, int, list[str]]]:
    """(pid, process group, argv) of every process we can see."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        pgid = int(stat.rsplit(")", 1)[1].split()[2])
        yield int(entry.name), pgid, [a.decode(errors="replace") for a in argv if a]


def parent_of(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


def command_line(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def wait_for_process(predicate, what: str, timeout: float = 120) -> tuple[int, int, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in processes():
            if predicate(*found):
                return found
        time.sleep(0.05)
    raise TimeoutError(f"no {what} appeared")


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead (an orphan's may linger where PID 1 does not reap)
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def restore_spec(cms, blob, platform, image, ref: InstanceRef, **env) -> JobSpec:
    """The restore job of `image` into a fresh volume of `ref`, as the restore pipeline builds it."""
    manifest, _ = blob.read_manifest(image.blob_path)
    platform.ensure_instance_secret(ref, cms.images.password(image.id))
    platform.create_volume(ref, 1)
    return JobSpec(
        kind=JobKind.restore,
        name=f"restore-{ref.k8s_name}",
        script="restore.sh",
        instance=ref,
        env={
            "BLOB_URL": blob.folder_url(image.blob_path),
            "MANIFEST_SHA256": image.backup_checksum,
            "BACKUP_SHA256SUMS": sha256sums(manifest),
            "POSTGRES_USER": "postgres",
            **env,
        },
        blob_sas=restore_grant(blob, image.blob_path, manifest, None, 600),
        timeout_seconds=600,
    )


def run_in_thread(platform, spec: JobSpec) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = platform.run_job(spec, lambda line: outcome.setdefault("log", []).append(line))
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def temporary_server(pgdata: str) -> tuple[int, str]:
    """The restore's temporary server on `pgdata`, once it runs: (its pid, its socket directory)."""
    postmaster, _, argv = wait_for_process(
        lambda pid, pgid, argv: argv[:1] and argv[0].endswith("postgres") and pgdata in argv, "temporary server"
    )
    socket_dir = next(a.split("=", 1)[1] for a in " ".join(argv).split() if a.startswith("unix_socket_directories="))
    return postmaster, socket_dir


def serve_pgdata(platform, spec, ref) -> str:
    """Where the restore's serve role builds the data directory (the platform moves it to the volume)."""
    return str(platform.job_dir(spec.name, ref.namespace) / "serve" / "pgdata")


def script_running_pg_restore(platform, spec, ref) -> tuple[int, int]:
    """Once the serve role runs `pg_restore --create`: (the serve script's pid, its process group)."""
    script_path = str(platform.job_dir(spec.name, ref.namespace) / "scripts" / "restore-serve.sh")
    # The script's own shell: bash running it whose parent is not one of its subshells.
    script, job_group, _ = wait_for_process(
        lambda pid, pgid, argv: argv == ["bash", script_path] and command_line(parent_of(pid)) != argv,
        "restore-serve.sh",
    )
    wait_for_process(
        lambda pid, pgid, argv: (
            pgid == job_group and argv[:1] and argv[0].endswith("pg_restore") and "--create" in argv
        ),
        "pg_restore --create",
    )
    return script, job_group


def assert_nothing_of_the_job_left(platform, spec, ref, job_group: int) -> None:
    """No process of the job, no handoff, no serve directory (its data directory), no trust
    pg_hba.conf anywhere on disk, no data directory on the volume."""
    job_dir = platform.job_dir(spec.name, ref.namespace)
    assert not (job_dir / "serve").exists() and not (job_dir / "handoff").exists()
    assert not (platform.volume_dir(ref) / "pgdata").exists()
    assert [(p, argv) for p, pgid, argv in processes() if pgid == job_group and alive(p)] == []
    trusting = subprocess.run(
        ["grep", "-rlsx", "local all all trust", platform.state_dir, "/tmp", "/var/tmp"], capture_output=True, text=True
    ).stdout.split()
    assert [path for path in trusting if "toygres-restore." in path or spec.name in path] == []


@pytest.mark.parametrize("target", ["process group", "script only"])
def test_sigterm_during_pg_restore_stops_the_temporary_server_and_removes_temp_dirs(
    resources, cms, blob, platform, small_source, databases_named, target
):
    """The local platform signals the job's process group; Kubernetes signals the script alone.

    The image holds a materialized view whose refresh sleeps for an hour, so pg_restore is
    certainly running (and would run on) when the signal arrives."""
    databases_named(["slow_restore"])
    source_ref = InstanceRef(k8s_name=small_source.k8s_name, namespace=small_source.namespace)
    with connect_to_database(server_dsn(platform, source_ref), "slow_restore") as conn:
        conn.execute("CREATE TABLE delay (seconds int)")
        conn.execute("INSERT INTO delay VALUES (0)")
        conn.execute("CREATE MATERIALIZED VIEW slow AS SELECT pg_sleep(seconds) IS NULL AS slept FROM delay")
        conn.execute("UPDATE delay SET seconds = 3600")
    assert materialize_image(resources, f"{small_source.k8s_name}__sigterm-{target[:5]}").success
    image = cms.images.find(f"{small_source.k8s_name}__sigterm-{target[:5]}")
    ref = InstanceRef(k8s_name=f"sigterm-{target.split()[0]}", namespace="default")
    spec = restore_spec(cms, blob, platform, image, ref)
    pgdata = serve_pgdata(platform, spec, ref)
    thread, outcome = run_in_thread(platform, spec)
    postmaster = None
    try:
        postmaster, _ = temporary_server(pgdata)
        # databases are restored in name order: postgres, then slow_restore
        script, job_group = script_running_pg_restore(platform, spec, ref)
        if target == "process group":
            os.killpg(job_group, signal.SIGTERM)
        else:
            os.kill(script, signal.SIGTERM)
        thread.join(timeout=120)
        assert not thread.is_alive(), "the job is still running after SIGTERM"
        assert isinstance(outcome.get("error"), JobFailed), outcome
        # pg_ctl stop -w returns once postmaster.pid is gone; the process itself exits right after.
        assert wait_until(lambda: not alive(postmaster), timeout=30), ("the temporary server outlived its job", outcome)
        assert_nothing_of_the_job_left(platform, spec, ref, job_group)
    finally:
        if postmaster is not None and alive(postmaster):
            os.kill(postmaster, signal.SIGQUIT)  # what the old script left behind, so the session can end
        thread.join(timeout=120)
        platform.delete_instance(ref)


@pytest.mark.parametrize("root", ["sandbox", "script"])
def test_sigkill_of_a_restore_roots_leaves_no_temporary_server_and_no_files(
    resources, cms, blob, platform, small_source, databases_named, root
):
    """Issue 19 item 9: SIGKILL runs no trap. The platform stops the other role, the kernel ends the
    serve role's PID namespace with its first process, and the platform removes the job's files."""
    databases_named(["slow_restore"])
    source_ref = InstanceRef(k8s_name=small_source.k8s_name, namespace=small_source.namespace)
    with connect_to_database(server_dsn(platform, source_ref), "slow_restore") as conn:
        conn.execute("CREATE TABLE delay (seconds int)")
        conn.execute("INSERT INTO delay VALUES (0)")
        conn.execute("CREATE MATERIALIZED VIEW slow AS SELECT pg_sleep(seconds) IS NULL AS slept FROM delay")
        conn.execute("UPDATE delay SET seconds = 3600")
    assert materialize_image(resources, f"{small_source.k8s_name}__sigkill-{root}").success
    image = cms.images.find(f"{small_source.k8s_name}__sigkill-{root}")
    ref = InstanceRef(k8s_name=f"sigkill-{root}", namespace="default")
    spec = restore_spec(cms, blob, platform, image, ref)
    thread, outcome = run_in_thread(platform, spec)
    postmaster = None
    try:
        postmaster, _ = temporary_server(serve_pgdata(platform, spec, ref))
        serve_script, serve_group = script_running_pg_restore(platform, spec, ref)
        # The root of the serve role's process tree (the sandbox: unshare), or its script (the
        # first process of its PID namespace): what runs the temporary server.
        os.kill(serve_group if root == "sandbox" else serve_script, signal.SIGKILL)
        thread.join(timeout=120)
        assert not thread.is_alive(), "the job is still running after SIGKILL"
        assert isinstance(outcome.get("error"), JobFailed), outcome
        assert wait_until(lambda: not alive(postmaster), timeout=30), ("the temporary server outlived its job", outcome)
        assert not alive(serve_script)
        assert_nothing_of_the_job_left(platform, spec, ref, serve_group)
    finally:
        if postmaster is not None and alive(postmaster):
            os.kill(postmaster, signal.SIGQUIT)  # what the old script left behind, so the session can end
        thread.join(timeout=120)
        platform.delete_instance(ref)


def wait_for_log_line(path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} never appeared in {path}")


def test_blob_storage_stalling_mid_backup_fails_the_image_within_the_stall_time(
    resources, cms, blob, platform, source, source_dsn, stack
):
    """Azurite frozen (SIGSTOP) while a dump streams: the job gives up after the stall time, not the job timeout."""
    from tests.test_backup import blocked_database, wait_for_pg_dump_blocked

    stalling = BlobStorageResource(
        connection_string=blob.connection_string, container=blob.container, transfer_stall_seconds=5
    )
    key = f"{source.k8s_name}__stalled"
    holder = blocked_database(source_dsn, "aaa_stalled")
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            result=materialize_image(
                {**resources, "blob": stalling}, key, {"job_timeout_seconds": 3600}, raise_on_error=False
            )
        )
    )
    runner.start()
    azurite_group = stack.azurite.process.pid
    try:
        wait_for_pg_dump_blocked(source_dsn("postgres"), "aaa_stalled")
        image = cms.images.list()[0]
        job_log = platform.job_dir(f"backup-{image.id}", image.source_namespace) / "job.log"
        os.killpg(azurite_group, signal.SIGSTOP)
        holder.rollback()  # the dump of aaa_stalled streams on, into a frozen blob storage
        wait_for_log_line(job_log, "blob storage unreachable", timeout=120)
    finally:
        os.killpg(azurite_group, signal.SIGCONT)
        runner.join(timeout=300)
        holder.close()
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "aaa_stalled" WITH (FORCE)')
    result = outcome["result"]
    assert not result.success
    row = cms.images.find(key)
    assert row.state is ImageState.failed
    assert "blob storage unreachable" in row.error_message and "timed out" not in row.error_message


def test_blob_storage_stalling_during_a_restore_download_fails_the_job_within_the_stall_time(
    resources, cms, blob, platform, small_source, stack
):
    assert materialize_image(resources, f"{small_source.k8s_name}__restore-stall").success
    image = cms.images.find(f"{small_source.k8s_name}__restore-stall")
    ref = InstanceRef(k8s_name="stalled-restore", namespace="default")
    spec = restore_spec(cms, blob, platform, image, ref, TRANSFER_STALL_SECONDS="5")
    azurite_group = stack.azurite.process.pid
    os.killpg(azurite_group, signal.SIGSTOP)
    try:
        thread, outcome = run_in_thread(platform, spec)
        wait_for_log_line(
            platform.job_dir(spec.name, ref.namespace) / "job.log", "blob storage unreachable", timeout=120
        )
    finally:
        os.killpg(azurite_group, signal.SIGCONT)
        thread.join(timeout=300)
        platform.delete_instance(ref)
    error = outcome.get("error")
    assert isinstance(error, JobFailed), outcome
    assert "blob storage unreachable while downloading manifest.json" in str(error)
    assert "timed out" not in str(error)


def test_the_stall_watchdog_leaves_nothing_holding_the_jobs_output(tmp_path):
    """The job's log is a pipe read to its end. A watchdog stopped between starting its timer
    and recording it (or killed outright) must not leave that timer holding the pipe open: the
    job would look alive for up to a probe interval (TRANSFER_STALL_SECONDS / 6) after it ended."""
    import subprocess

    from resources.platform.base import SCRIPTS_DIR

    script = (
        f"source {SCRIPTS_DIR}/common.sh; TRANSFER_STALL_SECONDS=600; "
        f"sleep 1000 & target=$!; watch_transfer $target {tmp_path}/stalled & watchdog=$!; "
        # the watchdog's timer runs (polled, under a deadline), then the watchdog dies
        "for _ in $(seq 1200); do pgrep -P $watchdog -x sleep >/dev/null && break; sleep 0.05; done; "
        "pgrep -P $watchdog -x sleep >/dev/null || { echo 'no timer'; exit 1; }; "
        "kill -KILL $watchdog; kill $target; echo done"
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "done"
    assert not (tmp_path / "stalled").exists()


def test_a_long_step_reports_its_progress_every_few_seconds_until_it_ends(tmp_path):
    """common.sh's start_progress/stop_progress: the reporter runs while the step does, then stops."""
    from resources.platform.base import PROJECT_DIR

    gate = tmp_path / "gate"
    script = f"""
source {PROJECT_DIR}/templates/scripts/common.sh
PROGRESS_SECONDS=1
report() {{ log "step: $(mib $(stat -c %s {tmp_path}/grown)) so far"; }}
head -c 3145728 /dev/zero >{tmp_path}/grown
start_progress report
until [[ -e {gate} ]]; do sleep 0.2; done
stop_progress
log "step done"
"""
    process = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if sum("step: 3.0 MiB so far" in entry for entry in lines) == 2:
            gate.touch()  # two reports seen: let the step end
        if line.rstrip().endswith("step done"):
            break
    assert process.wait(timeout=60) == 0
    reports = [entry for entry in lines if "so far" in entry]
    assert len(reports) >= 2 and lines[-1].endswith("step done")
    assert not [entry for entry in lines[lines.index(reports[-1]) + 1 :] if "so far" in entry]


def test_a_checksum_mismatch_found_after_a_database_was_restored_still_fails_with_3_and_leaves_no_data(
    resources, cms, blob, platform, source
):
    """Restores overlap downloads: the last dump's damage shows while the serve role is restoring.
    The job still exits 3 (the code no retry may follow) and removes the data directory it made."""
    assert materialize_image(resources, f"{source.k8s_name}__late-mismatch").success
    image = cms.images.find(f"{source.k8s_name}__late-mismatch")
    manifest, _ = blob.read_manifest(image.blob_path)
    last = manifest.files[-1]
    assert last.kind == "database" and manifest.files[-2].kind == "database"
    name = f"{image.blob_path}/{last.path}"
    data = bytearray(blob.read_bytes(name))
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(name, bytes(data), overwrite=True)

    ref = InstanceRef(k8s_name="late-mismatch", namespace="default")
    spec = restore_spec(cms, blob, platform, image, ref)
    try:
        with pytest.raises(JobFailed) as failed:
            platform.run_job(spec, lambda _line: None)
        assert failed.value.result.reason == "exit code 3"
        log = "\n".join(failed.value.result.log_tail)
        assert f"checksum mismatch: {last.path} has sha256" in log
        # the overlap is real: the serve role was building the data directory while files downloaded
        # (the fetch role checks each file as soon as it is down, so it may stop the serve role sooner)
        assert "initdb in " in log
        assert not (platform.volume_dir(ref) / "pgdata").exists()
    finally:
        platform.delete_instance(ref)


def test_the_restores_last_progress_line_counts_every_archive_item(resources, cms, platform, small_source, small_ref):
    """pg_restore's verbose log names most items but not all (large objects: 'processing BLOBS'),
    and its parallel workers' lines can interleave: the count after a successful pg_restore is the
    archive's, never '243 of 244' for a copy that holds everything."""
    with psycopg.connect(server_dsn(platform, small_ref), autocommit=True) as conn:
        [(oid,)] = conn.execute("SELECT lo_from_bytea(0, 'a large object')").fetchall()
    try:
        backup = materialize_image(resources, f"{small_source.k8s_name}__blobs", raise_on_error=False)
    finally:
        with psycopg.connect(server_dsn(platform, small_ref), autocommit=True) as conn:
            conn.execute("SELECT lo_unlink(%s)", (oid,))
    assert backup.success, failure_text(backup)
    dagster = dg.DagsterInstance.ephemeral()
    result = restore(
        resources, source_image_id=f"{small_source.k8s_name}__blobs", name="blobs-copy", dns_label="blobs-copy",
        databases=["postgres"], instance=dagster,
    )  # fmt: skip
    assert result.success, failure_text(result)
    logs = run_logs(dagster, result.run_id)
    done, total = map(int, re.search(r"postgres done: ([0-9]+) of ([0-9]+) archive items", logs).groups())
    assert done == total > 0
