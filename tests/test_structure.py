"""The layers and the one-field-list rule, checked on the code itself (no services needed).

Layers, bottom to top; a module may import its own layer and the layers below, never above:
    records/                 records and rules
    resources/               one resource per external system
    toygres_pipelines/       the Dagster code location
    toygres_pipelines/dev/   the embedded stack behind `make dev` and the tests
"""

import argparse
import ast
from pathlib import Path

import dagster as dg
import pytest
from pydantic import Field

from records import requests as requests_module
from records.requests import (
    BackupFields,
    ImageRequest,
    ImageRequestFields,
    RequestFields,
    RestoreFormFields,
    RestoreRequest,
    RestoreRequestFields,
)
from tests.python_source import parse_source
from toygres_pipelines.forms import add_cli_arguments, fields_from_cli, run_config_values
from toygres_pipelines.images.assets import BackupConfig
from toygres_pipelines.restores.config import RestoreConfig
from toygres_pipelines.shared.run_config import OPS_KEY, op_config_fields

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("records", "resources", "toygres_pipelines", "toygres_pipelines.dev")


def layer_of(module: str) -> int | None:
    """The highest layer whose package holds the module (None: not ours)."""
    found = None
    for rank, package in enumerate(LAYERS):
        if module == package or module.startswith(package + "."):
            found = rank
    return found


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, importer: str) -> list[tuple[int, str]]:
    """Every module an import names, relative imports resolved against `importer`."""
    tree = parse_source(path)
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [(node.lineno, f"{module}.{alias.name}".lstrip(".")) for alias in node.names]
    return found


