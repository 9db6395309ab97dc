"""Selective restore and upgrade on restore: the rules, without services."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from records import BackupFile, BackupManifest, ValidationFailed
from records.requests import RestoreRequestFields
from resources.platform.local import LocalPlatform
from resources.platform.postgres_server import (
    available_postgres_versions,
    postgres_bindir,
    run_as_user,
    shared_wheel_bindir,
)
from toygres_pipelines.forms import add_cli_arguments, fields_from_cli, run_config_values
from toygres_pipelines.restores.config import (
    RestoreConfig,
    check_request_fields,
    chosen_databases,
    target_postgres_version,
)
from toygres_pipelines.restores.jobs import restore_config_of, restore_form_run_config
from toygres_pipelines.restores.steps import restore_job_env

HOSTILE = "b'\"=x\nnew line ü postgresql://"


def fields(**over) -> RestoreRequestFields:
    return RestoreRequestFields(name="copy", dns_label="copy-db", source_image_id="img", **over)


def manifest(*databases: str) -> BackupManifest:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    files = [BackupFile(path="globals.sql", kind="globals", size_bytes=10, sha256="a" * 64)]
    files += [
        BackupFile(
            path=f"databases/{i:03d}.dump", kind="database", database=name, size_bytes=100 * i, sha256=f"{i}" * 64
        )
        for i, name in enumerate(databases, start=1)
    ]
    return BackupManifest(
        format_version=1,
        image_name="img",
        source_instance="src",
        source_namespace="default",
        postgres_version="15",
        server_version_num=150000,
        dump_format="custom",
        started_at=now,
        finished_at=now,
        tools={},
        files=files,
    )


@pytest.mark.parametrize(
    ("databases", "words"),
    [
        ([], "databases: name at least one database"),
        (["a\x00b"], "databases: 'a\\x00b' holds a NUL byte"),
        (["a", "a"], "databases: 'a' is named twice"),
        ([""], "databases: '' is empty"),
    ],
)
def test_a_bad_database_list_is_refused_naming_the_field(databases, words):
    with pytest.raises(ValidationFailed) as raised:
        check_request_fields(fields(databases=databases))
    assert words in str(raised.value)


@pytest.mark.parametrize("version", ["", "16.2", "sixteen", "9.6", "016", " 16"])
def test_a_target_version_must_be_a_major_number(version):
    with pytest.raises(ValidationFailed) as raised:
        check_request_fields(fields(postgres_version=version))
    assert str(raised.value).startswith("postgres_version: ")


def test_any_name_but_nul_is_a_valid_selection():
    check_request_fields(fields(databases=["pagila", HOSTILE], postgres_version="16"))


def test_no_selection_means_every_database():
    assert chosen_databases(None, manifest("a", "b"), "img") is None


def test_a_selection_keeps_the_images_names_in_the_requested_order():
    assert chosen_databases([HOSTILE, "a"], manifest("a", HOSTILE, "c"), "img") == [HOSTILE, "a"]


def test_an_unknown_database_is_refused_listing_what_the_image_holds():
    with pytest.raises(ValidationFailed) as raised:
        chosen_databases(["a", "nope"], manifest("a", HOSTILE), "img")
    error = raised.value
    assert error.field == "databases"
    assert "'nope'" in str(error) and "image 'img' holds: 'a', " + repr(HOSTILE) in str(error)


@pytest.mark.parametrize(("image", "requested", "target"), [("15", None, "15"), ("15", "15", "15"), ("15", "16", "16")])
def test_the_target_is_the_images_major_or_a_newer_one(image, requested, target):
    assert target_postgres_version(image, requested, "img") == target


def test_a_downgrade_is_refused_with_its_reason():
    with pytest.raises(ValidationFailed) as raised:
        target_postgres_version("16", "15", "img")
    assert str(raised.value) == (
        "postgres_version: 15 is older than PostgreSQL 16 of image 'img': a restore can keep or raise the major, "
        "never lower it"
    )


def test_the_cli_takes_databases_one_option_each_and_a_target_version():
    parser = argparse.ArgumentParser()
    add_cli_arguments(parser, RestoreRequestFields)
    args = parser.parse_args(
        ["--name", "n", "--dns-label", "d", "--image", "i", "--database", "a", "--database", HOSTILE]
        + ["--postgres-version", "16"]
    )
    request = fields_from_cli(args, RestoreRequestFields)
    assert request.databases == ["a", HOSTILE] and request.postgres_version == "16"
    assert run_config_values(request, RestoreRequestFields)["databases"] == ["a", HOSTILE]
    plain = fields_from_cli(
        parser.parse_args(["--name", "n", "--dns-label", "d", "--image", "i"]), RestoreRequestFields
    )
    assert plain.databases is None and plain.postgres_version is None


def test_the_restore_job_downloads_and_restores_only_the_chosen_databases():
    env = restore_job_env(manifest("a", HOSTILE, "c"), [HOSTILE])
    assert json.loads(env["RESTORE_DATABASES"]) == [HOSTILE]
    assert env["RESTORE_DATABASES"].isascii()  # any name, one safe line of an environment variable
    assert [line.split("  ", 1)[1] for line in env["BACKUP_SHA256SUMS"].splitlines()] == [
        "globals.sql",
        "databases/002.dump",
    ]
    everything = restore_job_env(manifest("a", HOSTILE), None)
    assert "RESTORE_DATABASES" not in everything
    assert len(everything["BACKUP_SHA256SUMS"].splitlines()) == 3


def server_major(bindir) -> str:
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split()[-1].split(".")[0]


def test_the_machines_postgres_majors_each_have_their_own_binaries():
    versions = available_postgres_versions()
    assert {"15", "16"} <= set(versions)  # apt's 15 and the pgserver wheel's 16
    for major in ("15", "16"):
        assert server_major(postgres_bindir(major)) == major
    assert postgres_bindir() == postgres_bindir("15")  # the default stays what it was


def test_the_local_platform_refuses_a_major_it_has_no_binaries_for(tmp_path):
    platform = LocalPlatform(state_dir=str(tmp_path), azcopy_path="/bin/true")
    platform.check_postgres_version("16", "postgres_version")
    with pytest.raises(ValidationFailed) as raised:
        platform.check_postgres_version("17", "postgres_version", "the target")
    assert str(raised.value).startswith("postgres_version: the target is PostgreSQL 17 and this machine has no ")
    assert "(it has: 15, 16)" in str(raised.value)


@pytest.mark.skipif(run_as_user() is None, reason="only a root process hands the server to a service user")
def test_the_wheels_binaries_are_made_usable_by_the_service_user_from_a_private_checkout(tmp_path):
    """A checkout only its owner can enter (mode 0700): the service user cannot run binaries inside it,
    so they are copied, once, where it can."""
    wheel = postgres_bindir("16").parents[2]  # site-packages holding pgserver/ and pgserver.libs/
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    for part in ("pgserver", "pgserver.libs"):
        shutil.copytree(wheel / part, private / part, symlinks=True)
    inside = private / "pgserver" / "pginstall" / "bin"
    as_service = ["runuser", "-u", run_as_user(), "--"]
    assert subprocess.run([*as_service, str(inside / "postgres"), "--version"], capture_output=True).returncode != 0

    cache = Path(tempfile.mkdtemp(prefix="toygres-pg-cache-", dir="/var/tmp")) / "cache"
    cache.parent.chmod(0o755)  # a place everyone may enter, like the default /var/tmp/toygres-pg
    try:
        usable = shared_wheel_bindir(inside, cache)
        assert usable != inside
        done = subprocess.run([*as_service, str(usable / "initdb"), "--version"], capture_output=True, text=True)
        assert done.returncode == 0 and "16." in done.stdout, done.stderr
        assert shared_wheel_bindir(inside, cache) == usable  # copied once
        assert shared_wheel_bindir(postgres_bindir("16"), cache) == postgres_bindir("16")  # reachable: as it is
    finally:
        shutil.rmtree(cache.parent)


def test_a_request_rows_selection_and_target_reach_the_run_the_sensor_launches():
    import dagster as dg

    from records.requests import RestoreRequest
    from toygres_pipelines.restores.jobs import restore_instance
    from toygres_pipelines.restores.sensors import restore_run_request

    row = RestoreRequest(
        id="00000000-0000-0000-0000-000000000001",
        name="n",
        dns_label="dns",
        source_image_id="img",
        namespace="default",
        databases=["pagila", HOSTILE],
        postgres_version="16",
        state="accepted",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    config = restore_config_of(restore_run_request(row, "img-id").run_config)
    assert (config["databases"], config["postgres_version"]) == (["pagila", HOSTILE], "16")
    form = restore_form_run_config(RestoreConfig.model_construct(**config))
    assert dg.validate_run_config(restore_instance, form.to_config_dict())


def test_an_instance_whose_major_has_no_binaries_any_more_can_still_be_deleted(tmp_path):
    from records import InstanceRef
    from resources.platform.local import ServerRecord

    platform = LocalPlatform(state_dir=str(tmp_path), azcopy_path="/bin/true")
    ref = InstanceRef(k8s_name="old-major", namespace="default")
    pgdata = platform.volume_dir(ref) / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("12\n")  # a major this machine has no binaries for
    record = ServerRecord(port=1, dns_label="old-major", postgres_version="12")
    (platform.instance_dir(ref) / "server.json").write_text(record.model_dump_json())
    platform.delete_instance(ref)
    assert not platform.instance_exists(ref)


def test_an_images_databases_show_their_rows_when_the_manifest_counted_them():
    from toygres_pipelines.images.contents import database_contents, databases_table

    counted = manifest("a", HOSTILE)
    files = [
        f.model_copy(update={"row_counts": {"public.t": 3, "public.u": 4}}) if f.database == "a" else f
        for f in counted.files
    ]
    contents = database_contents(counted.model_copy(update={"files": files}))
    assert [(c.database, c.size_bytes, c.rows) for c in contents] == [("a", 100, 7), (HOSTILE, 200, None)]
    table = databases_table(counted.model_copy(update={"files": files}))
    assert [(r.data["database"], r.data["size_bytes"], r.data["rows"]) for r in table.value.records] == [
        ("a", 100, "7"),
        (HOSTILE, 200, ""),
    ]


# execve refuses any one environment string longer than this (Linux MAX_ARG_STRLEN): the job never starts
MAX_ENV_STRING = 32 * 4096


@pytest.mark.parametrize("databases", [None, ["a"]])
def test_the_restore_job_env_of_a_parallel_image_with_thousands_of_files_fits_an_environment(databases):
    big = manifest("a")
    files = [big.files[0]] + [
        BackupFile(
            path=f"databases/001/{4000 + i}.dat.gz",
            kind="database",
            database="a",
            size_bytes=100,
            sha256=f"{i:064x}",
            dump_format="directory",
            archive="databases/001",
        )
        for i in range(3000)
    ]
    env = restore_job_env(big.model_copy(update={"files": files}), databases)
    assert all(len(f"{name}={value}".encode()) < MAX_ENV_STRING for name, value in env.items())
