"""The request listener: a CMS request launched the moment it is committed, not at the next tick.

    python -m toygres_pipelines.request_listener      (the process: toygres_pipelines/request_listener.py)

It LISTENs on the CMS channel every insert of requests notifies (migration 013: the payload is the
kind alone) and, on each notification and every TOYGRES_LISTENER_FALLBACK_SECONDS without one,
runs the request sensors' own evaluation (images/sensors.py evaluate_image_requests,
restores/sensors.py evaluate_restore_requests: claim, the launchpad's rules, accept or reject,
re-emit what was accepted and never launched) and launches each run request at once through the
webserver's GraphQL API, with the tags, run config and partition the sensor's run request
carries. The run coordinator checks every launch at submit, as it checks the sensors'.

The sensors remain the sweep: a request the listener missed (not running, a lost notification, a
failed launch) is accepted or re-emitted by them as before. Each request still runs once: claims
never overlap (SKIP LOCKED), and a second launch of a request (the sweep re-emitting what the
listener is launching) is refused at submit (run_coordinator.py `RequestAlreadyLaunched`).

Everything it meets is logged and it goes on: a malformed row is rejected with its reason like any
invalid request, a launch the coordinator's rules refuse (what the request needs changed since its
accept) fails the request with the reason, any other failed launch is left to the sweep, a lost
CMS connection is opened again with backoff (doubling up to TOYGRES_LISTENER_RECONNECT_MAX_SECONDS).
The connection, the clock and the sleep are injected, so the tests drive the loop without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import dagster as dg
import psycopg
from dagster._core.storage.tags import PARTITION_NAME_TAG

from records import ImageRequest, RequestState, RestoreRequest
from resources.cms import CMSResource
from resources.cms.requests import NOTIFIED_KINDS
from resources.platform.base import PlatformResource
from toygres_pipelines.images.jobs import backup_image
from toygres_pipelines.images.sensors import evaluate_image_requests
from toygres_pipelines.requests.settings import RequestsSettings
from toygres_pipelines.restores.jobs import restore_instance
from toygres_pipelines.restores.sensors import evaluate_restore_requests
from toygres_pipelines.shared.request_claims import Evaluation
from toygres_pipelines.shared.tags import REQUEST_ID_TAG
from toygres_pipelines.shared.webserver import LaunchRefused

log = logging.getLogger("toygres.request_listener")


class Launcher(Protocol):
    """What the listener asks of the webserver (shared/webserver.py `Webserver`)."""

    def launch(self, job_name: str, run_config: Any, tags: dict[str, str]) -> str: ...

    def add_image_partition(self, job_name: str, key: str) -> None: ...

    def run_for_request(self, request_id: str) -> str | None: ...


@dataclass(frozen=True)
class RequestSource:
    """One kind of request: the sensor's evaluation and the job its runs are of."""

    kind: str  # the notification's payload (resources/cms/requests.py NOTIFIED_KINDS)
    evaluate: Callable[..., Evaluation]
    job_name: str
    record: Any  # ImageRequest or RestoreRequest: the CMS record of this kind


SOURCES = (
    RequestSource("image", evaluate_image_requests, backup_image.name, ImageRequest),
    RequestSource("restore", evaluate_restore_requests, restore_instance.name, RestoreRequest),
)
EVERY_KIND = frozenset(source.kind for source in SOURCES)
assert EVERY_KIND == set(NOTIFIED_KINDS), "the listener evaluates every kind the CMS notifies"


@dataclass(frozen=True)
class WebserverRuns:
    """The evaluation's questions to Dagster (shared/request_claims.py LaunchedRuns), answered by the
    webserver."""

    webserver: Launcher

    def run_for_request(self, request_id: str) -> str | None:
        return self.webserver.run_for_request(request_id)

    def has_image_partition(self, key: str) -> bool:
        # Not asked: the listener adds the partition of every image it launches (one that exists is
        # left as it is), so an answer would only cost a call.
        return False


@dataclass
class Outcome:
    """What one pass did (for the log and the tests): request id -> run id or reason."""

    launched: dict[str, str] = field(default_factory=dict)
    already_launched: dict[str, str] = field(default_factory=dict)
    not_launched: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