def wrong_way_imports(root: Path) -> list[str]:
    wrong = []
    for package in ("records", "resources", "toygres_pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            importer = module_name(path, root)
            own = layer_of(importer)
            for line, target in imported_modules(path, importer):
                theirs = layer_of(target)
                if own is not None and theirs is not None and theirs > own:
                    wrong.append(f"{path.relative_to(root)}:{line} ({LAYERS[own]}) imports {target} ({LAYERS[theirs]})")
    return wrong


def test_imports_point_down_the_layers():
    assert wrong_way_imports(ROOT) == []


def test_the_layer_check_sees_a_wrong_way_import(tmp_path):
    """The check itself: a resource importing the code location is reported."""
    for package in ("records", "resources", "toygres_pipelines"):
        (tmp_path / package).mkdir()
    (tmp_path / "resources" / "leak.py").write_text("from toygres_pipelines.images import backup\n")
    (tmp_path / "toygres_pipelines" / "wiring.py").write_text("import toygres_pipelines.dev.stack\n")
    (tmp_path / "toygres_pipelines" / "relative.py").write_text("from .dev import stack\n")
    (tmp_path / "records" / "up.py").write_text("from ..resources import cms\n")
    assert wrong_way_imports(tmp_path) == [
        "records/up.py:1 (records) imports resources.cms (resources)",
        "resources/leak.py:1 (resources) imports toygres_pipelines.images.backup (toygres_pipelines)",
        "toygres_pipelines/relative.py:1 (toygres_pipelines) imports "
        "toygres_pipelines.dev.stack (toygres_pipelines.dev)",
        "toygres_pipelines/wiring.py:1 (toygres_pipelines) imports toygres_pipelines.dev.stack (toygres_pipelines.dev)",
    ]


# ---- domains -------------------------------------------------------------------------------

# The code location is sorted by domain; each domain package owns its definitions (definitions.py).
DOMAINS = ("images", "restores", "drills", "lifecycle", "fleet", "pitr", "requests")
# What several domains use, one small module each; shared modules import no domain.
SHARED = "shared"
# The packages of the code location that are no domain: the embedded stack, the operator CLI.
NOT_DOMAINS = ("dev", "cli")
# The real dependencies between domains, each with its reason; any other arrow between two
# domains fails (docs/ARCHITECTURE.md, "Domains").
DOMAIN_DEPENDENCIES = {
    ("drills", "restores"): "a drill runs the restore chain (restores/jobs.py restore_steps) into a scratch instance",
    ("drills", "lifecycle"): "a drill deletes its scratch instance as delete_instance does",
    ("drills", "pitr"): "the PITR drill restores to a point in time (pitr/restore.py) inside the window",
    ("drills", "images"): "a drill picks a running instance's newest image (running_source) and its checks "
    "sit on the image partitions",
    ("restores", "images"): "a restore reads and checks the manifest an image wrote (images/verification.py)",
    ("restores", "pitr"): "a restore with target_time is a point-in-time recovery (pitr/window.py, pitr/restore.py)",
    ("lifecycle", "restores"): "deleting an instance removes what its restore made (names, request key)",
    ("requests", "images"): "a run's write-back fails the image the run left creating",
    ("requests", "restores"): "a run's write-back cleans up the instance the run left creating",
}


def domain_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "toygres_pipelines" else None


def domain_arrows(root: Path) -> set[tuple[str, str]]:
    """Every (importer, imported) pair of distinct domains the code holds."""
    arrows = set()
    for path in (root / "toygres_pipelines").rglob("*.py"):
        importer = module_name(path, root)
        for _, target in imported_modules(path, importer):
            own, theirs = domain_of(importer), domain_of(target)
            if own in DOMAINS and theirs in DOMAINS and own != theirs:
                arrows.add((own, theirs))
    return arrows


def sideways_imports(root: Path) -> list[str]:
    """Imports from one domain package into another (or from a shared module into any domain)
    that DOMAIN_DEPENDENCIES does not declare; and packages that are neither domain nor shared."""
    found = []
    package_root = root / "toygres_pipelines"
    for package in sorted(p.name for p in package_root.iterdir() if (p / "__init__.py").exists()):
        if package not in (*DOMAINS, SHARED, *NOT_DOMAINS):
            found.append(f"toygres_pipelines/{package}/ is neither a domain nor shared")
    for path in sorted(package_root.rglob("*.py")):
        importer = module_name(path, root)
        own = domain_of(importer)
        if own not in (*DOMAINS, SHARED):
            continue  # the composition (definitions.py), the CLI, the dev stack: may import any domain
        for line, target in imported_modules(path, importer):
            theirs = domain_of(target)
            if theirs not in DOMAINS or theirs == own or (own, theirs) in DOMAIN_DEPENDENCIES:
                continue
            found.append(f"{path.relative_to(root)}:{line} ({own}) imports {target} ({theirs})")
    return found


def test_domains_import_each_other_only_through_shared_modules():
    assert sideways_imports(ROOT) == []


def test_every_declared_domain_dependency_is_real_and_none_goes_round():
    """A dependency the code no longer has leaves the list; no two domains depend on each other,
    however far round."""
    assert set(DOMAIN_DEPENDENCIES) == domain_arrows(ROOT)
    reach = {domain: {theirs for own, theirs in DOMAIN_DEPENDENCIES if own == domain} for domain in DOMAINS}
    for _ in DOMAINS:
        reach = {domain: seen.union(*(reach[d] for d in seen)) for domain, seen in reach.items()}
    assert [domain for domain, seen in reach.items() if domain in seen] == []


def test_the_domain_check_sees_a_sideways_import(tmp_path):
    """The check itself: a domain importing another one, a shared module importing a domain and a
    package sorted by kind are reported; the shared modules and a declared dependency are not."""
    package_root = tmp_path / "toygres_pipelines"
    for package in ("images", "lifecycle", "drills", SHARED, "automation"):
        (package_root / package).mkdir(parents=True)
        (package_root / package / "__init__.py").write_text("")
    (package_root / "images" / "janitor.py").write_text(
        "from toygres_pipelines.lifecycle.retention import plan\nfrom toygres_pipelines.shared import tags\n"
    )
    (package_root / "drills" / "jobs.py").write_text("from toygres_pipelines.restores.jobs import restore_steps\n")
    (package_root / SHARED / "tags.py").write_text("from ..images import assets\n")
    (package_root / "definitions.py").write_text("from toygres_pipelines.images import assets\n")
    assert sideways_imports(tmp_path) == [
        "toygres_pipelines/automation/ is neither a domain nor shared",
        "toygres_pipelines/images/janitor.py:1 (images) imports toygres_pipelines.lifecycle.retention.plan (lifecycle)",
        "toygres_pipelines/shared/tags.py:1 (shared) imports toygres_pipelines.images.assets (images)",
    ]


def settings_read_in(path: Path) -> list[int]:
    """Lines where a module calls some settings class's from_env (reads the environment itself)."""
    tree = parse_source(path)
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "from_env"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id.endswith("Settings")
    ]


