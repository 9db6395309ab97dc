"""The `toygres-pipelines` CLI against a real CMS database (one fresh database per test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from records import ImageRequest, ImageState, InstanceState, RequestState, RestoreRequest
from records.requests import RestoreRequestFields
from resources.platform.postgres_server import free_port
from tests.helpers import add_image, add_instance, cli_runner, image_request
from toygres_pipelines import cli
from toygres_pipelines.cli import images as cli_images
from toygres_pipelines.cli.requests import follow
from toygres_pipelines.images.jobs import backup_config_of

UNREACHABLE_PASSWORD = "n0t-Sh0wn-pw"


@pytest.fixture
def run(cms, monkeypatch, capsys):
    """main([...]) in process against the test's CMS: (exit code, stdout, stderr)."""
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.delenv(cli.KEY_ENV, raising=False)

    return cli_runner(capsys)


@pytest.fixture
def db(cms):
    return add_instance(cms, "db-abcde")


# ---- request-backup ---------------------------------------------------------------------------


def test_backup_request_is_queued_pending_with_the_given_fields(run, cms, db):
    code, out, err = run(
        "request-backup", "--instance", "db-abcde", "--name", "nightly_1", "--description", "before upgrade"
    )
    assert (code, err) == (0, "")
    [request] = cms.requests.list(ImageRequest)
    assert (request.image_name, request.source_instance, request.description, request.state) == (
        "nightly_1",
        "db-abcde",
        "before upgrade",
        RequestState.pending,
    )
    assert str(request.id) in out and "pending" in out


