"""Local PostgreSQL servers: the CMS of the embedded stack, and the local platform's instances.

PostgreSQL refuses to run as root, so when this process is root every server command runs as
an unprivileged OS user (`postgres` by default, TOYGRES_RUN_AS to change it) through `setpriv`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg


class PostgresBinariesMissing(RuntimeError):
    pass


class ServerCommandFailed(RuntimeError):
    pass


def run_checked(argv: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    """Run a server command; failures carry what the command printed."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        command = next((a for a in argv if a.startswith("/") or a in ("bash",)), argv[0])
        raise ServerCommandFailed(
            f"{Path(command).name} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done


def _bindir_candidates() -> list[Path]:
    """Every PostgreSQL bin dir this machine has, in order of preference: TOYGRES_PG_BIN, the
    Debian installs (newest first), the one on PATH, the `pgserver` wheel's (PostgreSQL 16)."""
    found: list[Path] = []
    configured = os.environ.get("TOYGRES_PG_BIN")
    if configured:
        found.append(Path(configured))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    found += [Path(candidate) for candidate in debian if (Path(candidate) / "initdb").exists()]
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    wheel = importlib.util.find_spec("pgserver")
    if wheel is not None and wheel.submodule_search_locations:
        bundled = Path(next(iter(wheel.submodule_search_locations))) / "pginstall" / "bin"
        if (bundled / "initdb").exists():
            found.append(shared_wheel_bindir(bundled, Path(os.environ.get("TOYGRES_PG_CACHE", DEFAULT_PG_CACHE))))
    return list(dict.fromkeys(found))


DEFAULT_PG_CACHE = "/var/tmp/toygres-pg"


@functools.lru_cache(maxsize=8)
def shared_wheel_bindir(bindir: Path, cache_dir: Path) -> Path:
    """The pgserver wheel's binaries where the service user can run them: where they are, or (a
    checkout only its owner can enter) a copy under `cache_dir`, made once per wheel build. The
    copy keeps the wheel's layout: the binaries find pgserver.libs, lib/ and share/ relative to themselves."""
    user = run_as_user()
    probe = ["runuser", "-u", user, "--", "test", "-x", str(bindir / "postgres")] if user else None
    if probe is None or subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
        return bindir
    package = bindir.parents[1]  # .../pgserver (bin -> pginstall -> pgserver)
    stamp = (bindir / "postgres").stat()
    key = hashlib.sha256(f"{package}:{stamp.st_size}:{stamp.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / f"pgserver-{key}"
    copied = target / "pgserver" / "pginstall" / "bin"
    if not (copied / "postgres").exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        cache_dir.chmod(0o755)
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=cache_dir))
        shutil.copytree(package / "pginstall", staging / "pgserver" / "pginstall", symlinks=True)
        if (package.parent / "pgserver.libs").is_dir():
            shutil.copytree(package.parent / "pgserver.libs", staging / "pgserver.libs", symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another process copied it first
            shutil.rmtree(staging, ignore_errors=True)
    return copied


@functools.lru_cache(maxsize=32)
def _major_of(bindir: Path) -> str | None:
    """The major of the server binaries in `bindir` (`postgres --version`: "postgres (PostgreSQL) 16.2")."""
    try:
        done = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    words = done.stdout.split()
    return words[-1].split(".")[0] if done.returncode == 0 and words else None


def available_postgres_versions() -> dict[str, Path]:
    """Each PostgreSQL major this machine can run, and the bin dir it is run from."""
    versions: dict[str, Path] = {}
    for candidate in _bindir_candidates():
        major = _major_of(candidate)
        if major is not None:
            versions.setdefault(major, candidate)
    return versions


def newest_postgres_bindir() -> Path:
    """The newest major's binaries: its pg_restore reads the archives of every older pg_dump."""
    versions = available_postgres_versions()
    return versions[max(versions, key=int)] if versions else postgres_bindir()


def postgres_bindir(version: str | None = None) -> Path:
    """Where initdb/pg_ctl/pg_dump live. With a major: that major's binaries (an instance, its
    jobs). Without: TOYGRES_PG_BIN, else the newest Debian install, else PATH, else the wheel's."""
    if version is not None:
        versions = available_postgres_versions()
        if str(version) not in versions:
            raise PostgresBinariesMissing(
                f"no PostgreSQL {version} server binaries on this machine "
                f"(it has: {', '.join(sorted(versions, key=int)) or 'none'})"
            )
        return versions[str(version)]
    candidates = _bindir_candidates()
    if candidates:
        return candidates[0]
    raise PostgresBinariesMissing(
        "no PostgreSQL server binaries found: install postgresql (make dev does) or set TOYGRES_PG_BIN"
    )


def run_as_user() -> str | None:
    """The OS user that server processes run as, or None to run them as ourselves."""
    if os.geteuid() != 0:
        return None
    return os.environ.get("TOYGRES_RUN_AS", "postgres")


# A process started in the background inherits SIGINT ignored, and Dagster copies SIGINT's
# disposition to SIGTERM: an ignored signal survives exec, and bash cannot even trap it. Every
# child (server, job script) therefore starts with the default dispositions (GNU env >= 8.31).
DEFAULT_SIGNALS = ["env", "--default-signal=HUP,INT,QUIT,TERM"]


def as_service_user(argv: list[str], env: dict[str, str] | None = None, user: str | None = None) -> list[str]:
    """Wrap argv so it runs as the service user (or `user`, when root) with exactly `env` (when
    given) and default signal dispositions."""
    user = run_as_user() and (user or run_as_user())
    env_prefix = (
        [*DEFAULT_SIGNALS, "-i", *(f"{k}={v}" for k, v in (env or {}).items())] if env is not None else DEFAULT_SIGNALS
    )
    if user is None:
        return [*env_prefix, *argv]
    # setpriv execs the command as the user: no supervising `runuser`/`su` stays in the process
    # group, which would SIGKILL a signalled job after 2 s, cutting its cleanup short.
    account = pwd.getpwnam(user)
    identity = [f"HOME={account.pw_dir}", f"USER={user}", f"LOGNAME={user}"] if env is None else []
    return [
        "setpriv",
        f"--reuid={account.pw_uid}",
        f"--regid={account.pw_gid}",
        "--init-groups",
        "--",
        *env_prefix,
        *identity,
        *argv,
    ]


def give_to_service_user(path: Path, mode: int = 0o700, user: str | None = None) -> None:
    """Make a directory we created usable (and only usable) by the service user (or `user`, when root)."""
    path.mkdir(parents=True, exist_ok=True)
    user = run_as_user() and (user or run_as_user())
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)


