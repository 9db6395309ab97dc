"""The local platform: job scripts run as processes, volumes are directories, instances are
PostgreSQL servers on free loopback ports, secrets are files readable only by their owner.

It is a faithful stand-in for Kubernetes: the same scripts, the same environment variables.

    <state_dir>/bin/azcopy
    <state_dir>/instances/<namespace>/<k8s_name>/{secret/password, volume/pgdata, config/pg_hba.conf, run/, server.json}
    <state_dir>/jobs/<namespace>/<job name>/{scripts/, tmp/, home/, sas, job.log}
    <state_dir>/archivers/<namespace>/<k8s_name>/{config.json, sas, pgpass, spool/, archiver.log, pid}
        a restore also: handoff/ (the fetch role writes, the serve role reads), serve/ (the serve
        role's own directory: its data directory until the platform moves it to the volume)

Job scripts run as the job account (sandbox.job_account), never the service user every instance
server (its tenant's code) runs as. A restore runs its two roles (base.RestoreRoles) as two process
trees: fetch as the job account, serve as a sandbox account in its own namespaces (sandbox.py).
Root is required for that; a non-root developer's restore is refused unless `allow_unsandboxed_restores` is set.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from records import Endpoints, InstanceRef, JobResult, ValidationFailed
from records.encryption import refuse_pasted_identity
from records.job_scripts import Supply
from records.passwords import scram_sha256_verifier
from resources.platform import local_archivers
from resources.platform.base import (
    AGE_IDENTITY_ENV,
    DeploySpec,
    JobFailed,
    JobKind,
    JobSpec,
    LogSink,
    PlatformError,
    PlatformResource,
    RestoreRoles,
    WalArchiverSpec,
    job_script_files,
    script_contract,
)
from resources.platform.postgres_server import (
    LocalPostgresServer,
    PostgresBinariesMissing,
    ServerCommandFailed,
    as_service_user,
    available_postgres_versions,
    free_port,
    give_to_service_user,
    postgres_bindir,
    run_as_user,
    run_checked,
    write_private_file,
)
from resources.platform.sandbox import SandboxUnavailable, job_account, sandbox_account, sandboxed

PG_HBA = """# written by toygres: passwords (scram-sha-256) for everyone, nothing trusted
local all all scram-sha-256
host  all all 0.0.0.0/0 scram-sha-256
host  all all ::/0 scram-sha-256
host  replication all 127.0.0.1/32 scram-sha-256
"""
LOG_TAIL_LINES = 200


class ServerRecord(BaseModel):
    port: int
    dns_label: str
    postgres_version: str
    superuser: str = "postgres"


class LocalPlatform(PlatformResource):
    """Runs everything on this machine, under `state_dir`."""

    state_dir: str = Field(description="Where volumes, secrets, servers and job directories live")
    azcopy_path: str = Field(description="The azcopy binary the job scripts call")
    superuser: str = Field(default="postgres", description="Superuser of every instance")
    job_timeout_seconds: int = Field(default=3600, description="Upper bound for any job run")
    job_stop_grace_seconds: int = Field(
        default=30, ge=1, description="How long a SIGTERMed job may clean up before its process group is killed"
    )
    age_identity_file: str | None = Field(
        default=None,
        description="age identity file (one or more private keys, age-keygen) that restore jobs get a private "
        "copy of; backup jobs never do",
    )

    @field_validator("age_identity_file")
    @classmethod
    def _identity_file_is_a_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return refuse_pasted_identity(value, "age_identity_file", "the path of the age identity file")

    wal_slot_max_keep_mb: int = Field(
        default=1024,
        ge=64,
        description="max_slot_wal_keep_size of every instance: WAL its archiver's slot may hold back while the "
        "archiver is down; past it the server drops that WAL (the archive reports the gap) instead of filling "
        "the tenant's disk",
    )
    allow_unsandboxed_restores: bool = Field(
        default=False,
        description="Not root (no sandbox accounts, no namespaces): run a restore's serve role as this user, "
        "with the image's code able to reach everything this user can. For a developer's own images only",
    )

    @model_validator(mode="after")
    def _identities_have_a_file(self) -> LocalPlatform:
        if self.age_identity_recipients and not self.age_identity_file:
            raise ValueError("age_identity_file: required when age_identity_recipients names any recipient")
        return self

    # --- layout -----------------------------------------------------------------------------

    @property
    def _root(self) -> Path:
        return Path(self.state_dir)

    def instance_dir(self, instance: InstanceRef) -> Path:
        return self._root / "instances" / instance.namespace / instance.k8s_name

    def volume_dir(self, instance: InstanceRef) -> Path:
        return self.instance_dir(instance) / "volume"

    def _password_file(self, instance: InstanceRef) -> Path:
        return self.instance_dir(instance) / "secret" / "password"

    def job_dir(self, name: str, namespace: str) -> Path:
        return self._root / "jobs" / namespace / name

    def _socket_dir(self, instance: InstanceRef) -> Path:
        # Unix socket paths are limited to ~107 bytes: keep them short whatever the names.
        digest = hashlib.sha1(f"{instance.namespace}/{instance.k8s_name}".encode()).hexdigest()[:12]
        return self._root / "sockets" / digest

    def server(self, instance: InstanceRef, port: int, postgres_version: str | None = None) -> LocalPostgresServer:
        """The instance's server; its binaries are the data directory's major unless told (initdb)."""
        base = self.instance_dir(instance)
        return LocalPostgresServer(
            data_dir=self.volume_dir(instance) / "pgdata",
            port=port,
            socket_dir=self._socket_dir(instance),
            log_file=base / "run" / "postgres.log",
            hba_file=base / "config" / "pg_hba.conf",
            postgres_version=postgres_version,
            settings=(("max_slot_wal_keep_size", f"{self.wal_slot_max_keep_mb}MB"),),
        )

    def check_postgres_version(self, version: str, field: str, subject: str = "the request") -> None:
        """Only a major this machine has server binaries for (Debian's, the pgserver wheel's)."""
        versions = available_postgres_versions()
        if str(version) not in versions:
            raise ValidationFailed(
                field,
                f"{subject} is PostgreSQL {version} and this machine has no server binaries for it "
                f"(it has: {', '.join(sorted(versions, key=int)) or 'none'})",
            )

    def server_record(self, instance: InstanceRef) -> ServerRecord | None:
        path = self.instance_dir(instance) / "server.json"
        return ServerRecord.model_validate_json(path.read_text()) if path.exists() else None

    def _prepare_dirs(self, instance: InstanceRef) -> Path:
        give_to_service_user(self._root, mode=0o711)
        for part in (self._root / "instances", self._root / "instances" / instance.namespace):
            give_to_service_user(part, mode=0o711)
        base = self.instance_dir(instance)
        give_to_service_user(base)
        return base

    def _shared_bin(self) -> Path:
        """azcopy copied where the service user can run it (the checkout may be private)."""
        bin_dir = self._root / "bin"
        give_to_service_user(bin_dir, mode=0o755)
        target = bin_dir / "azcopy"
        source = Path(self.azcopy_path)
        if not target.exists() or target.stat().st_size != source.stat().st_size:
            # A temporary name of its own: jobs start concurrently, and each installs a whole copy.
            handle, name = tempfile.mkstemp(dir=bin_dir, prefix=".azcopy-")
            os.close(handle)
            try:
                shutil.copyfile(source, name)
                Path(name).chmod(0o755)
                Path(name).replace(target)
            finally:
                Path(name).unlink(missing_ok=True)
        return bin_dir

    # --- secrets and volumes ----------------------------------------------------------------

    def read_instance_password(self, instance: InstanceRef) -> SecretStr:
        path = self._password_file(instance)
        if not path.exists():
            raise PlatformError(f"instance {instance.namespace}/{instance.k8s_name} has no secret at {path}")
        # Byte-exact: a password may end in (or hold) a line break.
        return SecretStr(path.read_bytes().decode())

    def ensure_instance_secret(self, instance: InstanceRef, password: SecretStr) -> None:
        self._prepare_dirs(instance)
        # root's (when root): no instance server, no job reads it; a job gets a copy of its own
        (self.instance_dir(instance) / "secret").mkdir(mode=0o700, exist_ok=True)
        write_private_file(self._password_file(instance), password.get_secret_value(), for_service_user=False)

    def create_volume(self, instance: InstanceRef, size_gb: int) -> None:
        # A directory has no size; the requested size is recorded for parity with a PVC.
        self._prepare_dirs(instance)
        volume = self.volume_dir(instance)
        give_to_service_user(volume)
        (self.instance_dir(instance) / "volume-size-gb").write_text(str(size_gb))

    # --- jobs -------------------------------------------------------------------------------

    def _job_env(self, spec: JobSpec, job_dir: Path) -> dict[str, str]:
        """The process's basics, then the script's model's environment: JobSpec.env and, of what
        this platform offers, what the model declares as the platform's (secrets as 0600 files)."""
        model = script_contract(spec)
        if spec.kind is JobKind.restore and not RestoreRoles.splits(spec):
            raise PlatformError(f"job {spec.name}: a restore runs as fetch and serve roles, {spec.script} has none")
        user = self._job_user(spec)
        wanted = model.variables(Supply.platform, Supply.secret_file)

        def source_address() -> dict[str, str]:
            record = self.server_record(spec.instance)
            if record is None:
                raise PlatformError(f"instance {spec.instance.k8s_name} is not deployed on this platform")
            return {"PGHOST": "127.0.0.1", "PGPORT": str(record.port), "PGUSER": self.superuser}

        offers: dict[str, Callable[[], dict[str, str]]] = {
            "TMPDIR": lambda: {"TMPDIR": str(job_dir / "tmp")},
            "AZCOPY_LOG_LOCATION": lambda: {"AZCOPY_LOG_LOCATION": str(job_dir / "home" / "azcopy-logs")},
            "TOYGRES_JOB": lambda: {"TOYGRES_JOB": spec.name},
            "POSTGRES_PASSWORD_FILE": lambda: {
                "POSTGRES_PASSWORD_FILE": str(self._private_password_copy(spec, job_dir))
            },
            "PGHOST": source_address,
            RestoreRoles.handoff_env: lambda: {RestoreRoles.handoff_env: str(job_dir / "handoff")},
            "VOLUME_PATH": lambda: {"VOLUME_PATH": str(self.volume_dir(spec.instance))},
            "POSTGRES_USER": lambda: {"POSTGRES_USER": self.superuser},
        }
        if self.age_identity_file:
            offers[AGE_IDENTITY_ENV] = lambda: {AGE_IDENTITY_ENV: str(self._private_identity_copy(job_dir, user))}
        if spec.blob_sas is not None:
            blob_sas = spec.blob_sas

            def grant() -> dict[str, str]:
                write_private_file(job_dir / "sas", blob_sas.get_secret_value(), user=user)
                return {"AZCOPY_SAS_FILE": str(job_dir / "sas")}

            offers["AZCOPY_SAS_FILE"] = grant
        platform: dict[str, str] = {}
        for name, offer in offers.items():
            if name in wanted:
                platform |= offer()
        # The job's tools are its major's: pg_dump of the source's, initdb/pg_restore of the target's.
        tools = postgres_bindir(spec.env.get("POSTGRES_VERSION"))
        return {
            "PATH": f"{self._shared_bin()}:{tools}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(job_dir / "home"),
            "AZCOPY_JOB_PLAN_LOCATION": str(job_dir / "home" / "azcopy-plans"),
            **model.environment(spec.env, platform),
        }

    def _job_user(self, spec: JobSpec) -> str | None:
        """Who runs the job's script (root only: else we are everyone): the job account, never
        the service user every instance server runs as."""
        if run_as_user() is None:
            return None
        try:
            return job_account()
        except SandboxUnavailable as error:
            raise PlatformError(f"job {spec.name}: {error}") from None

    def _private_password_copy(self, spec: JobSpec, job_dir: Path) -> Path:
        """The instance's password (byte-exact, read by root) in a 0600 file of the job's user."""
        write_private_file(job_dir / "password", self._password_file(spec.instance).read_bytes().decode(),
                           user=self._job_user(spec))  # fmt: skip
        return job_dir / "password"

    def _private_identity_copy(self, job_dir: Path, user: str | None) -> Path:
        """The identity file copied into the job's directory, readable by the job's user only (the
        configured file may belong to someone else); it goes when the job directory does."""
        source = Path(self.age_identity_file or "")
        try:
            identities = source.read_text()
        except OSError as error:
            raise PlatformError(f"age_identity_file {source} cannot be read: {error.strerror}") from None
        write_private_file(job_dir / "age-identities", identities, user=user)
        return job_dir / "age-identities"

    def _fresh_job_dir(self, spec: JobSpec) -> Path:
        job_dir = self.job_dir(spec.name, spec.instance.namespace)
        shutil.rmtree(job_dir, ignore_errors=True)
        user = self._job_user(spec)
        give_to_service_user(self._root, mode=0o711)
        for part in (self._root / "jobs", job_dir.parent):
            give_to_service_user(part, mode=0o711)
        # 0711: a restore's serve role reaches its own directory and the scripts, nothing else here
        give_to_service_user(job_dir, mode=0o711, user=user)
        for sub in ("tmp", "home"):
            give_to_service_user(job_dir / sub, user=user)
        give_to_service_user(job_dir / "scripts", mode=0o755, user=user)
        for script in job_script_files():
            shutil.copyfile(script, job_dir / "scripts" / script.name)
            (job_dir / "scripts" / script.name).chmod(0o755)
        return job_dir

    def run_job(self, spec: JobSpec, log: LogSink) -> JobResult:
        if spec.blob_sas is None:
            raise PlatformError(f"job {spec.name} has no blob grant: a job reaches blob storage through its grant only")
        job_dir = self._fresh_job_dir(spec)
        env = self._job_env(spec, job_dir)
        timeout = min(spec.timeout_seconds, self.job_timeout_seconds)
        with open(job_dir / "job.log", "w") as job_log:
            if RestoreRoles.splits(spec):
                returncode, reason, tail = self._run_restore(spec, job_dir, env, log, job_log, timeout)
            else:
                argv = as_service_user(["bash", str(job_dir / "scripts" / spec.script)], env, self._job_user(spec))
                job = _JobProcess.start(argv, job_dir, log, job_log)
                try:
                    returncode, reason = _wait_all([job], timeout, self.job_stop_grace_seconds)
                finally:
                    job.stop(self.job_stop_grace_seconds)
                tail = list(job.tail)
        result = JobResult(name=spec.name, succeeded=returncode == 0, log_tail=list(tail), reason=reason)
        if not result.succeeded:
            raise JobFailed(result)
        return result

    def _run_restore(
        self, spec: JobSpec, job_dir: Path, env: dict[str, str], log: LogSink, job_log, timeout: int
    ) -> tuple[int, str | None, list[str]]:
        """The fetch role as the job account, the serve role sandboxed; both or neither succeed.
        Whatever happens (a failure, a kill, a terminated run), neither process tree, nor the
        handoff, nor the serve role's directory (its trust pg_hba.conf, its data directory) outlives
        this call; on success the data directory moves to the volume, owned by the service user."""
        handoff, serve_dir = job_dir / "handoff", job_dir / "serve"
        # the Secret file itself (byte-exact), read by root: the serve role never reads it
        password = self._password_file(spec.instance).read_bytes().decode()
        serve = RestoreRoles.serve_of(spec)
        offers = {
            "TMPDIR": "/tmp",
            "TOYGRES_JOB": spec.name,
            "VOLUME_PATH": str(serve_dir),
            RestoreRoles.handoff_env: str(handoff),
            RestoreRoles.password_verifier_env: str(serve_dir / "password-verifier"),
            "POSTGRES_USER": self.superuser,
            **({RestoreRoles.refuse_dangerous_env: "1"} if self.refuse_dangerous_images else {}),
        }
        serve_env = {
            "PATH": env["PATH"],
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(serve_dir),
            **serve.environment(spec.env, {name: value for name, value in offers.items() if name in serve.variables()}),
        }
        serve_script = ["bash", str(job_dir / "scripts" / RestoreRoles.serve_script_of(spec))]
        with contextlib.ExitStack() as stack:
            if run_as_user() is not None:
                try:
                    account = stack.enter_context(sandbox_account())
                except SandboxUnavailable as error:
                    raise PlatformError(f"restore {spec.name}: {error}") from None
                uid, gid = account.pw_uid, account.pw_gid
                tools = postgres_bindir(spec.env.get("POSTGRES_VERSION"))
                # the binaries' installation (a copy of the wheel's may live in /var/tmp)
                serve_argv = sandboxed(account, serve_script, serve_env, keep=[job_dir, tools.parents[2]])
            elif self.allow_unsandboxed_restores:
                uid, gid = os.getuid(), os.getgid()
                serve_argv = as_service_user(serve_script, serve_env)
            else:
                raise PlatformError(
                    "restores run the image's code in a sandbox (its own OS user and network namespace), which "
                    "needs root; this process is not root (allow_unsandboxed_restores: for a developer's own images)"
                )
            for directory in (handoff, handoff / "data", handoff / "ready"):
                give_to_service_user(directory, mode=0o750, user=self._job_user(spec))
                os.chown(directory, -1, gid)
                directory.chmod(0o2750)  # what the fetch role creates here belongs to the serve role's group
            serve_dir.mkdir(mode=0o700)
            os.chown(serve_dir, uid, gid)
            write_private_file(serve_dir / "password-verifier", scram_sha256_verifier(password), for_service_user=False)
            os.chown(serve_dir / "password-verifier", uid, gid)
            (serve_dir / "password-verifier").chmod(0o400)
            jobs: list[_JobProcess] = []
            tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
            try:
                fetch_argv = as_service_user(
                    ["bash", str(job_dir / "scripts" / spec.script)], env, self._job_user(spec)
                )
                jobs.append(_JobProcess.start(fetch_argv, job_dir, log, job_log, tail))
                jobs.append(_JobProcess.start(serve_argv, job_dir, log, job_log, tail))
                returncode, reason = _wait_all(jobs, timeout, self.job_stop_grace_seconds)
                if returncode == 0:
                    self._adopt_data_directory(serve_dir / "pgdata", spec.instance)
                return returncode, reason, list(tail)
            finally:
                for job in jobs:
                    job.stop(self.job_stop_grace_seconds)
                shutil.rmtree(serve_dir, ignore_errors=True)
                shutil.rmtree(handoff, ignore_errors=True)
        raise AssertionError("unreachable")

    def _adopt_data_directory(self, built: Path, instance: InstanceRef) -> None:
        """The serve role's data directory, owned by the service user, becomes the volume's."""
        user = run_as_user()
        if user is not None:
            run_checked(["chown", "-R", "--no-dereference", f"{user}:", str(built)], timeout=3600)
        target = self.volume_dir(instance) / "pgdata"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(built, target)

    def delete_job(self, name: str, namespace: str) -> None:
        shutil.rmtree(self.job_dir(name, namespace), ignore_errors=True)

    def delete_stale_jobs(self, namespaces: set[str], grace_seconds: float) -> list[str]:
        # run_job kills every job at job_timeout_seconds at the latest, so a job directory
        # created longer ago than that (plus the grace) belongs to no live job. Every namespace
        # on this machine is swept: they all live under one state directory.
        cutoff = time.time() - self.job_timeout_seconds - grace_seconds
        removed = []
        for job_dir in sorted((self._root / "jobs").glob("*/*")):
            if job_dir.is_dir() and job_dir.stat().st_mtime < cutoff:
                self.delete_job(job_dir.name, job_dir.parent.name)
                removed.append(f"{job_dir.parent.name}/{job_dir.name}")
        return removed

    # --- servers ----------------------------------------------------------------------------

    def deploy_instance(self, spec: DeploySpec) -> None:
        base = self._prepare_dirs(spec.instance)
        record = self.server_record(spec.instance) or ServerRecord(
            port=free_port(),
            dns_label=spec.dns_label,
            postgres_version=spec.postgres_version,
            superuser=self.superuser,
        )
        (base / "server.json").write_text(record.model_dump_json())
        give_to_service_user(base / "config")
        write_private_file(base / "config" / "pg_hba.conf", PG_HBA)
        server = self.server(spec.instance, record.port)
        if not server.initialized:
            raise PlatformError(f"volume of {spec.instance.k8s_name} holds no data directory")
        if not server.is_running():
            server.start()

    def wait_ready(self, instance: InstanceRef, timeout_seconds: int) -> None:
        record = self.server_record(instance)
        if record is None:
            raise PlatformError(f"instance {instance.k8s_name} is not deployed")
        try:
            self.server(instance, record.port).wait_accepting(
                record.superuser, self.read_instance_password(instance).get_secret_value(), timeout_seconds
            )
        except TimeoutError as error:
            raise PlatformError(str(error)) from error

    def endpoints(self, instance: InstanceRef) -> Endpoints:
        record = self.server_record(instance)
        if record is None:
            raise PlatformError(f"instance {instance.k8s_name} is not deployed")
        return Endpoints(host="127.0.0.1", port=record.port, external_ip="127.0.0.1", dns_name="localhost")

    def stop_instance(self, instance: InstanceRef) -> None:
        record = self.server_record(instance)
        if record is not None:
            self.server(instance, record.port).stop("fast")

    def delete_instance(self, instance: InstanceRef) -> None:
        record = self.server_record(instance)
        if record is not None:
            try:
                self.server(instance, record.port).stop("immediate")
            except (ServerCommandFailed, PostgresBinariesMissing):  # its major's binaries gone: remove it all the same
                pass
        shutil.rmtree(self.instance_dir(instance), ignore_errors=True)
        shutil.rmtree(self._socket_dir(instance), ignore_errors=True)

    def instance_exists(self, instance: InstanceRef) -> bool:
        return self.instance_dir(instance).exists()

    # --- WAL archivers (resources/platform/local_archivers.py) ------------------------------

    def ensure_wal_archiver(self, spec: WalArchiverSpec) -> bool:
        record = self.server_record(spec.instance)
        if record is None:
            raise PlatformError(f"instance {spec.instance.k8s_name} is not deployed on this platform")
        return local_archivers.ensure(
            self._root / "archivers",
            spec,
            port=record.port,
            user=record.superuser,
            password=self.read_instance_password(spec.instance),
            bindir=postgres_bindir(record.postgres_version),
        )

    def wal_archivers(self) -> list[InstanceRef]:
        return local_archivers.listed(self._root / "archivers")

    def stop_wal_archivers(self) -> None:
        """Stop every archiver process, keeping its slot and directory: started again, each
        resumes where it stopped (make dev's shutdown)."""
        for ref in self.wal_archivers():
            local_archivers.stop(self._root / "archivers", ref)

    def wal_archiver_error(self, instance: InstanceRef) -> str | None:
        return local_archivers.last_error(self._root / "archivers", instance)

    def remove_wal_archiver(self, instance: InstanceRef) -> None:
        local_archivers.stop(self._root / "archivers", instance)
        record = self.server_record(instance)
        if record is not None and self.server(instance, record.port).is_running():
            local_archivers.drop_slot(
                port=record.port, user=record.superuser, password=self.read_instance_password(instance)
            )
        local_archivers.forget(self._root / "archivers", instance)