def test_domains_get_their_settings_and_never_read_them_from_the_environment():
    """The settings are read once when the code location loads (definitions.py) and handed to each
    domain's definitions; an op reading them again would see another environment than the schedules."""
    readers = [
        f"{path.relative_to(ROOT)}:{line}"
        for domain in (*DOMAINS, SHARED)
        for path in sorted((ROOT / "toygres_pipelines" / domain).rglob("*.py"))
        for line in settings_read_in(path)
    ]
    assert readers == []


RUN_TAG_NAMES = ("toygres/kind", "toygres/request-id", "toygres/after-run")
SHARED_ASSET_KEYS = ("image", "fleet")


def retyped_names(root: Path) -> list[str]:
    """Run tag names and shared asset keys typed as literals outside shared/tags.py and
    shared/asset_keys.py (Kubernetes labels such as toygres/instance are not run tags)."""
    found = []
    declared = {root / "toygres_pipelines" / SHARED / "tags.py", root / "toygres_pipelines" / SHARED / "asset_keys.py"}
    for path in sorted((root / "toygres_pipelines").rglob("*.py")):
        if path in declared:
            continue
        for node in ast.walk(parse_source(path)):
            if isinstance(node, ast.Constant) and node.value in RUN_TAG_NAMES:
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.value!r}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "AssetKey":
                key = [getattr(argument, "value", None) for argument in node.args]
                if len(key) == 1 and key[0] in SHARED_ASSET_KEYS:
                    found.append(f"{path.relative_to(root)}:{node.lineno} AssetKey({key[0]!r})")
    return found


def test_run_tags_and_shared_asset_keys_are_declared_once():
    assert retyped_names(ROOT) == []


# ---- one field list per request ------------------------------------------------------------


class RestoreWithPriority(RestoreFormFields):
    priority: int = Field(default=3, description="How urgent this restore is, 1 (most) to 5")


def launchpad_fields(config_class: type[dg.Config]) -> dict:
    @dg.op
    def form(config: config_class):  # type: ignore[valid-type]
        del config

    @dg.job
    def probe():
        form()

    return op_config_fields(probe, form)


def test_a_field_added_to_the_record_reaches_every_form(capsys):
    class Form(RestoreWithPriority, dg.Config):
        pass

    fields = launchpad_fields(Form)
    assert fields["priority"].description == "How urgent this restore is, 1 (most) to 5"
    assert fields["priority"].default_value == 3

    parser = argparse.ArgumentParser(prog="request-restore")
    add_cli_arguments(parser, RestoreWithPriority)
    assert "--priority PRIORITY" in parser.format_help()
    assert "How urgent this restore is, 1 (most) to 5 (default: 3)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--name", "n", "--dns-label", "d", "--image", "img", "--priority", "1"])
    request = fields_from_cli(args, RestoreWithPriority)
    assert request.priority == 1 and request.source_image_id == "img"

    assert run_config_values(request, RestoreWithPriority)["priority"] == 1


