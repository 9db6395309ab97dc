"""The Platform interface: where job scripts run and where Postgres instances live.

Two implementations share it: `LocalPlatform` (processes, directories, local servers) and
`KubernetesPlatform` (Jobs, PVCs, StatefulSets). Both run the very same scripts from
`templates/scripts/` with the very same environment variables (see `JobSpec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum
from pathlib import Path

import dagster as dg
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from records import Endpoints, ImageType, InstanceRef, JobResult, LogSink, validate_dns_label
from records.encryption import validate_age_recipient
from records.job_scripts import RESTORE_ROLES, JobScriptEnv, roles_of

PROJECT_DIR = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = PROJECT_DIR / "templates"
SCRIPTS_DIR = TEMPLATES_DIR / "scripts"


def job_script_files(scripts_dir: Path = SCRIPTS_DIR) -> list[Path]:
    """What every job gets beside it, byte-identical on both platforms: the bash scripts, the
    archive reader and the stream digest backup.sh runs (archive_reader.py, stream_digest.py) and
    the queries it reads (table_sizes.sql)."""
    return sorted(p for p in scripts_dir.iterdir() if p.suffix in (".sh", ".py", ".sql") and p.is_file())


class JobKind(StrEnum):
    backup = "backup"
    restore = "restore"


class JobSpec(BaseModel):
    """A job script run. `env` holds only the caller's variables of the script's model(s)
    (records/job_scripts.py), never a secret: secrets travel by reference, as the model declares.

    - the instance password: `instance` names the instance whose Secret holds it (Kubernetes:
      PGPASSWORD from secretKeyRef; local: POSTGRES_PASSWORD_FILE, a 0600 copy).
    - blob access: `blob_sas`, the job's grant (resources/blob_sas.py: one blob-level SAS per name
      the job may touch, minted by the Dagster process with the account key or a user delegation
      key) as the file AZCOPY_SAS_FILE names (Kubernetes: a per-job Secret mounted; local: 0600).
      Every job has one: no job holds the deployment's identity.
    """

    model_config = ConfigDict(frozen=True)

    kind: JobKind
    name: str = Field(description="DNS-1123 name, unique per run attempt: backup-<image>, restore-<instance>")
    script: str = Field(description="File name under templates/scripts/")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="The caller's variables of the script's model(s) (records/job_scripts.py job_env)",
    )
    instance: InstanceRef = Field(description="The instance the job reads (backup) or writes (restore)")
    blob_sas: SecretStr | None = Field(default=None, description="The job's blob grant; run_job refuses a job without")
    labels: dict[str, str] = Field(default_factory=dict)
    timeout_seconds: int = 3600


def script_contract(spec: JobSpec) -> type[JobScriptEnv]:
    """The model of the script a job runs (its first role's: a logical restore's fetch)."""
    try:
        return roles_of(spec.script)[0]
    except ValueError as error:
        raise PlatformError(f"job {spec.name}: {error}") from None


class JobFailed(RuntimeError):
    def __init__(self, result: JobResult):
        self.result = result
        tail = "\n".join(result.log_tail[-20:])
        super().__init__(f"job {result.name} failed: {result.reason}\n--- last log lines ---\n{tail}")


class PlatformError(RuntimeError):
    pass


class DeploySpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    instance: InstanceRef
    postgres_version: str
    image_type: ImageType = ImageType.stock
    storage_size_gb: int
    internal: bool = False
    dns_label: str
    image_override: str | None = None


class WalArchiverSpec(BaseModel):
    """What the archiver of one instance streams into: the container (credential-free URL), the SAS
    it writes with (None: workload identity), and the age recipient of the deployment, if any."""

    model_config = ConfigDict(frozen=True)

    instance: InstanceRef
    container_url: str
    blob_sas: SecretStr | None = None
    age_recipient: str | None = None
    partial_seconds: float = 2.0


DEFAULT_NAMESPACE = "default"


# Where a restore job finds the age identities (the private keys) of an encrypting deployment.
AGE_IDENTITY_ENV = "AGE_IDENTITY_FILE"


class RestoreRoles:
    """A restore job's two roles (docs/security.md), declared once for both platforms and for both
    restores: the logical one (`restore.sh` + `restore-serve.sh`) and the point-in-time one
    (`restore-pitr.sh` + `restore-pitr-serve.sh`); what each role's environment holds is its model's
    (records/job_scripts.py RESTORE_ROLES: fetch model -> serve model).

    fetch: holds the SAS and the age identity; downloads, hashes, verifies and decrypts, and hands
      the plaintext over in RESTORE_HANDOFF (it writes, serve only reads).
    serve: runs the tenant's code (the image's functions, or the replayed catalogue of a base
      backup: the temporary server, the clean stop) as another OS user / container, with a scrubbed
      environment: its model's variables only, the SCRAM verifier of the instance password
      (PASSWORD_VERIFIER_ENV names its file), never the password.
    """

    # fetch script -> its serve script
    scripts = {fetch.script: serve.script for fetch, serve in RESTORE_ROLES.items()}
    handoff_env = "RESTORE_HANDOFF"
    password_verifier_env = "POSTGRES_PASSWORD_VERIFIER_FILE"
    refuse_dangerous_env = "RESTORE_REFUSE_DANGEROUS"
    # A finding of the serve role's archive scan, as logged ("dangerous content: database <name>: <what>").
    finding_prefix = "dangerous content: "

    @classmethod
    def splits(cls, spec: JobSpec) -> bool:
        """Whether a job runs as these two roles: every restore (restore.sh, restore-pitr.sh)."""
        return spec.kind is JobKind.restore and spec.script in cls.scripts

    @classmethod
    def serve_script_of(cls, spec: JobSpec) -> str:
        return cls.scripts[spec.script]

    @classmethod
    def serve_of(cls, spec: JobSpec) -> type[JobScriptEnv]:
        """The serve role's model of a restore job."""
        return RESTORE_ROLES[script_contract(spec)]


