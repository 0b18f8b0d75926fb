"""Heredocs in builds, as BuildKit's Dockerfile frontend runs them (Dockerfile reference,
"Here-Documents"; dockerfile2llb convert.go dispatchRun, convert_copy.go dispatchCopy)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from lamina.build.dockerfile import Instruction, parse
from lamina.build.heredoc import InlineFile, RunCommand, inline_sources, run_command
from lamina_testing import Lamina


@pytest.fixture
def base(lamina: Lamina, seed: Path) -> Lamina:
    lamina.run("import", "busybox", seed / "os")
    return lamina


def layer_entries(lam: Lamina, ref: str) -> list[dict[str, tuple[int, int, int, int, bytes]]]:
    """Per layer of ``ref``: name -> (mode, uid, gid, mtime, content)."""
    doc = lam.run("inspect", ref).json()[0]
    out = []
    for layer in doc["Manifest"]["layers"]:
        hexd = layer["digest"].split(":", 1)[1]
        entries = {}
        with tarfile.open(lam.root / "blobs" / "sha256" / hexd, "r:*") as tar:
            for m in tar:
                f = tar.extractfile(m) if m.isfile() else None
                entries[m.name.rstrip("/")] = (m.mode, m.uid, m.gid, int(m.mtime),
                                               f.read() if f else b"")
        out.append(entries)
    return out


HEREDOCS = """\
FROM busybox
ENV GREETING=hello
RUN <<EOF
echo "$GREETING from sh" > /plain
EOF
RUN <<EOF
#!/bin/sh
echo "script $0 $GREETING" > /script
EOF
RUN <<A cat /dev/stdin > /two && <<-'B' cat > /three
one $GREETING
A
\ttwo $GREETING
\tB
COPY <<EOF /etc/greeting
$GREETING world
EOF
COPY --chmod=600 --chown=7:8 <<"RAW" <<CONF /srv/
$GREETING raw \\$
RAW
\t${GREETING} conf \\$HOME
CONF
"""


def test_heredocs_run_and_copy(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(HEREDOCS)
    first = base.run("build", "--json", "-t", "hd", ctx).json()
    assert first["new_layers"] == 5
    layers = layer_entries(base, "hd")[1:]
    # No shebang: the body is sh -c's command string.
    assert layers[0]["plain"][4] == b"hello from sh\n"
    # A shebang: the body is a 0755 file run from /dev/pipes, which is in no layer.
    assert layers[1]["script"][4] == b"script /dev/pipes/EOF hello\n"
    assert not [n for layer in layers for n in layer if n.startswith("dev")]
    # Several heredocs: the shell reads them (it expands the unquoted one, strips tabs
    # for <<-).
    assert layers[2]["two"][4] == b"one hello\n"
    assert layers[2]["three"][4] == b"two $GREETING\n"
    # COPY: a file named by the delimiter; expanded unless quoted; 0644 root or --chmod,
    # --chown.
    assert layers[3]["etc/greeting"][:3] == (0o644, 0, 0)
    assert layers[3]["etc/greeting"][4] == b"hello world\n"
    assert layers[4]["srv/RAW"][:3] == (0o600, 7, 8)
    assert layers[4]["srv/RAW"][4] == b"$GREETING raw \\$\n"
    assert layers[4]["srv/CONF"][4] == b"\thello conf $HOME\n"
    hist = base.run("history", "--json", "hd").json()
    assert "RUN /bin/sh -c /dev/pipes/EOF" in [h["created_by"] for h in hist]
    assert hist[0]["created_by"] == "COPY --chmod=600 --chown=7:8 <<RAW <<CONF /srv/"

    # The heredoc's content is in the cache key: a changed script body misses there
    # (its argv is the same) and after; an unchanged file hits everywhere.
    assert base.run("build", "--json", ctx).json()["cached_layers"] == 5
    (ctx / "Containerfile").write_text(HEREDOCS.replace('script $0', 'script2 $0'))
    changed = base.run("build", "--json", "-t", "hd2", ctx).json()
    assert (changed["cached_layers"], changed["new_layers"]) == (1, 4)
    assert layer_entries(base, "hd2")[2]["script"][4] == b"script2 /dev/pipes/EOF hello\n"
    # A changed COPY heredoc body misses, though the instruction line is the same.
    (ctx / "Containerfile").write_text(HEREDOCS.replace("$GREETING world", "$GREETING all"))
    assert base.run("build", "--json", ctx).json()["new_layers"] == 2
    base.assert_consistent()


def test_heredoc_step_that_fails_and_bad_heredocs(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "bad"
    ctx.mkdir()
    before = base.blob_files()
    (ctx / "Containerfile").write_text("FROM busybox\nRUN <<EOF\necho hi\n")
    res = base.fail("build", "-t", "bad", ctx)
    assert res.code == 3
    assert res.err.strip() == ("lamina: Containerfile:2: unterminated heredoc: no line 'EOF' "
                               "ends the one opened here")
    (ctx / "Containerfile").write_text("FROM busybox\nRUN <<EOF\n#!/bin/sh\nexit 3\nEOF\n")
    res = base.fail("build", "-t", "bad", ctx)
    assert res.code == 3 and len(res.err.strip().splitlines()) == 1, res.err
    assert res.err.startswith('lamina: Containerfile:2: RUN: ["/bin/sh", "-c", "/dev/pipes/EOF"]'
                              ' returned a non-zero code: 3'), res.err
    (ctx / "Containerfile").write_text("FROM busybox\nCOPY --chmod=8 <<EOF /x\nx\nEOF\n")
    res = base.fail("build", "-t", "bad", ctx)
    assert res.code == 3
    assert res.err.strip() == ("lamina: Containerfile:2: invalid --chmod=8: an octal mode "
                               "from 0 to 7777 expected")
    assert base.blob_files() == before
    assert "bad" not in base.run("images").out


def test_syntax_directive_is_noted_on_stderr(base: Lamina, tmp_path: Path) -> None:
    ctx = tmp_path / "syn"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        "# syntax=docker/dockerfile:1\n# check=error=true\nFROM busybox\nRUN <<EOF\ntrue\nEOF\n")
    res = base.run("build", "--json", ctx)
    assert res.err.strip() == ("Containerfile:1: note: ignoring '# syntax=docker/dockerfile:1':"
                               " lamina parses the file with its own Dockerfile frontend")
    assert res.json()["new_layers"] == 1


def _first(text: str) -> Instruction:
    return parse("FROM a\n" + text).stages[0].instructions[0]


def test_run_and_copy_heredoc_values() -> None:
    sh = ["/bin/sh", "-c"]
    # <<- strips the tabs of the body BuildKit runs itself, shebang or not.
    assert run_command(_first("RUN <<-EOF\n\techo hi\n\tEOF\n"), sh) == RunCommand(
        [*sh, "echo hi\n"], None)
    assert run_command(_first("RUN <<-EOF\n\t#!/bin/sh\n\techo\n\tEOF\n"), sh) == RunCommand(
        [*sh, "/dev/pipes/EOF"], InlineFile("EOF", b"#!/bin/sh\necho\n", 0o755))
    # Not a lone heredoc word: the shell gets the line, each body and its terminator.
    assert run_command(_first("RUN python3 <<'PY'\nprint(1)\nPY\n"), sh) == RunCommand(
        [*sh, "python3 <<'PY'\nprint(1)\nPY"], None)
    ins = _first("COPY <<-A <<'B' /d/\n\t$X\n\tA\n$X\nB\n")
    assert inline_sources(ins, ["<<-A", "<<'B'"], {"X": "x"}) == [
        InlineFile("A", b"x\n", 0o644), InlineFile("B", b"$X\n", 0o644)]


def test_heredoc_script_as_a_non_root_user(base: Lamina, tmp_path: Path) -> None:
    # A non-root USER runs through lamina's own init when lamina is root (the sandbox
    # mounts a fresh /dev there): the script's mount point is made under it.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        "FROM busybox\nUSER 65534\nRUN <<EOF\n#!/bin/sh\nid -u > /tmp/uid\nEOF\n")
    base.run("build", "-t", "nobody", ctx)
    assert layer_entries(base, "nobody")[1]["tmp/uid"][1] == 65534
    assert layer_entries(base, "nobody")[1]["tmp/uid"][4] == b"65534\n"
