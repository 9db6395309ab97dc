"""KubernetesPlatform against a Kubernetes API stand-in (kmock) over real HTTP, with the official
client configured from a kubeconfig file. The Job controller and kubelet are played by
`FakeJobController` through the same API (see k8s_fake_cluster.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager

import kubernetes
import pytest
from k8s_fake_cluster import FakeCluster, FakeJobController, PodScript, api_client, pod_names, running_cluster
from pydantic import SecretStr

from records import ImageType, InstanceRef
from resources.platform import k8s_manifests as m
from resources.platform.base import DeploySpec, JobFailed, JobKind, JobSpec, PlatformError, job_script_files
from resources.platform.kubernetes import KubernetesPlatform

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

NS = "toygres"
SOURCE = InstanceRef(k8s_name="orders-ab12c", namespace=NS)
TARGET = InstanceRef(k8s_name="orders-copy-x9y8z", namespace=NS)
PASSWORD = "pa\"ss\\wo'rd\n{{ .Values }} $(id)"
# A job's blob grant (resources/blob_sas.py); TOKEN is the URL query azcopy gets for manifest.json
QUERY = "st=2030-01-01T00%3A00%3A00Z&se=2030-01-01T02%3A00%3A00Z&sp=r&sv=2026-10-06&sr=b"
SIGNATURE = "S3cr3tSig%2B%2F%3D"
SAS = f'{{"format":1,"query":"{QUERY}","signatures":{{"manifest.json":"{SIGNATURE}"}}}}'
TOKEN = f"{QUERY}&sig={SIGNATURE}"


@pytest.fixture
def cluster(tmp_path) -> Iterator[FakeCluster]:
    with running_cluster(tmp_path) as running:
        yield running


@pytest.fixture
def platform(cluster) -> KubernetesPlatform:
    return KubernetesPlatform(
        namespace=NS,
        kubeconfig_path=str(cluster.kubeconfig),
        poll_interval_seconds=0.05,
        log_drain_seconds=3,
        deadline_grace_seconds=0,
        pod_pending_timeout_seconds=5,
        backoff_limit=2,
        azure_region="westeurope",
        job_images={v: f"registry.example/toygres-job@sha256:{'ab' * 32}" for v in ("16", "17")},
        allow_public_without_source_ranges=True,  # the refusal has its own tests (test_k8s_first_run.py)
    )


@contextmanager
def job_controller(cluster: FakeCluster, name: str, attempts: list[PodScript], **kwargs) -> Iterator[FakeJobController]:
    controller = FakeJobController(cluster, NS, name, attempts, **kwargs).start()
    try:
        yield controller
    finally:
        controller.stop()


def backup_spec(**over) -> JobSpec:
    return JobSpec(
        kind=JobKind.backup,
        name=over.pop("name", "backup-nightly-1"),
        script="backup.sh",
        instance=SOURCE,
        env={
            "BLOB_URL": "https://acct.blob.core.windows.net/images/nightly",
            "IMAGE_NAME": "nightly",
            "SOURCE_INSTANCE": SOURCE.k8s_name,
            "SOURCE_NAMESPACE": NS,
            "POSTGRES_VERSION": "17",
        },
        labels={"toygres/image": "nightly"},
        timeout_seconds=over.pop("timeout_seconds", 30),
        blob_sas=over.pop("blob_sas", SecretStr(SAS)),
        **over,
    )


def restore_spec(**over) -> JobSpec:
    return JobSpec(
        kind=JobKind.restore,
        name=over.pop("name", "restore-orders-copy-x9y8z"),
        script="restore.sh",
        instance=TARGET,
        env={
            "BLOB_URL": "https://acct.blob.core.windows.net/images/nightly",
            "MANIFEST_SHA256": "ab" * 32,
            "BACKUP_SHA256SUMS": f"{'cd' * 32}  globals.sql",
            "POSTGRES_VERSION": "17",
        },
        labels={"toygres/image": "nightly"},
        timeout_seconds=over.pop("timeout_seconds", 30),
        blob_sas=over.pop("blob_sas", SecretStr(SAS)),
        **over,
    )


def job_env(cluster: FakeCluster, name: str) -> dict[str, dict]:
    job = cluster.get("jobs", NS, name)
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def all_request_text(cluster: FakeCluster) -> str:
    return "\n".join(r.text or "" for r in cluster.requests())


# --- jobs ------------------------------------------------------------------------------------


def test_backup_job_success_streams_the_pod_log(cluster, platform):
    lines: list[str] = []
    with job_controller(cluster, "backup-nightly-1", [PodScript(log="dumping orders\nbackup complete\n")]) as ctl:
        result = platform.run_job(backup_spec(), lines.append)

    assert result.succeeded and result.name == "backup-nightly-1"
    assert "dumping orders" in lines and "backup complete" in lines
    assert result.log_tail[-1] == "backup complete"
    assert ctl.events[-1] == "job Complete"
    # Objects created in order: the scripts ConfigMap, the job's grant Secret, then the Job.
    assert [plural for plural, _ in cluster.creations() if plural != "pods"] == ["configmaps", "secrets", "jobs"]
    env = job_env(cluster, "backup-nightly-1")
    assert env["PGHOST"]["value"] == f"{SOURCE.k8s_name}.{NS}.svc.cluster.local"
    assert env["PGPASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{SOURCE.k8s_name}-secret", "key": "password"}
    assert "AZCOPY_AUTO_LOGIN_TYPE" not in env and env["AZCOPY_SAS_FILE"]["value"] == "/var/run/toygres/blob/sas"
    pod = cluster.get("jobs", NS, "backup-nightly-1")["spec"]["template"]
    assert "azure.workload.identity/use" not in pod["metadata"]["labels"], "a backup pod needs no workload identity"
    # Every wait went through the Job's status subresource (dagster-k8s get_job_status).
    assert ("GET", "jobs", "backup-nightly-1", "status") in cluster.calls()


def test_the_jobs_scripts_in_the_cluster_are_byte_identical_to_the_local_ones(cluster, platform):
    with job_controller(cluster, "backup-nightly-1", [PodScript(log="ok\n")]):
        platform.run_job(backup_spec(), lambda line: None)
    job = cluster.get("jobs", NS, "backup-nightly-1")
    volume = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "scripts")
    stored = cluster.get("configmaps", NS, volume["configMap"]["name"])
    local = {p.name: p.read_bytes() for p in job_script_files()}
    assert m.config_map_files(stored) == local
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["bash", "/scripts/backup.sh"]


def test_restore_with_sas_uses_a_per_job_secret_and_never_shows_it(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))  # its verifier goes to the serve container
    lines: list[str] = []
    spec = restore_spec(blob_sas=SecretStr(SAS))
    log = f"downloading https://acct.blob.core.windows.net/images/nightly/manifest.json?{TOKEN}\nrestore complete\n"
    with job_controller(cluster, spec.name, [PodScript(log=log)]):
        platform.run_job(spec, lines.append)

    assert [plural for plural, _ in cluster.creations() if plural != "pods"] == [
        "secrets",  # the instance's (made by this test)
        "configmaps",
        "secrets",
        "jobs",
    ]
    env = job_env(cluster, spec.name)
    assert "AZCOPY_SAS" not in env and env["AZCOPY_SAS_FILE"]["value"] == "/var/run/toygres/blob/sas"
    pod = cluster.get("jobs", NS, spec.name)["spec"]["template"]
    assert "azure.workload.identity/use" not in pod["metadata"]["labels"], "a restore pod needs no workload identity"
    grant = next(v for v in pod["spec"]["volumes"] if v["name"] == "blob-grant")
    assert grant["secret"]["secretName"] == f"{spec.name}-sas"
    assert env["RESTORE_HANDOFF"]["value"] == f"{platform.volume_mount_path}/restore-handoff"
    assert "PGPASSWORD" not in env  # the fetch role holds no password
    # The SAS travelled only inside the Secret (base64), never in plain text, and not in the log.
    assert SIGNATURE not in all_request_text(cluster)
    assert any("REDACTED" in line for line in lines)
    assert not [line for line in lines if SIGNATURE in line or "S3cr3tSig+/=" in line]
    # The per-job Secret is gone once the job finished.
    assert cluster.get("secrets", NS, f"{spec.name}-sas") is None
    assert ("DELETE", "secrets", f"{spec.name}-sas", None) in cluster.calls()


def test_a_retried_pod_is_not_a_failure(cluster, platform):
    """Between a failed pod and its replacement the Job shows active=0, failed=1 and no Failed
    condition (the backoff delay). dagster-k8s' wait_for_job_success treats exactly that as a
    failure; the platform waits for the Job's own verdict."""
    lines: list[str] = []
    attempts = [
        PodScript(log="connecting\nERROR: connection reset\n", exit_code=1),
        PodScript(log="connecting\nbackup complete\n"),
    ]
    with job_controller(cluster, "backup-nightly-1", attempts, backoff_gap_seconds=0.4) as ctl:
        result = platform.run_job(backup_spec(), lines.append)

    assert result.succeeded
    assert "backup after 1 failure(s)" in " ".join(ctl.events).replace("backoff", "backup")
    assert len(pod_names(cluster, NS, "backup-nightly-1")) == 2
    assert "ERROR: connection reset" in lines and "backup complete" in lines
    assert any("attempt 2" in line for line in lines)


