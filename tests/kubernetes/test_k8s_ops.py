"""The real Dagster backup asset and restore job, on KubernetesPlatform, against the Kubernetes API
stand-in (kmock over HTTP), with the real CMS and Azurite: objects in order, Job status, pod logs
in the run log, cleanup on failure."""

from __future__ import annotations

import hashlib
import json
import types
import uuid
from datetime import UTC, datetime

import dagster as dg
import pytest
from k8s_fake_cluster import FakeJobController, PodScript, running_cluster
from pydantic import SecretStr

from records import BackupFile, BackupManifest, ImageState, ImageType, InstanceRef, InstanceState
from resources.platform.kubernetes import KubernetesPlatform
from tests.helpers import failure_text, materialize_image, run_logs
from toygres_pipelines.images import backup
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.restores.jobs import restore_form_run_config, restore_instance

pytestmark = [pytest.mark.kubernetes, pytest.mark.integration, pytest.mark.timeout(120)]

NS = "toygres-instances"
JOB_IMAGES = {v: f"registry.example/toygres-job:{v}-20261126@sha256:{'ab' * 32}" for v in ("15", "16", "17")}
SOURCE = InstanceRef(k8s_name="orders-ab12c", namespace=NS)


@pytest.fixture
def cluster(tmp_path):
    with running_cluster(tmp_path) as running:
        yield running


def make_k8s(cluster, **over) -> KubernetesPlatform:
    return KubernetesPlatform(
        **{
            "namespace": NS,
            "kubeconfig_path": str(cluster.kubeconfig),
            "poll_interval_seconds": 0.05,
            "log_drain_seconds": 3,
            "deadline_grace_seconds": 0,
            "pod_pending_timeout_seconds": 10,
            "backoff_limit": 1,
            "job_images": JOB_IMAGES,
            "pg_durable_images": {"16": f"acr.example/pg_durable:16-20261126@sha256:{'ef' * 32}"},  # the source's
            "allow_public_without_source_ranges": True,  # refused by default: test_k8s_first_run.py
            **over,
        }
    )


@pytest.fixture
def k8s(cluster) -> KubernetesPlatform:
    return make_k8s(cluster)


def running_source(cms):
    instance = cms.instances.create(
        user_name="orders",
        k8s_name=SOURCE.k8s_name,
        namespace=NS,
        postgres_version="16",
        storage_size_gb=4,
        use_load_balancer=True,
        dns_name="orders",
        image_type=ImageType.pg_durable,
    )
    return cms.instances.transition(instance.id, InstanceState.running, reason="test")


def restore_orders_copy(cms, blob, platform, instance: dg.DagsterInstance, **config):
    """restore_instance into "orders-copy" on `platform`, not raising on failure."""
    return restore_instance.execute_in_process(
        run_config=restore_form_run_config(
            RestoreConfig.model_construct(name="orders-copy", dns_label="orders-copy", **config)
        ),
        resources={"cms": cms, "blob": blob, "platform": platform},
        raise_on_error=False,
        instance=instance,
    )


def test_backup_asset_runs_a_job_and_fails_the_image_whose_blobs_do_not_verify(cms, blob, cluster, k8s, monkeypatch):
    """The Job reports success but nothing reached blob storage: the image must not be ready."""
    source = running_source(cms)
    k8s.ensure_instance_secret(SOURCE, SecretStr("source-password"))
    image_id = uuid.UUID("11111111-2222-3333-4444-555555555555")
    monkeypatch.setattr(backup, "uuid", types.SimpleNamespace(uuid4=lambda: image_id, UUID=uuid.UUID))

    job_name = f"backup-{image_id}"
    attempts = [PodScript(log="backup: uploaded globals.sql\nbackup: backup complete\n")]
    controller = FakeJobController(cluster, NS, job_name, attempts).start()
    dagster = dg.DagsterInstance.ephemeral()
    try:
        result = materialize_image(
            {"cms": cms, "blob": blob, "platform": k8s},
            f"{SOURCE.k8s_name}__nightly",
            raise_on_error=False,
            instance=dagster,
        )
    finally:
        controller.stop()

    assert not result.success
    image = cms.images.get(image_id)
    assert image.state is ImageState.failed
    assert image.error_message == f"manifest.json: missing from blob storage under images/{image_id}"
    assert (image.postgres_version, image.image_type, image.source_instance_id) == (
        "16",
        ImageType.pg_durable,
        source.id,
    )
    creations = [(plural, name) for plural, name in cluster.creations() if plural != "pods"]  # pods: the fake kubelet
    assert [plural for plural, _ in creations] == ["secrets", "configmaps", "secrets", "jobs"]
    assert creations[2:] == [("secrets", f"{job_name}-sas"), ("jobs", job_name)]
    assert "backup: backup complete" in run_logs(dagster, result.run_id)  # the pod log reached the run
    assert cluster.get("jobs", NS, job_name) is None and cluster.get("secrets", NS, f"{job_name}-sas") is None


