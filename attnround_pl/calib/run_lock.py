"""One calibration per run folder at a time: a lock file holding the owner's pid.

``RunLock.acquire(folder)`` creates ``<folder>/.lock`` exclusively (``O_CREAT | O_EXCL``) with
the process id, its start time (``/proc/<pid>/stat``), the host and the time. A second run that
finds the lock refuses with one line naming the owner, unless the owner is gone: a lock whose
process no longer exists on this host, or whose pid was reused by a later process, is stale and
taken over. A lock written on another host (a shared file system) cannot be checked from here:
it is refused, and the message says which file to delete if no run is active there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .run_folder import RunFolderError

LOCK = ".lock"


class RunFolderBusyError(RunFolderError):
    """Another calibration is writing into the run folder."""


def process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ')' may hold spaces


def _alive(owner: dict) -> bool | None:
    """Whether the owner process still runs; None when it ran on another host."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    start = process_start(pid)
    return start is None or owner.get("start") in (None, start)


@dataclass
class RunLock:
    """A held lock; ``release()`` removes the file if it is still this process's."""

    path: Path

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir`` (created if missing) for this process, or raise RunFolderBusyError."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        me = {
            "pid": os.getpid(),
            "start": process_start(os.getpid()),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(40):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _read(path)
                if owner is None:  # vanished, being written, or left empty by a crash
                    if _age(path) > 2.0:
                        path.unlink(missing_ok=True)
                    else:
                        time.sleep(0.1)
                    continue
                alive = _alive(owner)
                if alive is False:
                    path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                where = f" on {owner.get('host')}" if alive is None else ""
                hint = (
                    f"; if no run is active there, delete {path}"
                    if alive is None
                    else "; wait for it to finish or choose another run.name"
                )
                raise RunFolderBusyError(
                    f"{run_dir} is in use by another calibration (pid {owner.get('pid')}"
                    f"{where}, since {owner.get('since')}){hint}"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return cls(path)
        raise RunFolderBusyError(f"{run_dir}: could not take its lock file {path}")

    def release(self) -> None:
        owner = _read(self.path)
        if owner is not None and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
