"""Archive path names: normalising what a tar says, ordering what lamina writes."""

from __future__ import annotations

import os
from collections.abc import Callable

from lamina.errors import InvalidInput, UnsafeArchive

# limits.h: a path handed to the kernel is at most PATH_MAX bytes with its NUL, a
# component at most NAME_MAX.  Every file system refuses longer names (ENAMETOOLONG),
# so a tar entry beyond them can never be extracted, by lamina or anyone.
PATH_MAX = 4096
NAME_MAX = 255
_WHITEOUT = b".wh."


def shown(name: str, limit: int = 80) -> str:
    """``name`` quoted for a one-line message, cut to ``limit`` characters."""
    if len(name) <= limit:
        return repr(name)
    return f"{name[:limit]!r}... ({len(os.fsencode(name))} bytes)"


def check_name(name: str, what: str = "name", components: bool = True) -> None:
    """Refuse (``InvalidInput``) a tar entry's name or link target no file system takes:
    a NUL byte (the kernel's names end at the first), more than PATH_MAX - 1 bytes, or
    (``components``) a component longer than NAME_MAX.  A whiteout's component may be
    NAME_MAX plus its ``.wh.`` prefix: it deletes a name that fits.  Checked whole,
    before anything is made for the entry."""
    if "\0" in name:
        raise InvalidInput(f"tar entry {what} {shown(name)} contains a NUL byte")
    if len(name) * 4 < NAME_MAX:
        return  # at most 4 bytes per character: nothing can be too long
    raw = os.fsencode(name)
    if len(raw) >= PATH_MAX:
        raise InvalidInput(f"tar entry {what} {shown(name)} is {len(raw)} bytes long; "
                           f"file names are at most {PATH_MAX - 1} bytes (PATH_MAX)")
    if components:
        for part in raw.split(b"/"):
            if len(part) > NAME_MAX and not (part.startswith(_WHITEOUT)
                                             and len(part) - len(_WHITEOUT) <= NAME_MAX):
                raise InvalidInput(f"tar entry {what} {shown(name)} has a component of "
                                   f"{len(part)} bytes; at most {NAME_MAX} (NAME_MAX)")


def clean_name(name: str) -> list[str]:
    """The components of an archive path, relative to the layer root.

    A leading ``/`` is dropped, as Docker and containerd do (a layer's paths are
    always relative to its root, image-spec layer.md), and so are ``.`` and empty
    components.  ``..`` is resolved lexically (Go's ``filepath.Clean``, which both
    use); one that would climb above the root is refused rather than clamped,
    because no honest tool writes it.
    """
    parts: list[str] = []
    for part in name.split("/"):
        if part == "" or part == ".":
            continue
        if part == "..":
            if not parts:
                raise UnsafeArchive(f"archive entry {shown(name)} escapes the target with '..'")
            parts.pop()
        else:
            parts.append(part)
    return parts


MAX_SYMLINKS = 40  # links one lookup follows before ELOOP (path_resolution(7))


def resolve_links(path: str, readlink: Callable[[list[str]], str | None],
                  follow_last: bool = True, what: str = "") -> list[str]:
    """The components of ``path`` with its symlinks followed as a lookup in a chroot
    follows them: relative targets from the link's directory, absolute ones from the
    root, '..' never above the root, at most MAX_SYMLINKS links (else ``InvalidInput``).
    ``readlink(components)`` is the target of the symlink there, None if there is no
    symlink.  The last component is followed only with ``follow_last`` (or a trailing
    '/'); missing components are kept as written."""
    todo = list(reversed(path.split("/")))
    real: list[str] = []
    hops = 0
    while todo:
        comp = todo.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if real:
                real.pop()
            continue
        target = readlink([*real, comp])
        if target is None or not (follow_last or any(t not in ("", ".") for t in todo)):
            real.append(comp)
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise InvalidInput(f"{path}: too many levels of symbolic links{what}")
        if target.startswith("/"):
            real = []
        todo.extend(reversed(target.split("/")))
    return real


def sort_key(path: str) -> tuple[bytes, ...]:
    """Order of entries in lamina's tars: component-wise, each component bytewise.

    Comparing component tuples puts a directory immediately before its contents and
    its whole subtree before any later sibling (``a``, ``a/b``, ``a-b``), which a
    plain bytewise sort of whole paths would not ('-' < '/').  The order only has to
    be stable across machines for digests to be; bytes, not locale collation.
    """
    return tuple(os.fsencode(path).split(b"/"))
