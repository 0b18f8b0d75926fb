"""`lamina save IMAGE | lamina load`, as `docker save | docker load`: save writes to
stdout without -o (never to a terminal), load reads stdin without a path (or -i PATH)."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from lamina_testing import LAMINA, Lamina


def _image(tmp_path: Path) -> Lamina:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "motd").write_text("piped\n")
    (tree / "big").write_bytes(os.urandom(3 << 20))   # more than a pipe's buffer
    lamina = Lamina(tmp_path / "a", tmp_path)
    lamina.run("import", "pipe/app:1", tree)
    return lamina


def test_save_to_stdout_into_load_from_stdin(tmp_path: Path) -> None:
    lamina = _image(tmp_path)
    other = Lamina(tmp_path / "b", tmp_path)
    save = subprocess.Popen([LAMINA, "save", "pipe/app:1"], stdout=subprocess.PIPE,
                            env=lamina.env)
    load = subprocess.run([LAMINA, "load"], stdin=save.stdout, capture_output=True,
                          text=True, env=other.env, timeout=120)
    assert save.stdout is not None
    save.stdout.close()
    assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr
    assert load.stdout.strip() == "Loaded image: pipe/app:1"
    ids = [x.run("images", "-q", "pipe/app:1").out.strip() for x in (lamina, other)]
    assert ids[0] and ids[0] == ids[1]
    other.assert_consistent()
    assert not list((other.root / "tmp").glob("stdin-*"))       # the spool is gone
    assert not list((lamina.root / "tmp").glob("stdout-*"))


def test_save_to_a_file_then_load_dash_i_or_stdin(tmp_path: Path) -> None:
    lamina = _image(tmp_path)
    archive = tmp_path / "app.tar"
    with open(archive, "wb") as f:
        subprocess.run([LAMINA, "save", "pipe/app:1"], stdout=f, env=lamina.env, check=True)
    via_i = Lamina(tmp_path / "c", tmp_path)
    assert via_i.run("load", "-i", archive).out.strip() == "Loaded image: pipe/app:1"
    with open(archive, "rb") as f:
        via_stdin = subprocess.run([LAMINA, "load"], stdin=f, capture_output=True, text=True,
                                   env=Lamina(tmp_path / "d", tmp_path).env, timeout=120)
    assert via_stdin.returncode == 0 and "Loaded image: pipe/app:1" in via_stdin.stdout


def test_no_archive_on_a_terminal_and_none_from_one(tmp_path: Path) -> None:
    lamina = _image(tmp_path)
    main, side = pty.openpty()
    try:
        save = subprocess.run([LAMINA, "save", "pipe/app:1"], stdout=side,
                              stderr=subprocess.PIPE, text=True, env=lamina.env, timeout=60)
        load = subprocess.run([LAMINA, "load"], stdin=side, capture_output=True, text=True,
                              env=lamina.env, timeout=60)
    finally:
        os.close(side)
        os.close(main)
    assert save.returncode == 3 and save.stderr.strip() == (
        "lamina: cowardly refusing to write an archive to a terminal: use -o or redirect")
    assert load.returncode == 3 and load.stderr.strip() == (
        "lamina: name an archive (PATH or -i PATH) or pipe one in "
        "(lamina save IMAGE | lamina load)")
    res = lamina.run("save", "--format", "oci", "pipe/app:1", check=False)
    assert res.code == 3 and "an OCI layout is a directory: name it with -o" in res.err
