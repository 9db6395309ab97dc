"""Real services for the tests: a CMS PostgreSQL server and Azurite, one set per xdist worker."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from resources.platform.postgres_server import free_port
from toygres_pipelines.stack import Azurite, CmsServer, remove_tree, require_tools


@dataclass
class Stack:
    root: Path
    cms: CmsServer
    azurite: Azurite


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    require_tools()
    root = Path(tempfile.mkdtemp(prefix="toygres-test-"))
    cms = CmsServer.in_dir(root / "cms")
    azurite = Azurite(root / "azurite", free_port()).start()
    try:
        yield Stack(root=root, cms=cms, azurite=azurite)
    finally:
        azurite.stop()
        cms.server.stop("immediate")
        remove_tree(root)
