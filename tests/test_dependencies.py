"""The product's imports are its declared dependencies: nothing works only because another package
happened to pull it in (a job image built from pyproject.toml alone would lack it)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from tests.python_source import parse_source

ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("records", "resources", "toygres_pipelines")


def imported_top_level_modules() -> dict[str, set[str]]:
    """Each third-party top-level module the product code imports, with the files importing it."""
    found: dict[str, set[str]] = {}
    for package in PRODUCT_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(parse_source(path)):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PRODUCT_PACKAGES:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"]) + list(project["optional-dependencies"]["local"])
    return {normalized(re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]) for requirement in requirements}


def test_every_third_party_module_the_product_imports_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    declared = declared_distributions()
    undeclared = {
        module: sorted(files)
        for module, files in imported_top_level_modules().items()
        if not {normalized(d) for d in distributions.get(module, [])} & declared
    }
    assert undeclared == {}
