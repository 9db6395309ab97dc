"""The CMS resource against a real PostgreSQL server (one fresh database per test)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import psycopg
import pytest
from pydantic import SecretStr

from records import (
    Image,
    ImageRequest,
    ImageState,
    Instance,
    InstanceState,
    RequestState,
    RestoreRequest,
    ValidationFailed,
)
from records.requests import ImageRequestFields, RestoreRequestFields
from resources.cms import (
    CMSResource,
    EncryptionKeyInvalid,
    ImageNotFound,
    InvalidTransition,
    NameConflict,
    PasswordUnavailable,
    RequestNotFound,
    migrations,
)
from resources.cms.queries import Queries

pytestmark = pytest.mark.integration


def make_instance(cms: CMSResource, name: str = "demo", **overrides) -> Instance:
    values = dict(
        user_name="alice",
        k8s_name=f"{name}-abcde",
        namespace="toygres",
        postgres_version="15",
        storage_size_gb=5,
        use_load_balancer=False,
        dns_name=name,
        image_type="stock",
    )
    values.update(overrides)
    return cms.instances.create(**values)


def make_image(cms: CMSResource, source: Instance, name: str = "snap-1", run_id: str | None = "run-1") -> Image:
    return cms.images.reserve(
        image_id=uuid.uuid4(),
        name=name,
        description="nightly",
        source=source,
        blob_storage_url="http://127.0.0.1:10000/devstoreaccount1",
        blob_container="images",
        blob_path=f"images/{name}",
        run_id=run_id,
    )


def transitions(cms: CMSResource, entity_id) -> list[tuple[str | None, str]]:
    return [(e.from_state, e.to_state) for e in cms.events.of(entity_id)]


# ---- the resource is composed of repositories -------------------------------------------------

REPOSITORIES = ("instances", "images", "events", "requests", "drills", "base_backups", "pitr_drills", "migrations")


def test_the_repositories_are_attributes_of_the_resource_and_none_of_their_methods_is_on_it():
    """No mixin left: a repository's method is reached through its repository only."""
    resource = CMSResource(dsn="postgresql://127.0.0.1:1/none", encryption_key=CMSResource.generate_key())
    plumbing = {m for m in dir(Queries) if not m.startswith("_")}  # connection(), passwords(): the resource's
    for name in REPOSITORIES:
        repository = getattr(resource, name)
        assert isinstance(repository, Queries)
        methods = {m for m in dir(type(repository)) if not m.startswith("_")} - plumbing
        assert methods, f"cms.{name} has no public method"
        leaked = sorted(m for m in methods if hasattr(resource, m))
        assert not leaked, f"cms.{name}'s methods reachable on the resource itself: {leaked}"
    public = {m for m in dir(resource) if not m.startswith("_")} - set(dir(dg.ConfigurableResource))
    assert public <= {*REPOSITORIES, *plumbing, *CMSResource.model_fields, "generate_key"}, sorted(public)


# ---- migrations -------------------------------------------------------------------------------


def test_migrations_are_numbered_and_the_template_is_fully_migrated(cms):
    versions = [m.version for m in migrations()]
    assert versions and versions == sorted(versions)
    assert cms.migrations.applied() == versions
    assert cms.migrations.apply() == []  # nothing left to apply


def test_migrate_is_idempotent(fresh_database, cms_encryption_key):
    cms = CMSResource(dsn=fresh_database, encryption_key=cms_encryption_key)
    assert cms.migrations.applied() == []
    assert cms.migrations.apply() == [m.version for m in migrations()]
    assert cms.migrations.apply() == []
    assert cms.migrations.applied() == [m.version for m in migrations()]
    make_instance(cms)  # the schema works
    assert len(cms.instances.list()) == 1


def test_concurrent_migrations_apply_each_version_once(fresh_database, cms_encryption_key):
    cms = CMSResource(dsn=fresh_database, encryption_key=cms_encryption_key)
    barrier = threading.Barrier(3)

    def run() -> list[str]:
        barrier.wait(timeout=10)
        return cms.migrations.apply()

    with ThreadPoolExecutor(3) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(run) for _ in range(3)]]
    applied = sorted(v for result in results for v in result)
    assert applied == [m.version for m in migrations()]  # each version applied exactly once
    assert sorted(len(r) for r in results)[:2] == [0, 0]