@dataclass
class RequestListener:
    cms: CMSResource
    platform: PlatformResource
    webserver: Launcher
    settings: RequestsSettings = field(default_factory=RequestsSettings)
    connect: Callable[[], psycopg.Connection] | None = None  # default: cms.requests.listen
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def evaluate(self, kinds: Iterable[str] = EVERY_KIND) -> Outcome:
        """One pass over the kinds named: the sensors' evaluation, then every run request launched.
        Never raises: what fails is logged (and left to the sweep)."""
        outcome = Outcome()
        wanted = set(kinds)
        for source in SOURCES:
            if source.kind in wanted:
                self._evaluate_source(source, outcome)
        return outcome

    def _evaluate_source(self, source: RequestSource, outcome: Outcome) -> None:
        started = self.clock()
        try:
            done = source.evaluate(
                WebserverRuns(self.webserver),
                self.cms,
                self.platform,
                limit=self.settings.request_batch,
                relaunch_after=self.settings.relaunch_after_seconds,
                log=log.info,
            )
        except Exception as error:  # noqa: BLE001 - logged; the next pass (or the sweep) tries again
            outcome.errors.append(f"{source.kind}: {error}")
            log.error("evaluating %s requests failed: %s: %s", source.kind, type(error).__name__, error)
            return
        outcome.rejected.update(done.rejected)
        # The webserver unreachable or timing out: each further call would wait out its timeout
        # too, so the rest of the pass is left to the sweep (the requests are accepted, no run).
        answering = True
        for key in done.new_partitions:
            try:
                self.webserver.add_image_partition(source.job_name, key)
            except Exception as error:  # noqa: BLE001 - its launch fails in turn and is left to the sweep
                log.warning("image partition %s not added: %s: %s", key, type(error).__name__, error)
                if isinstance(error, OSError):
                    answering = False
                    break
        left = list(done.run_requests)
        while left and answering:
            answering = self._launch(source, left.pop(0), outcome)
        if left:
            for other in left:
                outcome.not_launched[other.tags[REQUEST_ID_TAG]] = "not tried: the webserver did not answer"
            log.warning("%d more %s request(s) left to the sweep: the webserver did not answer", len(left), source.kind)
        if done.run_requests or done.rejected or done.attached:
            log.info("%s in %.2f s", done.summary(source.kind), self.clock() - started)

    def _launch(self, source: RequestSource, run_request: dg.RunRequest, outcome: Outcome) -> bool:
        """Launch one run request; False when the webserver did not answer (unreachable, timed out)."""
        request_id = run_request.tags[REQUEST_ID_TAG]
        tags = dict(run_request.tags)
        if run_request.partition_key is not None:
            tags[PARTITION_NAME_TAG] = run_request.partition_key
        try:
            run_id = self.webserver.launch(source.job_name, run_request.run_config, tags)
        except LaunchRefused as refused:
            if refused.already_launched:
                outcome.already_launched[request_id] = str(refused)
                log.info("request %s: %s", request_id, refused)
            elif refused.by_the_rules:
                outcome.not_launched[request_id] = str(refused)
                self._fail(source, request_id, str(refused))
            else:
                outcome.not_launched[request_id] = str(refused)
                log.warning("request %s: refused at submit: %s", request_id, refused)
            return True
        except Exception as error:  # noqa: BLE001 - accepted without a run: the sweep re-emits it
            outcome.not_launched[request_id] = f"{type(error).__name__}: {error}"
            log.warning(
                "request %s: launch failed (%s: %s); the sweep relaunches it", request_id, type(error).__name__, error
            )
            return not isinstance(error, OSError)  # WebserverUnreachable, a timeout: it did not answer
        outcome.launched[request_id] = run_id
        try:
            self.cms.requests.attach_run(request_id, run_id)
        except Exception as error:  # noqa: BLE001 - the run-status sensor records it when the run starts
            log.warning("request %s: run %s not recorded yet: %s", request_id, run_id, error)
        log.info("request %s: run %s launched (%s)", request_id, run_id, source.job_name)
        return True

    def _fail(self, source: RequestSource, request_id: str, reason: str) -> None:
        """A request the rules refuse at submit (what it needs changed since its accept): failed
        with the reason, not left accepted for the sweep to relaunch and be refused again."""
        log.warning("request %s: refused at submit by the rules, failed: %s", request_id, reason)
        try:
            self.cms.requests.transition(
                source.record, request_id, RequestState.failed, reason=reason, expected=RequestState.accepted
            )
        except Exception as error:  # noqa: BLE001 - the sweep checks it again before relaunching it
            log.warning("request %s: not failed yet (%s: %s)", request_id, type(error).__name__, error)

    # ---- the loop ---------------------------------------------------------------------------

    def wait(self, conn: psycopg.Connection) -> set[str]:
        """The kinds notified within the fallback interval (all of them when none was, or when a
        notification names no kind known here); a burst is read in one go."""
        kinds: set[str] = set()
        for note in conn.notifies(timeout=self.settings.listener_fallback_seconds, stop_after=1):
            kinds.add(note.payload)
        if not kinds:
            return set(EVERY_KIND)
        for note in conn.notifies(timeout=0.01):
            kinds.add(note.payload)
        return kinds if kinds <= EVERY_KIND else set(EVERY_KIND)

    def serve(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Listen and launch until `stopping()`; a lost CMS is reached again with backoff, and every
        (re)connection starts with a pass over every kind (what was inserted while not listening)."""
        connect = self.connect or self.cms.requests.listen
        conn: psycopg.Connection | None = None
        delay = 0.0
        try:
            while not stopping():
                if conn is None:
                    try:
                        conn = connect()
                    except Exception as error:  # noqa: BLE001 - the CMS is down or restarting: wait, retry
                        delay = min(float(self.settings.listener_reconnect_max_seconds), max(1.0, delay * 2))
                        log.warning(
                            "cannot listen on the CMS (%s: %s); again in %.0f s", type(error).__name__, error, delay
                        )
                        self.sleep(delay)
                        continue
                    if delay:
                        log.info("listening on the CMS again")
                    delay = 0.0
                    kinds: set[str] = set(EVERY_KIND)
                else:
                    try:
                        kinds = self.wait(conn)
                    except psycopg.Error as error:
                        log.warning("lost the CMS connection (%s: %s); reconnecting", type(error).__name__, error)
                        conn.close()
                        conn = None
                        continue
                self.evaluate(kinds)
        finally:
            if conn is not None:
                conn.close()