def test_the_real_launchpad_cli_and_sensor_are_made_from_the_records():
    """The derivations above are the ones the code location uses: every field of each record is in
    the real launchpad form, the real CLI and the real sensor's run config."""
    import dagster as dg

    from toygres_pipelines.cli import build_parser
    from toygres_pipelines.forms import cli_flag
    from toygres_pipelines.images.assets import image
    from toygres_pipelines.restores.jobs import (
        restore_config_of,
        restore_form_fields,
        restore_form_run_config,
        restore_instance,
    )
    from toygres_pipelines.restores.sensors import restore_run_request

    restore_form = restore_form_fields()
    assert set(RestoreFormFields.model_fields) <= set(restore_form)
    assert not set(RestoreRequestFields.model_fields) - set(RestoreFormFields.model_fields) & set(restore_form)
    assert set(BackupFields.model_fields) <= set(image.op.config_schema.config_type.fields)

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command, record in (("request-restore", RestoreRequestFields), ("request-backup", ImageRequestFields)):
        flags = {flag for action in subcommands[command]._actions for flag in action.option_strings}
        assert {cli_flag(name, info) for name, info in record.model_fields.items()} <= flags, command

    row = RestoreRequest.model_validate(
        {
            **{
                name: info.get_default()
                for name, info in RestoreRequestFields.model_fields.items()
                if not info.is_required()
            },
            "name": "n",
            "dns_label": "dns",
            "source_image_id": "img",
            "namespace": "ns",
            "id": "00000000-0000-0000-0000-000000000001",
            "state": "accepted",
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
        }
    )
    sent = restore_config_of(restore_run_request(row, "img-id").run_config)
    assert set(sent) <= set(RestoreRequestFields.model_fields) and sent["source_image_id"] == "img-id"
    dg.validate_run_config(
        restore_instance, restore_form_run_config(RestoreConfig.model_construct(**sent)).to_config_dict()
    )


@pytest.mark.parametrize("record", [RestoreRequestFields, ImageRequestFields])
def test_every_request_field_has_a_description(record):
    assert all(info.description for info in record.model_fields.values())


# Classes outside records/ that share field names with a request and are not a copy of it, with why.
NOT_A_REQUEST = {
    "resources/platform/base.py:DeploySpec": "the platform's deployment of a checked plan: resolved names and sizes",
    "toygres_pipelines/restores/config.py:RestorePlan": "the checked request resolved: k8s name, image id, majors",
}
REQUEST_RECORDS = {
    name for name, cls in vars(requests_module).items() if isinstance(cls, type) and issubclass(cls, RequestFields)
}


def base_names(node: ast.ClassDef) -> set[str]:
    return {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}


def second_field_lists(fields: set[str], root: Path = ROOT) -> list[str]:
    """Classes outside records/ that declare 3 or more of `fields` without deriving from a request
    record (subclassing it; a field list read from `model_fields` declares nothing): a copy."""
    found = []
    for package in ("resources", "toygres_pipelines"):
        for path in sorted((root / package).rglob("*.py")):
            for node in ast.walk(parse_source(path)):
                if not isinstance(node, ast.ClassDef) or base_names(node) & REQUEST_RECORDS:
                    continue
                names = {
                    item.target.id
                    for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                }
                place = f"{path.relative_to(root).as_posix()}:{node.name}"
                if len(fields & names) >= 3 and place not in NOT_A_REQUEST:
                    found.append(f"{place} {sorted(fields & names)}")
    return found


@pytest.mark.parametrize("record", [RestoreRequestFields, ImageRequestFields])
def test_no_second_field_list_of_a_request(record):
    assert second_field_lists(set(record.model_fields)) == []


def test_the_field_list_check_sees_a_three_field_copy(tmp_path):
    (tmp_path / "resources").mkdir()
    (tmp_path / "toygres_pipelines").mkdir()
    (tmp_path / "toygres_pipelines" / "copy.py").write_text(
        "class Form:\n    name: str\n    dns_label: str\n    storage_size_gb: int = 10\n"
        "class Derived(RestoreFormFields):\n    name: str\n    dns_label: str\n    storage_size_gb: int = 1\n"
        "class Two:\n    name: str\n    dns_label: str\n"
    )
    assert second_field_lists(set(RestoreRequestFields.model_fields), tmp_path) == [
        "toygres_pipelines/copy.py:Form ['dns_label', 'name', 'storage_size_gb']"
    ]


