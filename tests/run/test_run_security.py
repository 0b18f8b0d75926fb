"""The sandbox as strict as Docker's defaults (issue 12): the default seccomp profile,
masked and read-only /proc paths, capabilities, and the options that loosen them."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from run_helpers import assert_no_leftovers

from lamina.errors import InvalidInput
from lamina.run.sandbox import ProcessSpec, run_process
from lamina.run.seccomp import compile_profile, default_profile
from lamina.run.security import (
    ALL_CAPS,
    DEFAULT_CAPS,
    resolve_caps,
    security_from_options,
)
from lamina_testing import Lamina, need, need_root

# What the container tries; each line says whether it could.
PROBE = r"""
busybox unshare -U true 2>/dev/null && echo unshare:ok || echo unshare:denied
busybox mount -t tmpfs t /tmp 2>/dev/null && echo mount:ok || echo mount:denied
echo keys-masked:$(busybox grep -c ' /proc/keys ' /proc/self/mountinfo)
echo keys-bytes:$(cat /proc/keys | busybox wc -c)
(echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sysctl:written || echo sysctl:read-only
/probe/sec_probe add_key
/probe/sec_probe keyctl
busybox grep '^Seccomp:' /proc/self/status | busybox tr -d ' \t'
busybox tr '\0\n' '  ' < /proc/1/cmdline; echo
"""

DENIED = ["unshare:denied", "mount:denied", "keys-masked:1", "keys-bytes:0",
          "sysctl:read-only", "add_key: Operation not permitted",
          "keyctl: Operation not permitted", "Seccomp:2"]


def _probe(root: Path, probe_dir: Path, sandbox: str, user: str = "0:0",
           **options: object) -> list[str]:
    spec = ProcessSpec(root, ["sh", "-c", PROBE], {}, user=user,
                       mounts=((probe_dir, "/probe", True),),
                       security=security_from_options(**options))  # type: ignore[arg-type]
    with tempfile.TemporaryFile() as out:
        run_process(spec, stdout=out.fileno(), stderr=subprocess.DEVNULL,
                    sandbox=sandbox)  # type: ignore[arg-type]
        out.seek(0)
        return out.read().decode().splitlines()


@pytest.mark.parametrize("sandbox", ["bwrap", "unshare"])
def test_the_default_sandbox_refuses_what_docker_refuses(walk_rootfs: Path, probe_dir: Path,
                                                         sandbox: str) -> None:
    need("bwrap")
    lines = _probe(walk_rootfs, probe_dir, sandbox)
    assert lines[:-1] == DENIED
    # PID 1 shows no host path: not the rootfs, not where bwrap or python live.
    assert str(walk_rootfs) not in lines[-1] and "/usr/" not in lines[-1], lines[-1]
    assert lines[-1].startswith("bwrap --args" if sandbox == "bwrap" else "lamina-init ")


@pytest.mark.parametrize("sandbox", ["bwrap", "unshare"])
def test_privileged_lifts_every_restriction(walk_rootfs: Path, probe_dir: Path,
                                            sandbox: str) -> None:
    need("bwrap")
    lines = _probe(walk_rootfs, probe_dir, sandbox, privileged=True)
    assert lines[:3] == ["unshare:ok", "mount:ok", "keys-masked:0"]
    assert lines[4:8] == ["sysctl:written", "add_key: ok", "keyctl: ok", "Seccomp:0"]


def test_capability_rules_of_the_profile_follow_the_capabilities(walk_rootfs: Path,
                                                                 probe_dir: Path) -> None:
    """--cap-add SYS_ADMIN also opens the syscalls Docker's profile ties to it (mount,
    unshare, clone with namespace flags), as in Docker; keyctl stays refused."""
    lines = _probe(walk_rootfs, probe_dir, "bwrap", cap_add=["SYS_ADMIN"])
    assert lines[:2] == ["unshare:ok", "mount:ok"]
    assert "keyctl: Operation not permitted" in lines
    # seccomp=unconfined: no filter, but the capabilities and masks stay.
    lines = _probe(walk_rootfs, probe_dir, "bwrap", security_opts=["seccomp=unconfined"])
    assert lines[0] == "unshare:ok" and lines[1] == "mount:denied"
    assert lines[2:5] == ["keys-masked:1", "keys-bytes:0", "sysctl:read-only"]
    assert "Seccomp:0" in lines


def test_the_i386_abi_is_filtered_too(walk_rootfs: Path, probe_dir: Path) -> None:
    """unshare(CLONE_NEWUSER) through int 0x80 (the i386 table, where unshare is 310, not
    272) is refused like the 64-bit call: the filter covers the ABIs Docker's archMap
    names (a filter for x86_64 alone would kill the probe instead)."""
    spec_for = {
        "default": security_from_options(),
        "unconfined": security_from_options(security_opts=["seccomp=unconfined"])}
    got = {}
    for name, sec in spec_for.items():
        spec = ProcessSpec(walk_rootfs, ["sh", "-c", "/probe/sec_probe unshare32; echo rc=$?"],
                           {}, mounts=((probe_dir, "/probe", True),), security=sec)
        with tempfile.TemporaryFile() as out:
            run_process(spec, stdout=out.fileno(), stderr=subprocess.DEVNULL)
            out.seek(0)
            got[name] = out.read().decode().splitlines()
    if got["unconfined"][0] == "unshare32: no ia32":
        assert os.uname().machine != "x86_64" or got["default"][0] == "unshare32: no ia32"
        return
    assert got["unconfined"] == ["unshare32: ok", "rc=0"]
    assert got["default"] == ["unshare32: Operation not permitted", "rc=1"]


def test_a_profile_file_in_dockers_format(walk_rootfs: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 13}]}))
    spec = ProcessSpec(walk_rootfs, ["sh", "-c", "mkdir /tmp/d; echo $?; echo ok > /tmp/f; "
                                     "cat /tmp/f"], {},
                       security=security_from_options(security_opts=[f"seccomp={profile}"]))
    with tempfile.TemporaryFile() as out:
        assert run_process(spec, stdout=out.fileno(), stderr=out.fileno()) == 0
        out.seek(0)
        text = out.read().decode()
    assert "Permission denied" in text and text.splitlines()[-2:] == ["1", "ok"]
    assert not (walk_rootfs / "tmp/d").exists()
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], '
                       '"action": "SCMP_ACT_NOTIFY"}]}')
    with pytest.raises(InvalidInput, match="unsupported seccomp action 'SCMP_ACT_NOTIFY'"):
        security_from_options(security_opts=[f"seccomp={profile}"])
    with pytest.raises(InvalidInput, match="cannot read seccomp profile"):
        security_from_options(security_opts=[f"seccomp={tmp_path}/missing.json"])


def test_ordinary_programs_still_work(walk_rootfs: Path) -> None:
    """What a package manager does to a root filesystem passes the filter: directories,
    owners, modes, renames, hard and symbolic links; a device node can be made (CAP_MKNOD,
    as in Docker) but not opened (nodev: Docker's device cgroup refuses it too)."""
    script = """set -e
    mkdir -p /opt/pkg/bin /opt/pkg/lib
    echo '#!/bin/sh
    echo from-script "$@"' > /opt/pkg/bin/tool
    busybox chmod 0755 /opt/pkg/bin/tool
    busybox chown 33:33 /opt/pkg/lib
    echo data > /opt/pkg/lib/f.tmp
    mv /opt/pkg/lib/f.tmp /opt/pkg/lib/f
    ln /opt/pkg/lib/f /opt/pkg/lib/hard
    ln -s ../lib/f /opt/pkg/bin/link
    /opt/pkg/bin/tool a b
    busybox stat -c '%u:%g %a %h' /opt/pkg/lib /opt/pkg/bin/tool /opt/pkg/lib/f
    cat /opt/pkg/bin/link
    busybox mknod /tmp/zero c 1 5 && echo mknod:ok
    busybox head -c 1 /tmp/zero >/dev/null 2>&1 && echo open:ok || echo open:denied
    busybox sh -c 'busybox ps -o pid,comm | busybox wc -l'
    busybox find /opt/pkg | busybox sort
    """
    for sandbox in ("bwrap", "unshare"):
        spec = ProcessSpec(walk_rootfs, ["sh", "-c", script], {})
        with tempfile.TemporaryFile() as out:
            code = run_process(spec, stdout=out.fileno(), stderr=out.fileno(),
                               sandbox=sandbox)  # type: ignore[arg-type]
            out.seek(0)
            lines = out.read().decode().splitlines()
        assert code == 0, lines
        assert lines[:5] == ["from-script a b", "33:33 755 2", "0:0 755 1", "0:0 644 2", "data"]
        assert lines[5:7] == ["mknod:ok", "open:denied"]
        assert lines[-7:] == ["/opt/pkg", "/opt/pkg/bin", "/opt/pkg/bin/link",
                              "/opt/pkg/bin/tool", "/opt/pkg/lib", "/opt/pkg/lib/f",
                              "/opt/pkg/lib/hard"]
        os.unlink(walk_rootfs / "tmp/zero")
        subprocess.run(["rm", "-rf", str(walk_rootfs / "opt/pkg")], check=True)


def test_capability_options_resolve_as_docker() -> None:
    assert resolve_caps([], []) == DEFAULT_CAPS
    assert resolve_caps(["sys_admin", "CAP_NET_ADMIN"], ["chown"]) == (
        DEFAULT_CAPS - {"CAP_CHOWN"}) | {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"}
    assert resolve_caps(["CHOWN"], ["ALL"]) == {"CAP_CHOWN"}
    assert resolve_caps(["ALL"], ["CHOWN"]) == set(ALL_CAPS)
    with pytest.raises(InvalidInput, match="unknown capability 'CAP_BOGUS'"):
        resolve_caps(["CAP_BOGUS"], [])
    sec = security_from_options(privileged=True, cap_drop=["ALL"])
    assert sec.caps == set(ALL_CAPS) and sec.seccomp_filter() is None and not sec.masked
    assert security_from_options(security_opts=["no-new-privileges"]).no_new_privileges
    assert not security_from_options(
        security_opts=["no-new-privileges=false"]).no_new_privileges
    with pytest.raises(InvalidInput, match="unknown --security-opt 'bogus'"):
        security_from_options(security_opts=["bogus"])


def test_the_default_filter_covers_every_abi() -> None:
    """Docker's profile on x86_64 takes the i386 and x32 ABIs along: the program checks
    the architecture first and has rules for each (a 32-bit binary cannot dodge the list
    with the other table's numbers)."""
    prog = compile_profile(default_profile(), DEFAULT_CAPS)
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096   # sock_filter, BPF_MAXINSNS
    words = [int.from_bytes(prog[i + 4:i + 8], "little") for i in range(0, len(prog), 8)]
    if os.uname().machine == "x86_64":
        for audit_arch in (0xC000003E, 0x40000003):   # AUDIT_ARCH_X86_64, AUDIT_ARCH_I386
            assert audit_arch in words
        assert 0x40000000 in words   # __X32_SYSCALL_BIT: x32 calls are told apart
    # More capabilities, more rules: SYS_ADMIN's syscalls join the allow-list.
    assert len(compile_profile(default_profile(), DEFAULT_CAPS | {"CAP_SYS_ADMIN"})) > len(prog)


# -- the CLI -----------------------------------------------------------------------------
def test_cli_options(seeded: Lamina, probe_dir: Path) -> None:
    need_root()
    base = ["-v", f"{probe_dir}:/probe:ro"]
    res = seeded.run("run", *base, "demo/a", "sh", "-c", PROBE)
    assert res.out.splitlines()[:-1] == DENIED
    assert str(seeded.root) not in res.out
    res = seeded.run("run", "--privileged", *base, "demo/a", "sh", "-c", PROBE)
    assert res.out.splitlines()[:2] == ["unshare:ok", "mount:ok"]
    # --cap-drop ALL: root cannot give files away any more.
    res = seeded.run("run", "--cap-drop", "ALL", "demo/a", "sh", "-c",
                     "busybox chown 33 /tmp && echo chown:ok || echo chown:denied")
    assert res.out.splitlines()[-1] == "chown:denied"
    res = seeded.run("run", "--cap-drop", "all", "--cap-add", "chown", "demo/a", "sh", "-c",
                     "busybox chown 33 /tmp && echo chown:ok; busybox grep CapEff "
                     "/proc/self/status")
    assert res.out.splitlines() == ["chown:ok", "CapEff:\t0000000000000001"]
    # Not root: no_new_privs only when asked (bwrap always sets it for root's runs).
    for opts, want in (([], "0"), (["--security-opt", "no-new-privileges"], "1")):
        res = seeded.run("run", "-u", "www-data", *opts, "demo/a", "sh", "-c",
                         "busybox grep NoNewPrivs /proc/self/status")
        assert res.out.split() == ["NoNewPrivs:", want]
    for bad, message in ((["--cap-add", "CAP_NOPE"], "unknown capability 'CAP_NOPE'"),
                         (["--security-opt", "seccomp=/nonexistent.json"],
                          "cannot read seccomp profile /nonexistent.json"),
                         (["--security-opt", "apparmor=docker-default"],
                          "unsupported --security-opt")):
        res = seeded.fail("run", *bad, "demo/a", "true")
        assert res.code == 3 and message in res.err and len(res.err.splitlines()) == 1
    assert_no_leftovers(seeded.root)


def test_run_steps_of_a_build_get_the_same_sandbox(seeded: Lamina, tmp_path: Path) -> None:
    need_root()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(
        "FROM demo/a\nRUN busybox grep '^Seccomp:' /proc/self/status > /seccomp\n"
        "RUN busybox unshare -U true\n")
    res = seeded.fail("build", "-t", "sec/unshare", str(ctx))
    assert "unshare" in res.err and "Operation not permitted" in res.err, res.err
    (ctx / "Containerfile").write_text(
        "FROM demo/a\nRUN busybox grep '^Seccomp:' /proc/self/status > /seccomp\n")
    seeded.run("build", "-t", "sec/seccomp", str(ctx))
    res = seeded.run("run", "--privileged", "sec/seccomp", "cat", "/seccomp")
    assert res.out.split() == ["Seccomp:", "2"]
    assert_no_leftovers(seeded.root)
