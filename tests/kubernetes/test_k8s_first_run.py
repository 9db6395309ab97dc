"""Issue 21: what the first real AKS run would hit, on rendered manifests, the deploy files and the
platform's settings (no cluster needed): azcopy's buffer, the server image's base, the chart's RBAC,
public exposure, the workload identity annotations and limits, read-only root filesystems, bounded
scratch space, and the project image."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from test_k8s_manifests import job_spec, validate

from records import InstanceRef, ValidationFailed
from resources.platform import k8s_manifests as m
from resources.platform.base import DeploySpec, JobKind
from resources.platform.k8s_images import check_pinned_image
from resources.platform.kubernetes import KubernetesPlatform

pytestmark = [pytest.mark.kubernetes, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
DIGEST = "sha256:" + "0123456789abcdef" * 4
JOB_IMAGES = {v: f"registry.example/toygres-job:{v}-20261204-abc@{DIGEST}" for v in ("14", "15", "16", "17")}
INSTANCE = InstanceRef(k8s_name="orders-ab12c", namespace="toygres-instances")
GI = 1024**3


def platform(**over) -> KubernetesPlatform:
    return KubernetesPlatform(**{"job_images": JOB_IMAGES, **over})


def deploy(**over) -> DeploySpec:
    return DeploySpec(
        **{"instance": INSTANCE, "postgres_version": "16", "storage_size_gb": 1, "dns_label": "orders-copy", **over}
    )


def render_job(k8s: KubernetesPlatform, kind: JobKind, **env) -> dict:
    spec = job_spec(kind, INSTANCE)
    spec = spec.model_copy(update={"env": {**spec.env, **env}})
    manifest = m.job(spec, k8s.settings(), "toygres-job-scripts-x")
    validate(manifest)
    return manifest


def container_env(manifest: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}


def quantity_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": GI, "Ti": 1024**4}[unit]


# --- azcopy's buffer ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "env", "transfers"),
    [
        (JobKind.backup, {}, 1),
        (JobKind.backup, {"PARALLEL_JOBS": "8"}, 8),
        (JobKind.restore, {}, 1),
        (JobKind.restore, {"RESTORE_JOBS": "4"}, 4),
    ],
)
@pytest.mark.parametrize("memory_limit", ["2Gi", "512Mi", "8Gi"])
def test_azcopy_buffers_of_all_concurrent_transfers_fit_half_the_memory_limit(kind, env, transfers, memory_limit):
    """azcopy sizes its buffer from the node's CPU count (0.5 GB each): 2 GB on a 4-vCPU node, per
    process, and parallel mode runs several. The Job's limit decides instead."""
    job = render_job(platform(job_memory_limit=memory_limit), kind, **env)
    buffer_gb = float(container_env(job)["AZCOPY_BUFFER_GB"])
    assert 0 < buffer_gb * GI * transfers <= quantity_bytes(memory_limit) / 2


def test_without_a_memory_limit_azcopy_keeps_its_default():
    job = render_job(platform(job_memory_limit=None), JobKind.backup)
    assert "AZCOPY_BUFFER_GB" not in container_env(job)


# --- the server image: the job image's build, pinned ---------------------------------------------


def test_a_stock_server_runs_the_job_image_of_its_major():
    """Restored by the job image, run by the same build: one Debian release, one glibc collation version."""
    k8s = platform()
    sts = m.statefulset(deploy(postgres_version="16"), k8s.settings())
    validate(sts)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == JOB_IMAGES["16"]
    assert container["command"] == ["docker-entrypoint.sh"]  # the job image clears the entrypoint


@pytest.mark.parametrize("field", ["postgres_images", "pg_durable_images"])
@pytest.mark.parametrize("image", ["postgres:17", "postgres:17-bookworm", "postgres:latest", "postgres"])
def test_server_images_are_pinned_like_job_images(field, image):
    with pytest.raises(ValidationError, match=field):
        platform(**{field: {"17": image}})


def test_a_pinned_server_image_is_used():
    image = f"registry.example/postgres:17-bookworm@{DIGEST}"
    sts = m.statefulset(deploy(postgres_version="17"), platform(postgres_images={"17": image}).settings())
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == image


