"""Changesets: what differs between two directory trees (image-spec layer.md
"Change Types" and "Determining Changes").

``diff_trees(lower, upper)`` walks both trees together, one directory at a time, and
records every path of ``upper`` that was added or modified and every path of ``lower``
that is gone.  The rule for "modified" is the quick check of Docker's
``archive/changes.go`` and rsync (metadata, not content), made safe where metadata cannot
tell, as containerd's ``continuity/fs`` ``sameFile`` does:

* a different file type, permission bits (incl. setuid/setgid/sticky), uid or gid;
* for non-directories, a different size or mtime (nanoseconds), symlink target or
  device number, or (regular files) link count: a hard link made or broken changes
  which paths share an inode, and only entries in the layer can be linked in it;
* different extended attributes;
* for regular files equal in all of the above whose mtimes have no nanoseconds, a
  different content.  A whole-second mtime may have been truncated (tar headers, ustar
  archives, ``touch -d``, trees unpacked from a release tarball or from layers, which
  record seconds only), so two such equal mtimes prove nothing: containerd compares the
  bytes then, and so does lamina.  Without that, a file rewritten with the same size
  within the same second would silently keep its old bytes in the layer.
* with ``checksum=True`` (``lamina import --checksum``, as rsync's ``--checksum``) the
  content of every regular file equal in metadata is compared, whatever its mtime.

Contents are compared last, only when everything else is equal, streaming through two
fixed buffers; a file is never compared with itself (same device and inode).

Directory mtimes are ignored: they change whenever a child does, and the children
themselves are in the changeset.  A file touched without changing its bytes is
"modified" (so is Docker's view) — except under SOURCE_DATE_EPOCH: when both mtimes
clamp to the same second the layer cannot tell them apart, so then (only then) the
bytes are compared, and a touched-but-identical file is no change.  That keeps
``lamina import`` reproducible when snapshots are touched between runs.

Every ancestor directory of a change is included as an entry of its own (as
containerd's and Docker's writers do), so the mode and owner of each directory a
change sits in are carried by the layer.  Changes are sorted in tar order
(``paths.sort_key`` of the name written to the tar).
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lamina.errors import InvalidInput
from lamina.layer.paths import sort_key
from lamina.layer.whiteout import OPAQUE, whiteout_name


class ChangeKind(enum.Enum):
    ADDED = "A"
    MODIFIED = "C"
    DELETED = "D"
    OPAQUE = "O"  # every lower entry of this directory is hidden (``.wh..wh..opq``)


@dataclass(frozen=True, slots=True)
class Change:
    """One change; ``path`` is relative to the layer root, '/'-separated, no leading '/'.

    ``stat`` is the ``lstat`` of ``upper/path`` taken while diffing, for ADDED and
    MODIFIED changes (None for DELETED and OPAQUE).
    """

    path: str
    kind: ChangeKind
    stat: os.stat_result | None = field(default=None, compare=False, repr=False)

    @property
    def tar_name(self) -> str:
        """The entry name this change has in a layer tar (directories end in '/')."""
        if self.kind is ChangeKind.DELETED:
            head, _, base = self.path.rpartition("/")
            return f"{head}/{whiteout_name(base)}" if head else whiteout_name(base)
        if self.kind is ChangeKind.OPAQUE:
            return f"{self.path}/{OPAQUE}"
        if self.stat is not None and stat.S_ISDIR(self.stat.st_mode):
            return self.path + "/"
        return self.path


def _order(change: Change) -> tuple[bytes, ...]:
    return sort_key(change.tar_name.rstrip("/"))


@dataclass
class Changeset:
    """The result of a diff: changes in tar order, and the tree to read content from."""

    upper: Path
    changes: list[Change]

    def __post_init__(self) -> None:
        self.changes.sort(key=_order)

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self.changes)

    def _of(self, kind: ChangeKind) -> list[str]:
        return [c.path for c in self.changes if c.kind is kind]

    @property
    def added(self) -> list[str]:
        return self._of(ChangeKind.ADDED)

    @property
    def modified(self) -> list[str]:
        return self._of(ChangeKind.MODIFIED)

    @property
    def deleted(self) -> list[str]:
        return self._of(ChangeKind.DELETED)

    @property
    def opaque(self) -> list[str]:
        return self._of(ChangeKind.OPAQUE)


def _scan(path: str) -> dict[str, os.DirEntry[str]]:
    with os.scandir(path) as it:
        return {e.name: e for e in it}


def _xattrs(path: str, ignore: tuple[str, ...] = ()) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # filesystem without xattrs
        return {}
    out: dict[str, bytes] = {}
    for name in names:
        if ignore and name.startswith(ignore):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _clamped_seconds(st: os.stat_result, epoch: int) -> int:
    return min(st.st_mtime_ns // 1_000_000_000, epoch)


_CHUNK = 1 << 20


def same_content(a: str, b: str) -> bool:
    """True if the files ``a`` and ``b`` hold the same bytes; read a chunk of each at
    a time (memory does not grow with the files), stopping at the first difference.
    Unlike ``filecmp.cmp`` nothing is cached: a rewrite that keeps size and mtime must
    be seen."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk = fa.read(_CHUNK)
            if chunk != fb.read(_CHUNK):  # buffered reads return full chunks until EOF
                return False
            if not chunk:
                return True


