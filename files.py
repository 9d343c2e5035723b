"""Files that survive a crash, and JSONL that says where it is wrong. A room: every chapter writes
through it.

Two jobs, each done once for the whole project:

1. `atomic_write`: a file is written next to its final name, flushed to the disk (fsync), then renamed
   over the old one. `os.replace` is atomic on POSIX, so a reader or a crash (Ctrl-C, SIGKILL, a full
   disk) only ever sees the old file or the new one, never half of each. Checkpoint records, safetensors
   shards, JSONL data and reports all go through it.
2. `read_jsonl`: JSON Lines (one object per line) is the format of every dataset the stages exchange.
   A hand-edited or truncated file is common; the error names the file and the line, and says what is
   wrong, in one line that the scripts print as `error: ...`.

It imports nothing from the project, so every other file may import it.
"""

from __future__ import annotations

import json
import os
from typing import Callable


class DataError(ValueError):
    """A file the user gave is unreadable or malformed. The message names the file (and line)."""


# ----------------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: str, write: Callable, binary: bool = False):
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The temporary file lives in the same folder because a rename is only atomic within one filesystem,
    and its name carries the process id: two processes writing the same file at once (speedrun.sh's two
    midtrainings both build the long documents) each rename a whole file of their own, never each other's.
    The folder is created when missing, so a new `--out` never crashes the first write.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
    os.replace(tmp, path)


def atomic_write_text(path: str, text: str):
    """Write a whole text file atomically."""
    atomic_write(path, lambda f: f.write(text))


def write_jsonl(path: str, records: list[dict]):
    """One JSON object per line, written atomically. Non-ASCII text stays readable (no \\u escapes)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str, obj):
    """A JSON document, indented for people, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------
# Reading


def iter_jsonl(path: str):
    """Yield (line number, object) for every non-blank line of a JSON Lines file, 1-based.

    Raises DataError naming the file and the line when the file is missing, a line is not valid JSON,
    or a line holds something other than an object. Callers that check fields use the line number in
    their own messages, so every complaint about a record points at it.
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def read_jsonl(path: str) -> list[dict]:
    """Every object of a JSON Lines file, in order (see iter_jsonl for the errors)."""
    return [record for _, record in iter_jsonl(path)]


def read_json(path: str):
    """A JSON document, or None when the file does not exist (a stage that has not run yet)."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