def test_job_and_server_images_are_built_from_one_pinned_base():
    dockerfile = (DEPLOY / "job-image" / "Dockerfile").read_text()
    build = (DEPLOY / "job-image" / "build.sh").read_text()
    froms = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}"]
    assert "bookworm" not in "".join(froms)
    # build.sh resolves postgres:<major>-bookworm to a digest once, builds the job image FROM it and
    # prints both pins (the server image is the same digest)
    assert 'docker build --pull=false --build-arg "BASE_IMAGE=$base"' in build
    assert "TOYGRES_K8S_POSTGRES_IMAGES" in build and "TOYGRES_K8S_JOB_IMAGES" in build


# --- the chart's values ------------------------------------------------------------------------------


def values() -> dict:
    return yaml.safe_load((DEPLOY / "dagster-values.yaml").read_text())


def test_user_deployments_bind_no_role_in_dagsters_namespace():
    """The subchart's default Role (create/delete pods and jobs) would go to our service account;
    runs execute in process, so nothing needs it."""
    assert values()["dagster-user-deployments"]["rbacEnabled"] is False


def chart_images(doc: dict) -> list[tuple[str, dict]]:
    images = [
        ("dagsterWebserver", doc["dagsterWebserver"]["image"]),
        ("dagsterDaemon", doc["dagsterDaemon"]["image"]),
    ]
    images += [(f"deployment {d['name']}", d["image"]) for d in doc["dagster-user-deployments"]["deployments"]]
    return images


def test_every_chart_image_names_one_build():
    for where, image in chart_images(values()):
        reference = f"{image['repository']}:{image['tag']}"
        if image.get("pullPolicy", "Always") == "IfNotPresent":
            check_pinned_image(reference, where)  # raises on a reused tag such as 0.1.0


def test_the_values_check_sees_a_reused_tag():
    doc = values()
    doc["dagsterDaemon"]["image"]["tag"] = "0.1.0"
    with pytest.raises(ValueError, match="dagsterDaemon"):
        for where, image in chart_images(doc):
            check_pinned_image(f"{image['repository']}:{image['tag']}", where)


# --- public instances -------------------------------------------------------------------------------


def test_a_public_instance_without_source_ranges_is_refused():
    k8s = platform()
    with pytest.raises(ValidationFailed, match="internal: .*load_balancer_source_ranges"):
        k8s.check_exposure(internal=False)
    with pytest.raises(m.ManifestError, match="load_balancer_source_ranges"):
        m.service(deploy(internal=False), k8s.settings())
    k8s.check_exposure(internal=True)  # internal instances need no ranges
    validate(m.service(deploy(internal=True), k8s.settings()))


def test_a_public_instance_without_ranges_needs_the_explicit_setting():
    k8s = platform(allow_public_without_source_ranges=True)
    k8s.check_exposure(internal=False)
    svc = m.service(deploy(internal=False), k8s.settings())
    validate(svc)
    assert "loadBalancerSourceRanges" not in svc["spec"]
    assert m.DENY_ALL_EXCEPT_RANGES_ANNOTATION not in svc["metadata"]["annotations"]