# ---- instances --------------------------------------------------------------------------------


def test_create_and_find_instance(cms):
    instance = make_instance(cms, tags={"team": "db"}, run_id="run-a")
    assert isinstance(instance, Instance)
    assert instance.state is InstanceState.creating
    assert instance.tags == {"team": "db"}
    assert cms.instances.get(instance.id) == instance
    assert cms.instances.get(str(instance.id)) == instance
    assert cms.instances.find(str(instance.id)) == instance
    assert cms.instances.find("demo-abcde") == instance
    assert cms.instances.find("nope") is None
    assert cms.instances.get(uuid.uuid4()) is None
    assert cms.instances.find_by_run("run-a") == instance
    assert cms.instances.find_by_run("run-zzz") is None
    assert transitions(cms, instance.id) == [(None, "creating")]


def test_register_running_instance_with_given_id(cms):
    instance_id = uuid.uuid4()
    instance = make_instance(cms, instance_id=instance_id, state=InstanceState.running)
    assert instance.id == instance_id and instance.state is InstanceState.running
    assert [e.to_state for e in cms.events.of(instance_id)] == ["running"]
    with pytest.raises(NameConflict) as caught:
        make_instance(cms, name="other", instance_id=instance_id)
    assert caught.value.field == "instance_id"


def test_duplicate_k8s_name_is_refused(cms):
    make_instance(cms)
    with pytest.raises(NameConflict) as caught:
        make_instance(cms, dns_name="another")
    assert isinstance(caught.value, ValidationFailed)
    assert caught.value.field == "k8s_name"
    assert "demo-abcde" in str(caught.value)
    assert len(cms.instances.list()) == 1  # no row, no event from the refused insert


def test_dns_name_is_reusable_only_after_the_first_instance_leaves_creating_and_running(cms):
    first = make_instance(cms, name="one", dns_name="shared")
    assert cms.instances.dns_name_in_use("shared")
    with pytest.raises(NameConflict) as caught:
        make_instance(cms, name="two", dns_name="shared")
    assert caught.value.field == "dns_name"
    cms.instances.transition(first.id, InstanceState.running)
    with pytest.raises(NameConflict):
        make_instance(cms, name="two", dns_name="shared")
    cms.instances.transition(first.id, InstanceState.stopped)
    assert not cms.instances.dns_name_in_use("shared")
    second = make_instance(cms, name="two", dns_name="shared")
    # the stopped one cannot come back while the name is taken again
    with pytest.raises(NameConflict) as caught:
        cms.instances.transition(first.id, InstanceState.running)
    assert caught.value.field == "dns_name"
    assert cms.instances.get(first.id).state is InstanceState.stopped
    assert transitions(cms, first.id) == [(None, "creating"), ("creating", "running"), ("running", "stopped")]
    # instances without a DNS name never conflict
    make_instance(cms, name="three", dns_name=None)
    make_instance(cms, name="four", dns_name=None)
    assert second.dns_name == "shared"


def test_instance_transitions_allowed_and_refused(cms):
    instance = make_instance(cms)
    running = cms.instances.transition(
        instance.id,
        "running",
        run_id="run-b",
        ip_connection_string="postgresql://10.0.0.1:5432",
        dns_connection_string="postgresql://demo:5432",
        external_ip="10.0.0.1",
    )
    assert running.state is InstanceState.running
    assert running.external_ip == "10.0.0.1" and running.run_id == "run-b"
    assert running.updated_at >= instance.updated_at

    with pytest.raises(InvalidTransition) as caught:
        cms.instances.transition(instance.id, InstanceState.creating)
    assert "running" in str(caught.value) and "creating" in str(caught.value)
    with pytest.raises(InvalidTransition):  # the row is not in the expected state
        cms.instances.transition(instance.id, InstanceState.stopped, expected=InstanceState.creating)
    with pytest.raises(TypeError):
        cms.instances.transition(instance.id, InstanceState.stopped, k8s_name="sneaky")
    with pytest.raises(InvalidTransition):
        cms.instances.transition(instance.id, "exploded")
    assert cms.instances.get(instance.id).state is InstanceState.running

    cms.instances.transition(instance.id, InstanceState.deleting, run_id="run-del")
    cms.instances.transition(instance.id, InstanceState.deleted)
    with pytest.raises(InvalidTransition) as caught:
        cms.instances.transition(instance.id, InstanceState.running)
    assert "terminal" in str(caught.value)
    assert cms.instances.find_by_run("run-del").id == instance.id
    assert transitions(cms, instance.id) == [
        (None, "creating"),
        ("creating", "running"),
        ("running", "deleting"),
        ("deleting", "deleted"),
    ]
    events = cms.events.of(instance.id)
    assert [e.run_id for e in events] == [None, "run-b", "run-del", "run-del"]
    assert {e.entity_type for e in events} == {"instance"}


