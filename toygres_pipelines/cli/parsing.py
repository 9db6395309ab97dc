"""How a command group adds a command to the parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def add_command(
    sub: Any, parent: Sequence[argparse.ArgumentParser], name: str, handler: Callable[..., int], **options: Any
) -> argparse.ArgumentParser:
    """The subcommand `name` (help, description: argparse's options), run by `handler`."""
    command: argparse.ArgumentParser = sub.add_parser(name, parents=list(parent), **options)
    command.set_defaults(handler=handler)
    return command
