"""The settings machinery, declared once, and the settings several domains share.

Each domain declares its own settings as a subclass of `SharedSettings` (images/settings.py,
drills/settings.py, ...); `toygres_pipelines/settings.py` composes them into one `Settings`,
which `definitions.py` reads once when the code location loads (`from_env`: each field from
TOYGRES_<FIELD NAME>, a nested record's fields from TOYGRES_<FIELD>_<ITS FIELD>) and hands to
every domain's definitions (nothing reads the environment at import, nor in an op).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster._utils.schedules import is_valid_cron_string
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from records import ValidationFailed
from records.bounds import numeric_rule

ENV_PREFIX = "TOYGRES_"


def _cron(value: str) -> str:
    # Dagster's own check, so a setting it would refuse while building a schedule never loads.
    if not is_valid_cron_string(value):
        raise ValueError("must be a cron expression of 5 fields (minute hour day-of-month month day-of-week)")
    return value


Cron = Annotated[str, AfterValidator(_cron)]


class SharedSettings(BaseModel):
    """What the domains share: the time zone of every schedule and the sensors' pace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nightly_timezone: str = Field(
        default="UTC", description="Time zone of the nightly cron (also decides the date in the partition key)"
    )
    # 5 s: Dagster's daemon evaluates sensors at most every 5 s (MIN_INTERVAL_LOOP_TIME), so a
    # request waits for the next daemon loop only (30 s made request -> run started take 32 s).
    sensor_interval_seconds: int = Field(
        default=5, ge=1, le=86400, description="Request sensors and run-status sensors"
    )
    request_batch: int = Field(default=50, ge=1, le=10000, description="Pending requests claimed per evaluation")
    relaunch_after_seconds: int = Field(
        default=120, ge=1, le=604800, description="An accepted request with no run after this long is emitted again"
    )
    reconcile_interval_seconds: int = Field(default=300, ge=1, le=86400, description="How often the reconciler looks")

    @field_validator("nightly_timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError("must be an IANA time zone name, e.g. UTC or Europe/Berlin") from None
        return value

    @staticmethod
    def env_name(field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings the environment gives (an unset or empty variable keeps the default)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field, info in cls.model_fields.items():
            record = info.annotation
            if isinstance(record, type) and issubclass(record, BaseModel):
                values[field] = cls._record_from_env(record, cls.env_name(field) + "_", env)
            elif env.get(cls.env_name(field), "").strip():
                values[field] = env[cls.env_name(field)].strip()
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0])
            allowed = numeric_rule(cls, field)
            # A validator's own message as it wrote it (pydantic prefixes "Value error, " to msg).
            rule = f"must be {allowed}" if allowed else str(first.get("ctx", {}).get("error") or first["msg"])
            separator = " " if allowed else ": "
            raise ValueError(f"{cls.env_name(field)}: {values.get(field)!r}{separator}{rule}") from None

    @staticmethod
    def _record_from_env(record: type[BaseModel], prefix: str, env: Mapping[str, str]) -> BaseModel:
        """A nested record (the retention policy) from PREFIX<FIELD> variables, by its own rules."""
        given = {
            field: env[prefix + field.upper()].strip()
            for field in record.model_fields
            if env.get(prefix + field.upper(), "").strip()
        }
        checked = getattr(record, "checked", None)
        try:
            return checked(given) if checked is not None else record.model_validate(given)
        except ValidationFailed as error:
            raise ValueError(f"{prefix}{error.field.upper()}: {error.rule}") from None
