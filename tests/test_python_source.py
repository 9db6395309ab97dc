"""tests/python_source.py holds under the conditions that broke `ast.parse` in a loaded run."""

from __future__ import annotations

import ast
import gc
from pathlib import Path

from tests.python_source import parse_source

SOURCE = Path(__file__).resolve().parents[1] / "resources" / "cms" / "drills.py"


class ParsesWhenCollected:
    """Cyclic garbage whose finalizer parses, as a logged traceback does."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        ast.parse("x = (1, [2, {3: 4}])")


def test_a_parse_survives_a_collection_whose_finalizer_parses():
    text = SOURCE.read_text()
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        for _ in range(20):
            for _ in range(20):
                ParsesWhenCollected()
            assert isinstance(parse_source(text), ast.Module)
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
