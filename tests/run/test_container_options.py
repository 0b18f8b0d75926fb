"""``lamina run``'s container options as Docker users expect them (#12): --entrypoint,
--env-file, --read-only, --tmpfs, --hostname, --init (orphans reaped), and HEALTHCHECK
run by a detached container's monitor.  Real sandboxes over the busybox seed image."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_containers import _row, _state, until

from lamina_testing import Lamina, need_root


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


def test_entrypoint_replaces_the_images_and_drops_its_cmd(lam: Lamina, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(
        'FROM demo/a\nENTRYPOINT ["/bin/echo", "from-image"]\nCMD ["default-cmd"]\n')
    lam.run("build", "-t", "opts/ep", str(tmp_path))
    assert lam.run("run", "--rm", "opts/ep").out == "from-image default-cmd\n"
    assert lam.run("run", "--rm", "opts/ep", "given").out == "from-image given\n"
    # --entrypoint: the image's CMD goes too (Docker's rule), arguments follow it.
    assert lam.run("run", "--rm", "--entrypoint", "/bin/echo", "opts/ep").out == "\n"
    assert lam.run("run", "--rm", "--entrypoint", "/bin/echo", "opts/ep", "a", "b"
                   ).out == "a b\n"
    # "" clears it: the command runs as it is.
    assert lam.run("run", "--rm", "--entrypoint", "", "opts/ep", "echo", "plain").out == \
        "plain\n"
    lam.run("rmi", "opts/ep")


def test_env_file_lines_then_e(lam: Lamina, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# a comment\n\nA=1\nB=two words\nFROM_HOST\nQ=\"quoted\"\n")
    res = lam.run("run", "--rm", "--env-file", env_file, "-e", "A=override", "demo/a", "sh",
                  "-c", 'echo "$A|$B|$FROM_HOST|$Q"', env={"FROM_HOST": "host-value"})
    assert res.out == 'override|two words|host-value|"quoted"\n'
    res = lam.fail("run", "--rm", "--env-file", tmp_path / "missing", "demo/a", "true")
    assert res.code == 3 and "cannot read env file" in res.err


def test_read_only_root_with_a_tmpfs(lam: Lamina) -> None:
    res = lam.run("run", "--rm", "--read-only", "demo/a", "sh", "-c",
                  "echo x > /etc/new; echo status=$?; echo y > /dev/shm/ok && cat /dev/shm/ok",
                  check=False)
    assert "Read-only file system" in res.err
    assert res.out == "status=1\ny\n"
    res = lam.run("run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m,mode=0700",
                  "demo/a", "sh", "-c",
                  "echo ok > /scratch/f && cat /scratch/f; busybox stat -c %a /scratch; "
                  "busybox df -k /scratch | busybox tail -n 1")
    lines = res.out.splitlines()
    assert lines[:2] == ["ok", "700"]
    assert lines[2].split()[:2] == ["tmpfs", "1024"], lines[2]
    res = lam.fail("run", "--rm", "--tmpfs", "/x:size=lots", "demo/a", "true")
    assert res.code == 3 and "bad --tmpfs" in res.err


def test_hostname_given_or_the_short_id(lam: Lamina) -> None:
    assert lam.run("run", "--rm", "--hostname", "box1", "demo/a", "busybox", "hostname"
                   ).out == "box1\n"
    out = lam.run("run", "--name", "named-host", "demo/a", "sh", "-c", "hostname").out
    inspected = lam.run("inspect", "named-host").json()[0]
    assert out == inspected["Id"][:12] + "\n"
    assert inspected["Config"]["Hostname"] == out.strip()


def test_init_reaps_orphans(lam: Lamina) -> None:
    """An orphan (its parent gone) that exits must not stay a zombie: PID 1 reaps it.
    The script lists every process's state after the orphan has exited."""
    script = ("(sleep 0.1 &); sleep 0.8; "
              "for f in /proc/[0-9]*/stat; do read -r line < $f && echo \"$line\"; done")
    res = lam.run("run", "--rm", "--init", "demo/a", "sh", "-c", script)
    states = re.findall(r"^\d+ \((\S+)\) (\S)", res.out, re.M)
    assert ("sh", "S") in states or ("sh", "R") in states, res.out
    assert [s for s in states if s[1] == "Z"] == []
    assert "sleep" not in [name for name, _ in states]


def test_healthcheck_runs_for_a_detached_container(lam: Lamina, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text(
        "FROM demo/a\nHEALTHCHECK --interval=1s --timeout=5s --retries=1 "
        "CMD [ -f /tmp/ok ] && echo fine\n")
    lam.run("build", "-t", "opts/health", str(tmp_path))
    lam.run("run", "-d", "--name", "hc", "opts/health", "sh", "-c",
            "while :; do sleep 0.1; done")
    until(lambda: "(unhealthy)" in (_row(lam, "hc") or ""))
    lam.run("exec", "hc", "sh", "-c", "echo > /tmp/ok")
    until(lambda: "(healthy)" in (_row(lam, "hc") or ""))
    health = _state(lam, "hc")["Health"]
    assert isinstance(health, dict) and health["Status"] == "healthy"
    assert health["FailingStreak"] == 0
    assert health["Log"][-1]["ExitCode"] == 0 and health["Log"][-1]["Output"] == "fine\n"
    lam.run("rm", "-f", "hc")
    lam.run("rmi", "opts/health")
