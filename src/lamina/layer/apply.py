"""Applying a layer onto a directory, safely (image-spec layer.md "Applying Changesets").

Contract:

* Every path lands inside ``target``.  Names are cleaned lexically (a leading '/' is
  dropped, as Docker and containerd do; a '..' that climbs above the root is refused).
  Parent components are then resolved one at a time with ``lstat`` inside the target:
  a symlink in a parent is followed as if the target were the root of a chroot
  (absolute link targets start at the target), and one whose resolution would climb
  above the target is refused.  The last component is never followed: an existing
  symlink there is replaced, never written through.  Hard links must name a path
  inside the target.  Whiteouts of '.', '..' or of nothing, and entries that would turn
  the target root into something other than a directory, are refused.  All of these
  raise ``UnsafeArchive`` before the offending entry touches the filesystem.
* Whiteouts (``.wh.NAME``) and opaque markers (``.wh..wh..opq``) delete only what the
  lower layers had: anything this layer itself adds survives them wherever they sit in
  the tar ("Files that are present in the same layer as a whiteout file can only be
  hidden by whiteout files in subsequent layers").  Deleting never follows symlinks.
  With ``ApplyOptions(whiteout_format="overlay")`` nothing is deleted: the target
  holds one layer, and whiteouts become overlayfs' (a 0/0 character device, an opaque
  directory xattr) for the layers under it in an overlay mount.
* An entry whose path already exists replaces it, unless both are directories (then
  the lower directory is kept, with this entry's metadata).  A directory replaced by a
  non-directory is removed with its contents first.
* The uncompressed stream is hashed while it is read, to its very end, and compared
  with ``expected_diff_id``: a mismatch raises ``IntegrityError`` (after extraction:
  callers should apply into a fresh directory and drop it on any error).
* Directory modes and mtimes are set last, so that writing their contents neither
  fails on read-only directories nor bumps their mtimes.
* With ``ApplyOptions(pool=...)`` regular files are shared through a pool of identical
  files by hard link (layer/filepool.py): each file's content is hashed while it is
  written (or, when small, before, so that a file the pool has is never written), and
  at the end every file still private is offered to the pool.  Hard links of the layer
  itself keep their meaning; empty files are always written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lamina.digest import Digest, Readable
from lamina.errors import (
    ExpansionExceeded,
    IntegrityError,
    InvalidInput,
    LaminaError,
    StoreError,
    UnsafeArchive,
    Unsupported,
)
from lamina.layer import tarformat as tf
from lamina.layer.compress import DecompressedStream, open_decompressed
from lamina.layer.filepool import FileFacts, FilePool
from lamina.layer.options import ApplyOptions
from lamina.layer.paths import clean_name, shown
from lamina.layer.tarreader import TarEntry, TarReader
from lamina.layer.whiteout import OPAQUE, PREFIX, whiteout_target
from lamina.store.rmtree import remove_tree

_O_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_SYMLINKS = 40  # Linux's limit on symlinks followed in one lookup (path_resolution(7))
_IGNORED_XATTR_ERRORS = (errno.ENOTSUP, errno.EOPNOTSUPP)
_OVERLAY_OPAQUE = "trusted.overlay.opaque"
_OVERLAY_XATTRS = "trusted.overlay."


@dataclass(frozen=True)
class AppliedLayer:
    diff_id: Digest
    uncompressed_size: int
    entries: int


def _umask() -> int:
    # Read without changing it (os.umask would change it for every thread).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class _Applier:
    def __init__(self, root: str, options: ApplyOptions) -> None:
        self.root = root
        self.opts = options
        self.is_root = os.geteuid() == 0
        self.umask = _umask()
        # Lexical parent path -> real absolute directory.  Valid while no directory or
        # symlink on the way is removed; _forget() clears it when one is.
        self._dirs: dict[str, str] = {"": root}
        # Real paths this layer wrote, and their ancestors: whiteouts spare them.
        self._added: set[str] = set()
        self._ancestors: set[str] = set()
        # Directory path -> (mode, mtime); applied at the end.
        self._dir_meta: dict[str, tuple[int, int]] = {}
        # Whiteout devices written in the "overlay" format (ApplyOptions).
        self._whiteouts: set[str] = set()
        # With a pool (ApplyOptions.pool): files written here, with their inode, to offer
        # it at the end; and files linked from it, with their entry, should a hard link
        # of the layer name one (it is made private again first).
        self._private: dict[str, tuple[int, FileFacts]] = {}
        self._pooled: dict[str, TarEntry] = {}
        self._euid, self._egid = os.geteuid(), os.getegid()

    # -- resolving paths inside the target ----------------------------------------

    def _forget(self) -> None:
        self._dirs = {"": self.root}

    def _rel_parts(self, real: str) -> list[str]:
        return [] if real == self.root else real[len(self.root) + 1 :].split("/")

    def resolve_dir(self, parts: list[str], create: bool, name: str) -> str | None:
        """The real directory ``parts`` denotes inside the target, following parent
        symlinks as in a chroot; None if it does not exist (and ``create`` is False)
        or is not a directory (and ``create`` is False)."""
        key = "/".join(parts)
        hit = self._dirs.get(key)
        if hit is not None:
            return hit
        # Start from the longest cached prefix.
        cut = len(parts) - 1
        while cut > 0 and "/".join(parts[:cut]) not in self._dirs:
            cut -= 1
        real = self._rel_parts(self._dirs["/".join(parts[:cut])])
        todo = list(reversed(parts[cut:]))
        hops = 0
        while todo:
            comp = todo.pop()
            if comp == "" or comp == ".":
                continue
            if comp == "..":
                if not real:
                    raise UnsafeArchive(
                        f"archive entry {shown(name)} goes through a symlink that points "
                        "outside the target"
                    )
                real.pop()
                continue
            real.append(comp)
            path = self.root + "/" + "/".join(real)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    return None
                os.mkdir(path, 0o755)
                self._note_added(path)
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if create and self._replace_whiteout(path):
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise UnsafeArchive(f"archive entry {shown(name)}: too many levels of symlinks")
                real.pop()
                target = os.readlink(path)
                if target.startswith("/"):
                    real = []  # absolute targets start at the target root (chroot)
                todo.extend(reversed(target.split("/")))
                continue
            if not create:
                return None
            raise InvalidInput(
                f"archive entry {shown(name)}: parent {'/'.join(real)!r} is not a directory"
            )
        result = self.root + "/" + "/".join(real) if real else self.root
        self._dirs[key] = result
        return result

    def _note_added(self, path: str) -> None:
        self._added.add(path)
        parent = path.rpartition("/")[0]
        while len(parent) > len(self.root) and parent not in self._ancestors:
            self._ancestors.add(parent)
            parent = parent.rpartition("/")[0]

    # -- removing -----------------------------------------------------------------

    def _remove(self, path: str, st: os.stat_result) -> None:
        self._whiteouts.discard(path)
        if self._private or self._pooled:
            self._forget_files(path, stat.S_ISDIR(st.st_mode))
        if stat.S_ISDIR(st.st_mode):
            if self._whiteouts:
                self._whiteouts = {w for w in self._whiteouts if not _under(w, path)}
            # Never follows symlinks inside the tree (it unlinks them), and does not
            # recurse: a layer can make directories ~2000 levels deep.
            remove_tree(path)
            if path in self._added or path in self._ancestors:
                # Only this layer's directories have pending metadata.
                self._dir_meta = {p: m for p, m in self._dir_meta.items() if not _under(p, path)}
            self._forget()
        else:
            os.unlink(path)
            if stat.S_ISLNK(st.st_mode):
                self._forget()

    def _forget_files(self, path: str, tree: bool) -> None:
        # A removed file must never be offered to the pool under its old facts: an inode
        # number can come back for another file at the same path.
        self._private.pop(path, None)
        self._pooled.pop(path, None)
        if tree:
            self._private = {p: v for p, v in self._private.items() if not _under(p, path)}
            self._pooled = {p: e for p, e in self._pooled.items() if not _under(p, path)}

    def remove_lower(self, path: str) -> None:
        """Delete what lower layers have at ``path``, sparing what this layer added.
        A stack, not recursion: this layer's directories may be ~2000 levels deep."""
        todo = [path]
        while todo:
            here = todo.pop()
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                continue
            if here in self._added or here in self._ancestors:
                if stat.S_ISDIR(st.st_mode):
                    with os.scandir(here) as it:
                        todo.extend(e.path for e in it)
                continue
            self._remove(here, st)

    def _make_room(self, path: str, for_dir: bool) -> bool:
        """Clear ``path`` for a new entry; True if an existing directory is kept."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if for_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(path, st)
        return False

    # -- entries ------------------------------------------------------------------

    def whiteout(self, entry: TarEntry, parts: list[str]) -> bool:
        """Honour ``entry`` if it is a whiteout; True if it was one."""
        base = parts[-1]
        if not base.startswith(PREFIX):
            return False
        if self.opts.whiteout_format == "overlay":
            self._overlay_whiteout(entry, parts)
            return True
        parent = self.resolve_dir(parts[:-1], False, entry.name)
        if base == OPAQUE:
            if parent is not None:
                with os.scandir(parent) as it:
                    children = [e.path for e in it]
                for child in children:
                    self.remove_lower(child)
            return True
        victim = whiteout_target(base, entry.name)
        if victim is not None and parent is not None:
            self.remove_lower(parent + "/" + victim)
        return True

    def _overlay_whiteout(self, entry: TarEntry, parts: list[str]) -> None:
        """Record a whiteout the way overlayfs reads it from a lowerdir.

        The target holds this layer only, so there is nothing below to delete: the
        whiteout must stay visible as a marker for the layers under it in the mount.
        An entry this layer itself adds at the same path wins, wherever it comes in
        the tar, as in the "delete" format (a later entry replaces the marker through
        ``_make_room``; an earlier one is kept here).
        """
        parent = self.resolve_dir(parts[:-1], True, entry.name)
        assert parent is not None
        base = parts[-1]
        if base == OPAQUE:
            # trusted.* needs CAP_SYS_ADMIN; overlayfs ignores user.* unless mounted
            # with "userxattr" (rootless), which lamina does not do.
            os.setxattr(parent, _OVERLAY_OPAQUE, b"y", follow_symlinks=False)
            return
        victim = whiteout_target(base, entry.name)
        if victim is None:
            return  # AUFS bookkeeping (.wh..wh.plnk and friends): nothing to record
        path = parent + "/" + victim
        if path in self._added or path in self._ancestors:
            # This layer already wrote here.  A directory of ours stays, but what the
            # layers below had in it must go: that is an opaque directory.
            if os.path.isdir(path) and not os.path.islink(path):
                os.setxattr(path, _OVERLAY_OPAQUE, b"y", follow_symlinks=False)
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            self._remove(path, st)
        # A 0/0 character device is overlayfs' whiteout; its mode is never looked at.
        os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
        os.chown(path, 0, 0, follow_symlinks=False)
        self._whiteouts.add(path)

    def _replace_whiteout(self, path: str) -> bool:
        """A directory of this layer where it wrote a whiteout: True if there was one.

        "Delete X, then add X/..." in one layer means: the layers below lose X, this
        layer's X stays.  For overlayfs that is an opaque directory, not a whiteout.
        """
        if path not in self._whiteouts:
            return False
        self._whiteouts.discard(path)
        os.unlink(path)
        os.mkdir(path, 0o755)
        os.setxattr(path, _OVERLAY_OPAQUE, b"y", follow_symlinks=False)
        self._note_added(path)
        return True

    def apply(self, entry: TarEntry, reader: TarReader) -> None:
        parts = clean_name(entry.name)
        if not parts:
            if entry.type != tf.DIR:
                raise UnsafeArchive(
                    f"archive entry {shown(entry.name)} would replace the target root "
                    "with a non-directory"
                )
            self._dir_entry(self.root, entry, existing_ok=True)
            return
        if self.opts.whiteouts and self.whiteout(entry, parts):
            return
        parent = self.resolve_dir(parts[:-1], True, entry.name)
        assert parent is not None
        path = parent + "/" + parts[-1]
        t = entry.type
        if t == tf.REG:
            self._file(path, entry, reader)
        elif t == tf.DIR:
            self._dir_entry(path, entry, existing_ok=False)
        elif t == tf.SYM:
            self._create(path, lambda: os.symlink(entry.linkname, path))
            self._owner_time_xattrs(path, entry)
        elif t == tf.LNK:
            self._hardlink(path, entry)
        elif t == tf.FIFO:
            self._create(path, lambda: os.mkfifo(path, 0o600))
            self._owner_time_xattrs(path, entry, chmod=True)
        elif t in (tf.CHR, tf.BLK):
            if not self.opts.devices:
                return  # skipped when we may not create devices (GNU tar as non-root)
            kind = stat.S_IFCHR if t == tf.CHR else stat.S_IFBLK
            dev = os.makedev(entry.devmajor, entry.devminor)
            self._create(path, lambda: os.mknod(path, kind | 0o600, dev))
            self._owner_time_xattrs(path, entry, chmod=True)
        else:
            raise Unsupported(f"archive entry {shown(entry.name)} has unsupported tar type {t!r}")

    def _create(self, path: str, make: Callable[[], None]) -> None:
        try:
            make()
        except FileExistsError:
            self._make_room(path, False)
            make()
        self._note_added(path)

    def _owner_time_xattrs(self, path: str, entry: TarEntry, chmod: bool = False) -> None:
        if self.opts.same_owner:
            os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        if chmod:
            os.chmod(path, entry.mode)  # a fifo or device we just created, not a symlink
        self._set_xattrs(path, entry)
        ns = entry.mtime * 1_000_000_000
        os.utime(path, ns=(ns, ns), follow_symlinks=False)

    def _xattrs(self, entry: TarEntry) -> dict[str, bytes]:
        if self.opts.whiteout_format != "overlay" or not entry.xattrs:
            return entry.xattrs
        # In a lowerdir these would be overlayfs' own instructions (opaque, redirect,
        # metacopy): a layer may only say that with whiteouts.
        return {k: v for k, v in entry.xattrs.items() if not k.startswith(_OVERLAY_XATTRS)}

    def _set_xattrs(self, target: str | int, entry: TarEntry) -> None:
        for key, value in self._xattrs(entry).items():
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as exc:
                # Filesystems without xattrs, and namespaces an unprivileged user may
                # not write (security.*, trusted.*, user.* on symlinks), are skipped
                # like GNU tar's --xattrs does; as root anything else is an error.
                if exc.errno in _IGNORED_XATTR_ERRORS:
                    continue
                if exc.errno == errno.EPERM and (not self.is_root or not isinstance(target, int)):
                    continue
                raise

    def _file(self, path: str, entry: TarEntry, reader: TarReader) -> None:
        pool = self.opts.pool
        if pool is None or entry.size == 0:
            # Empty files have no data to share, and linking them would only pile links
            # on one inode up to the file system's limit (ostree copies them too).
            self._write(path, entry, reader.data(), None)
            return
        if entry.size <= pool.inline_limit:
            data = bytearray()
            for view in reader.data():
                data += view
            facts = self._facts(entry, hashlib.sha256(data).hexdigest())
            try:
                linked = pool.link(facts, path)
            except FileExistsError:
                self._make_room(path, False)
                linked = pool.link(facts, path)
            if linked:
                self._note_added(path)
                self._pooled[path] = entry
                return
            ino = self._write(path, entry, (memoryview(data),), None)
        else:
            hasher = hashlib.sha256()
            ino = self._write(path, entry, reader.data(), hasher)
            facts = self._facts(entry, hasher.hexdigest())
        self._private[path] = (ino, facts)

    def _facts(self, entry: TarEntry, digest: str) -> FileFacts:
        owner = (entry.uid, entry.gid) if self.opts.same_owner else (self._euid, self._egid)
        return FileFacts(digest, entry.size, entry.mode, owner[0], owner[1],
                         entry.mtime * 1_000_000_000, tuple(sorted(self._xattrs(entry).items())))

    def _write(self, path: str, entry: TarEntry, data: Iterable[memoryview],
               hasher: hashlib._Hash | None) -> int:
        """Create ``path`` with ``data`` and the entry's metadata; its inode number
        (0 without a pool)."""
        open_mode = entry.mode & 0o777
        try:
            fd = os.open(path, _O_CREATE, open_mode)
        except FileExistsError:
            self._make_room(path, False)
            fd = os.open(path, _O_CREATE, open_mode)
        try:
            self._note_added(path)
            for view in data:
                if hasher is not None:
                    hasher.update(view)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            self._file_meta(fd, entry, open_mode & ~self.umask)
            return 0 if self.opts.pool is None else os.fstat(fd).st_ino
        finally:
            os.close(fd)

    def _file_meta(self, fd: int, entry: TarEntry, created_mode: int) -> None:
        if self.opts.same_owner:
            os.fchown(fd, entry.uid, entry.gid)  # clears setuid: chmod comes after
        if entry.mode != created_mode:
            os.fchmod(fd, entry.mode)
        if entry.xattrs:
            self._set_xattrs(fd, entry)  # after chown, which drops security.capability
        ns = entry.mtime * 1_000_000_000
        os.utime(fd, ns=(ns, ns))

    def _make_private(self, path: str) -> None:
        """Give ``path``, linked from the pool, an inode of its own again (a hard link
        of this layer is about to name it: the layer's link must not reach the pool)."""
        entry = self._pooled.pop(path)
        parent, _, name = path.rpartition("/")
        while True:
            tmp = f"{parent}/.{name}.lamina-{os.urandom(4).hex()}"
            try:
                out = os.open(tmp, _O_CREATE, 0o600)
                break
            except FileExistsError:
                continue
        try:
            src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                done = 0
                while done < entry.size:
                    n = os.sendfile(out, src, done, entry.size - done)
                    if n == 0:
                        break
                    done += n
            finally:
                os.close(src)
            self._file_meta(out, entry, 0o600)
        except BaseException:
            os.close(out)
            os.unlink(tmp)
            raise
        os.close(out)
        os.rename(tmp, path)

    def _dir_entry(self, path: str, entry: TarEntry, existing_ok: bool) -> None:
        if not existing_ok:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not self._replace_whiteout(path) and not self._make_room(path, True):
                    os.mkdir(path, 0o700)
            self._note_added(path)
        if self.opts.same_owner:
            os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        self._set_xattrs(path, entry)
        self._dir_meta[path] = (entry.mode, entry.mtime)

    def _hardlink(self, path: str, entry: TarEntry) -> None:
        tparts = clean_name(entry.linkname)
        if not tparts:
            raise UnsafeArchive(f"hard link {shown(entry.name)} points at the target root")
        tparent = self.resolve_dir(tparts[:-1], False, entry.linkname)
        source = None if tparent is None else tparent + "/" + tparts[-1]
        try:
            st = None if source is None else os.lstat(source)
        except FileNotFoundError:
            st = None
        if source is None or st is None:
            raise InvalidInput(
                f"hard link {shown(entry.name)} points at {shown(entry.linkname)}, "
                "which is not in the target"
            )
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"hard link {shown(entry.name)} points at directory "
                                f"{shown(entry.linkname)}")
        if source == path:
            return
        if source in self._pooled:
            self._make_private(source)
        try:
            os.link(source, path, follow_symlinks=False)
        except FileExistsError:
            self._make_room(path, False)
            os.link(source, path, follow_symlinks=False)
        self._note_added(path)

    def share_files(self, pool: FilePool) -> None:
        """Offer the pool every file written here that is still private: the same
        inode (not replaced) with one link (not hard-linked inside the layer).  Before
        ``finish``: sharing changes the directories, whose mtimes come last."""
        for path, (ino, facts) in self._private.items():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if st.st_ino == ino and st.st_nlink == 1 and stat.S_ISREG(st.st_mode):
                pool.share(facts, path)
        self._private.clear()

    def finish(self) -> None:
        if self.opts.pool is not None:
            self.share_files(self.opts.pool)
        # Children before parents (reverse of creation), so a read-only parent does
        # not stop us; chmod and utime on a directory do not touch its parent's mtime.
        for path, (mode, mtime) in reversed(self._dir_meta.items()):
            try:
                fd = os.open(path, _O_DIR)
            except OSError:
                continue  # replaced by a later entry: its own metadata applies
            try:
                os.fchmod(fd, mode)
                ns = mtime * 1_000_000_000
                os.utime(fd, ns=(ns, ns))
            finally:
                os.close(fd)


