"""Automation settings, declared once: each field is read from TOYGRES_<FIELD NAME> by `from_env`,
which `definitions.py` calls once when the code location loads; the schedules, sensors and jobs
are built from the result (nothing reads the environment at import).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dagster._utils.schedules import is_valid_cron_string
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from records import ValidationFailed
from records.bounds import numeric_rule
from records.retention import RetentionPolicy

ENV_PREFIX = "TOYGRES_"
RETENTION_PREFIX = ENV_PREFIX + "RETENTION_"


class AutomationSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    nightly_cron: str = Field(default="0 2 * * *", description="When the nightly backups run")
    nightly_timezone: str = Field(
        default="UTC", description="Time zone of the nightly cron (also decides the date in the partition key)"
    )
    sensor_interval_seconds: int = Field(
        default=30, ge=1, le=86400, description="Request sensors and run-status sensors"
    )
    request_batch: int = Field(default=50, ge=1, le=10000, description="Pending requests claimed per evaluation")
    relaunch_after_seconds: int = Field(
        default=120, ge=1, le=604800, description="An accepted request with no run after this long is emitted again"
    )
    reconcile_interval_seconds: int = Field(default=300, ge=1, le=86400, description="How often the reconciler looks")
    reconcile_grace_seconds: int = Field(
        default=60, ge=0, le=86400, description="A finished run's rows are left to the run-status sensors for this long"
    )
    stale_job_grace_seconds: int = Field(
        default=3600, ge=0, le=2592000, description="A job this long past its timeout is removed by the janitor"
    )
    retention_cron: str = Field(
        default="30 4 * * *", description="When the retention job runs (in nightly_timezone), deleting what expired"
    )
    backup_freshness_hours: float = Field(
        default=26,
        gt=0,
        le=8784,
        allow_inf_nan=False,
        description="A running instance's newest ready image must be younger than this",
    )
    backup_freshness_severity: Literal["WARN", "ERROR"] = Field(
        default="ERROR", description="Severity of the backups_fresh check when an instance is out of its window"
    )
    drill_freshness_days: float = Field(
        default=8,
        gt=0,
        le=366,
        allow_inf_nan=False,
        description="A running instance's newest successful restore drill must be younger than this",
    )
    drill_freshness_severity: Literal["WARN", "ERROR"] = Field(
        default="WARN", description="Severity of the drills_fresh check when an instance is out of its window"
    )
    new_instance_grace_hours: float = Field(
        default=26,
        ge=0,
        le=8784,
        allow_inf_nan=False,
        description="An instance created less than this ago is `new`: a missing image or drill does not put it "
        "out of its windows yet (a restored copy has none)",
    )
    rpo_target_seconds: float = Field(
        default=60,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="The RPO target: wal_archive_fresh is an ERROR (and pitr-status exits 4) for a running "
        "instance whose WAL archive lags more than this",
    )
    freshness_cron: str = Field(default="15 * * * *", description="When backups_fresh and drills_fresh are evaluated")
    drill_cron: str = Field(
        default="0 5 * * *",
        description="When the day's restore drills start (in nightly_timezone); each running instance is drilled "
        "on one day of the week (a stable hash of its name)",
    )
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy,
        description="The default retention policy: each field from TOYGRES_RETENTION_<FIELD>; an instance "
        "may override fields in the CMS (toygres-pipelines retention)",
    )

    @field_validator("nightly_cron", "retention_cron", "freshness_cron", "drill_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        # Dagster's own check, so a setting it would refuse while building a schedule never loads.
        if not is_valid_cron_string(value):
            raise ValueError("must be a cron expression of 5 fields (minute hour day-of-month month day-of-week)")
        return value

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
        values: dict[str, object] = {
            field: env[cls.env_name(field)].strip()
            for field in cls.model_fields
            if field != "retention" and env.get(cls.env_name(field), "").strip()
        }
        policy = {
            field: env[RETENTION_PREFIX + field.upper()].strip()
            for field in RetentionPolicy.model_fields
            if env.get(RETENTION_PREFIX + field.upper(), "").strip()
        }
        try:
            values["retention"] = RetentionPolicy.checked(policy)
        except ValidationFailed as error:
            raise ValueError(f"{RETENTION_PREFIX}{error.field.upper()}: {error.rule}") from None
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
