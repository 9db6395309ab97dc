"""The Dagster webserver as a client sees it: its URL's rule (TOYGRES_DAGSTER_URL, read by the CLI
and the request listener) and the public GraphQL calls the request listener makes: launch a run
with its tags (the run coordinator checks it at submit, as every launch), add an image partition,
find the run launched for a request."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportConnectionFailed
from gql.transport.requests import RequestsHTTPTransport

from records import ValidationFailed
from toygres_pipelines.shared.asset_keys import IMAGE_PARTITIONS
from toygres_pipelines.shared.request_claims import LAUNCHED_STATUSES
from toygres_pipelines.shared.tags import REQUEST_ID_TAG

DAGSTER_URL_ENV = "TOYGRES_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]{{2,45}}\])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# scheme, host, optional port, optional path prefix (dagster-webserver --path-prefix); no user,
# password, query or fragment: the URL is printed in errors, so it may hold no credential
DAGSTER_URL = re.compile(rf"https?://{_HOST}(?::{_PORT})?(?:/[A-Za-z0-9._~-]+)*/?")
DAGSTER_URL_RULE = "must be http(s)://HOST[:PORT][/PATH], with no user, password, query or fragment"


def checked_dagster_url(field: str, value: str) -> str:
    """`value` if it full-matches DAGSTER_URL (without a trailing slash); else ValidationFailed naming
    `field`, the value shown only when it cannot hold a credential (no '@')."""
    if DAGSTER_URL.fullmatch(value):
        return value.rstrip("/")
    shown = "(not shown: it may hold a credential)" if "@" in value else repr(value[:200])
    raise ValidationFailed(field, f"{shown} {DAGSTER_URL_RULE} (e.g. {DEFAULT_DAGSTER_URL})")


REPOSITORIES = """
query ToygresRepositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } pipelines { name } } }
    ... on PythonError { message }
  }
}
"""
LAUNCH_RUN = """
mutation ToygresLaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message className }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""
ADD_PARTITION = """
mutation ToygresAddPartition($repositorySelector: RepositorySelector!, $partitionsDefName: String!,
                             $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName,
                      partitionKey: $partitionKey) {
    __typename
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""
REQUEST_RUNS = """
query ToygresRequestRuns($filter: RunsFilter!) {
  runsOrError(filter: $filter, limit: 1) {
    __typename
    ... on Runs { results { runId } }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""


class WebserverError(RuntimeError):
    """The webserver answered, and not with what was asked (its message, no stack)."""


class WebserverUnreachable(ConnectionError):
    """The webserver did not answer (refused, reset, timed out): a caller with more to ask stops
    here rather than wait out the timeout once per call."""


class LaunchRefused(WebserverError):
    """The run coordinator refused the launch at submit: no run exists for it. `already_launched`:
    the request has a run already (RequestAlreadyLaunched), so nothing is wrong; `by_the_rules`:
    the request breaks a rule now (RequestRefused), so every launch of it would be refused."""

    def __init__(self, message: str, class_name: str | None):
        super().__init__(message)
        self.already_launched = class_name == "RequestAlreadyLaunched"
        self.by_the_rules = class_name == "RequestRefused"


@dataclass
class Webserver:
    """The webserver at `url` (its GraphQL API); `transport` is injectable (tests, timeouts)."""

    url: str
    timeout_seconds: int = 30
    transport: Any = None
    _repository: tuple[str, str] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.transport is None:
            self.transport = RequestsHTTPTransport(url=f"{self.url.rstrip('/')}/graphql", timeout=self.timeout_seconds)

    def _execute(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        request = GraphQLRequest(query, variable_values=dict(variables or {}))
        try:
            return Client(transport=self.transport).execute(request)
        except TransportConnectionFailed as error:
            raise WebserverUnreachable(f"the webserver at {self.url} did not answer: {error}") from error

    def repository(self, job_name: str) -> tuple[str, str]:
        """(location, repository) holding `job_name`, asked once (the location's name is the
        deployment's: toygres_pipelines locally, the user deployment's name on Kubernetes)."""
        if self._repository is None:
            answer = self._execute(REPOSITORIES)["repositoriesOrError"]
            if answer["__typename"] != "RepositoryConnection":
                raise WebserverError(f"the webserver lists no code location: {answer.get('message')}")
            found = [
                (node["location"]["name"], node["name"])
                for node in answer["nodes"]
                if any(job["name"] == job_name for job in node["pipelines"])
            ]
            if len(found) != 1:
                raise WebserverError(f"job {job_name!r} is in {len(found)} code locations of the webserver, not 1")
            self._repository = found[0]
        return self._repository

    def launch(self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Launch `job_name` with this run config and these tags; the new run's id."""
        location, repository = self.repository(job_name)
        params = {
            "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job_name},
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
            "mode": "default",
        }
        answer = self._execute(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        kind = answer["__typename"]
        if kind == "LaunchRunSuccess":
            return str(answer["run"]["runId"])
        if kind == "PythonError":
            raise LaunchRefused(answer.get("message") or kind, answer.get("className"))
        errors = "; ".join(e["message"] for e in answer.get("errors") or [])
        raise WebserverError(f"{kind}: {errors or answer.get('message') or 'launch failed'}")

    def add_image_partition(self, job_name: str, key: str) -> None:
        """The image partition `key` (already there: nothing to do)."""
        location, repository = self.repository(job_name)
        answer = self._execute(
            ADD_PARTITION,
            {
                "repositorySelector": {"repositoryLocationName": location, "repositoryName": repository},
                "partitionsDefName": IMAGE_PARTITIONS,
                "partitionKey": key,
            },
        )["addDynamicPartition"]
        if answer["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
            raise WebserverError(f"{answer['__typename']}: {answer.get('message')}")

    def run_for_request(self, request_id: str) -> str | None:
        """A submitted run (LAUNCHED_STATUSES) tagged with this request id, if the webserver's instance has one."""
        launched = {
            "tags": [{"key": REQUEST_ID_TAG, "value": request_id}],
            "statuses": [status.value for status in LAUNCHED_STATUSES],
        }
        answer = self._execute(REQUEST_RUNS, {"filter": launched})["runsOrError"]
        if answer["__typename"] != "Runs":
            raise WebserverError(f"{answer['__typename']}: {answer.get('message')}")
        results = answer["results"]
        return str(results[0]["runId"]) if results else None
