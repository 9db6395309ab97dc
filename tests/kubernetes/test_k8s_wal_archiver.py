"""The Kubernetes WAL archiver (docs/pitr.md, "Who runs it"): one Deployment per instance namespace
running resources/platform/wal_archiver_pool.py for every archived instance of that namespace, fed
by one Secret the platform writes (the instances, their pgpass lines, a create + write container
SAS refreshed before expiry). No workload identity, no API token in its pod."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from k8s_fake_cluster import running_cluster
from pydantic import SecretStr
from test_k8s_manifests import validate

from records import InstanceRef
from resources.platform import k8s_manifests as m
from resources.platform.base import WalArchiverSpec
from resources.platform.kubernetes import KubernetesPlatform
from resources.platform.wal_archiver_pool import ARCHIVERS_FILE, ArchiverSet

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

NS = "toygres-instances"
IMAGE = f"registry.example/toygres:1.13-20261204@sha256:{'ef' * 32}"


def sas_expiring_in(delta: timedelta) -> SecretStr:
    expiry = (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")
    return SecretStr(f"sv=2025-01-05&se={expiry.replace(':', '%3A')}&sr=c&sp=acw&sig=abc%2Bdef")


def spec(name: str, sas: SecretStr) -> WalArchiverSpec:
    return WalArchiverSpec(
        instance=InstanceRef(k8s_name=name, namespace=NS),
        container_url="https://acct.blob.core.windows.net/images",
        blob_sas=sas,
    )


def secret_files(secret: dict) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}


def test_the_archiver_manifests_pass_the_official_schemas_and_carry_no_credential():
    settings = KubernetesPlatform(archiver_image=IMAGE).settings()
    deployment = m.wal_archiver_deployment(NS, settings)
    secret = m.wal_archiver_secret(NS, ArchiverSet(), pgpass="h:5432:*:postgres:pw\n", sas="sig=x")
    for manifest in (deployment, secret):
        validate(manifest)
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two pools on one slot
    assert pod["automountServiceAccountToken"] is False
    assert "azure.workload.identity/use" not in json.dumps(deployment)
    [container] = pod["containers"]
    assert container["image"] == IMAGE
    assert container["command"][:3] == ["python", "-m", "resources.platform.wal_archiver_pool"]
    assert not any("value" in e and e["name"] in m.SECRET_ENV_NAMES for e in container.get("env", []))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["secret"]["secretName"] == m.WAL_ARCHIVER_NAME
    assert secret_files(secret)["sas"] == "sig=x"


def test_no_archiver_image_is_a_named_refusal():
    with pytest.raises(Exception, match="archiver_image"):
        KubernetesPlatform().ensure_wal_archiver(spec("orders-ab12c", sas_expiring_in(timedelta(days=2))))


def test_one_archiver_per_namespace_serves_every_instance_and_is_removed_with_the_last(tmp_path):
    with running_cluster(tmp_path) as cluster:
        platform = KubernetesPlatform(kubeconfig_path=str(cluster.kubeconfig), archiver_image=IMAGE)
        for name, password in (("orders-ab12c", "pw:one"), ("users-cd34e", "pw\\two")):
            platform.ensure_instance_secret(InstanceRef(k8s_name=name, namespace=NS), SecretStr(password))
        fresh = sas_expiring_in(timedelta(days=2))
        assert platform.ensure_wal_archiver(spec("orders-ab12c", fresh)) is True
        assert platform.ensure_wal_archiver(spec("users-cd34e", fresh)) is True
        assert cluster.names("deployments", NS) == [m.WAL_ARCHIVER_NAME]
        files = secret_files(cluster.get("secrets", NS, m.WAL_ARCHIVER_NAME))
        served = ArchiverSet.model_validate_json(files[ARCHIVERS_FILE]).archivers
        assert [(c.k8s_name, c.host, c.port, c.sslmode) for c in served] == [
            ("orders-ab12c", f"orders-ab12c.{NS}.svc.cluster.local", 5432, "require"),
            ("users-cd34e", f"users-cd34e.{NS}.svc.cluster.local", 5432, "require"),
        ]
        assert files["pgpass"].splitlines() == [
            f"orders-ab12c.{NS}.svc.cluster.local:5432:*:postgres:pw\\:one",
            f"users-cd34e.{NS}.svc.cluster.local:5432:*:postgres:pw\\\\two",
        ]
        assert files["sas"] == fresh.get_secret_value()
        assert sorted(r.k8s_name for r in platform.wal_archivers()) == ["orders-ab12c", "users-cd34e"]

        # Served, SAS still fresh: nothing written.
        patches = len(cluster.calls("PATCH", "secrets"))
        assert platform.ensure_wal_archiver(spec("orders-ab12c", sas_expiring_in(timedelta(days=2)))) is False
        assert len(cluster.calls("PATCH", "secrets")) == patches
        # The stored SAS past half its life: refreshed.
        cluster.put_object(
            "secrets", NS, m.wal_archiver_secret(NS, ArchiverSet(archivers=served), files["pgpass"],
                                                 sas_expiring_in(timedelta(hours=3)).get_secret_value()),
        )  # fmt: skip
        newer = sas_expiring_in(timedelta(days=2))
        assert platform.ensure_wal_archiver(spec("orders-ab12c", newer)) is False
        assert secret_files(cluster.get("secrets", NS, m.WAL_ARCHIVER_NAME))["sas"] == newer.get_secret_value()

        # The Deployment has no available replica: the instance's named reason.
        assert "not running" in (platform.wal_archiver_error(InstanceRef(k8s_name="orders-ab12c", namespace=NS)) or "")

        platform.remove_wal_archiver(InstanceRef(k8s_name="orders-ab12c", namespace=NS))
        files = secret_files(cluster.get("secrets", NS, m.WAL_ARCHIVER_NAME))
        assert [c.k8s_name for c in ArchiverSet.model_validate_json(files[ARCHIVERS_FILE]).archivers] == ["users-cd34e"]
        assert "orders-ab12c" not in files["pgpass"]
        assert [r.k8s_name for r in platform.wal_archivers()] == ["users-cd34e"]
        platform.remove_wal_archiver(InstanceRef(k8s_name="users-cd34e", namespace=NS))
        assert cluster.names("deployments", NS) == []
        assert m.WAL_ARCHIVER_NAME not in cluster.names("secrets", NS)
        assert platform.wal_archivers() == []


def test_the_archiver_deployment_follows_a_settings_change(tmp_path):
    """A new archiver image, other resources, no pull secret any more: the next ensure patches the
    namespace's Deployment (not left running the old pod spec); the same settings patch nothing."""
    newer = f"registry.example/toygres:1.13-20261205@sha256:{'ab' * 32}"
    with running_cluster(tmp_path) as cluster:
        before = KubernetesPlatform(
            kubeconfig_path=str(cluster.kubeconfig), archiver_image=IMAGE, job_image_pull_secret="pull-old"
        )
        before.ensure_instance_secret(InstanceRef(k8s_name="orders-ab12c", namespace=NS), SecretStr("pw"))
        fresh = sas_expiring_in(timedelta(days=2))
        assert before.ensure_wal_archiver(spec("orders-ab12c", fresh)) is True
        pod = cluster.get("deployments", NS, m.WAL_ARCHIVER_NAME)["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == IMAGE and pod["imagePullSecrets"] == [{"name": "pull-old"}]

        after = KubernetesPlatform(
            kubeconfig_path=str(cluster.kubeconfig), archiver_image=newer, archiver_memory_limit="4Gi"
        )
        assert after.ensure_wal_archiver(spec("orders-ab12c", fresh)) is False  # still served: no Secret change
        deployment = cluster.get("deployments", NS, m.WAL_ARCHIVER_NAME)
        pod = deployment["spec"]["template"]["spec"]
        [container] = pod["containers"]
        assert container["image"] == newer
        assert container["resources"]["limits"]["memory"] == "4Gi"
        assert not pod.get("imagePullSecrets")
        validate({k: v for k, v in deployment.items() if k != "status"})

        patches = len(cluster.calls("PATCH", "deployments"))
        after.ensure_wal_archiver(spec("orders-ab12c", fresh))
        assert len(cluster.calls("PATCH", "deployments")) == patches  # unchanged settings: nothing written


def test_servers_accept_the_archivers_replication_over_tls_and_bound_the_slots_wal():
    """pg_hba's `all` does not match replication connections: without its own hostssl line every
    archiver is refused. The slot's WAL is bounded on the command line (above ALTER SYSTEM)."""
    instance = InstanceRef(k8s_name="orders-ab12c", namespace=NS)
    hba = m.hba_config(instance)["data"]["pg_hba.conf"].splitlines()
    assert "hostssl replication all 0.0.0.0/0 scram-sha-256" in hba
    assert "hostssl replication all ::/0 scram-sha-256" in hba
    assert not any(line.split()[:2] == ["host", "replication"] for line in hba if line.strip())
    from resources.platform.base import DeploySpec

    deploy = DeploySpec(instance=instance, postgres_version="17", storage_size_gb=1, dns_label="orders")
    settings = KubernetesPlatform(job_images={"17": IMAGE}, wal_slot_max_keep_mb=512).settings()
    args = m.statefulset(deploy, settings)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "max_slot_wal_keep_size=512MB" in args
    assert args[args.index("max_slot_wal_keep_size=512MB") - 1] == "-c"
