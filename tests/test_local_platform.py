"""The local platform runs the very scripts the Kubernetes Jobs mount, with secrets by reference."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.base import JobKind, JobSpec, PlatformError, job_script_files
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import as_service_user, give_to_service_user


def test_job_directory_holds_the_template_scripts_byte_for_byte(tmp_path):
    tmp_path.chmod(0o711)
    platform = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path="/bin/true")
    spec = JobSpec(
        kind=JobKind.restore,
        name="restore-x",
        script="restore.sh",
        instance=InstanceRef(k8s_name="x", namespace="default"),
        blob_sas=SecretStr("sv=1&sig=secret"),
    )
    job_dir = platform._fresh_job_dir(spec)
    templates = job_script_files()
    assert [p.name for p in templates] == [
        "archive_reader.py",
        "backup.sh",
        "basebackup.sh",
        "common.sh",
        "restore-pitr-serve.sh",
        "restore-pitr.sh",
        "restore-serve.sh",
        "restore.sh",
        "stream_digest.py",
        "table_sizes.sql",
    ]
    for template in templates:
        assert (job_dir / "scripts" / template.name).read_bytes() == template.read_bytes()

    env = platform._job_env(spec, job_dir)
    assert "sig=secret" not in "".join(env.values())
    assert (job_dir / "sas").read_text() == "sv=1&sig=secret"
    assert (job_dir / "sas").stat().st_mode & 0o777 == 0o600
    assert env["AZCOPY_SAS_FILE"] == str(job_dir / "sas")
    # The restore's fetch role gets no password and no volume: the serve role builds the data
    # directory from the handoff and the platform moves it to the volume.
    assert "POSTGRES_PASSWORD_FILE" not in env and "PGPASSWORD" not in env and "VOLUME_PATH" not in env
    assert env["RESTORE_HANDOFF"] == str(job_dir / "handoff")


def test_initdb_refuses_a_password_it_would_cut_at_a_line_break(stack):
    """initdb keeps the first line of --pwfile: such a password must be set by ALTER ROLE instead."""
    import uuid

    import pytest

    from resources.platform.postgres_server import LocalPostgresServer, give_to_service_user

    base = stack.root / f"initdb-{uuid.uuid4().hex[:8]}"
    give_to_service_user(base, mode=0o711)
    server = LocalPostgresServer(
        data_dir=base / "pgdata", port=1, socket_dir=base / "run", log_file=base / "log" / "postgres.log"
    )
    with pytest.raises(ValueError, match="password: initdb takes a single line"):
        server.initdb("postgres", "ends in a newline\n")
    assert not server.initialized


def test_a_job_run_as_the_service_user_may_clean_up_for_longer_than_two_seconds_after_sigterm():
    """The local platform signals a job's whole process group and gives it its grace period. A
    supervising `runuser`/`su` in the group would SIGKILL the script 2 s after the signal, cutting
    its cleanup (stopping the temporary server) short on a loaded machine."""
    shared = Path(tempfile.mkdtemp(prefix="toygres-sigterm-"))  # a pytest tmp_path is private to its user
    give_to_service_user(shared, 0o777)
    marker = shared / "cleaned-up"
    started = shared / "started"
    script = f"trap 'sleep 3; touch {marker}; exit 143' TERM; touch {started}; sleep 60 & wait"
    process = subprocess.Popen(
        as_service_user(["bash", "-c", script], env={"PATH": os.environ["PATH"]}), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 30
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        assert marker.exists(), "the job's cleanup was killed before it finished"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_a_job_without_a_blob_grant_is_refused_before_anything_runs(tmp_path):
    """Every job reaches blob storage with its own grant (docs/security.md); none gets a way around it."""
    tmp_path.chmod(0o711)
    platform = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path="/bin/true")
    spec = JobSpec(
        kind=JobKind.restore,
        name="restore-x",
        script="restore.sh",
        instance=InstanceRef(k8s_name="x", namespace="default"),
    )
    with pytest.raises(PlatformError, match="has no blob grant"):
        platform.run_job(spec, lambda _line: None)
    assert not platform.job_dir("restore-x", "default").exists()


def test_two_jobs_starting_at_once_both_get_azcopy(tmp_path, monkeypatch):
    """Jobs start concurrently (the sensors launch several runs): each copies azcopy beside the
    state directory through a temporary name of its own, so neither finds the other's gone."""
    import threading

    source = tmp_path / "azcopy-src"
    source.write_bytes(b"#!/bin/sh\n" + b"x" * 4096)
    platform = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path=str(source))
    both_copied = threading.Barrier(2, timeout=30)
    copy = shutil.copyfile

    def copy_then_wait(src, dst, **kwargs):
        copied = copy(src, dst, **kwargs)
        both_copied.wait()  # both jobs hold a copied temporary file before either installs it
        return copied

    monkeypatch.setattr(shutil, "copyfile", copy_then_wait)
    errors: list[BaseException] = []

    def start_job() -> None:
        try:
            platform._shared_bin()
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=start_job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    installed = tmp_path / "state" / "bin" / "azcopy"
    assert installed.read_bytes() == source.read_bytes() and os.access(installed, os.X_OK)
    assert [p.name for p in installed.parent.iterdir()] == ["azcopy"]
