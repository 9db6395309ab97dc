"""The request listener (toygres_pipelines/requests/listener.py): a CMS request launched on its
notification, by the request sensors' own evaluation, with the sensors still the sweep.

The CMS is the real one of the fixtures. Here the webserver is a recorder injected in its place (as
the connection, the clock and the sleep are), so the loop's behaviour is tested in seconds;
tests/test_request_listener_stack.py launches through a real webserver and its run coordinator."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from records import ImageRequest, RequestState
from resources.platform.local import LocalPlatform
from tests.helpers import add_instance, image_request, topology_without_storage
from toygres_pipelines.images.jobs import backup_run_config
from toygres_pipelines.images.sensors import evaluate_image_requests
from toygres_pipelines.requests.listener import RequestListener
from toygres_pipelines.requests.settings import RequestsSettings
from toygres_pipelines.shared.webserver import LaunchRefused, Webserver, WebserverError, WebserverUnreachable

pytestmark = pytest.mark.integration

# The local platform's request-time rules (tests/test_automation.py RULES_ONLY): nothing runs on it.
RULES_ONLY = LocalPlatform(state_dir="/nonexistent/toygres-rules-only", azcopy_path="/bin/true")
DEADLINE_SECONDS = 30


class RecordingWebserver:
    """Stands in for shared/webserver.py Webserver: records each launch and partition, answers a
    run id; `fail_for` names image partitions whose launch the webserver answers with an error."""

    def __init__(self, fail_for: set[str] | None = None):
        self.launches: list[tuple[str, dict, dict]] = []
        self.partitions: list[str] = []
        self.fail_for = fail_for or set()
        self.lock = threading.Lock()

    def launch(self, job_name, run_config, tags):
        if tags.get("dagster/partition") in self.fail_for:
            raise WebserverError("RunConfigValidationInvalid: the launch failed")
        with self.lock:
            self.launches.append((job_name, dict(run_config), dict(tags)))
        return str(uuid.uuid4())

    def add_image_partition(self, job_name, key):
        self.partitions.append(key)

    def run_for_request(self, request_id):
        return None

    def launched(self) -> dict[str, dict]:
        return {tags["toygres/request-id"]: tags for _, _, tags in self.launches}


def listener(cms, webserver, **options) -> RequestListener:
    return RequestListener(cms=cms, platform=RULES_ONLY, webserver=webserver, settings=RequestsSettings(), **options)


def test_every_insert_of_requests_notifies_the_kind_and_nothing_of_the_row(cms):
    conn = cms.requests.listen()
    try:
        add_instance(cms, "src-abcde")
        image_request(cms, "src-abcde", "note-me", description="p4ssw0rd-looking text")
        notes = list(conn.notifies(timeout=DEADLINE_SECONDS, stop_after=1))
    finally:
        conn.close()
    assert [(n.channel, n.payload) for n in notes] == [("toygres_requests", "image")]


def test_a_notified_request_is_launched_as_the_sensor_would_launch_it(cms):
    source = add_instance(cms, "src-abcde")
    webserver = RecordingWebserver()
    listening = listener(cms, webserver)
    conn = cms.requests.listen()
    try:
        request = image_request(cms, source.k8s_name, "src-abcde__now", description="asked")
        kinds = listening.wait(conn)
    finally:
        conn.close()
    assert kinds == {"image"}
    outcome = listening.evaluate(kinds)
    assert list(outcome.launched) == [str(request.id)]
    [(job, run_config, tags)] = webserver.launches
    assert job == "backup_image"
    assert run_config == backup_run_config(request).to_config_dict()
    assert tags == {
        "toygres/request-id": str(request.id),
        "toygres/kind": "backup",
        "toygres/instance": source.k8s_name,
        "dagster/partition": "src-abcde__now",
    }
    assert webserver.partitions == ["src-abcde__now"]
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.accepted and row.run_id == outcome.launched[str(request.id)]


def test_a_bad_request_beside_a_good_one_is_rejected_naming_the_field_and_the_good_one_launches(cms):
    source = add_instance(cms, "src-abcde")
    bad_name = image_request(cms, source.k8s_name, "bad.name")
    bad_jobs = image_request(cms, source.k8s_name, "src-abcde__jobs", parallel_jobs=99)
    good = image_request(cms, source.k8s_name, "src-abcde__good")
    webserver = RecordingWebserver()
    outcome = listener(cms, webserver).evaluate({"image"})
    assert list(webserver.launched()) == [str(good.id)]
    assert cms.requests.get(ImageRequest, bad_name.id).reason.startswith("image_name: 'bad.name' must")
    assert cms.requests.get(ImageRequest, bad_jobs.id).reason.startswith("parallel_jobs:")
    assert set(outcome.rejected) == {str(bad_name.id), str(bad_jobs.id)}


def test_a_failed_launch_is_logged_the_others_go_on_and_the_sweep_relaunches_it(cms, caplog):
    source = add_instance(cms, "src-abcde")
    lost = image_request(cms, source.k8s_name, "src-abcde__lost")
    fine = image_request(cms, source.k8s_name, "src-abcde__fine")
    webserver = RecordingWebserver(fail_for={"src-abcde__lost"})
    with caplog.at_level("WARNING", logger="toygres.request_listener"):
        outcome = listener(cms, webserver).evaluate({"image"})
    assert list(outcome.launched) == [str(fine.id)]
    assert "the launch failed" in outcome.not_launched[str(lost.id)]
    assert f"request {lost.id}: launch failed" in caplog.text
    # accepted, no run: the request sensor's sweep emits it again
    with dagster_instance() as instance:
        swept = evaluate_image_requests(instance, cms, RULES_ONLY, relaunch_after=0)
    assert [r.run_key for r in swept.run_requests] == [str(lost.id)]


def test_a_refused_second_launch_is_no_failure(cms):
    source = add_instance(cms, "src-abcde")
    request = image_request(cms, source.k8s_name, "src-abcde__twice")

    class AlreadyLaunched(RecordingWebserver):
        def launch(self, job_name, run_config, tags):
            raise LaunchRefused(f"request {tags['toygres/request-id']} already has run r1", "RequestAlreadyLaunched")

    outcome = listener(cms, AlreadyLaunched()).evaluate({"image"})
    assert list(outcome.already_launched) == [str(request.id)] and not outcome.not_launched


def test_a_lost_cms_connection_is_opened_again_with_backoff_and_nothing_is_missed(cms, caplog):
    """The CMS ends the listener's session (as a restart does), then refuses it twice: the listener
    logs each, waits 1 s then 2 s (the injected sleep), listens again and launches what was
    inserted meanwhile."""
    source = add_instance(cms, "src-abcde")
    webserver = RecordingWebserver()
    attempts: list[str] = []
    slept: list[float] = []
    sessions: list[psycopg.Connection] = []

    def connect() -> psycopg.Connection:
        attempts.append("connect")
        if len(attempts) in (2, 3):
            raise psycopg.OperationalError("connection refused (the CMS is restarting)")
        conn = cms.requests.listen()
        sessions.append(conn)
        return conn

    listening = listener(cms, webserver, connect=connect, sleep=slept.append)
    stop = threading.Event()
    thread = threading.Thread(target=listening.serve, args=(stop.is_set,))
    with caplog.at_level("INFO", logger="toygres.request_listener"):
        thread.start()
        try:
            wait_for(lambda: sessions, "the first session")
            first = image_request(cms, source.k8s_name, "src-abcde__before")
            wait_for(lambda: str(first.id) in webserver.launched(), "the first launch")
            with psycopg.connect(cms.dsn, autocommit=True) as admin:
                pid = sessions[0].info.backend_pid
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                second = image_request(cms, source.k8s_name, "src-abcde__while-down")
            wait_for(lambda: str(second.id) in webserver.launched(), "the launch after reconnecting")
        finally:
            stop.set()
            # the loop wakes within the fallback interval; a notification wakes it at once
            image_request(cms, source.k8s_name, "src-abcde__wake")
            thread.join(timeout=60)
    assert not thread.is_alive()
    assert slept[:2] == [1.0, 2.0]
    assert "lost the CMS connection" in caplog.text and "cannot listen on the CMS" in caplog.text
    assert len(attempts) >= 4


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE_SECONDS} s")
        time.sleep(0.05)


def dagster_instance():
    import dagster as dg

    return dg.instance_for_test()


def test_the_stack_starts_the_listener_with_its_log_in_the_log_dir_and_no_key(tmp_path):
    """dev/topology.py (make dev, the daemon tests): the listener's process, its log in the stack's
    log dir (not the terminal), the code server's settings minus the encryption key and the blob
    credential; a CMS it cannot reach is logged and tried again, the process keeps running."""
    from resources.platform.postgres_server import free_port

    topology = topology_without_storage(
        tmp_path,
        {
            "TOYGRES_CMS_DSN": f"host=127.0.0.1 port={free_port()} dbname=cms user=nobody connect_timeout=2",
            "TOYGRES_ENCRYPTION_KEY": "k",
            "TOYGRES_BLOB_CONNECTION_STRING": "s",
            "TOYGRES_PLATFORM": "local",
        },
    )
    env = topology.listener_env("http://127.0.0.1:3000")
    assert env["TOYGRES_DAGSTER_URL"] == "http://127.0.0.1:3000" and env["TOYGRES_CMS_DSN"].startswith("host=")
    assert not {"TOYGRES_ENCRYPTION_KEY", "TOYGRES_BLOB_CONNECTION_STRING"} & set(env)
    topology.start_listener("http://127.0.0.1:3000")
    try:
        wait_for(lambda: "cannot listen on the CMS" in topology.log_tail("request-listener"), "logged CMS failure")
        topology.check_running()
    finally:
        topology.stop()


def test_a_cms_dsn_libpq_cannot_parse_stops_the_listener_and_is_never_echoed(tmp_path):
    """A TOYGRES_CMS_DSN libpq cannot parse (an unquoted password with a space in it): libpq's
    message quotes the DSN's text around the fault, the password's tail here. The listener says
    which variable and which rule, shows nothing of the value, and does not start."""
    from resources.platform.postgres_server import free_port

    topology = topology_without_storage(
        tmp_path,
        {
            "TOYGRES_CMS_DSN": f"host=127.0.0.1 port={free_port()} dbname=cms user=nobody password=hunter2 tail-of-it",
            "TOYGRES_PLATFORM": "local",
        },
    )
    process = topology.start_listener("http://127.0.0.1:3000")
    try:
        wait_for(
            lambda: process.poll() is not None or "cannot listen on the CMS" in topology.log_tail("request-listener"),
            "the listener's exit or its first failure to listen",
        )
        log = topology.log_tail("request-listener")
        assert "tail-of-it" not in log and "hunter2" not in log, log
        assert process.poll() == 2, log
        assert "TOYGRES_CMS_DSN" in log and "not started" in log
    finally:
        topology.stop()


SECRET = "S3cretPw-9f2c"


def test_hostile_values_beside_good_requests_are_rejected_with_bounded_reasons_that_quote_no_credential(cms, caplog):
    """Rows of both kinds whose values are hostile strings (10 KB, newlines, quotes, '=', a DSN
    with its password where a name belongs) beside a good one: each bad row is rejected naming
    its field, the good one launches, and no reason (the CMS column, the log) is longer than a
    screen line's worth nor quotes what looks like a credential, nor breaks a log line."""
    from records import RestoreRequest
    from tests.helpers import insert_restore_request, restore_request

    source = add_instance(cms, "src-abcde")
    dsn = f"postgresql://admin:{SECRET}@db.example:5432/prod"
    bad_images = [
        image_request(cms, source.k8s_name, "x" * 10_000),
        image_request(cms, source.k8s_name, "evil\n2026-01-01 INFO forged line"),
        image_request(cms, source.k8s_name, dsn),
        image_request(cms, source.k8s_name, 'n="q\'uote"'),
        image_request(cms, f"host=db password={SECRET}", "src-abcde__other-source"),
        image_request(cms, "y" * 10_000, "src-abcde__long-source"),
    ]
    good = image_request(cms, source.k8s_name, "src-abcde__good")
    bad_restores = [
        restore_request(cms, name=dsn, source_image_id="no-such__image"),
        restore_request(cms, dns_label="copy\n2026-01-01 INFO forged line", source_image_id="no-such__image"),
        restore_request(cms, source_image_id="z" * 10_000),
        restore_request(cms, source_image_id=dsn),
        restore_request(cms, databases=[dsn], source_image_id="no-such__image"),
    ]
    with psycopg.connect(cms.dsn, autocommit=True) as conn:
        raw = insert_restore_request(conn, name="w" * 10_000, namespace=dsn, storage_size_gb=-1)
    webserver = RecordingWebserver()
    with caplog.at_level("INFO", logger="toygres.request_listener"):
        outcome = listener(cms, webserver).evaluate()
    assert list(webserver.launched()) == [str(good.id)]
    rejected = {str(r.id) for r in bad_images + bad_restores} | {str(raw)}
    assert set(outcome.rejected) == rejected
    reasons = [cms.requests.get(ImageRequest, r.id).reason for r in bad_images]
    reasons += [cms.requests.get(RestoreRequest, r.id).reason for r in bad_restores]
    reasons += [cms.requests.get(RestoreRequest, raw).reason]
    for reason in reasons:
        assert reason and ":" in reason, reason
        assert len(reason) <= 400, f"{len(reason)} characters: {reason[:120]}..."
        assert SECRET not in reason and "\n" not in reason, reason
    assert SECRET not in caplog.text
    assert all("forged line" not in line or "request" in line for line in caplog.text.splitlines())


