"""Following a Kubernetes Job: what its pods' status says, and their logs streamed into the run log.

The platform (kubernetes.py) polls the Job and its pods; these read the answers. Pod logs are
followed by one thread per pod (PodFollower) into a queue the caller drains (PodLogCollector),
so lines reach the run's log in order, from the caller's thread, with secrets redacted.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from dataclasses import dataclass, field

import kubernetes

from records import LogSink

logger = logging.getLogger(__name__)

# The name of the job container in templates/{backup,restore}-job.yaml (a restore's fetch role),
# and of a restore's serve role's container (base.RestoreRoles).
JOB_CONTAINER = "job"
SERVE_CONTAINER = "serve"


def job_outcome(status) -> tuple[bool, str] | None:
    """(succeeded, reason) once the Job has a terminal condition, else None."""
    for condition in status.conditions or []:
        if condition.status != "True":
            continue
        if condition.type == "Complete":
            return True, "Complete"
        if condition.type == "Failed":
            return False, f"Job failed: {condition.reason}: {condition.message}"
    return None


def container_status(pod):
    statuses = (pod.status.container_statuses or []) if pod.status else []
    return next((s for s in statuses if s.name == JOB_CONTAINER), statuses[0] if statuses else None)


def pod_started(pod) -> bool:
    phase = pod.status.phase if pod.status else None
    if phase in ("Running", "Succeeded", "Failed"):
        return True
    status = container_status(pod)
    return bool(status and status.state and (status.state.running or status.state.terminated))


def phase(pod) -> str:
    return f"phase {pod.status.phase if pod.status else 'unknown'}"


def pending_reason(pods: list) -> str | None:
    """Why the newest pod is not running: scheduling or container waiting reason."""
    for pod in reversed(pods):
        status = container_status(pod)
        if status and status.state and status.state.waiting and status.state.waiting.reason:
            waiting = status.state.waiting
            return f"{waiting.reason}: {waiting.message}" if waiting.message else waiting.reason
        for condition in (pod.status.conditions or []) if pod.status else []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return f"{condition.reason}: {condition.message}"
    return None


def last_pod_state(pods: list) -> str | None:
    for pod in reversed(pods):
        status = container_status(pod)
        if status and status.state and status.state.terminated:
            term = status.state.terminated
            text = f"pod {pod.metadata.name}: exit code {term.exit_code} ({term.reason})"
            return f"{text}: {term.message}" if term.message else text
    return None


@dataclass
class PodLogCollector:
    """Collects log lines from follower threads; hands them to the Dagster log on the caller's thread."""

    log: LogSink
    tail_lines: int
    secrets: list[str] = field(default_factory=list)
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _tail: collections.deque = field(init=False)

    def __post_init__(self) -> None:
        self._tail = collections.deque(maxlen=self.tail_lines)
        self.secrets = [s for s in self.secrets if s]

    def line(self, text: str) -> None:  # any thread
        self._queue.put(text)

    def note(self, text: str) -> None:  # any thread
        self._queue.put(f"[toygres] {text}")

    def drain(self) -> None:  # caller's thread
        while True:
            try:
                text = self._queue.get_nowait()
            except queue.Empty:
                return
            for secret in self.secrets:
                text = text.replace(secret, "REDACTED")
            self._tail.append(text)
            try:
                self.log(text)
            except Exception:  # noqa: BLE001 - a failing log sink must not stop the job
                logger.exception("log sink failed")

    def tail(self) -> list[str]:
        self.drain()
        return list(self._tail)


class PodFollower:
    """Streams one pod's log (follow=True) into the sink on a daemon thread."""

    def __init__(
        self,
        core: kubernetes.client.CoreV1Api,
        pod: str,
        namespace: str,
        sink: PodLogCollector,
        timeout: float,
        container: str = JOB_CONTAINER,
    ):
        self.core, self.pod, self.namespace, self.sink, self.timeout = core, pod, namespace, sink, timeout
        self.container = container
        self.lines = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"log-{pod}", daemon=True)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def start(self) -> PodFollower:
        self._thread.start()
        return self

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            response = self.core.read_namespaced_pod_log(
                self.pod,
                self.namespace,
                container=self.container,
                follow=True,
                _preload_content=False,
                _request_timeout=(self.timeout, None),
            )
            buffer = b""
            try:
                for chunk in response.stream(64 * 1024, decode_content=True):
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    for raw in complete:
                        self._emit(raw)
                if buffer:
                    self._emit(buffer)
            finally:
                response.release_conn()
        except Exception as error:  # noqa: BLE001 - reported through `error`
            self.error = error

    def _emit(self, raw: bytes) -> None:
        self.lines += 1
        self.sink.line(raw.decode("utf-8", errors="replace").rstrip("\r"))
