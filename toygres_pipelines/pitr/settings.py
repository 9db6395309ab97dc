"""The PITR domain's settings (TOYGRES_<FIELD>; composed in toygres_pipelines/settings.py)."""

from pydantic import Field

from toygres_pipelines.shared.settings import SharedSettings


class PitrSettings(SharedSettings):
    rpo_target_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        description="The RPO target: wal_archive_fresh is an ERROR (and pitr-status exits 4) for a running "
        "instance whose WAL archive lags more than this",
    )