def test_every_class_said_not_to_be_a_request_exists():
    for place in NOT_A_REQUEST:
        path, name = place.split(":")
        classes = [node.name for node in ast.walk(parse_source(ROOT / path)) if isinstance(node, ast.ClassDef)]
        assert name in classes, place


def test_launchpads_and_rows_are_the_records():
    assert issubclass(RestoreConfig, RestoreFormFields) and issubclass(RestoreRequest, RestoreRequestFields)
    assert issubclass(RestoreRequestFields, RestoreFormFields)
    assert issubclass(BackupConfig, BackupFields) and issubclass(ImageRequest, ImageRequestFields)
    assert issubclass(ImageRequestFields, BackupFields)


# ---- the CLI: a package of command groups -------------------------------------------------------


def cli_modules(root: Path) -> list[Path]:
    """Every module of the operator CLI: the package, and any CLI module left outside it."""
    package = root / "toygres_pipelines"
    return sorted({*(package / "cli").rglob("*.py"), *package.glob("cli*.py"), *package.glob("*/cli.py")})


def imports_inside_functions(path: Path) -> list[str]:
    """`module:line imports X` for each import statement in a function body."""
    found = []
    for node in ast.walk(parse_source(path)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    names = ", ".join(alias.name for alias in inner.names)
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno} imports {names}")
    return found


def test_the_cli_imports_at_module_level_only():
    """The CLI's modules import each other (and everything else) at module level: an import inside a
    function is how a cycle hides, and the command groups need none (the output module is below them)."""
    modules = cli_modules(ROOT)
    assert ROOT / "toygres_pipelines" / "cli" / "__init__.py" in modules
    assert [line for path in modules for line in imports_inside_functions(path)] == []


def test_the_cli_package_exposes_the_entry_points():
    from toygres_pipelines import cli

    assert callable(cli.main) and callable(cli.build_parser)
    assert cli_modules(ROOT) == sorted((ROOT / "toygres_pipelines" / "cli").rglob("*.py")), "a CLI module outside cli/"


# ---- a rule declared once ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["job_timeout_seconds", "ready_timeout_seconds"])
def test_a_drill_takes_the_restores_timeouts_as_declared(field):
    """The drill's restore is checked by the restore's bounds (check_timeouts): its launchpad says
    the restore's words and defaults, never a copy of them."""
    from toygres_pipelines.drills.jobs import DrillConfig

    drill, restore = DrillConfig.model_fields[field], RestoreConfig.model_fields[field]
    assert (drill.description, drill.default) == (restore.description, restore.default)


def test_a_jobs_timeout_is_described_by_the_bounds_that_check_it():
    from records.bounds import field_bounds
    from toygres_pipelines.restores.config import JOB_TIMEOUT_BOUNDS, READY_TIMEOUT_BOUNDS

    backup = field_bounds(BackupConfig, "job_timeout_seconds")
    assert f"{backup['ge']}-{backup['le']} seconds" in str(BackupConfig.model_fields["job_timeout_seconds"].description)
    for field, (low, high) in (
        ("job_timeout_seconds", JOB_TIMEOUT_BOUNDS),
        ("ready_timeout_seconds", READY_TIMEOUT_BOUNDS),
    ):
        assert f"{low}-{high} seconds" in str(RestoreConfig.model_fields[field].description)
    assert backup["le"] == JOB_TIMEOUT_BOUNDS[1], "a backup job and a restore job run two days at the most"


# ---- run config: built and read beside each job --------------------------------------------

