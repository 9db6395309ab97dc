"""The CLI's lifecycle commands against a real CMS and Azurite: pin, delete-image, delete-instance,
retention (per-instance override) and retention-plan (the dry run)."""

from __future__ import annotations

import json
import uuid

import dagster as dg
import pytest

from records import ImageRequest, ImageState, InstanceState, RestoreRequest
from records.requests import RestoreRequestFields
from tests.helpers import cli_runner
from tests.test_cli import add_instance
from tests.test_lifecycle import FILES, stored_image
from toygres_pipelines import cli
from toygres_pipelines.images.assets import IMAGE_PARTITIONS

pytestmark = pytest.mark.integration


@pytest.fixture
def run(cms, blob, monkeypatch, capsys, tmp_path):
    """main([...]) in process against the test's CMS, container and a local platform directory."""
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.delenv(cli.KEY_ENV, raising=False)
    monkeypatch.setenv("TOYGRES_BLOB_CONNECTION_STRING", blob.connection_string)
    monkeypatch.setenv("TOYGRES_BLOB_CONTAINER", blob.container)
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_STATE_DIR", str(tmp_path / "platform"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in ("KEEP_NEWEST", "KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY", "MIN_AGE_HOURS", "TIMEZONE"):
        monkeypatch.delenv(f"TOYGRES_RETENTION_{name}", raising=False)

    return cli_runner(capsys)


@pytest.fixture
def source(cms):
    return add_instance(cms, "app-abcde")


def test_pin_and_unpin(run, cms, blob, source):
    image = stored_image(cms, blob, source, "app__one", days_old=3)
    code, out, err = run("pin", image.name)
    assert (code, err) == (0, "") and "pinned" in out
    assert cms.images.get(image.id).pinned
    code, out, err = run("pin", str(image.id), "--off")
    assert (code, err) == (0, "") and "unpinned" in out
    assert not cms.images.get(image.id).pinned


def test_delete_image_refuses_a_pinned_or_in_use_image_and_deletes_otherwise(run, cms, blob, source, tmp_path):
    image = stored_image(cms, blob, source, "app__two", days_old=3)
    run("pin", image.name)
    code, out, err = run("delete-image", image.name)
    assert code == 2 and out == ""
    assert err == "error: image: image 'app__two' is pinned: unpin it first (toygres-pipelines pin app__two --off)\n"
    run("pin", image.name, "--off")
    request = cms.requests.create(
        RestoreRequestFields(name="copy", dns_label="copy-db", source_image_id=image.name, namespace="default")
    )
    code, _, err = run("delete-image", image.name)
    assert code == 2
    assert err == (
        f"error: image: image 'app__two' is in use: it is the source_image_id of pending restore request {request.id}\n"
    )
    assert cms.images.get(image.id).state is ImageState.ready
    assert len(blob.list_names(image.blob_path)) == len(FILES)

    cms.requests.transition(RestoreRequest, request.id, "rejected", reason="test")
    code, out, err = run("delete-image", image.name, "--yes")
    assert (code, err) == (0, "")
    assert cms.images.get(image.id).state is ImageState.deleted
    assert blob.list_names(image.blob_path) == []
    assert "3 blob(s)" in out and "retention" in out  # without DAGSTER_HOME the partition is left to retention


def test_delete_image_removes_the_partition_when_dagster_home_is_set(run, cms, blob, source, tmp_path, monkeypatch):
    image = stored_image(cms, blob, source, "app__three", days_old=3)
    home = tmp_path / "dagster-home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(IMAGE_PARTITIONS, [image.name, "other"])
    code, out, err = run("delete-image", str(image.id), "--yes")
    assert (code, err) == (0, ""), err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(IMAGE_PARTITIONS) == ["other"]
    assert "partition app__three removed" in out


def test_delete_instance_refuses_what_no_restore_created_unless_forced(run, cms, source):
    code, _, err = run("delete-instance", source.k8s_name)
    assert code == 2
    assert err.startswith("error: --force: instance 'app-abcde' was not created by a toygres restore")
    assert cms.instances.get(source.id).state is InstanceState.running
    code, out, err = run("delete-instance", source.k8s_name, "--force", "--yes")
    assert (code, err) == (0, "")
    assert cms.instances.get(source.id).state is InstanceState.deleted
    assert "deleted" in out


