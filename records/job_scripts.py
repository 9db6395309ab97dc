"""The job-script contract: one model per bash script under templates/scripts/, declaring every
environment variable the script (or a tool it runs) reads: its type, its meaning, who supplies it
and whether the script requires it.

Who supplies a variable (`Supply`):
- `caller`: the op that builds the job (`JobSpec.env`, rendered by `JobScriptEnv.env()`);
- `platform`: the platform, from where things are (PGHOST, VOLUME_PATH, TMPDIR...);
- `secret_file`: the platform, as the path of a file holding a secret (locally a 0600 copy, on
  Kubernetes a Secret mounted read-only): the model holds the path's name, never the secret;
- `secret_ref`: Kubernetes only, a `secretKeyRef`: no value ever passes through the model.

A model instance holds the caller's values only; the platform's variables are declarations (their
values are the platform's, `JobScriptEnv.environment` merges them). tests/test_job_scripts.py
parses each script and fails when script and model disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic.fields import PydanticUndefined

from records.rows import Instance


class Supply(StrEnum):
    caller = "caller"
    platform = "platform"
    secret_file = "secret_file"
    secret_ref = "secret_ref"


class Reader(StrEnum):
    """Who reads a variable: the script's own text, a tool it runs (libpq, azcopy), or the platform."""

    script = "script"
    tool = "tool"
    platform = "platform"


def variable(
    description: str,
    supply: Supply = Supply.caller,
    *,
    default: Any = PydanticUndefined,
    required: bool = False,
    read_by: Reader = Reader.script,
    unset: str | None = None,
) -> Any:
    """One variable of a script. A caller variable is required when it has no default; a platform
    one (never set by the caller, so None in the model) says `required` when the script needs it.
    `unset`: the script's own default (`${VAR:-unset}`), what an unset optional variable means."""
    if supply is not Supply.caller:
        default = None
    return Field(
        default,
        description=description,
        json_schema_extra={"supply": supply.value, "read_by": read_by.value, "required": required, "unset": unset},
    )


class JobScriptEnv(BaseModel):
    """The environment of one job script (`script`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    script: ClassVar[str]
    # A scrubbed role gets its declared variables only; another also keeps what the caller adds to
    # its process beyond the contract (a PATH of its own).
    scrubbed: ClassVar[bool] = False

    TMPDIR: str | None = variable("Where temporary files go (the job's scratch space)", Supply.platform)
    TOYGRES_JOB: str | None = variable(
        "The job's name; the script's own TOYGRES_JOB= names its log lines", Supply.platform
    )
    PROGRESS_SECONDS: int | None = variable(
        "How often a long step logs how far it is (common.sh start_progress)", default=None, unset="5"
    )

    @model_validator(mode="after")
    def _caller_values_only(self) -> JobScriptEnv:
        for name in self.model_fields_set:
            if self.supply_of(name) is not Supply.caller and getattr(self, name) is not None:
                raise ValueError(f"{name}: supplied by the platform ({self.supply_of(name)}), never by the caller")
        return self

    @classmethod
    def supply_of(cls, name: str) -> Supply:
        return Supply(_extra(cls, name)["supply"])

    @classmethod
    def variables(cls, *supplies: Supply) -> frozenset[str]:
        """The declared variables (of the given suppliers; none given: all)."""
        return frozenset(name for name in cls.model_fields if not supplies or cls.supply_of(name) in supplies)

    @classmethod
    def unset(cls, name: str) -> str | None:
        """The script's default of an optional variable, when the model declares it."""
        value = _extra(cls, name)["unset"]
        return None if value is None else str(value)

    @classmethod
    def read_by(cls, name: str) -> Reader:
        return Reader(_extra(cls, name)["read_by"])

    @classmethod
    def required(cls) -> frozenset[str]:
        """What the script refuses to run without."""
        return frozenset(
            name
            for name, field in cls.model_fields.items()
            if field.is_required() or (cls.supply_of(name) is not Supply.caller and _extra(cls, name)["required"])
        )

    @classmethod
    def partial_env(cls, **values: Any) -> dict[str, str]:
        """Some caller variables, checked against their declared types, as the script reads them."""
        for name in values:
            if cls.supply_of_or_none(name) is not Supply.caller:
                raise ValueError(f"{name}: not a caller variable of {cls.script}")
        return {
            name: _text(TypeAdapter(cls.model_fields[name].annotation or str).validate_python(value))
            for name, value in values.items()
            if value is not None
        }

    def env(self) -> dict[str, str]:
        """The caller's variables as the script reads them (str -> str); an unset one is left out."""
        return {name: _text(value) for name, value in self if value is not None}

    @classmethod
    def environment(cls, caller: Mapping[str, str], platform: Mapping[str, str]) -> dict[str, str]:
        """The script's environment: the caller's variables (`JobSpec.env`; a name another role's
        model declares stays with that role) and the platform's, each under a name this model
        declares as the platform's. A `secret_ref` never passes here (Kubernetes adds it by reference)."""
        wrong = sorted(name for name in platform if cls.supply_of_or_none(name) in (None, Supply.caller))
        if wrong:
            raise ValueError(f"{cls.script}: the platform may not set {wrong}: not declared as the platform's")
        if any(cls.supply_of(name) is Supply.secret_ref for name in platform):
            raise ValueError(f"{cls.script}: a secret_ref variable travels by reference, never as a value")
        owned = cls.variables(Supply.platform, Supply.secret_file, Supply.secret_ref)
        others = _declared_by_other_roles(cls)
        mine = cls.variables(Supply.caller)
        chosen = {
            name: value
            for name, value in caller.items()
            if name in mine or not (cls.scrubbed or name in owned or name in others)
        }
        return {**chosen, **platform}

    @classmethod
    def supply_of_or_none(cls, name: str) -> Supply | None:
        return cls.supply_of(name) if name in cls.model_fields else None


