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


# ---- CMS: one fresh, migrated database per test (cloned from a migrated template) ----------

import uuid as _uuid  # noqa: E402

import psycopg as _psycopg  # noqa: E402
from psycopg import sql as _sql  # noqa: E402


def _cms_admin(stack: Stack) -> _psycopg.Connection:
    return _psycopg.connect(stack.cms.dsn, autocommit=True, connect_timeout=10)


@pytest.fixture(scope="session")
def cms_encryption_key() -> str:
    from resources.cms import CMSResource

    return CMSResource.generate_key()


@pytest.fixture(scope="session")
def cms_template(stack: Stack) -> str:
    """A database holding the migrated CMS schema, used as the template of each test's database."""
    from resources.cms import CMSResource

    name = f"cms_template_{_uuid.uuid4().hex[:8]}"
    with _cms_admin(stack) as admin:
        admin.execute(_sql.SQL("CREATE DATABASE {}").format(_sql.Identifier(name)))
    CMSResource(
        dsn=stack.cms.server.dsn(stack.cms.user, stack.cms.password, dbname=name),
        encryption_key=CMSResource.generate_key(),
    ).migrate()
    return name


@pytest.fixture
def fresh_database(stack: Stack) -> Iterator[str]:
    """The DSN of a new, empty database on the stack's CMS server (dropped after the test)."""
    name = f"cms_test_{_uuid.uuid4().hex[:12]}"
    with _cms_admin(stack) as admin:
        admin.execute(_sql.SQL("CREATE DATABASE {}").format(_sql.Identifier(name)))
    try:
        yield stack.cms.server.dsn(stack.cms.user, stack.cms.password, dbname=name)
    finally:
        with _cms_admin(stack) as admin:
            admin.execute(_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_sql.Identifier(name)))


@pytest.fixture
def cms(stack: Stack, cms_template: str, cms_encryption_key: str):
    """A CMSResource over a fresh, migrated CMS database of its own (dropped after the test)."""
    from resources.cms import CMSResource

    name = f"cms_test_{_uuid.uuid4().hex[:12]}"
    with _cms_admin(stack) as admin:
        admin.execute(
            _sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(_sql.Identifier(name), _sql.Identifier(cms_template))
        )
    try:
        yield CMSResource(
            dsn=stack.cms.server.dsn(stack.cms.user, stack.cms.password, dbname=name),
            encryption_key=cms_encryption_key,
        )
    finally:
        with _cms_admin(stack) as admin:
            admin.execute(_sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_sql.Identifier(name)))


@pytest.fixture
def cms_dsn(cms) -> str:
    """The DSN of the `cms` fixture's database."""
    return cms.dsn
