"""Automation settings read from the environment when the code location loads."""

from __future__ import annotations

import os


def env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}: {value} must be at least {minimum}")
    return value


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


def sensor_interval_seconds() -> int:
    """How often the request sensors look for pending requests (TOYGRES_SENSOR_INTERVAL_SECONDS)."""
    return env_int("TOYGRES_SENSOR_INTERVAL_SECONDS", 30)


def relaunch_after_seconds() -> int:
    """An accepted request with no run after this long is emitted again (TOYGRES_RELAUNCH_AFTER_SECONDS)."""
    return env_int("TOYGRES_RELAUNCH_AFTER_SECONDS", 120)


def reconcile_interval_seconds() -> int:
    return env_int("TOYGRES_RECONCILE_INTERVAL_SECONDS", 300)


def reconcile_grace_seconds() -> int:
    """A finished run's rows are left to the run-status sensors for this long (TOYGRES_RECONCILE_GRACE_SECONDS)."""
    return env_int("TOYGRES_RECONCILE_GRACE_SECONDS", 60, minimum=0)


def nightly_cron() -> str:
    return env_str("TOYGRES_NIGHTLY_CRON", "0 2 * * *")


def nightly_timezone() -> str:
    return env_str("TOYGRES_NIGHTLY_TIMEZONE", "UTC")
