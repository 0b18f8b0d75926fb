"""ADD's remote sources: a file over HTTP(S), or a git repository.

The rules are the Dockerfile reference's ("ADD": "Adding files from a URL", "Adding files
from a Git repository", "ADD --checksum", "ADD --keep-git-dir"), with BuildKit as the
tie-breaker (frontend/dockerfile/dockerfile2llb/convert_copy.go, source/http,
source/git, frontend/dockerfile/dfgitutil):

- ``http://`` and ``https://`` URLs are files, unless the path ends in ``.git`` (then
  a repository); ``git://``, ``ssh://`` and scp-style ``user@host:path`` are
  repositories.  A repository URL may carry ``#ref[:subdir]`` and BuildKit's query
  form (``?ref=…&subdir=…&keep-git-dir=…&checksum=…``).
- A URL's file is named by the last path component (``__unnamed__`` without one), mode
  0600 (the reference: "the destination will have permissions of 600"), mtime from
  ``Last-Modified`` when the server sends it; archives are not unpacked.
- ``--checksum=sha256:…`` is checked against the downloaded bytes: a mismatch is an
  :class:`IntegrityError` and nothing is copied.
- A repository is cloned with the ``git`` command (there is no git in lamina); the
  checkout (or its ``subdir``) is copied without ``.git`` unless ``--keep-git-dir``.

Everything is fetched into a directory the caller owns (the build's scratch).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import subprocess
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from lamina.errors import IntegrityError, InvalidInput, TransportError, Unsupported

__all__ = ["GitRef", "fetch_url", "clone_git", "is_git_url", "is_http_url", "parse_git_ref"]

# Remote files: BuildKit's HTTP source writes them 0600 (source/http).
URL_FILE_MODE = 0o600
_TIMEOUT = 60.0


def is_git_url(src: str) -> bool:
    """Whether ADD reads ``src`` as a git repository (dfgitutil ``ParseGitRef``)."""
    return parse_git_ref(src) is not None


def is_http_url(src: str) -> bool:
    return src.startswith(("http://", "https://")) and not is_git_url(src)


@dataclass(frozen=True)
class GitRef:
    remote: str              # what ``git clone`` is given
    ref: str = ""            # branch, tag or commit; "" for the remote's HEAD
    subdir: str = ""         # a directory of the checkout to copy instead of all of it
    keep_git_dir: bool | None = None
    checksum: str = ""       # the commit (or a prefix of it) the ref must resolve to


def parse_git_ref(src: str) -> GitRef | None:
    """``src`` as a repository, or None if it is not one (BuildKit dfgitutil)."""
    if src.startswith(("./", "../")):
        return None
    scheme, sep, _ = src.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme not in ("http", "https", "git", "ssh"):
            return None
        parts = urlsplit(src)
        if scheme in ("http", "https") and not parts.path.endswith(".git"):
            return None
        remote = parts._replace(query="", fragment="").geturl()
        query, fragment = parts.query, parts.fragment
    else:
        # scp-style: user@host:path (sshutil.ParseSCPStyleURL: a user is required).
        head, colon, _ = src.partition(":")
        if not colon or "@" not in head or "/" in head:
            return None
        body, _, fragment = src.partition("#")
        remote, _, query = body.partition("?")
    ref, _, subdir = fragment.partition(":")
    subdir = posixpath.normpath("/" + subdir).lstrip("/") if subdir else ""
    out = GitRef(remote, ref, subdir)
    for key, values in parse_qs(query, keep_blank_values=True).items():
        if len(values) > 1:
            raise InvalidInput(f"git URL {src}: query {key!r} has several values")
        value = values[0]
        if key in ("ref", "tag", "branch"):
            if out.ref and out.ref != value:
                raise InvalidInput(f"git URL {src}: ref conflicts: {out.ref!r} vs {value!r}")
            out = GitRef(out.remote, value, out.subdir, out.keep_git_dir, out.checksum)
        elif key == "subdir":
            out = GitRef(out.remote, out.ref, value.strip("/"), out.keep_git_dir, out.checksum)
        elif key in ("checksum", "commit"):
            out = GitRef(out.remote, out.ref, out.subdir, out.keep_git_dir, value)
        elif key == "keep-git-dir":
            keep = value.lower() in ("", "1", "true")
            if value.lower() not in ("", "1", "0", "true", "false"):
                raise InvalidInput(f"git URL {src}: invalid keep-git-dir value {value!r}")
            out = GitRef(out.remote, out.ref, out.subdir, keep, out.checksum)
        else:
            raise Unsupported(f"git URL {src}: query {key!r} is not supported")
    return out


def url_file_name(url: str) -> str:
    """The name ADD gives a URL's file: the last path component (convert_copy.go)."""
    base = posixpath.basename(unquote(urlsplit(url).path))
    return base if base not in ("", ".", "/", "..") else "__unnamed__"


