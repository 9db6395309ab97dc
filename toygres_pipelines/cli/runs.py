"""`drill` and `reverify`: launch the restore_drill / reverify_image jobs through the Dagster
webserver (TOYGRES_DAGSTER_URL), after the checks those jobs make, so a refused launch never becomes
a run; --wait prints the run's events in order and ends with its result."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import dagster as dg
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportConnectionFailed, TransportProtocolError, TransportServerError
from gql.transport.requests import RequestsHTTPTransport
from requests import RequestException

from records import ImageState, ValidationFailed, validate_image_name
from records.naming import parse_uuid
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, EXIT_UNEXPECTED, DagsterUnavailable
from toygres_pipelines.cli.output import print_json
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.cli.settings import DAGSTER_URL_ENV, DEFAULT_DAGSTER_URL, dagster_url
from toygres_pipelines.drills.jobs import drill_run_config
from toygres_pipelines.images.reverify import reverify_run_config
from toygres_pipelines.lifecycle.images import find

T = TypeVar("T")
LOCATION = "toygres_pipelines"
REPOSITORY = "__repository__"
# a finished run's status: its exit code and the word the last line of --wait ends with
FINAL_RUN_STATES = {"SUCCESS": (EXIT_OK, "succeeded"), "FAILURE": (EXIT_UNEXPECTED, "failed"),
                    "CANCELED": (EXIT_UNEXPECTED, "canceled")}  # fmt: skip
RUN_END_EVENTS = {"RunSuccessEvent": "SUCCESS", "RunFailureEvent": "FAILURE", "RunCanceledEvent": "CANCELED"}
# no answer, a server error or an answer that is not GraphQL: not a Dagster webserver we can use
UNREACHABLE = (RequestException, OSError, TransportConnectionFailed, TransportProtocolError, TransportServerError)

RUN_LOGS = """
query RunLogs($runId: ID!, $cursor: String) {
  logsForRun(runId: $runId, afterCursor: $cursor) {
    __typename
    ... on EventConnection { cursor hasMore events { __typename ... on MessageEvent { message timestamp } } }
    ... on PythonError { message }
  }
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""


def checked_image(cms: CMSResource, ref: str, wanted: ImageState) -> Any:
    """The image `ref` names (an id or a name, full-match rules), in the state the job needs."""
    if parse_uuid(ref) is None:
        validate_image_name(ref, field="image")
    image = find(cms, ref)
    if image.state is not wanted:
        raise ValidationFailed(
            "image", f"image {image.name!r} is {image.state}: only a {wanted} image can be used here"
        )
    return image


class Webserver:
    """The Dagster webserver at `url` (checked by settings.dagster_url): runs are launched with
    DagsterGraphQLClient, the run's events read with the gql client over the same transport."""

    def __init__(self, url: str):
        self.url = url
        self.transport = RequestsHTTPTransport(url=f"{url}/graphql", timeout=60)
        parts = urlsplit(url)
        self.client = DagsterGraphQLClient(
            parts.hostname or "",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            path_prefix=parts.path,
            transport=self.transport,
        )

    def reachable(self, call: Callable[[], T]) -> T:
        """A transport failure (refused, reset, timed out, not GraphQL) is the webserver being
        unreachable: exit 3."""
        try:
            return call()
        except DagsterGraphQLClientError as error:
            cause = error.__cause__ or error.__context__
            if not isinstance(cause, UNREACHABLE):
                raise
            raise self.unavailable(cause) from error
        except UNREACHABLE as error:
            raise self.unavailable(error) from error

    def unavailable(self, cause: BaseException) -> DagsterUnavailable:
        reason = " ".join(str(cause).split())[:300] or type(cause).__name__
        return DagsterUnavailable(
            f"cannot reach the Dagster webserver ({DAGSTER_URL_ENV} / --dagster-url: {self.url}): {reason}"
        )

    def launch(self, job: str, run_config: dg.RunConfig) -> str:
        return self.reachable(
            lambda: self.client.submit_job_execution(
                job,
                repository_location_name=LOCATION,
                repository_name=REPOSITORY,
                run_config=run_config.to_config_dict(),
            )
        )

    def run_logs(self, run_id: str, cursor: str | None) -> dict[str, Any]:
        """One page of the run's event log after `cursor`, and the run's status."""
        query = GraphQLRequest(RUN_LOGS, variable_values={"runId": run_id, "cursor": cursor})
        return self.reachable(lambda: Client(transport=self.transport).execute(query))


def launch(args: argparse.Namespace, job: str, run_config: dg.RunConfig, what: str, out: TextIO) -> int:
    webserver = Webserver(args.url)
    run_id = webserver.launch(job, run_config)
    if args.json:
        print_json({"job": job, "run_id": run_id, "image": what}, out)
    else:
        out.write(f"{job} run {run_id} launched: {what}\n")
        out.flush()
    return follow(args, webserver, run_id) if args.wait else EXIT_OK


def print_events(logs: dict[str, Any], out: TextIO) -> str | None:
    """Print a page's event messages up to the run's end event; the run's final status if it is
    there. Events after the end (the launcher's "Process for run exited") are not the run's."""
    for event in logs.get("events", []):
        if event.get("message"):
            out.write(f"{event['message']}\n")
        if event["__typename"] in RUN_END_EVENTS:
            out.flush()
            return RUN_END_EVENTS[event["__typename"]]
    out.flush()
    return None


def finish(run_id: str, status: str, out: TextIO) -> int:
    code, result = FINAL_RUN_STATES[status]
    out.write(f"run {run_id} {result}\n")
    out.flush()
    return code


def follow(args: argparse.Namespace, webserver: Webserver, run_id: str) -> int:
    """--wait: every message event of the run in order (by the event log's cursor) up to its end
    event, then its result."""
    out = sys.stderr if args.json else sys.stdout
    cursor = None
    final = None  # the run's status was final one read ago
    deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
    while True:
        answer = webserver.run_logs(run_id, cursor)
        logs = answer["logsForRun"]
        if logs["__typename"] == "EventConnection":
            if ended := print_events(logs, out):
                return finish(run_id, ended, out)
            cursor = logs["cursor"]
            if logs["hasMore"]:
                continue
        if final is not None:  # ended without an end event in its log (one read after the status)
            return finish(run_id, final, out)
        status = answer["runOrError"].get("status")
        if status in FINAL_RUN_STATES:
            final = status
            continue
        if deadline is not None and time.monotonic() > deadline:
            out.write(f"run {run_id} still {status} after {args.wait_timeout} s: stopped waiting (the run goes on)\n")
            return EXIT_UNEXPECTED
        time.sleep(args.poll_seconds)


def cmd_drill(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    args.url = dagster_url(args.dagster_url)
    image = checked_image(cms, args.image, ImageState.ready)
    return launch(args, "restore_drill", drill_run_config(str(image.id)), f"image {image.name} ({image.id})", out)


def cmd_reverify(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    args.url = dagster_url(args.dagster_url)
    image = checked_image(cms, args.image, ImageState.corrupt)
    return launch(args, "reverify_image", reverify_run_config(str(image.id)), f"image {image.name} ({image.id})", out)


def add_launch_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("image", help="the image: its id or name")
    command.add_argument(
        "--dagster-url", help=f"the Dagster webserver that launches the run (default: ${DAGSTER_URL_ENV} or "
        f"{DEFAULT_DAGSTER_URL})"
    )  # fmt: skip
    command.add_argument("--wait", action="store_true", help="print the run's events in order, then its result "
                         "(exit 0 succeeded, 1 failed or canceled)")  # fmt: skip
    command.add_argument("--poll-seconds", type=float, default=1.0, help="with --wait: how often to look (default: 1)")
    command.add_argument("--wait-timeout", type=float, default=0, metavar="SECONDS",
                         help="with --wait: give up after this long (default: never); the run goes on")  # fmt: skip


def add_run_commands(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    drill = add_command(
        sub, parent, "drill", cmd_drill, help="launch a restore drill of a ready image (the restore_drill job)",
        description="Check the image (ready), then launch the restore_drill job through the Dagster webserver.",
    )  # fmt: skip
    add_launch_arguments(drill)
    reverify = add_command(
        sub, parent, "reverify", cmd_reverify,
        help="launch a re-verification of a corrupt image (the reverify_image job)",
        description="Check the image (corrupt), then launch the reverify_image job through the Dagster webserver.",
    )  # fmt: skip
    add_launch_arguments(reverify)
