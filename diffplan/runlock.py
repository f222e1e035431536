"""One writer per run folder: an advisory lock file that every writing command takes.

Two `diffplan train` processes into one `--out` (or two `--resume`s) would interleave their
checkpoints and losses. The first to create `.diffplan.lock` (O_EXCL: atomic) owns the folder
until it exits; the lock records the holder's pid, host, command and start time, so the second
is told who holds it. A lock left by a process that died on this host (its pid is gone: a
killed run that is about to be resumed) is taken over with a warning that names it; one held
by a live process, or by another host, is never taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from diffplan.errors import DiffplanError, DiffplanWarning

LOCK_NAME = ".diffplan.lock"


class RunLocked(DiffplanError):
    """Another process writes into this folder (or a dead one left its lock)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """`with RunLock(folder, "train"):` holds `folder/.diffplan.lock` for the block.

    The folder is created if needed (and removed again on release if this lock made it and it
    is still empty, so a refused command leaves nothing behind)."""

    def __init__(self, folder: str | os.PathLike, command: str = "diffplan"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self._made_folder = False
        self._held = False

    def acquire(self) -> RunLock:
        if not self.folder.exists():
            self.folder.mkdir(parents=True)
            self._made_folder = True
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "argv": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            fd = self._create()
        except FileExistsError:
            stale = self._stale_holder()
            if stale is None:
                self._release_folder()
                raise self._held_error() from None
            warnings.warn(
                f"{self.folder}: took over the stale lock of {stale}, which is no longer "
                "running (a killed run)",
                DiffplanWarning,
                stacklevel=2,
            )
            self.path.unlink(missing_ok=True)
            try:
                fd = self._create()
            except FileExistsError:  # another process took it over first
                self._release_folder()
                raise self._held_error() from None
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        self._held = True
        return self

    def _create(self) -> int:
        return os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)

    def _stale_holder(self) -> str | None:
        """'pid N (command, since T)' when the lock's holder ran on this host and is gone."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host != socket.gethostname() or _alive(pid):
            return None
        return f"pid {pid} ({holder.get('command')}, since {holder.get('started')})"

    def _held_error(self) -> RunLocked:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return RunLocked(
                f"{self.folder} is locked by {self.path} (unreadable); if no diffplan process "
                f"writes there, remove it: rm {self.path}"
            )
        what = f"pid {pid} on {host} ({holder.get('command')}, since {holder.get('started')})"
        return RunLocked(
            f"{self.folder} is being written by {what}; wait for it to finish or choose "
            f"another output folder (if that process is gone for sure, clear it: rm {self.path})"
        )

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
        self._release_folder()

    def _release_folder(self) -> None:
        if self._made_folder:
            try:
                self.folder.rmdir()  # only if still empty: a refused run leaves nothing
            except OSError:
                pass
            self._made_folder = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
