"""What every writer of store files shares: a durable rename, and a disk error in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from lamina.errors import NoSpace, StoreError


def disk_error(e: OSError, what: str) -> StoreError:
    if e.errno == errno.ENOSPC:
        return NoSpace(f"no space left on device while writing {what}; "
                       "free space or run `lamina gc`")
    if e.errno == errno.EDQUOT:
        return StoreError(f"disk quota exceeded while writing {what}")
    return StoreError(f"cannot write {what}: {e.strerror or e}")


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry, not just the file, must reach disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
