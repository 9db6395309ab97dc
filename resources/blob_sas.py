"""The blob grant: the one credential a job script gets, least privilege (docs/security.md).

A grant is a JSON document, written to the job's 0600 `AZCOPY_SAS_FILE` (Kubernetes: a per-job
Secret mounted as that file) and read by `blob_url` in templates/scripts/common.sh:

    {"format": 1,
     "query": "<every parameter of each blob's SAS but its signature>",
     "signatures": {"<blob name under BLOB_URL>": "<that blob's sig, URL-encoded>", ...},
     "container": "<a container SAS>"}      (only a parallel-mode backup's: create + write on its staging container)

Each blob's token is `query&sig=<its signature>`: a blob-level SAS (sr=b) that opens that one
name and nothing else. The parameters every token shares are stored once, so an image of
thousands of files fits one Secret (1 MiB) and one file, never an environment variable (128 KiB).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote

from azure.storage.blob import (
    BlobSasPermissions,
    ContainerSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
    generate_container_sas,
)
from pydantic import SecretStr

GRANT_FORMAT = 1
READ = "r"  # a restore: read its image's files
CREATE_WRITE = "cw"  # a backup: create and write its image's names; never read, list or delete


@dataclass(frozen=True)
class SasSigner:
    """What signs SAS tokens: the account key (Azurite, connection strings) or a user delegation
    key the deployment's own identity obtained (workload identity: docs/security.md)."""

    account_name: str
    container: str
    account_key: str | None = None
    delegation_key: UserDelegationKey | None = None

    def blob_token(self, name: str, permission: str, start: datetime, expiry: datetime) -> str:
        return generate_blob_sas(
            account_name=self.account_name,
            container_name=self.container,
            blob_name=name,
            account_key=self.account_key,
            user_delegation_key=self.delegation_key,
            permission=BlobSasPermissions.from_string(permission),
            start=start,
            expiry=expiry,
        )

    def container_token(self, permission: str, start: datetime, expiry: datetime) -> str:
        return generate_container_sas(
            account_name=self.account_name,
            container_name=self.container,
            account_key=self.account_key,
            user_delegation_key=self.delegation_key,
            permission=ContainerSasPermissions.from_string(permission),
            start=start,
            expiry=expiry,
        )


def _split_signature(token: str) -> tuple[str, str]:
    """(the token without its sig, the sig exactly as it stands in the token: URL-encoded)."""
    parts = token.removeprefix("?").split("&")
    signatures = [part.removeprefix("sig=") for part in parts if part.startswith("sig=")]
    if len(signatures) != 1:
        raise RuntimeError("a SAS token without exactly one signature")
    return "&".join(part for part in parts if not part.startswith("sig=")), signatures[0]


def mint_grant(
    signer: SasSigner,
    folder: str,
    names: Iterable[str],
    permission: str,
    start: datetime,
    expiry: datetime,
    container_permission: str | None = None,
) -> SecretStr:
    """One blob-level SAS per name under `folder` (names relative to it, as the scripts use
    them), plus a container SAS only when `container_permission` is given."""
    prefix = folder.strip("/")
    query = None
    signatures: dict[str, str] = {}
    for name in names:
        shared, signature = _split_signature(
            signer.blob_token(f"{prefix}/{name}" if prefix else name, permission, start, expiry)
        )
        if query is not None and shared != query:
            raise RuntimeError("blob SAS tokens of one grant differ in more than their signature")
        query = shared
        signatures[name] = signature
    grant: dict[str, object] = {"format": GRANT_FORMAT, "query": query or "", "signatures": signatures}
    if container_permission:
        grant["container"] = signer.container_token(container_permission, start, expiry)
    return SecretStr(json.dumps(grant, separators=(",", ":")))


def grant_secrets(grant: SecretStr | None) -> list[str]:
    """Every string of a grant that must never reach a log: each signature (URL-encoded and
    decoded) and the container token, for the platforms' log redaction."""
    if grant is None:
        return []
    try:
        data = json.loads(grant.get_secret_value())
    except ValueError:  # not a grant: all of it is secret
        return [grant.get_secret_value()]
    found = []
    for signature in data.get("signatures", {}).values():
        found += [signature, unquote(signature)]
    container = data.get("container")
    if container:
        signature = _split_signature(container)[1]
        found += [container, signature, unquote(signature)]
    return [s for s in found if s]
