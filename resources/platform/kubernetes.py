"""The Kubernetes platform: job scripts run as Kubernetes Jobs, volumes are PVCs, instances are
StatefulSets behind a Service, passwords live in Secrets.

    instance <k8s_name> in <namespace>:
      Secret      <k8s_name>-secret   (key `password`)
      PVC         <k8s_name>-data     (PGDATA = <volume_mount_path>/pgdata)
      Secret      <k8s_name>-tls      (the instance's TLS certificate and key; ssl=on)
      ConfigMap   <k8s_name>-config   (pg_hba.conf, passed as hba_file: hostssl only)
      Service     <k8s_name>-hl       (headless, the StatefulSet's serviceName)
      StatefulSet <k8s_name>          (1 replica, startup/readiness/liveness: pg_isready)
      Service     <k8s_name>          (LoadBalancer + Azure DNS label, or ClusterIP when internal)
    The namespace is the request's or the platform's `namespace`; only enabled ones are accepted
    (`resolve_namespace`, at request time).
    job <JobSpec.name> in the instance's namespace (image: job_images[POSTGRES_VERSION]):
      ConfigMap   toygres-job-scripts-<hash>  (templates/scripts/*, byte for byte, immutable)
      Secret      <job>-sas           (the job's blob grant, JobSpec.blob_sas, mounted as a file; deleted with the job)
      Job         <job>               (bash /scripts/<JobSpec.script>)

Manifests come from `templates/*.yaml` via `k8s_manifests` (objects, never text substitution).
API access: the official client; in-cluster config inside a pod, a kubeconfig otherwise.
Waiting on Jobs uses dagster-k8s' `DagsterKubernetesClient` for the reads (job status with
retries on transient API errors, the job's pods, pod logs); the decision "finished or not" is
taken from the Job's conditions (Complete / Failed), not from pod counts, so a failed pod that
the Job will retry (backoffLimit) is not mistaken for a failed job.

Why one module of this size: it is the PlatformResource over one API, and each method is one
step of the platform contract (base.py); rendering (k8s_manifests), settings (k8s_settings),
image pinning (k8s_images) and pod status/log following (k8s_pods) live beside it.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kubernetes
from dagster_k8s.client import DagsterKubernetesClient, PatchedApiClient
from kubernetes.client import ApiException
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from records import Endpoints, ImageType, InstanceRef, JobResult, ValidationFailed, validate_dns_label
from records.passwords import scram_sha256_verifier
from resources.blob_sas import grant_secrets
from resources.platform import k8s_manifests as m
from resources.platform.base import (
    DeploySpec,
    JobFailed,
    JobSpec,
    LogSink,
    PlatformError,
    PlatformResource,
    RestoreRoles,
    WalArchiverSpec,
)
from resources.platform.k8s_pods import (
    SERVE_CONTAINER,
    PodFollower,
    PodLogCollector,
    job_outcome,
    last_pod_state,
    pending_reason,
    phase,
    pod_started,
)
from resources.platform.postgres_server import pgpass_line
from resources.platform.wal_archiver import PGPASS_FILE, SAS_FILE, ArchiverConfig
from resources.platform.wal_archiver_pool import ARCHIVERS_FILE, ArchiverSet, key_of, last_errors

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
ARCHIVER_LOG_TAIL = 5000  # lines of the archiver pod's log read for an instance's last status


class KubernetesPlatform(m.ManifestSettings, PlatformResource):
    """Runs job scripts as Kubernetes Jobs and instances as StatefulSets (AKS in production).

    The settings the manifests use are `ManifestSettings` fields (declared there, once); the
    fields below are about reaching the API and following jobs.
    """

    namespace: str = Field(
        default="toygres-instances",
        description="Namespace of instances when a request names none; never Dagster's own (see docs/kubernetes.md)",
    )
    instance_namespaces: list[str] = Field(
        default=[],
        description="Further namespaces a request may name; each needs the deploy files of "
        "deploy/kubernetes/instances/ (python -m resources.platform.k8s_instance_namespace <namespace>)",
    )
    pod_pending_timeout_seconds: int = Field(
        default=600, description="Fail a job whose pod never starts (unschedulable, image pull...) after this"
    )
    deadline_grace_seconds: int = Field(
        default=30, description="Client-side wait beyond the Job's activeDeadlineSeconds (= JobSpec.timeout_seconds)"
    )
    poll_interval_seconds: float = Field(default=3.0, description="Status polling interval of every wait")
    log_drain_seconds: float = Field(default=10.0, description="How long to wait for log streams after a job ends")
    log_tail_lines: int = 200
    request_timeout_seconds: float = Field(default=30.0, description="Timeout of every single API request")
    azure_region: str | None = Field(
        default=None, description="Region for DNS names <dns_label>.<region>.cloudapp.azure.com"
    )
    kubeconfig_path: str | None = Field(
        default=None, description="kubeconfig file; None: in-cluster config in a pod, else the default kubeconfig"
    )
    kube_context: str | None = None

    _api_client: Any = PrivateAttr(default=None)

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_label(cls, value: str) -> str:
        return _label(value, "namespace")

    @field_validator("instance_namespaces")
    @classmethod
    def _namespaces_are_labels(cls, value: list[str]) -> list[str]:
        return [_label(namespace, "instance_namespaces") for namespace in value]

    @model_validator(mode="after")
    def _identities_have_a_secret(self) -> KubernetesPlatform:
        if self.age_identity_recipients and not self.age_identity_secret:
            raise ValueError("age_identity_secret: required when age_identity_recipients names any recipient")
        return self

    # --- request-time rules ------------------------------------------------------------------

    def enabled_namespaces(self) -> list[str]:
        return [self.namespace, *(n for n in self.instance_namespaces if n != self.namespace)]

    def resolve_namespace(self, requested: str | None) -> str:
        namespace = validate_dns_label(requested or self.namespace, "namespace")
        enabled = self.enabled_namespaces()
        if namespace not in enabled:
            raise ValidationFailed(
                "namespace",
                f"{namespace!r} is not enabled for instances (enabled: {', '.join(enabled)}); a deployment enables "
                "a namespace with TOYGRES_K8S_INSTANCE_NAMESPACES and its deploy files (docs/kubernetes.md)",
            )
        return namespace

    def check_postgres_version(self, version: str, field: str, subject: str = "the request") -> None:
        if str(version) not in self.job_images:
            configured = ", ".join(sorted(self.job_images)) or "none"
            raise ValidationFailed(
                field,
                f"{subject} is PostgreSQL {version} and this deployment has no job image for it "
                f"(TOYGRES_K8S_JOB_IMAGES has: {configured})",
            )

    def check_exposure(self, internal: bool) -> None:
        if not internal and not self.load_balancer_source_ranges and not self.allow_public_without_source_ranges:
            raise ValidationFailed("internal", m.PUBLIC_WITHOUT_RANGES)

    def check_server_image(self, version: str, image_type: ImageType, field: str, subject: str = "the request") -> None:
        # A stock server without a configured image runs the job image of its major (checked by
        # check_postgres_version); pg_durable has no such default.
        if image_type is ImageType.pg_durable and str(version) not in self.pg_durable_images:
            configured = ", ".join(sorted(self.pg_durable_images, key=int)) or "none"
            raise ValidationFailed(
                field,
                f"{subject} is PostgreSQL {version} and this deployment has no pg_durable server image for it "
                f"(configured: {configured})",
            )

    # --- API access --------------------------------------------------------------------------

    def with_api_client(self, api_client: kubernetes.client.ApiClient) -> KubernetesPlatform:
        """Use this API client instead of building one from the configuration (tests, tools)."""
        self._api_client = api_client
        return self

    def _client(self) -> kubernetes.client.ApiClient:
        if self._api_client is None:
            configuration = kubernetes.client.Configuration()
            if self.kubeconfig_path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                kubernetes.config.load_incluster_config(client_configuration=configuration)
            else:
                kubernetes.config.load_kube_config(
                    config_file=self.kubeconfig_path,
                    context=self.kube_context,
                    client_configuration=configuration,
                )
            self._api_client = PatchedApiClient(configuration)
        return self._api_client

    @property
    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self._client())

    @property
    def _batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self._client())

    @property
    def _apps(self) -> kubernetes.client.AppsV1Api:
        return kubernetes.client.AppsV1Api(self._client())

    @property
    def _dagster(self) -> DagsterKubernetesClient:
        return DagsterKubernetesClient(
            batch_api=self._batch,
            core_api=self._core,
            logger=logger.debug,
            sleeper=time.sleep,
            timer=time.monotonic,
        )

    def settings(self) -> m.ManifestSettings:
        return m.ManifestSettings.model_validate(self.model_dump(include=set(m.ManifestSettings.model_fields)))

    def _timeout(self) -> float:
        return self.request_timeout_seconds

    # --- generic object handling ---------------------------------------------------------------

    def _create_or_adopt(
        self, kind: str, body: dict, create: Callable[..., Any], read: Callable[..., Any]
    ) -> tuple[Any, bool]:
        """Create `body`; on 409 Conflict adopt the existing object if it is one of ours."""
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        try:
            return create(namespace=namespace, body=body, _request_timeout=self._timeout()), True
        except ApiException as error:
            if error.status != 409:
                raise PlatformError(f"creating {kind} {namespace}/{name} failed: {_api_error(error)}") from error
        existing = read(name=name, namespace=namespace, _request_timeout=self._timeout())
        labels = (existing.metadata.labels or {}) if existing.metadata else {}
        if labels.get(m.APP_LABEL) != "toygres" or labels.get(m.MANAGED_BY_LABEL) != "toygres-pipelines":
            raise PlatformError(f"{kind} {namespace}/{name} already exists and was not created by toygres")
        logger.info("adopted existing %s %s/%s", kind, namespace, name)
        return existing, False

    def _delete(
        self, kind: str, delete: Callable[..., Any], name: str, namespace: str, propagation: str = "Background"
    ) -> bool:
        """Delete one object; False when it was already gone."""
        try:
            delete(
                name=name,
                namespace=namespace,
                _request_timeout=self._timeout(),
                body=kubernetes.client.V1DeleteOptions(propagation_policy=propagation),
            )
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise PlatformError(f"deleting {kind} {namespace}/{name} failed: {_api_error(error)}") from error

    # --- secrets and volumes -------------------------------------------------------------------

    def read_instance_password(self, instance: InstanceRef) -> SecretStr:
        name = m.instance_secret_name(instance)
        try:
            secret = self._core.read_namespaced_secret(name, instance.namespace, _request_timeout=self._timeout())
        except ApiException as error:
            raise PlatformError(f"cannot read secret {instance.namespace}/{name}: {_api_error(error)}") from error
        password = m.decode_secret_value(secret.data, m.PASSWORD_KEY)
        if password is None:
            raise PlatformError(f"secret {instance.namespace}/{name} has no key {m.PASSWORD_KEY!r}")
        return SecretStr(password)

    def ensure_instance_secret(self, instance: InstanceRef, password: SecretStr) -> None:
        """Create the Secret; if it exists (a re-run), set it to `password` like the local platform."""
        body = m.instance_secret(instance, password.get_secret_value())
        existing, created = self._create_or_adopt(
            "secret", body, self._core.create_namespaced_secret, self._core.read_namespaced_secret
        )
        if not created and m.decode_secret_value(existing.data, m.PASSWORD_KEY) != password.get_secret_value():
            self._core.patch_namespaced_secret(
                body["metadata"]["name"],
                instance.namespace,
                {"data": body["data"]},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout(),
            )

    def create_volume(self, instance: InstanceRef, size_gb: int) -> None:
        body = m.volume_claim(instance, size_gb, self.settings())
        self._create_or_adopt(
            "persistentvolumeclaim",
            body,
            self._core.create_namespaced_persistent_volume_claim,
            self._core.read_namespaced_persistent_volume_claim,
        )

    # --- jobs --------------------------------------------------------------------------------

    def ensure_scripts_config_map(self, namespace: str) -> str:
        """Create (or adopt, after checking its bytes) the job-scripts ConfigMap; its name."""
        body = m.scripts_config_map(namespace)
        existing, created = self._create_or_adopt(
            "configmap", body, self._core.create_namespaced_config_map, self._core.read_namespaced_config_map
        )
        if not created:
            stored = m.config_map_files({"data": existing.data, "binaryData": existing.binary_data})
            if stored != m.config_map_files(body):
                raise PlatformError(f"configmap {namespace}/{body['metadata']['name']} holds other scripts")
        return body["metadata"]["name"]

    def run_job(self, spec: JobSpec, log: LogSink) -> JobResult:
        namespace, name = spec.instance.namespace, spec.name
        if spec.blob_sas is None:
            raise PlatformError(f"job {name} has no blob grant: a job reaches blob storage through its grant only")
        grant = spec.blob_sas.get_secret_value()
        try:
            scripts_name = m.scripts_config_map(namespace)["metadata"]["name"]
            manifest = m.job(spec, self.settings(), scripts_name)
            # The serve container gets the password's SCRAM verifier, never the password
            verifier = (
                scram_sha256_verifier(self.read_instance_password(spec.instance).get_secret_value())
                if RestoreRoles.splits(spec)
                else None
            )
            secret = m.job_secret(spec, grant, verifier)
        except m.ManifestError as error:
            raise PlatformError(str(error)) from error
        sink = PodLogCollector(log, self.log_tail_lines, secrets=grant_secrets(spec.blob_sas))

        self.ensure_scripts_config_map(namespace)
        self._ensure_job_secret(spec, secret)
        job, created = self._create_or_adopt(
            "job", manifest, self._batch.create_namespaced_job, self._batch.read_namespaced_job
        )
        if not created:
            sink.note(f"job {name} already exists (an earlier attempt of this run): following it")
        if job.metadata is not None and job.metadata.uid:
            self._own_job_secret(spec, job.metadata.uid)

        finished = False
        try:
            result = self._follow_job(spec, sink)
            finished = True
        finally:
            if not finished:
                # Timed out, or the run is being terminated: take the job (and its pod) down.
                self._cleanup(lambda: self._delete("job", self._batch.delete_namespaced_job, name, namespace))
            self._cleanup(
                lambda: self._delete("secret", self._core.delete_namespaced_secret, m.job_secret_name(name), namespace)
            )
        if not result.succeeded:
            raise JobFailed(result)
        return result

    @staticmethod
    def _cleanup(action: Callable[[], Any]) -> None:
        """Best-effort cleanup that never hides the error being handled."""
        try:
            action()
        except Exception:  # noqa: BLE001
            logger.exception("cleanup failed")

    def _ensure_job_secret(self, spec: JobSpec, body: dict[str, Any]) -> None:
        existing, created = self._create_or_adopt(
            "secret", body, self._core.create_namespaced_secret, self._core.read_namespaced_secret
        )
        if not created and (existing.data or {}) != body["data"]:
            self._core.patch_namespaced_secret(
                body["metadata"]["name"],
                spec.instance.namespace,
                {"data": body["data"]},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeout(),
            )

    def _own_job_secret(self, spec: JobSpec, job_uid: str) -> None:
        """Make the Job own its SAS Secret, so the garbage collector removes it with the Job."""
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": spec.name,
            "uid": job_uid,
            "blockOwnerDeletion": False,
            "controller": False,
        }
        self._core.patch_namespaced_secret(
            m.job_secret_name(spec.name),
            spec.instance.namespace,
            {"metadata": {"ownerReferences": [owner]}},
            _content_type=MERGE_PATCH,
            _request_timeout=self._timeout(),
        )

    def _follow_job(self, spec: JobSpec, sink: PodLogCollector) -> JobResult:
        """Poll the Job until its Complete/Failed condition, streaming its pods' logs meanwhile."""
        namespace, name = spec.instance.namespace, spec.name
        client = self._dagster
        started = time.monotonic()
        deadline = started + spec.timeout_seconds + self.deadline_grace_seconds
        pods: dict[str, PodFollower] = {}
        pending_note = ""
        while True:
            status = client.get_job_status(name, namespace, wait_time_between_attempts=self.poll_interval_seconds)
            if status is None:  # 404, or a Job the controller has not given a status yet
                if not self._job_exists(name, namespace):
                    self._drain_logs(pods, sink, name, namespace, wait=False)
                    return self._result(spec, sink, False, f"job {namespace}/{name} was deleted while running")
                status = kubernetes.client.V1JobStatus()
            job_pods = self._job_pods(name, namespace)
            for pod in job_pods:
                pod_name = pod.metadata.name
                if pod_name not in pods and pod_started(pod):
                    if pods:
                        sink.note(f"pod {pod_name} started (attempt {len(pods) + 1}; earlier attempts failed)")
                    pods[pod_name] = PodFollower(self._core, pod_name, namespace, sink, self._timeout()).start()
                    if RestoreRoles.splits(spec):  # the serve role's log too
                        pods[f"{pod_name}/{SERVE_CONTAINER}"] = PodFollower(
                            self._core, pod_name, namespace, sink, self._timeout(), container=SERVE_CONTAINER
                        ).start()
            sink.drain()

            outcome = job_outcome(status)
            if outcome is not None:
                succeeded, reason = outcome
                self._drain_logs(pods, sink, name, namespace)
                if not succeeded:
                    last = last_pod_state(job_pods)
                    reason = f"{reason}; {last}" if last else reason
                return self._result(spec, sink, succeeded, None if succeeded else reason)

            now = time.monotonic()
            if not pods:
                why = pending_reason(job_pods) or "no pod created yet"
                if why != pending_note:
                    sink.note(f"waiting for the job's pod to start: {why}")
                    pending_note = why
                if now - started > self.pod_pending_timeout_seconds:
                    raise _JobTimeout(
                        self._result(
                            spec,
                            sink,
                            False,
                            f"pod did not start within {self.pod_pending_timeout_seconds}s: {why}",
                        )
                    )
            if now > deadline:
                self._drain_logs(pods, sink, name, namespace, wait=False)
                raise _JobTimeout(
                    self._result(
                        spec,
                        sink,
                        False,
                        f"timed out after {spec.timeout_seconds}s waiting for job {name}",
                    )
                )
            time.sleep(self.poll_interval_seconds)

    def _job_exists(self, name: str, namespace: str) -> bool:
        try:
            self._batch.read_namespaced_job(name, namespace, _request_timeout=self._timeout())
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def _job_pods(self, name: str, namespace: str) -> list:
        pods = self._dagster.get_pods_in_job(name, namespace)
        # The API filters by label already; the check keeps a sloppy stand-in honest too.
        mine = [p for p in pods if (p.metadata.labels or {}).get("job-name") == name]
        return sorted(mine, key=lambda p: (str(p.metadata.creation_timestamp or ""), p.metadata.name))

    def _drain_logs(
        self, pods: dict[str, PodFollower], sink: PodLogCollector, name: str, namespace: str, wait: bool = True
    ) -> None:
        """Let the log streams finish; fall back to a plain log read for a stream that failed."""
        end = time.monotonic() + (self.log_drain_seconds if wait else 0)
        for follower in pods.values():
            follower.join(max(0.0, end - time.monotonic()))
            sink.drain()
        for follower in pods.values():
            if follower.lines == 0 and follower.done and follower.error is not None:
                try:
                    text = self._dagster.retrieve_pod_logs(
                        follower.pod,
                        namespace,
                        container_name=follower.container,
                        tail_lines=self.log_tail_lines,
                        _request_timeout=self._timeout(),
                    )
                except ApiException as error:
                    sink.note(f"logs of pod {follower.pod} unavailable: {_api_error(error)}")
                    continue
                for line in text.splitlines():
                    sink.line(line)
        sink.drain()

    def _result(self, spec: JobSpec, sink: PodLogCollector, succeeded: bool, reason: str | None) -> JobResult:
        return JobResult(name=spec.name, succeeded=succeeded, log_tail=sink.tail(), reason=reason)

    def delete_job(self, name: str, namespace: str) -> None:
        """Remove the Job, its pods (propagation) and its SAS Secret; idempotent."""
        self._delete("job", self._batch.delete_namespaced_job, name, namespace, propagation="Background")
        self._delete("secret", self._core.delete_namespaced_secret, m.job_secret_name(name), namespace)

    def delete_stale_jobs(self, namespaces: set[str], grace_seconds: float) -> list[str]:
        """Jobs past activeDeadlineSeconds + grace, and SAS Secrets older than the grace whose Job
        is gone (a run that died between creating the Secret and the Job), found by label.

        Only namespaces this deployment serves can hold its jobs (others, such as `default` of rows
        older than instance namespaces, are not asked); one that refuses does not stop the others.
        """
        now = time.time()
        removed: list[str] = []
        refused: list[str] = []
        for namespace in sorted((namespaces | {self.namespace}) & set(self.enabled_namespaces())):
            try:
                self._delete_stale_jobs_in(namespace, grace_seconds, now, removed)
            except ApiException as error:
                refused.append(f"{namespace}: {_api_error(error)}")
        if refused:
            raise PlatformError(f"stale jobs could not be listed in {'; '.join(refused)} (removed: {removed})")
        return removed

    def _delete_stale_jobs_in(self, namespace: str, grace_seconds: float, now: float, removed: list[str]) -> None:
        managed = f"{m.MANAGED_BY_LABEL}=toygres-pipelines"
        jobs = self._batch.list_namespaced_job(
            namespace, label_selector=managed, _request_timeout=self._timeout()
        ).items
        live = set()
        for job in jobs:
            labels = job.metadata.labels or {}
            if labels.get(m.MANAGED_BY_LABEL) != "toygres-pipelines" or m.TOYGRES_JOB_LABEL not in labels:
                continue
            deadline = (job.spec.active_deadline_seconds if job.spec else None) or 0
            if deadline and _age_seconds(job.metadata, now) > deadline + grace_seconds:
                self.delete_job(job.metadata.name, namespace)
                removed.append(f"{namespace}/{job.metadata.name}")
            else:
                live.add(job.metadata.name)
        selector = f"{managed},{m.COMPONENT_LABEL}=job-credential"
        secrets = self._core.list_namespaced_secret(
            namespace, label_selector=selector, _request_timeout=self._timeout()
        ).items
        for secret in secrets:
            labels = secret.metadata.labels or {}
            if (
                labels.get(m.COMPONENT_LABEL) != "job-credential"
                or labels.get(m.MANAGED_BY_LABEL) != "toygres-pipelines"
            ):
                continue
            job_name = labels.get(m.TOYGRES_JOB_LABEL)
            if (
                job_name not in live
                and f"{namespace}/{job_name}" not in removed
                and _age_seconds(secret.metadata, now) > grace_seconds
            ):
                self._delete("secret", self._core.delete_namespaced_secret, secret.metadata.name, namespace)
                removed.append(f"{namespace}/{secret.metadata.name}")

    # --- servers -----------------------------------------------------------------------------

    def _deployment_ca(self, namespace: str) -> tuple[bytes, bytes] | None:
        """(certificate PEM, key PEM) of tls_ca_secret in `namespace`, or None without one."""
        if not self.tls_ca_secret:
            return None
        try:
            secret = self._core.read_namespaced_secret(self.tls_ca_secret, namespace, _request_timeout=self._timeout())
        except ApiException as error:
            raise PlatformError(
                f"tls_ca_secret: Secret {self.tls_ca_secret!r} cannot be read in namespace {namespace}"
                f" ({_api_error(error)}); create it there from the deployment's CA (docs/kubernetes.md)"
            ) from error
        cert, key = (m.decode_secret_value(secret.data, name) for name in (m.TLS_CERT_KEY, m.TLS_KEY_KEY))
        if not cert or not key:
            raise PlatformError(
                f"tls_ca_secret: Secret {self.tls_ca_secret!r} in namespace {namespace} lacks tls.crt or tls.key"
            )
        return cert.encode(), key.encode()

    def deploy_instance(self, spec: DeploySpec) -> None:
        settings = self.settings()
        try:
            config = m.hba_config(spec.instance)
            headless = m.headless_service(spec)
            server = m.statefulset(spec, settings)
            service = m.service(spec, settings)
            # A re-run adopts the existing Secret: the certificate a client may have pinned stays.
            ca = self._deployment_ca(spec.instance.namespace)
            tls = m.tls_secret(spec.instance, m.tls_names(spec, self.azure_region), ca)
        except (m.ManifestError, ValueError) as error:
            raise PlatformError(str(error)) from error
        core, apps = self._core, self._apps
        self._create_or_adopt("secret", tls, core.create_namespaced_secret, core.read_namespaced_secret)
        self._create_or_adopt("configmap", config, core.create_namespaced_config_map, core.read_namespaced_config_map)
        self._create_or_adopt("service", headless, core.create_namespaced_service, core.read_namespaced_service)
        self._create_or_adopt(
            "statefulset", server, apps.create_namespaced_stateful_set, apps.read_namespaced_stateful_set
        )
        self._create_or_adopt("service", service, core.create_namespaced_service, core.read_namespaced_service)

    def wait_ready(self, instance: InstanceRef, timeout_seconds: int) -> None:
        """Until the StatefulSet has a ready replica and, for a LoadBalancer, an ingress address."""
        name = m.server_name(instance)
        deadline = time.monotonic() + timeout_seconds
        why: str | None = "not checked yet"
        while True:
            why = self._not_ready_reason(instance)
            if why is None:
                return
            if time.monotonic() > deadline:
                raise PlatformError(f"instance {instance.namespace}/{name} not ready after {timeout_seconds}s: {why}")
            time.sleep(self.poll_interval_seconds)

    def _not_ready_reason(self, instance: InstanceRef) -> str | None:
        name, namespace = m.server_name(instance), instance.namespace
        try:
            sts = self._apps.read_namespaced_stateful_set_status(name, namespace, _request_timeout=self._timeout())
        except ApiException as error:
            if error.status == 404:
                return "statefulset does not exist"
            raise PlatformError(f"reading statefulset {namespace}/{name} failed: {_api_error(error)}") from error
        if not (sts.status and (sts.status.ready_replicas or 0) >= 1):
            try:
                pod = self._core.read_namespaced_pod(f"{name}-0", namespace, _request_timeout=self._timeout())
            except ApiException as error:
                if error.status == 404:
                    return "pod not created yet"
                raise
            return f"pod {name}-0 not ready: {pending_reason([pod]) or phase(pod)}"
        service = self._read_service(instance)
        if service.spec.type == "LoadBalancer" and not _ingress(service):
            return "load balancer has no address yet"
        return None

    def _read_service(self, instance: InstanceRef):
        name = m.server_name(instance)
        try:
            return self._core.read_namespaced_service(name, instance.namespace, _request_timeout=self._timeout())
        except ApiException as error:
            raise PlatformError(f"reading service {instance.namespace}/{name} failed: {_api_error(error)}") from error

    def endpoints(self, instance: InstanceRef) -> Endpoints:
        service = self._read_service(instance)
        if service.spec.type != "LoadBalancer":
            dns = m.service_dns_name(instance)
            return Endpoints(
                host=dns,
                port=m.POSTGRES_PORT,
                external_ip=None,
                dns_name=dns,
                sslmode=m.CLIENT_SSLMODE,
                dns_sslmode=m.VERIFIED_SSLMODE if self.tls_ca_secret else None,
            )
        address = _ingress(service)
        if not address:
            raise PlatformError(
                f"service {instance.namespace}/{service.metadata.name} has no load balancer address yet"
            )
        label = (service.metadata.annotations or {}).get(m.DNS_LABEL_ANNOTATION)
        dns_name = f"{label}.{self.azure_region}.cloudapp.azure.com" if label and self.azure_region else None
        return Endpoints(
            host=dns_name or address,
            port=m.POSTGRES_PORT,
            external_ip=address,
            dns_name=dns_name,
            sslmode=m.CLIENT_SSLMODE,
            dns_sslmode=m.VERIFIED_SSLMODE if self.tls_ca_secret and dns_name else None,
            # kube-proxy drops pod traffic to a LoadBalancer address its source ranges don't list.
            check_host=m.service_dns_name(instance) if self.load_balancer_source_ranges else None,
        )

    def stop_instance(self, instance: InstanceRef) -> None:
        """Scale the server to zero (the volume and everything else stay)."""
        self._apps.patch_namespaced_stateful_set_scale(
            m.server_name(instance),
            instance.namespace,
            {"spec": {"replicas": 0}},
            _content_type=MERGE_PATCH,
            _request_timeout=self._timeout(),
        )

    def instance_exists(self, instance: InstanceRef) -> bool:
        for read, name in (
            (self._apps.read_namespaced_stateful_set, m.server_name(instance)),
            (self._core.read_namespaced_persistent_volume_claim, m.volume_name(instance)),
            (self._core.read_namespaced_secret, m.instance_secret_name(instance)),
        ):
            try:
                read(name, instance.namespace, _request_timeout=self._timeout())
                return True
            except ApiException as error:
                if error.status != 404:
                    raise
        return False

    def delete_instance(self, instance: InstanceRef) -> None:
        """Remove server, service, jobs, config, secret and volume of the instance (idempotent)."""
        ns = instance.namespace
        core, apps, batch = self._core, self._apps, self._batch
        self._delete("statefulset", apps.delete_namespaced_stateful_set, m.server_name(instance), ns, "Foreground")
        self._delete("service", core.delete_namespaced_service, m.server_name(instance), ns)
        self._delete("service", core.delete_namespaced_service, m.headless_service_name(instance), ns)
        selector = f"{m.TOYGRES_INSTANCE_LABEL}={instance.k8s_name}"
        jobs = batch.list_namespaced_job(ns, label_selector=selector, _request_timeout=self._timeout()).items
        for job in jobs:
            if (job.metadata.labels or {}).get(m.TOYGRES_INSTANCE_LABEL) == instance.k8s_name:
                self.delete_job(job.metadata.name, ns)
        self._delete("configmap", core.delete_namespaced_config_map, m.config_name(instance), ns)
        self._delete("secret", core.delete_namespaced_secret, m.instance_secret_name(instance), ns)
        self._delete("secret", core.delete_namespaced_secret, m.tls_secret_name(instance), ns)
        self._delete(
            "persistentvolumeclaim", core.delete_namespaced_persistent_volume_claim, m.volume_name(instance), ns
        )

    # --- WAL archivers: one Deployment per instance namespace (docs/pitr.md) -----------------------

    def _archiver_secret(self, namespace: str) -> tuple[ArchiverSet, dict[str, str], str] | None:
        """(the instances served, pgpass line per instance key, sas) of a namespace's archiver, None: none."""
        try:
            secret = self._core.read_namespaced_secret(m.WAL_ARCHIVER_NAME, namespace, _request_timeout=self._timeout())
        except ApiException as error:
            if error.status == 404:
                return None
            raise PlatformError(f"cannot read secret {namespace}/{m.WAL_ARCHIVER_NAME}: {_api_error(error)}") from error
        served = ArchiverSet.model_validate_json(m.decode_secret_value(secret.data, ARCHIVERS_FILE) or "{}")
        lines = (m.decode_secret_value(secret.data, PGPASS_FILE) or "").splitlines(keepends=True)
        by_host = {line.split(":", 1)[0]: line for line in lines}
        pgpass = {key_of(c): by_host[c.host] for c in served.archivers if c.host in by_host}
        return served, pgpass, m.decode_secret_value(secret.data, SAS_FILE) or ""

    def _write_archiver_secret(
        self, namespace: str, served: ArchiverSet, pgpass: dict[str, str], sas: str, exists: bool
    ) -> None:
        body = m.wal_archiver_secret(namespace, served, "".join(pgpass[key_of(c)] for c in served.archivers), sas)
        if not exists:
            self._create_or_adopt(
                "secret", body, self._core.create_namespaced_secret, self._core.read_namespaced_secret
            )
        self._core.patch_namespaced_secret(
            m.WAL_ARCHIVER_NAME, namespace, {"data": body["data"]}, _content_type=MERGE_PATCH,
            _request_timeout=self._timeout(),
        )  # fmt: skip

    def ensure_wal_archiver(self, spec: WalArchiverSpec) -> bool:
        """Add the instance to its namespace's archiver (created with the first one); the SAS is
        replaced once past half its life."""
        settings = self.settings()
        if settings.archiver_image is None:
            raise PlatformError("archiver_image is not set: no WAL archiver can run on this platform (docs/pitr.md)")
        if spec.blob_sas is None:
            raise PlatformError("the archiver needs a container SAS: it holds no Azure identity")
        instance, namespace = spec.instance, spec.instance.namespace
        m.check_instance(instance)
        host = m.service_dns_name(instance)
        config = ArchiverConfig(
            namespace=namespace, k8s_name=instance.k8s_name, host=host, port=m.POSTGRES_PORT,
            user=settings.superuser, sslmode=m.CLIENT_SSLMODE, bindir=m.ARCHIVER_BINDIR,
            container_url=spec.container_url, age_recipient=spec.age_recipient, partial_seconds=spec.partial_seconds,
        )  # fmt: skip
        line = pgpass_line(
            host, m.POSTGRES_PORT, settings.superuser, self.read_instance_password(instance).get_secret_value()
        )
        current = self._archiver_secret(namespace)
        served, pgpass, sas = current or (ArchiverSet(), {}, "")
        key = key_of(config)
        added = config not in served.archivers or pgpass.get(key) != line
        refresh = sas_needs_refresh(sas, spec.blob_sas.get_secret_value())
        if added or refresh:
            others = [c for c in served.archivers if key_of(c) != key]
            served = ArchiverSet(archivers=sorted([*others, config], key=key_of))
            pgpass[key] = line
            sas = spec.blob_sas.get_secret_value() if refresh else sas
            self._write_archiver_secret(namespace, served, pgpass, sas, exists=current is not None)
        self._ensure_archiver_deployment(m.wal_archiver_deployment(namespace, settings))
        return added

    def _ensure_archiver_deployment(self, body: dict) -> None:
        """Create the namespace's archiver Deployment, or patch it to `body` when the settings it was
        rendered from changed (its spec's sha256 annotation differs): a new archiver image or
        resources reach the pod without anyone deleting the Deployment."""
        namespace = body["metadata"]["namespace"]
        try:
            existing = self._apps.read_namespaced_deployment(
                m.WAL_ARCHIVER_NAME, namespace, _request_timeout=self._timeout()
            )
        except ApiException as error:
            if error.status != 404:
                raise PlatformError(f"cannot read {namespace}/{m.WAL_ARCHIVER_NAME}: {_api_error(error)}") from error
            self._create_or_adopt(
                "deployment", body, self._apps.create_namespaced_deployment, self._apps.read_namespaced_deployment
            )
            return
        annotations = (existing.metadata.annotations or {}) if existing.metadata else {}
        wanted = body["metadata"]["annotations"][m.SPEC_SHA256_ANNOTATION]
        if annotations.get(m.SPEC_SHA256_ANNOTATION) == wanted:
            return
        current = self._apps.api_client.sanitize_for_serialization(existing.spec) if existing.spec else {}
        patch = {
            "metadata": {"annotations": {m.SPEC_SHA256_ANNOTATION: wanted}},
            "spec": m.merge_patch(current, body["spec"]),
        }
        try:
            self._apps.patch_namespaced_deployment(
                m.WAL_ARCHIVER_NAME, namespace, patch, _content_type=MERGE_PATCH, _request_timeout=self._timeout()
            )
        except ApiException as error:
            raise PlatformError(f"cannot update {namespace}/{m.WAL_ARCHIVER_NAME}: {_api_error(error)}") from error
        logger.info("archiver deployment %s/%s updated to its settings", namespace, m.WAL_ARCHIVER_NAME)

    def wal_archivers(self) -> list[InstanceRef]:
        found = []
        for namespace in self.enabled_namespaces():
            current = self._archiver_secret(namespace)
            if current is not None:
                found += [InstanceRef(namespace=c.namespace, k8s_name=c.k8s_name) for c in current[0].archivers]
        return found

    def wal_archiver_error(self, instance: InstanceRef) -> str | None:
        namespace = instance.namespace
        where = f"Deployment {namespace}/{m.WAL_ARCHIVER_NAME}"
        try:
            deployment = self._apps.read_namespaced_deployment(
                m.WAL_ARCHIVER_NAME, namespace, _request_timeout=self._timeout()
            )
        except ApiException as error:
            if error.status == 404:
                return f"no archiver ({where} missing)"
            raise PlatformError(f"cannot read {where}: {_api_error(error)}") from error
        available = (deployment.status.available_replicas if deployment.status else None) or 0
        if available < 1:
            return f"archiver not running ({where}: {available} of 1 available)"
        selector = f"{m.APP_LABEL}=toygres,{m.COMPONENT_LABEL}={m.WAL_ARCHIVER_COMPONENT}"
        pods = self._core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=self._timeout())
        for pod in pods.items:
            if phase(pod) != "Running":
                continue
            log = self._core.read_namespaced_pod_log(
                pod.metadata.name, namespace, tail_lines=ARCHIVER_LOG_TAIL, _request_timeout=self._timeout()
            )
            return last_errors(log.splitlines()).get(f"{namespace}/{instance.k8s_name}")
        return None

    def remove_wal_archiver(self, instance: InstanceRef) -> None:
        """Take the instance out of its namespace's archiver (which stops its pg_receivewal and drops
        its slot); the Deployment and Secret go with the last one."""
        namespace = instance.namespace
        current = self._archiver_secret(namespace)
        if current is None:
            return
        served, pgpass, sas = current
        key = f"{namespace}/{instance.k8s_name}"
        kept = ArchiverSet(archivers=[c for c in served.archivers if key_of(c) != key])
        if kept.archivers:
            if kept != served:
                self._write_archiver_secret(namespace, kept, pgpass, sas, exists=True)
            return
        self._delete("deployment", self._apps.delete_namespaced_deployment, m.WAL_ARCHIVER_NAME, namespace)
        self._delete("secret", self._core.delete_namespaced_secret, m.WAL_ARCHIVER_NAME, namespace)