def test_failure_after_backoff_carries_the_log_tail_and_the_jobs_condition(cluster, platform):
    lines: list[str] = []
    attempts = [PodScript(log=f"attempt {n}\npg_dump: error: connection refused\n", exit_code=1) for n in (1, 2, 3)]
    with job_controller(cluster, "backup-nightly-1", attempts, backoff_gap_seconds=0.1) as ctl:
        with pytest.raises(JobFailed) as failed:
            platform.run_job(backup_spec(), lines.append)

    result = failed.value.result
    assert not result.succeeded
    assert "BackoffLimitExceeded" in result.reason and "exit code 1" in result.reason
    assert result.log_tail[-2:] == ["attempt 3", "pg_dump: error: connection refused"]
    assert "pg_dump: error: connection refused" in str(failed.value)
    # backoffLimit=2: three pods ran before the Job failed, none of them ended the wait early.
    assert len(pod_names(cluster, NS, "backup-nightly-1")) == 3
    assert ctl.events[-1] == "job Failed"
    assert "attempt 1" in lines and "attempt 3" in lines


def test_timeout_deletes_the_job(cluster, platform):
    spec = backup_spec(timeout_seconds=1)
    with job_controller(cluster, spec.name, [PodScript(log="still dumping\n", run_seconds=30)]):
        with pytest.raises(JobFailed, match="timed out after 1s"):
            platform.run_job(spec, lambda line: None)
    assert cluster.get("jobs", NS, spec.name) is None
    delete = next(
        r for r in cluster.requests() if r.method.value == "DELETE" and r.resource and r.resource.plural == "jobs"
    )
    assert delete.data["propagationPolicy"] == "Background"


