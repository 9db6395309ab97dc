"""The fleet domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from typing import Any, Literal

from pydantic import Field

from toygres_pipelines.shared.settings import Cron, SharedSettings

Severity = Literal["WARN", "ERROR"]


def span(default: float, most: float, description: str, zero_allowed: bool = False) -> Any:
    """A length of time in the unit its name says: a finite number above zero (or zero, when
    `zero_allowed`), at most `most`."""
    return Field(
        default=default,
        gt=None if zero_allowed else 0,
        ge=0 if zero_allowed else None,
        le=most,
        allow_inf_nan=False,
        description=description,
    )


def severity(default: Severity, check: str) -> Any:
    return Field(default=default, description=f"Severity of the {check} check when an instance is out of its window")


class FleetSettings(SharedSettings):
    backup_freshness_hours: float = span(26, 8784, "A running instance's newest ready image must be younger than this")
    backup_freshness_severity: Severity = severity("ERROR", "backups_fresh")
    drill_freshness_days: float = span(
        8, 366, "A running instance's newest successful restore drill must be younger than this"
    )
    drill_freshness_severity: Severity = severity("WARN", "drills_fresh")
    new_instance_grace_hours: float = span(
        26,
        8784,
        "An instance created less than this ago is `new`: a missing image or drill does not put it "
        "out of its windows yet (a restored copy has none)",
        zero_allowed=True,
    )
    freshness_cron: Cron = Field(default="15 * * * *", description="When backups_fresh and drills_fresh are evaluated")
