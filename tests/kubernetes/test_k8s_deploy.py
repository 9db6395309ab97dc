"""deploy/kubernetes: the RBAC manifests validate against the official schemas, the Role grants
exactly the API calls the platform makes (measured against the API stand-in), and the Helm
values configure what the issue asks of the Dagster deployment."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from k8s_fake_cluster import FakeJobController, PodScript, running_cluster
from resources.platform.base import DeploySpec, JobFailed, JobKind, JobSpec, PlatformError
from resources.platform.kubernetes import KubernetesPlatform
from toygres_pipelines.models import InstanceRef

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
NS = "toygres"


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def manifests() -> dict[str, dict]:
    kustomization = load("kustomization.yaml")[0]
    return {doc["kind"]: doc for name in kustomization["resources"] for doc in load(name)}


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_deploy_manifests_validate(version):
    docs = manifests()
    assert set(docs) == {"Namespace", "ServiceAccount", "Role", "RoleBinding"}
    for doc in docs.values():
        kubernetes_validate.validate(json.loads(json.dumps(doc)), version, strict=True)


def test_identity_and_binding_fit_the_platform():
    docs = manifests()
    account, role, binding = docs["ServiceAccount"], docs["Role"], docs["RoleBinding"]
    assert account["metadata"]["name"] == KubernetesPlatform().service_account_name
    assert account["metadata"]["namespace"] == KubernetesPlatform().namespace == docs["Namespace"]["metadata"]["name"]
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NS}]


VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def _verb(request) -> str:
    if request.method.value == "GET":
        if request.params.get("watch") == "true":
            return "watch"
        return "get" if request.name else "list"
    return VERBS[request.method.value]


def test_the_role_grants_exactly_the_calls_the_platform_makes(tmp_path):
    """Drive every platform method (success, retry, failure, timeout, re-run, cleanup) against
    the stand-in and compare the (group, resource, verb) triples with the Role."""
    source = InstanceRef(k8s_name="src-aaaaa", namespace=NS)
    target = InstanceRef(k8s_name="dst-bbbbb", namespace=NS)
    with running_cluster(tmp_path) as cluster:
        platform = KubernetesPlatform(kubeconfig_path=str(cluster.kubeconfig), poll_interval_seconds=0.05,
                                      log_drain_seconds=2, deadline_grace_seconds=0, backoff_limit=1,
                                      pod_pending_timeout_seconds=5, azure_region="westeurope")
        backup = JobSpec(kind=JobKind.backup, name="backup-one", script="backup.sh", instance=source,
                         env={"BLOB_URL": "https://a/b"}, blob_sas=SecretStr("sig=x"))
        restore = JobSpec(kind=JobKind.restore, name="restore-one", script="restore.sh", instance=target,
                          env={"BLOB_URL": "https://a/b"}, timeout_seconds=1)

        platform.ensure_instance_secret(target, SecretStr("pw"))
        platform.ensure_instance_secret(target, SecretStr("pw2"))
        platform.read_instance_password(target)
        platform.create_volume(target, 1)
        platform.create_volume(target, 1)
        controller = FakeJobController(cluster, NS, "backup-one", [PodScript(log="x\n", exit_code=1), PodScript(log="ok\n")],
                                       backoff_gap_seconds=0.05).start()
        platform.run_job(backup, lambda line: None)
        controller.stop()
        platform.run_job(backup, lambda line: None)  # re-run: adopt
        controller = FakeJobController(cluster, NS, "restore-one", [PodScript(run_seconds=10)]).start()
        with pytest.raises(JobFailed):
            platform.run_job(restore, lambda line: None)  # timeout
        controller.stop()
        deploy = DeploySpec(instance=target, postgres_version="17", storage_size_gb=1, dns_label="dst")
        platform.deploy_instance(deploy)
        platform.deploy_instance(deploy)
        with pytest.raises(PlatformError, match="not ready"):
            platform.wait_ready(target, 0)
        platform.stop_instance(target)
        platform.instance_exists(target)
        platform.delete_job("backup-one", NS)
        platform.delete_stale_jobs({NS}, 0)  # the janitor
        platform.delete_instance(target)
        platform.instance_exists(target)
        used = {
            (r.resource.group, r.resource.plural + (f"/{r.subresource}" if r.subresource else ""), _verb(r))
            for r in cluster.requests() if r.resource is not None and r.resource.plural
        }
    # The fake controller creates/patches pods and statuses itself; those are not the platform's.
    used -= {("", "pods", "create"), ("", "pods/status", "patch"), ("batch", "jobs/status", "patch")}
    role = manifests()["Role"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert used - granted == set(), "the platform makes calls the Role does not allow"
    assert granted - used == set(), "the Role grants more than the platform uses"


def test_dagster_helm_values():
    values = load("dagster-values.yaml")[0]
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert k8s["jobNamespace"] == NS
    assert k8s["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == manifests()["ServiceAccount"]["metadata"]["name"]
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    limits = {(limit["key"], str(limit.get("value"))): limit for limit in concurrency["runs"]["tagConcurrencyLimits"]}
    # The same tags as the local instance config (deploy/local/dagster.yaml) and the run requests.
    assert limits[("toygres/kind", "backup")]["limit"] >= 1
    assert limits[("toygres/kind", "restore")]["limit"] >= 1
    limits = {key: limit for (key, _), limit in limits.items()}
    assert limits["toygres/instance"] == {"key": "toygres/instance", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    # The chart refuses tag limits in both places at once.
    assert "tagConcurrencyLimits" not in values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