@dataclass(frozen=True, slots=True)
class DiffRule:
    """How two versions of an entry are compared (the rule of this module's docstring).

    ``source_date_epoch``: the one the layer will be written with.  ``checksum``:
    compare the content of every regular file equal in metadata.  ``ignore_xattrs``:
    extended attributes whose names start with one of these are not compared
    (overlayfs keeps its bookkeeping in ``trusted.overlay.*`` on upper and lower
    directories; see layer/overlay.py, which shares this rule so both snapshotters
    agree).  ``copied_before_ns``: the upper tree is a copy of the lower one made
    before this ctime (the walk rootfs' ``cp -a``); an upper file whose ctime is older
    was not written since, so its content is the lower's and is not compared.
    """

    source_date_epoch: int | None = None
    checksum: bool = False
    ignore_xattrs: tuple[str, ...] = ()
    copied_before_ns: int | None = None


def entry_differs(lower_path: str, upper_path: str, ls: os.stat_result, us: os.stat_result,
                  rule: DiffRule = DiffRule()) -> bool:
    """The rule "modified" of this module's docstring, for one path in both trees.

    ``ls``/``us`` are the ``lstat`` of ``lower_path``/``upper_path``.
    """
    epoch = rule.source_date_epoch
    if (
        stat.S_IFMT(ls.st_mode) != stat.S_IFMT(us.st_mode)
        or ls.st_mode != us.st_mode
        or ls.st_uid != us.st_uid
        or ls.st_gid != us.st_gid
    ):
        return True
    compare_content = False
    if not stat.S_ISDIR(us.st_mode):
        if ls.st_size != us.st_size:
            return True
        if ls.st_mtime_ns != us.st_mtime_ns:
            if epoch is None or _clamped_seconds(ls, epoch) != _clamped_seconds(us, epoch):
                return True
            # Both times are clamped to the same SOURCE_DATE_EPOCH: the layer would record
            # the same header, so the entry changed only if its bytes did.  This is what
            # makes a touched-but-identical file leave the layer (and its digest) alone.
            compare_content = True
        else:
            # continuity fs/path.go sameFile: equal seconds with zero nanoseconds on both
            # sides may both be truncated, so only the content can tell.
            compare_content = rule.checksum or us.st_mtime_ns % 1_000_000_000 == 0
        if stat.S_ISREG(us.st_mode) and ls.st_nlink != us.st_nlink:
            return True
        if stat.S_ISLNK(us.st_mode) and os.readlink(lower_path) != os.readlink(upper_path):
            return True
        if (stat.S_ISCHR(us.st_mode) or stat.S_ISBLK(us.st_mode)) and ls.st_rdev != us.st_rdev:
            return True
    if _xattrs(lower_path, rule.ignore_xattrs) != _xattrs(upper_path, rule.ignore_xattrs):
        return True
    if not compare_content or not stat.S_ISREG(us.st_mode) or us.st_size == 0:
        return False
    if (ls.st_dev, ls.st_ino) == (us.st_dev, us.st_ino):
        return False  # one file (a hard link between the trees)
    if rule.copied_before_ns is not None and us.st_ctime_ns < rule.copied_before_ns:
        return False  # not written since it was copied from the lower file
    return not same_content(lower_path, upper_path)


class ChangeRecorder:
    """Collects changes and the ancestor directories each needs as an entry of its own;
    shared by the two-tree walk here and the overlay upper-dir walk (overlay.py), so
    both give the same entries."""

    def __init__(self, upper: str, rule: DiffRule = DiffRule()) -> None:
        self.upper = upper
        self.rule = rule
        self.changes: dict[str, Change] = {}
        self.parents: set[str] = set()

    def _record(self, rel: str, kind: ChangeKind, st: os.stat_result | None) -> None:
        self.changes[rel] = Change(rel, kind, st)
        parent = rel.rpartition("/")[0]
        while parent and parent not in self.parents:
            self.parents.add(parent)
            parent = parent.rpartition("/")[0]

    def result(self) -> list[Change]:
        for parent in self.parents:
            if parent not in self.changes:
                st = os.lstat(os.path.join(self.upper, parent))
                self.changes[parent] = Change(parent, ChangeKind.MODIFIED, st)
        return list(self.changes.values())


