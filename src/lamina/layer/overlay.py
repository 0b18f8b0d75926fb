"""Changesets from an overlayfs upper directory: O(changes), not O(tree).

A container runs on an overlay mount: the image's layers as read-only ``lowerdir``s and
an empty ``upperdir`` that receives every write (overlayfs.rst).  After the process has
run, the upper directory holds exactly what it touched:

* new and modified entries, and every directory on the way to them (copied up);
* a character device 0/0 for each lower entry it deleted (a *whiteout*);
* ``trusted.overlay.opaque=y`` on a directory that replaced a lower one (removed, then
  made again): nothing of the lower directory shows through it.

So only the upper tree is walked.  But "touched" is not "changed": a file opened for
writing and left identical, ``chmod`` to the same mode, or a directory copied up only
because a child changed all land in the upper dir.  Each upper entry that also exists
in the lower view is therefore compared with it by the rule ``diff_trees`` uses
(``changes.entry_differs``), and an opaque directory is expanded into one whiteout per
lower entry it hides, as ``diff_trees`` records them.  The result is the changeset the
walk over two full trees gives for the same run, entry for entry, so both snapshotters
write byte-identical layers (tests/run/test_snapshotters_agree.py).

The lower view is read straight from the layer directories (top first, as in
``lowerdir``), which are in overlay form themselves (``ApplyOptions(whiteout_format=
"overlay")``): a lookup walks down the stack, stops at a whiteout, at a non-directory,
and below an opaque directory, as overlayfs' own lookup does.

Limits, the same as overlayfs' own: the mount must be made with ``redirect_dir=off``
and ``metacopy=off`` (run/rootfs.py does), so that a renamed directory is a full copy
and a ``chmod`` copies the data up; the upper dir then holds whole entries.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from lamina.errors import InvalidInput
from lamina.layer.changes import ChangeKind, ChangeRecorder, Changeset, DiffRule, entry_differs

# overlayfs' private xattrs: on upper entries (origin, impure, opaque, redirect) and on
# lower layer dirs (opaque).  They describe the mount, never the file.
OVERLAY_XATTR_PREFIX = "trusted.overlay."
OPAQUE_XATTR = "trusted.overlay.opaque"
_IGNORE = (OVERLAY_XATTR_PREFIX,)


def is_whiteout(st: os.stat_result) -> bool:
    """overlayfs' whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


class _LowerEntry:
    """An entry of the merged lower view: where to read it, and the directories that
    make it up when it is a directory (top first; empty below an opaque one)."""

    __slots__ = ("dirs", "path", "st")

    def __init__(self, path: str, st: os.stat_result, dirs: list[str]) -> None:
        self.path = path
        self.st = st
        self.dirs = dirs


def _lookup(dirs: Sequence[str], name: str) -> _LowerEntry | None:
    """``name`` in the merged directory made of ``dirs`` (top first), as overlayfs
    resolves it; None if absent or whited out."""
    found: _LowerEntry | None = None
    for d in dirs:
        path = d + "/" + name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        if found is None:
            if is_whiteout(st):
                return None
            found = _LowerEntry(path, st, [])
            if not stat.S_ISDIR(st.st_mode):
                return found  # a non-directory hides everything below it
            found.dirs.append(path)
            if is_opaque(path):
                return found
            continue
        # Below the topmost directory: only directories merge into it; a whiteout or
        # a non-directory ends the stack.
        if not stat.S_ISDIR(st.st_mode):
            return found
        found.dirs.append(path)
        if is_opaque(path):
            return found
    return found


def _listing(dirs: Sequence[str]) -> dict[str, _LowerEntry]:
    """Every visible entry of the merged directory made of ``dirs``."""
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
    out: dict[str, _LowerEntry] = {}
    for name in names:
        entry = _lookup(dirs, name)
        if entry is not None:
            out[name] = entry
    return out


class _UpperWalker(ChangeRecorder):

    def walk(self, rel: str, lower_dirs: list[str]) -> None:
        # A stack, not recursion: a RUN can make trees deeper than Python's stack.
        todo = [(rel, lower_dirs)]
        while todo:
            self._visit(*todo.pop(), todo)

    def _visit(self, rel: str, lower_dirs: list[str],
               todo: list[tuple[str, list[str]]]) -> None:
        upper_dir = self.upper + "/" + rel if rel else self.upper
        with os.scandir(upper_dir) as it:
            entries = list(it)
        for ue in entries:
            name = ue.name
            child = f"{rel}/{name}" if rel else name
            us = ue.stat(follow_symlinks=False)
            if stat.S_ISSOCK(us.st_mode):
                continue  # no tar form; diff_trees skips them too
            lower = _lookup(lower_dirs, name) if lower_dirs else None
            if lower is not None and stat.S_ISSOCK(lower.st.st_mode):
                lower = None  # diff_trees treats a lower socket as absent
            if is_whiteout(us):
                if lower is not None:
                    self._record(child, ChangeKind.DELETED, None)
                continue
            if lower is None:
                self._record(child, ChangeKind.ADDED, us)
            elif entry_differs(lower.path, ue.path, lower.st, us, self.rule):
                self._record(child, ChangeKind.MODIFIED, us)
            if not stat.S_ISDIR(us.st_mode):
                continue
            below = lower.dirs if lower is not None else []
            if below and is_opaque(ue.path):
                # Made again after a delete: every lower entry not made again is gone
                # (one whiteout each, as diff_trees records it, rather than an opaque
                # marker: both snapshotters must write the same layer).
                present = set(os.listdir(ue.path))
                for gone, entry in _listing(below).items():
                    if gone not in present and not stat.S_ISSOCK(entry.st.st_mode):
                        self._record(f"{child}/{gone}", ChangeKind.DELETED, None)
            todo.append((child, below))

def changes_from_upper(upper: Path, lowers: Sequence[Path],
                       source_date_epoch: int | None = None,
                       merged: Path | None = None) -> Changeset:
    """What a process changed, read from the overlay ``upper`` dir over ``lowers``.

    ``lowers`` are the lower directories **top first** (the order of ``lowerdir=``),
    each in overlay form.  ``source_date_epoch`` is the one the layer will be written
    with (see ``diff_trees``).

    ``merged``, the mount point, should be given while the overlay is mounted: the
    changeset then reads file contents and xattrs through it, where overlayfs hides
    its ``trusted.overlay.*`` bookkeeping; without it they are read from ``upper``
    and a layer written from the changeset carries those xattrs.  Either way the
    changeset is valid only as long as the directory it reads from.
    """
    upper_s = os.fspath(upper)
    if not os.path.isdir(upper_s):
        raise InvalidInput(f"{upper_s}: not a directory")
    lower_dirs = [os.fspath(p) for p in lowers]
    for d in lower_dirs:
        if not os.path.isdir(d):
            raise InvalidInput(f"{d}: not a directory")
    walker = _UpperWalker(upper_s, DiffRule(source_date_epoch, ignore_xattrs=_IGNORE))
    walker.walk("", lower_dirs)
    return Changeset(merged if merged is not None else Path(upper_s), walker.result())
