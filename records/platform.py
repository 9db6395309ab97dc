"""What a platform (local or Kubernetes) answers: where an instance is, how a job ended."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from records.rows import Record

# Where a step's progress lines go (a run's log, print, a test's list).
LogSink = Callable[[str], None]


class InstanceRef(Record):
    """What a platform needs to find an instance's objects."""

    k8s_name: str
    namespace: str


class JobResult(Record):
    name: str
    succeeded: bool
    log_tail: list[str] = Field(default_factory=list)
    reason: str | None = None


class Endpoints(Record):
    host: str
    port: int
    external_ip: str | None = None
    dns_name: str | None = None
    sslmode: str | None = Field(default=None, description="libpq sslmode clients must use (None: libpq's default)")
    dns_sslmode: str | None = Field(
        default=None,
        description="sslmode of the connection string by DNS name when it is stricter (verify-full: the name is in a "
        "certificate the deployment's CA signed); None: sslmode",
    )
    check_host: str | None = Field(
        default=None,
        description="Where this system connects to check the instance when the public address is not reachable "
        "from inside (a LoadBalancer with source ranges); None: the public address",
    )


class ConnectionStrings(Record):
    ip: str
    dns: str | None