class _Walker(ChangeRecorder):
    def __init__(self, lower: str | None, upper: str, rule: DiffRule) -> None:
        super().__init__(upper, rule)
        self.lower = lower

    def walk(self, rel: str, has_lower: bool) -> None:
        # A stack, not recursion: a RUN can make trees deeper than Python's stack.
        todo = [(rel, has_lower)]
        while todo:
            self._visit(*todo.pop(), todo)

    def _visit(self, rel: str, has_lower: bool, todo: list[tuple[str, bool]]) -> None:
        upper_dir = os.path.join(self.upper, rel) if rel else self.upper
        upper_entries = _scan(upper_dir)
        lower_entries: dict[str, os.DirEntry[str]] = {}
        if has_lower and self.lower is not None:
            lower_dir = os.path.join(self.lower, rel) if rel else self.lower
            lower_entries = _scan(lower_dir)
        for name, ue in upper_entries.items():
            child = f"{rel}/{name}" if rel else name
            us = ue.stat(follow_symlinks=False)
            if stat.S_ISSOCK(us.st_mode):
                continue  # sockets cannot be put in a tar (Docker skips them too)
            le = lower_entries.get(name)
            if le is None:
                self._record(child, ChangeKind.ADDED, us)
                if stat.S_ISDIR(us.st_mode):
                    todo.append((child, False))
                continue
            ls = le.stat(follow_symlinks=False)
            if stat.S_ISSOCK(ls.st_mode):
                self._record(child, ChangeKind.ADDED, us)
                if stat.S_ISDIR(us.st_mode):
                    todo.append((child, False))
                continue
            if entry_differs(le.path, ue.path, ls, us, self.rule):
                self._record(child, ChangeKind.MODIFIED, us)
            if stat.S_ISDIR(us.st_mode):
                # A directory that replaced a non-directory has no lower contents.
                todo.append((child, stat.S_ISDIR(ls.st_mode)))
        for name, le in lower_entries.items():
            if name not in upper_entries:
                if stat.S_ISSOCK(le.stat(follow_symlinks=False).st_mode):
                    continue
                child = f"{rel}/{name}" if rel else name
                self._record(child, ChangeKind.DELETED, None)

def _by_name(entry: os.DirEntry[str]) -> bytes:
    return os.fsencode(entry.name)


def walk_tree(upper: Path) -> Iterator[Change]:
    """Everything under ``upper`` as ADDED changes, in tar order, lazily.

    The same changes ``diff_trees(None, upper)`` lists, produced while they are
    written so that walking overlaps compression: visiting each directory's
    children sorted by their byte names, depth first, is exactly ``sort_key`` order.
    """
    root = os.fspath(upper)
    if not os.path.isdir(root):
        raise InvalidInput(f"{root}: not a directory")
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = []
    with os.scandir(root) as it:
        stack.append(("", iter(sorted(it, key=_by_name))))
    while stack:
        rel, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISSOCK(st.st_mode):
            continue
        child = f"{rel}/{entry.name}" if rel else entry.name
        yield Change(child, ChangeKind.ADDED, st)
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(entry.path) as it:
                stack.append((child, iter(sorted(it, key=_by_name))))


def diff_trees(lower: Path | None, upper: Path, source_date_epoch: int | None = None, *,
               checksum: bool = False, copied_before_ns: int | None = None) -> Changeset:
    """The changes that turn ``lower`` into ``upper``; ``lower=None`` adds everything.

    With ``source_date_epoch`` (the one the layer will be written with), a file whose
    mtime differs but clamps to the same second counts as modified only if its content
    differs: mtimes the layer will not record cannot make a change.  ``checksum``
    compares the content of every regular file whose metadata is equal (rsync's
    ``--checksum``), not only of those whose mtimes may be truncated.
    ``copied_before_ns``: see ``DiffRule``.

    The root directories themselves are not compared or recorded (layers carry no
    entry for their root, as Docker's do not).
    """
    upper_s = os.fspath(upper)
    if not os.path.isdir(upper_s):
        raise InvalidInput(f"{upper_s}: not a directory")
    lower_s = None if lower is None else os.fspath(lower)
    if lower_s is not None and not os.path.isdir(lower_s):
        raise InvalidInput(f"{lower_s}: not a directory")
    walker = _Walker(lower_s, upper_s, DiffRule(source_date_epoch, checksum,
                                                 copied_before_ns=copied_before_ns))
    walker.walk("", lower_s is not None)
    return Changeset(Path(upper_s), walker.result())