def accepted_with_its_launch_lost(cms):
    """An image request accepted by the listener whose launch was lost (the webserver down), then
    its source instance stopped: the rules refuse it now."""
    from records import InstanceState

    source = add_instance(cms, "src-abcde")
    request = image_request(cms, source.k8s_name, "src-abcde__late")
    listener(cms, RecordingWebserver(fail_for={"src-abcde__late"})).evaluate({"image"})
    assert cms.requests.get(ImageRequest, request.id).state is RequestState.accepted
    cms.instances.transition(source.id, InstanceState.stopped)
    return request


def test_an_accepted_request_the_rules_now_refuse_is_failed_with_the_reason_not_relaunched_forever(cms):
    """Accepted, its launch lost, then what it needs changed (its source stopped): every relaunch
    would be refused at submit (the run coordinator's rules) and leave no run, so it would stay
    accepted and be re-emitted every TOYGRES_RELAUNCH_AFTER_SECONDS for ever. The sweep checks
    it again first and fails it with the rule's reason."""
    request = accepted_with_its_launch_lost(cms)
    for _ in range(2):
        with dagster_instance() as instance:
            swept = evaluate_image_requests(instance, cms, RULES_ONLY, relaunch_after=0)
        assert swept.run_requests == []
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.failed, row
    assert "source_instance:" in (row.reason or "") and "must be running" in (row.reason or ""), row.reason