def test_ranges_come_with_azures_deny_all_except_annotation():
    svc = m.service(deploy(internal=False), platform(load_balancer_source_ranges=["203.0.113.0/24"]).settings())
    validate(svc)
    assert svc["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    annotation = "service.beta.kubernetes.io/azure-deny-all-except-load-balancer-source-ranges"
    assert svc["metadata"]["annotations"][annotation] == "true"


# --- workload identity ---------------------------------------------------------------------------


def service_accounts() -> list[dict]:
    from resources.platform.k8s_instance_namespace import instance_namespace_manifests

    docs = [yaml.safe_load((DEPLOY / "serviceaccount.yaml").read_text()), *instance_namespace_manifests("team-a")]
    return [doc for doc in docs if doc["kind"] == "ServiceAccount"]


def test_service_accounts_carry_no_placeholder_tenant():
    """The webhook exchanges tokens with the annotated tenant: a placeholder one does not exist
    (and the cluster's own tenant is the right default)."""
    for account in service_accounts():
        assert "azure.workload.identity/tenant-id" not in (account["metadata"].get("annotations") or {}), account


def test_enabling_instance_namespaces_adds_no_federated_credential():
    """Azure allows 20 federated credentials per managed identity. Only Dagster's namespace holds
    one (its account is annotated); an instance namespace's account carries no identity (jobs use
    their blob grant), so enabling more namespaces never approaches the limit."""
    for account in service_accounts():
        annotated = "azure.workload.identity/client-id" in (account["metadata"].get("annotations") or {})
        assert annotated == (account["metadata"]["namespace"] == "toygres"), account
    for namespace in (f"team-{i}" for i in range(25)):
        k8s = platform(instance_namespaces=[namespace])
        spec = job_spec(JobKind.backup, InstanceRef(k8s_name="orders-ab12c", namespace=namespace))
        labels = m.job(spec, k8s.settings(), "toygres-job-scripts-x")["spec"]["template"]["metadata"]["labels"]
        assert "azure.workload.identity/use" not in labels


# --- read-only root filesystems, bounded scratch ----------------------------------------------------


def pods() -> list[tuple[str, dict]]:
    k8s = platform()
    rendered = [
        ("backup job", render_job(k8s, JobKind.backup)),
        ("restore job", render_job(k8s, JobKind.restore)),
        ("statefulset", m.statefulset(deploy(), k8s.settings())),
    ]
    return [(name, manifest["spec"]["template"]["spec"]) for name, manifest in rendered]


def test_every_container_runs_with_a_read_only_root_filesystem_and_writable_tmp():
    for name, pod in pods():
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts.get("/tmp") in empty_dirs, f"{name}: /tmp is not a writable emptyDir"


def test_jobs_write_only_to_their_mounted_scratch():
    """HOME, TMPDIR and azcopy's logs and plans all point into an emptyDir the job mounts."""
    for kind in (JobKind.backup, JobKind.restore):
        job = render_job(platform(), kind)
        pod = job["spec"]["template"]["spec"]
        env = container_env(job)
        writable = [
            mount["mountPath"]
            for mount in pod["containers"][0]["volumeMounts"]
            if any(v["name"] == mount["name"] and "emptyDir" in v for v in pod["volumes"])
        ]
        for name in ("HOME", "TMPDIR", "AZCOPY_LOG_LOCATION", "AZCOPY_JOB_PLAN_LOCATION"):
            assert any(env[name] == path or env[name].startswith(path + "/") for path in writable), (kind, name)


def test_job_scratch_space_is_bounded_by_default():
    for kind in (JobKind.backup, JobKind.restore):
        resources = render_job(platform(), kind)["spec"]["template"]["spec"]["containers"][0]["resources"]
        request = quantity_bytes(resources["requests"]["ephemeral-storage"])
        limit = quantity_bytes(resources["limits"]["ephemeral-storage"])
        assert 0 < request <= limit


# --- the project image -----------------------------------------------------------------------------


def test_the_project_image_installs_exactly_what_pyproject_declares():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    pins = {re.split(r"[<>=\[ ]", d, maxsplit=1)[0]: d for d in dependencies}
    # the chart's storage, at the release matching the pinned dagster (1.X.Y <-> 0.(X+16).Y)
    major, minor, patch = pins["dagster"].split("==")[1].split(".")
    assert pins.get("dagster-postgres") == f"dagster-postgres==0.{int(minor) + 16}.{patch}"
    assert pins["dagster-k8s"] == f"dagster-k8s==0.{int(minor) + 16}.{patch}"

    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    logical = dockerfile.replace("\\\n", " ")
    installs = [line for line in logical.splitlines() if "pip install" in line]
    assert len(installs) == 1 and re.search(r"pip install --editable \.(\s|$)", installs[0]), installs
    assert "[" not in installs[0].split("pip install", 1)[1].split("&&")[0], "no extras (test, local)"
    copied = {line.split()[1] for line in logical.splitlines() if line.startswith("COPY ")}
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {"pyproject.toml", "templates", *(p.rstrip("*") for p in packages)} <= copied
    froms = [line.split()[1] for line in logical.splitlines() if line.startswith("FROM ")]
    assert froms == ["${PYTHON_BASE}"] and "ARG PYTHON_BASE\n" in dockerfile  # a digest from build.sh
    build = (DEPLOY / "image" / "build.sh").read_text()
    assert '--build-arg "PYTHON_BASE=$base"' in build and "RepoDigests" in build


# --- verify-full: a per-deployment CA signs every instance certificate ------------------------------


def test_instance_certificates_are_signed_by_the_deployments_ca(tmp_path):
    import base64

    from cryptography import x509

    from resources.platform import tls

    ca_cert, ca_key = tls.new_ca("toygres test CA")
    names = m.tls_names(deploy(internal=False), "westeurope")
    secret = m.tls_secret(INSTANCE, names, ca=(ca_cert, ca_key))
    validate(secret)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    authority = x509.load_pem_x509_certificate(ca_cert)
    cert.verify_directly_issued_by(authority)  # raises unless the CA signed it
    assert base64.b64decode(secret["data"]["ca.crt"]) == ca_cert
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "orders-copy.westeurope.cloudapp.azure.com" in sans
    # the CLI-side tool: a fresh CA written for `kubectl create secret tls`
    tls.main([str(tmp_path / "ca.crt"), str(tmp_path / "ca.key")])
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())


