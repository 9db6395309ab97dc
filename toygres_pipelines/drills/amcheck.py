"""`pg_amcheck` over every database of a drill's scratch instance (heap and btree indexes, every
index entry against its heap: --heapallindexed), for logical and PITR drills alike. It runs the
local binaries of the instance's major from the Dagster process (docs/drills.md)."""

from __future__ import annotations

import os
import subprocess

from records import InstanceRef
from records.tenant_sessions import TENANT_SESSION_OPTIONS
from resources.platform.base import PlatformResource
from resources.platform.postgres_server import postgres_bindir

AMCHECK_CLEAN = "pg_amcheck clean (heap and btree of every database)"
# A server built without contrib (the local pgserver wheel's 16) cannot check: said, not failed.
AMCHECK_UNAVAILABLE = "pg_amcheck not run: the server has no amcheck extension"


def amcheck(platform: PlatformResource, ref: InstanceRef, postgres_version: str) -> str:
    """pg_amcheck over every database (heap and btree indexes): what it found to say, or raises
    with its findings."""
    endpoints = platform.endpoints(ref)
    env = {
        "PATH": "/usr/bin:/bin",
        "PGPASSWORD": platform.read_instance_password(ref).get_secret_value(),
        "PGCONNECT_TIMEOUT": "15",
        # the scratch instance keeps the tenant's settings (read-only by default, short timeouts...)
        "PGOPTIONS": TENANT_SESSION_OPTIONS,
    }
    done = subprocess.run(
        [str(postgres_bindir(postgres_version) / "pg_amcheck"), "-h", endpoints.host, "-p", str(endpoints.port),
         "-U", "postgres", "--all", "--install-missing", "--heapallindexed"],
        env={**env, "LANG": os.environ.get("LANG", "C.UTF-8")}, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0 and 'extension "amcheck" is not available' in said:
        return AMCHECK_UNAVAILABLE
    if done.returncode != 0:
        raise RuntimeError(f"pg_amcheck found problems: {said[-2000:]}")
    return AMCHECK_CLEAN
