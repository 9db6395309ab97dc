"""Which compression a backup uses, and whether this host's pg_restore can read it (pure rules)."""

from __future__ import annotations

import pytest

from toygres_pipelines.images.backup import DEFAULT_DUMP_COMPRESSION, dump_compression
from toygres_pipelines.images.verification import readable_by_pg_restore


def test_the_default_compression_follows_the_sources_major():
    assert dump_compression("15") == DEFAULT_DUMP_COMPRESSION
    assert dump_compression("14") == DEFAULT_DUMP_COMPRESSION
    assert dump_compression("16") == "zstd:1" and dump_compression("17") == "zstd:1"


@pytest.mark.parametrize(
    ("compression", "pg_restore_major", "readable"),
    [
        (None, 15, True),  # an image from before the manifest said
        ("gzip:default", 15, True),
        ("gzip:1", 15, True),
        ("none", 14, True),
        ("zstd:1", 15, False),  # a full re-read on a host with an older pg_restore must not call it corrupt
        ("lz4", 15, False),
        ("zstd:1", 16, True),
        ("lz4:3", 17, True),
    ],
)
def test_a_dump_is_parsed_on_re_read_only_by_a_pg_restore_that_knows_its_compression(
    compression, pg_restore_major, readable
):
    assert readable_by_pg_restore(compression, pg_restore_major) is readable
