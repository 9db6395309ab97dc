"""The local platform's restore sandbox: where a restore's serve role (the image's code) runs.

Each running restore gets an OS account of a pool (`toygres-sbx<N>`, created with useradd on first
use: initdb and postgres need a passwd entry for their uid) that is neither the service user (which
owns every instance's data directory and Secret file, and runs the fetch role) nor shared with any
other running restore: a machine-wide lock file per account (LOCK_DIR) holds it for the job's
lifetime. The serve role runs in namespaces of its own (`unshare`, as root; nothing machine-wide
changes): a network namespace (no interface but a down loopback: no network at all), a PID
namespace with its own /proc (it sees only its own processes; when its first process dies, the
kernel kills every other one: a killed job leaves no temporary server), and a mount namespace
with fresh tmpfs over every world-writable directory (nothing it writes there outlives the job or
reaches the next restore that gets the same account).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

ACCOUNT_PREFIX = "toygres-sbx"
JOB_ACCOUNT = "toygres-job"
POOL_SIZE = 64
LOCK_DIR = Path(os.environ.get("TOYGRES_SANDBOX_LOCK_DIR", "/var/tmp/toygres-sandbox"))
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")


class SandboxUnavailable(RuntimeError):
    pass


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    done = subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        return pwd.getpwnam(name)  # created, or by a concurrent job (useradd exit 9)
    except KeyError:
        raise SandboxUnavailable(f"could not create the sandbox account {name}: {done.stderr.strip()}") from None


def job_account() -> str:
    """The account job scripts (a backup, a restore's fetch role) run as: never the service user
    every instance server runs as, so no tenant's code reaches a job's grant, identity copy,
    password copy or environment."""
    return _account(JOB_ACCOUNT).pw_name


@contextlib.contextmanager
def sandbox_account() -> Iterator[pwd.struct_passwd]:
    """An account of the pool that no other running restore on this machine holds."""
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for number in range(POOL_SIZE):
        fd = os.open(LOCK_DIR / f"{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield _account(f"{ACCOUNT_PREFIX}{number}")
        finally:
            os.close(fd)
        return
    raise SandboxUnavailable(f"all {POOL_SIZE} sandbox accounts are held by running restores")


# Run as root (bash) inside the new namespaces, before dropping to the account: each path to keep
# is opened, fresh tmpfs mounted over each world-writable directory, each kept path bound back in
# (from its open descriptor: its old path now leads into the tmpfs), then the command runs.
_PRIVATE_TMP_THEN_EXEC = """set -e
keep=(); while [ "$1" != -- ]; do keep+=("$1"); shift; done; shift
masked=(); while [ "$1" != -- ]; do masked+=("$1"); shift; done; shift
fds=(); for path in "${keep[@]}"; do exec {fd}<"$path"; fds+=("$fd"); done
for dir in "${masked[@]}"; do mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$dir"; done
for i in "${!keep[@]}"; do
  mkdir -p "${keep[i]}"
  mount --no-canonicalize --bind "/proc/self/fd/${fds[i]}" "${keep[i]}"
  eval "exec ${fds[i]}<&-"
done
# Not exec'd: this root shell stays the namespace's first process (its init, reaping orphans such as
# the postmaster), so the script keeps ordinary signal handling; when the script ends, this shell
# does, and the kernel ends every process left in the namespace.
"$@" && status=0 || status=$?
exit "$status"
"""


def sandboxed(account: pwd.struct_passwd, argv: list[str], env: dict[str, str], keep: list[Path]) -> list[str]:
    """argv run as `account` with exactly `env`, no network, its own PIDs and private temp dirs
    (`keep`: what it needs of them: its job directory, the binaries when they live there)."""
    masked = [d for d in PRIVATE_TMP if Path(d).is_dir()]
    kept = [str(path) for path in keep if any(path.is_relative_to(d) for d in masked)]
    return [
        "unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "--mount-proc",
        "--", "bash", "-c", _PRIVATE_TMP_THEN_EXEC, "sandbox", *kept, "--", *masked, "--",
        "setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--no-new-privs",
        "--bounding-set=-all", "--",
        "env", "--default-signal=HUP,INT,QUIT,TERM", "-i", *(f"{k}={v}" for k, v in env.items()),
        *argv,
    ]  # fmt: skip
