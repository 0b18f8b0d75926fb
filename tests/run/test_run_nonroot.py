"""``lamina run`` as an ordinary user: the walk snapshotter and a bubblewrap user
namespace, on a store that user owns; overlay is refused with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lamina_testing import EPOCH, Lamina, need, need_root, seed_sources

NOBODY = 65534


def _python_for_nobody() -> str:
    """An interpreter an unprivileged user may run with this venv's packages: the
    venv's own may live under /root."""
    for cand in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(
            [need("setpriv"), "--reuid", str(NOBODY), "--regid", str(NOBODY),
             "--clear-groups", "env", cand, "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return cand
    pytest.skip("no Python an unprivileged user may run (the venv's lives under /root)")


@pytest.fixture
def nobody_store(seed: Path) -> Iterator[tuple[Lamina, list[str]]]:
    need_root()
    need("bwrap")
    work = Path(tempfile.mkdtemp(prefix="lamina-nonroot-", dir="/tmp"))
    try:
        lam = Lamina(work / "store", work)
        lam.run("import", "demo/a", *seed_sources(seed, "a"))
        for dirpath, dirs, files in os.walk(work):
            for name in [*dirs, *files, ""]:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)
        site = sysconfig.get_paths()["purelib"]
        cmd = [need("setpriv"), "--reuid", str(NOBODY), "--regid", str(NOBODY),
               "--clear-groups", "env", f"LAMINA_ROOT={work / 'store'}", f"HOME={work}",
               f"SOURCE_DATE_EPOCH={EPOCH}", _python_for_nobody(), "-c",
               f"import site, sys; site.addsitedir({site!r}); sys.argv[0] = 'lamina'; "
               "from lamina.cli.main import main; main()"]
        yield lam, cmd
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _as_nobody(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_nonroot_run_uses_walk_and_a_user_namespace(nobody_store: tuple[Lamina, list[str]]
                                                    ) -> None:
    lam, cmd = nobody_store
    res = _as_nobody(cmd, "run", "demo/a", "cat", "/var/www/html/index.html")
    assert res.returncode == 0, res.stderr
    assert "Image A" in res.stdout
    res = _as_nobody(cmd, "run", "-u", "www-data", "demo/a", "id", "-u")
    assert (res.returncode, res.stdout) == (0, "33\n"), res.stderr
    res = _as_nobody(cmd, "run", "--commit", "nr/c:1", "demo/a", "sh", "-c",
                     "echo hi > /hi; rm /etc/hostname")
    assert res.returncode == 0 and "Committed nr/c:1" in res.stderr, res.stderr
    res = _as_nobody(cmd, "run", "nr/c:1", "sh", "-c", "cat /hi; ls /etc/hostname")
    assert res.stdout == "hi\n" and res.returncode != 0
    res = _as_nobody(cmd, "run", "--snapshotter", "overlay", "demo/a", "sh", "-c", ":")
    assert res.returncode == 5
    assert res.stderr.strip() == ("lamina: cannot use the overlay snapshotter: overlay mounts "
                                  "need root; use --snapshotter walk")
    tmp = lam.root / "tmp"
    assert not tmp.exists() or os.listdir(tmp) == []