def ready_image(cms, blob):
    """A ready image whose manifest in blob storage matches the CMS checksum."""
    source = running_source(cms)
    image_id = uuid.uuid4()
    image = cms.images.reserve(
        image_id=image_id,
        name="orders__nightly",
        description=None,
        source=source,
        blob_storage_url=blob.storage_url,
        blob_container=blob.container,
        blob_path=f"images/{image_id}",
        run_id="r",
    )
    cms.images.set_password(image.id, SecretStr("pa\"ss\\wo'rd"))
    now = datetime.now(UTC)
    manifest = BackupManifest(
        format_version=1,
        image_name=image.name,
        source_instance=SOURCE.k8s_name,
        source_namespace=NS,
        postgres_version="16",
        server_version_num=160004,
        dump_format="custom",
        started_at=now,
        finished_at=now,
        tools={},
        files=[
            BackupFile(path="globals.sql", kind="globals", size_bytes=1, sha256="ab" * 32),
            BackupFile(path="databases/001.dump", kind="database", database="orders", size_bytes=1, sha256="cd" * 32),
        ],
    )
    raw = manifest.model_dump_json().encode()
    blob.write_bytes(f"{image.blob_path}/manifest.json", raw)
    return cms.images.transition(
        image.id, ImageState.ready, reason="test", backup_size_bytes=2, backup_checksum=hashlib.sha256(raw).hexdigest()
    )


def test_restore_job_creates_objects_in_order_and_cleans_up_after_a_failed_job(cms, blob, cluster, k8s, monkeypatch):
    image = ready_image(cms, blob)
    monkeypatch.setattr("toygres_pipelines.restores.config.new_k8s_name", lambda name: f"{name}-x9y8z")
    target = "orders-copy-x9y8z"
    attempts = [PodScript(log="restore: downloading manifest.json\nERROR: checksum mismatch\n", exit_code=3)] * 2
    controller = FakeJobController(cluster, NS, f"restore-{target}", attempts, backoff_gap_seconds=0.05).start()
    dagster = dg.DagsterInstance.ephemeral()
    try:
        # no namespace: the platform's own
        result = restore_orders_copy(cms, blob, k8s, dagster, source_image_id=image.name, storage_size_gb=1)
    finally:
        controller.stop()

    assert not result.success and "checksum mismatch" in failure_text(result)
    assert [
        (plural, name)
        for plural, name in cluster.creations()
        if plural != "pods" and not name.startswith("toygres-job-scripts")
    ] == [
        ("secrets", f"{target}-secret"),
        ("persistentvolumeclaims", f"{target}-data"),
        ("secrets", f"restore-{target}-sas"),
        ("jobs", f"restore-{target}"),
    ]
    assert {r.namespace for r in cluster.requests() if r.resource is not None and r.resource.plural != "pods"} == {NS}
    job_env = {e["name"]: e for e in controller_job_env(cluster)}
    assert "PGPASSWORD" not in job_env  # the fetch role holds no password; the serve role only its verifier
    assert job_env["POSTGRES_VERSION"]["value"] == "16"  # from the image, not the request
    assert "ERROR: checksum mismatch" in run_logs(dagster, result.run_id)

    [instance] = [i for i in cms.instances.list() if i.k8s_name == target]
    assert instance.state is InstanceState.failed
    assert (
        "step run_restore_job failed" in instance.error_message and "PodFailurePolicy" in instance.error_message
    )  # exit 3: no retry
    for plural, name in [
        ("secrets", f"{target}-secret"),
        ("persistentvolumeclaims", f"{target}-data"),
        ("jobs", f"restore-{target}"),
        ("secrets", f"restore-{target}-sas"),
        ("statefulsets", target),
    ]:
        assert cluster.get(plural, NS, name) is None, (plural, name)
    assert not cms.instances.dns_name_in_use("orders-copy")


def controller_job_env(cluster) -> list[dict]:
    job_posts = [
        r
        for r in cluster.requests()
        if r.resource is not None and r.resource.plural == "jobs" and r.method.value == "POST"
    ]
    return job_posts[-1].data["spec"]["template"]["spec"]["containers"][0]["env"]


@pytest.mark.parametrize(
    ("config", "platform_over", "message"),
    [
        ({"namespace": "default"}, {}, "namespace: 'default' is not enabled"),
        ({}, {"job_images": {"17": JOB_IMAGES["17"]}}, "source_image_id: image 'orders__nightly' is PostgreSQL 16"),
    ],
    ids=["namespace-not-enabled", "no-job-image-for-the-major"],
)
def test_a_restore_the_deployment_cannot_run_fails_before_anything_is_created(
    cms, blob, cluster, config, platform_over, message
):
    image = ready_image(cms, blob)
    platform = make_k8s(cluster, **platform_over)
    result = restore_orders_copy(
        cms, blob, platform, dg.DagsterInstance.ephemeral(), source_image_id=image.name, **config
    )
    assert not result.success and message in failure_text(result), failure_text(result)
    assert cluster.creations() == []
    assert [i.k8s_name for i in cms.instances.list()] == [SOURCE.k8s_name]