def test_a_launch_the_coordinator_refuses_fails_the_request_at_once(cms):
    """The listener's launch refused at submit by the rules (RequestRefused: what it needs changed
    between the accept and the launch): the request is failed with the refusal's message, not
    left accepted for the sweep to relaunch and be refused again."""
    source = add_instance(cms, "src-abcde")
    request = image_request(cms, source.k8s_name, "src-abcde__refused")

    class Refuses(RecordingWebserver):
        def launch(self, job_name, run_config, tags):
            raise LaunchRefused(
                f"Invalid backup request: source_instance: instance {source.k8s_name!r} is stopped, it must be running",
                "RequestRefused",
            )

    outcome = listener(cms, Refuses()).evaluate({"image"})
    assert str(request.id) in outcome.not_launched
    row = cms.requests.get(ImageRequest, request.id)
    assert row.state is RequestState.failed, row
    assert "source_instance:" in (row.reason or "") and "must be running" in (row.reason or ""), row.reason


def test_a_run_left_not_started_is_no_launch_the_sweep_relaunches_the_request(cms):
    """A webserver that died between creating a request's run and submitting it leaves the run
    NOT_STARTED for ever (the run coordinator never saw it, and counts it as no launch). The sweep
    does not record it as the request's run (the request would stay accepted for ever, the
    reconciler waiting on a run that never starts): it relaunches the request."""
    import dagster as dg

    source = add_instance(cms, "src-abcde")
    request = image_request(cms, source.k8s_name, "src-abcde__orphan")
    listener(cms, RecordingWebserver(fail_for={"src-abcde__orphan"})).evaluate({"image"})
    with dagster_instance() as instance:
        orphan = instance.add_run(
            dg.DagsterRun(
                job_name="backup_image",
                tags={"toygres/request-id": str(request.id), "dagster/partition": "src-abcde__orphan"},
                status=dg.DagsterRunStatus.NOT_STARTED,
            )
        )
        swept = evaluate_image_requests(instance, cms, RULES_ONLY, relaunch_after=0)
    assert orphan.run_id not in swept.attached.values()
    assert [r.run_key for r in swept.run_requests] == [str(request.id)]
    assert cms.requests.get(ImageRequest, request.id).run_id is None


