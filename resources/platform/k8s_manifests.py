"""Kubernetes manifests of the Kubernetes platform, rendered from `templates/*.yaml`.

Every template is loaded with `yaml.safe_load` into plain Python objects and the run-specific
fields are *set* on those objects: no value is ever substituted into YAML text, so a password
with quotes, backslashes, newlines or `{{` cannot break a manifest. Secrets are carried as
base64 `data` (the exact bytes) and referenced from pods by `secretKeyRef`; no password or SAS
ever appears in an env literal, a label or an annotation.

All functions here are pure (no API calls) so that tests can validate what they return against
the official Kubernetes schemas.

Why one module of this size: one renderer per template file, each short; splitting them apart
would scatter the naming rules (names, labels) they all share.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from records import DNS1123_LABEL, ImageType, InstanceRef, ValidationFailed, validate_azure_dns_label
from records.job_scripts import Supply, roles_of
from resources.platform.base import (
    AGE_IDENTITY_ENV,
    SCRIPTS_DIR,
    TEMPLATES_DIR,
    DeploySpec,
    JobKind,
    JobSpec,
    RestoreRoles,
    job_script_files,
)
from resources.platform.k8s_images import ManifestError, check_pinned_image
from resources.platform.k8s_pods import SERVE_CONTAINER
from resources.platform.k8s_settings import ManifestSettings
from resources.platform.tls import server_certificate
from resources.platform.wal_archiver import PGPASS_FILE, SAS_FILE
from resources.platform.wal_archiver_pool import ARCHIVERS_FILE, ArchiverSet

Manifest = dict[str, Any]

APP_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
TOYGRES_INSTANCE_LABEL = "toygres/instance"
TOYGRES_JOB_LABEL = "toygres/job"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
DNS_LABEL_ANNOTATION = "service.beta.kubernetes.io/azure-dns-label-name"
# Without it, AKS also allows the cluster's own load balancer rules around the ranges (cloud-provider-azure).
DENY_ALL_EXCEPT_RANGES_ANNOTATION = "service.beta.kubernetes.io/azure-deny-all-except-load-balancer-source-ranges"
ORIGINAL_LABELS_ANNOTATION = "toygres/original-labels"
# The sha256 of the spec a Deployment was rendered with: a different one means its settings changed.
SPEC_SHA256_ANNOTATION = "toygres/spec-sha256"

PASSWORD_KEY = "password"
SAS_KEY = "sas"
TLS_CERT_KEY = "tls.crt"
TLS_KEY_KEY = "tls.key"
CA_CERT_KEY = "ca.crt"
VERIFIED_SSLMODE = "verify-full"  # offered for the DNS name when the deployment's CA signs the certificates
# Clients get TLS without certificate verification: the certificate is per instance and self-signed.
CLIENT_SSLMODE = "require"
STARTUP_PROBE_PERIOD_SECONDS = 10
POSTGRES_PORT = 5432
SCRATCH_DIR = "/scratch"
SCRIPTS_MOUNT = "/scripts"
AGE_IDENTITY_KEY = "identities"
AGE_IDENTITY_MOUNT = "/var/run/toygres/age"
# The job's blob grant (resources/blob_sas.py): its Secret mounted as a file, never an env variable
# (a parallel image's grant can exceed the 128 KiB one variable may hold).
BLOB_GRANT_MOUNT = "/var/run/toygres/blob"
BLOB_GRANT_ENV = "AZCOPY_SAS_FILE"
# What the API server accepts in one Secret's data.
SECRET_MAX_BYTES = 1024 * 1024

# Environment variables a JobSpec may never carry as literals: they are secrets.
SECRET_ENV_NAMES = frozenset({"PGPASSWORD", "AZCOPY_SAS", "POSTGRES_PASSWORD", "PGPASSFILE"})

LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")  # fullmatch only
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


# --- names ------------------------------------------------------------------------------------


def instance_secret_name(instance: InstanceRef) -> str:
    return f"{instance.k8s_name}-secret"


def volume_name(instance: InstanceRef) -> str:
    return f"{instance.k8s_name}-data"


def config_name(instance: InstanceRef) -> str:
    return f"{instance.k8s_name}-config"


def server_name(instance: InstanceRef) -> str:
    """The StatefulSet's and the Service's name."""
    return instance.k8s_name


def headless_service_name(instance: InstanceRef) -> str:
    """The StatefulSet's governing Service (serviceName): stable pod DNS, no load balancing."""
    return f"{instance.k8s_name}-hl"


