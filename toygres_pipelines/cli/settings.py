"""The settings the commands read from the environment: the automation settings (status,
retention, retention-plan) and the Dagster webserver that drill and reverify launch runs through."""

from __future__ import annotations

import os
from collections.abc import Mapping

from records import ValidationFailed
from toygres_pipelines.settings import Settings
from toygres_pipelines.shared.webserver import DAGSTER_URL_ENV, DEFAULT_DAGSTER_URL, checked_dagster_url


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
    return checked_dagster_url(field, value)
