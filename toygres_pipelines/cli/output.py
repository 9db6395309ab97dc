"""How the commands print: JSON records (connection strings without their passwords) and aligned tables."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

from pydantic import BaseModel

from records.units import human_bytes
from toygres_pipelines.cli.redaction import redact_url


def as_json(record: BaseModel, **extra: Any) -> dict[str, Any]:
    data = {**extra, **record.model_dump(mode="json")}
    for key in ("ip_connection_string", "dns_connection_string"):
        if key in data:
            data[key] = redact_url(data[key])
    return data


def print_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Aligned columns; None prints as '-'."""
    text_rows = [["-" if cell is None or cell == "" else str(cell) for cell in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in text_rows]) for i, h in enumerate(headers)]
    for row in [list(headers), *text_rows]:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(none)\n")


def when(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else None


def size(num_bytes: int | None) -> str | None:
    return None if num_bytes is None else human_bytes(num_bytes)


def endpoint(uri: str | None) -> str | None:
    """host:port of a connection string (`toygres-pipelines connect` prints the whole command)."""
    if not uri:
        return None
    try:
        parts = urlsplit(uri)
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        return None


def clip(text: str | None, width: int = 60) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def printable(name: str) -> str:
    """A name on one line of a table: as it is, or quoted with its control characters escaped."""
    return name if name.isprintable() and name.strip() == name and name else repr(name)