def tls_secret_name(instance: InstanceRef) -> str:
    return f"{instance.k8s_name}-tls"


def job_secret_name(job_name: str) -> str:
    return f"{job_name}-sas"


def service_dns_name(instance: InstanceRef) -> str:
    return f"{server_name(instance)}.{instance.namespace}.svc.cluster.local"


def check_dns_label(value: str, what: str, max_length: int = 63) -> str:
    if not value or len(value) > max_length or not DNS1123_LABEL.fullmatch(value):
        raise ManifestError(
            f"{what} {value!r} must be a DNS-1123 label of at most {max_length} characters"
            " (lowercase letters, digits and '-', starting and ending with a letter or digit)"
        )
    return value


def check_azure_dns_label(value: str) -> str:
    try:
        return validate_azure_dns_label(value, "dns_label")
    except ValidationFailed as error:
        raise ManifestError(str(error)) from error


def check_instance(instance: InstanceRef) -> None:
    # StatefulSet pods are <name>-<ordinal> and carry a controller-revision-hash label made
    # from the name: 52 characters is the longest StatefulSet name that always works.
    check_dns_label(instance.k8s_name, "instance name", max_length=52)
    check_dns_label(instance.namespace, "namespace")


def label_value(value: str) -> str:
    """`value` if it is a valid label value, else a valid, stable stand-in (prefix + hash)."""
    if len(value) <= 63 and LABEL_VALUE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[:50].strip("-_.")
    return f"{stem}-{digest}" if stem else digest


def check_label_key(key: str) -> str:
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > 63 or not LABEL_KEY_NAME.fullmatch(name):
        raise ManifestError(f"label key {key!r} is not a valid Kubernetes label key")
    if prefix and (len(prefix) > 253 or not all(DNS1123_LABEL.fullmatch(p) for p in prefix.split("."))):
        raise ManifestError(f"label key {key!r} has an invalid prefix")
    return key


def _b64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


# --- templates --------------------------------------------------------------------------------


@cache
def _template_text(name: str) -> str:
    return (TEMPLATES_DIR / name).read_text(encoding="utf-8")


def load_template(name: str) -> Manifest:
    """A fresh, mutable copy of `templates/<name>` as Python objects."""
    return copy.deepcopy(yaml.safe_load(_template_text(name)))


def _meta(manifest: Manifest, name: str, namespace: str, labels: dict[str, str] | None = None) -> Manifest:
    meta = manifest.setdefault("metadata", {})
    meta["name"] = name
    meta["namespace"] = namespace
    meta.setdefault("labels", {}).update(labels or {})
    return manifest


