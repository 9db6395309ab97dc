#!/usr/bin/env python3
"""The sha256 of a stream, the sha256 of each of its CHUNK_BYTES ranges and its length, in one pass.

    stream_digest.py CHUNK_BYTES OUT < STREAM

Once the stream has ended: OUT.sha256 (the whole stream's sha256, hex, one line), OUT.chunks (each
range's sha256, one a line, in order; the last range may be shorter; an empty stream has none) and
OUT.size (its length in bytes, one line). While it flows: OUT.count, the bytes read so far,
rewritten every second (backup.sh's progress lines). Exit 1 with the reason on stderr when a
result cannot be written, 2 on a bad argument.

backup.sh streams each file through `tee` into this one process (it was three branches and one
`sha256sum | cut` pair per range: `sha256sum`, `split --filter`, `dd`): hashlib is OpenSSL's sha256
(SHA-NI where the CPU has it, several times coreutils' own), and each byte crosses one pipe less.
Standard library only: the local platform's jobs run the machine's python3.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading

READ_SIZE = 1 << 20
COUNT_SECONDS = 1.0


def write_file(path: str, text: str) -> None:
    """Whole or not at all: a reader never sees a half-written file."""
    with open(path + ".tmp", "w", encoding="ascii") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Counter(threading.Thread):
    """Writes the bytes read so far to OUT.count every second, whatever the stream does."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.bytes, self.written = path, 0, -1
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(COUNT_SECONDS):
            self.show()

    def show(self) -> None:
        value = self.bytes
        if value != self.written:
            try:
                write_file(self.path, str(value))
            except OSError:  # progress only: the results say whether the digest succeeded
                return
            self.written = value


def digest(source: int, chunk_bytes: int, counter: Counter) -> tuple[str, list[str], int]:
    whole, piece = hashlib.sha256(), hashlib.sha256()
    ranges: list[str] = []
    left = chunk_bytes  # bytes still missing from the current range
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    total = 0
    while n := os.readv(source, [buffer]):
        data = view[:n]
        whole.update(data)  # hashlib releases the GIL on large updates: the counter thread runs
        while len(data) >= left:
            piece.update(data[:left])
            ranges.append(piece.hexdigest())
            piece, data, left = hashlib.sha256(), data[left:], chunk_bytes
        if data:
            piece.update(data)
            left -= len(data)
        total += n
        counter.bytes = total
    if left < chunk_bytes:
        ranges.append(piece.hexdigest())
    return whole.hexdigest(), ranges, total


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isascii() or not argv[0].isdigit() or int(argv[0]) <= 0:
        print("usage: stream_digest.py CHUNK_BYTES OUT < STREAM (CHUNK_BYTES a positive integer)", file=sys.stderr)
        return 2
    chunk_bytes, out = int(argv[0]), argv[1]
    counter = Counter(out + ".count")
    counter.start()
    try:
        sha256, ranges, size = digest(sys.stdin.fileno(), chunk_bytes, counter)
    except OSError as error:
        print(f"stream_digest: reading the stream failed: {error}", file=sys.stderr)
        return 1
    finally:
        counter.done.set()
        counter.join()
    counter.show()
    try:
        write_file(out + ".chunks", "".join(f"{h}\n" for h in ranges))
        write_file(out + ".sha256", f"{sha256}\n")
        write_file(out + ".size", f"{size}\n")  # last: its presence says the others are there
    except OSError as error:
        print(f"stream_digest: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