class PlatformResource(dg.ConfigurableResource, ABC):
    """What the ops ask of the place where instances run."""

    # A private key pasted into the wrong setting must not come back in an error message.
    model_config = ConfigDict(hide_input_in_errors=True)

    age_recipient: str | None = Field(
        default=None,
        description="age X25519 recipient (public key, age1...) every new image's files are encrypted to inside "
        "the backup job; None: images are stored unencrypted",
    )
    refuse_dangerous_images: bool = Field(
        default=False,
        description="Refuse to restore an image whose functions run COPY ... PROGRAM or are written in an "
        "untrusted language (default: restore it and report what it holds in the run's metadata)",
    )
    age_identity_recipients: list[str] = Field(
        default=[],
        description="The recipients (public keys) of the age identities restore jobs mount (age-keygen -y); "
        "an encrypted image for any other recipient is refused before anything is created",
    )

    @field_validator("age_recipient")
    @classmethod
    def _recipient_is_age(cls, value: str | None) -> str | None:
        return None if value is None else validate_age_recipient(value, "age_recipient")

    @field_validator("age_identity_recipients")
    @classmethod
    def _identity_recipients_are_age(cls, value: list[str]) -> list[str]:
        return [validate_age_recipient(item, "age_identity_recipients") for item in value]

    def resolve_namespace(self, requested: str | None) -> str:
        """The namespace a new instance goes to, checked at request time (ValidationFailed names
        the field). Here: any valid name, `default` when none is given (the local platform's
        namespaces are just directories)."""
        return validate_dns_label(requested or DEFAULT_NAMESPACE, "namespace")

    def check_postgres_version(self, version: str, field: str, subject: str = "the request") -> None:
        """Refuse, at request time, a PostgreSQL major this platform cannot run jobs for."""

    def check_server_image(self, version: str, image_type: ImageType, field: str, subject: str = "the request") -> None:
        """Refuse, at request time, a server (major and image type) this platform cannot deploy."""

    def check_exposure(self, internal: bool) -> None:
        """Refuse, at request time, an exposure this platform will not create (Kubernetes: a public
        instance open to the whole Internet)."""

    @abstractmethod
    def read_instance_password(self, instance: InstanceRef) -> SecretStr:
        """The superuser password of an existing instance, from its Secret."""

    @abstractmethod
    def ensure_instance_secret(self, instance: InstanceRef, password: SecretStr) -> None:
        """Create (or adopt) the instance's Secret holding its superuser password."""

    @abstractmethod
    def create_volume(self, instance: InstanceRef, size_gb: int) -> None:
        """Create (or adopt) the instance's data volume."""

    @abstractmethod
    def run_job(self, spec: JobSpec, log: LogSink) -> JobResult:
        """Run a job script to completion; raise JobFailed (with the log tail) on failure."""

    @abstractmethod
    def deploy_instance(self, spec: DeploySpec) -> None:
        """Start Postgres from the instance's volume (config, server, service)."""

    @abstractmethod
    def wait_ready(self, instance: InstanceRef, timeout_seconds: int) -> None:
        """Block until the server reports ready; raise PlatformError on timeout."""

    @abstractmethod
    def endpoints(self, instance: InstanceRef) -> Endpoints:
        """Where clients reach the instance."""

    @abstractmethod
    def delete_instance(self, instance: InstanceRef) -> None:
        """Remove everything of the instance: server, service, config, secret, volume, jobs."""

    @abstractmethod
    def delete_job(self, name: str, namespace: str) -> None:
        """Remove a finished job and what it created for itself (idempotent)."""

    def ensure_wal_archiver(self, spec: WalArchiverSpec) -> bool:
        """Start the instance's WAL archiver unless it runs (True: started). docs/pitr.md"""
        raise PlatformError(f"{type(self).__name__} has no WAL archivers yet (docs/pitr.md)")

    def wal_archivers(self) -> list[InstanceRef]:
        """The instances that have an archiver (running or not)."""
        return []

    def wal_archiver_error(self, instance: InstanceRef) -> str | None:
        """The archiver's last error (refused replication, storage down...), None when it is well."""
        return None

    def remove_wal_archiver(self, instance: InstanceRef) -> None:
        """Stop the archiver, drop its replication slot (when the server is up), forget it."""

    @abstractmethod
    def delete_stale_jobs(self, namespaces: set[str], grace_seconds: float) -> list[str]:
        """Remove jobs (and their credentials) older than their timeout plus `grace_seconds`:
        no run follows them any more. Returns `<namespace>/<name>` of each job removed."""
