"""The backup stream's digest (templates/scripts/stream_digest.py): one process that gives, in one
pass, exactly what `sha256sum`, `split -b N --filter=sha256sum` and `dd` gave before it (the
manifest's sha256, stream_check.chunk_sha256, size_bytes, the progress lines' byte count)."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resources.platform.base import SCRIPTS_DIR

DIGEST = SCRIPTS_DIR / "stream_digest.py"
CHUNK = 4096


def coreutils(data: bytes, chunk: int, work: Path) -> tuple[str, str]:
    """(whole sha256 line, range hashes) as the job computed them before: sha256sum, split --filter."""
    whole = subprocess.run(["sha256sum"], input=data, capture_output=True, check=True).stdout.decode()
    ranges = subprocess.run(
        ["split", "-b", str(chunk), "-a", "12", "-d", "--filter=sha256sum | cut -c1-64", "-", str(work / "chunk.")],
        input=data,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return whole.split(" ")[0] + "\n", ranges


def digest(data: bytes, chunk: int, out: Path, pieces: list[int] | None = None) -> subprocess.CompletedProcess:
    """The tool as backup.sh runs it: the stream on stdin (written in `pieces` when given)."""
    if pieces is None:
        return subprocess.run([sys.executable, str(DIGEST), str(chunk), str(out)], input=data, capture_output=True)
    process = subprocess.Popen(
        [sys.executable, str(DIGEST), str(chunk), str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    at = 0
    for size in pieces:
        process.stdin.write(data[at : at + size])
        process.stdin.flush()
        at += size
    process.stdin.write(data[at:])
    process.stdin.close()
    process.wait(timeout=60)
    assert process.stderr is not None
    return subprocess.CompletedProcess(process.args, process.returncode, b"", process.stderr.read())


BOUNDARIES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK, 3 * CHUNK + 7]


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    size=st.one_of(st.sampled_from(BOUNDARIES), st.integers(0, 5 * CHUNK)),
    seed=st.integers(0, 2**32),
    pieces=st.one_of(st.none(), st.lists(st.integers(1, 3 * CHUNK), max_size=6)),
)
@example(size=0, seed=0, pieces=None)
@example(size=CHUNK, seed=1, pieces=[CHUNK - 1, 1])
@example(size=2 * CHUNK + 1, seed=2, pieces=None)
def test_the_digest_equals_sha256sum_split_and_dd_on_any_stream(tmp_path_factory, size, seed, pieces):
    """Sizes around the range boundary, the empty stream, a stream arriving in any pieces."""
    work = tmp_path_factory.mktemp("digest")
    data = random.Random(seed).randbytes(size)
    done = digest(data, CHUNK, work / "out", pieces)
    assert done.returncode == 0, done.stderr
    whole, ranges = coreutils(data, CHUNK, work)
    assert (work / "out.sha256").read_text() == whole
    assert (work / "out.chunks").read_text() == ranges
    assert len(ranges.splitlines()) == -(-size // CHUNK)  # an empty stream has no range
    assert (work / "out.size").read_text() == f"{size}\n"
    assert (work / "out.count").read_text() == str(size)  # the progress lines' last count


def test_the_count_grows_while_the_stream_flows(tmp_path):
    """The progress lines read out.count while the stream is still open (dd status=progress before)."""
    process = subprocess.Popen(
        [sys.executable, str(DIGEST), str(CHUNK), str(tmp_path / "out")], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin is not None
    try:
        process.stdin.write(b"x" * 100_000)
        process.stdin.flush()
        deadline = time.monotonic() + 60
        while not (tmp_path / "out.count").exists() or (tmp_path / "out.count").read_text() != "100000":
            assert time.monotonic() < deadline, "no count while the stream flows"
            time.sleep(0.05)
        assert not (tmp_path / "out.size").exists()  # the size is written once the stream has ended
    finally:
        process.stdin.close()
        process.wait(timeout=60)
    assert process.returncode == 0
    assert (tmp_path / "out.size").read_text() == "100000\n"


@pytest.mark.parametrize("chunk", ["0", "-1", "4k", "", "1e3"])
def test_a_range_size_that_is_no_positive_integer_is_refused(tmp_path, chunk):
    done = subprocess.run([sys.executable, str(DIGEST), chunk, str(tmp_path / "out")], input=b"x", capture_output=True)
    assert done.returncode == 2
    assert b"CHUNK_BYTES" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_fails_the_digest(tmp_path):
    """A result it cannot write fails the digest (and with it the backup), naming why."""
    done = subprocess.run(
        [sys.executable, str(DIGEST), str(CHUNK), str(tmp_path / "missing" / "out")],
        input=b"y" * 3 * CHUNK,
        capture_output=True,
    )
    assert done.returncode == 1
    assert b"stream_digest:" in done.stderr
