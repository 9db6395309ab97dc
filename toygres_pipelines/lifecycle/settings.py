"""The lifecycle domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from pydantic import Field

from records.retention import RetentionPolicy
from toygres_pipelines.shared.settings import Cron, SharedSettings


class LifecycleSettings(SharedSettings):
    retention_cron: Cron = Field(
        default="30 4 * * *", description="When the retention job runs (in nightly_timezone), deleting what expired"
    )
    retention: RetentionPolicy = Field(
        default_factory=RetentionPolicy,
        description="The default retention policy: each field from TOYGRES_RETENTION_<FIELD>; an instance "
        "may override fields in the CMS (toygres-pipelines retention)",
    )