def test_many_notifications_leave_one_listening_session_and_no_other_connection(cms):
    """A burst of 120 requests, each its own statement and notification: every one settled, and
    afterwards the listener holds its one LISTEN session and nothing else (each pass's
    connections closed), so connections stay bounded however many notifications come."""
    source = add_instance(cms, "src-abcde")
    webserver = RecordingWebserver()
    listening = listener(cms, webserver)
    stop = threading.Event()
    thread = threading.Thread(target=listening.serve, args=(stop.is_set,))
    thread.start()
    try:
        with psycopg.connect(cms.dsn, autocommit=True) as admin:
            wait_for(
                lambda: (
                    admin.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'").fetchone()[0]
                    == 1
                ),
                "the listening session",
            )
            requests = [image_request(cms, source.k8s_name, f"bad.{n}") for n in range(100)]
            requests += [image_request(cms, source.k8s_name, f"src-abcde__ok{n}") for n in range(20)]

            def settled() -> bool:
                return all(cms.requests.get(ImageRequest, r.id).state is not RequestState.pending for r in requests)

            wait_for(settled, "every request settled")
            wait_for(lambda: len(webserver.launches) == 20, "the 20 good launches")
            others = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'"
            )
            # the last pass may still be closing its connections: a leak never gets down to one
            wait_for(lambda: admin.execute(others).fetchone()[0] == 1, "the LISTEN session alone left")
    finally:
        stop.set()
        image_request(cms, source.k8s_name, "src-abcde__wake")
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_a_webserver_that_does_not_answer_is_tried_once_per_pass_not_once_per_request(cms, caplog):
    """The webserver unreachable or timing out (each try up to its 30 s timeout): the listener's
    pass tries one launch and leaves the rest of its batch to the sweep at once, instead of
    waiting out the timeout once per request (a batch of 50: 25 minutes stalled, no notification
    served meanwhile). Nothing is lost: every one is accepted with no run, and relaunched."""
    source = add_instance(cms, "src-abcde")
    requests = [image_request(cms, source.k8s_name, f"src-abcde__down{n}") for n in range(5)]

    class Unreachable(RecordingWebserver):
        tries = 0

        def add_image_partition(self, job_name, key):
            pass  # answered: the launches are what time out here

        def launch(self, job_name, run_config, tags):
            self.tries += 1
            raise WebserverUnreachable("the webserver at http://127.0.0.1:3000 did not answer: read timed out")

    webserver = Unreachable()
    with caplog.at_level("WARNING", logger="toygres.request_listener"):
        outcome = listener(cms, webserver).evaluate({"image"})
    assert webserver.tries == 1
    assert set(outcome.not_launched) == {str(r.id) for r in requests}
    assert "left to the sweep" in caplog.text
    with dagster_instance() as instance:
        swept = evaluate_image_requests(instance, cms, RULES_ONLY, relaunch_after=0)
    assert sorted(r.run_key for r in swept.run_requests) == sorted(str(r.id) for r in requests)


def test_a_webserver_refusing_connections_is_tried_once_per_pass(cms, caplog):
    """The real client against a port nobody listens on: its failure is a WebserverUnreachable
    (not the transport's own error), so the pass asks once and leaves the rest to the sweep."""
    from resources.platform.postgres_server import free_port

    source = add_instance(cms, "src-abcde")
    for n in range(3):
        image_request(cms, source.k8s_name, f"src-abcde__refused{n}")
    webserver = Webserver(f"http://127.0.0.1:{free_port()}", timeout_seconds=5)
    with pytest.raises(WebserverUnreachable, match="did not answer"):
        webserver.run_for_request("5b0e0a0e-0000-4000-8000-000000000007")
    with caplog.at_level("WARNING", logger="toygres.request_listener"):
        outcome = listener(cms, webserver).evaluate({"image"})
    assert len(outcome.not_launched) == 3 and not outcome.launched
    assert caplog.text.count("not added") == 1, caplog.text
    assert "3 more image request(s) left to the sweep" in caplog.text, caplog.text