def test_failed_instance_records_the_reason(cms):
    instance = make_instance(cms, run_id="run-c")
    failed = cms.instances.transition(instance.id, InstanceState.failed, reason="pod never became ready")
    assert failed.state is InstanceState.failed
    assert failed.error_message == "pod never became ready"
    assert cms.events.of(instance.id)[-1].reason == "pod never became ready"
    assert cms.events.of(instance.id)[-1].run_id == "run-c"
    assert [i.id for i in cms.instances.list([InstanceState.failed])] == [instance.id]
    assert cms.instances.list([InstanceState.running]) == []


def test_transition_of_unknown_instance(cms):
    from resources.cms import InstanceNotFound

    with pytest.raises(InstanceNotFound):
        cms.instances.transition(uuid.uuid4(), InstanceState.running)


def test_racing_transitions_let_exactly_one_win(cms):
    instance = make_instance(cms)
    barrier = threading.Barrier(4)

    def fail() -> str:
        barrier.wait(timeout=10)
        try:
            cms.instances.transition(instance.id, InstanceState.failed, reason="race")
            return "won"
        except InvalidTransition:
            return "refused"

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: fail(), range(4)))
    assert sorted(outcomes) == ["refused", "refused", "refused", "won"]
    assert transitions(cms, instance.id) == [(None, "creating"), ("creating", "failed")]


# ---- images -----------------------------------------------------------------------------------


def test_reserve_image_copies_the_source(cms):
    source = make_instance(cms, state=InstanceState.running, image_type="pg_durable", storage_size_gb=7)
    image = make_image(cms, source)
    assert image.state is ImageState.creating
    assert (image.source_instance_id, image.source_k8s_name, image.source_namespace) == (
        source.id,
        source.k8s_name,
        source.namespace,
    )
    assert (image.storage_size_gb, image.postgres_version, image.image_type) == (7, "15", "pg_durable")
    assert cms.images.get(image.id) == image
    assert cms.images.find(str(image.id)) == image
    assert cms.images.find("snap-1") == image
    assert cms.images.find_by_run("run-1") == image
    assert cms.images.find("nope") is None
    assert transitions(cms, image.id) == [(None, "creating")]


def test_image_name_is_reusable_after_failed_or_deleted(cms):
    source = make_instance(cms, state=InstanceState.running)
    first = make_image(cms, source, run_id="run-1")
    with pytest.raises(NameConflict) as caught:
        make_image(cms, source, run_id="run-2")
    assert caught.value.field == "name" and "snap-1" in str(caught.value)

    cms.images.transition(first.id, ImageState.failed, reason="pg_dump failed")
    second = make_image(cms, source, run_id="run-3")  # a failed image's name can be retried
    assert cms.images.find("snap-1").id == second.id  # the live one wins
    with pytest.raises(NameConflict):
        make_image(cms, source, run_id="run-4")

    cms.images.transition(second.id, ImageState.ready, backup_size_bytes=10, backup_checksum="ab")
    cms.images.transition(second.id, ImageState.deleting)
    assert cms.images.find("snap-1").id == second.id
    cms.images.transition(second.id, ImageState.deleted)
    assert cms.images.find("snap-1").id == second.id  # no live one: the newest
    third = make_image(cms, source, run_id="run-5")
    assert cms.images.find("snap-1").id == third.id
    assert len(cms.images.list()) == 3
    assert [i.id for i in cms.images.list([ImageState.creating])] == [third.id]


