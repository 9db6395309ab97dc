"""deploy/kubernetes: the RBAC manifests validate against the official schemas, the Role grants
exactly the API calls the platform makes (measured against the API stand-in), and the Helm
values configure what the issue asks of the Dagster deployment."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from k8s_fake_cluster import FakeJobController, PodScript, running_cluster
from pydantic import SecretStr

from records import InstanceRef
from resources.platform.base import DeploySpec, JobFailed, JobKind, JobSpec, PlatformError, WalArchiverSpec
from resources.platform.kubernetes import KubernetesPlatform

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "kubernetes.md"
DAGSTER_NS = "toygres"  # Dagster, its run pods and their service account
NS = KubernetesPlatform().namespace  # the instances' own namespace


def instance_namespace_manifests(namespace: str) -> list[dict]:
    from resources.platform.k8s_instance_namespace import instance_namespace_manifests as render

    return render(namespace)


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def deployed() -> list[dict]:
    kustomization = load("kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in load(name)]


def one(kind: str, namespace: str | None) -> dict:
    [doc] = [d for d in deployed() if d["kind"] == kind and d["metadata"].get("namespace") == namespace]
    return doc


@pytest.mark.parametrize("version", ["1.30", "1.33"])
def test_deploy_manifests_validate(version):
    docs = deployed()
    assert sorted((d["kind"], d["metadata"].get("namespace") or d["metadata"]["name"]) for d in docs) == sorted(
        [
            ("Namespace", DAGSTER_NS),
            ("ServiceAccount", DAGSTER_NS),
            ("Deployment", DAGSTER_NS),  # the request listener
            ("Namespace", NS),
            ("ServiceAccount", NS),
            ("Role", NS),
            ("RoleBinding", NS),
        ]
    )
    for doc in docs + instance_namespace_manifests("team-a"):
        kubernetes_validate.validate(json.loads(json.dumps(doc)), version, strict=True)


def test_identity_and_binding_fit_the_platform():
    platform = KubernetesPlatform()
    for namespace in (DAGSTER_NS, NS):
        account = one("ServiceAccount", namespace)
        assert account["metadata"]["name"] == platform.service_account_name
    # Dagster's account holds the Azure identity (it mints the jobs' grants); the Job pods' holds none.
    assert "azure.workload.identity/client-id" in one("ServiceAccount", DAGSTER_NS)["metadata"]["annotations"]
    assert "annotations" not in one("ServiceAccount", NS)["metadata"]
    role, binding = one("Role", NS), one("RoleBinding", NS)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    # The Dagster run pods (in Dagster's namespace) act on the instances' namespace.
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": platform.service_account_name, "namespace": DAGSTER_NS}
    ]


def test_nothing_grants_access_to_secrets_in_dagsters_namespace():
    assert NS != DAGSTER_NS
    assert not [
        d for d in deployed() if d["kind"] in ("Role", "RoleBinding") and d["metadata"]["namespace"] == DAGSTER_NS
    ]


def test_the_checked_in_instance_namespace_is_what_the_generator_writes():
    assert load(f"instances/{NS}.yaml") == instance_namespace_manifests(NS)
    team = instance_namespace_manifests("team-a")
    assert {d["metadata"].get("namespace") or d["metadata"]["name"] for d in team} == {"team-a"}
    with pytest.raises(ValueError, match="namespace"):
        instance_namespace_manifests("Team_A")
    with pytest.raises(ValueError, match="Dagster"):
        instance_namespace_manifests(DAGSTER_NS)


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
        platform = KubernetesPlatform(
            kubeconfig_path=str(cluster.kubeconfig),
            poll_interval_seconds=0.05,
            job_images={"17": "registry.example/toygres-job:17-20261126"},
            allow_public_without_source_ranges=True,
            log_drain_seconds=2,
            deadline_grace_seconds=0,
            backoff_limit=1,
            pod_pending_timeout_seconds=5,
            azure_region="westeurope",
            archiver_image="registry.example/toygres:1.13-20261204",
        )
        env = {"BLOB_URL": "https://a/b", "POSTGRES_VERSION": "17"}
        backup = JobSpec(
            kind=JobKind.backup,
            name="backup-one",
            script="backup.sh",
            instance=source,
            env=env,
            blob_sas=SecretStr("sig=x"),
        )
        restore = JobSpec(
            kind=JobKind.restore,
            name="restore-one",
            script="restore.sh",
            instance=target,
            env=env,
            timeout_seconds=1,
            blob_sas=SecretStr("sig=x"),
        )

        platform.ensure_instance_secret(target, SecretStr("pw"))
        platform.ensure_instance_secret(target, SecretStr("pw2"))
        platform.read_instance_password(target)
        platform.create_volume(target, 1)
        platform.create_volume(target, 1)
        controller = FakeJobController(
            cluster,
            NS,
            "backup-one",
            [PodScript(log="x\n", exit_code=1), PodScript(log="ok\n")],
            backoff_gap_seconds=0.05,
        ).start()
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
        archiver = WalArchiverSpec(instance=target, container_url="https://a/b", blob_sas=SecretStr("se=x&sig=y"))
        platform.ensure_wal_archiver(archiver)  # creates the Secret and the Deployment
        platform.ensure_wal_archiver(archiver)  # served: reads only
        platform.model_copy(update={"archiver_memory_limit": "3Gi"}).ensure_wal_archiver(archiver)  # patched
        platform.wal_archivers()
        platform.wal_archiver_error(target)
        platform.remove_wal_archiver(target)  # the last one: Deployment and Secret deleted
        platform.delete_job("backup-one", NS)
        platform.delete_stale_jobs({NS}, 0)  # the janitor
        platform.delete_instance(target)
        platform.instance_exists(target)
        namespaces = {r.namespace for r in cluster.requests() if r.resource is not None}
        used = {
            (r.resource.group, r.resource.plural + (f"/{r.subresource}" if r.subresource else ""), _verb(r))
            for r in cluster.requests()
            if r.resource is not None and r.resource.plural
        }
    # The fake controller creates/patches pods and statuses itself; those are not the platform's.
    used -= {("", "pods", "create"), ("", "pods/status", "patch"), ("batch", "jobs/status", "patch")}
    assert namespaces == {NS}, "the platform only acts in the instances' namespace"
    role = one("Role", NS)
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert used - granted == set(), "the platform makes calls the Role does not allow"
    assert granted - used == set(), "the Role grants more than the platform uses"


def test_dagster_helm_values():
    values = load("dagster-values.yaml")[0]
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    k8s = launcher["config"]["k8sRunLauncher"]
    assert k8s["jobNamespace"] == DAGSTER_NS
    assert k8s["runK8sConfig"]["podSpecConfig"]["serviceAccountName"] == one("ServiceAccount", NS)["metadata"]["name"]
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    limits = {(limit["key"], str(limit.get("value"))): limit for limit in concurrency["runs"]["tagConcurrencyLimits"]}
    # The same tags as the local instance config (deploy/local/dagster.yaml) and the run requests.
    assert limits[("toygres/kind", "backup")]["limit"] >= 1
    assert limits[("toygres/kind", "restore")]["limit"] >= 1
    limits = {key: limit for (key, _), limit in limits.items()}
    assert limits["toygres/instance"] == {
        "key": "toygres/instance",
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    }
    # Every backup run gets the fleet tags, however launched; the chart refuses tag limits in both places at once.
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "CustomRunCoordinator"
    custom = coordinator["config"]["customRunCoordinator"]
    assert (custom["module"], custom["class"]) == ("toygres_pipelines.run_coordinator", "TaggingRunCoordinator")
    assert "tag_concurrency_limits" not in custom["config"]
    # webserver and daemon import it: they run the project image
    project = values["dagster-user-deployments"]["deployments"][0]["image"]["repository"]
    assert (
        values["dagsterWebserver"]["image"]["repository"] == values["dagsterDaemon"]["image"]["repository"] == project
    )


def test_helm_values_name_the_chart_version_and_the_docs_render_them_with_it():
    chart = importlib.metadata.version("dagster")
    header = (DEPLOY / "dagster-values.yaml").read_text().split("\n\n")[0]
    assert f"written for the dagster chart {chart}" in header
    values = "deploy/kubernetes/dagster-values.yaml"
    command = f"helm template dagster dagster/dagster --version {chart} -n {DAGSTER_NS} -f {values}"
    assert command in header and command in DOCS.read_text()


def test_every_pod_that_calls_the_platform_runs_as_the_bound_account():
    """Run pods (the ops) and the user-code server (sensors and schedules: write-back, the reconciler
    and the janitor delete Jobs, instances and blobs) both act on the instances' namespace and on
    blob storage: both must run as the account the RoleBinding and the federated credential name."""
    values = load("dagster-values.yaml")[0]
    bound = {(s["name"], s["namespace"]) for s in one("RoleBinding", NS)["subjects"]}
    runs = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    user_code = values["dagster-user-deployments"]
    assert user_code["serviceAccount"] == {"create": False, "name": runs["podSpecConfig"]["serviceAccountName"]}
    for account in (runs["podSpecConfig"]["serviceAccountName"], user_code["serviceAccount"]["name"]):
        assert (account, DAGSTER_NS) in bound
    assert runs["podTemplateSpecMetadata"]["labels"]["azure.workload.identity/use"] == "true"
    for deployment in user_code["deployments"]:
        assert deployment["labels"]["azure.workload.identity/use"] == "true"


def test_the_request_listener_runs_the_user_code_image_with_its_secret_and_the_charts_webserver():
    """deploy/kubernetes/request-listener.yaml: the code location's image and Secret, less what it
    never reads (the encryption key, blob credentials: blanked, as `env` wins over `envFrom`), the
    webserver's Service as the chart names it, no API token; the queue dequeues every second (issue 23)."""
    from toygres_pipelines.request_listener import NOT_FOR_THE_LISTENER
    from toygres_pipelines.shared.webserver import DAGSTER_URL

    values = load("dagster-values.yaml")[0]
    [user_code] = values["dagster-user-deployments"]["deployments"]
    listener = one("Deployment", DAGSTER_NS)
    pod = listener["spec"]["template"]["spec"]
    [container] = pod["containers"]
    image = user_code["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["command"] == ["python", "-m", "toygres_pipelines.request_listener"]
    secrets = [secret["name"] for secret in user_code["envSecrets"]]
    assert container["envFrom"] == [{"secretRef": {"name": name}} for name in secrets]
    env = {e["name"]: e for e in container["env"]}
    for name in NOT_FOR_THE_LISTENER:
        assert env.get(name) == {"name": name, "value": ""}, name
    url = env["TOYGRES_DAGSTER_URL"]["value"]
    assert DAGSTER_URL.fullmatch(url) and url.startswith(f"http://dagster-dagster-webserver.{DAGSTER_NS}.svc")
    assert pod["automountServiceAccountToken"] is False
    coordinator = values["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert coordinator["config"]["dequeue_interval_seconds"] == 1
