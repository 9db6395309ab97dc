"""A job's memory does not grow with the data it moves (docs/benchmarks.md, "Memory flat").

azcopy's piped upload (PipeBlob) holds up to AZCOPY_CONCURRENCY_VALUE blocks of --block-size-mb
each in memory (its defaults: 5 of 8 MiB, 40 MiB a stream once the stream is long enough to fill
them). The scripts bound it; these tests read what the scripts hand azcopy (no timing, no memory
sampling: the bench measures the numbers). The restore's temporary server keeps PostgreSQL's own
bound for index sorts (maintenance_work_mem per pg_restore job, docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from resources.platform.base import SCRIPTS_DIR

MIB = 2**20
FAKE_AZCOPY = """#!/bin/bash
cat >/dev/null
printf '%s\\n' "${AZCOPY_CONCURRENCY_VALUE:-unset}" "$@" >"$AZCOPY_SEEN"
"""


def upload_with(tmp_path: Path, expected: str | None) -> tuple[str, list[str]]:
    """upload_stdin of a few bytes with `expected` as its size hint: azcopy's concurrency and args."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "azcopy").write_text(FAKE_AZCOPY)
    (bin_dir / "azcopy").chmod(0o755)
    seen = tmp_path / "seen"
    hint = "" if expected is None else f" {expected}"
    script = (
        f"source {SCRIPTS_DIR}/common.sh; blob_url() {{ printf 'http://blob/%s?sig=x' \"$1\"; }}; "
        f"printf 'bytes' | upload_stdin databases/001.dump{hint}"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "AZCOPY_SEEN": str(seen)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    concurrency, *argv = seen.read_text().splitlines()
    return concurrency, argv


def block_mib(argv: list[str]) -> int:
    sizes = [arg.removeprefix("--block-size-mb=") for arg in argv if arg.startswith("--block-size-mb=")]
    assert len(sizes) == 1, argv
    return int(sizes[0])


@pytest.mark.parametrize(
    ("expected_bytes", "block"),
    [
        (None, 8),  # no hint (globals, a base backup's tar): azcopy's own block, as before
        (9 * MIB, 4),
        (40 * 2**30, 4),  # a 40 GiB database: 4 MiB blocks still hold 4x its size
        (100 * 2**30, 16),
        (2**40, 128),  # 1 TiB: blocks grow so that 50,000 of them (Azure's limit) hold 4x it
    ],
)
def test_a_piped_upload_holds_two_blocks_sized_by_the_stream(tmp_path, expected_bytes, block):
    concurrency, argv = upload_with(tmp_path, None if expected_bytes is None else str(expected_bytes))
    assert concurrency == "2", "azcopy's piped upload keeps AZCOPY_CONCURRENCY_VALUE blocks in memory (default 5)"
    assert block_mib(argv) == block
    assert "--from-to=PipeBlob" in argv
    if expected_bytes is not None:
        assert 50_000 * block * MIB >= 4 * expected_bytes  # never a blob too big for its blocks


def test_the_upload_memory_does_not_grow_below_a_tens_of_gibibytes_database(tmp_path):
    """The bound (blocks in flight x block size) is the same for a 10 MiB and a 40 GiB stream."""
    bounds = set()
    for expected in (10 * MIB, 2**30, 40 * 2**30):
        concurrency, argv = upload_with(tmp_path, str(expected))
        bounds.add(int(concurrency) * block_mib(argv))
    assert bounds == {8}


def test_an_unusable_size_hint_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="size hint"):
        upload_with(tmp_path, "12abc")
