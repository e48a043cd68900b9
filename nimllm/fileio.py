"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, renamed over the old
one, so a kill at any moment leaves either the previous file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself survive a power cut
    finally:
        os.close(dir_fd)


def write_jsonl_once(path: Path, make_records, what: str, log=print) -> Path:
    """A generated corpus as JSONL (one JSON object per line), written atomically the first time only:
    a corpus that stays the same file (same bytes, same modification time) lets an interrupted training
    resume on it. `make_records()` is called only when the file is missing; `what` names it in the log."""
    path = Path(path)
    if not path.exists():
        log(f"writing {what} to {path} ...")
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in make_records()).encode())
    return path
