"""The drills domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from pydantic import Field

from toygres_pipelines.shared.settings import Cron, SharedSettings


class DrillsSettings(SharedSettings):
    drill_cron: Cron = Field(
        default="0 5 * * *",
        description="When the day's restore drills start (in nightly_timezone); each running instance is drilled "
        "on one day of the week (a stable hash of its name)",
    )
