"""The images domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from pydantic import Field

from toygres_pipelines.shared.settings import Cron, SharedSettings


class ImagesSettings(SharedSettings):
    nightly_cron: Cron = Field(default="0 2 * * *", description="When the nightly backups run")
    stale_job_grace_seconds: int = Field(
        default=3600, ge=0, le=2592000, description="A job this long past its timeout is removed by the janitor"
    )
