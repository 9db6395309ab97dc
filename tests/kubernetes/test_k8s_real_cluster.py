"""The platform lifecycle against a REAL cluster (kind, AKS...). Skipped unless
TOYGRES_K8S_CONTEXT (a kubeconfig context) is set; see docs/kubernetes.md and
deploy/kubernetes/kind-test.sh for the one-command run. Not executed where no cluster exists.

    TOYGRES_K8S_CONTEXT      kubeconfig context to use (required)
    TOYGRES_K8S_KUBECONFIG   kubeconfig file (default: ~/.kube/config / $KUBECONFIG)
    TOYGRES_K8S_NAMESPACE    an existing namespace to work in (default: toygres-test)
    TOYGRES_K8S_JOB_IMAGES   17=<the job image (deploy/kubernetes/job-image), pinned> (required)
    TOYGRES_K8S_STORAGE_CLASS   optional StorageClass
    TOYGRES_K8S_BLOB_URL + TOYGRES_K8S_BLOB_SAS   optional: a blob folder and a container SAS with
                             create + write (sp=cw) on its container; with them the
                             backup must succeed, without them it must fail after its retries
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.base import DeploySpec, JobFailed, JobKind, JobSpec, PlatformError
from resources.platform.kubernetes import KubernetesPlatform
from toygres_pipelines.resources_from_env import kubernetes_platform_from_env

CONTEXT = os.environ.get("TOYGRES_K8S_CONTEXT")
pytestmark = [
    pytest.mark.kubernetes,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not CONTEXT, reason="TOYGRES_K8S_CONTEXT not set: no real cluster to test against"),
]
NAMESPACE = os.environ.get("TOYGRES_K8S_NAMESPACE", "toygres-test")
PASSWORD = "r3al\"clu\\ster'pw {{ x }} $(id)"


@pytest.fixture
def platform() -> KubernetesPlatform:
    if not os.environ.get("TOYGRES_K8S_JOB_IMAGES"):
        pytest.skip("TOYGRES_K8S_JOB_IMAGES not set")
    return KubernetesPlatform(
        namespace=NAMESPACE,
        kube_context=CONTEXT,
        kubeconfig_path=os.environ.get("TOYGRES_K8S_KUBECONFIG"),
        job_images=kubernetes_platform_from_env().job_images,
        storage_class=os.environ.get("TOYGRES_K8S_STORAGE_CLASS"),
        backoff_limit=1,
        poll_interval_seconds=2,
        pod_pending_timeout_seconds=300,
        job_cpu_request="50m",
        job_memory_request="128Mi",
        postgres_cpu_request="50m",
        postgres_memory_request="256Mi",
    )


@pytest.fixture
def source(platform) -> Iterator[InstanceRef]:
    instance = InstanceRef(k8s_name=f"k8s-test-{secrets.token_hex(3)}", namespace=NAMESPACE)
    try:
        yield instance
    finally:
        platform.delete_instance(instance)


def test_instance_and_backup_job_on_a_real_cluster(platform, source):
    # An instance on an empty volume: the postgres image initializes PGDATA with the Secret's password.
    platform.ensure_instance_secret(source, SecretStr(PASSWORD))
    assert platform.read_instance_password(source).get_secret_value() == PASSWORD
    platform.create_volume(source, 1)
    platform.deploy_instance(
        DeploySpec(instance=source, postgres_version="17", storage_size_gb=1, dns_label=source.k8s_name, internal=True)
    )
    platform.wait_ready(source, 600)
    endpoints = platform.endpoints(source)
    assert endpoints.host == f"{source.k8s_name}.{NAMESPACE}.svc.cluster.local"

    blob_url, sas = os.environ.get("TOYGRES_K8S_BLOB_URL"), os.environ.get("TOYGRES_K8S_BLOB_SAS")
    spec = JobSpec(
        kind=JobKind.backup,
        name=f"backup-{source.k8s_name}",
        script="backup.sh",
        instance=source,
        env={
            "BLOB_URL": blob_url or "https://devnull.blob.core.windows.net/none/k8s-test",
            "IMAGE_NAME": "k8s-test",
            "SOURCE_INSTANCE": source.k8s_name,
            "SOURCE_NAMESPACE": NAMESPACE,
            "POSTGRES_VERSION": "17",
        },
        # a grant (resources/blob_sas.py) whose container token is the given SAS: create + write is enough
        blob_sas=SecretStr(
            json.dumps({"format": 1, "query": "", "signatures": {}, "container": sas or "sv=2000-01-01&sig=invalid"})
        ),
        labels={"toygres/image": "k8s-test"},
        timeout_seconds=600,
    )
    lines: list[str] = []
    try:
        if blob_url and sas:
            result = platform.run_job(spec, lines.append)
            assert result.succeeded and any("backup complete" in line for line in lines)
        else:
            # psql reaches the server (real DNS, real secretKeyRef password); the upload fails.
            with pytest.raises(JobFailed) as failed:
                platform.run_job(spec, lines.append)
            assert "BackoffLimitExceeded" in failed.value.result.reason
            assert any("runs PostgreSQL 17" in line for line in lines), (
                "the backup connected with the Secret's password"
            )
            assert failed.value.result.log_tail
        assert not any(PASSWORD in line for line in lines)
    finally:
        platform.delete_job(spec.name, NAMESPACE)

    platform.stop_instance(source)
    platform.delete_instance(source)
    deadline = time.monotonic() + 300
    while platform.instance_exists(source) and time.monotonic() < deadline:
        time.sleep(3)
    assert not platform.instance_exists(source)


def test_unschedulable_job_fails_with_the_reason(platform, source):
    platform = platform.model_copy(
        update={"pod_pending_timeout_seconds": 30, "job_memory_request": "64Ti", "job_memory_limit": "64Ti"}
    )
    spec = JobSpec(
        kind=JobKind.backup,
        name=f"backup-{source.k8s_name}",
        script="backup.sh",
        instance=source,
        env={
            "BLOB_URL": "https://x/y",
            "IMAGE_NAME": "x",
            "SOURCE_INSTANCE": "x",
            "SOURCE_NAMESPACE": "x",
            "POSTGRES_VERSION": "17",
        },
    )
    with pytest.raises(JobFailed, match="did not start within 30s"):
        platform.run_job(spec, lambda line: None)
    with pytest.raises(PlatformError):
        platform.read_instance_password(source)