def test_a_checksum_failure_fails_the_job_without_retries(cluster, platform):
    """Exit 3 (checksum mismatch) matches the Job's podFailurePolicy: one pod, no backoff retries."""
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))  # its verifier goes to the serve container
    spec = restore_spec()
    attempts = [PodScript(log="ERROR: checksum mismatch\n", exit_code=3)] * (platform.backoff_limit + 1)
    with job_controller(cluster, spec.name, attempts, backoff_gap_seconds=0.05) as controller:
        with pytest.raises(JobFailed, match="PodFailurePolicy") as failed:
            platform.run_job(spec, lambda line: None)
    assert len(pod_names(cluster, NS, spec.name)) == 1, controller.events
    assert "exit code 3" in failed.value.result.reason


def test_a_pod_that_never_starts_fails_with_the_scheduler_reason(cluster, platform):
    platform = platform.model_copy(update={"pod_pending_timeout_seconds": 1})
    lines: list[str] = []
    pending = PodScript(pending_reason=("Unschedulable", "0/3 nodes are available: 3 Insufficient memory."))
    with job_controller(cluster, "backup-nightly-1", [pending]):
        with pytest.raises(JobFailed) as failed:
            platform.run_job(backup_spec(), lines.append)
    assert "did not start within 1s" in failed.value.result.reason
    assert "Insufficient memory" in failed.value.result.reason
    assert any("Unschedulable" in line for line in lines), "the wait reason reaches the run log"
    assert cluster.get("jobs", NS, "backup-nightly-1") is None


def test_a_rerun_adopts_the_existing_objects(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))  # its verifier goes to the serve container
    spec = restore_spec(blob_sas=SecretStr(SAS))
    with job_controller(cluster, spec.name, [PodScript(log="restore complete\n")]):
        platform.run_job(spec, lambda line: None)
    first_pods = pod_names(cluster, NS, spec.name)

    # Same run attempt again (e.g. an op retry): ConfigMap and Job exist -> 409 -> adopted.
    lines: list[str] = []
    result = platform.run_job(spec, lines.append)
    assert result.succeeded
    conflicts = [c for c in cluster.calls("GET") if c[0:2] in (("GET", "configmaps"), ("GET", "jobs")) and c[3] is None]
    assert ("GET", "jobs", spec.name, None) in conflicts, "the existing Job was read after the 409"
    assert pod_names(cluster, NS, spec.name) == first_pods, "no second pod: the finished Job was adopted"
    assert any("already exists" in line for line in lines)
    assert [plural for plural, _ in cluster.creations()].count("jobs") == 2  # the second POST got 409