# --- helpers ----------------------------------------------------------------------------------


class _JobTimeout(JobFailed):
    """The job did not finish (or its pod did not start) in time; run_job deletes it."""


# JobFailed subclasses keep `except JobFailed` working for callers; run_job re-raises as is.


def _label(value: str, field: str) -> str:
    try:
        return validate_dns_label(value, field)
    except ValidationFailed as error:
        raise ValueError(str(error)) from error


def _age_seconds(metadata, now: float) -> float:
    """Seconds since the object was created (0 when the API did not say)."""
    created = metadata.creation_timestamp if metadata else None
    return now - created.timestamp() if created else 0.0


def _api_error(error: ApiException) -> str:
    return f"{error.status} {error.reason}"


def _ingress(service) -> str | None:
    lb = service.status.load_balancer if service.status else None
    for ingress in (lb.ingress or []) if lb else []:
        if ingress.ip or ingress.hostname:
            return ingress.ip or ingress.hostname
    return None


def sas_needs_refresh(stored: str, fresh: str) -> bool:
    """The stored SAS is missing, unreadable or past half its life (measured against the fresh one's expiry)."""

    def expiry(sas: str) -> datetime | None:
        values = urllib.parse.parse_qs(sas).get("se")
        try:
            return datetime.fromisoformat(values[0].replace("Z", "+00:00")) if values else None
        except ValueError:
            return None

    old, new = expiry(stored), expiry(fresh)
    if old is None or new is None:
        return stored != fresh
    now = datetime.now(UTC)
    return old - now < (new - now) / 2
