"""`instances` (the list) and `connect` (a ready psql command for a running instance)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from records import Instance, InstanceRef, InstanceState, ValidationFailed
from records.tenant_sessions import tenant_session_options
from resources.cms import CMSResource
from resources.platform.base import PlatformError
from toygres_pipelines.cli.exits import EXIT_OK
from toygres_pipelines.cli.output import as_json, clip, endpoint, print_json, print_table, printable, when
from toygres_pipelines.cli.parsing import add_command
from toygres_pipelines.cli.redaction import redact
from toygres_pipelines.resources_from_env import platform_from_env


def cmd_instances(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    instances = cms.instances.list(args.state)
    if args.json:
        print_json([as_json(instance) for instance in instances], out)
        return EXIT_OK
    print_table(
        ["ID", "NAME", "K8S NAME", "NAMESPACE", "STATE", "PG", "ENDPOINT", "CREATED", "ERROR"],
        [
            [
                i.id,
                i.user_name,
                i.k8s_name,
                i.namespace,
                i.state,
                i.postgres_version,
                endpoint(i.dns_connection_string or i.ip_connection_string),
                when(i.created_at),
                clip(i.error_message),
            ]
            for i in instances
        ],
        out,
    )
    return EXIT_OK


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{parts.hostname or ''}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def running_instance_named(cms: CMSResource, name: str) -> Instance:
    """The running instance restored under `name` (its user name), when exactly one is."""
    named = [i for i in cms.instances.list([InstanceState.running]) if i.user_name == name]
    if len(named) == 1:
        return named[0]
    if named:
        choices = ", ".join(sorted(i.k8s_name for i in named))
        raise ValidationFailed("instance", f"{name!r} names {len(named)} running instances: give one of {choices}")
    raise ValidationFailed("instance", f"no instance {name!r} in the CMS")


def read_password(ref: InstanceRef) -> str:
    return platform_from_env().read_instance_password(ref).get_secret_value()


def default_database(uri: str, password: Callable[[], str]) -> str:
    """The instance's application database when it has exactly one, else `postgres` (said on stderr)."""
    secret: str | None = None
    try:
        secret = password()
        # the tenant's search_path and views decide nothing; no statement of its outlasts 5 s
        options = tenant_session_options(5000)
        with psycopg.connect(with_password(uri, secret), connect_timeout=5, options=options) as conn:
            names = [
                row[0]
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                    " AND datname <> 'postgres' ORDER BY 1"
                )
            ]
    except (psycopg.Error, ValidationFailed, PlatformError, OSError) as error:
        reason = redact(str(error).splitlines()[0] if str(error) else type(error).__name__, [secret])
        sys.stderr.write(
            f"# database postgres: the instance's databases could not be listed ({reason}); --database picks one\n"
        )
        return "postgres"
    if len(names) == 1:
        sys.stderr.write(
            f"# database {names[0]}: the instance's only application database (--database picks another)\n"
        )
        return names[0]
    listed = f" ({', '.join(printable(n) for n in names)})" if names else ""
    sys.stderr.write(f"# database postgres: {len(names)} application databases{listed}; --database picks one\n")
    return "postgres"


def cmd_connect(args: argparse.Namespace, cms: CMSResource, out: TextIO) -> int:
    """A ready psql command for a running instance; its password only on request, from the platform's secret."""
    instance = cms.instances.find(args.instance) or running_instance_named(cms, args.instance)
    if instance.state is not InstanceState.running or not instance.ip_connection_string:
        raise ValidationFailed(
            "instance", f"{instance.k8s_name} is {instance.state}: only a running instance accepts connections"
        )
    ref = InstanceRef(k8s_name=instance.k8s_name, namespace=instance.namespace)
    database = args.database or default_database(instance.ip_connection_string, lambda: read_password(ref))
    uri = urlsplit(instance.ip_connection_string)._replace(path="/" + quote(database, safe="")).geturl()
    shown = uri
    if args.show_password:
        shown = with_password(uri, read_password(ref))
    # Quoted for the shell; a percent-encoded URI holds no single quote (encoded anyway, to be sure).
    command = "psql '" + shown.replace("'", "%27") + "'"
    if args.json:
        dns = instance.dns_connection_string
        print_json(
            {
                "instance": instance.k8s_name,
                "namespace": instance.namespace,
                "uri": shown,
                "psql": command,
                "dns_uri": dns,
            },
            out,
        )
    else:
        out.write(command + "\n")
    if not args.show_password:
        sys.stderr.write(
            "# psql asks for the password; --show-password prints a command with it "
            "(read from the instance's Secret, never from the CMS)\n"
        )
    return EXIT_OK


def add_instances_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    instances = add_command(sub, parent, "instances", cmd_instances, help="list instances with their states")
    instances.add_argument(
        "--state", action="append", choices=[s.value for s in InstanceState], help="only this state (repeatable)"
    )


def add_connect_command(sub: Any, parent: Sequence[argparse.ArgumentParser]) -> None:
    connect = add_command(
        sub,
        parent,
        "connect",
        cmd_connect,
        help="print a ready psql command for a running instance",
        description="Print `psql '<uri>'` for a running instance (its k8s_name or id). The password is left out "
        "(psql asks for it) unless --show-password: then it is read from the instance's Secret (the local platform's "
        "file or the Kubernetes Secret) and put in the URI.",
    )
    connect.add_argument("instance", metavar="INSTANCE", help="k8s_name or id of the instance")
    connect.add_argument(
        "--database",
        default=None,
        help="database to connect to (default: the instance's application database when it has exactly one, "
        "else postgres; finding it reads the password from the instance's Secret and connects once)",
    )
    connect.add_argument("--show-password", action="store_true", help="put the superuser password in the URI")
