"""A Kubernetes API stand-in for the lifecycle tests: kmock's KubernetesEmulator over real HTTP.

kmock is asyncio/aiohttp; the platform uses the official (synchronous) kubernetes client. The
emulator therefore runs in its own event loop on a background thread, listening on a loopback
port, and the client reaches it through an ordinary kubeconfig file -- the same code path as a
real cluster.

kmock stores objects and serves create/read/list/patch/delete. What a real cluster adds on top,
the tests play themselves through the same HTTP API (see `FakeJobController`): the Job
controller creating pods, kubelet moving them through phases, Job conditions, pod logs.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import kubernetes
import yaml
from kmock._internal.k8s import KubernetesObjectConflictError  # noqa: F401 - documents the 409 source

RESOURCES = {
    "configmaps": kmock.resource("", "v1", "configmaps"),
    "secrets": kmock.resource("", "v1", "secrets"),
    "pods": kmock.resource("", "v1", "pods"),
    "services": kmock.resource("", "v1", "services"),
    "persistentvolumeclaims": kmock.resource("", "v1", "persistentvolumeclaims"),
    "jobs": kmock.resource("batch", "v1", "jobs"),
    "statefulsets": kmock.resource("apps", "v1", "statefulsets"),
    "deployments": kmock.resource("apps", "v1", "deployments"),
}


@dataclass
class FakeCluster:
    """A running emulator plus the helpers tests use to inspect and drive it."""

    emulator: kmock.KubernetesEmulator
    loop: asyncio.AbstractEventLoop
    url: str
    kubeconfig: Path
    pod_logs: dict[tuple[str, str], bytes] = field(default_factory=dict)

    # --- what the client sent ----------------------------------------------------------------

    def requests(self) -> list[kmock.Request]:
        return list(self.emulator.requests) if hasattr(self.emulator, "requests") else list(self.emulator)

    def calls(
        self, method: str | None = None, plural: str | None = None
    ) -> list[tuple[str, str, str | None, str | None]]:
        """(METHOD, plural, name, subresource) of every Kubernetes request so far, in order."""
        out = []
        for request in self.requests():
            if request.resource is None:
                continue
            row = (str(request.method.value), request.resource.plural, request.name, request.subresource)
            if method and row[0] != method:
                continue
            if plural and row[1] != plural:
                continue
            out.append(row)
        return out

    def creations(self) -> list[tuple[str, str]]:
        """(plural, metadata.name) of every POST, in order."""
        return [
            (request.resource.plural, (request.data or {}).get("metadata", {}).get("name"))
            for request in self.requests()
            if request.resource is not None and request.method == kmock.method.POST
        ]

    # --- stored objects ----------------------------------------------------------------------

    def _run(self, coro_fn: Callable[[], Any]) -> Any:
        async def wrapper():
            return coro_fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        def read():
            key = (RESOURCES[plural], namespace, name)
            if key not in self.emulator.objects:
                return None
            obj = self.emulator.objects[key]
            return None if obj.deleted else dict(obj.raw)

        return self._run(read)

    def names(self, plural: str, namespace: str) -> list[str]:
        def read():
            return sorted(
                name
                for (resource, ns, name), obj in self.emulator.objects.items()
                if resource == RESOURCES[plural] and ns == namespace and not obj.deleted
            )

        return self._run(read)

    def put_object(self, plural: str, namespace: str, body: dict) -> None:
        """Store an object directly (as if someone else had created it earlier)."""

        def write():
            self.emulator.objects[RESOURCES[plural], namespace, body["metadata"]["name"]] = body

        self._run(write)


def _kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                "contexts": [
                    {"name": "kmock", "context": {"cluster": "kmock", "user": "tester", "namespace": "default"}}
                ],
                "current-context": "kmock",
            }
        )
    )
    return path


@contextmanager
def running_cluster(tmp_path: Path) -> Iterator[FakeCluster]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None
    box: dict[str, Any] = {}

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            for resource in RESOURCES.values():
                emulator.resources[resource] = {}
            box["emulator"] = emulator
            box["url"] = str(server.url).rstrip("/")
            started.set()
            await stop.wait()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except BaseException as error:  # noqa: BLE001 - surfaced through `box`
            box["error"] = error
            started.set()

    thread = threading.Thread(target=serve, name="kmock", daemon=True)
    thread.start()
    if not started.wait(10) or "error" in box:
        raise RuntimeError(f"kmock did not start: {box.get('error')!r}")
    cluster = FakeCluster(
        emulator=box["emulator"],
        loop=loop,
        url=box["url"],
        kubeconfig=_kubeconfig(tmp_path / "kubeconfig", box["url"]),
    )
    _serve_pod_logs(cluster)
    try:
        yield cluster
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _serve_pod_logs(cluster: FakeCluster) -> None:
    """GET .../pods/<name>/log returns what the fake kubelet recorded for that pod."""

    def respond(request: kmock.Request) -> bytes:
        data = cluster.pod_logs.get((request.namespace, request.name))
        if data is None:
            raise kmock.KubernetesObjectNotFoundError()
        tail = request.params.get("tailLines")
        if tail:
            lines = data.decode().splitlines(keepends=True)
            return "".join(lines[-int(tail) :]).encode()
        return data

    async def register() -> None:
        cluster.emulator[kmock.method.GET, RESOURCES["pods"], kmock.subresource("log")] << respond

    asyncio.run_coroutine_threadsafe(register(), cluster.loop).result(10)


def api_client(cluster: FakeCluster) -> kubernetes.client.ApiClient:
    config = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=config)
    return kubernetes.client.ApiClient(config)


# --- the Job controller and kubelet, played by the test ----------------------------------------


@dataclass
class PodScript:
    """What one pod attempt of a Job does: its log, its exit code, how long it stays pending."""

    log: str = ""
    exit_code: int = 0
    pending_reason: tuple[str, str] | None = None  # (reason, message) forever pending
    run_seconds: float = 0.0


@dataclass
class FakeJobController:
    """Plays the Job controller + kubelet for one Job name, through the HTTP API.

    For each attempt in `attempts` it creates a pod (labelled like the real controller does),
    runs it (Running -> Succeeded/Failed with the script's exit code and log), and updates the
    Job status the way Kubernetes does, including the gap between a failed pod and its
    replacement (active=0, failed=n, no Failed condition) while the backoff delay runs.
    After `backoff_limit + 1` failures the Job gets the Failed condition (BackoffLimitExceeded);
    a failed pod whose exit code matches a `podFailurePolicy` FailJob rule fails the Job at once
    (reason PodFailurePolicy), as the real controller does.
    """

    cluster: FakeCluster
    namespace: str
    job_name: str
    attempts: list[PodScript]
    backoff_gap_seconds: float = 0.3
    events: list[str] = field(default_factory=list)
    error: BaseException | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> FakeJobController:
        self._thread = threading.Thread(target=self._run_safely, name=f"fake-job-{self.job_name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self.error:
            raise self.error

    def _run_safely(self) -> None:
        try:
            self._run()
        except BaseException as error:  # noqa: BLE001 - re-raised in stop()
            self.error = error

    def _sleep(self, seconds: float) -> bool:
        return not self._stop.wait(seconds)

    def _run(self) -> None:
        client = api_client(self.cluster)
        batch = kubernetes.client.BatchV1Api(client)
        core = kubernetes.client.CoreV1Api(client)
        merge = "application/merge-patch+json"
        job = None
        while job is None:
            try:
                job = batch.read_namespaced_job(self.job_name, self.namespace)
            except kubernetes.client.ApiException as error:
                if error.status != 404:
                    raise
                if not self._sleep(0.02):
                    return
        backoff_limit = job.spec.backoff_limit if job.spec.backoff_limit is not None else 6
        policy = client.sanitize_for_serialization(job.spec.pod_failure_policy) or {}
        template = client.sanitize_for_serialization(job.spec.template)
        uid = job.metadata.uid or str(uuid.uuid4())
        failed = 0
        now = lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())  # noqa: E731
        self._patch_job(batch, merge, {"status": {"startTime": now(), "active": 0}})
        for attempt, script in enumerate(self.attempts):
            pod_name = f"{self.job_name}-{attempt}{uuid.uuid4().hex[:4]}"
            labels = dict(template["metadata"].get("labels", {}))
            labels |= {"job-name": self.job_name, "batch.kubernetes.io/job-name": self.job_name, "controller-uid": uid}
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": self.namespace, "labels": labels},
                "spec": template["spec"],
                "status": {"phase": "Pending"},
            }
            core.create_namespaced_pod(self.namespace, pod)
            self.events.append(f"pod {pod_name} created")
            self._patch_job(batch, merge, {"status": {"active": 1, "failed": failed or None}})
            if script.pending_reason is not None:
                reason, message = script.pending_reason
                status = {
                    "phase": "Pending",
                    "conditions": [{"type": "PodScheduled", "status": "False", "reason": reason, "message": message}],
                }
                if reason in ("ErrImagePull", "ImagePullBackOff"):
                    status = {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": "job",
                                "ready": False,
                                "restartCount": 0,
                                "image": "x",
                                "imageID": "",
                                "state": {"waiting": {"reason": reason, "message": message}},
                            }
                        ],
                    }
                core.patch_namespaced_pod_status(pod_name, self.namespace, {"status": status}, _content_type=merge)
                while self._sleep(0.05):
                    pass
                return
            core.patch_namespaced_pod_status(
                pod_name,
                self.namespace,
                {
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [
                            {
                                "name": "job",
                                "ready": True,
                                "restartCount": 0,
                                "image": "x",
                                "imageID": "",
                                "state": {"running": {"startedAt": now()}},
                            }
                        ],
                    }
                },
                _content_type=merge,
            )
            self.cluster.pod_logs[(self.namespace, pod_name)] = script.log.encode()
            if script.run_seconds and not self._sleep(script.run_seconds):
                return
            phase = "Succeeded" if script.exit_code == 0 else "Failed"
            core.patch_namespaced_pod_status(
                pod_name,
                self.namespace,
                {
                    "status": {
                        "phase": phase,
                        "containerStatuses": [
                            {
                                "name": "job",
                                "ready": False,
                                "restartCount": 0,
                                "image": "x",
                                "imageID": "",
                                "state": {
                                    "terminated": {
                                        "exitCode": script.exit_code,
                                        "reason": "Completed" if phase == "Succeeded" else "Error",
                                        "finishedAt": now(),
                                    }
                                },
                            }
                        ],
                    }
                },
                _content_type=merge,
            )
            self.events.append(f"pod {pod_name} {phase}")
            if script.exit_code == 0:
                self._patch_job(
                    batch,
                    merge,
                    {
                        "status": {
                            "active": None,
                            "succeeded": 1,
                            "failed": failed or None,
                            "completionTime": now(),
                            "conditions": [
                                {
                                    "type": "SuccessCriteriaMet",
                                    "status": "True",
                                    "reason": "CompletionsReached",
                                    "message": "Reached expected number of succeeded pods",
                                },
                                {
                                    "type": "Complete",
                                    "status": "True",
                                    "reason": "CompletionsReached",
                                    "message": "Reached expected number of succeeded pods",
                                },
                            ],
                        }
                    },
                )
                self.events.append("job Complete")
                return
            failed += 1
            rule = _fail_job_rule(policy, script.exit_code)
            if rule is not None:
                message = (
                    f"Container job for pod {self.namespace}/{pod_name} failed with exit code "
                    f"{script.exit_code} matching FailJob rule at index {rule}"
                )
                self._fail_job(batch, merge, failed, "PodFailurePolicy", message)
                return
            if failed > backoff_limit:
                self._fail_job(
                    batch, merge, failed, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                )
                return
            # The real controller waits (exponential backoff) before the replacement pod: the
            # Job then shows active=0, failed=n and no Failed condition. Not a failure yet.
            self._patch_job(batch, merge, {"status": {"active": 0, "failed": failed}})
            self.events.append(f"backoff after {failed} failure(s)")
            if not self._sleep(self.backoff_gap_seconds):
                return

    def _fail_job(self, batch, merge, failed: int, reason: str, message: str) -> None:
        """The Job's terminal failure, with the conditions the real controller sets."""
        conditions = [
            {"type": kind, "status": "True", "reason": reason, "message": message}
            for kind in ("FailureTarget", "Failed")
        ]
        self._patch_job(batch, merge, {"status": {"active": None, "failed": failed, "conditions": conditions}})
        self.events.append("job Failed")

    def _patch_job(self, batch: kubernetes.client.BatchV1Api, content_type: str, body: dict) -> None:
        batch.patch_namespaced_job_status(self.job_name, self.namespace, body, _content_type=content_type)


def _fail_job_rule(policy: dict, exit_code: int) -> int | None:
    """Index of the first podFailurePolicy rule matching the job container's exit code, if it is FailJob."""
    for index, rule in enumerate(policy.get("rules") or []):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName") not in (None, "job"):
            continue
        inside = exit_code in codes["values"]
        if inside if codes["operator"] == "In" else not inside:
            return index if rule["action"] == "FailJob" else None
    return None


def pod_names(cluster: FakeCluster, namespace: str, job_name: str) -> list[str]:
    return [name for name in cluster.names("pods", namespace) if re.match(rf"^{re.escape(job_name)}-\d", name)]