def _extra(model: type[BaseModel], name: str) -> dict[str, Any]:
    extra = model.model_fields[name].json_schema_extra
    assert isinstance(extra, dict), name
    return extra


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=True)
    return str(value)


class TransferEnv(JobScriptEnv):
    """What every script that reaches blob storage reads (common.sh: load_secrets, the transfers)."""

    BLOB_URL: str = variable("The folder (or container) of the job's blobs; no credential in it")
    POSTGRES_VERSION: str = variable(
        "The PostgreSQL major whose tools the job runs (Kubernetes: the job image of that major; local: "
        "that major's binaries)",
        read_by=Reader.platform,
    )
    TRANSFER_STALL_SECONDS: int | None = variable(
        "No transfer progress for this long stops azcopy (blob storage unreachable)", default=None, unset="180"
    )
    AZCOPY_SAS_FILE: str | None = variable(
        "The job's blob grant (resources/blob_sas.py): one blob-level SAS per name the job may touch",
        Supply.secret_file,
        required=True,
    )
    AZCOPY_LOG_LOCATION: str | None = variable("Where azcopy writes its logs (read back on failure)", Supply.platform)
    AZCOPY_BUFFER_GB: str | None = variable(
        "azcopy's buffer per process (Kubernetes: the job's memory limit shared by its transfers)",
        Supply.platform,
        read_by=Reader.tool,
    )