def _resources(spec: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {kind: dict(values) for kind, values in spec.items() if values}


def _instance_labels(instance: InstanceRef) -> dict[str, str]:
    return {INSTANCE_LABEL: instance.k8s_name, TOYGRES_INSTANCE_LABEL: instance.k8s_name}


# --- instance objects -------------------------------------------------------------------------


def instance_secret(instance: InstanceRef, password: str) -> Manifest:
    check_instance(instance)
    manifest = _meta(
        load_template("postgres-secret.yaml"),
        instance_secret_name(instance),
        instance.namespace,
        _instance_labels(instance),
    )
    manifest["data"] = {PASSWORD_KEY: _b64(password)}
    manifest.pop("stringData", None)
    return manifest


def decode_secret_value(secret_data: dict[str, str] | None, key: str) -> str | None:
    if not secret_data or secret_data.get(key) is None:
        return None
    return base64.b64decode(secret_data[key]).decode("utf-8")


def volume_claim(instance: InstanceRef, size_gb: int, settings: ManifestSettings) -> Manifest:
    check_instance(instance)
    if size_gb < 1:
        raise ManifestError(f"volume size must be at least 1 GB, got {size_gb}")
    manifest = _meta(
        load_template("postgres-pvc.yaml"), volume_name(instance), instance.namespace, _instance_labels(instance)
    )
    manifest["spec"]["resources"]["requests"]["storage"] = f"{size_gb}Gi"
    if settings.storage_class:
        manifest["spec"]["storageClassName"] = settings.storage_class
    return manifest


def hba_config(instance: InstanceRef) -> Manifest:
    check_instance(instance)
    return _meta(
        load_template("postgres-config.yaml"), config_name(instance), instance.namespace, _instance_labels(instance)
    )


def postgres_image(spec: DeploySpec, settings: ManifestSettings) -> tuple[str, str | None]:
    """(image, pull secret or None) for a deployment."""
    if spec.image_override:
        pull = settings.pg_durable_pull_secret if spec.image_type is ImageType.pg_durable else None
        return spec.image_override, pull
    if spec.image_type is ImageType.pg_durable:
        images, pull = settings.pg_durable_images, settings.pg_durable_pull_secret
    else:
        images, pull = settings.postgres_images, None
    image = images.get(str(spec.postgres_version))
    if image is None and spec.image_type is ImageType.stock:
        # The job image of the major: the very build (FROM postgres:<major>-bookworm@digest) that
        # restored the data directory, so its collations match the server's glibc.
        image = settings.job_images.get(str(spec.postgres_version))
    if image is None:
        raise ManifestError(
            f"no {spec.image_type.value} image configured for PostgreSQL {spec.postgres_version}"
            f" (configured: {sorted(images)})"
        )
    return image, pull


def _security_context(pod_spec: Manifest, settings: ManifestSettings) -> None:
    ctx = pod_spec.setdefault("securityContext", {})
    ctx.update(runAsUser=settings.run_as_user, runAsGroup=settings.run_as_group, fsGroup=settings.fs_group)


def statefulset(spec: DeploySpec, settings: ManifestSettings) -> Manifest:
    instance = spec.instance
    check_instance(instance)
    name = server_name(instance)
    labels = _instance_labels(instance)
    manifest = _meta(load_template("postgres-statefulset.yaml"), name, instance.namespace, labels)
    sts = manifest["spec"]
    sts["serviceName"] = headless_service_name(instance)
    sts["selector"]["matchLabels"][INSTANCE_LABEL] = name
    sts["template"]["metadata"]["labels"].update(labels)
    pod = sts["template"]["spec"]
    _security_context(pod, settings)
    pod["terminationGracePeriodSeconds"] = settings.postgres_termination_grace_seconds
    image, pull_secret = postgres_image(spec, settings)
    if pull_secret:
        pod["imagePullSecrets"] = [{"name": pull_secret}]
    else:
        pod.pop("imagePullSecrets", None)
    container = pod["containers"][0]
    container["image"] = image
    pgdata = f"{settings.volume_mount_path.rstrip('/')}/pgdata"
    env = {item["name"]: item for item in container["env"]}
    env["PGDATA"]["value"] = pgdata
    env["POSTGRES_USER"]["value"] = settings.superuser
    env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] = instance_secret_name(instance)
    probe = ["pg_isready", "-h", "127.0.0.1", "-p", str(POSTGRES_PORT), "-U", settings.superuser]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[kind]["exec"]["command"] = list(probe)
    container["startupProbe"]["periodSeconds"] = STARTUP_PROBE_PERIOD_SECONDS
    container["startupProbe"]["failureThreshold"] = -(-settings.startup_timeout_seconds // STARTUP_PROBE_PERIOD_SECONDS)
    # Kubernetes stops with SIGTERM, postgres' "smart" shutdown that waits for every client:
    # ask for a fast one first, bounded by the grace period.
    stop_wait = max(1, settings.postgres_termination_grace_seconds - 10)
    container["lifecycle"]["preStop"]["exec"]["command"] = [
        "pg_ctl",
        "stop",
        "-D",
        pgdata,
        "-m",
        "fast",
        "-w",
        "-t",
        str(stop_wait),
    ]
    container["resources"] = _resources(settings.postgres_resources)
    # On the command line, above postgresql.auto.conf: a tenant's ALTER SYSTEM cannot lift it.
    container["args"] += ["-c", f"max_slot_wal_keep_size={settings.wal_slot_max_keep_mb}MB"]
    for mount in container["volumeMounts"]:
        if mount["name"] == "data":
            mount["mountPath"] = settings.volume_mount_path
    for volume in pod["volumes"]:
        if volume["name"] == "data":
            volume["persistentVolumeClaim"]["claimName"] = volume_name(instance)
        elif volume["name"] == "config":
            volume["configMap"]["name"] = config_name(instance)
        elif volume["name"] == "tls":
            volume["secret"]["secretName"] = tls_secret_name(instance)
        elif volume["name"] == "dshm":
            volume["emptyDir"]["sizeLimit"] = settings.shm_size_limit
    return manifest


def headless_service(spec: DeploySpec) -> Manifest:
    instance = spec.instance
    check_instance(instance)
    manifest = _meta(
        load_template("postgres-headless-service.yaml"),
        headless_service_name(instance),
        instance.namespace,
        _instance_labels(instance),
    )
    manifest["spec"]["selector"][INSTANCE_LABEL] = server_name(instance)
    return manifest


def tls_names(spec: DeploySpec, azure_region: str | None) -> list[str]:
    """DNS names the instance's certificate covers: its public name (when known) and its Service's."""
    instance = spec.instance
    service_name = f"{server_name(instance)}.{instance.namespace}.svc"
    names = [] if spec.internal or not azure_region else [f"{spec.dns_label}.{azure_region}.cloudapp.azure.com"]
    return names + [service_dns_name(instance), service_name, server_name(instance)]


def tls_secret(instance: InstanceRef, dns_names: list[str], ca: tuple[bytes, bytes] | None = None) -> Manifest:
    """The instance's server certificate as a kubernetes.io/tls Secret: signed by the deployment's
    CA (certificate PEM, key PEM; its certificate kept as ca.crt) when given, else self-signed."""
    check_instance(instance)
    cert_pem, key_pem = server_certificate(dns_names, ca)
    manifest = _meta(
        load_template("postgres-tls-secret.yaml"),
        tls_secret_name(instance),
        instance.namespace,
        _instance_labels(instance),
    )
    manifest["data"] = {
        TLS_CERT_KEY: base64.b64encode(cert_pem).decode("ascii"),
        TLS_KEY_KEY: base64.b64encode(key_pem).decode("ascii"),
    }
    if ca is not None:
        manifest["data"][CA_CERT_KEY] = base64.b64encode(ca[0]).decode("ascii")
    return manifest


PUBLIC_WITHOUT_RANGES = (
    "a public instance needs load_balancer_source_ranges (TOYGRES_K8S_LOAD_BALANCER_SOURCE_RANGES): without them"
    " Azure opens port 5432 to the whole Internet; request internal: true, or set"
    " allow_public_without_source_ranges (TOYGRES_K8S_ALLOW_PUBLIC_WITHOUT_SOURCE_RANGES) to accept that"
)


def service(spec: DeploySpec, settings: ManifestSettings) -> Manifest:
    instance = spec.instance
    check_instance(instance)
    manifest = _meta(
        load_template("postgres-service.yaml"), server_name(instance), instance.namespace, _instance_labels(instance)
    )
    manifest["spec"]["selector"][INSTANCE_LABEL] = server_name(instance)
    annotations = manifest["metadata"].setdefault("annotations", {})
    if spec.internal:
        manifest["spec"]["type"] = "ClusterIP"
        annotations.pop(DNS_LABEL_ANNOTATION, None)
    else:
        check_azure_dns_label(spec.dns_label)
        manifest["spec"]["type"] = "LoadBalancer"
        annotations[DNS_LABEL_ANNOTATION] = spec.dns_label
        if settings.load_balancer_source_ranges:
            manifest["spec"]["loadBalancerSourceRanges"] = list(settings.load_balancer_source_ranges)
            annotations[DENY_ALL_EXCEPT_RANGES_ANNOTATION] = "true"
        elif not settings.allow_public_without_source_ranges:
            raise ManifestError(PUBLIC_WITHOUT_RANGES)
    if not annotations:
        manifest["metadata"].pop("annotations")
    return manifest


# --- jobs -------------------------------------------------------------------------------------


def script_files(scripts_dir: Path = SCRIPTS_DIR) -> dict[str, bytes]:
    """The job scripts, exactly as the local platform copies them."""
    return {path.name: path.read_bytes() for path in job_script_files(scripts_dir)}


def scripts_config_map(namespace: str, files: dict[str, bytes] | None = None) -> Manifest:
    """The immutable ConfigMap holding the job scripts; its name carries a content hash."""
    files = script_files() if files is None else files
    digest = hashlib.sha256()
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name in sorted(files):
        content = files[name]
        digest.update(name.encode() + b"\0" + content + b"\0")
        try:
            data[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[name] = base64.b64encode(content).decode("ascii")
    manifest = _meta(
        load_template("job-scripts-configmap.yaml"), f"toygres-job-scripts-{digest.hexdigest()[:12]}", namespace
    )
    manifest["data"] = data
    if binary:
        manifest["binaryData"] = binary
    return manifest


def config_map_files(manifest: Manifest) -> dict[str, bytes]:
    """What a ConfigMap volume would write to disk: file name -> bytes."""
    files = {name: text.encode("utf-8") for name, text in (manifest.get("data") or {}).items()}
    files |= {name: base64.b64decode(b64) for name, b64 in (manifest.get("binaryData") or {}).items()}
    return files


def job_secret(spec: JobSpec, grant: str, password_verifier: str | None = None) -> Manifest:
    """The job's own Secret (deleted with the Job): its blob grant (mounted into the job container
    only) and, for a restore, the SCRAM verifier of the instance's password (mounted into the
    serve container only)."""
    if len(grant.encode()) > SECRET_MAX_BYTES:
        raise ManifestError(
            f"job {spec.name}: its blob grant takes {len(grant.encode())} bytes, more than one Secret holds"
            f" ({SECRET_MAX_BYTES}): the image has too many files for one restore job"
        )
    labels = {TOYGRES_JOB_LABEL: spec.name, TOYGRES_INSTANCE_LABEL: spec.instance.k8s_name}
    manifest = _meta(load_template("job-secret.yaml"), job_secret_name(spec.name), spec.instance.namespace, labels)
    manifest["data"] = {SAS_KEY: _b64(grant)}
    if password_verifier is not None:
        manifest["data"][VERIFIER_KEY] = _b64(password_verifier)
    return manifest


def _env_value(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}


def _env_secret(name: str, secret: str, key: str) -> Manifest:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def job_env(spec: JobSpec, settings: ManifestSettings) -> list[Manifest]:
    """The job container's environment: the process's basics, then the script's model's environment
    (JobSpec.env and, of what this platform offers, what the model declares as the platform's); its
    secret_ref variables by secretKeyRef, its secret_file ones as paths of mounted Secrets."""
    leaked = SECRET_ENV_NAMES & set(spec.env)
    if leaked:
        raise ManifestError(f"JobSpec.env may not carry secrets ({sorted(leaked)}): they travel by reference")
    try:
        model = roles_of(spec.script)[0]
    except ValueError as error:
        raise ManifestError(f"job {spec.name}: {error}") from None
    instance = spec.instance
    offers: dict[str, str | None] = {
        "TMPDIR": SCRATCH_DIR,
        "AZCOPY_LOG_LOCATION": f"{SCRATCH_DIR}/azcopy-logs",
        "TOYGRES_JOB": spec.name,
        BLOB_GRANT_ENV: f"{BLOB_GRANT_MOUNT}/{SAS_KEY}",
        "AZCOPY_BUFFER_GB": azcopy_buffer_gb(spec, settings),
        "PGHOST": service_dns_name(instance),
        "PGPORT": str(POSTGRES_PORT),
        "PGUSER": settings.superuser,
        "PGSSLMODE": CLIENT_SSLMODE,
        RestoreRoles.handoff_env: restore_handoff(settings),
        "VOLUME_PATH": settings.volume_mount_path,
        "POSTGRES_USER": settings.superuser,
    }
    wanted = model.variables(Supply.platform, Supply.secret_file)
    platform = {name: value for name, value in offers.items() if value is not None and name in wanted}
    values: dict[str, str] = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": SCRATCH_DIR,
        "AZCOPY_JOB_PLAN_LOCATION": f"{SCRATCH_DIR}/azcopy-plans",
        **model.environment(spec.env, platform),
    }
    env = [_env_value(name, value) for name, value in values.items()]
    for name in sorted(model.variables(Supply.secret_ref)):
        if name != "PGPASSWORD":
            raise ManifestError(f"job {spec.name}: no Secret holds {name}")
        env.append(_env_secret(name, instance_secret_name(instance), PASSWORD_KEY))
    return env


def restore_handoff(settings: ManifestSettings) -> str:
    return f"{settings.volume_mount_path.rstrip('/')}/{RESTORE_HANDOFF_DIR}"


MEMORY_UNITS = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}
# The share of the job's memory limit all azcopy buffers together may take; the rest is for
# pg_dump/pg_restore, age, bash and the page cache of the scratch disk.
AZCOPY_MEMORY_SHARE = 0.5