def test_image_transitions(cms):
    source = make_instance(cms, state=InstanceState.running)
    image = make_image(cms, source)
    assert image.ready_at is None
    with pytest.raises(InvalidTransition):
        cms.images.transition(image.id, ImageState.deleting)
    with pytest.raises(TypeError):
        cms.images.transition(image.id, ImageState.ready, name="renamed")
    ready = cms.images.transition(
        image.id,
        ImageState.ready,
        backup_size_bytes=123456789012,
        backup_checksum="f" * 64,
    )
    assert ready.state is ImageState.ready and ready.ready_at is not None
    assert ready.backup_size_bytes == 123456789012 and ready.backup_checksum == "f" * 64
    with pytest.raises(InvalidTransition):
        cms.images.transition(image.id, ImageState.failed)
    deleting = cms.images.transition(image.id, ImageState.deleting, run_id="run-retention")
    assert deleting.deleted_at is None
    deleted = cms.images.transition(image.id, ImageState.deleted)
    assert deleted.deleted_at is not None and deleted.run_id == "run-retention"
    assert transitions(cms, image.id) == [
        (None, "creating"),
        ("creating", "ready"),
        ("ready", "deleting"),
        ("deleting", "deleted"),
    ]

    other = make_image(cms, source, name="snap-2", run_id="run-9")
    failed = cms.images.transition(other.id, ImageState.failed, reason="blob store unreachable")
    assert failed.error_message == "blob store unreachable"
    assert cms.events.of(other.id)[-1].reason == "blob store unreachable"
    assert cms.events.of(other.id)[-1].run_id == "run-9"
    assert cms.images.find_by_run("run-9").state is ImageState.failed


def test_password_is_encrypted_at_rest(cms):
    source = make_instance(cms, state=InstanceState.running)
    image = make_image(cms, source)
    with pytest.raises(PasswordUnavailable, match="no stored source password"):
        cms.images.password(image.id)
    secret = "s3cr3t-Pa55word!"
    cms.images.set_password(image.id, SecretStr(secret))
    assert cms.images.password(image.id).get_secret_value() == secret

    with psycopg.connect(cms.dsn) as conn:
        stored = conn.execute(
            "SELECT source_password_encrypted FROM toygres_cms.images WHERE id = %s", (image.id,)
        ).fetchone()[0]
        (everything,) = conn.execute("SELECT row_to_json(i)::text FROM toygres_cms.images i").fetchone()
    assert stored is not None and secret.encode() not in bytes(stored)
    assert secret not in everything
    assert "source_password" not in Image.model_fields  # never comes back with the row

    other_key = CMSResource(dsn=cms.dsn, encryption_key=CMSResource.generate_key())
    with pytest.raises(PasswordUnavailable, match="cannot be decrypted") as caught:
        other_key.images.password(image.id)
    assert secret not in str(caught.value)

    bad_key = CMSResource(dsn=cms.dsn, encryption_key="not-a-key")
    with pytest.raises(EncryptionKeyInvalid, match="TOYGRES_ENCRYPTION_KEY"):
        bad_key.images.set_password(image.id, SecretStr(secret))
    with pytest.raises(ImageNotFound):
        cms.images.set_password(uuid.uuid4(), SecretStr(secret))
    with pytest.raises(ImageNotFound):
        cms.images.password(uuid.uuid4())


def test_refused_changes_leave_no_event(cms):
    source = make_instance(cms, state=InstanceState.running)
    image = make_image(cms, source)
    before = len(cms.events.of(image.id))
    with pytest.raises(InvalidTransition):
        cms.images.transition(image.id, ImageState.deleted)
    assert len(cms.events.of(image.id)) == before
    with psycopg.connect(cms.dsn) as conn:
        (count,) = conn.execute("SELECT count(*) FROM toygres_cms.events").fetchone()
    assert count == 2  # the instance's creation and the image's creation


def test_check_constraints_guard_the_states(cms):
    instance = make_instance(cms)
    with psycopg.connect(cms.dsn) as conn:
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE toygres_cms.instances SET state = 'exploded' WHERE id = %s", (instance.id,))


# ---- requests ---------------------------------------------------------------------------------


