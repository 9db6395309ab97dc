"""The parallel backup's progress and uploads read pg_dump -j's verbose log. pg_dump writes each
message as three writes ("pg_dump:", " ", the message and its newline) from the leader and each
worker into one file, so under load another process's fragment can land between them."""

import json
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "templates" / "scripts" / "backup.sh"


def shell_function(name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", SCRIPT.read_text(), re.S | re.M)
    assert match, f"backup.sh has no function {name}"
    return match.group(0)


def run_functions(names: list[str], call: str, cwd: Path) -> str:
    program = "set -euo pipefail\n" + "".join(shell_function(n) for n in names) + call
    return subprocess.run(["bash", "-c", program], cwd=cwd, capture_output=True, text=True, check=True).stdout


# What the leader's "finished item" and a worker's "dumping contents" make of each other when their
# writes interleave (each fragment is one write(2), as strace shows pg_dump 15 doing).
INTERLEAVED_LOG = (
    'pg_dump: dumping contents of table "public.actor"\n'
    "pg_dump: finished item 3680 TABLE DATA actor\n"
    # leader: "pg_dump:", worker: "pg_dump:" " " message, leader: " " message
    'pg_dump:pg_dump: dumping contents of table "public.rental"\n'
    " finished item 3686 TABLE DATA film\n"
    # leader: "pg_dump:" " ", worker: "pg_dump:", leader: message, worker: " " message
    "pg_dump: pg_dump:finished item 3708 TABLE DATA rental\n"
    ' dumping contents of table "public.payment"\n'
    # a tenant's table may be named like a message: its own line names it exactly
    "pg_dump: finished item 3711 TABLE DATA x finished item 1 TABLE DATA y\n"
)
SIZES = [
    ["public", "actor", 8192],
    ["public", "film", 16384],
    ["public", "rental", 65536],
    ["public", "x finished item 1 TABLE DATA y", 8192],
]


def test_every_finished_table_counts_when_pg_dumps_writes_interleave(tmp_path):
    (tmp_path / "sizes.json").write_text(json.dumps(SIZES))
    (tmp_path / "verbose.log").write_text(INTERLEAVED_LOG)
    functions = ["finished_table_data", "tables_finished"]
    assert run_functions(functions, "tables_finished sizes.json verbose.log", tmp_path).strip() == "1"


def test_the_uploads_see_each_finished_items_data_file_when_writes_interleave(tmp_path):
    (tmp_path / "verbose.log").write_text(INTERLEAVED_LOG)
    listed = run_functions(["finished_table_data"], "finished_table_data verbose.log", tmp_path)
    assert listed.splitlines() == [
        "3680\tactor",
        "3686\tfilm",
        "3708\trental",
        "3711\tx finished item 1 TABLE DATA y",
    ]