class SourceEnv(TransferEnv):
    """A job that reads a running instance (backup.sh, basebackup.sh)."""

    PGHOST: str | None = variable("The source instance's host", Supply.platform, required=True)
    PGPORT: int | None = variable("The source instance's port", Supply.platform, required=True)
    PGUSER: str | None = variable("The source's superuser", Supply.platform, required=True)
    PGSSLMODE: str | None = variable("libpq's sslmode (Kubernetes: require)", Supply.platform, read_by=Reader.tool)
    PGPASSWORD: str | None = variable(
        "The source's superuser password (Kubernetes: secretKeyRef of the instance Secret)",
        Supply.secret_ref,
        read_by=Reader.tool,
    )
    POSTGRES_PASSWORD_FILE: str | None = variable(
        "The source's superuser password as a file (local: a 0600 copy); load_secrets reads it byte-exactly",
        Supply.secret_file,
    )
    PGCONNECT_TIMEOUT: int | None = variable("libpq's connect timeout in seconds", default=None, unset="15")
    SOURCE_INSTANCE: str = variable("The source instance's k8s_name")
    SOURCE_NAMESPACE: str = variable("The source instance's namespace")
    AGE_RECIPIENT: str | None = variable(
        "age X25519 recipient every stored file is encrypted to; unset: stored unencrypted", default=None
    )

    @classmethod
    def of_source(
        cls, source: Instance, *, blob_url: str, transfer_stall_seconds: int, age_recipient: str | None, **values: Any
    ) -> Self:
        """The variables of a job reading `source` into `blob_url`, plus the script's own `values`."""
        return cls(
            BLOB_URL=blob_url,
            SOURCE_INSTANCE=source.k8s_name,
            SOURCE_NAMESPACE=source.namespace,
            POSTGRES_VERSION=source.postgres_version,
            TRANSFER_STALL_SECONDS=transfer_stall_seconds,
            AGE_RECIPIENT=age_recipient or None,
            **values,
        )


class BackupEnv(SourceEnv):
    """backup.sh: pg_dumpall --globals-only and one pg_dump per database into blob storage."""

    script: ClassVar[str] = "backup.sh"

    BLOB_URL: str = variable(
        "The image's folder; parallel mode: the backup's own staging container, which the run copies "
        "into the image folder afterwards. No credential in it"
    )
    IMAGE_NAME: str = variable("The image's name (written into manifest.json)")
    DUMP_COMPRESSION: str | None = variable(
        "pg_dump -Z: 0-9, or from PostgreSQL 16 METHOD[:LEVEL] (gzip, lz4, zstd or none; a pg_dump without "
        "the method uses gzip 1); unset: pg_dump's default",
        default=None,
    )
    CHECK_CHUNK_BYTES: int | None = variable(
        "The size of each range the stream's sha256s cover (verify_image)", default=None, unset="4194304"
    )
    PARALLEL_JOBS: int | None = variable(
        "> 1: parallel mode, pg_dump -Fd -j N per database (records/parallel.py, dump_directory_to_blob); "
        "unset: one stream",
        default=None,
        unset="1",
    )


class BaseBackupEnv(SourceEnv):
    """basebackup.sh: pg_basebackup, pg_verifybackup, one tar stream into blob storage (docs/pitr.md)."""

    script: ClassVar[str] = "basebackup.sh"


class BuildsVolume(JobScriptEnv):
    """A job that builds an instance's data directory on its volume."""

    VOLUME_PATH: str | None = variable(
        "The instance's volume; PGDATA becomes $VOLUME_PATH/pgdata", Supply.platform, required=True
    )


class Decrypts(JobScriptEnv):
    """A job that reads an encrypting deployment's files."""

    AGE_IDENTITY_FILE: str | None = variable(
        "The age identities (private keys) of an encrypting deployment", Supply.secret_file
    )


class FetchRole(TransferEnv, Decrypts):
    """The fetch role of a restore (docs/security.md): downloads, verifies and decrypts, and hands
    the plaintext over; runs no code of the tenant's."""

    RESTORE_HANDOFF: str | None = variable(
        "The handoff directory: this role writes it, the serve role only reads it", Supply.platform, required=True
    )


class ServeRole(BuildsVolume):
    """The serve role of a restore (docs/security.md): runs the tenant's code, so it holds nothing of
    the deployment: no SAS, no key, no password, only its model's variables."""

    scrubbed: ClassVar[bool] = True

    RESTORE_HANDOFF: str | None = variable(
        "The handoff directory the fetch role fills (read only here)", Supply.platform, required=True
    )
    POSTGRES_PASSWORD_VERIFIER_FILE: str | None = variable(
        "The SCRAM-SHA-256 verifier of the instance's password (never the password)",
        Supply.platform,
        required=True,
    )