def test_an_object_toygres_did_not_create_is_not_adopted(cluster, platform):
    cluster.put_object(
        "jobs",
        NS,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "backup-nightly-1", "namespace": NS, "labels": {"team": "other"}},
        },
    )
    with pytest.raises(PlatformError, match="not created by toygres"):
        platform.run_job(backup_spec(), lambda line: None)


def test_invalid_specs_fail_before_anything_is_created(cluster, platform):
    bad = backup_spec().model_copy(update={"env": {"PGPASSWORD": "hunter2"}})
    with pytest.raises(PlatformError, match="secrets"):
        platform.run_job(bad, lambda line: None)
    with pytest.raises(PlatformError, match="job name"):
        platform.run_job(backup_spec(name="Backup_Nightly"), lambda line: None)
    assert cluster.creations() == []


# --- instances -------------------------------------------------------------------------------


def _mark_ready(cluster: FakeCluster, instance: InstanceRef, ingress_ip: str | None) -> None:
    client = api_client(cluster)
    merge = "application/merge-patch+json"
    kubernetes.client.AppsV1Api(client).patch_namespaced_stateful_set_status(
        instance.k8s_name, NS, {"status": {"replicas": 1, "readyReplicas": 1}}, _content_type=merge
    )
    if ingress_ip:
        kubernetes.client.CoreV1Api(client).patch_namespaced_service_status(
            instance.k8s_name, NS, {"status": {"loadBalancer": {"ingress": [{"ip": ingress_ip}]}}}, _content_type=merge
        )


def test_instance_secret_round_trip_and_update(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))
    assert platform.read_instance_password(TARGET).get_secret_value() == PASSWORD
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))  # 409 -> adopted, unchanged
    assert not any(c[0] == "PATCH" for c in cluster.calls(plural="secrets"))
    platform.ensure_instance_secret(TARGET, SecretStr("other\\pw"))  # a re-run with a new password
    assert platform.read_instance_password(TARGET).get_secret_value() == "other\\pw"
    with pytest.raises(PlatformError):
        platform.read_instance_password(SOURCE)


def test_restore_flow_deploys_waits_and_reports_endpoints(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))
    platform.create_volume(TARGET, 8)
    spec = restore_spec()
    with job_controller(cluster, spec.name, [PodScript(log="restore complete\n")]):
        platform.run_job(spec, lambda line: None)
    deploy = DeploySpec(
        instance=TARGET, postgres_version="17", image_type=ImageType.stock, storage_size_gb=8, dns_label="orders-copy"
    )
    platform.deploy_instance(deploy)
    platform.deploy_instance(deploy)  # idempotent: every object adopted

    assert [c for c in cluster.creations() if c[0] != "pods"] == [
        ("secrets", f"{TARGET.k8s_name}-secret"),
        ("persistentvolumeclaims", f"{TARGET.k8s_name}-data"),
        ("configmaps", m.scripts_config_map(NS)["metadata"]["name"]),
        ("secrets", f"{spec.name}-sas"),  # the job's Secret: its grant and the password's verifier
        ("jobs", spec.name),
        *[
            ("secrets", f"{TARGET.k8s_name}-tls"),
            ("configmaps", f"{TARGET.k8s_name}-config"),
            ("services", f"{TARGET.k8s_name}-hl"),
            ("statefulsets", TARGET.k8s_name),
            ("services", TARGET.k8s_name),
        ]
        * 2,
    ]
    assert (
        cluster.get("persistentvolumeclaims", NS, f"{TARGET.k8s_name}-data")["spec"]["resources"]["requests"]["storage"]
        == "8Gi"
    )

    with pytest.raises(PlatformError, match="not ready after 0s"):
        platform.wait_ready(TARGET, 0)
    _mark_ready(cluster, TARGET, ingress_ip=None)
    with pytest.raises(PlatformError, match="load balancer has no address"):
        platform.wait_ready(TARGET, 0)
    _mark_ready(cluster, TARGET, ingress_ip="20.1.2.3")
    platform.wait_ready(TARGET, 5)
    endpoints = platform.endpoints(TARGET)
    assert endpoints.external_ip == "20.1.2.3"
    assert endpoints.dns_name == "orders-copy.westeurope.cloudapp.azure.com" == endpoints.host
    assert endpoints.port == 5432
    # The password travelled only base64-encoded inside the Secret.
    assert PASSWORD not in all_request_text(cluster)
    assert json.dumps(PASSWORD)[1:-1] not in all_request_text(cluster)
    assert base64.b64encode(PASSWORD.encode()).decode() in all_request_text(cluster)


