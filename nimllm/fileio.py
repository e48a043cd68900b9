"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, renamed over the old
one, so a kill at any moment leaves either the previous file or the new one, never half of one.

A kill does leave the temporary file. Its name, `.NAME.PID.XXXXXXXX.tmp`, says which process writes
it, so that the next command to write in the folder can remove those whose process is gone."""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

TEMP_NAME = re.compile(r"\..+\.(\d+)\.[^.]+\.tmp")   # see temp_prefix; group 1 is the writer's pid


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        return True
    return True


def temp_prefix(path: Path) -> str:
    """How the name of a temporary file or folder that becomes `path` starts (it ends in `.tmp`)."""
    return f".{Path(path).name}.{os.getpid()}."


def is_temp(path: Path) -> bool:
    """A file or folder being written, or left by a killed write: no part of the model."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def remove_stale_temps(folder: Path) -> int:
    """Remove the temporary files and folders under `folder` whose writer is gone (a killed checkpoint of
    the 103m model leaves 1.3 GB); those of a live process are being written. A `.tmp` name without a
    pid comes from an older nimllm, and is stale too. Returns the bytes freed."""
    freed = 0
    for path in sorted(p for p in Path(folder).rglob("*.tmp") if is_temp(p)):
        name = TEMP_NAME.fullmatch(path.name)
        if name and process_alive(int(name[1])):
            continue
        try:   # another command starting at the same time may remove it first
            if path.is_dir():
                freed += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
                shutil.rmtree(path)
            else:
                freed += path.stat().st_size
                path.unlink()
        except FileNotFoundError:
            pass
    return freed


def atomic_write(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=".tmp")
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
