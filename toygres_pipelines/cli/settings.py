"""The automation settings as the commands read them (status, retention, retention-plan)."""

from __future__ import annotations

from records import ValidationFailed
from toygres_pipelines.settings import Settings


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