class _JobProcess:
    """One process tree of a job (its own process group), its output pumped into the log."""

    def __init__(self, process: subprocess.Popen, reader: threading.Thread, tail: collections.deque[str]):
        self.process, self.reader, self.tail = process, reader, tail

    @classmethod
    def start(
        cls, argv: list[str], cwd: Path, log: LogSink, job_log, tail: collections.deque[str] | None = None
    ) -> _JobProcess:
        """`tail`: shared by a job's processes, so their last lines stay in the order they came."""
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        tail = tail if tail is not None else collections.deque(maxlen=LOG_TAIL_LINES)
        reader = threading.Thread(target=_pump_lines, args=(process, log, tail, job_log), daemon=True)
        reader.start()
        return cls(process, reader, tail)

    def stop(self, grace_seconds: int) -> None:
        """SIGTERM (then SIGKILL) to whatever is left of its process group; the reader drained."""
        _kill_group(self.process, grace_seconds)
        self.reader.join(timeout=10)


def _wait_on_one(jobs: list[_JobProcess]) -> None:
    """Up to 0.2 s on a process still running (the last may have ended since it was polled)."""
    running = next((job for job in jobs if job.process.poll() is None), None)
    if running is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            running.process.wait(timeout=0.2)


def _wait_all(jobs: list[_JobProcess], timeout: float, grace_seconds: int) -> tuple[int, str | None]:
    """Wait for every process; the first to fail (or the timeout) stops the others. A terminated
    run (any exception here) takes them all down. The exit code reported is the first process's
    (a restore's fetch role: its 3 means a checksum mismatch) when it failed too."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            codes = [job.process.poll() for job in jobs]
            if any(code not in (None, 0) for code in codes) or all(code == 0 for code in codes):
                break
            if time.monotonic() >= deadline:
                for job in jobs:
                    job.stop(grace_seconds)
                return -1, f"timed out after {timeout:g}s"
            _wait_on_one(jobs)
        # One failed: the others notice (the fetch role's `failed` marker) and end on their own.
        settle = time.monotonic() + min(5, grace_seconds)
        while any(job.process.poll() is None for job in jobs) and time.monotonic() < settle:
            _wait_on_one(jobs)
    except BaseException:
        for job in jobs:
            job.stop(grace_seconds)
        raise
    for job in jobs:
        if job.process.poll() is None:
            job.stop(grace_seconds)
        job.reader.join(timeout=10)
    failed = next((job.process.returncode for job in jobs if job.process.returncode != 0), None)
    return (0, None) if failed is None else (failed, f"exit code {failed}")


def _pump_lines(process: subprocess.Popen, log: LogSink, tail: collections.deque, job_log) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        job_log.write(line + "\n")
        job_log.flush()
        try:
            log(line)
        except Exception:  # noqa: BLE001 - a failing log sink must not stop the job
            pass


def _kill_group(process: subprocess.Popen, grace_seconds: int) -> None:
    """SIGTERM first: the job's own traps stop its temporary server and remove its directories.
    A group whose leader was killed may still hold processes: they are stopped all the same."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        process.poll()
        return
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Give the reader a moment to drain what the job printed last.
    time.sleep(0.1)