def memory_bytes(quantity: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", quantity)
    if match is None:
        raise ManifestError(f"memory quantity {quantity!r}: expected a number with an optional unit such as 2Gi")
    return int(float(match.group(1)) * MEMORY_UNITS[match.group(2) or ""])


def concurrent_transfers(spec: JobSpec) -> int:
    """How many azcopy processes a job runs at once (parallel mode: one per file in flight)."""
    try:
        return max(1, *(int(spec.env.get(name, "1")) for name in PARALLELISM_ENV))
    except ValueError as error:
        raise ManifestError(f"job {spec.name}: {'/'.join(PARALLELISM_ENV)} must be integers ({error})") from None


def azcopy_buffer_gb(spec: JobSpec, settings: ManifestSettings) -> str | None:
    """AZCOPY_BUFFER_GB: azcopy's default is 0.5 GB per CPU *of the node* (not of the pod), per
    process; the Job's memory limit shared among its concurrent transfers decides instead."""
    if not settings.job_memory_limit:
        return None
    share = memory_bytes(settings.job_memory_limit) * AZCOPY_MEMORY_SHARE / concurrent_transfers(spec) / 2**30
    return f"{max(int(share * 100) / 100, 0.01):.2f}"


def job_labels(spec: JobSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations): JobSpec.labels made valid, originals kept in an annotation."""
    labels: dict[str, str] = {}
    changed: dict[str, str] = {}
    for key, value in spec.labels.items():
        check_label_key(key)
        labels[key] = label_value(value)
        if labels[key] != value:
            changed[key] = value
    labels |= {TOYGRES_INSTANCE_LABEL: spec.instance.k8s_name, TOYGRES_JOB_LABEL: spec.name}
    annotations = (
        {ORIGINAL_LABELS_ANNOTATION: yaml.safe_dump(changed, default_flow_style=True).strip()} if changed else {}
    )
    return labels, annotations


def job_image(spec: JobSpec, settings: ManifestSettings) -> str:
    """The job image of the spec's PostgreSQL major: a restore's initdb must match the server that
    later opens the data directory, and pg_dump must be at least the source's major."""
    version = spec.env.get("POSTGRES_VERSION")
    if not version:
        raise ManifestError(f"job {spec.name}: JobSpec.env has no POSTGRES_VERSION to choose the job image by")
    image = settings.job_images.get(version)
    if image is None:
        configured = ", ".join(sorted(settings.job_images)) or "none"
        raise ManifestError(f"no job image for PostgreSQL {version} (job_images has: {configured})")
    return check_pinned_image(image, f"job_images[{version!r}]")


# pg_dump -j N (backup) and pg_restore -j N (restore): each job compresses or loads on a CPU of its own.
PARALLELISM_ENV = ("PARALLEL_JOBS", "RESTORE_JOBS")


def _cpu_millis(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else round(float(quantity) * 1000)


def job_resources(spec: JobSpec, settings: ManifestSettings) -> dict[str, dict[str, str]]:
    """The settings' requests and limits; a parallel job requests one CPU per pg_dump/pg_restore job,
    and a configured CPU limit below that is raised to it (the API server refuses a request above
    its limit)."""
    resources = _resources(settings.job_resources)
    try:
        jobs = max(int(spec.env.get(name, "1")) for name in PARALLELISM_ENV)
    except ValueError as error:
        raise ManifestError(f"job {spec.name}: {'/'.join(PARALLELISM_ENV)} must be integers ({error})") from None
    if jobs <= 1:
        return resources
    for kind in ("requests", "limits"):
        current = resources.get(kind, {}).get("cpu")
        if (kind == "requests" or current is not None) and (current is None or _cpu_millis(current) < jobs * 1000):
            resources.setdefault(kind, {})["cpu"] = str(jobs)
    return resources


def job(spec: JobSpec, settings: ManifestSettings, scripts_config_map_name: str) -> Manifest:
    check_dns_label(spec.name, "job name")
    check_instance(spec.instance)
    if "/" in spec.script or not spec.script.endswith(".sh"):
        raise ManifestError(f"job script {spec.script!r} must be a file name under templates/scripts/")
    template = "backup-job.yaml" if spec.kind is JobKind.backup else "restore-job.yaml"
    manifest = load_template(template)
    labels, annotations = job_labels(spec)
    _meta(manifest, spec.name, spec.instance.namespace, labels)
    if annotations:
        manifest["metadata"].setdefault("annotations", {}).update(annotations)
    job_spec = manifest["spec"]
    job_spec["backoffLimit"] = settings.backoff_limit
    job_spec["ttlSecondsAfterFinished"] = settings.job_ttl_seconds
    job_spec["activeDeadlineSeconds"] = spec.timeout_seconds
    pod_meta = job_spec["template"]["metadata"]
    pod_meta["labels"].update(labels)
    # No job holds the deployment's identity: its grant is all it reaches blob storage with, so the
    # webhook must not inject the identity's token (docs/security.md, "Blob storage access").
    pod_meta["labels"].pop(WORKLOAD_IDENTITY_LABEL, None)
    pod = job_spec["template"]["spec"]
    pod["serviceAccountName"] = settings.service_account_name
    _security_context(pod, settings)
    if settings.job_image_pull_secret:
        pod["imagePullSecrets"] = [{"name": settings.job_image_pull_secret}]
    container = pod["containers"][0]
    container["env"] = job_env(spec, settings)
    container["image"] = job_image(spec, settings)
    container["command"] = ["bash", f"{SCRIPTS_MOUNT}/{spec.script}"]
    container["resources"] = job_resources(spec, settings)
    for mount in container["volumeMounts"]:
        if mount["name"] == "data":
            mount["mountPath"] = settings.volume_mount_path
    for volume in pod["volumes"]:
        if volume["name"] == "scripts":
            volume["configMap"]["name"] = scripts_config_map_name
        elif volume["name"] == "data":
            volume["persistentVolumeClaim"]["claimName"] = volume_name(spec.instance)
        elif volume["name"] == "scratch" and settings.scratch_size_limit:
            volume["emptyDir"] = {"sizeLimit": settings.scratch_size_limit}
    mount_blob_grant(pod, job_secret_name(spec.name))
    if RestoreRoles.splits(spec):
        _restore_roles(pod, spec, settings, container)
    elif spec.kind is JobKind.restore:
        raise ManifestError(f"job script {spec.script!r}: a restore runs as fetch and serve roles, it has none")
    if settings.age_identity_secret and AGE_IDENTITY_ENV in roles_of(spec.script)[0].variables(Supply.secret_file):
        mount_age_identities(pod, settings.age_identity_secret)
    return manifest


RESTORE_HANDOFF_DIR = "restore-handoff"
VERIFIER_KEY = "password-verifier"
VERIFIER_MOUNT = "/var/run/toygres/verifier"


def _restore_roles(pod: Manifest, spec: JobSpec, settings: ManifestSettings, fetch: Manifest) -> None:
    """A restore pod's two containers (RestoreRoles): `job` runs the fetch role as its own user (in
    the volume's group: it hands files over), `serve` runs the image's code as the server's user
    with a scrubbed environment, no Secret but the password's verifier, no workload identity token."""
    if settings.restore_fetch_user == settings.run_as_user:
        raise ManifestError("restore_fetch_user: must differ from run_as_user (the user of the serve container)")
    handoff = restore_handoff(settings)
    fetch["securityContext"] |= {"runAsUser": settings.restore_fetch_user, "runAsGroup": settings.fs_group}
    serve = next(c for c in pod["containers"] if c["name"] == SERVE_CONTAINER)
    serve["image"] = fetch["image"]
    serve["command"] = ["bash", f"{SCRIPTS_MOUNT}/{RestoreRoles.serve_script_of(spec)}"]
    serve["resources"] = fetch["resources"]
    serve["securityContext"] |= {"runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_group}
    model = RestoreRoles.serve_of(spec)
    offers = {
        "TMPDIR": "/tmp",
        "TOYGRES_JOB": spec.name,
        "VOLUME_PATH": settings.volume_mount_path,
        RestoreRoles.handoff_env: handoff,
        RestoreRoles.password_verifier_env: f"{VERIFIER_MOUNT}/{VERIFIER_KEY}",
        "POSTGRES_USER": settings.superuser,
        **({RestoreRoles.refuse_dangerous_env: "1"} if settings.refuse_dangerous_images else {}),
    }
    values = {
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/tmp",
        **model.environment(spec.env, {name: value for name, value in offers.items() if name in model.variables()}),
    }
    serve["env"] = [_env_value(name, value) for name, value in values.items()]
    for mount in serve["volumeMounts"]:
        if mount["name"] == "data":
            mount["mountPath"] = settings.volume_mount_path
    for volume in pod["volumes"]:
        if volume["name"] == "password-verifier":
            volume["secret"]["secretName"] = job_secret_name(spec.name)


def restore_network_policy(namespace: str, settings: ManifestSettings) -> Manifest:
    """Restore pods: no ingress; egress to DNS and to `restore_egress_cidrs` on 443 only (blob storage)."""
    manifest = _meta(load_template("restore-network-policy.yaml"), RESTORE_NETWORK_POLICY, namespace, {})
    egress = manifest["spec"]["egress"]
    if settings.restore_egress_cidrs:
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": cidr}} for cidr in settings.restore_egress_cidrs],
                "ports": [{"protocol": "TCP", "port": 443}],
            }
        )
    return manifest


RESTORE_NETWORK_POLICY = "toygres-restore-jobs"


def mount_blob_grant(pod: Manifest, secret_name: str) -> None:
    """The job's blob grant, read-only, as the file AZCOPY_SAS_FILE names."""
    pod["volumes"].append(
        {
            "name": "blob-grant",
            # 0440: the job's group (fsGroup) reads it, nobody writes it
            "secret": {"secretName": secret_name, "items": [{"key": SAS_KEY, "path": SAS_KEY}], "defaultMode": 0o440},
        }
    )
    pod["containers"][0]["volumeMounts"].append({"name": "blob-grant", "mountPath": BLOB_GRANT_MOUNT, "readOnly": True})


def mount_age_identities(pod: Manifest, secret_name: str) -> None:
    """The age private keys, read-only, into a restore pod: only restores decrypt images."""
    check_dns_label(secret_name, "age_identity_secret")
    pod["volumes"].append(
        {
            "name": "age-identities",
            # 0440: the job's group (fsGroup) reads the keys, nobody writes them
            "secret": {
                "secretName": secret_name,
                "items": [{"key": AGE_IDENTITY_KEY, "path": AGE_IDENTITY_KEY}],
                "defaultMode": 0o440,
            },
        }
    )
    container = pod["containers"][0]
    container["volumeMounts"].append({"name": "age-identities", "mountPath": AGE_IDENTITY_MOUNT, "readOnly": True})
    container["env"].append(_env_value(AGE_IDENTITY_ENV, f"{AGE_IDENTITY_MOUNT}/{AGE_IDENTITY_KEY}"))


# --- the WAL archiver of an instance namespace (docs/pitr.md) ---------------------------------

WAL_ARCHIVER_NAME = "toygres-wal-archiver"
WAL_ARCHIVER_COMPONENT = "wal-archiver"
WAL_ARCHIVER_CONFIG_KEYS = (ARCHIVERS_FILE, PGPASS_FILE, SAS_FILE)
# pg_receivewal of the archiver image (the project image's PGDG client: it streams from every older major).
ARCHIVER_BINDIR = "/usr/lib/postgresql/17/bin"


def wal_archiver_secret(namespace: str, archivers: ArchiverSet, pgpass: str, sas: str) -> Manifest:
    manifest = _meta(load_template("wal-archiver-secret.yaml"), WAL_ARCHIVER_NAME, namespace)
    files = {ARCHIVERS_FILE: archivers.model_dump_json(), PGPASS_FILE: pgpass, SAS_FILE: sas}
    manifest["data"] = {key: _b64(value) for key, value in files.items()}
    return manifest


def wal_archiver_deployment(namespace: str, settings: ManifestSettings) -> Manifest:
    if settings.archiver_image is None:
        raise ManifestError("archiver_image: not set, so no WAL archiver can run (docs/pitr.md)")
    manifest = _meta(load_template("wal-archiver-deployment.yaml"), WAL_ARCHIVER_NAME, namespace)
    pod = manifest["spec"]["template"]["spec"]
    pod["serviceAccountName"] = settings.service_account_name
    [container] = pod["containers"]
    container["image"] = settings.archiver_image
    container["resources"] = _resources(settings.archiver_resources)
    if settings.job_image_pull_secret:
        pod["imagePullSecrets"] = [{"name": settings.job_image_pull_secret}]
    for volume in pod["volumes"]:
        if volume["name"] == "config":
            volume["secret"]["secretName"] = WAL_ARCHIVER_NAME
    digest = hashlib.sha256(json.dumps(manifest["spec"], sort_keys=True).encode()).hexdigest()
    manifest["metadata"].setdefault("annotations", {})[SPEC_SHA256_ANNOTATION] = digest
    return manifest


def merge_patch(current: object, wanted: object) -> object:
    """The JSON merge patch (RFC 7386) turning `current` into `wanted`: keys `wanted` lacks are
    removed (null), so a setting taken away (a pull secret, a limit) goes too; fields the API server
    defaults come back as its defaults."""
    if not isinstance(current, dict) or not isinstance(wanted, dict):
        return wanted
    patch: dict[str, object] = {key: None for key in current if key not in wanted}
    for key, value in wanted.items():
        patch[key] = merge_patch(current.get(key), value)
    return patch
