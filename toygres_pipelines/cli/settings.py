"""The settings the commands read from the environment: the automation settings (status,
retention, retention-plan) and the Dagster webserver that drill and reverify launch runs through."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from records import ValidationFailed
from toygres_pipelines.settings import Settings

DAGSTER_URL_ENV = "TOYGRES_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]{{2,45}}\])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# scheme, host, optional port, optional path prefix (dagster-webserver --path-prefix); no user,
# password, query or fragment: the URL is printed in errors, so it may hold no credential
DAGSTER_URL = re.compile(rf"https?://{_HOST}(?::{_PORT})?(?:/[A-Za-z0-9._~-]+)*/?")
DAGSTER_URL_RULE = "must be http(s)://HOST[:PORT][/PATH], with no user, password, query or fragment"


def automation_settings() -> Settings:
    """TOYGRES_* as the code location reads them; a bad variable is bad input (exit 2), not an
    unexpected error: the message names the variable and its rule."""
    try:
        return Settings.from_env()
    except ValueError as error:
        variable, _, rule = str(error).partition(": ")
        raise ValidationFailed(variable, rule) from error


def described(field: str) -> str:
    """`TOYGRES_BACKUP_FRESHNESS_HOURS (default 26)`: a setting as its declaration gives it."""
    return f"{Settings.env_name(field)} (default {Settings.model_fields[field].default:g})"


def dagster_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """--dagster-url, else TOYGRES_DAGSTER_URL, else the local default; refused unless it full-matches
    DAGSTER_URL. A refused value is shown only when it cannot hold a credential (no '@')."""
    env = os.environ if environ is None else environ
    field, value = ("--dagster-url", flag) if flag is not None else (DAGSTER_URL_ENV, env.get(DAGSTER_URL_ENV))
    if value is None or (flag is None and not value.strip()):
        return DEFAULT_DAGSTER_URL
    if DAGSTER_URL.fullmatch(value):
        return value.rstrip("/")
    shown = "(not shown: it may hold a credential)" if "@" in value else repr(value[:200])
    raise ValidationFailed(field, f"{shown} {DAGSTER_URL_RULE} (e.g. {DEFAULT_DAGSTER_URL})")
