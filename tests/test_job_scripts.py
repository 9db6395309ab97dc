"""The job-script contract (records/job_scripts.py) against the scripts themselves: each script's
variables, parsed from its text, are exactly its model's, in both directions (no services needed)."""

import ast
import itertools
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from records import InstanceRef, RestoreRequestFields
from records.job_scripts import (
    JOB_SCRIPTS,
    RESTORE_ROLES,
    BackupEnv,
    BaseBackupEnv,
    JobScriptEnv,
    PitrRestoreFetchEnv,
    PitrRestoreServeEnv,
    Reader,
    RestoreFetchEnv,
    RestoreServeEnv,
    Supply,
    job_env,
    roles_of,
)
from resources.platform import k8s_manifests as m
from resources.platform.base import SCRIPTS_DIR, JobKind, JobSpec, PlatformError, RestoreRoles
from resources.platform.k8s_manifests import ManifestError
from resources.platform.kubernetes import KubernetesPlatform
from resources.platform.local import LocalPlatform
from tests.python_source import parse_source
from toygres_pipelines.restores.config import RestorePlan

ROOT = Path(__file__).resolve().parents[1]

# `${VAR:?...}` (required), `${VAR:-default}` and `${VAR:=default}` (optional: the script has a default)
DECLARING = re.compile(r"\$\{([A-Z][A-Z0-9_]*):([?=-])")
# any reference at all: `$VAR`, `${VAR}`, `${VAR//x/y}`...
REFERENCE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*)")


def code_of(text: str) -> str:
    """The script without its comment lines (its header documents; only code counts)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def script_variables(text: str) -> tuple[set[str], set[str]]:
    """(required, optional) environment variables a script declares by its parameter expansions."""
    required: set[str] = set()
    optional: set[str] = set()
    for name, kind in DECLARING.findall(code_of(text)):
        (required if kind == "?" else optional).add(name)
    return required, optional - required


def disagreements(model: type[JobScriptEnv], script: str, common: str) -> list[str]:
    """How a script (and common.sh, which every script sources) and its model differ."""
    required, optional = script_variables(script)
    common_required, common_optional = script_variables(common)
    read = set(REFERENCE.findall(code_of(script))) | set(REFERENCE.findall(code_of(common)))
    declared = model.variables()
    found = []
    for name in sorted((required | optional) - declared):
        found.append(f"{name}: the script reads it, the model does not declare it")
    for name in sorted(declared - read):
        if model.read_by(name) is Reader.script:
            found.append(f"{name}: the model declares it, the script never reads it")
    for name in sorted(required - model.required()):
        if name in declared:
            found.append(f"{name}: the script requires it (:?), the model has it optional")
    for name in sorted((model.required() & read) - required - common_required - common_optional):
        found.append(f"{name}: the model requires it, the script has it optional or a default")
    return found


# `${VAR:-default}` / `${VAR:=default}` with a literal default
DEFAULT = re.compile(r"\$\{([A-Z][A-Z0-9_]*):[-=]([^}$]+)\}")


def default_disagreements(model: type[JobScriptEnv], script: str, common: str) -> list[str]:
    """A default the model declares (`unset`) that the script's text does not use, or contradicts."""
    defaults: dict[str, set[str]] = {}
    for name, value in DEFAULT.findall(code_of(script) + "\n" + code_of(common)):
        defaults.setdefault(name, set()).add(value)
    found = []
    for name in sorted(model.variables()):
        declared = model.unset(name)
        if declared is not None and defaults.get(name, set()) != {declared}:
            found.append(
                f"{name}: the model says unset means {declared!r}, the script: {sorted(defaults.get(name, []))}"
            )
    return found


def text_of(script: str) -> str:
    return (SCRIPTS_DIR / script).read_text()


@pytest.mark.parametrize("script", sorted(JOB_SCRIPTS))
def test_every_job_script_reads_exactly_what_its_model_declares(script):
    assert disagreements(JOB_SCRIPTS[script], text_of(script), text_of("common.sh")) == []


@pytest.mark.parametrize("script", sorted(JOB_SCRIPTS))
def test_every_default_the_model_declares_is_the_scripts(script):
    assert default_disagreements(JOB_SCRIPTS[script], text_of(script), text_of("common.sh")) == []


def test_the_default_check_sees_a_changed_default():
    script = text_of("restore-serve.sh").replace("${RESTORE_JOBS:-2}", "${RESTORE_JOBS:-4}", 1)
    assert default_disagreements(RestoreServeEnv, script, text_of("common.sh")) == [
        "RESTORE_JOBS: the model says unset means '2', the script: ['2', '4']"
    ]


def test_every_job_script_has_a_model():
    scripts = {p.name for p in SCRIPTS_DIR.glob("*.sh")} - {"common.sh"}
    assert scripts == set(JOB_SCRIPTS)