@pytest.mark.parametrize("through_request", [True, False], ids=["restore_instance", "restore_to_time"])
def test_delete_instance_deletes_a_point_in_time_restored_instance_without_force(run, cms, through_request):
    """A PITR restore has no source_image_id (a base backup is no image row): its base backup tag
    is what says a toygres restore made it."""
    tags = {"pitr_base_backup": str(uuid.uuid4()), "pitr_source": "app-abcde", "pitr_target": "latest"}
    if through_request:
        tags["request_key"] = f"restore-request:{uuid.uuid4()}"
    instance = cms.instances.create(
        user_name="pitr", k8s_name="pitr-fghij", namespace="default", postgres_version="17", storage_size_gb=1,
        use_load_balancer=True, dns_name="pitr-fghij", image_type="stock", tags=tags, state=InstanceState.running,
    )  # fmt: skip
    code, out, err = run("delete-instance", instance.k8s_name, "--yes")
    assert (code, err) == (0, ""), err
    assert cms.instances.get(instance.id).state is InstanceState.deleted


def test_retention_override_is_stored_checked_and_cleared(run, cms, source):
    code, out, err = run("retention", source.k8s_name, "--set", "keep_daily=14", "--set", "timezone=Europe/Berlin")
    assert (code, err) == (0, "")
    assert cms.instances.get(source.id).retention_override == {"keep_daily": 14, "timezone": "Europe/Berlin"}
    assert "keep_daily" in out and "Europe/Berlin" in out

    code, _, err = run("retention", source.k8s_name, "--set", "keep_daily=-1")
    assert code == 2 and err.startswith("error: keep_daily: '-1': ")
    code, _, err = run("retention", source.k8s_name, "--set", "keep_forever=1")
    assert code == 2 and err.startswith("error: keep_forever: ")
    code, _, err = run("retention", source.k8s_name, "--set", "keep_daily")
    assert code == 2 and "FIELD=VALUE" in err
    assert cms.instances.get(source.id).retention_override == {"keep_daily": 14, "timezone": "Europe/Berlin"}

    code, out, err = run("retention", source.k8s_name, "--json")
    assert json.loads(out)["effective"]["keep_daily"] == 14
    code, _, err = run("retention", source.k8s_name, "--clear")
    assert (code, err) == (0, "")
    assert cms.instances.get(source.id).retention_override is None


def test_retention_plan_previews_and_deletes_nothing(run, cms, blob, source, monkeypatch):
    images = [stored_image(cms, blob, source, f"app__d{n}", days_old=n) for n in range(1, 5)]
    monkeypatch.setenv("TOYGRES_RETENTION_KEEP_NEWEST", "2")
    monkeypatch.setenv("TOYGRES_RETENTION_KEEP_DAILY", "0")
    monkeypatch.setenv("TOYGRES_RETENTION_KEEP_WEEKLY", "0")
    monkeypatch.setenv("TOYGRES_RETENTION_KEEP_MONTHLY", "0")
    code, out, err = run("retention-plan")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "| image | instance | state | age | kept by |"
    assert "| app__d3 | default/app-abcde | ready | 3 d | expired |" in out
    assert "| app__d1 | default/app-abcde | ready | 24 h | newest ready, newest 2 |" in out
    assert all(cms.images.get(i.id).state is ImageState.ready for i in images)
    stray = uuid.uuid4()
    blob.write_bytes(f"images/{stray}/x", b"x")
    code, out, _ = run("retention-plan", "--json")
    printed = json.loads(out)
    assert {d["image_name"] for d in printed["expired"]} == {"app__d3", "app__d4"}
    assert printed["stray_blob_folders"] == [str(stray)]


# ---- a name never stands for another image (issue 19) -----------------------------------------

UUID_SPELLINGS = {
    "canonical": str,
    "upper": lambda s: s.upper(),
    "no dashes": lambda s: s.replace("-", ""),
    "dashes moved": lambda s: s.replace("-", "")[:4] + "-" + s.replace("-", "")[4:],
}


@pytest.mark.parametrize("spelling", UUID_SPELLINGS)
def test_an_image_can_never_be_named_with_an_id(run, cms, blob, source, spelling):
    from records import ValidationFailed

    other = stored_image(cms, blob, source, "app__other", days_old=3)
    name = UUID_SPELLINGS[spelling](str(other.id))
    code, out, err = run("request-backup", "--instance", source.k8s_name, "--name", name)
    assert (code, out) == (2, "")
    assert err == f"error: name: {name!r} reads as an image id (a UUID): an image name must not be one\n"
    assert cms.requests.list(ImageRequest) == []
    with pytest.raises(ValidationFailed, match="name: .* reads as an image id"):
        stored_image(cms, blob, source, name, days_old=1)