@dataclass(frozen=True)
class Fetched:
    path: Path       # the file, named as ADD names it, mode 0600, mtime set
    digest: str      # sha256:<hex> of its bytes
    mtime: int | None


def fetch_url(url: str, into: Path, checksum: str | None) -> Fetched:
    """Download ``url`` into the directory ``into`` (made here); check ``checksum``."""
    from lamina.transport.registry.wire import HttpClient, WireError

    algo = (checksum or "sha256:").partition(":")[0]
    h = hashlib.new(algo)
    ours = hashlib.sha256()
    into.mkdir(parents=True, exist_ok=True)
    path = into / url_file_name(url)
    try:
        with HttpClient(timeout=_TIMEOUT) as client, \
                client.request("GET", url, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise TransportError(f"cannot fetch {url}: {resp.status_code} {resp.reason}")
            last_modified = resp.headers.get("last-modified")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, URL_FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                for chunk in resp.iter_bytes():
                    h.update(chunk)
                    ours.update(chunk)
                    out.write(chunk)
    except WireError as e:
        cause = e.__cause__ or e
        raise TransportError(f"cannot fetch {url}: {getattr(cause, 'strerror', None) or cause}"
                             ) from None
    got = f"{algo}:{h.hexdigest()}"
    if checksum is not None and got != checksum:
        path.unlink()
        raise IntegrityError(f"checksum mismatch for {url}: expected {checksum}, got {got}")
    os.chmod(path, URL_FILE_MODE)
    mtime = _http_time(last_modified)
    if mtime is not None:
        # BuildKit's HTTP source sets the file's time from Last-Modified, as Docker did.
        os.utime(path, (mtime, mtime))
    return Fetched(path, f"sha256:{ours.hexdigest()}", mtime)


def _http_time(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Cloned:
    path: Path       # the directory to copy: the checkout or its subdir
    commit: str


def _git(args: list[str], what: str, cwd: Path | None = None) -> str:
    # Never ask: a build has no one to answer (ssh's BatchMode refuses prompts too).
    env = {"GIT_SSH_COMMAND": "ssh -o BatchMode=yes", **os.environ,
           "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    proc = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise TransportError(f"{what}: {lines[-1] if lines else f'git exited {proc.returncode}'}")
    return proc.stdout.strip()


def clone_git(ref: GitRef, into: Path, keep_git_dir: bool) -> Cloned:
    """Clone ``ref.remote`` into ``into`` and check out ``ref.ref``; the directory ADD
    copies (``subdir`` of the checkout), ``.git`` removed unless ``keep_git_dir``."""
    if shutil.which("git") is None:
        raise Unsupported(f"ADD {ref.remote}: git is not installed (apt-get install git)")
    checkout = into / "checkout"
    into.mkdir(parents=True, exist_ok=True)
    what = f"cannot clone {ref.remote}"
    # A full clone, not --depth 1: the dumb HTTP protocol (a bare repository served as
    # files after `git update-server-info`) cannot do shallow fetches.
    _git(["clone", "--quiet", "--no-checkout", "--", ref.remote, str(checkout)], what)
    commit = ""
    for candidate in ([ref.ref, f"origin/{ref.ref}", f"refs/tags/{ref.ref}"] if ref.ref
                      else ["HEAD"]):
        try:
            commit = _git(["rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
                          what, checkout)
            break
        except TransportError:
            continue
    if not commit:
        raise TransportError(f"{what}: no branch, tag or commit {ref.ref!r}")
    if ref.checksum and not commit.startswith(ref.checksum):
        raise IntegrityError(f"ADD {ref.remote}#{ref.ref}: checksum mismatch: expected commit "
                             f"{ref.checksum}, got {commit}")
    _git(["-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit], what,
         checkout)
    if not keep_git_dir:
        shutil.rmtree(checkout / ".git")
    top = checkout
    if ref.subdir:
        top = checkout / ref.subdir
        if top.is_symlink() or not top.is_dir():
            raise InvalidInput(f"ADD {ref.remote}: no directory {ref.subdir!r} in the "
                               "repository")
    return Cloned(top, commit)
