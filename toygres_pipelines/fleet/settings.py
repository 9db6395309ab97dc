"""The fleet domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from typing import Literal

from pydantic import Field

from toygres_pipelines.shared.settings import Cron, SharedSettings


class FleetSettings(SharedSettings):
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
    freshness_cron: Cron = Field(default="15 * * * *", description="When backups_fresh and drills_fresh are evaluated")
