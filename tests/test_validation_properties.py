"""Every naming rule, as a property: what a validator accepts satisfies the rule exactly.

The rules are restated here character by character (not as regular expressions), so a
validator whose pattern lets a trailing newline or any other byte through is caught.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from records import (
    DNS_LABEL_MAX,
    INSTANCE_NAME_MAX,
    ValidationFailed,
    validate_dns_label,
    validate_image_name,
)
from records.requests import RestoreRequestFields
from resources.platform import k8s_manifests as m
from toygres_pipelines.restores.config import check_request_fields

IMAGE_NAME_CHARS = set(string.ascii_letters + string.digits + "_-")
DNS_CHARS = set(string.ascii_lowercase + string.digits + "-")
LABEL_VALUE_CHARS = set(string.ascii_letters + string.digits + "-_.")
ALNUM = set(string.ascii_letters + string.digits)
# What an attacker appends or embeds: newlines, NUL, other control characters, shell and SQL
# metacharacters, unicode look-alikes.
HOSTILE = ["\n", "\r", "\x00", "\t", "\x1b", "\x7f", " ", "'", '"', ";", "$", "`", "/", "=", "\u2028", "\u0430", "é"]


def reads_as_a_uuid(value: str) -> bool:
    """What uuid.UUID takes for an id among image-name characters: dashes anywhere, then 32
    characters that are hex digits with single underscores between them (int(x, 16) reads those)."""
    digits = value.replace("-", "")
    return len(digits) == 32 and re.fullmatch(r"[0-9A-Fa-f](_?[0-9A-Fa-f])*", digits) is not None


def is_image_name(value: str) -> bool:
    return 1 <= len(value) <= 100 and set(value) <= IMAGE_NAME_CHARS and not reads_as_a_uuid(value)


def is_dns_label(value: str, max_length: int = DNS_LABEL_MAX) -> bool:
    return 1 <= len(value) <= max_length and set(value) <= DNS_CHARS and value[0] != "-" and value[-1] != "-"


def is_label_value(value: str) -> bool:
    return value == "" or (
        len(value) <= 63 and set(value) <= LABEL_VALUE_CHARS and value[0] in ALNUM and value[-1] in ALNUM
    )


def accepts(validator, value) -> bool:
    try:
        validator(value)
    except (ValidationFailed, m.ManifestError):
        return False
    return True


def near_valid(alphabet: str, max_size: int) -> st.SearchStrategy[str]:
    """Valid-looking strings with hostile characters spliced in at the start, middle or end."""
    core = st.text(alphabet=alphabet, min_size=1, max_size=max_size)
    return st.one_of(
        core,
        st.tuples(core, st.sampled_from(HOSTILE), st.sampled_from(["start", "middle", "end"])).map(
            lambda t: {
                "start": t[1] + t[0],
                "end": t[0] + t[1],
                "middle": t[0][: len(t[0]) // 2] + t[1] + t[0][len(t[0]) // 2 :],
            }[t[2]]
        ),
        st.text(max_size=max_size + 5),
    )


names = near_valid(string.ascii_letters + string.digits + "_-", 100)
labels = near_valid(string.ascii_lowercase + string.digits + "-", 63)


@given(names)
@example("src__nl\n")
@example("x\n")
@example("0123456789abcdef0123456789ABCDEF")
@example("01234567-89ab-cdef-0123-456789abcdef")
@example("0123-456789abcdef0123456789abcdef")
@example("0_123456789abcdef0123456789abcde")
@example("0123456789abcdef0123456789abcdeg")
def test_image_names_accepted_exactly_by_the_rule(value):
    assert accepts(lambda v: validate_image_name(v, field="name"), value) == is_image_name(value)


@given(labels)
@example("shared\n")
@example("a\n")
def test_dns_labels_accepted_exactly_by_the_rule(value):
    assert accepts(lambda v: validate_dns_label(v, "dns_label"), value) == is_dns_label(value)
    assert accepts(lambda v: validate_dns_label(v, "name", INSTANCE_NAME_MAX), value) == is_dns_label(
        value, INSTANCE_NAME_MAX
    )


@given(labels)
@example("shared\n")
def test_manifest_names_accepted_exactly_by_the_rule(value):
    assert accepts(lambda v: m.check_dns_label(v, "namespace"), value) == is_dns_label(value)
    assert accepts(lambda v: m.check_dns_label(v, "instance name", 52), value) == is_dns_label(value, 52)


@given(st.one_of(near_valid(string.ascii_letters + string.digits + "-_.", 70), st.text()))
@example("ok\n")
def test_label_values_are_always_valid_and_valid_ones_are_kept(value):
    rendered = m.label_value(value)
    assert is_label_value(rendered)
    if is_label_value(value):
        assert rendered == value


@given(st.one_of(near_valid(string.ascii_letters + string.digits + "-_.", 63), st.text()))
@example("toygres/image-id\n")
@example("app\n")
def test_label_keys_are_refused_unless_valid(value):
    prefix, _, name = value.rpartition("/")
    valid = (
        1 <= len(name) <= 63
        and set(name) <= LABEL_VALUE_CHARS
        and name[0] in ALNUM
        and name[-1] in ALNUM
        and (not prefix or (len(prefix) <= 253 and all(is_dns_label(p) for p in prefix.split("."))))
    )
    assert accepts(m.check_label_key, value) == valid


@settings(max_examples=300)
@given(field=st.sampled_from(["name", "dns_label", "namespace"]), value=labels)
@example(field="dns_label", value="shared\n")
@example(field="name", value="restored\n")
def test_restore_request_fields_that_reach_manifests_follow_the_rule(field, value):
    fields = RestoreRequestFields(
        **{"name": "restored", "dns_label": "restored-db", "source_image_id": "img", field: value}
    )
    limit = INSTANCE_NAME_MAX if field == "name" else DNS_LABEL_MAX
    # dns_label becomes <label>.<region>.cloudapp.azure.com: Azure also wants 3+ characters and a letter first.
    rule = is_dns_label(value, limit) and (field != "dns_label" or (len(value) >= 3 and value[0].isalpha()))
    try:
        check_request_fields(fields)
    except ValidationFailed as error:
        assert error.field == field
        assert not rule
    else:
        assert rule


@pytest.mark.parametrize("bad", ["shared\n", "shared\r\n", "sha\nred", "\nshared", "shared\x00"])
def test_a_name_with_a_newline_is_refused_naming_the_field(bad):
    with pytest.raises(ValidationFailed, match="^dns_label: "):
        validate_dns_label(bad, "dns_label")
    with pytest.raises(ValidationFailed, match="^name: "):
        validate_image_name(bad.replace("shared", "src__nl"), field="name")


@pytest.mark.parametrize("seconds", [4, 2 * 24 * 3600 + 1, 10**9])
def test_the_backup_job_timeout_is_bounded_both_ways(seconds):
    import pydantic

    from toygres_pipelines.images.assets import BackupConfig

    with pytest.raises(pydantic.ValidationError, match="job_timeout_seconds"):
        BackupConfig(job_timeout_seconds=seconds)
