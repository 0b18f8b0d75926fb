"""ADD from a URL (--checksum, Last-Modified, the file's name and mode) and from a git
repository (ref, subdir, --keep-git-dir), against a real HTTP server on 127.0.0.1 that
serves files and a bare repository over git's dumb HTTP protocol."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from test_heredocs import layer_entries

from lamina_testing import Lamina, need

MTIME = 1577836800  # 2020-01-01: older than SOURCE_DATE_EPOCH, so not clamped


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "busybox", seed / "os")
    return lamina


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory it serves); stopped when the test ends."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _git(*args: str | Path, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "GIT_AUTHOR_DATE": "1600000000 +0000", "GIT_COMMITTER_DATE": "1600000000 +0000"}
    return subprocess.run([need("git"), *map(str, args)], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def _bare_repo(www: Path, work: Path) -> str:
    """A repository with a branch v1 (sub/a.txt = "one") and main (sub/a.txt = "two"),
    cloned bare under ``www`` for the dumb HTTP protocol; main's commit."""
    (work / "sub").mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=work)
    (work / "README").write_text("readme\n")
    (work / "sub" / "a.txt").write_text("one\n")
    _git("add", "-A", cwd=work)
    _git("commit", "-qm", "one", cwd=work)
    _git("branch", "v1", cwd=work)
    (work / "sub" / "a.txt").write_text("two\n")
    _git("commit", "-qam", "two", cwd=work)
    _git("clone", "-q", "--bare", work, www / "repo.git", cwd=www)
    _git("update-server-info", cwd=www / "repo.git")
    return _git("rev-parse", "HEAD", cwd=work)


def test_add_url_and_git(base: Lamina, served: tuple[str, Path], tmp_path: Path) -> None:
    url, www = served
    (www / "files").mkdir()
    (www / "files" / "hello.txt").write_text("hello over http\n")
    os.utime(www / "files" / "hello.txt", (MTIME, MTIME))
    digest = hashlib.sha256(b"hello over http\n").hexdigest()
    commit = _bare_repo(www, tmp_path / "work")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"""\
FROM busybox
ADD --checksum=sha256:{digest} {url}/files/hello.txt /dl/named.txt
ADD {url}/files/hello.txt /dl/
ADD --chmod=644 {url}/files/hello.txt?x=1 /dl/mode.txt
ADD {url}/repo.git#v1:sub /src/
ADD --keep-git-dir=true {url}/repo.git /full/
""")
    first = base.run("build", "--json", "-t", "rem", ctx).json()
    assert first["new_layers"] == 5
    layers = layer_entries(base, "rem")[1:]
    # A URL's file: named from the URL, mode 0600, mtime from Last-Modified.
    assert layers[1]["dl/hello.txt"] == (0o600, 0, 0, MTIME, b"hello over http\n")
    assert layers[0]["dl/named.txt"][0::4] == (0o600, b"hello over http\n")
    assert layers[2]["dl/mode.txt"][0] == 0o644
    # A repository: the ref's subdir, without .git.
    assert sorted(layers[3]) == ["src", "src/a.txt"]
    assert layers[3]["src/a.txt"][4] == b"one\n"
    # --keep-git-dir: the checkout of HEAD with its .git.
    assert layers[4]["full/sub/a.txt"][4] == b"two\n"
    assert layers[4]["full/.git/HEAD"][4].strip() == commit.encode()
    # Unchanged: every step hits (the URL is fetched and its digest matches; the
    # repository's commit is the same).
    assert base.run("build", "--json", ctx).json()["cached_layers"] == 5
    # Changed bytes at the URL: the step with a checksum hits on it (nothing is
    # fetched, so the new bytes go unseen, as in BuildKit); the next one misses, and
    # every step after it (the state chain).
    (www / "files" / "hello.txt").write_text("changed\n")
    os.utime(www / "files" / "hello.txt", (MTIME, MTIME))
    res = base.run("build", "--json", "-t", "rem2", ctx).json()
    assert (res["new_layers"], res["cached_layers"]) == (4, 1)
    assert layer_entries(base, "rem2")[2]["dl/hello.txt"][4] == b"changed\n"
    base.assert_consistent()


@pytest.mark.parametrize(("line", "code", "message"), [
    ("ADD --checksum=sha256:{zeros} {url}/f.txt /f", 4,
     "lamina: Containerfile:2: ADD: checksum mismatch for {url}/f.txt: expected "
     "sha256:{zeros}, got sha256:{real}"),
    ("ADD http://127.0.0.1:9/f.txt /f", 6,
     "lamina: Containerfile:2: ADD: cannot fetch http://127.0.0.1:9/f.txt: Connection refused"),
    ("ADD {url}/missing.txt /f", 6,
     "lamina: Containerfile:2: ADD: cannot fetch {url}/missing.txt: 404 File not found"),
    ("ADD {url}/nope.git#main /f", 6, "lamina: Containerfile:2: ADD: cannot clone {url}/nope.git"),
    ("ADD --checksum=sha256:{zeros} f.txt /f", 3,
     "lamina: Containerfile:2: ADD: checksum requires HTTP(S) or Git sources"),
    ("COPY {url}/f.txt /f", 3, "lamina: Containerfile:2: COPY: source can't be a URL for COPY"),
    ("ARG C=md5:1\nADD --checksum=$C {url}/f.txt /f", 3,
     "lamina: Containerfile:3: ADD: invalid --checksum=md5:1: sha256:<64 hex digits>"),
])
def test_add_remote_failures(base: Lamina, served: tuple[str, Path], tmp_path: Path,
                             line: str, code: int, message: str) -> None:
    url, www = served
    (www / "f.txt").write_text("real\n")
    values = {"url": url, "zeros": "0" * 64, "real": hashlib.sha256(b"real\n").hexdigest()}
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("local\n")
    (ctx / "Containerfile").write_text("FROM busybox\n" + line.format(**values) + "\n")
    before = base.blob_files()
    res = base.fail("build", "-t", "bad", ctx)
    assert (res.code, len(res.err.strip().splitlines())) == (code, 1), res.err
    assert res.err.startswith(message.format(**values)), res.err
    assert base.blob_files() == before
    assert "bad" not in base.run("images").out


def test_add_git_without_git(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text("FROM busybox\nADD https://example.com/r.git /r\n")
    res = base.run("build", ctx, check=False, env={"PATH": str(tmp_path / "empty")})
    assert res.code == 7, res.err
    assert res.err.strip() == ("lamina: Containerfile:2: ADD: ADD https://example.com/r.git: "
                               "git is not installed (apt-get install git)")
