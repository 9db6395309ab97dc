"""Blob storage: where images live. Azurite locally, Azure Blob Storage in production."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

import dagster as dg
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ExponentialRetry
from pydantic import Field, SecretStr

from records import BackupManifest, ValidationFailed
from resources.blob_sas import CREATE_WRITE, READ, SasSigner, mint_grant

MANIFEST_NAME = "manifest.json"
# Clocks of blob storage and of this process may differ a little: a token starts a bit early.
SAS_CLOCK_SKEW = timedelta(minutes=5)
# A job's SAS outlives its timeout by this much: the platform stops the job first (deadline + grace).
JOB_SAS_MARGIN = timedelta(minutes=10)
# A parallel-mode backup writes into a container of its own, `<prefix><image id hex>`, whose
# metadata names the images container it belongs to (an account may serve several deployments).
STAGING_PREFIX = "toygres-staging-"
STAGING_OWNER_KEY = "toygres_images_container"
# How long the server-side copy of one staging container into its image folder may take.
STAGING_COPY_TIMEOUT = timedelta(hours=1)


class BlobUnavailable(RuntimeError):
    pass


class BlobStorageResource(dg.ConfigurableResource):
    """One container holds every image, each under its own folder `images/<image id>/`.

    With `connection_string` (Azurite, or an account key) the resource signs with the account
    key; with only `account_url` it uses DefaultAzureCredential (workload identity on AKS) and
    signs with a user delegation key that identity obtains. Either way a job script gets only a
    short-lived grant of blob-level SAS for the names it needs (resources/blob_sas.py,
    docs/security.md), never the deployment's credential.
    """

    container: str = Field(default="toygres-images", description="Container holding every image")
    connection_string: str | None = Field(default=None, description="Account-key connection string (Azurite locally)")
    account_url: str | None = Field(
        default=None, description="https://<account>.blob.core.windows.net, for workload identity"
    )
    request_timeout_seconds: int = Field(default=30, description="Per-request timeout of the SDK")
    retry_total: int = Field(default=3, description="Retries of a failed request (backoff 2.5 s, 3.3 s, 4.4 s...)")
    download_chunk_bytes: int = Field(default=4 * 2**20, description="Size of each ranged GET when reading blobs")
    transfer_stall_seconds: int = Field(
        default=180,
        ge=1,
        le=3600,
        description="A job script's transfer fails with 'blob storage unreachable' after this long without progress",
    )

    @cached_property
    def _client(self) -> BlobServiceClient:
        options: dict[str, Any] = {
            "connection_timeout": self.request_timeout_seconds,
            "read_timeout": self.request_timeout_seconds,
            # The SDK default waits 15 s, then 24 s... before retrying; fail within seconds instead.
            # The stub says int; the SDK computes increment_base ** retries, so 1.5 works and is meant.
            "retry_policy": ExponentialRetry(
                initial_backoff=1,
                increment_base=1.5,  # type: ignore[arg-type]
                retry_total=self.retry_total,
            ),
            "max_single_get_size": self.download_chunk_bytes,
            "max_chunk_get_size": self.download_chunk_bytes,
        }
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **options)
        if self.account_url:
            from azure.identity import DefaultAzureCredential

            return BlobServiceClient(self.account_url, credential=DefaultAzureCredential(), **options)
        raise BlobUnavailable("blob storage needs connection_string or account_url")

    @property
    def _container(self) -> ContainerClient:
        return self._client.get_container_client(self.container)

    @property
    def container_url(self) -> str:
        return self._container.url

    @property
    def storage_url(self) -> str:
        return self._client.url.rstrip("/")

    def folder_url(self, prefix: str) -> str:
        """The credential-free URL of an image folder (what job scripts and the CMS see)."""
        return f"{self.container_url}/{prefix.strip('/')}"

    def ensure_container(self) -> None:
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass

    def check_reachable(self) -> None:
        try:
            self._container.get_container_properties()
        except ResourceNotFoundError:
            self.ensure_container()
        except Exception as error:  # noqa: BLE001 - any transport error means unreachable
            raise BlobUnavailable(f"blob storage at {self.storage_url} is unreachable: {error}") from error

    def _signer(self, start: datetime, expiry: datetime, container: str | None = None) -> SasSigner:
        account = self._client.account_name or ""
        container = container or self.container
        if self.connection_string:
            # The key the SDK parsed (its keys are case-insensitive), never the string re-parsed here.
            key = getattr(self._client.credential, "account_key", None)
            if not key:
                raise ValidationFailed(
                    "connection_string",
                    "holds no AccountKey: job grants are signed with the account key "
                    "(or give account_url alone for workload identity)",
                )
            return SasSigner(account_name=account, container=container, account_key=key)
        # Workload identity: the key is valid for this grant's lifetime only (Azure caps it at 7 days).
        key = self._client.get_user_delegation_key(key_start_time=start, key_expiry_time=expiry)
        return SasSigner(account_name=account, container=container, delegation_key=key)

    @staticmethod
    def _window(job_timeout_seconds: int) -> tuple[datetime, datetime]:
        now = datetime.now(UTC)
        return now - SAS_CLOCK_SKEW, now + timedelta(seconds=job_timeout_seconds) + JOB_SAS_MARGIN

    def read_grant(self, prefix: str, names: list[str], job_timeout_seconds: int) -> SecretStr:
        """A restore's grant: read-only blob SAS for exactly these files of the image (relative to
        its folder), for the job's lifetime; nothing else of the container, no listing."""
        start, expiry = self._window(job_timeout_seconds)
        return mint_grant(self._signer(start, expiry), prefix, names, READ, start, expiry)

    def write_grant(self, prefix: str, names: list[str], job_timeout_seconds: int) -> SecretStr:
        """A single-stream backup's grant: create + write blob SAS for these names under the image's
        folder, no read, list or delete."""
        start, expiry = self._window(job_timeout_seconds)
        return mint_grant(self._signer(start, expiry), prefix, names, CREATE_WRITE, start, expiry)

    # --- a parallel-mode backup's staging container (docs/security.md, "Blob storage access") ---

    @staticmethod
    def staging_name(image_id: uuid.UUID) -> str:
        return f"{STAGING_PREFIX}{image_id.hex}"

    def staging_url(self, image_id: uuid.UUID) -> str:
        """The credential-free URL of the image's staging container (the parallel job's BLOB_URL)."""
        return self._client.get_container_client(self.staging_name(image_id)).url

    def staging_grant(self, image_id: uuid.UUID, job_timeout_seconds: int) -> SecretStr:
        """A parallel-mode backup's grant: pg_dump -Fd names its files after dump ids nobody knows
        ahead, so a container SAS, create + write only, on the image's own staging container:
        nothing of the images container, no read, no list, no delete."""
        start, expiry = self._window(job_timeout_seconds)
        signer = self._signer(start, expiry, self.staging_name(image_id))
        return mint_grant(signer, "", [], CREATE_WRITE, start, expiry, container_permission=CREATE_WRITE)

    def create_staging(self, image_id: uuid.UUID) -> None:
        self._client.get_container_client(self.staging_name(image_id)).create_container(
            metadata={STAGING_OWNER_KEY: self.container}
        )

    def promote_staging(self, image_id: uuid.UUID, prefix: str) -> int:
        """Copy every blob of the staging container to `prefix/<its name>` server-side (no byte
        passes through this process); returns how many. The copies' source is read with a
        read-only SAS of the staging container that only this process ever holds."""
        staging = self._client.get_container_client(self.staging_name(image_id))
        start, expiry = self._window(int(STAGING_COPY_TIMEOUT.total_seconds()))
        token = self._signer(start, expiry, staging.container_name).container_token("r", start, expiry)
        targets = []
        for item in staging.list_blobs():
            target = self._container.get_blob_client(f"{prefix.strip('/')}/{item.name}")
            target.start_copy_from_url(f"{staging.get_blob_client(item.name).url}?{token}")
            targets.append(target)
        deadline = time.monotonic() + STAGING_COPY_TIMEOUT.total_seconds()
        for target in targets:
            while (status := target.get_blob_properties().copy.status) == "pending":
                if time.monotonic() > deadline:
                    raise BlobUnavailable(f"copying {target.blob_name} out of its staging container timed out")
                time.sleep(0.5)
            if status != "success":
                raise BlobUnavailable(f"copying {target.blob_name} out of its staging container ended {status}")
        return len(targets)

    def delete_staging(self, image_id: uuid.UUID) -> None:
        """Delete the image's staging container with every blob in it (gone already: nothing to do)."""
        try:
            self._client.delete_container(self.staging_name(image_id))
        except ResourceNotFoundError:
            pass

    def staging_image_ids(self) -> list[uuid.UUID]:
        """The images whose staging containers of this images container exist."""
        found = []
        for item in self._client.list_containers(name_starts_with=STAGING_PREFIX, include_metadata=True):
            if (item.metadata or {}).get(STAGING_OWNER_KEY) != self.container:
                continue
            try:
                found.append(uuid.UUID(hex=item.name.removeprefix(STAGING_PREFIX)))
            except ValueError:
                continue
        return found

    def container_write_token(self, ttl_seconds: int) -> SecretStr:
        """A container SAS with create + write only (no read, list or delete) for a long-lived
        writer whose blob names nobody knows ahead: the WAL archiver, run by the deployment."""
        start, expiry = self._window(ttl_seconds)
        return SecretStr(self._signer(start, expiry).container_token(CREATE_WRITE, start, expiry))

    def list_names(self, prefix: str) -> list[str]:
        return [blob.name for blob in self._container.list_blobs(name_starts_with=prefix.rstrip("/") + "/")]

    def list_with_metadata(self, prefix: str) -> list[tuple[str, dict[str, str]]]:
        """Every blob under prefix with its metadata (one listing call per page, no blob read)."""
        start = prefix.rstrip("/") + "/"
        return [
            (b.name, dict(b.metadata or {}))
            for b in self._container.list_blobs(name_starts_with=start, include=["metadata"])
        ]

    def list_folders(self, prefix: str) -> list[str]:
        """The names of the folders directly under prefix (`images/<id>/` gives `<id>`)."""
        start = prefix.rstrip("/") + "/"
        return [
            item.name[len(start) :].rstrip("/")
            for item in self._container.walk_blobs(name_starts_with=start, delimiter="/")
            if item.name.endswith("/")
        ]

    def read_bytes(self, name: str) -> bytes:
        return self._container.download_blob(name).readall()

    def read_head(self, name: str, length: int) -> bytes:
        """The first `length` bytes (fewer when the blob is shorter)."""
        size = self._container.get_blob_client(name).get_blob_properties().size
        return self._container.download_blob(name, offset=0, length=min(length, size)).readall() if size else b""

    def write_bytes(self, name: str, data: bytes, overwrite: bool = False) -> None:
        self._container.upload_blob(name, data, overwrite=overwrite)

    def iter_chunks(self, name: str) -> Iterator[bytes]:
        yield from self._container.download_blob(name).chunks()

    def stored_size(self, name: str) -> int:
        """The blob's size as blob storage reports it (no byte is read)."""
        return self._container.get_blob_client(name).get_blob_properties().size

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        return self._container.download_blob(name, offset=offset, length=length).readall()

    def read_manifest(self, prefix: str) -> tuple[BackupManifest, str]:
        """The folder's manifest and the sha256 of its exact bytes."""
        raw = self.read_bytes(f"{prefix.rstrip('/')}/{MANIFEST_NAME}")
        return BackupManifest.model_validate_json(raw), hashlib.sha256(raw).hexdigest()

    def delete_blob(self, name: str) -> None:
        """Delete one blob (gone already: nothing to do)."""
        try:
            self._container.delete_blob(name, delete_snapshots="include")
        except ResourceNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> int:
        """Delete every blob under prefix; returns how many were deleted."""
        names = self.list_names(prefix)
        for name in names:
            try:
                self._container.delete_blob(name, delete_snapshots="include")
            except ResourceNotFoundError:
                pass
        return len(names)
