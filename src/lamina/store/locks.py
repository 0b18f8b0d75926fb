"""Ownership by a live process: an ``flock`` held on a small lock file.

A process that owns something in the store for as long as it runs (a lease, a scratch
directory under ``tmp/``) holds an exclusive ``flock`` on a lock file.  The kernel drops
the lock when the process dies, however it dies (SIGKILL, the OOM killer, power loss), so
another process that *can* take the lock knows the owner is gone and may remove what it
owned.  A clock never decides: a build may run for hours, a killed pull is dead at once.
Ingest files (blobs.py) and rootfs dirs (run/rootfs.py) are judged the same way;
containerd ties leases to a live client in the same spirit (its leases expire with the
client's context).

``flock`` locks belong to an open file description, so a second ``open`` of the same
file in the owning process conflicts too: a process asking about its own lock gets
"alive".  Descriptors are ``O_CLOEXEC``: a sandboxed child never inherits (and so never
prolongs) its parent's ownership.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

STALE_AGE = 60.0   # a lock file younger than this may still be between create and lock


def hold(path: Path) -> int:
    """Create the lock file ``path`` (it must not exist) and lock it; the returned
    descriptor keeps the lock until ``release`` or the process's end."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Blocking: a gc testing this file (take_if_abandoned) lets go at once.
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return fd


def release(path: Path, fd: int) -> None:
    """Unlink the lock file, then let go of it (the owner is done)."""
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


def flock_or_close(fd: int, how: int) -> int | None:
    """Take ``how`` (``fcntl.LOCK_*``) on ``fd``: the descriptor, or None when ``how``
    has LOCK_NB and someone else holds it.  Either way the descriptor is the caller's
    only when returned: on None or an error it is closed."""
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def take_if_abandoned(path: Path | str, min_age: float = 0.0) -> int | None:
    """The lock of ``path`` if its owner is gone: a descriptor holding it, which the
    caller closes after removing what the owner left (``release``).  None while an owner
    holds it, or while the file is younger than ``min_age`` (created, not yet locked).
    Raises FileNotFoundError when there is no such lock file."""
    # Never through a symlink, never blocking on a FIFO: only what is named is judged.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        young = bool(min_age) and time.time() - os.fstat(fd).st_mtime < min_age
    except BaseException:
        os.close(fd)
        raise
    if young:
        os.close(fd)
        return None
    return flock_or_close(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
