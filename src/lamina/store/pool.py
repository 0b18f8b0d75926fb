"""The file pool: one inode for each identical regular file of the store's snapshots.

Layout: ``pool/<first 2 hex>/<key hex>``, a hard link to a file some snapshot holds.
The key is the sha256 of the file's content digest *and* the metadata its inode carries
-- mode, owner, mtime (ns), extended attributes -- because a hard link shares all of
them: two files may share an inode only if every ``stat`` of either would be right for
both (ostree keys its "bare" objects by content + uid/gid/mode/xattrs for the same
reason).  Unlike ostree, which leaves mtime out of the key and checks every object out
with mtime 0, lamina keeps each file's own mtime: overlayfs shows the lower file's
mtime, make and Python's bytecode cache read it, and an image must look in ``run`` as
it does after ``unpack``.  Layers built reproducibly (SOURCE_DATE_EPOCH, clamped
mtimes) share their files anyway.

Lifecycle of an entry::

    an apply writes a file into a new snapshot (layer/apply.py, with the pool behind
    layer/filepool.py's protocol: run/snapshots.py)
      ─ absent from the pool: the snapshot's file is linked in (link(2) is atomic and
        the file is complete, so no temporary name is needed)
      ─ present: the snapshot gets a link to it instead (small files are never written)
    gc removes snapshots; an entry left with one link (only the pool holds it) is
    garbage, removed by the next ``collect`` (its bytes counted as freed)

Races need no lock: gc removing an entry just as an apply links to it leaves that
apply with its own copy (``link`` fails: it writes the file; ``adopt`` retries), or
with a snapshot file the pool no longer names (sharing lost for that file, no data).
Files are never written through a link: snapshots are read-only lowers of an overlay
(a write copies up), and the walk snapshotter applies layers into a tree of its own.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

POOL_DIR = "pool"
# Cannot link here, for good: the pool entry has the file system's maximum of links
# (ext4: 65000), the pool is on another file system than the snapshot, or the file
# system has no hard links.
_CANNOT_LINK = (errno.EMLINK, errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP)
_ATTEMPTS = 4


def key(digest: str, mode: int, uid: int, gid: int, mtime_ns: int,
        xattrs: tuple[tuple[str, bytes], ...]) -> str:
    """The pool key of a regular file: content digest (hex sha256) and inode metadata."""
    h = hashlib.sha256(f"lamina-pool-1\0{digest}\0{mode & 0o7777:o}\0{uid}\0{gid}\0"
                       f"{mtime_ns}\0{len(xattrs)}\0".encode())
    for name, value in xattrs:
        raw = name.encode("utf-8", "surrogateescape")
        h.update(len(raw).to_bytes(4, "big") + raw + len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


def pool_root(root: Path) -> Path:
    return root / POOL_DIR


def entry_path(root: Path, k: str) -> str:
    return f"{root}/{POOL_DIR}/{k[:2]}/{k}"


def link(root: Path, k: str, path: str) -> bool:
    """Make ``path`` (absent) a link to entry ``k``; False if the pool lacks it or it
    cannot be linked (the caller writes the file).  ``FileExistsError`` if ``path``
    exists."""
    try:
        os.link(entry_path(root, k), path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in _CANNOT_LINK:
            return False
        raise
    return True


def adopt(root: Path, k: str, path: str) -> bool:
    """Share the finished private file ``path`` through entry ``k``: it becomes the
    entry, or is replaced by a link to the entry there is.  False if it stays private."""
    entry = entry_path(root, k)
    for _ in range(_ATTEMPTS):
        try:
            os.link(path, entry, follow_symlinks=False)
            return True
        except FileNotFoundError:
            os.makedirs(os.path.dirname(entry), mode=0o700, exist_ok=True)
            continue
        except FileExistsError:
            pass
        except OSError as e:
            if e.errno in _CANNOT_LINK:
                return False
            raise
        # The pool has it: put a link to it in the file's place (a new name, then
        # rename(2), so that the path is never missing).
        parent, _, name = path.rpartition("/")
        tmp = f"{parent}/.{name}.pool-{os.urandom(4).hex()}"
        try:
            os.link(entry, tmp, follow_symlinks=False)
        except FileNotFoundError:
            continue  # gc took the entry just now: offer ours again
        except OSError as e:
            if e.errno in _CANNOT_LINK:
                return False
            raise
        os.rename(tmp, path)
        return True
    return False


@dataclass(frozen=True)
class PoolEntry:
    path: str
    size: int
    links: int
    inode: tuple[int, int]   # (st_dev, st_ino)


def entries(root: Path) -> Iterator[PoolEntry]:
    """Every entry of the pool (none if there is no pool)."""
    top = pool_root(root)
    try:
        shards = [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return
    for shard in shards:
        try:
            with os.scandir(shard) as it:
                for e in it:
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield PoolEntry(e.path, st.st_size, st.st_nlink, (st.st_dev, st.st_ino))
        except FileNotFoundError:
            continue


def sweep(root: Path, dry_run: bool = False,
          released: Mapping[tuple[int, int], int] | None = None) -> tuple[int, int]:
    """Remove entries nothing but the pool links (count, bytes).  ``released``: links
    per inode that removals still to come would drop (a dry run's view of the snapshots
    gc would remove)."""
    count = size = 0
    for e in entries(root):
        links = e.links - (released or {}).get(e.inode, 0)
        if links > 1:
            continue
        if not dry_run:
            try:
                os.unlink(e.path)
            except FileNotFoundError:
                continue
        count += 1
        size += e.size
    return count, size


def links_in(tree: Path) -> dict[tuple[int, int], int]:
    """How many names in ``tree`` each multiply-linked regular file has (what removing
    the tree takes from the pool's link counts)."""
    found: dict[tuple[int, int], int] = {}
    for top, _dirs, files in os.walk(tree):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
                k = (st.st_dev, st.st_ino)
                found[k] = found.get(k, 0) + 1
    return found


@dataclass(frozen=True)
class PoolUsage:
    entries: int        # files in the pool
    linked: int         # of them, used by at least one snapshot
    size: int           # bytes of all entries, each once
    saved: int          # bytes the snapshots would take more without the pool


def usage(root: Path) -> PoolUsage:
    count = linked = size = saved = 0
    for e in entries(root):
        count += 1
        size += e.size
        if e.links > 1:
            linked += 1
            # links - 1 snapshot names share one copy: links - 2 copies saved.
            saved += e.size * (e.links - 2)
    return PoolUsage(count, linked, size, saved)