def _extract_error(name: str, target: Path, exc: OSError) -> LaminaError:
    what = f"cannot extract {shown(name)} into {target}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # The disk, not the layer: the store's kind of error (exit 5), worded as the
        # store words it (store/blobs.py).
        full = "no space left on device" if exc.errno == errno.ENOSPC else \
            "disk quota exceeded"
        return StoreError(f"{full}: {what}")
    if exc.errno == errno.ENAMETOOLONG:
        # The layer's name, under this target, is longer than the file system takes
        # (the reader already refused names no target could hold): the input's kind.
        return InvalidInput(f"{what}: {exc.strerror}")
    return LaminaError(f"{what}: {exc.strerror or exc}")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def _explain_malformed(
    source: DecompressedStream, expected: Digest | None, exc: InvalidInput
) -> None:
    """Raise the integrity problem behind a malformed tar, if there is one."""
    try:
        while source.read_block():
            pass
    except IntegrityError as damage:
        raise damage from exc
    if expected is not None and source.digest() != expected:
        raise IntegrityError(
            f"layer content has diff_id {source.digest()}, expected {expected}, "
            f"and is not a valid tar ({exc})"
        ) from exc


def apply_layer(
    stream: Readable,
    target: Path,
    expected_diff_id: Digest | None = None,
    options: ApplyOptions = ApplyOptions(),
) -> AppliedLayer:
    """Extract the layer in ``stream`` (gzip, zstd or plain tar) onto ``target``.

    ``target`` is created if missing.  Returns the diff_id of the uncompressed tar as
    read (the whole stream, padding included); raises ``IntegrityError`` if it is not
    ``expected_diff_id``, ``UnsafeArchive`` for hostile entries, ``InvalidInput`` for
    malformed tars.
    """
    algorithm = "sha256" if expected_diff_id is None else expected_diff_id.algorithm
    os.makedirs(target, exist_ok=True)
    root = os.path.realpath(target)
    if not os.path.isdir(root):
        raise InvalidInput(f"{target}: not a directory")
    applier = _Applier(root, options)
    source = open_decompressed(stream, algorithm)
    try:
        reader = TarReader(source)
        entries = 0
        try:
            while (entry := reader.next()) is not None:
                entries += 1
                try:
                    applier.apply(entry, reader)
                except OSError as exc:
                    raise _extract_error(entry.name, target, exc) from exc
            reader.drain()
        except InvalidInput as exc:
            if isinstance(exc, UnsafeArchive | ExpansionExceeded):
                raise
            # A tar that makes no sense is usually damaged compressed data whose
            # checksum comes only at its end: report the damage, not its symptom.
            _explain_malformed(source, expected_diff_id, exc)
            raise
        try:
            applier.finish()
        except OSError as exc:
            raise LaminaError(f"cannot finish extracting into {target}: "
                              f"{exc.strerror or exc}") from exc
        diff_id = source.digest()
        size = source.count
    finally:
        source.close()
    if expected_diff_id is not None and diff_id != expected_diff_id:
        raise IntegrityError(
            f"layer content has diff_id {diff_id}, expected {expected_diff_id} "
            "(corrupt layer or wrong config)"
        )
    return AppliedLayer(diff_id, size, entries)
