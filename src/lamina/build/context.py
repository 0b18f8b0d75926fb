"""The build context: which files COPY and ADD may see, and a digest of what they copy.

Sources are matched against the context (less what ``.dockerignore``/``.containerignore``
excludes) with Go ``filepath.Match`` rules, as Docker does.  The digest of a source set
covers names, types, modes, owners, link targets and content — not mtimes — so touching a
file does not bust the cache, and changing a byte does (issue #3, "The layer cache").
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from pathlib import Path

from lamina.build.ignore import IgnoreMatcher
from lamina.errors import NotFound
from lamina.pathmatch import glob_regex as _glob_regex

# (the --exclude matcher, the path its patterns are relative to)
_Excl = tuple[IgnoreMatcher | None, str]


def has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class SourceTree:
    """A directory COPY reads from: the context (with its ignore rules) or, for
    ``COPY --from``, another stage's or image's root filesystem (no ignore rules)."""

    def __init__(self, root: Path, ignore: IgnoreMatcher | None = None,
                 what: str = "build context") -> None:
        self.root = root
        self.ignore = ignore
        self.what = what

    @classmethod
    def for_context(cls, context: Path, containerfile: Path | None) -> SourceTree:
        if not context.is_dir():
            raise NotFound(f"build context {context} is not a directory")
        name = None
        if containerfile is not None:
            try:
                name = str(containerfile.resolve().relative_to(context.resolve()))
            except ValueError:
                name = None
        return cls(context, IgnoreMatcher.from_context(context, name))

    def excluded(self, rel: str) -> bool:
        return self.ignore is not None and bool(rel) and self.ignore.matches(rel)

    def walk(self, rel: str = "") -> Iterator[str]:
        """Every non-excluded path under ``rel`` (posix, relative to the root), sorted."""
        top = os.path.join(self.root, rel) if rel else str(self.root)
        try:
            entries = sorted(os.scandir(top), key=lambda e: e.name)
        except NotADirectoryError:
            return
        for e in entries:
            child = f"{rel}/{e.name}" if rel else e.name
            is_dir = e.is_dir(follow_symlinks=False)
            if self.excluded(child):
                if is_dir and self.ignore is not None and self.ignore.may_match_inside(child):
                    yield from self.walk(child)
                continue
            yield child
            if is_dir:
                yield from self.walk(child)

    def _clean(self, src: str) -> str:
        rel = posixpath.normpath("/" + src).lstrip("/")
        return "" if rel == "." else rel

    def match(self, src: str) -> list[str]:
        """The paths one COPY source names (a path or a glob); NotFound when none."""
        rel = self._clean(src)
        if not has_magic(rel):
            path = self.root / rel if rel else self.root
            if not os.path.lexists(path) or self.excluded(rel):
                raise NotFound(f"COPY failed: file not found in {self.what}: {src}"
                               + (" (excluded by .dockerignore)" if os.path.lexists(path)
                                  else ""))
            return [rel]
        rx = _glob_regex(rel)
        hits = [p for p in self.walk() if rx.fullmatch(p)]
        if not hits:
            raise NotFound(f"COPY failed: no source files were specified: {src} matches "
                           f"nothing in {self.what}")
        return hits

    def skip(self, host: str) -> bool:
        """For copying: whether an entry under the root is left out (ignore rules; an
        excluded directory that a later "!" pattern may reach into is kept)."""
        if self.ignore is None:
            return False
        rel = os.path.relpath(host, self.root)
        if rel == "." or not self.ignore.matches(rel):
            return False
        return not (os.path.isdir(host) and not os.path.islink(host)
                    and self.ignore.may_match_inside(rel))

    def host_path(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def digest(self, rels: list[str], exclude: IgnoreMatcher | None = None,
               tops: list[str] | None = None) -> str:
        """sha256 over each source's subtree: names, types, modes, owners, link targets,
        content.  Mtimes are left out on purpose.  What ``exclude`` (``COPY
        --exclude``) matches below a source's top (the source itself, or ``tops``) is
        left out too: it is not copied, so it must not change the key."""
        h = hashlib.sha256()
        for i, rel in enumerate(rels):
            h.update(f"source {rel}\n".encode())
            top = tops[i] if tops is not None else rel
            self._digest_one(h, rel, rel, (exclude, top))
        return h.hexdigest()

    def _digest_one(self, h: hashlib._Hash, rel: str, label: str, excl: _Excl) -> None:
        path = self.host_path(rel)
        st = os.lstat(path)
        h.update(f"{label}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0"
                 f"{st.st_uid}\0{st.st_gid}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode() + b"\0")
        elif stat.S_ISREG(st.st_mode):
            h.update(f"{st.st_size}\0".encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        elif stat.S_ISDIR(st.st_mode):
            matcher, top = excl
            for child in sorted(os.listdir(path)):
                crel = f"{rel}/{child}" if rel else child
                if self.skip(str(self.host_path(crel))):
                    continue
                if matcher is not None:
                    below = posixpath.relpath(crel, top) if top else crel
                    if matcher.matches(below) and not (
                            stat.S_ISDIR(os.lstat(self.host_path(crel)).st_mode)
                            and matcher.may_match_inside(below)):
                        continue
                self._digest_one(h, crel, f"{label}/{child}", excl)
