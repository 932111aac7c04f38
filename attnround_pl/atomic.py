"""Write-then-rename: a file is either its old complete self or its new complete self.

A full disk is input a user can fix: it surfaces as one ``DiskFullError`` line naming the file,
what it needed (when known) and what was free, never as a traceback, and never leaves the
temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import InputError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_MB = 2**20


class DiskFullError(InputError, RuntimeError):
    """No space (or quota) left for a file the run writes."""


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _full(path: Path, needed: int | None) -> DiskFullError:
    free = free_bytes(path.parent)
    need = f"{needed / _MB:.1f} MB needed, " if needed is not None else ""
    have = f"{free / _MB:.1f} MB free" if free is not None else "free space unknown"
    return DiskFullError(f"no space left on the device to write {path} ({need}{have})")


def write_atomically(
    path: str | os.PathLike, write: Callable[[Path], None], size: int | None = None
) -> Path:
    """``write(tmp)`` to ``<path>.part``, then rename onto ``path``; the temporary file never
    survives a failure. ``size``: the bytes it will write, when known: refused before writing
    when the disk has less free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        free = free_bytes(path.parent)
        if free is not None and free < size:
            raise _full(path, size)
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as exc:
        if exc.errno in _FULL:
            raise _full(path, size) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically, checking the free space first."""
    return write_atomically(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