def test_image_request_lifecycle(cms):
    request = cms.requests.create(
        ImageRequestFields(image_name="on-demand", source_instance="demo-abcde", description="x")
    )
    assert isinstance(request, ImageRequest) and request.state is RequestState.pending
    assert cms.requests.get(ImageRequest, request.id) == request
    assert cms.requests.list(ImageRequest, [RequestState.pending]) == [request]
    accepted = cms.requests.transition(ImageRequest, request.id, RequestState.accepted, run_id="run-r")
    assert accepted.run_id == "run-r"
    assert cms.requests.find_by_run("run-r") == accepted
    with pytest.raises(InvalidTransition):
        cms.requests.transition(ImageRequest, request.id, RequestState.rejected, reason="too late")
    done = cms.requests.transition(ImageRequest, request.id, RequestState.failed, reason="run failed: boom")
    assert done.reason == "run failed: boom" and done.run_id == "run-r"
    assert transitions(cms, request.id) == [(None, "pending"), ("pending", "accepted"), ("accepted", "failed")]
    assert {e.entity_type for e in cms.events.of(request.id)} == {"image_request"}


def test_restore_request_lifecycle(cms):
    request = cms.requests.create(
        RestoreRequestFields(
            name="copy",
            dns_label="copy",
            source_image_id="snap-1",
            namespace="toygres",
            storage_size_gb=5,
            internal=True,
        )
    )
    assert isinstance(request, RestoreRequest) and request.state is RequestState.pending
    instance = make_instance(cms, name="copy")
    cms.requests.transition(RestoreRequest, request.id, RequestState.accepted, run_id="run-x")
    done = cms.requests.transition(RestoreRequest, request.id, RequestState.succeeded, instance_id=instance.id)
    assert done.instance_id == instance.id and done.state is RequestState.succeeded
    assert cms.requests.find_by_run("run-x") == done
    assert cms.requests.list(RestoreRequest, [RequestState.succeeded]) == [done]
    assert [e.entity_type for e in cms.events.of(request.id)] == ["restore_request"] * 3


def test_attach_request_run(cms):
    request = cms.requests.create(ImageRequestFields(image_name="img", source_instance="demo"))
    cms.requests.transition(ImageRequest, request.id, RequestState.accepted)
    assert cms.requests.attach_run(request.id, "run-late").run_id == "run-late"
    assert cms.requests.find_by_run("run-late").id == request.id
    with pytest.raises(RequestNotFound):
        cms.requests.attach_run(uuid.uuid4(), "run-x")


def test_claim_accepts_and_rejects_in_one_transaction(cms):
    good = cms.requests.create(ImageRequestFields(image_name="good", source_instance="demo"))
    bad = cms.requests.create(ImageRequestFields(image_name="bad name!", source_instance="demo"))
    with cms.requests.claim(ImageRequest) as claim:
        assert [r.id for r in claim] == [good.id, bad.id]
        claim.accept(good, run_id="run-good")
        claim.reject(bad.id, "image_name: 'bad name!' must be letters, digits, '_' or '-'")
        # not committed yet: another connection still sees them pending
        assert {r.state for r in cms.requests.list(ImageRequest)} == {RequestState.pending}
    assert cms.requests.get(ImageRequest, good.id).state is RequestState.accepted
    assert cms.requests.get(ImageRequest, good.id).run_id == "run-good"
    rejected = cms.requests.get(ImageRequest, bad.id)
    assert rejected.state is RequestState.rejected and "bad name" in rejected.reason
    with cms.requests.claim(ImageRequest) as claim:
        assert list(claim) == []


def test_claim_rolls_back_on_error(cms):
    request = cms.requests.create(
        RestoreRequestFields(
            name="r",
            dns_label="r",
            source_image_id=str(uuid.uuid4()),
            namespace="toygres",
            storage_size_gb=1,
            internal=False,
        )
    )
    with pytest.raises(RuntimeError, match="crash"):
        with cms.requests.claim(RestoreRequest) as claim:
            claim.accept(request, run_id="run-lost")
            raise RuntimeError("crash between claim and launch")
    assert cms.requests.get(RestoreRequest, request.id).state is RequestState.pending  # not lost
    with cms.requests.claim(RestoreRequest) as claim:
        assert [r.id for r in claim] == [request.id]
        with pytest.raises(Exception, match="not part of this claim"):
            claim.accept(uuid.uuid4(), run_id="x")