def test_janitor_removes_jobs_and_sas_secrets_past_their_timeout_by_label(cms, cluster, k8s):
    from datetime import timedelta

    from resources.platform import k8s_manifests as m
    from resources.platform.base import JobKind, JobSpec
    from toygres_pipelines.images.janitor import remove_stale_jobs

    def put(name: str, age: timedelta, job: bool = True, timeout: int = 600) -> None:
        spec = JobSpec(
            kind=JobKind.backup,
            name=name,
            script="backup.sh",
            instance=SOURCE,
            timeout_seconds=timeout,
            env={"POSTGRES_VERSION": "16"},
        )
        created = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        secret = m.job_secret(spec, "sv=1&sig=secret")
        secret["metadata"]["creationTimestamp"] = created
        cluster.put_object("secrets", NS, secret)
        if job:
            body = m.job(spec, k8s.settings(), "toygres-job-scripts")
            body["metadata"]["creationTimestamp"] = created
            cluster.put_object("jobs", NS, body)

    put("backup-stale", timedelta(seconds=600 + 3600 + 60))  # past its deadline and the grace
    put("backup-running", timedelta(seconds=600 + 60))  # past its deadline, within the grace
    put("backup-orphan", timedelta(seconds=3600 + 60), job=False)  # its run died before creating the Job
    put("backup-starting", timedelta(seconds=5), job=False)  # its Job is about to be created
    cluster.put_object(
        "secrets",
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "someone-elses", "namespace": NS, "creationTimestamp": "2020-01-01T00:00:00Z"},
            "data": {},
        },
    )

    removed = remove_stale_jobs(k8s, namespaces={NS}, grace_seconds=3600, log=print)

    assert sorted(removed) == [f"{NS}/backup-orphan-sas", f"{NS}/backup-stale"]
    assert cluster.get("jobs", NS, "backup-stale") is None and cluster.get("secrets", NS, "backup-stale-sas") is None
    assert cluster.get("secrets", NS, "backup-orphan-sas") is None
    assert (
        cluster.get("jobs", NS, "backup-running") is not None
        and cluster.get("secrets", NS, "backup-running-sas") is not None
    )
    assert cluster.get("secrets", NS, "backup-starting-sas") is not None
    assert cluster.get("secrets", NS, "someone-elses") is not None


def add_source(cms, k8s_name: str, namespace: str, postgres_version: str):
    return cms.instances.create(
        user_name=k8s_name,
        k8s_name=k8s_name,
        namespace=namespace,
        postgres_version=postgres_version,
        storage_size_gb=1,
        use_load_balancer=False,
        dns_name=None,
        image_type=ImageType.stock,
        state=InstanceState.running,
    )


@pytest.mark.parametrize(
    ("namespace", "version", "message"),
    [
        (NS, "18", "source_instance: instance 'pg18-src' is PostgreSQL 18 and this deployment has no job image"),
        ("default", "16", "source_instance: instance 'pg18-src' is in namespace 'default', which this deployment"),
    ],
    ids=["no-job-image-for-the-major", "namespace-not-enabled"],
)
def test_a_backup_the_deployment_cannot_run_is_refused_before_any_row(cms, blob, cluster, namespace, version, message):
    """The asset, the request sensor and the CLI share one backup-source rule; the nightly schedule skips such
    a source and says why. No image row (with its encrypted password) is written, no object created."""
    from records.requests import ImageRequestFields
    from toygres_pipelines.images.schedules import nightly_run_requests
    from toygres_pipelines.images.sensors import evaluate_image_requests

    k8s = make_k8s(cluster)
    add_source(cms, "pg18-src", namespace, version)
    result = materialize_image({"cms": cms, "blob": blob, "platform": k8s}, "pg18-src__manual", raise_on_error=False)
    assert not result.success and message in failure_text(result), failure_text(result)
    assert cms.images.list() == [] and cluster.creations() == []

    request = cms.requests.create(ImageRequestFields(image_name="pg18-src__req", source_instance="pg18-src"))
    done = evaluate_image_requests(dg.DagsterInstance.ephemeral(), cms, k8s)
    assert done.run_requests == [] and message in done.rejected[str(request.id)]

    skipped: list[str] = []
    assert nightly_run_requests(dg.DagsterInstance.ephemeral(), cms, k8s, None, "UTC", log=skipped.append) == []
    assert any(message in line for line in skipped), skipped


