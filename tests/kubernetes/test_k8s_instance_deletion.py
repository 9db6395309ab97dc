"""delete_instance (the lifecycle function behind the `delete_instance` job and CLI) on Kubernetes:
the restored instance's objects go from the API (kmock), its CMS row ends deleted."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from test_k8s_lifecycle import NS, TARGET, cluster, platform  # noqa: F401 - fixtures

from records import ImageType, InstanceState
from resources.platform.base import DeploySpec
from tests.helpers import catalogued_image
from toygres_pipelines.lifecycle.instances import delete_instance
from toygres_pipelines.restores.jobs import REQUEST_KEY

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(120)]


def restored_row(cms):
    source = cms.instances.create(
        user_name="orders",
        k8s_name="orders-ab12c",
        namespace=NS,
        postgres_version="17",
        storage_size_gb=2,
        use_load_balancer=True,
        dns_name=None,
        image_type=ImageType.stock,
        state=InstanceState.running,
    )
    image = catalogued_image(cms, source, "orders__n1")
    row = cms.instances.create(
        user_name="orders-copy",
        k8s_name=TARGET.k8s_name,
        namespace=NS,
        postgres_version="17",
        storage_size_gb=2,
        use_load_balancer=True,
        dns_name="orders-copy",
        image_type=ImageType.stock,
        source_image_id=image.id,
        tags={REQUEST_KEY: "r1"},
    )
    return cms.instances.transition(row.id, InstanceState.running, reason="test")


def test_delete_instance_removes_every_kubernetes_object_and_frees_the_label(cluster, platform, cms):  # noqa: F811
    row = restored_row(cms)
    platform.ensure_instance_secret(TARGET, SecretStr("pw"))
    platform.create_volume(TARGET, 2)
    platform.deploy_instance(
        DeploySpec(instance=TARGET, postgres_version="17", storage_size_gb=2, dns_label="orders-copy")
    )
    assert platform.instance_exists(TARGET) and cms.instances.dns_name_in_use("orders-copy")

    deleted = delete_instance(cms, platform, TARGET.k8s_name)
    assert deleted.state is InstanceState.deleted
    assert [e.to_state for e in cms.events.of(row.id)] == ["creating", "running", "deleting", "deleted"]
    for plural, name in [
        ("statefulsets", TARGET.k8s_name),
        ("services", TARGET.k8s_name),
        ("services", f"{TARGET.k8s_name}-hl"),
        ("secrets", f"{TARGET.k8s_name}-tls"),
        ("configmaps", f"{TARGET.k8s_name}-config"),
        ("secrets", f"{TARGET.k8s_name}-secret"),
        ("persistentvolumeclaims", f"{TARGET.k8s_name}-data"),
    ]:
        assert cluster.get(plural, NS, name) is None, (plural, name)
    assert not cms.instances.dns_name_in_use("orders-copy")