def test_every_variable_of_common_sh_is_declared_by_a_model():
    required, optional = script_variables(text_of("common.sh"))
    declared = set().union(*(model.variables() for model in JOB_SCRIPTS.values()))
    assert (required | optional) - declared == set()


def test_the_contract_check_sees_a_disagreement_either_way():
    script = text_of("backup.sh").replace('"${IMAGE_NAME:?}"', '"${IMAGE_NAME:?}" "${NEW_THING:?}"')
    script = script.replace("CHECK_CHUNK_BYTES", "CHUNK_BYTES")
    found = disagreements(BackupEnv, script, text_of("common.sh"))
    assert "NEW_THING: the script reads it, the model does not declare it" in found
    assert "CHUNK_BYTES: the script reads it, the model does not declare it" in found
    assert "CHECK_CHUNK_BYTES: the model declares it, the script never reads it" in found
    optional = text_of("backup.sh").replace('"${IMAGE_NAME:?}"', '"${IMAGE_NAME:-x}"')
    assert disagreements(BackupEnv, optional, "") != []


def test_every_restore_runs_as_the_roles_its_models_pair():
    """RestoreRoles is the models' pairing: each fetch script's serve script, and no other."""
    assert RestoreRoles.scripts == {"restore.sh": "restore-serve.sh", "restore-pitr.sh": "restore-pitr-serve.sh"}
    for fetch, serve in RESTORE_ROLES.items():
        assert roles_of(fetch.script) == (fetch, serve)
        assert serve.scrubbed and not fetch.scrubbed


@pytest.mark.parametrize(("fetch", "serve"), sorted(RESTORE_ROLES.items(), key=lambda pair: pair[0].script))
def test_the_serve_role_holds_nothing_of_the_fetch_roles(fetch, serve):
    """The serve role runs the tenant's code: no grant, no key, no password, and none of the fetch
    role's caller variables reach it (its environment is its model's)."""
    secrets = {"AZCOPY_SAS_FILE", "AGE_IDENTITY_FILE", "POSTGRES_PASSWORD_FILE", "PGPASSWORD"}
    assert serve.variables() & secrets == set()
    assert serve.variables(Supply.secret_file, Supply.secret_ref) == set()
    caller = CALLER_VALUES[fetch].env() | {"AZCOPY_SAS_FILE": "/x", "PGPASSWORD": "p"}
    assert set(serve.environment(caller, {})) <= serve.variables(Supply.caller)


def test_the_model_holds_no_platform_value():
    with pytest.raises(ValueError, match="PGHOST: supplied by the platform"):
        BackupEnv(
            BLOB_URL="https://a/b",
            POSTGRES_VERSION="17",
            SOURCE_INSTANCE="s",
            SOURCE_NAMESPACE="default",
            IMAGE_NAME="n",
            PGHOST="x",
        )


@pytest.mark.parametrize("script", sorted(JOB_SCRIPTS))
def test_every_job_script_header_points_at_its_model_and_lists_no_variable_of_its_own(script):
    """The model is the one list: a header naming variables itself drifts (restore-serve.sh's named
    RESTORE_DATABASES, which it never read)."""
    lines = text_of(script).splitlines()[1:]
    header = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert f"records/job_scripts.py {JOB_SCRIPTS[script].__name__}" in header
    assert "# Env:" not in header  # the list is the model's


# The instances table spells three request fields its own way; records/rows.py renames them, once.
ROW_NAMES = {"user_name": "name", "use_load_balancer": "internal", "dns_name": "dns_label"}


