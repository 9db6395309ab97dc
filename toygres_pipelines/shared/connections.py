"""The URLs a restored instance is reached by (a restore, a point-in-time restore, the dev stack)."""

from __future__ import annotations

from urllib.parse import quote

from pydantic import SecretStr

from records import ConnectionStrings, Endpoints

SUPERUSER = "postgres"
DATABASE = "postgres"


def connection_string(
    host: str,
    port: int,
    password: SecretStr | None,
    user: str = SUPERUSER,
    database: str = DATABASE,
    sslmode: str | None = None,
) -> str:
    """A postgresql:// URL; the password, when given, is percent-encoded whatever it contains."""
    credentials = quote(user, safe="")
    if password is not None:
        credentials += ":" + quote(password.get_secret_value(), safe="")
    query = f"?sslmode={sslmode}" if sslmode else ""
    return f"postgresql://{credentials}@{host}:{port}/{quote(database, safe='')}{query}"


def connection_strings(endpoints: Endpoints, password: SecretStr | None) -> ConnectionStrings:
    ip_host = endpoints.external_ip or endpoints.host
    ssl = endpoints.sslmode
    return ConnectionStrings(
        ip=connection_string(ip_host, endpoints.port, password, sslmode=ssl),
        dns=connection_string(endpoints.dns_name, endpoints.port, password, sslmode=endpoints.dns_sslmode or ssl)
        if endpoints.dns_name
        else None,
    )