def write_private_file(path: Path, content: str, *, for_service_user: bool = True, user: str | None = None) -> None:
    """A file readable only by its owner: the service user (or `user`) when we are root, else whoever we are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as handle:  # byte-exact, no newline translation
        handle.write(content)
    user = run_as_user() and (user or run_as_user()) if for_service_user else None
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o600)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pgpass_line(host: str, port: int, user: str, password: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return f"{escape(host)}:{port}:*:{escape(user)}:{escape(password)}\n"


def service_env(bindir: Path | None = None) -> dict[str, str]:
    return {
        "PATH": f"{bindir or postgres_bindir()}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


@dataclass(frozen=True)
class LocalPostgresServer:
    """A PostgreSQL cluster in `data_dir`, served on 127.0.0.1:`port`."""

    data_dir: Path
    port: int
    socket_dir: Path
    log_file: Path
    hba_file: Path | None = None
    postgres_version: str | None = None  # None: the data directory's (PG_VERSION), else the default
    settings: tuple[tuple[str, str], ...] = ()  # -c name=value on the command line: above postgresql.auto.conf

    @property
    def bindir(self) -> Path:
        """The binaries of the data directory's major: a server runs with the version that made it."""
        version = self.postgres_version
        if version is None:
            try:
                version = (self.data_dir / "PG_VERSION").read_text().strip() or None
            except OSError:
                version = None
        return postgres_bindir(version)

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        bindir = self.bindir
        argv = as_service_user([str(bindir / "pg_ctl"), "-D", str(self.data_dir), *args], service_env(bindir))
        if check:
            return run_checked(argv, timeout=120)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def initdb(self, superuser: str, password: str) -> None:
        if "\n" in password or "\r" in password:
            # initdb reads one line of --pwfile: such a password would be silently cut short.
            raise ValueError("password: initdb takes a single line; set one with line breaks by ALTER ROLE")
        pwfile = self.data_dir.parent / ".initdb-pw"
        give_to_service_user(self.data_dir)
        write_private_file(pwfile, password + "\n")
        try:
            bindir = self.bindir
            argv = [
                str(bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                superuser,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ]
            run_checked(as_service_user(argv, service_env(bindir)), timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)

    def start(self, timeout_seconds: int = 60) -> None:
        give_to_service_user(self.socket_dir)
        give_to_service_user(self.log_file.parent)
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.socket_dir}",
        ]
        if self.hba_file is not None:
            options.append(f"-c hba_file={self.hba_file}")
        options += [f"-c {name}={value}" for name, value in self.settings]
        self._pg_ctl("start", "-w", "-t", str(timeout_seconds), "-l", str(self.log_file), "-o", " ".join(options))

    def is_running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        if self.initialized and self.is_running():
            self._pg_ctl("stop", "-m", mode, "-w", "-t", "60")

    def dsn(self, user: str, password: str, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=user, password=password, dbname=dbname
        )

    def wait_accepting(self, user: str, password: str, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(user, password), connect_timeout=5) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as error:
                last_error = error
                time.sleep(0.5)
        raise TimeoutError(f"postgres on port {self.port} not accepting connections: {last_error}")
