"""A private key pasted into a setting that names where the key is (a file, a Secret) is refused at
configuration, naming the setting and never repeating the value (issue 19)."""

from __future__ import annotations

import pytest

from resources.platform.kubernetes import KubernetesPlatform
from resources.platform.local import LocalPlatform
from toygres_pipelines.resources_from_env import platform_from_env

# The shape age-keygen writes (a bech32 X25519 secret key), and the file as it writes it.
KEY = "AGE-SECRET-KEY-1QQQ5KZ9RNE4TXUMFW3AE6X2PDW4RXFA89VEWSQ4N6E7PN2C4CZNSQXLJQMK"
KEY_FILE_TEXT = f"# created: 2026-12-01T00:00:00Z\n# public key: age1example\n{KEY}\n"
PASTED = [KEY, KEY.lower(), KEY_FILE_TEXT, f"  {KEY}  "]


def assert_refused_without_the_key(error: BaseException, setting: str) -> None:
    text = f"{error!s} {error!r}"
    assert setting in text
    assert "private key" in text
    assert KEY[20:40] not in text.upper() and "SECRET-KEY" not in text.upper()


@pytest.mark.parametrize("pasted", PASTED)
def test_a_key_pasted_into_age_identity_file_is_refused_naming_the_setting(tmp_path, pasted):
    with pytest.raises(Exception) as refused:
        LocalPlatform(state_dir=str(tmp_path), azcopy_path="/bin/true", age_identity_file=pasted)
    assert_refused_without_the_key(refused.value, "age_identity_file")


@pytest.mark.parametrize("pasted", PASTED)
def test_a_key_in_toygres_age_identity_file_is_refused_by_the_code_location(tmp_path, monkeypatch, pasted):
    monkeypatch.setenv("TOYGRES_PLATFORM", "local")
    monkeypatch.setenv("TOYGRES_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TOYGRES_AGE_IDENTITY_FILE", pasted)
    with pytest.raises(Exception) as refused:
        platform_from_env()
    assert_refused_without_the_key(refused.value, "age_identity_file")


@pytest.mark.parametrize("pasted", PASTED)
def test_a_key_pasted_into_age_identity_secret_is_refused_naming_the_setting(pasted):
    with pytest.raises(Exception) as refused:
        KubernetesPlatform(age_identity_secret=pasted)
    assert_refused_without_the_key(refused.value, "age_identity_secret")


def test_a_path_and_a_secret_name_are_still_accepted(tmp_path):
    identity = tmp_path / "age-identities.txt"
    assert LocalPlatform(state_dir=str(tmp_path), azcopy_path="/bin/true", age_identity_file=str(identity))
    assert KubernetesPlatform(age_identity_secret="toygres-age-identities").age_identity_secret
