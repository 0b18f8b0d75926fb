"""COPY and ADD, planned: which sources, what goes into the cache key, and the copy.

A plan is made before the cache is asked (the key needs the content digest of every
source: the context's files, a URL's bytes or its ``--checksum``, a repository's commit,
a heredoc's body), and carried out in the step's root filesystem on a miss.  Sources, in
BuildKit's order (dockerfile2llb/convert_copy.go ``dispatchCopy``): the paths (context or
``--from``), URLs and repositories as written, then the heredocs.

Flags (Dockerfile reference, "COPY" and "ADD"):

- ``--chmod=OCTAL``: the mode of everything copied (directories too), as fsutil sets it;
- ``--exclude=PATTERN`` (repeatable): ``.dockerignore`` syntax, matched below each
  source (fsutil copy.go: against the path under the source, never the source itself);
- ``--parents``: each source keeps its path below the context root, or below a ``/./``
  in it (``COPY --parents ./a/./b/c.txt /d/`` gives ``/d/b/c.txt``);
- ``--checksum`` (ADD, one URL or repository), ``--keep-git-dir`` (ADD, repository).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina.build import remote
from lamina.build.context import SourceTree
from lamina.build.fsops import CopyAttrs, add_into, copy_into, copy_parents, lookup_owner
from lamina.build.heredoc import InlineFile
from lamina.build.ignore import IgnoreMatcher
from lamina.errors import InvalidInput

__all__ = ["CopyPlan", "CopyRequest", "plan_copy"]


@dataclass(frozen=True)
class CopyRequest:
    """A COPY/ADD with its words and flags expanded."""

    cmd: str                       # COPY or ADD
    sources: list[str]             # path, URL and repository words (no heredocs)
    inline: list[InlineFile]       # the heredoc sources
    dest_word: str
    chown: str | None = None
    chmod: int | None = None
    excludes: list[str] = field(default_factory=list)
    parents: bool = False
    checksum: str | None = None
    keep_git_dir: bool | None = None
    source_id: str = "context"     # --from's value, or "context"

    @property
    def add(self) -> bool:
        return self.cmd == "ADD"


@dataclass
class _Group:
    """Local sources copied one way: ``base`` (a path below the tree's root) with the
    paths below it (--parents), or plain sources (``base`` None)."""

    base: str | None
    rels: list[str]


@dataclass
class CopyPlan:
    request: CopyRequest
    tree: SourceTree | None
    groups: list[_Group]
    urls: list[str]
    fetched: dict[str, remote.Fetched]
    repos: list[tuple[remote.GitRef, remote.Cloned]]
    inline_paths: list[Path]
    scratch: Path
    exclude: IgnoreMatcher | None
    material: dict[str, Any]
    shown: list[str]               # the sources as history's created_by shows them

    def copy(self, root: Path, dest: str) -> None:
        """Carry the plan out in the root filesystem ``root``; ``dest`` is the container
        path (WORKDIR applied)."""
        req = self.request
        owner = lookup_owner(root, req.chown) if req.chown else None
        attrs = CopyAttrs(owner, req.chmod)
        for group in self.groups:
            assert self.tree is not None
            tree = self.tree
            if group.base is not None:
                copy_parents(root, tree.host_path(group.base), group.rels, dest, attrs,
                             tree.skip, self.exclude)
                continue
            hosts = [tree.host_path(r) for r in group.rels]
            if req.add:
                add_into(root, hosts, dest, attrs, tree.skip, self.exclude)
            else:
                copy_into(root, hosts, dest, attrs, tree.skip, self.exclude)
        for i, url in enumerate(self.urls):
            got = self.fetched.get(url)
            if got is None:  # --checksum: fetched only now, on a cache miss
                got = remote.fetch_url(url, self.scratch / f"url-{i}", req.checksum)
            # A URL's file is never unpacked (reference, "ADD": "Adding files from a URL").
            copy_into(root, [got.path], dest, attrs)
        for _, cloned in self.repos:
            copy_into(root, [cloned.path], dest, attrs, exclude=self.exclude)
        if self.inline_paths:
            copy_into(root, self.inline_paths, dest, attrs)


def plan_copy(req: CopyRequest, tree_of: Callable[[], SourceTree], scratch: Path,
              mtime: int) -> CopyPlan:
    """Resolve every source of ``req`` (matching paths, fetching URLs without a checksum,
    cloning repositories, writing heredocs under ``scratch``) and make the key material."""
    kinds = [_kind(req, s) for s in req.sources]
    if len(req.sources) + len(req.inline) > 1 and not req.dest_word.endswith("/"):
        raise InvalidInput(f"when using {req.cmd} with more than one source file, the "
                           f"destination must be a directory and end with a /: "
                           f"{req.dest_word}")
    if req.checksum is not None:
        if len(req.sources) + len(req.inline) != 1:
            raise InvalidInput("checksum can't be specified for multiple sources")
        if not kinds or kinds[0] == "path":
            raise InvalidInput("checksum requires HTTP(S) or Git sources")
    exclude = (IgnoreMatcher.from_lines(req.excludes, source="--exclude")
               if req.excludes else None)
    locals_ = [s for s, k in zip(req.sources, kinds, strict=True) if k == "path"]
    tree = tree_of() if locals_ else None
    groups: list[_Group] = []
    digests: list[str] = []
    if tree is not None:
        if req.parents:
            for src in locals_:
                base, rels = _parents_matches(tree, src)
                groups.append(_Group(base, rels))
                full = [posixpath.join(base, r) if base else r for r in rels]
                digests.append(tree.digest(full, exclude, [base] * len(full)))
        else:
            rels = [r for s in locals_ for r in tree.match(s)]
            groups.append(_Group(None, rels))
            digests.append(tree.digest(rels, exclude))
    material: dict[str, Any] = {
        "sources": [[g.base, g.rels] if g.base is not None else g.rels for g in groups],
        "from": req.source_id, "digest": digests, "chown": req.chown, "chmod": req.chmod,
        "excludes": req.excludes, "parents": req.parents,
    }
    urls: list[str] = []
    fetched: dict[str, remote.Fetched] = {}
    repos: list[tuple[remote.GitRef, remote.Cloned]] = []
    remote_keys: list[Any] = []
    for i, (src, kind) in enumerate(zip(req.sources, kinds, strict=True)):
        if kind == "url":
            urls.append(src)
            if req.checksum is not None:
                # BuildKit keys a URL with a checksum by the checksum: a cache hit
                # downloads nothing.
                remote_keys.append(["url", src, req.checksum])
            else:
                got = remote.fetch_url(src, scratch / f"url-{i}", None)
                fetched[src] = got
                remote_keys.append(["url", src, got.digest, got.mtime])
        elif kind == "git":
            ref = remote.parse_git_ref(src)
            assert ref is not None
            ref = _with_checksum(ref, req.checksum)
            keep = _keep_git_dir(ref, req.keep_git_dir)
            cloned = remote.clone_git(ref, scratch / f"git-{i}", keep)
            repos.append((ref, cloned))
            remote_keys.append(["git", ref.remote, cloned.commit, ref.subdir, keep])
    if remote_keys:
        material["remote"] = remote_keys
    inline_paths = [f.write(scratch / f"heredoc-{i}", mtime) for i, f in enumerate(req.inline)]
    if req.inline:
        material["inline"] = [[f.name, f.digest] for f in req.inline]
    shown = list(req.sources) + [f"<<{f.name}" for f in req.inline]
    return CopyPlan(req, tree, groups, urls, fetched, repos, inline_paths, scratch, exclude,
                    material, shown)


def _kind(req: CopyRequest, src: str) -> str:
    """path, url or git (convert_copy.go: isGitSource, isHTTPSource)."""
    if remote.is_git_url(src):
        if not req.add:
            raise InvalidInput(f"source can't be a git ref for COPY: {src}")
        return "git"
    if src.startswith(("http://", "https://")):
        if not req.add:
            raise InvalidInput(f"source can't be a URL for COPY: {src}")
        return "url"
    return "path"


def _with_checksum(ref: remote.GitRef, checksum: str | None) -> remote.GitRef:
    if checksum is None:
        return ref
    if ref.checksum and ref.checksum != checksum:
        raise InvalidInput(f"checksum mismatch {checksum!r} != {ref.checksum!r}")
    return remote.GitRef(ref.remote, ref.ref, ref.subdir, ref.keep_git_dir, checksum)


def _keep_git_dir(ref: remote.GitRef, flag: bool | None) -> bool:
    if flag is not None and ref.keep_git_dir is not None and flag != ref.keep_git_dir:
        raise InvalidInput("inconsistent keep-git-dir configuration")
    return bool(ref.keep_git_dir if ref.keep_git_dir is not None else flag)


def _parents_matches(tree: SourceTree, src: str) -> tuple[str, list[str]]:
    """(the base below the root, the matched paths below the base) of a ``--parents``
    source: ``a/./b/*.txt`` is base ``a``, pattern ``b/*.txt`` (convert_copy.go: the
    optional pivot point ``/./``)."""
    parent, sep, pattern = src.partition("/./")
    if not sep:
        parent, pattern = "", src
    base = posixpath.normpath("/" + parent).lstrip("/")
    full = posixpath.join(base, pattern) if base else pattern
    hits = tree.match(full)
    rels = []
    for hit in hits:
        rel = posixpath.relpath(hit, base) if base else hit
        if rel.startswith(".."):
            raise InvalidInput(f"--parents source {src}: {hit} is not below {parent}")
        rels.append("" if rel == "." else rel)
    return base, rels