def renames_outside_the_records(root: Path) -> list[str]:
    """Where code above the records renames a request field to its column name, or back."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = parse_source(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg in ROW_NAMES:
                found.append(f"{path.relative_to(root.parent)}:{node.value.lineno}: {node.arg}=")
            elif (
                isinstance(node, ast.keyword)
                and node.arg in ROW_NAMES.values()
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in ROW_NAMES
            ):
                found.append(f"{path.relative_to(root.parent)}:{node.value.lineno}: {node.arg}=.{node.value.attr}")
    return found


def test_the_request_names_flow_unchanged_or_are_renamed_in_the_records_only():
    assert renames_outside_the_records(ROOT / "toygres_pipelines") == []
    assert RestorePlan.model_fields["request"].annotation is RestoreRequestFields


def test_the_rename_check_sees_a_rename(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("f(use_load_balancer=not plan.internal)\ng(dns_label=row.dns_name)\n")
    assert len(renames_outside_the_records(tmp_path / "pkg")) == 2


# What a job's process gets besides its script's variables: the locale, HOME, azcopy's plan files.
PROCESS_BASICS = {"LANG", "LC_ALL", "HOME", "AZCOPY_JOB_PLAN_LOCATION"}

CALLER_VALUES: dict[type[JobScriptEnv], JobScriptEnv] = {
    BackupEnv: BackupEnv(
        BLOB_URL="https://a/b", POSTGRES_VERSION="17", SOURCE_INSTANCE="s", SOURCE_NAMESPACE="toygres", IMAGE_NAME="n"
    ),
    BaseBackupEnv: BaseBackupEnv(
        BLOB_URL="https://a/b", POSTGRES_VERSION="17", SOURCE_INSTANCE="s", SOURCE_NAMESPACE="toygres"
    ),
    RestoreFetchEnv: RestoreFetchEnv(
        BLOB_URL="https://a/b", POSTGRES_VERSION="17", MANIFEST_SHA256="ab" * 32, RESTORE_DATABASES=["x"]
    ),
    RestoreServeEnv: RestoreServeEnv(RESTORE_JOBS=4),
    PitrRestoreFetchEnv: PitrRestoreFetchEnv(
        BLOB_URL="https://a/b", POSTGRES_VERSION="17", PLAN_BLOB="p/plan.json", PLAN_SHA256="cd" * 32
    ),
    PitrRestoreServeEnv: PitrRestoreServeEnv(),
}


@pytest.mark.parametrize("script", sorted(set(JOB_SCRIPTS) - {serve.script for serve in RESTORE_ROLES.values()}))
def test_the_kubernetes_job_gives_each_role_its_models_variables(script):
    """Every variable a role's script requires, and nothing its model does not declare."""
    roles = roles_of(script)
    platform = KubernetesPlatform(
        job_images={"17": f"registry.example/toygres-job:17@sha256:{'ab' * 32}"},
        age_identity_secret="age-keys",
        refuse_dangerous_images=True,
    )
    spec = JobSpec(
        kind=JobKind.restore if "restore" in script else JobKind.backup,
        name="job-x",
        script=script,
        instance=InstanceRef(k8s_name="orders-ab12c", namespace="toygres"),
        env=job_env(*(CALLER_VALUES[role] for role in roles)),
        blob_sas=SecretStr("sig=x"),
    )
    containers = m.job(spec, platform.settings(), "toygres-job-scripts")["spec"]["template"]["spec"]["containers"]
    for role, container in zip(roles, containers, strict=True):
        names = {e["name"] for e in container["env"]}
        assert role.required() <= names, (role.script, role.required() - names)
        assert names - PROCESS_BASICS <= role.variables(), (role.script, names - PROCESS_BASICS - role.variables())
        secret_refs = {e["name"] for e in container["env"] if "valueFrom" in e}
        assert secret_refs == role.variables(Supply.secret_ref)


def test_both_platforms_refuse_a_restore_whose_script_has_no_serve_role(tmp_path):
    """Every restore runs the tenant's code in a serve role: a restore job of a script RESTORE_ROLES
    does not pair is refused before anything runs, on either platform."""
    spec = JobSpec(
        kind=JobKind.restore,
        name="restore-x",
        script=BaseBackupEnv.script,
        instance=InstanceRef(k8s_name="orders-ab12c", namespace="toygres"),
        env=CALLER_VALUES[BaseBackupEnv].env(),
        blob_sas=SecretStr("sig=x"),
    )
    platform = KubernetesPlatform(job_images={"17": f"registry.example/toygres-job:17@sha256:{'ab' * 32}"})
    with pytest.raises(ManifestError, match="a restore runs as fetch and serve roles"):
        m.job(spec, platform.settings(), "toygres-job-scripts")
    local = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path="/bin/true")
    with pytest.raises(PlatformError, match="a restore runs as fetch and serve roles"):
        local.run_job(spec, lambda line: None)


def test_the_job_scripts_and_the_python_sessions_take_the_same_tenant_session_options():
    """One set of options for every deployment session on a tenant's server (records/tenant_sessions.py),
    in every script that opens one; the encoding is apart: the scripts' catalogue queries read names
    as bytes, psycopg reads UTF8, and the dumps keep the database's own."""
    import subprocess

    from records.tenant_sessions import TENANT_SESSION_OPTIONS

    shown = subprocess.run(
        ["bash", "-c", 'source "$1" && printf %s "$TENANT_SESSION_OPTIONS"', "-", str(SCRIPTS_DIR / "common.sh")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert shown.split() == TENANT_SESSION_OPTIONS.split()
    assert "client_encoding" not in shown
    for script in ("backup.sh", "basebackup.sh", "restore-serve.sh", "restore-pitr-serve.sh"):
        assert re.search(r'PGOPTIONS="\$TENANT_SESSION_OPTIONS[ "]', text_of(script)), script
        assert 'PGOPTIONS="-c' not in text_of(script), f"{script} keeps its own session options"
