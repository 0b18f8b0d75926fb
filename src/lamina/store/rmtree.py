"""``rm -rf`` for trees lamina made from untrusted layers: no recursion, no symlink
followed, read-only directories got through.

``shutil.rmtree`` (Python 3.11) recurses once per directory level, so a tree as deep as
a layer can make (a 4095-byte name is ~2000 directories) ends in ``RecursionError``
and stays on disk; its fd-based walk also holds one descriptor per level.  Here one
directory is open at a time: going down opens a child relative to its parent
(``O_NOFOLLOW``), coming back up opens ``..`` and checks it is the directory that was
left (device and inode), so a tree moved meanwhile is refused rather than followed.
"""

from __future__ import annotations

import errno
import os
import stat

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DENIED = (errno.EACCES, errno.EPERM)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_child(name: str, parent: int) -> int | None:
    """``name`` in ``parent`` opened as a directory; None if it is gone or turned out
    not to be a directory (then it has been unlinked)."""
    for attempt in (0, 1):
        try:
            return os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                _unlink(name, parent)  # replaced by a file or a symlink meanwhile
                return None
            if e.errno not in _DENIED or attempt:
                raise
            # A directory without read or search permission (a non-root caller cannot
            # list a 0555 parent's child 0000 otherwise).
            os.chmod(name, 0o700, dir_fd=parent)
    return None  # not reached


def _unlink(name: str, parent: int, rmdir: bool = False) -> None:
    for attempt in (0, 1):
        try:
            if rmdir:
                os.rmdir(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno not in _DENIED or attempt:
                raise
            os.fchmod(parent, 0o700)  # a read-only directory: make it writable


def _clear_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; its subdirectories' names."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        entries = list(it)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            subdirs.append(entry.name)
        else:
            _unlink(entry.name, fd)
    return subdirs


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything under it; nothing if it does not exist.  A
    symlink is removed, never followed.  Raises ``OSError`` if something cannot be
    removed (a mount point, an immutable file)."""
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top)
        return
    fd = os.open(top, _O_DIR)
    # One frame per level above the open directory: that directory's identity, the
    # subdirectories it still has to visit, and the name of the one being visited.
    stack: list[tuple[tuple[int, int], list[str], str]] = []
    try:
        pending = _clear_files(fd)
        while True:
            if pending:
                name = pending.pop()
                child = _open_child(name, fd)
                if child is None:
                    continue
                stack.append((_identity(fd), pending, name))
                os.close(fd)
                fd = child
                pending = _clear_files(fd)
                continue
            if not stack:
                break
            expected, pending, name = stack.pop()
            parent = os.open("..", _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = parent
            if _identity(fd) != expected:
                raise OSError(errno.ESTALE, "directory moved while it was being removed",
                              top)
            _unlink(name, fd, rmdir=True)
    finally:
        os.close(fd)
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in _DENIED:
            raise
        os.chmod(os.path.dirname(os.path.abspath(top)), 0o700)
        os.rmdir(top)