def test_connect_reads_the_password_from_the_kubernetes_secret(cms, k8s, monkeypatch, capsys):
    from urllib.parse import unquote, urlsplit

    from toygres_pipelines import cli
    from toygres_pipelines.cli import instances as cli_instances

    password = "k8s'pw:@/%?#"
    source = running_source(cms)
    source = cms.instances.transition(source.id, InstanceState.stopped, reason="test")
    cms.instances.transition(
        source.id,
        InstanceState.running,
        reason="test",
        ip_connection_string="postgresql://postgres@20.1.2.3:5432/postgres?sslmode=require",
    )
    k8s.ensure_instance_secret(SOURCE, SecretStr(password))
    monkeypatch.setenv(cli.DSN_ENV, cms.dsn)
    monkeypatch.setattr(cli_instances, "platform_from_env", lambda: k8s)  # TOYGRES_PLATFORM=kubernetes, built from env

    assert cli.main(["connect", SOURCE.k8s_name, "--show-password", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    uri = urlsplit(printed["uri"])
    assert unquote(uri.password) == password and uri.hostname == "20.1.2.3" and uri.query == "sslmode=require"
    assert cli.main(["connect", SOURCE.k8s_name]) == 0
    assert password not in capsys.readouterr().out


PG_DURABLE_17 = f"acr.example/pg_durable:17-20261126@sha256:{'cd' * 32}"


def test_an_upgrade_restore_runs_the_target_majors_job_image_and_server(cms, blob, cluster, monkeypatch):
    """A pg_durable image of PostgreSQL 16 restored into 17, one database named: the restore Job runs
    the 17 job image and is told which database, the StatefulSet runs pg_durable 17, the CMS keeps both majors."""
    image = ready_image(cms, blob)
    k8s = make_k8s(cluster, pg_durable_images={"16": "acr.example/pg_durable:16-20261126-x1", "17": PG_DURABLE_17})
    monkeypatch.setattr("toygres_pipelines.restores.config.new_k8s_name", lambda name: f"{name}-x9y8z")
    target = "orders-copy-x9y8z"
    attempts = [PodScript(log="restore: restore complete\n", exit_code=0)]
    controller = FakeJobController(cluster, NS, f"restore-{target}", attempts, backoff_gap_seconds=0.05).start()
    try:
        restore_orders_copy(
            cms,
            blob,
            k8s,
            dg.DagsterInstance.ephemeral(),
            source_image_id=image.name,
            postgres_version="17",
            databases=["orders"],
            ready_timeout_seconds=5,  # no kubelet runs the server: the run ends there
        )
    finally:
        controller.stop()

    posted = {
        r.resource.plural: r.data
        for r in cluster.requests()
        if r.resource is not None and r.method.value == "POST" and r.resource.plural in ("jobs", "statefulsets")
    }
    job = posted["jobs"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in job["env"]}
    assert job["image"] == JOB_IMAGES["17"] and env["POSTGRES_VERSION"] == "17"
    assert json.loads(env["RESTORE_DATABASES"]) == ["orders"]
    assert [line.split()[1] for line in env["BACKUP_SHA256SUMS"].splitlines()] == ["globals.sql", "databases/001.dump"]
    assert posted["statefulsets"]["spec"]["template"]["spec"]["containers"][0]["image"] == PG_DURABLE_17
    [instance] = [i for i in cms.instances.list() if i.k8s_name == target]
    assert (instance.postgres_version, instance.source_postgres_version) == ("17", "16")


@pytest.mark.parametrize(
    ("platform_over", "message"),
    [
        (
            {"job_images": {"16": JOB_IMAGES["16"]}, "pg_durable_images": {"17": PG_DURABLE_17}},
            "postgres_version: the target of image 'orders__nightly' is PostgreSQL 17 and this deployment has no job "
            "image for it (TOYGRES_K8S_JOB_IMAGES has: 16)",
        ),
        (
            {"pg_durable_images": {"16": "acr.example/pg_durable:16-20261126-x1"}},
            "postgres_version: the target of image 'orders__nightly' is PostgreSQL 17 and this deployment has no "
            "pg_durable server image for it (configured: 16)",
        ),
    ],
    ids=["no-job-image", "no-server-image"],
)
def test_a_restore_into_a_major_the_deployment_cannot_run_is_refused_before_anything_is_created(
    cms, blob, cluster, platform_over, message
):
    image = ready_image(cms, blob)
    platform = make_k8s(cluster, **platform_over)
    result = restore_orders_copy(
        cms, blob, platform, dg.DagsterInstance.ephemeral(), source_image_id=image.name, postgres_version="17"
    )
    assert not result.success and message in failure_text(result), failure_text(result)
    assert cluster.creations() == []
    assert [i.k8s_name for i in cms.instances.list()] == [SOURCE.k8s_name]
