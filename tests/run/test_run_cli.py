"""``lamina run`` end to end: the real CLI, real sandboxes, real mounts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers, layer_members

from lamina_testing import Lamina, need, need_root, seed_sources


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def test_run_prints_page_a(seeded: Lamina) -> None:
    res = seeded.run("run", "demo/a", "/bin/cat", "/var/www/html/index.html")
    assert res.out == (Path(__file__).parents[2] / "examples/seed/index-a.html").read_text()
    assert_no_leftovers(seeded.root)


@pytest.mark.parametrize("snapshotter", ["overlay", "walk"])
def test_exit_status_is_the_process_status(seeded: Lamina, snapshotter: str) -> None:
    assert seeded.run("run", "--snapshotter", snapshotter, "demo/a", "sh", "-c", "exit 3",
                      check=False).code == 3
    killed = seeded.run("run", "--snapshotter", snapshotter, "demo/a", "sh", "-c", "kill -9 $$",
                        check=False)
    assert killed.code == 128 + 9
    assert_no_leftovers(seeded.root)


def test_missing_command_is_127_with_dockers_message(seeded: Lamina) -> None:
    res = seeded.run("run", "demo/a", "no-such-tool", "x", check=False)
    assert res.code == 127
    assert 'exec: "no-such-tool": executable file not found in $PATH' in res.err
    res = seeded.run("run", "demo/a", "/etc/passwd", check=False)
    assert res.code == 126 and "permission denied" in res.err
    res = seeded.run("run", "demo/a", check=False)   # the seed image has no CMD
    assert res.code == 3 and "no command specified" in res.err
    assert "Traceback" not in res.err
    assert_no_leftovers(seeded.root)


def test_env_workdir_and_user(seeded: Lamina) -> None:
    res = seeded.run("run", "-e", "GREETING=hi there", "-e", "FROM_HOST", "-w", "/var/www",
                     "demo/a", "sh", "-c", 'echo "$GREETING|$FROM_HOST|$PATH|$HOME"; pwd',
                     env={"FROM_HOST": "host value"})
    assert res.out.splitlines() == [
        "hi there|host value|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root",
        "/var/www"]
    # -w to a directory the image lacks: made, as Docker makes it.
    assert seeded.run("run", "-w", "/srv/app", "demo/a", "sh", "-c", "pwd").out == "/srv/app\n"
    assert seeded.run("run", "-u", "www-data", "demo/a", "id", "-u").out == "33\n"
    assert seeded.run("run", "-u", "www-data", "demo/a", "sh", "-c", "echo $HOME").out \
        == "/var/www\n"
    assert seeded.run("run", "-u", "33:0", "demo/a", "id").out.strip() \
        == "uid=33(www-data) gid=0(root) groups=0(root)"
    res = seeded.run("run", "-u", "nobody-here", "demo/a", "id", check=False)
    assert res.code == 3 and "unable to find user nobody-here" in res.err
    assert_no_leftovers(seeded.root)


def test_user_writes_land_as_that_user_in_the_committed_layer(seeded: Lamina) -> None:
    seeded.run("run", "-u", "www-data", "--commit", "cli/www:1", "demo/a", "sh", "-c",
               "echo made by www > /tmp/www-file")
    layer = _last_layer(seeded, "cli/www:1")
    owners = {name: (uid, gid) for name, _, _, uid, gid, _ in layer_members(layer)}
    assert owners["tmp/www-file"] == (33, 33)
    assert_no_leftovers(seeded.root)


def test_network_none_has_only_lo_and_host_has_the_hosts(seeded: Lamina) -> None:
    res = seeded.run("run", "demo/a", "cat", "/proc/net/dev")
    names = [ln.split(":")[0].strip() for ln in res.out.splitlines()[2:]]
    assert names == ["lo"]
    host = [ln.split(":")[0].strip() for ln in Path("/proc/net/dev").read_text().splitlines()[2:]]
    res = seeded.run("run", "--network", "host", "demo/a", "cat", "/proc/net/dev")
    assert sorted(ln.split(":")[0].strip() for ln in res.out.splitlines()[2:]) == sorted(host)


def test_volumes_read_write_and_read_only(seeded: Lamina, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in").write_text("from the host\n")
    res = seeded.run("run", "-v", f"{vol}:/data", "demo/a", "sh", "-c",
                     "cat /data/in; echo from the container > /data/out")
    assert res.out == "from the host\n"
    assert (vol / "out").read_text() == "from the container\n"
    res = seeded.run("run", "-v", f"{vol}:/mnt/ro:ro", "demo/a", "sh", "-c",
                     "cat /mnt/ro/in; echo x > /mnt/ro/nope", check=False)
    assert res.code != 0 and res.out == "from the host\n"
    assert not (vol / "nope").exists()
    # A program that lives in a volume runs (by path, and found through PATH), as in
    # Docker; one that is nowhere is still exit 127.
    tool = vol / "bin" / "hello"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho hello from the volume\n")
    tool.chmod(0o755)
    res = seeded.run("run", "--rm", "-v", f"{vol}:/opt/v:ro", "demo/a", "/opt/v/bin/hello")
    assert res.out == "hello from the volume\n"
    res = seeded.run("run", "--rm", "-v", f"{vol}/bin:/usr/local/bin", "demo/a", "hello")
    assert res.out == "hello from the volume\n"
    res = seeded.run("run", "--rm", "-v", f"{vol}:/opt/v", "demo/a", "/opt/v/bin/nope",
                     check=False)
    assert res.code == 127
    # The mount points made for them are not in a committed layer.
    seeded.run("run", "-v", f"{vol}:/data", "--commit", "cli/vol:1", "demo/a", "sh", "-c", ":")
    assert [m[0] for m in layer_members(_last_layer(seeded, "cli/vol:1"))] == []
    assert_no_leftovers(seeded.root)


def test_walk_commit_keeps_a_same_size_same_second_rewrite(seeded: Lamina) -> None:
    # The walk snapshotter diffs a tree unpacked from layers (whole-second mtimes): a
    # rewrite that keeps size and mtime is found by content (#10.1).
    script = ("/bin/busybox cp -p /etc/hostname /tmp/ref; echo LAMINA-SEED > /etc/hostname; "
              "/bin/busybox touch -r /tmp/ref /etc/hostname; rm /tmp/ref")
    seeded.run("run", "--snapshotter", "walk", "--commit", "cli/same-size:1", "demo/a",
               "sh", "-c", script)
    members = {m[0]: m for m in layer_members(_last_layer(seeded, "cli/same-size:1"))}
    assert sorted(members) == ["etc", "etc/hostname"]
    assert members["etc/hostname"][5] == b"LAMINA-SEED\n"
    assert_no_leftovers(seeded.root)


def test_commit_adds_exactly_one_layer_with_the_change(seeded: Lamina, tmp_path: Path) -> None:
    script = ("echo B > /var/www/html/index.html; rm /etc/hostname; mkdir -p /srv/new; "
              "echo n > /srv/new/file")
    res = seeded.run("run", "--commit", "cli/commit:1", "demo/a", "sh", "-c", script)
    assert res.out == ""
    assert "Committed cli/commit:1" in res.err
    doc = seeded.run("inspect", "cli/commit:1").json()[0]
    base = seeded.run("inspect", "demo/a").json()[0]
    layers = [d["digest"] for d in doc["Manifest"]["layers"]]
    assert len(layers) == 5
    assert layers[:4] == [d["digest"] for d in base["Manifest"]["layers"]]
    members = {m[0]: m for m in layer_members(_last_layer(seeded, "cli/commit:1"))}
    # (tarfile drops the '/' that ends directory names)
    assert sorted(members) == ["etc", "etc/.wh.hostname", "srv", "srv/new", "srv/new/file",
                               "var", "var/www", "var/www/html", "var/www/html/index.html"]
    assert members["var/www/html/index.html"][5] == b"B\n"
    hist = seeded.run("history", "--no-trunc", "--json", "cli/commit:1").json()
    assert hist[0]["created_by"].startswith("lamina run --commit cli/commit:1 demo/a")
    # It unpacks to the changed tree, and runs.
    out = tmp_path / "unpacked"
    seeded.run("unpack", "cli/commit:1", out)
    assert (out / "var/www/html/index.html").read_text() == "B\n"
    assert not (out / "etc/hostname").exists() and (out / "etc/passwd").exists()
    assert seeded.run("run", "cli/commit:1", "cat", "/srv/new/file").out == "n\n"
    seeded.assert_consistent()
    if shutil.which("umoci") or os.environ.get("CI") == "true":
        umoci = need("umoci")
        seeded.run("save", "cli/commit:1", "-o", tmp_path / "layout", "--format", "oci")
        subprocess.run([umoci, "unpack", "--image", f"{tmp_path / 'layout'}:1",
                        tmp_path / "bundle"], check=True, capture_output=True)
        rootfs = tmp_path / "bundle" / "rootfs"
        assert (rootfs / "var/www/html/index.html").read_text() == "B\n"
        assert not (rootfs / "etc/hostname").exists()
    assert_no_leftovers(seeded.root)


def test_a_failing_command_commits_nothing(seeded: Lamina) -> None:
    res = seeded.run("run", "--commit", "cli/failed:1", "demo/a", "sh", "-c",
                     "echo x > /x; exit 4", check=False)
    assert res.code == 4 and "Not committed" in res.err
    assert seeded.run("inspect", "cli/failed:1", check=False).code == 2
    assert_no_leftovers(seeded.root)


def test_snapshotter_overlay_is_refused_clearly_when_unusable(seeded: Lamina) -> None:
    res = seeded.run("run", "--snapshotter", "bogus", "demo/a", "sh", "-c", ":", check=False)
    assert res.code == 3 and "unknown snapshotter" in res.err
    res = seeded.run("run", "--network", "bridge", "demo/a", "sh", "-c", ":", check=False)
    assert res.code == 3 and "unknown network" in res.err


def _last_layer(lam: Lamina, ref: str) -> Path:
    doc = lam.run("inspect", ref).json()[0]
    digest = doc["Manifest"]["layers"][-1]["digest"]
    return lam.root / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_nothing_is_left_mounted_after_an_interrupted_run(seeded: Lamina) -> None:
    """SIGKILL lamina mid-run: the sandbox dies with it, and the next run sweeps the
    rootfs it left (mount, directory, lease)."""
    proc = subprocess.Popen([*_lamina_cmd(), "run", "demo/a", "sleep", "37"],
                            env=seeded.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = seeded.root / "tmp"
    for _ in range(200):
        if _sleepers() > 0:   # its rootfs is mounted (a container's: containers/<id>)
            break
        subprocess.run(["sleep", "0.05"])
    proc.kill()
    proc.wait()
    for _ in range(100):  # --die-with-parent: the sandbox follows lamina
        if _sleepers() == 0:
            break
        subprocess.run(["sleep", "0.05"])
    assert _sleepers() == 0
    os.utime(tmp)  # irrelevant to the sweep: it goes by the lock, not by age
    seeded.run("run", "demo/a", "sh", "-c", ":")
    assert_no_leftovers(seeded.root)


def test_gc_dry_run_agrees_after_a_killed_run(fresh: Lamina, seed: Path) -> None:
    """#10.8: a run's snapshot lease is owned by its process: once it is killed, gc's
    dry run and real run both see it ended (the dry run used to keep its snapshots for
    the lease's 30 days while the real run swept them).  #12: the same for a ``--rm``
    container whose lamina was killed: both runs see it gone (as ps would)."""
    fresh.run("import", "demo/a", *seed_sources(seed, "a"))
    proc = subprocess.Popen([*_lamina_cmd(), "run", "--rm", "demo/a", "sleep", "39"],
                            env=fresh.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if _sleepers(39) > 0:
                break
            subprocess.run(["sleep", "0.05"])
        fresh.run("rmi", "demo/a")   # now only the run's lease holds its snapshots
        proc.kill()
        proc.wait()
        for _ in range(100):
            if _sleepers(39) == 0:
                break
            subprocess.run(["sleep", "0.05"])
        dry = fresh.run("gc", "--dry-run", "--json").json()
        real = fresh.run("gc", "--json").json()
        assert dry["snapshots_removed"] == real["snapshots_removed"]
        assert dry["blobs_removed"] == real["blobs_removed"]
        if os.geteuid() == 0:   # overlay: one snapshot per layer
            assert len(real["snapshots_removed"]) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_no_leftovers(fresh.root)
    assert not any((fresh.root / "leases").iterdir())


def test_sigterm_stops_the_container_and_cleans_up(seeded: Lamina) -> None:
    proc = subprocess.Popen([*_lamina_cmd(), "run", "demo/a", "sleep", "38"],
                            env=seeded.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(200):
        if _sleepers(38) > 0:
            break
        subprocess.run(["sleep", "0.05"])
    proc.terminate()   # forwarded: sleep (PID 2, not the namespace's init) dies of it
    assert proc.wait(timeout=15) == 128 + signal.SIGTERM
    assert _sleepers(38) == 0
    assert_no_leftovers(seeded.root)   # without a later run sweeping


def _lamina_cmd() -> list[str]:
    from lamina_testing import LAMINA

    return [LAMINA]


def _sleepers(seconds: int = 37) -> int:
    out = subprocess.run(["pgrep", "-f", f"^sleep {seconds}$"], capture_output=True, text=True)
    return len(out.stdout.split())
