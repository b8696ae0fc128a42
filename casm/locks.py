"""One process per folder: a training run's folder, an evaluation's output, a study or an experiment.

Two processes writing one run folder corrupt it without an error (each deletes the pool snapshots the
other's checkpoints name), so every writer holds an OS lock on the folder itself while it works
(``flock`` on the directory: no lock file is written, so a refused command leaves the folder exactly as
it was). The kernel drops the lock when the process ends, ``kill -9`` included: a lock is never stale.
A second process is refused in one line naming the holder's PID and command (read from ``/proc/locks``
where the system has it). Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from types import TracebackType

from casm.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class FolderInUseError(UserError):
    """Another process holds the folder's lock."""


def is_first_process() -> bool:
    """The only process, or rank 0 of a job started by torchrun (RANK), srun (SLURM_PROCID) or Lightning
    (NODE_RANK, LOCAL_RANK), which start every rank with the same command line: the one that locks a run's
    folder and writes the console's closing lines."""
    return all(int(os.environ.get(key) or 0) == 0 for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK"))


def lock_holder(folder: Path) -> int | None:
    """The PID holding ``folder``'s lock, from ``/proc/locks`` (Linux); None where it cannot be told."""
    try:
        st = folder.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            return int(fields[4])
    return None


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return " ".join(w.decode(errors="replace") for w in words if w)[:200]


class FolderLock:
    """``with FolderLock(folder, "training"):`` -- the folder (created if missing, and removed again if the
    block fails leaving it empty) is this process's until the block ends; :class:`FolderInUseError` if
    another process holds it."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.folder, self.what = Path(folder), what
        self._fd: int | None = None
        self.created = False  # the folder was made for this process: a failed start removes it again if empty

    def acquire(self) -> "FolderLock":
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # a file system without flock
                os.close(fd)
                warnings.warn(f"casm: {self.folder} cannot be locked ({err.strerror}); nothing stops a second "
                              f"process from writing it", stacklevel=2)
                return self
            os.close(fd)
            pid = lock_holder(self.folder)
            holder = f"process {pid} ({_command(pid) or 'command unknown'})" if pid else "another process"
            stop = f"wait for it to end, or stop it (kill {pid})" if pid else "wait for it to end, or stop it"
            raise FolderInUseError(f"{self.folder} is in use by {holder}: {self.what} refused, so that two processes "
                                   f"never write one folder; {stop}") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if error is not None and self.created and not any(self.folder.iterdir()):
            self.folder.rmdir()  # a start refused before it wrote anything leaves no empty folder behind
        self.release()
