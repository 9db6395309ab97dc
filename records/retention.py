"""The retention policy: which images of an instance are kept (grandfather-father-son tiers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from records.errors import ValidationFailed


class RetentionPolicy(BaseModel):
    """Keep the newest `keep_newest` ready images of an instance, plus the newest of each of the
    last `keep_daily` days, `keep_weekly` ISO weeks and `keep_monthly` months (calendar periods in
    `timezone`, the current one included). Nothing younger than `min_age_hours` is deleted; a
    failed image's row and leftovers go after `failed_window_days`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    keep_newest: int = Field(default=3, ge=0, le=10000, description="The newest N ready images of each instance")
    keep_daily: int = Field(default=7, ge=0, le=10000, description="The newest image of each of the last D days")
    keep_weekly: int = Field(default=4, ge=0, le=10000, description="The newest image of each of the last W ISO weeks")
    keep_monthly: int = Field(default=12, ge=0, le=10000, description="The newest image of each of the last M months")
    min_age_hours: int = Field(default=24, ge=0, le=87600, description="No image younger than this is deleted")
    failed_window_days: int = Field(
        default=7, ge=0, le=3650, description="Failed images are purged after this many days"
    )
    timezone: str = Field(default="UTC", description="Time zone the days, weeks and months are counted in")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not a known time zone (an IANA name such as Europe/Berlin)") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def checked(cls, values: Mapping[str, Any]) -> Self:
        """A policy from untrusted values; ValidationFailed names the first bad field."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "retention"
            message = str(first["msg"]).removeprefix("Value error, ")
            if field in values:
                separator = " " if message.startswith("is ") else ": "
                message = f"{values[field]!r}{separator}{message}"
            raise ValidationFailed(field, message) from None

    def with_override(self, override: Mapping[str, Any] | None) -> Self:
        """This policy with an instance's override (only the fields it sets) applied."""
        if not override:
            return self
        return self.checked({**self.model_dump(), **override})
