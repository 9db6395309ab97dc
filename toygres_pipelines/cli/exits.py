"""The CLI's exit codes and the failures that choose them."""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_INVALID = 2
EXIT_CMS = 3
# status and pitr-status: an instance out of its windows (backup, drill, recoverable window, RPO)
EXIT_OUT_OF_WINDOWS = 4


class CommandFailed(Exception):
    """The command cannot do what was asked, for a reason its message gives in full (exit 1)."""


class CMSUnavailable(Exception):
    """The CMS is not configured, not reachable or not migrated (exit 3)."""


class DagsterUnavailable(Exception):
    """The Dagster webserver that launches runs is not reachable (exit 3, like the CMS)."""
