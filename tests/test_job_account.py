"""Local job scripts never share an OS user with tenant servers (issue 25 follow-up).

Every instance server runs as the service user, so a tenant's `COPY ... TO PROGRAM` runs as that
user. Jobs (a backup, a restore's fetch role) hold the job's blob grant, a copy of the deployment's
age identity and the source instance's password: none of it may be reachable from any running
instance while those jobs run. Each job is held mid-flight by a hook the test controls (an `azcopy`
first on the job's PATH that waits for a flag file), not by a sleep.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.base import JobFailed, JobKind, JobSpec
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import postgres_bindir, run_as_user
from tests.test_encryption import new_identity, private_key, with_encryption
from toygres_pipelines.dev.demo import provision_server

pytestmark = pytest.mark.integration

TENANT_PASSWORD = "tenant-Pw-1c9e"
VICTIM_PASSWORD = "victim-Pw-55d2b"
TARGET_PASSWORD = "target-Pw-a07f3"
GRANT = json.dumps(
    {
        "format": 1,
        "query": "sv=2024-08-04&sr=b&sp=r",
        "signatures": {name: "JobGrantSignature0123456789" for name in ("manifest.json", "globals.sql")},
        "container": "sv=2024-08-04&sr=c&sp=cw&sig=JobGrantSignatureOfTheContainer",
    }
)

HOOK = """#!/bin/bash
# waits (bounded) for the test's go flag, then fails the job
touch "{hooks}/reached-${{0##*/}}"
for _ in $(seq 1 6000); do [[ -e "{hooks}/go" ]] && exit 1; sleep 0.05; done
exit 1
"""

PROBE = r"""{ id; for f in /proc/[0-9]*/environ; do echo "== $f"; tr '\0' '\n' <"$f"; done
  find %s -xdev -type f -readable 2>/dev/null | while IFS= read -r f; do
    echo "== readable $f"; case "$f" in */pgdata/*|*.log) ;; *) head -c 4096 "$f"; echo ;; esac; done
} 2>/dev/null | base64 -w0; echo"""


def wait_for(path: Path, outcomes: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert not outcomes, f"a job ended before reaching its hook: {outcomes}"
        assert time.monotonic() < deadline, f"the job never reached its hook ({path.name})"
        time.sleep(0.05)


def tenant_probe(platform: LocalPlatform, tenant: InstanceRef) -> str:
    endpoints = platform.endpoints(tenant)
    dsn = psycopg.conninfo.make_conninfo(
        host=endpoints.host, port=endpoints.port, user="postgres", password=TENANT_PASSWORD, dbname="postgres"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE loot (found text)")
        conn.execute(f"COPY loot FROM PROGRAM {psycopg.sql.quote(PROBE % platform.state_dir)}")
        [(found,)] = conn.execute("SELECT found FROM loot").fetchall()
    return base64.b64decode(found).decode(errors="replace")


@pytest.mark.skipif(run_as_user() is None, reason="separate OS accounts need root")
def test_tenant_code_of_a_running_instance_reaches_nothing_of_running_jobs(platform, tmp_path):
    key = tmp_path / "deployment.key"
    new_identity(key)
    sealed = with_encryption(platform, age_identity_file=str(key))
    tenant = InstanceRef(k8s_name="tenant-a", namespace="default")
    victim = InstanceRef(k8s_name="victim-b", namespace="default")
    target = InstanceRef(k8s_name="target-c", namespace="default")
    provision_server(platform, tenant, SecretStr(TENANT_PASSWORD))
    provision_server(platform, victim, SecretStr(VICTIM_PASSWORD))
    sealed.ensure_instance_secret(target, SecretStr(TARGET_PASSWORD))
    sealed.create_volume(target, 1)

    hooks = Path(tempfile.mkdtemp(prefix="toygres-job-hook-", dir="/var/tmp"))
    try:
        hooks.chmod(0o777)
        for tool in ("azcopy",):
            (hooks / tool).write_text(HOOK.format(hooks=hooks))
            (hooks / tool).chmod(0o755)
        path = f"{hooks}:{postgres_bindir('15')}:/usr/local/bin:/usr/bin:/bin"
        common = {"PATH": path, "BLOB_URL": "http://127.0.0.1:9/none"}
        backup = JobSpec(
            kind=JobKind.backup, name="backup-victim-b-held", script="backup.sh", instance=victim,
            blob_sas=SecretStr(GRANT),
            env={**common, "IMAGE_NAME": "victim-b__held", "SOURCE_INSTANCE": "victim-b",
                 "SOURCE_NAMESPACE": "default"},
        )  # fmt: skip
        restore = JobSpec(
            kind=JobKind.restore, name="restore-target-c-held", script="restore.sh", instance=target,
            blob_sas=SecretStr(GRANT), env={**common, "MANIFEST_SHA256": "0" * 64, "POSTGRES_VERSION": "15"},
        )  # fmt: skip
        outcomes: list[BaseException | None] = []

        def run(spec: JobSpec) -> None:
            try:
                sealed.run_job(spec, lambda line: None)
                outcomes.append(None)
            except BaseException as error:  # noqa: BLE001 - recorded for the assertion below
                outcomes.append(error)

        threads = [threading.Thread(target=run, args=(spec,)) for spec in (backup, restore)]
        try:
            # one after the other: the jobs are both held before the tenant looks
            threads[0].start()
            wait_for(hooks / "reached-azcopy", outcomes)
            (hooks / "reached-azcopy").unlink()
            threads[1].start()
            wait_for(hooks / "reached-azcopy", outcomes)
            loot = tenant_probe(platform, tenant)
        finally:
            (hooks / "go").touch()
            for thread in threads:
                if thread.is_alive() or thread.ident is not None:
                    thread.join(timeout=300)
        assert all(isinstance(outcome, JobFailed) for outcome in outcomes), outcomes  # both failed at the hook
        state = platform.state_dir
        leaks = {
            "the age private key": private_key(key) in loot,
            "a grant signature": "JobGrantSignature" in loot,
            "another instance's password": VICTIM_PASSWORD in loot or TARGET_PASSWORD in loot,
            # (jobs of other test runs on this machine may be visible: only this test's count)
            "a job's environment": any(f"TOYGRES_JOB={spec.name}" in loot for spec in (backup, restore))
            or f"AZCOPY_SAS_FILE={state}" in loot,
            "a job's directory": f"== readable {state}/jobs/" in loot,
            "another instance's secret": f"== readable {state}/instances/default/victim-b/secret/" in loot,
        }
        found = [what for what, leaked in leaks.items() if leaked]
        assert not found, f"tenant code found {found}:\n{loot[:4000]}"
        assert "== readable" in loot or "uid=" in loot  # the probe ran
    finally:
        for ref in (tenant, victim, target):
            platform.delete_instance(ref)
        for leftover in sorted(hooks.iterdir()):
            leftover.unlink()
        hooks.rmdir()
        assert not os.path.exists(hooks)