def request_fields(kind: type, i: int) -> ImageRequestFields | RestoreRequestFields:
    if kind is ImageRequest:
        return ImageRequestFields(image_name=f"img-{i}", source_instance="demo")
    return RestoreRequestFields(
        name=f"r{i}", dns_label=f"r{i}", source_image_id="snap", namespace="toygres", storage_size_gb=1, internal=False
    )


@pytest.mark.parametrize("kind", [ImageRequest, RestoreRequest])
def test_two_racing_claims_never_get_the_same_request(cms, kind):
    total = 12
    for i in range(total):
        cms.requests.create(request_fields(kind, i))
    both_inside = threading.Barrier(2)

    def evaluate(worker: int) -> list[uuid.UUID]:
        got: list[uuid.UUID] = []
        first = True
        while True:
            with cms.requests.claim(kind, limit=4) as claim:
                if first:
                    both_inside.wait(timeout=10)  # both transactions hold their locks here
                    first = False
                if not claim:
                    return got
                for request in claim:
                    claim.accept(request, run_id=f"run-{worker}-{request.id}")
                    got.append(request.id)

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(evaluate, [1, 2])
    assert a and b, "both evaluations should have claimed some requests at the same time"
    assert not set(a) & set(b)
    assert len(a) + len(b) == total
    listed = cms.requests.list(kind)
    assert {r.state for r in listed} == {RequestState.accepted}
    for request in listed:
        events = cms.events.of(request.id)
        assert [e.to_state for e in events] == ["pending", "accepted"]


def test_a_request_method_is_told_its_kind_and_keeps_the_kinds_apart(cms):
    image_request = cms.requests.create(request_fields(ImageRequest, 1))
    restore_request = cms.requests.create(request_fields(RestoreRequest, 1))
    assert isinstance(image_request, ImageRequest) and isinstance(restore_request, RestoreRequest)
    assert cms.requests.list(ImageRequest) == [image_request]
    assert cms.requests.list(RestoreRequest) == [restore_request]
    assert cms.requests.get(RestoreRequest, image_request.id) is None
    with pytest.raises(RequestNotFound):
        cms.requests.transition(RestoreRequest, image_request.id, RequestState.accepted)
    with pytest.raises(TypeError, match="ImageRequest or RestoreRequest"):
        cms.requests.list(Image)
    with pytest.raises(TypeError):  # an image request has no instance to record
        cms.requests.transition(ImageRequest, image_request.id, RequestState.accepted, instance_id=uuid.uuid4())
    assert cms.requests.get(ImageRequest, image_request.id).state is RequestState.pending
    assert cms.requests.find_by_run("nobody") is None


def test_usable_as_a_dagster_resource_from_env_vars(cms, monkeypatch):
    import dagster as dg

    monkeypatch.setenv("TOYGRES_CMS_DSN", cms.dsn)
    monkeypatch.setenv("TOYGRES_ENCRYPTION_KEY", cms.encryption_key)

    @dg.asset
    def count_instances(cms: CMSResource) -> int:
        make_instance(cms)
        return len(cms.instances.list([InstanceState.creating]))

    result = dg.materialize(
        [count_instances],
        resources={
            "cms": CMSResource(dsn=dg.EnvVar("TOYGRES_CMS_DSN"), encryption_key=dg.EnvVar("TOYGRES_ENCRYPTION_KEY"))
        },
    )
    assert result.success
    assert result.output_for_node("count_instances") == 1


@pytest.mark.parametrize("field", ["dns_name", "k8s_name", "namespace"])
def test_a_name_with_a_trailing_newline_never_becomes_an_instance_row(cms, field):
    make_instance(cms, "shared", state=InstanceState.running)
    bad = {"dns_name": "shared\n", "k8s_name": "shared-abcde\n", "namespace": "toygres\n"}[field]
    with pytest.raises(ValidationFailed, match=f"^{field}: "):
        make_instance(cms, "shared2", **{field: bad})
    assert [i.dns_name for i in cms.instances.list()] == ["shared"]


def test_an_image_name_with_a_trailing_newline_is_never_reserved(cms):
    source = make_instance(cms, "src", state=InstanceState.running)
    with pytest.raises(ValidationFailed, match="^name: "):
        cms.images.reserve(
            image_id=None,
            name="src__nl\n",
            description=None,
            source=source,
            blob_storage_url="http://blob",
            blob_container="images",
            blob_path="images/x",
            run_id=None,
        )
    assert cms.images.list() == []