def test_delete_image_says_whether_it_matched_an_id_or_a_name_and_refuses_an_ambiguous_reference(
    run, cms, blob, source
):
    import psycopg

    by_id, by_name, victim = (stored_image(cms, blob, source, f"app__{n}", days_old=3) for n in ("a", "b", "c"))
    code, out, err = run("delete-image", str(by_id.id).upper(), "--yes")
    assert (code, err) == (0, "")
    assert f"image app__a ({by_id.id}, matched by id) deleted" in out
    code, out, err = run("delete-image", by_name.name, "--yes")
    assert (code, err) == (0, "")
    assert f"image app__b ({by_name.id}, matched by name) deleted" in out
    # A row named before names were checked, with another image's id as its name.
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.images SET name = %s WHERE id = %s", (str(victim.id), by_name.id))
    decoy = stored_image(cms, blob, source, "app__decoy", days_old=2)
    with psycopg.connect(cms.dsn) as conn:
        conn.execute("UPDATE toygres_cms.images SET name = %s WHERE id = %s", (str(victim.id), decoy.id))
    code, out, err = run("delete-image", str(victim.id))
    assert (code, out) == (2, "")
    assert err == (
        f"error: image: {str(victim.id)!r} is ambiguous: the id of image 'app__c' and the name of image"
        f" {decoy.id} (named before image names were checked); refer to the image by its id\n"
    )
    assert cms.images.get(victim.id).state is ImageState.ready
    assert cms.images.get(decoy.id).state is ImageState.ready


