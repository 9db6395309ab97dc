"""Where the local platform finds the tools the Makefile installs into the checkout (`.tools/`)."""

from __future__ import annotations

import os
from pathlib import Path

from resources.platform.base import PROJECT_DIR


def tools_dir() -> Path:
    return Path(os.environ.get("TOYGRES_TOOLS_DIR", PROJECT_DIR / ".tools"))


def azcopy_path() -> Path:
    configured = os.environ.get("TOYGRES_AZCOPY")
    if configured:
        return Path(configured)
    return tools_dir() / "node_modules" / "@azure-tools" / "azcopy-linux" / "dist" / "bin" / "azcopy_linux_amd64"
