"""The sandbox: user resolution, paths inside the rootfs, and the two ways to start a
process (bubblewrap, unshare + init) giving the same container."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers, entry, make_tar, store_image

from lamina.errors import InvalidInput
from lamina.run.rootfs import open_rootfs
from lamina.run.sandbox import (
    ProcessSpec,
    find_executable,
    resolve_in_root,
    resolve_user,
    run_process,
)
from lamina.store.store import Store
from lamina.transport.local import StoreTransport
from lamina.transport.resolve import resolve_image
from lamina_testing import need, need_root

DIR, SYM = tarfile.DIRTYPE, tarfile.SYMTYPE


@pytest.fixture
def etc_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www:/var/www:/bin/false\n"
        "app:x:1000:1000::/home/app:/bin/sh\n")
    (root / "etc/group").write_text(
        "root:x:0:\nwww-data:x:33:\nstaff:x:50:app,www-data\napp:x:1000:\naudio:x:29:app\n")
    return root


def test_resolve_user_follows_dockers_rules(etc_root: Path) -> None:
    u = resolve_user(etc_root, "app")
    assert (u.uid, u.gid, u.groups, u.home) == (1000, 1000, (29, 50, 1000), "/home/app")
    u = resolve_user(etc_root, "www-data")
    assert (u.uid, u.gid, u.groups, u.home) == (33, 33, (33, 50), "/var/www")
    u = resolve_user(etc_root, "app:staff")        # an explicit group replaces the others
    assert (u.uid, u.gid, u.groups) == (1000, 50, (50,))
    u = resolve_user(etc_root, "4242")             # a uid need not be in passwd
    assert (u.uid, u.gid, u.groups, u.home) == (4242, 0, (0,), "/")
    u = resolve_user(etc_root, "33:7")
    assert (u.uid, u.gid, u.groups) == (33, 7, (7,))
    assert resolve_user(etc_root, "").uid == 0
    with pytest.raises(InvalidInput, match="unable to find user ghost"):
        resolve_user(etc_root, "ghost")
    with pytest.raises(InvalidInput, match="unable to find group ghosts"):
        resolve_user(etc_root, "app:ghosts")


def test_paths_resolve_inside_the_rootfs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_text("#!/bin/sh\n")
    os.chmod(root / "usr/bin/tool", 0o755)
    (root / "usr/bin/data").write_text("x")
    os.symlink("usr/bin", root / "bin")
    os.symlink("/../../../../etc", root / "escape")
    os.symlink("../../..", root / "usr/bin/up")
    assert resolve_in_root(root, "/bin/tool") == "/usr/bin/tool"
    assert resolve_in_root(root, "/escape/passwd") == "/etc/passwd"   # not the host's
    assert resolve_in_root(root, "/usr/bin/up/usr/bin/tool") == "/usr/bin/tool"
    assert resolve_in_root(root, "/bin", follow_last=False) == "/bin"
    assert find_executable(root, "tool", "/nowhere:/bin", "/") == ("/bin/tool", 0)
    assert find_executable(root, "data", "/usr/bin", "/") == ("/usr/bin/data", 126)
    assert find_executable(root, "ghost", "/usr/bin", "/") == (None, 127)
    assert find_executable(root, "./tool", "", "/usr/bin")[1] == 0


def _run(spec: ProcessSpec, sandbox: str) -> tuple[int, str]:
    with tempfile.TemporaryFile() as out:
        code = run_process(spec, stdin=None, stdout=out.fileno(), stderr=out.fileno(),
                           sandbox=sandbox)  # type: ignore[arg-type]
        out.seek(0)
        return code, out.read().decode()


@pytest.mark.parametrize("sandbox", ["bwrap", "unshare"])
def test_both_sandboxes_make_the_same_container(walk_rootfs: Path, sandbox: str) -> None:
    need("bwrap")
    script = ("id; hostname; cat /proc/net/dev | wc -l; echo \"$FOO|$PATH\"; pwd; "
              "ls /dev | grep -c -e '^null$' -e '^zero$' -e '^urandom$' -e '^pts$' -e '^shm$'; "
              "/bin/busybox grep -c '^CapBnd\\|^CapEff' /proc/self/status; "
              "/bin/busybox ps -o pid,comm | wc -l; "
              "echo x > /tmp/root-file; /bin/busybox stat -c %u:%g /tmp/root-file; "
              "ls /oldroot /host 2>&1 | wc -l")
    code, out = _run(ProcessSpec(walk_rootfs, ["sh", "-c", script], {"FOO": "bar"},
                                 cwd="/var/www", hostname="box"), sandbox)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[:5] == ["uid=0(root) gid=0(root) groups=0(root)", "box", "3",
                         "bar|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                         "/var/www"]
    assert lines[5] == "5"            # the minimal /dev
    # Only the sandbox's processes: header, sh, ps, wc (and bwrap's init).
    assert int(lines[7]) <= 5
    assert lines[8] == "0:0"
    assert (walk_rootfs / "tmp/root-file").read_text() == "x\n"
    # Killed by a signal: 128 + N, as a shell says.
    code, _ = _run(ProcessSpec(walk_rootfs, ["sh", "-c", "kill -TERM $$; sleep 5"], {}),
                   sandbox)
    assert code == 128 + 15


def test_a_non_root_user_writes_files_owned_by_it_on_disk(walk_rootfs: Path) -> None:
    code, out = _run(ProcessSpec(walk_rootfs, ["sh", "-c", "id; echo w > /tmp/by-www; "
                                               "echo no > /etc/denied"], {}, user="www-data"),
                     "auto")
    assert code != 0   # /etc is root's: the user really is 33 inside
    assert out.splitlines()[0] == "uid=33(www-data) gid=33(www-data) groups=33(www-data)"
    st = os.stat(walk_rootfs / "tmp/by-www")
    assert (st.st_uid, st.st_gid) == (33, 33)
    assert not (walk_rootfs / "etc/denied").exists()


def test_bwrap_refuses_a_non_root_user_as_root(walk_rootfs: Path) -> None:
    from lamina.errors import Unsupported

    with pytest.raises(Unsupported, match="non-root USER"):
        run_process(ProcessSpec(walk_rootfs, ["id"], {}, user="www-data"), sandbox="bwrap")


@pytest.mark.parametrize("sandbox", ["bwrap", "unshare"])
def test_mount_points_made_for_the_sandbox_are_removed(tmp_path: Path, sandbox: str) -> None:
    """An image without /proc, /dev or a volume's target: they are made for the run and
    gone after it, so the run's layer does not carry them."""
    need_root()
    need("bwrap")
    busybox = Path(need("busybox")).read_bytes()
    image_tar = make_tar([entry("bin/", DIR, mode=0o755),
                          entry("bin/busybox", data=busybox, mode=0o755),
                          entry("bin/sh", SYM, linkname="busybox")])
    vol = tmp_path / "vol"
    vol.mkdir()
    root = tmp_path / "store"
    with Store(root) as store:
        store_image(store, "crafted/bare", [image_tar])
        source = StoreTransport(store)
        image = resolve_image(source, source.resolve("crafted/bare"))
        for mode in ("overlay", "walk"):
            with open_rootfs(store, source, image, mode) as rootfs:  # type: ignore[arg-type]
                code, out = _run(ProcessSpec(rootfs.path, ["sh", "-c", "echo hi > /data/f"],
                                             {}, mounts=((vol, "/data", False),)), sandbox)
                assert code == 0, out
                assert sorted(os.listdir(rootfs.path)) == ["bin"]
                assert rootfs.changes(None).changes == []
    assert (vol / "f").read_text() == "hi\n"
    assert_no_leftovers(root)


def test_volume_target_of_the_wrong_kind_is_refused(walk_rootfs: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    with pytest.raises(InvalidInput, match="cannot mount a directory on /etc/passwd"):
        run_process(ProcessSpec(walk_rootfs, ["sh"], {}, mounts=((vol, "/etc/passwd", False),)))
    assert stat.S_ISREG(os.lstat(walk_rootfs / "etc/passwd").st_mode)


def test_unshare_needs_no_bwrap(walk_rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without bubblewrap, root callers still get a sandbox (unshare + init)."""
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda t, *a, **k: None if t == "bwrap"
                        else real_which(t, *a, **k))
    monkeypatch.setattr("lamina.run.sandbox._which",
                        lambda t: None if t == "bwrap" else real_which(t))
    code, out = _run(ProcessSpec(walk_rootfs, ["sh", "-c", "echo $$; hostname"], {}), "auto")
    assert code == 0 and out.split() == ["2", "lamina"]   # PID 1 is the init, as in bwrap