def test_a_malformed_request_row_stops_neither_retention_nor_delete_image_nor_the_cli(
    run, cms, blob, source, resources
):
    import psycopg

    from tests.test_automation import without_the_databases_check
    from tests.test_lifecycle import run_retention_job

    used, free = (stored_image(cms, blob, source, f"app__{n}", days_old=d) for n, d in (("used", 3), ("free", 4)))
    newest = stored_image(cms, blob, source, "app__newest", days_old=1)
    without_the_databases_check(cms)
    bad = uuid.uuid4()
    with psycopg.connect(cms.dsn) as conn:
        conn.execute(
            "INSERT INTO toygres_cms.restore_requests (id, name, dns_label, source_image_id, namespace,"
            " storage_size_gb, databases) VALUES (%s, 'bad', 'bad-db', %s, 'default', 1, ARRAY[NULL]::text[])",
            (bad, used.name.upper().lower()),
        )
    code, out, err = run("requests")
    assert (code, err) == (0, "")
    assert str(bad)[:8] in out or str(bad) in out
    code, out, err = run("requests", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["id"] == str(bad) and row["malformed"].startswith("databases")
    code, out, err = run("retention-plan")
    assert (code, err) == (0, "")
    assert "in use: source_image_id of pending restore request" in out
    # the pending row, malformed or not, still protects the image it names
    code, _, err = run("delete-image", used.name)
    assert code == 2 and "is in use" in err
    code, out, err = run("delete-image", free.name, "--yes")
    assert (code, err) == (0, ""), err
    assert cms.images.get(free.id).state is ImageState.deleted
    dry = run_retention_job(resources, dg.DagsterInstance.ephemeral(), dry_run=True)
    assert dry.success
    assert cms.images.get(used.id).state is ImageState.ready and cms.images.get(newest.id).state is ImageState.ready


def test_a_malformed_request_row_in_flight_never_crashes_request_restore(run, cms, blob, source):
    """request-restore checks the in-flight rows for its DNS label: a malformed one among them
    (no dns_label to compare, read as MalformedRequest) is skipped, not an AttributeError."""
    import psycopg

    from tests.test_automation import without_the_databases_check

    image = stored_image(cms, blob, source, "app__one", days_old=1)
    without_the_databases_check(cms)
    with psycopg.connect(cms.dsn) as conn:
        conn.execute(
            "INSERT INTO toygres_cms.restore_requests (id, name, dns_label, source_image_id, namespace,"
            " storage_size_gb, databases) VALUES (%s, 'bad', 'bad-db', %s, 'default', 1, ARRAY[NULL]::text[])",
            (uuid.uuid4(), image.name),
        )
    code, out, err = run("request-restore", "--name", "copy", "--dns-label", "copy-db", "--image", image.name)
    assert (code, err) == (0, ""), err
    assert "restore request" in out and "pending" in out


# ---- confirmations, idempotent deletes, --set keys (issue 23) ----------------------------------


class Terminal:
    """stdin as a person at a terminal: isatty() and one typed answer."""

    def __init__(self, answer: str):
        self.answer = answer
        self.asked = 0

    def isatty(self) -> bool:
        return True

    def readline(self) -> str:
        self.asked += 1
        return self.answer


def test_delete_image_without_yes_and_without_a_terminal_refuses_with_exit_2(run, cms, blob, source):
    image = stored_image(cms, blob, source, "app__confirm", days_old=3)
    code, out, err = run("delete-image", image.name)  # pytest's stdin is not a terminal
    assert (code, out) == (2, "")
    assert err.startswith("error: --yes: delete-image removes image 'app__confirm'")
    assert "stdin is not a terminal" in err
    assert cms.images.get(image.id).state is ImageState.ready
    assert len(blob.list_names(image.blob_path)) == len(FILES)


def test_delete_image_at_a_terminal_asks_and_deletes_only_on_yes(run, cms, blob, source, monkeypatch):
    image = stored_image(cms, blob, source, "app__ask", days_old=3)
    declined = Terminal("n\n")
    monkeypatch.setattr("sys.stdin", declined)
    code, out, err = run("delete-image", image.name)
    assert declined.asked == 1 and code == 2
    assert "delete image 'app__ask'" in err and "error: --yes: not confirmed: nothing deleted" in err
    assert cms.images.get(image.id).state is ImageState.ready
    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    code, out, err = run("delete-image", image.name)
    assert code == 0 and "deleted" in out
    assert cms.images.get(image.id).state is ImageState.deleted


def test_delete_instance_asks_too(run, cms, source, monkeypatch):
    code, _, err = run("delete-instance", source.k8s_name, "--force")
    assert code == 2 and err.startswith("error: --yes: delete-instance removes instance 'app-abcde'")
    assert cms.instances.get(source.id).state is InstanceState.running
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    code, out, err = run("delete-instance", source.k8s_name, "--force")
    assert code == 0, err
    assert cms.instances.get(source.id).state is InstanceState.deleted


def test_deleting_twice_exits_0_for_an_image_and_for_an_instance(run, cms, blob, source):
    image = stored_image(cms, blob, source, "app__twice", days_old=3)
    assert run("delete-image", image.name, "--yes")[0] == 0
    code, out, err = run("delete-image", image.name)  # nothing left to delete: no confirmation needed
    assert (code, err) == (0, "")
    assert out == f"image app__twice ({image.id}) is already deleted\n"
    assert run("delete-instance", source.k8s_name, "--force", "--yes")[0] == 0
    code, out, err = run("delete-instance", source.k8s_name)
    assert (code, err) == (0, "")
    assert out == "instance app-abcde is already deleted\n"
    code, _, err = run("delete-image", "app__never")
    assert code == 2 and "no image 'app__never'" in err
    code, _, err = run("delete-instance", "never-abcde")
    assert code == 2 and "no instance 'never-abcde'" in err


def test_delete_instance_names_the_cli_flag_not_the_job_field(run, source):
    code, _, err = run("delete-instance", source.k8s_name, "--yes")
    assert code == 2
    assert err.startswith("error: --force: instance 'app-abcde' was not created by a toygres restore")
    assert "pass --force to delete it anyway" in err


def test_retention_set_with_an_unknown_key_lists_the_allowed_keys(run, cms, source):
    from records.retention import RetentionPolicy

    code, out, err = run("retention", source.k8s_name, "--set", "keep_dayly=3")
    assert (code, out) == (2, "")
    assert err.startswith("error: keep_dayly: ")
    assert all(key in err for key in RetentionPolicy.model_fields), err
    assert cms.instances.get(source.id).retention_override is None


def test_request_restore_latest_is_a_point_in_time_restore_to_the_newest_second(run, cms):
    """--latest is --target-time latest: the id is then looked up as a base backup; both at once is refused."""
    unknown = str(uuid.uuid4())
    args = ["request-restore", "--image", unknown, "--name", "again", "--dns-label", "again-x"]
    code, _, err = run(*args, "--latest")
    assert code == 2
    assert err == f"error: source_image_id: no ready base backup {unknown!r} (`pitr-status` lists the windows)\n"
    code, _, err = run(*args, "--latest", "--target-time", "2026-12-04T10:00:00Z")
    assert code == 2
    assert err.startswith("error: target_time: --latest and --target-time '2026-12-04T10:00:00Z' both given")
    assert cms.requests.list(RestoreRequest) == []
