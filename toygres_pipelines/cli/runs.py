"""`drill` and `reverify`: launch the restore_drill / reverify_image jobs through the Dagster
webserver (TOYGRES_DAGSTER_URL), after the checks those jobs make, so a refused launch never becomes
a run; --wait prints the run's events in order and ends with its result."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import dagster as dg
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport.exceptions import TransportError
from requests import RequestException

from records import ImageState, ValidationFailed, validate_image_name
from records.naming import parse_uuid
from resources.cms import CMSResource
from toygres_pipelines.cli.exits import EXIT_OK, EXIT_UNEXPECTED, DagsterUnavailable
from toygres_pipelines.cli.output import print_json
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.drills.jobs import drill_run_config
from toygres_pipelines.images.reverify import reverify_run_config
from toygres_pipelines.lifecycle.images import find

T = TypeVar("T")
DAGSTER_URL_ENV = "TOYGRES_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
LOCATION = "toygres_pipelines"
REPOSITORY = "__repository__"
FINAL_RUN_STATES = {"SUCCESS": EXIT_OK, "FAILURE": EXIT_UNEXPECTED, "CANCELED": EXIT_UNEXPECTED}

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


def dagster_client(url: str) -> DagsterGraphQLClient:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed(DAGSTER_URL_ENV, f"{url!r} must be an http(s) URL such as {DEFAULT_DAGSTER_URL}")
    return DagsterGraphQLClient(parts.hostname, port_number=parts.port, use_https=parts.scheme == "https", timeout=60)


def reachable(url: str, call: Callable[[], T]) -> T:
    """A transport failure (refused, reset, timed out) is the webserver being unreachable: exit 3."""
    try:
        return call()
    except DagsterGraphQLClientError as error:
        cause = error.__cause__ or error.__context__
        if not isinstance(cause, (RequestException, TransportError, OSError)):
            raise
        reason = " ".join(str(cause).split())[:300] or type(cause).__name__
        raise DagsterUnavailable(
            f"cannot reach the Dagster webserver ({DAGSTER_URL_ENV} / --dagster-url: {url}): {reason}"
        ) from error


def launch(args: argparse.Namespace, job: str, run_config: dg.RunConfig, what: str, out: TextIO) -> int:
    url = args.dagster_url or os.environ.get(DAGSTER_URL_ENV) or DEFAULT_DAGSTER_URL
    client = dagster_client(url)
    run_id = reachable(
        url,
        lambda: client.submit_job_execution(
            job, repository_location_name=LOCATION, repository_name=REPOSITORY, run_config=run_config.to_config_dict()
        ),
    )
    if args.json:
        print_json({"job": job, "run_id": run_id, "image": what}, out)
    else:
        out.write(f"{job} run {run_id} launched: {what}\n")
        out.flush()
    return follow(args, client, run_id) if args.wait else EXIT_OK


def follow(args: argparse.Namespace, client: DagsterGraphQLClient, run_id: str) -> int:
    """--wait: every message event of the run in order (by the event log's cursor), then its result."""
    out = sys.stderr if args.json else sys.stdout
    cursor = None
    deadline = time.monotonic() + args.wait_timeout if args.wait_timeout else None
    while True:
        answer = client._execute(RUN_LOGS, {"runId": run_id, "cursor": cursor})
        logs = answer["logsForRun"]
        if logs["__typename"] == "EventConnection":
            for event in logs["events"]:
                if event.get("message"):
                    out.write(f"{event['message']}\n")
            out.flush()
            cursor = logs["cursor"]
            if logs["hasMore"]:
                continue
        status = answer["runOrError"].get("status")
        if status in FINAL_RUN_STATES and not (logs["__typename"] == "EventConnection" and logs["hasMore"]):
            # one more read: events written between the two parts of the query are not lost
            tail = client._execute(RUN_LOGS, {"runId": run_id, "cursor": cursor})["logsForRun"]
            for event in tail.get("events", []):
                if event.get("message"):
                    out.write(f"{event['message']}\n")
            out.write(f"run {run_id} {status.lower()}\n")
            out.flush()
            return FINAL_RUN_STATES[status]
        if deadline is not None and time.monotonic() > deadline:
            out.write(f"run {run_id} still {status} after {args.wait_timeout} s: stopped waiting (the run goes on)\n")
            return EXIT_UNEXPECTED
        time.sleep(args.poll_seconds)


def cmd_drill(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    image = checked_image(cms, args.image, ImageState.ready)
    return launch(args, "restore_drill", drill_run_config(str(image.id)), f"image {image.name} ({image.id})", out)


def cmd_reverify(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
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