def test_internal_instance_endpoints_are_the_service_dns_name(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))
    platform.create_volume(TARGET, 1)
    platform.deploy_instance(
        DeploySpec(instance=TARGET, postgres_version="16", storage_size_gb=1, dns_label="orders-copy", internal=True)
    )
    _mark_ready(cluster, TARGET, ingress_ip=None)
    platform.wait_ready(TARGET, 5)
    endpoints = platform.endpoints(TARGET)
    assert endpoints.host == f"{TARGET.k8s_name}.{NS}.svc.cluster.local" == endpoints.dns_name
    assert endpoints.external_ip is None
    assert cluster.get("services", NS, TARGET.k8s_name)["spec"]["type"] == "ClusterIP"


def test_failed_restore_is_cleaned_up_by_delete_instance(cluster, platform):
    platform.ensure_instance_secret(TARGET, SecretStr(PASSWORD))
    platform.create_volume(TARGET, 2)
    spec = restore_spec(blob_sas=SecretStr(SAS))
    attempts = [PodScript(log="ERROR: checksum mismatch\n", exit_code=3)] * 3
    with job_controller(cluster, spec.name, attempts, backoff_gap_seconds=0.05):
        with pytest.raises(JobFailed, match="checksum mismatch"):
            platform.run_job(spec, lambda line: None)
    platform.deploy_instance(
        DeploySpec(instance=TARGET, postgres_version="17", storage_size_gb=2, dns_label="orders-copy")
    )
    assert platform.instance_exists(TARGET)

    platform.delete_instance(TARGET)
    for plural, name in [
        ("statefulsets", TARGET.k8s_name),
        ("services", TARGET.k8s_name),
        ("services", f"{TARGET.k8s_name}-hl"),
        ("secrets", f"{TARGET.k8s_name}-tls"),
        ("configmaps", f"{TARGET.k8s_name}-config"),
        ("secrets", f"{TARGET.k8s_name}-secret"),
        ("persistentvolumeclaims", f"{TARGET.k8s_name}-data"),
        ("jobs", spec.name),
        ("secrets", f"{spec.name}-sas"),
    ]:
        assert cluster.get(plural, NS, name) is None, (plural, name)
    assert not platform.instance_exists(TARGET)
    deletes = {r.resource.plural: r.data for r in cluster.requests() if r.method.value == "DELETE" and r.resource}
    assert deletes["statefulsets"]["propagationPolicy"] == "Foreground"
    assert deletes["jobs"]["propagationPolicy"] == "Background"
    # The scripts ConfigMap is shared by all jobs and stays.
    assert m.scripts_config_map(NS)["metadata"]["name"] in cluster.names("configmaps", NS)
    platform.delete_instance(TARGET)  # idempotent
    platform.delete_job(spec.name, NS)  # idempotent


def test_in_cluster_config_is_used_inside_a_pod(monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda **kw: calls.append("incluster"))
    monkeypatch.setattr(kubernetes.config, "load_kube_config", lambda **kw: calls.append("kubeconfig"))
    KubernetesPlatform()._client()
    assert calls == ["incluster"]
    KubernetesPlatform(kubeconfig_path=str(tmp_path / "kc"))._client()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    KubernetesPlatform()._client()
    assert calls == ["incluster", "kubeconfig", "kubeconfig"]


def test_with_source_ranges_the_restore_checks_the_instance_inside_the_cluster(cluster, platform):
    """kube-proxy drops in-cluster traffic to a LoadBalancer address whose loadBalancerSourceRanges
    don't list the pod network (Kubernetes >= 1.25): the run pod must check the instance through the
    Service's cluster name then, while users still get the public address."""
    from toygres_pipelines.restores.steps import check_url

    ranged = platform.model_copy(update={"load_balancer_source_ranges": ["203.0.113.0/24"]})
    ranged.with_api_client(platform._client())
    ranged.ensure_instance_secret(TARGET, SecretStr(PASSWORD))
    ranged.deploy_instance(
        DeploySpec(instance=TARGET, postgres_version="16", storage_size_gb=1, dns_label="orders-copy")
    )
    _mark_ready(cluster, TARGET, ingress_ip="20.1.2.3")
    endpoints = ranged.endpoints(TARGET)
    assert endpoints.external_ip == "20.1.2.3"
    assert endpoints.check_host == f"{TARGET.k8s_name}.{NS}.svc.cluster.local"
    assert f"@{TARGET.k8s_name}.{NS}.svc.cluster.local:5432/" in check_url(endpoints, SecretStr("pw"))
    # Without source ranges the public address itself is checked.
    open_endpoints = platform.endpoints(TARGET)
    assert open_endpoints.check_host is None and "@20.1.2.3:5432/" in check_url(open_endpoints, SecretStr("pw"))
