"""Sizes and rates as a person reads them, shown beside the raw numbers (which stay, for plots)."""

from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(num_bytes: int | float) -> str:
    value = float(num_bytes)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_rate(num_bytes: int | float, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    return f"{num_bytes / seconds / 2**20:.1f} MiB/s"
