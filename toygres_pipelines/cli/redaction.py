"""Secrets never leave the process: a DSN described without its password, passwords redacted."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict


def describe_dsn(dsn: str) -> str:
    """host/port/dbname/user of a DSN, never its password (nor the raw string)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "an unparsable connection string"
    shown = [f"{key}={parts[key]}" for key in ("host", "port", "dbname", "user") if parts.get(key)]
    return " ".join(shown) or "libpq defaults"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove passwords from a message: those given, and any user:password@ in a URL."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def redact_url(url: str | None) -> str | None:
    """A postgresql:// connection string without its password, if it carried one."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return redact(url)


def dsn_password(dsn: str | None) -> str | None:
    if not dsn:
        return None
    try:
        password = conninfo_to_dict(dsn).get("password")
        return None if password is None else str(password)
    except psycopg.Error:
        return None