class RestoreFetchEnv(FetchRole):
    """restore.sh, the fetch role of a logical restore."""

    script: ClassVar[str] = "restore.sh"

    MANIFEST_SHA256: str = variable("manifest.json's sha256, from the image's CMS row")
    BACKUP_SHA256SUMS: str | None = variable(
        "sha256sum -c lines of the files to download, from the verified manifest; unset (a list over 64 KiB): "
        "read from the manifest",
        default=None,
    )
    RESTORE_DATABASES: list[str] | None = variable(
        "A JSON array (ASCII) of the database names to restore; unset: all", default=None
    )


class RestoreServeEnv(ServeRole):
    """restore-serve.sh, the serve role of a logical restore: runs the image's code."""

    script: ClassVar[str] = "restore-serve.sh"

    POSTGRES_USER: str | None = variable("The instance's superuser (the platform's)", Supply.platform, unset="postgres")
    RESTORE_JOBS: int | None = variable(
        "pg_restore -j (a parallel-mode image: its parallel_jobs)", default=None, unset="2"
    )
    RESTORE_REFUSE_DANGEROUS: bool | None = variable(
        "1: refuse an image whose functions run COPY ... PROGRAM or are in an untrusted language "
        "(refuse_dangerous_images); 0: restore it and report",
        Supply.platform,
        unset="0",
    )


class PitrRestoreFetchEnv(FetchRole):
    """restore-pitr.sh, the fetch role of a point-in-time restore (docs/pitr.md): the plan's base
    backup and WAL after it, downloaded, checked and decoded."""

    script: ClassVar[str] = "restore-pitr.sh"

    PLAN_BLOB: str = variable("The restore plan's blob name (plan.json), relative to BLOB_URL")
    PLAN_SHA256: str = variable("The plan's sha256, from the op that wrote it")


class PitrRestoreServeEnv(ServeRole):
    """restore-pitr-serve.sh, the serve role of a point-in-time restore: replays the tenant's WAL
    into the volume and promotes."""

    script: ClassVar[str] = "restore-pitr-serve.sh"

    POSTGRES_USER: str | None = variable("The instance's superuser (the platform's)", Supply.platform, required=True)


# A restore runs as two roles, each a script of its own: fetch model -> serve model.
RESTORE_ROLES: dict[type[JobScriptEnv], type[JobScriptEnv]] = {
    RestoreFetchEnv: RestoreServeEnv,
    PitrRestoreFetchEnv: PitrRestoreServeEnv,
}

SCRIPT_MODELS: tuple[type[JobScriptEnv], ...] = (BackupEnv, BaseBackupEnv, *RESTORE_ROLES, *RESTORE_ROLES.values())
JOB_SCRIPTS: dict[str, type[JobScriptEnv]] = {model.script: model for model in SCRIPT_MODELS}

# A job's roles: a restore's job (restore.sh, restore-pitr.sh) also runs its serve script.
ROLES: dict[str, tuple[type[JobScriptEnv], ...]] = {
    fetch.script: (fetch, serve) for fetch, serve in RESTORE_ROLES.items()
}


def roles_of(script: str) -> tuple[type[JobScriptEnv], ...]:
    """The models of every role a job of `script` runs."""
    if script not in JOB_SCRIPTS:
        raise ValueError(f"job script {script!r}: no contract declares it (records/job_scripts.py)")
    return ROLES.get(script, (JOB_SCRIPTS[script],))


def _declared_by_other_roles(model: type[JobScriptEnv]) -> frozenset[str]:
    """The caller variables only another role of the same job declares: they are not this role's."""
    for roles in ROLES.values():
        if model in roles:
            others = set().union(*(other.variables() for other in roles if other is not model))
            return frozenset(others - model.variables())
    return frozenset()


def job_env(*parts: JobScriptEnv) -> dict[str, str]:
    """JobSpec.env of a job: the caller's variables of each of its roles."""
    env: dict[str, str] = {}
    for part in parts:
        env |= part.env()
    return env