# ---- request rows every reader can trust (issue 19) --------------------------------------------

SPELLINGS = {
    "upper": str.upper,
    "braces": lambda s: "{" + s + "}",
    "urn": lambda s: "urn:uuid:" + s,
    "no dashes": lambda s: s.replace("-", ""),
}
MALFORMED_DATABASES = {"null element": "ARRAY[NULL]::text[]", "2-D": "ARRAY[ARRAY['a','b'],ARRAY['c','d']]"}


def insert_restore_request(
    conn, source_image_id: str, databases_sql: str = "NULL", state: str = "pending"
) -> uuid.UUID:
    request_id = uuid.uuid4()
    conn.execute(
        "INSERT INTO toygres_cms.restore_requests (id, name, dns_label, source_image_id, namespace, storage_size_gb,"
        f" state, databases) VALUES (%s, 'copy', 'copy-db', %s, 'default', 1, %s, {databases_sql})",
        (request_id, source_image_id, state),
    )
    return request_id


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_every_reader_sees_a_requests_image_id_in_one_spelling(cms, spelling):
    image = make_image(cms, make_instance(cms))
    spelled = SPELLINGS[spelling](str(image.id))
    queued = cms.requests.create(
        RestoreRequestFields(name="copy", dns_label="copy-db", source_image_id=spelled, namespace="default")
    )
    with psycopg.connect(cms.dsn) as conn:
        raw = insert_restore_request(conn, spelled)
    assert cms.requests.get(RestoreRequest, queued.id).source_image_id == str(image.id)
    assert cms.requests.get(RestoreRequest, raw).source_image_id == str(image.id)
    # a name stays a name
    named = cms.requests.create(
        RestoreRequestFields(name="copy", dns_label="copy-db", source_image_id="snap-1", namespace="default")
    )
    assert cms.requests.get(RestoreRequest, named.id).source_image_id == "snap-1"


@pytest.mark.parametrize("malformed", MALFORMED_DATABASES)
def test_the_cms_refuses_a_malformed_databases_value(cms, malformed):
    with psycopg.connect(cms.dsn) as conn, pytest.raises(psycopg.errors.CheckViolation, match="databases"):
        insert_restore_request(conn, "snap-1", MALFORMED_DATABASES[malformed])


def test_the_request_migration_rewrites_rows_already_stored(fresh_database, cms_encryption_key, monkeypatch):
    from resources.cms import schema

    everything = migrations()
    [ours] = [m.version for m in everything if m.name == "request_rows"]
    monkeypatch.setattr(schema, "migrations", lambda: [m for m in everything if m.version < ours])
    cms = CMSResource(dsn=fresh_database, encryption_key=cms_encryption_key)
    cms.migrations.apply()
    image = make_image(cms, make_instance(cms))
    with psycopg.connect(cms.dsn) as conn:
        spelled = insert_restore_request(conn, "{" + str(image.id).upper() + "}")
        bad_pending = insert_restore_request(conn, "snap-1", MALFORMED_DATABASES["null element"])
        bad_accepted = insert_restore_request(conn, "snap-1", MALFORMED_DATABASES["2-D"], state="accepted")
        bad_done = insert_restore_request(conn, "snap-1", MALFORMED_DATABASES["2-D"], state="succeeded")
    monkeypatch.setattr(schema, "migrations", lambda: everything)
    assert cms.migrations.apply() == [m.version for m in everything if m.version >= ours]
    assert cms.requests.get(RestoreRequest, spelled).source_image_id == str(image.id)
    pending, accepted, done = (cms.requests.get(RestoreRequest, r) for r in (bad_pending, bad_accepted, bad_done))
    assert (pending.state, accepted.state, done.state) == (
        RequestState.rejected,
        RequestState.failed,
        RequestState.succeeded,
    )
    for row in (pending, accepted, done):
        assert row.databases is None
        assert "databases: the stored value" in row.reason and "is not a list of database names" in row.reason
    assert "{NULL}" in pending.reason
    assert transitions(cms, bad_pending)[-1] == ("pending", "rejected")