# The modules that own a job's ops and so its run config; shared/run_config.py spells the shape.
RUN_CONFIG_OWNERS = {
    Path("toygres_pipelines/shared/run_config.py"),
    Path("toygres_pipelines/images/jobs.py"),
    Path("toygres_pipelines/images/reverify.py"),
    Path("toygres_pipelines/restores/jobs.py"),
    Path("toygres_pipelines/drills/jobs.py"),
    Path("toygres_pipelines/drills/pitr_drill.py"),
    Path("toygres_pipelines/lifecycle/jobs.py"),
    Path("toygres_pipelines/lifecycle/retention_job.py"),
    Path("toygres_pipelines/pitr/base_backups.py"),
    Path("toygres_pipelines/pitr/restore.py"),
    Path("toygres_pipelines/pitr/retention.py"),
}


def op_names() -> set[str]:
    from toygres_pipelines.domains import domain_definitions
    from toygres_pipelines.settings import Settings

    defs = domain_definitions(Settings())
    jobs = [job for job in defs.jobs or [] if isinstance(job, dg.JobDefinition)]
    assets = [asset for asset in defs.assets or [] if isinstance(asset, dg.AssetsDefinition)]
    return {node.name for job in jobs for node in job.all_node_defs} | {asset.op.name for asset in assets}


def run_config_keys_typed(root: Path, ops: set[str]) -> list[str]:
    """OPS_KEY used as a key (a dict key or a subscript), or an op's name as the key of its config
    (`{op: {"config": …}}`, `ops={op: …}`, `[op]["config"]`), outside the module that owns the job."""
    found = []
    for folder in ("toygres_pipelines", "tests", "bench"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.relative_to(root) in RUN_CONFIG_OWNERS:
                continue
            tree = parse_source(path)
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                used = []
                if isinstance(node, ast.Dict):
                    under_ops = isinstance(parents.get(node), ast.keyword) and parents[node].arg == OPS_KEY
                    for key, value in zip(node.keys, node.values, strict=True):
                        holds_config = isinstance(value, ast.Dict) and any(
                            isinstance(k, ast.Constant) and k.value == "config" for k in value.keys
                        )
                        if isinstance(key, ast.Constant) and (
                            key.value == OPS_KEY or (key.value in ops and (under_ops or holds_config))
                        ):
                            used.append(key)
                elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                    outer = parents.get(node)
                    reads_config = (
                        isinstance(outer, ast.Subscript)
                        and isinstance(outer.slice, ast.Constant)
                        and outer.slice.value == "config"
                    )
                    if node.slice.value == OPS_KEY or (node.slice.value in ops and reads_config):
                        used.append(node.slice)
                elif (
                    isinstance(node, ast.Constant)
                    and node.value == OPS_KEY
                    and not isinstance(parents.get(node), (ast.Dict, ast.Subscript))
                ):
                    used.append(node)  # a path spelled elsewhere: (OPS_KEY, op, "config")
                found += [f"{path.relative_to(root)}:{key.lineno} {key.value!r}" for key in used]
    return sorted(found, key=lambda line: (line.split(":")[0], int(line.split(":")[1].split()[0]), line))


def test_run_config_is_built_and_read_only_beside_its_job():
    assert run_config_keys_typed(ROOT, op_names()) == []


def test_the_run_config_check_sees_a_typed_op_name(tmp_path):
    (tmp_path / "toygres_pipelines").mkdir()
    (tmp_path / "toygres_pipelines" / "sensor.py").write_text(
        'RUN = {"ops": {}}\nCONFIG = {"plan_drill": {"config": {}}}\nNAME = run_config["validate_request"]["config"]\n'
        'TYPED = dg.RunConfig(ops={"image": DrillConfig(image="i")})\nFIELD = {"image": "i"}\n'
    )
    assert run_config_keys_typed(tmp_path, {"plan_drill", "validate_request", "image"}) == [
        "toygres_pipelines/sensor.py:1 'ops'",
        "toygres_pipelines/sensor.py:2 'plan_drill'",
        "toygres_pipelines/sensor.py:3 'validate_request'",
        "toygres_pipelines/sensor.py:4 'image'",
    ]
