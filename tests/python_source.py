"""Parsing the project's own Python source in tests."""

from __future__ import annotations

import ast
import gc
from pathlib import Path


def parse_source(source: str | Path) -> ast.Module:
    """`ast.parse` with the garbage collector held off. On Python 3.11 a collection inside the
    parse can run a finalizer that parses too (a logged traceback: sqlite connections of earlier
    tests' Dagster instances), and the outer parse then fails with "AST constructor recursion depth
    mismatch" (a clean-clone run's structure test did)."""
    text = source.read_text() if isinstance(source, Path) else source
    enabled = gc.isenabled()
    gc.disable()
    try:
        return ast.parse(text, filename=str(source) if isinstance(source, Path) else "<unknown>")
    finally:
        if enabled:
            gc.enable()