def test_with_a_ca_the_dns_connection_string_verifies_the_server():
    from records import Endpoints
    from toygres_pipelines.restores.steps import check_url
    from toygres_pipelines.shared.connections import connection_strings

    endpoints = Endpoints(
        host="orders-copy.westeurope.cloudapp.azure.com",
        port=5432,
        external_ip="203.0.113.7",
        dns_name="orders-copy.westeurope.cloudapp.azure.com",
        sslmode="require",
        dns_sslmode="verify-full",
    )
    strings = connection_strings(endpoints, password=None)
    assert strings.dns.endswith("?sslmode=verify-full")  # the name is in the CA-signed certificate
    assert strings.ip.endswith("?sslmode=require")  # an address is not: encrypted, not verified
    from pydantic import SecretStr

    assert check_url(endpoints, SecretStr("x")).endswith("?sslmode=require")  # the run holds no CA file


def test_the_platform_signs_with_the_ca_secret_of_the_instances_namespace(tmp_path):
    """Against the API stand-in: deploy_instance reads the CA Secret (tls_ca_secret) of the
    instance's namespace and stores a certificate it signed; endpoints offer verify-full."""
    import base64

    from cryptography import x509
    from k8s_fake_cluster import running_cluster

    from resources.platform import tls

    ca_cert, ca_key = tls.new_ca("toygres test CA")
    with running_cluster(tmp_path) as cluster:
        k8s = platform(
            kubeconfig_path=str(cluster.kubeconfig),
            tls_ca_secret="toygres-ca",
            load_balancer_source_ranges=["203.0.113.0/24"],
            azure_region="westeurope",
        )
        spec = deploy(internal=True)
        with pytest.raises(Exception, match="tls_ca_secret: Secret 'toygres-ca' .*toygres-instances"):
            k8s.deploy_instance(spec)
        k8s._core.create_namespaced_secret(
            INSTANCE.namespace,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "toygres-ca", "namespace": INSTANCE.namespace},
                "type": "kubernetes.io/tls",
                "data": {"tls.crt": base64.b64encode(ca_cert).decode(), "tls.key": base64.b64encode(ca_key).decode()},
            },
        )
        k8s.deploy_instance(spec)
        stored = k8s._core.read_namespaced_secret(m.tls_secret_name(INSTANCE), INSTANCE.namespace)
        cert = x509.load_pem_x509_certificate(base64.b64decode(stored.data["tls.crt"]))
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_cert))
        endpoints = k8s.endpoints(INSTANCE)
        assert endpoints.dns_sslmode == "verify-full" and endpoints.sslmode == "require"