def test_backup_request_by_instance_id_gets_a_timestamped_default_name(run, cms, db):
    before = datetime.now(UTC).replace(microsecond=0)
    code, out, err = run("request-backup", "--instance", str(db.id), "--json")
    assert (code, err) == (0, "")
    printed = json.loads(out)
    [request] = cms.requests.list(ImageRequest)
    assert printed["id"] == str(request.id) and printed["state"] == "pending" and printed["kind"] == "backup"
    assert request.source_instance == "db-abcde"
    prefix = "db-abcde__manual-"
    assert request.image_name.startswith(prefix)
    stamp = datetime.strptime(request.image_name[len(prefix) :], "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)


@pytest.mark.parametrize("name", ["has space", "semi;colon", "x" * 101, ""])
def test_backup_request_with_an_invalid_name_exits_2_and_queues_nothing(run, cms, db, name):
    code, out, err = run("request-backup", "--instance", "db-abcde", "--name", name)
    assert code == 2 and out == ""
    assert err.startswith("error: name: ") and "letters, digits" in err
    assert cms.requests.list(ImageRequest) == []


def test_backup_request_of_an_unknown_instance_exits_2(run, cms):
    code, _, err = run("request-backup", "--instance", "nope-12345")
    assert code == 2
    assert err == "error: source_instance: no instance 'nope-12345' in the CMS\n"
    assert cms.requests.list(ImageRequest) == []


def test_backup_request_of_a_stopped_instance_exits_2(run, cms):
    add_instance(cms, "idle-abcde", state=InstanceState.stopped)
    code, _, err = run("request-backup", "--instance", "idle-abcde", "--name", "x")
    assert code == 2
    assert err.startswith("error: source_instance: ") and "stopped" in err and "must be running" in err
    assert cms.requests.list(ImageRequest) == []


def test_backup_request_with_the_name_of_a_live_image_exits_2(run, cms, db):
    add_image(cms, db, "taken", state=ImageState.creating)
    add_image(cms, db, "reusable", state=ImageState.failed)
    code, _, err = run("request-backup", "--instance", "db-abcde", "--name", "taken")
    assert code == 2
    assert err.startswith("error: name: 'taken' is already used by image ")
    # The name of a failed image may be taken again; a queued request then holds it.
    assert run("request-backup", "--instance", "db-abcde", "--name", "reusable")[0] == 0
    code, _, err = run("request-backup", "--instance", "db-abcde", "--name", "reusable")
    assert code == 2 and err.startswith("error: name: 'reusable' is already requested by pending request ")
    assert [r.image_name for r in cms.requests.list(ImageRequest)] == ["reusable"]


# ---- request-restore --------------------------------------------------------------------------


@pytest.fixture
def image(cms, db):
    return add_image(cms, db, "db-abcde__golden", state=ImageState.ready)


def test_restore_request_is_queued_pending_with_the_given_fields(run, cms, image):
    code, out, err = run(
        "request-restore",
        "--name",
        "copy",
        "--dns-label",
        "copy-db",
        "--image",
        "db-abcde__golden",
        "--namespace",
        "team-a",
        "--storage-gb",
        "5",
        "--internal",
    )
    assert (code, err) == (0, "")
    [request] = cms.requests.list(RestoreRequest)
    assert request.model_dump(
        include={
            "name",
            "dns_label",
            "source_image_id",
            "namespace",
            "storage_size_gb",
            "internal",
            "runtime_image_id",
            "image_override",
            "state",
        }
    ) == {
        "name": "copy",
        "dns_label": "copy-db",
        "source_image_id": str(image.id),
        "namespace": "team-a",
        "storage_size_gb": 5,
        "internal": True,
        "runtime_image_id": None,
        "image_override": None,
        "state": RequestState.pending,
    }
    assert str(request.id) in out and "pending" in out


def test_restore_request_by_image_id_with_defaults(run, cms, image):
    code, out, _ = run(
        "request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", str(image.id), "--json"
    )
    assert code == 0
    printed = json.loads(out)
    assert printed["kind"] == "restore" and printed["state"] == "pending"
    assert (printed["namespace"], printed["storage_size_gb"], printed["internal"]) == ("default", 10, False)
    assert cms.requests.get(RestoreRequest, printed["id"]).source_image_id == str(image.id)


@pytest.mark.parametrize(
    "args, field, words",
    [
        ([], "source_image_id", "required"),
        (["--image", "db-abcde__golden", "--runtime-image-id", "r1"], "runtime_image_id", "cannot be combined"),
        (["--image", "db-abcde__golden", "--image-override", "pg:17"], "image_override", "cannot be combined"),
        (["--image", "db-abcde__golden", "--name", "Bad_Name"], "name", "DNS-1123"),
        (["--image", "db-abcde__golden", "--name", "n" * 47], "name", "1-46 characters"),
        (["--image", "db-abcde__golden", "--dns-label=-bad"], "dns_label", "DNS-1123"),
        (["--image", "db-abcde__golden", "--namespace", "Team_A"], "namespace", "DNS-1123"),
        (["--image", "db-abcde__golden", "--dns-label", "9db"], "dns_label", "start with a letter"),
        (["--image", "db-abcde__golden", "--dns-label", "db"], "dns_label", "3-63 characters"),
        (["--image", "db-abcde__golden", "--storage-gb", "0"], "storage_size_gb", "between 1 and"),
        (["--image", "db-abcde__golden", "--storage-gb", "99999"], "storage_size_gb", "between 1 and"),
        (["--image", "no-such-image"], "source_image_id", "no image with name 'no-such-image'"),
        (["--image", str(uuid.UUID(int=7))], "source_image_id", "no image with id"),
        (["--image", "half-done"], "source_image_id", "is creating, it must be ready"),
        (["--image", "no-checksum"], "source_image_id", "no recorded checksum"),
        (["--image", "db-abcde__golden", "--dns-label", "taken-db"], "dns_label", "already used by another instance"),
    ],
)
def test_each_restore_rule_violation_exits_2_naming_the_field(run, cms, db, image, args, field, words):
    add_image(cms, db, "half-done", state=ImageState.creating)
    add_image(cms, db, "no-checksum", state=ImageState.ready, backup_checksum=None)
    add_instance(cms, "other-abcde", dns_name="taken-db")
    base = {"--name": "copy", "--dns-label": "copy-db"}
    argv = ["request-restore"]
    for flag, value in base.items():
        if not any(a.split("=")[0] == flag for a in args):
            argv += [flag, value]
    code, out, err = run(*argv, *args)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {field}: ") and words in err, err
    assert cms.requests.list(RestoreRequest) == []


def test_restore_request_namespace_defaults_to_the_kubernetes_platforms_and_must_be_enabled(
    run, cms, image, monkeypatch
):
    monkeypatch.setenv("TOYGRES_PLATFORM", "kubernetes")
    monkeypatch.setenv("TOYGRES_K8S_NAMESPACE", "pg-instances")
    monkeypatch.setenv("TOYGRES_K8S_INSTANCE_NAMESPACES", "team-a")
    monkeypatch.setenv("TOYGRES_K8S_JOB_IMAGES", f"15=acr.io/toygres-job@sha256:{'ab' * 32}")
    # Public instances need source ranges on Kubernetes: this test is about namespaces only.
    monkeypatch.setenv("TOYGRES_K8S_LOAD_BALANCER_SOURCE_RANGES", "203.0.113.0/24")
    assert run("request-restore", "--name", "one", "--dns-label", "one-db", "--image", str(image.id))[0] == 0
    assert (
        run(
            "request-restore",
            "--name",
            "two",
            "--dns-label",
            "two-db",
            "--image",
            str(image.id),
            "--namespace",
            "team-a",
        )[0]
        == 0
    )
    assert sorted(r.namespace for r in cms.requests.list(RestoreRequest)) == ["pg-instances", "team-a"]
    code, out, err = run(
        "request-restore",
        "--name",
        "three",
        "--dns-label",
        "three-db",
        "--image",
        str(image.id),
        "--namespace",
        "default",
    )
    assert code == 2 and err.startswith("error: namespace: ") and "TOYGRES_K8S_INSTANCE_NAMESPACES" in err, err
    assert len(cms.requests.list(RestoreRequest)) == 2
    monkeypatch.setenv("TOYGRES_K8S_JOB_IMAGES", f"17=acr.io/toygres-job@sha256:{'ab' * 32}")
    code, out, err = run("request-restore", "--name", "four", "--dns-label", "four-db", "--image", str(image.id))
    assert code == 2 and err.startswith("error: source_image_id: ") and "PostgreSQL 15" in err, err


def test_restore_request_for_a_dns_label_already_queued_exits_2(run, cms, image):
    assert run("request-restore", "--name", "one", "--dns-label", "shared", "--image", str(image.id))[0] == 0
    code, _, err = run("request-restore", "--name", "two", "--dns-label", "shared", "--image", str(image.id))
    assert code == 2 and err.startswith("error: dns_label: 'shared' is already requested by pending request ")
    assert len(cms.requests.list(RestoreRequest)) == 1


# ---- listings ---------------------------------------------------------------------------------


def test_listings_as_json_show_states(run, cms, db, image):
    add_image(cms, db, "broken", state=ImageState.failed)
    add_instance(cms, "idle-abcde", state=InstanceState.stopped)
    run("request-backup", "--instance", "db-abcde", "--name", "b1")
    run("request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", image.name)
    backup = cms.requests.list(ImageRequest)[0]
    with cms.requests.claim(ImageRequest) as claim:
        claim.reject(backup, "source went away")

    code, out, _ = run("images", "--json")
    assert code == 0
    assert {i["name"]: i["state"] for i in json.loads(out)} == {"db-abcde__golden": "ready", "broken": "failed"}
    code, out, _ = run("images", "--json", "--state", "ready")
    assert [i["name"] for i in json.loads(out)] == ["db-abcde__golden"]

    code, out, _ = run("instances", "--json", "--state", "stopped")
    assert code == 0 and [i["k8s_name"] for i in json.loads(out)] == ["idle-abcde"]

    code, out, _ = run("requests", "--json")
    listed = {(r["kind"], r["state"], r.get("reason")) for r in json.loads(out)}
    assert listed == {("backup", "rejected", "source went away"), ("restore", "pending", None)}
    code, out, _ = run("requests", "--json", "--kind", "restore", "--state", "pending")
    assert [(r["kind"], r["name"]) for r in json.loads(out)] == [("restore", "copy")]
    code, out, _ = run("requests", "--json", "--kind", "backup", "--state", "pending")
    assert json.loads(out) == []


def test_listings_as_tables_are_aligned(run, cms, db, image):
    add_image(cms, db, "a-much-longer-image-name", state=ImageState.failed)
    code, out, _ = run("images")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["ID", "NAME", "KIND", "STATE"]
    state_column = header.index("STATE")
    assert {row[state_column:].split()[0] for row in rows} == {"ready", "failed"}
    code, out, _ = run("requests")
    assert code == 0 and out.splitlines()[1] == "(none)"
    code, out, _ = run("instances")
    assert "db-abcde" in out and "running" in out


def test_instance_connection_strings_never_show_a_password(run, cms, db):
    cms.instances.transition(
        db.id,
        InstanceState.stopped,
        ip_connection_string="postgresql://postgres:Hunter2pw@10.0.0.1:5432/postgres",
    )
    code, out, _ = run("instances", "--json")
    assert code == 0 and "Hunter2pw" not in out
    assert json.loads(out)[0]["ip_connection_string"] == "postgresql://postgres:***@10.0.0.1:5432/postgres"
    code, out, _ = run("instances")
    assert code == 0 and "Hunter2pw" not in out


def test_the_instances_table_shows_where_each_instance_answers(run, cms, db):
    cms.instances.transition(db.id, InstanceState.stopped)
    cms.instances.transition(
        db.id,
        InstanceState.running,
        ip_connection_string="postgresql://postgres@10.0.0.1:5432/postgres?sslmode=require",
        dns_connection_string="postgresql://postgres@db.westeurope.cloudapp.azure.com:5432/postgres?sslmode=require",
    )
    add_instance(cms, "new-abcde", state=InstanceState.creating)
    code, out, _ = run("instances")
    header, *rows = out.splitlines()
    assert "ENDPOINT" in header.split()
    row = next(r for r in rows if "db-abcde" in r)
    assert "db.westeurope.cloudapp.azure.com:5432" in row.split() and "10.0.0.1:5432" not in row
    assert ":5432" not in next(r for r in rows if "new-abcde" in r)


# ---- configuration and the CMS being away -----------------------------------------------------


def unreachable_dsn() -> str:
    return (
        f"host=127.0.0.1 port={free_port()} dbname=cms user=toygres password={UNREACHABLE_PASSWORD} connect_timeout=2"
    )


def test_unreachable_cms_exits_3_without_showing_the_password(monkeypatch, capsys):
    monkeypatch.setenv(cli.DSN_ENV, unreachable_dsn())
    assert cli.main(["images"]) == 3
    err = capsys.readouterr().err
    assert "cannot reach the CMS" in err and "TOYGRES_CMS_DSN" in err and "127.0.0.1" in err
    assert UNREACHABLE_PASSWORD not in err


def test_missing_dsn_exits_3_naming_the_variable(monkeypatch, capsys):
    monkeypatch.delenv(cli.DSN_ENV, raising=False)
    assert cli.main(["requests"]) == 3
    assert "TOYGRES_CMS_DSN" in capsys.readouterr().err


def test_unmigrated_cms_exits_3_and_migrate_fixes_it(fresh_database, monkeypatch, capsys):
    monkeypatch.delenv(cli.DSN_ENV, raising=False)
    assert cli.main(["--dsn", fresh_database, "images"]) == 3
    assert "toygres-pipelines migrate" in capsys.readouterr().err
    assert cli.main(["migrate", "--dsn", fresh_database]) == 0
    assert "applied migrations: 001" in capsys.readouterr().out
    assert cli.main(["images", "--dsn", fresh_database, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_the_installed_entry_point_exits_with_the_documented_codes(cms, db):
    entry_point = Path(sys.executable).parent / "toygres-pipelines"
    assert entry_point.exists(), "pip install -e . installs the toygres-pipelines script"
    env = {**os.environ, cli.DSN_ENV: cms.dsn}

    def call(*argv: str, command=(str(entry_point),), environ=env) -> subprocess.CompletedProcess:
        return subprocess.run([*command, *argv], env=environ, capture_output=True, text=True, timeout=60)

    ok = call("request-backup", "--instance", "db-abcde", "--name", "from-cli")
    assert ok.returncode == 0, ok.stderr
    assert [r.image_name for r in cms.requests.list(ImageRequest)] == ["from-cli"]
    invalid = call("request-backup", "--instance", "db-abcde", "--name", "bad name")
    assert (invalid.returncode, invalid.stdout) == (2, "")
    assert invalid.stderr.startswith("error: name: ")
    away = call(
        "images", command=(sys.executable, "-m", "toygres_pipelines"), environ={**env, cli.DSN_ENV: unreachable_dsn()}
    )
    assert away.returncode == 3 and "cannot reach the CMS" in away.stderr
    assert UNREACHABLE_PASSWORD not in away.stderr + away.stdout


def test_an_unexpected_error_exits_1_and_never_shows_the_dsn_password(cms, monkeypatch, capsys):
    dsn = f"{cms.dsn} password={UNREACHABLE_PASSWORD}"

    def broken(args, cms, out):
        raise RuntimeError(f"exploded while using {args.dsn} (postgresql://u:{UNREACHABLE_PASSWORD}@h/db)")

    monkeypatch.setattr(cli_images, "cmd_images", broken)
    assert cli.main(["images", "--dsn", dsn]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: exploded while using ")
    assert UNREACHABLE_PASSWORD not in err


def test_a_restore_password_is_accepted_ignored_and_stored_nowhere(run, cms, image):
    import dagster as dg

    from tests.helpers import cms_text, dagster_text
    from toygres_pipelines.resources_from_env import platform_from_env
    from toygres_pipelines.restores.jobs import restore_instance
    from toygres_pipelines.restores.sensors import evaluate_restore_requests

    secret = "s3cret-Typed-At-3am"
    code, out, err = run(
        "request-restore",
        "--name",
        "copy",
        "--dns-label",
        "copy-db",
        "--image",
        "db-abcde__golden",
        "--password",
        secret,
    )
    assert code == 0, err
    assert "warning: --password is ignored" in err and secret not in err + out

    dagster = dg.DagsterInstance.ephemeral()
    [run_request] = evaluate_restore_requests(dagster, cms, platform_from_env()).run_requests
    dagster.create_run_for_job(restore_instance, run_config=run_request.run_config, tags=run_request.tags)
    assert dagster.get_runs() and secret not in dagster_text(dagster)
    assert secret not in cms_text(cms)


def test_a_password_given_to_the_cms_request_api_is_ignored_with_a_warning(cms, image):
    from tests.helpers import cms_text

    secret = "s3cret-Via-The-Api"
    with pytest.warns(UserWarning, match="password is ignored"):
        cms.requests.create(
            RestoreRequestFields(
                name="copy",
                dns_label="copy-db",
                source_image_id=str(image.id),
                namespace="default",
                storage_size_gb=1,
                internal=True,
            ),
            password=secret,
        )
    assert secret not in cms_text(cms)


# ---- connect ----------------------------------------------------------------------------------


@pytest.fixture
def local_platform_env(platform, monkeypatch):
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_STATE_DIR", platform.state_dir)


def psql(command: str, *extra: str) -> subprocess.CompletedProcess:
    """Run the printed `psql '<uri>'` command (with `extra` arguments), psql from the PostgreSQL install."""
    from resources.platform.postgres_server import postgres_bindir

    env = {"PATH": f"{postgres_bindir()}:/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        ["bash", "-c", command + " " + " ".join(extra)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_connect_prints_a_psql_command_without_the_password(run, source, local_platform_env):
    from tests.conftest import SOURCE_PASSWORD

    code, out, err = run("connect", source.k8s_name, "--database", "pagila")
    assert code == 0, err
    [command] = out.splitlines()
    assert command.startswith("psql 'postgresql://postgres@127.0.0.1:") and command.endswith("/pagila'")
    assert SOURCE_PASSWORD not in out + err and "--show-password" in err
    refused = psql(command, "-w", "-Atc", "'SELECT 1'")  # -w: never prompt, so no password means no session
    assert refused.returncode != 0 and "password" in refused.stderr


def test_connect_with_show_password_gives_a_command_that_connects(run, source, local_platform_env):
    code, out, err = run("connect", str(source.id), "--database", "pagila", "--show-password")
    assert code == 0, err
    [command] = out.splitlines()
    done = psql(command, "-w", "-Atc", "'SELECT count(*) FROM film'")
    assert (done.returncode, done.stdout.strip()) == (0, "1000"), done.stderr


def test_connect_json_names_both_addresses(run, source, local_platform_env):
    code, out, _ = run("connect", source.k8s_name, "--json", "--database", "postgres")
    assert code == 0
    printed = json.loads(out)
    assert printed["instance"] == source.k8s_name and printed["uri"] == source.ip_connection_string
    assert printed["psql"] == f"psql '{source.ip_connection_string}'" and "password" not in printed


def test_connect_defaults_to_the_only_application_database(run, source, local_platform_env):
    """pagila-src holds one database besides `postgres`: connect points at it without --database."""
    code, out, err = run("connect", source.k8s_name)
    assert code == 0, err
    [command] = out.splitlines()
    assert command.endswith("/pagila'"), command
    assert "database pagila: the instance's only application database" in err
    code, out, err = run("connect", source.k8s_name, "--database", "postgres")
    assert code == 0 and out.strip().endswith("/postgres'")


def test_connect_falls_back_to_postgres_when_the_instance_has_several_databases(
    run, source, source_dsn, local_platform_env
):
    import psycopg

    with psycopg.connect(source_dsn("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS second_app")
        conn.execute("CREATE DATABASE second_app")
    try:
        code, out, err = run("connect", source.k8s_name)
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE second_app")
    assert code == 0, err
    assert out.strip().endswith("/postgres'")
    assert "2 application databases (pagila, second_app)" in err and "--database" in err


def test_connect_to_an_instance_that_is_not_running_exits_2(run, cms, local_platform_env):
    add_instance(cms, "half-abcde", state=InstanceState.creating)
    code, out, err = run("connect", "half-abcde")
    assert (code, out) == (2, "")
    assert err.startswith("error: instance: ") and "creating" in err
    code, _, err = run("connect", "no-such-abcde")
    assert code == 2 and "no instance 'no-such-abcde'" in err


# ---- --wait -----------------------------------------------------------------------------------


def follow_in_thread(cms, *argv: str):
    """The CLI with --wait in a thread (it polls the CMS); returns (thread, result dict, output)."""
    import io
    import threading

    out, err, result = io.StringIO(), io.StringIO(), {}
    os.environ[cli.DSN_ENV] = cms.dsn

    def main():
        result["code"] = cli.main([*argv, "--wait", "--poll-seconds", "0.1", "--wait-timeout", "240"], out, err)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, result, out, err


def wait_for(condition, what: str, timeout: float = 120):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.05)


def test_request_backup_wait_follows_the_request_to_its_end(cms, resources, source, monkeypatch):
    import dagster as dg

    from tests.helpers import materialize_image
    from toygres_pipelines.images.sensors import evaluate_image_requests
    from toygres_pipelines.requests.writeback import settle_run
    from toygres_pipelines.shared.tags import REQUEST_ID_TAG

    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    thread, result, out, _ = follow_in_thread(cms, "request-backup", "--instance", source.k8s_name, "--name", "waited")
    wait_for(lambda: "backup request" in out.getvalue() and "pending" in out.getvalue(), "the pending line")
    dagster = dg.DagsterInstance.ephemeral()
    [run_request] = evaluate_image_requests(dagster, cms, resources["platform"]).run_requests  # the sensor accepts it
    wait_for(lambda: "accepted" in out.getvalue(), "the accepted line")
    done = materialize_image(resources, "waited", backup_config_of(run_request.run_config), instance=dagster)
    [request] = cms.requests.list(ImageRequest)
    cms.requests.attach_run(request.id, done.run_id)
    settle_run(
        cms=cms,
        blob=resources["blob"],
        platform=resources["platform"],
        run_id=done.run_id,
        tags={REQUEST_ID_TAG: str(request.id)},
        succeeded=True,
        reason=None,
        log=lambda _: None,
    )
    thread.join(timeout=60)
    assert result["code"] == 0
    lines = out.getvalue().splitlines()
    states = [line.split()[-1] for line in lines if " backup request " in line]
    assert states == ["pending", "accepted", "succeeded"], lines
    assert any(f"run {done.run_id} started" in line for line in lines)
    assert any("image waited ready (" in line for line in lines), lines


def test_request_restore_wait_ends_with_the_rejection_and_exit_2(cms, image, monkeypatch):
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    thread, result, out, _ = follow_in_thread(
        cms, "request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", str(image.id)
    )
    wait_for(lambda: "pending" in out.getvalue(), "the pending line")
    with cms.requests.claim(RestoreRequest) as claim:
        for request in claim:
            claim.reject(request, "dns_label: 'copy-db' is already requested by another accepted request")
    thread.join(timeout=60)
    assert result["code"] == 2
    assert (
        out.getvalue()
        .splitlines()[-1]
        .endswith("rejected: dns_label: 'copy-db' is already requested by another accepted request")
    )


def test_connect_finds_an_instance_by_the_name_it_was_restored_under(run, cms, local_platform_env):
    """`restore --name copy` makes k8s_name copy-<suffix>: `connect copy` finds it when the name is unambiguous."""
    copy = add_instance(cms, "copy-x1y2z", state=InstanceState.stopped)
    address = "postgresql://postgres@127.0.0.1:5999/postgres"
    cms.instances.transition(copy.id, InstanceState.running, reason="test", ip_connection_string=address)
    code, out, err = run("connect", "copy")
    assert (code, out.strip()) == (0, f"psql '{address}'"), err
    add_instance(cms, "copy-a9b8c")
    code, _, err = run("connect", "copy")
    assert code == 2 and "give one of copy-a9b8c, copy-x1y2z" in err, err


# ---- hostile values on the command line (issue 19) ---------------------------------------------


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["request-backup", "--instance", "db-abc\x00de"], "source_instance"),
        (["request-backup", "--instance", "db-abcde", "--name", "n\x00"], "image_name"),
        (["request-restore", "--image", "x\x00", "--name", "copy", "--dns-label", "copy-db"], "source_image_id"),
        (["images", "--show", "a\x00b"], "show"),
        (["delete-image", "\x00"], "image"),
        (["pin", "x\x00y"], "image"),
        (["retention", "db\x00", "--set", "keep_daily=1"], "instance"),
    ],
)
def test_a_nul_byte_in_any_cli_value_exits_2_naming_the_field(run, cms, db, argv, field):
    code, out, err = run(*argv)
    assert (code, out) == (2, ""), err
    assert err.startswith(f"error: {field}: ") and "NUL" in err, err
    assert cms.requests.list(ImageRequest) == [] and cms.requests.list(RestoreRequest) == []


def test_images_show_with_an_empty_reference_is_refused(run, cms, db):
    add_image(cms, db, "db__one", state=ImageState.ready)
    code, out, err = run("images", "--show", "")
    assert (code, out) == (2, "")
    assert err == "error: image: --show needs an image id or name, not ''\n"


def test_wait_prints_events_in_the_order_they_happened(cms, source, monkeypatch):
    """A request already finished when --wait first looks: run started, the image, then the end."""
    import argparse
    import io

    import psycopg

    from records import RequestState
    from tests.helpers import catalogued_image

    request = image_request(cms, source.k8s_name, "fast")
    cms.requests.transition(ImageRequest, request.id, RequestState.accepted)
    cms.requests.attach_run(request.id, "run-fast-1")
    image = catalogued_image(cms, source, "fast")
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        conn.execute("UPDATE toygres_cms.images SET run_id = 'run-fast-1' WHERE id = %s", (image.id,))
    cms.requests.transition(ImageRequest, request.id, RequestState.succeeded)
    out = io.StringIO()
    args = argparse.Namespace(json=False, wait_timeout=30, poll_seconds=0.1)
    assert follow(args, cms, request, "backup", out) == 0
    lines = [line.split("Z ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [
        "run run-fast-1 started (Dagster UI: Runs)",
        "image fast ready (1 B)",
        f"backup request {request.id} succeeded",
    ], lines


# ---- the CLI's rules are the records' and the domains' --------------------------------------


def test_a_restore_without_an_image_is_refused_with_the_one_rule_every_entry_point_applies(run, cms):
    """The CLI's --image is optional to argparse (so a missing one reads like every other rule): its
    refusal is the domain's, word for word, and so is the request sensor's for a row without one."""
    from records import ValidationFailed
    from records.requests import RestoreRequest
    from toygres_pipelines.restores.config import check_request_fields
    from toygres_pipelines.restores.sensors import check_restore_request

    with pytest.raises(ValidationFailed) as domain:
        check_request_fields(RestoreRequestFields(name="copy", dns_label="copy-db", source_image_id=""))
    code, out, err = run("request-restore", "--name", "copy", "--dns-label", "copy-db")
    assert (code, out, err) == (2, "", f"error: {domain.value}\n")

    row = RestoreRequest.model_validate(
        {
            "id": uuid.uuid4(),
            "state": RequestState.accepted,
            "created_at": datetime.now(UTC),
            "updated_at": datetime.now(UTC),
            "name": "copy",
            "dns_label": "copy-db",
            "source_image_id": None,
        }
    )
    with pytest.raises(ValidationFailed) as sensor:
        check_restore_request(cms, None, row, set())  # refused before the platform is asked anything
    assert str(sensor.value) == str(domain.value)


def test_connect_lists_the_databases_from_the_catalogue_not_a_tenants_decoy(
    run, source, source_dsn, local_platform_env
):
    """The tenant's view named pg_database, ahead of pg_catalog on its search_path, picks no database."""
    import psycopg

    with psycopg.connect(source_dsn("postgres"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA decoy")
        conn.execute("CREATE VIEW decoy.pg_database AS SELECT * FROM pg_catalog.pg_database WHERE datname <> 'pagila'")
        conn.execute("ALTER DATABASE postgres SET search_path = decoy, pg_catalog")
    try:
        code, out, err = run("connect", source.k8s_name)
    finally:
        with psycopg.connect(source_dsn("postgres"), autocommit=True) as conn:
            conn.execute("ALTER DATABASE postgres RESET search_path")
            conn.execute("DROP SCHEMA decoy CASCADE")
    assert code == 0, err
    assert out.strip().endswith("/pagila'"), (out, err)
