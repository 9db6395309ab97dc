"""The local platform runs the very scripts the Kubernetes Jobs mount, with secrets by reference."""

from pydantic import SecretStr

from resources.platform.base import SCRIPTS_DIR, JobKind, JobSpec
from resources.platform.local import LocalPlatform
from records import InstanceRef


def test_job_directory_holds_the_template_scripts_byte_for_byte(tmp_path):
    tmp_path.chmod(0o711)
    platform = LocalPlatform(state_dir=str(tmp_path / "state"), azcopy_path="/bin/true")
    spec = JobSpec(
        kind=JobKind.restore, name="restore-x", script="restore.sh",
        instance=InstanceRef(k8s_name="x", namespace="default"), blob_sas=SecretStr("sv=1&sig=secret"),
    )
    job_dir = platform._fresh_job_dir(spec)
    templates = sorted(SCRIPTS_DIR.glob("*.sh"))
    assert [p.name for p in templates] == ["backup.sh", "common.sh", "restore.sh"]
    for template in templates:
        assert (job_dir / "scripts" / template.name).read_bytes() == template.read_bytes()

    env = platform._job_env(spec, job_dir)
    assert "sig=secret" not in "".join(env.values())
    assert (job_dir / "sas").read_text() == "sv=1&sig=secret"
    assert (job_dir / "sas").stat().st_mode & 0o777 == 0o600
    assert env["AZCOPY_SAS_FILE"] == str(job_dir / "sas")
    assert env["POSTGRES_PASSWORD_FILE"].endswith("instances/default/x/secret/password")
    assert env["VOLUME_PATH"].endswith("instances/default/x/volume")
