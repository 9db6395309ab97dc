"""Real services for the tests: a CMS PostgreSQL server and Azurite, one set per xdist worker."""

from __future__ import annotations

import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from resources.platform.postgres_server import free_port
from toygres_pipelines.dev.stack import Azurite, CmsServer, remove_tree, require_tools

# Started in the background (`make test &` from a script, CI), pytest inherits SIGINT and SIGQUIT
# ignored. Every Dagster execution then copies SIGINT's disposition to SIGTERM
# (dagster._utils.interrupts), and ignored signals are inherited by every child the tests start.
# A handler (not SIG_IGN) is reset to the default on exec, so children start with default
# dispositions again. SIGHUP is left alone: ignoring it is what nohup is for.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


@dataclass
class Stack:
    root: Path
    cms: CmsServer
    azurite: Azurite


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    require_tools()
    root = Path(tempfile.mkdtemp(prefix="toygres-test-"))
    root.chmod(0o711)  # servers run as the unprivileged service user, who must reach inside
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
    ).migrations.apply()
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


# ---- the local platform, blob storage and a pagila source instance ---------------------------

from collections.abc import Callable  # noqa: E402

from pydantic import SecretStr  # noqa: E402

from records import InstanceRef  # noqa: E402
from resources.blob import BlobStorageResource  # noqa: E402
from resources.platform.local import LocalPlatform  # noqa: E402
from resources.platform.local_tools import azcopy_path  # noqa: E402
from toygres_pipelines.dev.demo import load_pagila, provision_server, register_running  # noqa: E402

# Quotes, a backslash, a colon and URL-reserved characters: every layer must carry it exactly.
SOURCE_PASSWORD = "s'ou\"rce:p@ss/w\\rd%?#"


@pytest.fixture(scope="session")
def platform(stack: Stack) -> Iterator[LocalPlatform]:
    platform = LocalPlatform(state_dir=str(stack.root / "platform"), azcopy_path=str(azcopy_path()))
    yield platform
    instances = stack.root / "platform" / "instances"
    for namespace in instances.glob("*") if instances.exists() else []:
        for instance in namespace.glob("*"):
            platform.delete_instance(InstanceRef(k8s_name=instance.name, namespace=namespace.name))


@pytest.fixture(scope="session")
def pagila_ref(platform: LocalPlatform) -> InstanceRef:
    """One running server loaded with pagila, shared by the tests of a worker."""
    ref = InstanceRef(k8s_name="pagila-src", namespace="default")
    provision_server(platform, ref, SecretStr(SOURCE_PASSWORD))
    load_pagila(platform, ref)
    return ref


@pytest.fixture
def source(cms, platform: LocalPlatform, pagila_ref: InstanceRef):
    """The pagila server, registered as a running instance in this test's CMS."""
    return register_running(cms, platform, pagila_ref)


@pytest.fixture
def source_dsn(platform: LocalPlatform, pagila_ref: InstanceRef) -> Callable[[str], str]:
    endpoints = platform.endpoints(pagila_ref)

    def dsn(database: str) -> str:
        return _psycopg.conninfo.make_conninfo(
            host=endpoints.host, port=endpoints.port, user="postgres", password=SOURCE_PASSWORD, dbname=database
        )

    return dsn


@pytest.fixture
def blob(stack: Stack) -> BlobStorageResource:
    """A container of its own on Azurite."""
    # Small ranged reads, so that verification walks many chunks even of a pagila-sized dump.
    resource = BlobStorageResource(
        connection_string=stack.azurite.connection_string,
        container=f"t{_uuid.uuid4().hex[:20]}",
        download_chunk_bytes=128 * 1024,
    )
    resource.ensure_container()
    return resource


@pytest.fixture
def resources(cms, blob: BlobStorageResource, platform: LocalPlatform) -> dict:
    return {"cms": cms, "blob": blob, "platform": platform}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that reach the real stack (the `stack` fixture, directly or not) are the integration
    tier; the rest is pure logic: `pytest -m "not integration"` runs it without services."""
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
