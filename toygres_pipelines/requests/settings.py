"""The requests domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from pydantic import Field

from toygres_pipelines.shared.settings import SharedSettings


class RequestsSettings(SharedSettings):
    reconcile_grace_seconds: int = Field(
        default=60, ge=0, le=86400, description="A finished run's rows are left to the run-status sensors for this long"
    )
    listener_fallback_seconds: int = Field(
        default=10,
        ge=1,
        le=3600,
        description="The request listener looks at the CMS this often even without a notification",
    )
    listener_reconnect_max_seconds: int = Field(
        default=30, ge=1, le=3600, description="The request listener's longest wait between attempts to reach the CMS"
    )
