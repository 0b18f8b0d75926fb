"""Seccomp filters in Docker's profile format, compiled to classic BPF by libseccomp.

A profile is the JSON Docker reads for ``--security-opt seccomp=PROFILE.json``
(moby/profiles ``seccomp/default.json`` is the default, kept here as
``seccomp_default.json``): a default action, an ``archMap`` naming the architectures a
native one brings along (x86_64 takes i386 and x32 with it, so a 32-bit binary cannot
use the other ABI's numbers to slip past the list), and rules ``{names, action, args,
includes, excludes, errnoRet}``.  A rule is kept or dropped as moby's ``setupSeccomp``
does it: ``includes.caps`` all in the container's capability set, ``excludes.caps``
none of them, ``includes/excludes.arches`` against the native architecture (in
libseccomp's names: amd64, arm64, …), ``minKernel`` against the running kernel.  That
is how ``--cap-add SYS_ADMIN`` also unlocks ``mount`` and unrestricted ``clone``.

The kept rules are added to a libseccomp filter the way runc adds them (runc
libcontainer/seccomp/seccomp_linux.go): unknown syscall names are skipped (a profile
names syscalls of every architecture and kernel); a rule whose conditions test
different arguments is one rule (all must hold); conditions on the same argument are
separate rules (any may hold); a rule whose action is the default is left out (libseccomp
refuses it).  libseccomp then writes the BPF program — the array of ``sock_filter``
that ``bwrap --seccomp FD`` and ``prctl(PR_SET_SECCOMP)`` take.

libseccomp (libseccomp2, on every Debian system: systemd links it) is used through
ctypes: it holds the syscall tables of every architecture and ABI, which a hand-written
compiler would have to carry and keep current.  Compiling Docker's profile takes about
5 ms (docs/design-notes.md); the program is cached per capability set in the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import platform
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from lamina.errors import InvalidInput, Unsupported

# libseccomp's action values (seccomp.h).
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

# enum scmp_compare (seccomp.h).
_OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
        "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

_EPERM, _ENOSYS = 1, 38

# SCMP_FLTATR_CTL_OPTIMIZE = 2 (libseccomp >= 2.5): the program finds a syscall by a
# binary search over the numbers, not by testing the allow-list one by one.  Measured
# (bench/bench_sandbox.py): ~700 ns of filter per syscall become ~100 ns; an older
# libseccomp refuses the attribute and writes the list.
_FLTATR_CTL_OPTIMIZE = 8

# Python's platform.machine() -> the name moby compares ``arches`` with (libseccomp's
# native names, moby profiles seccomp_linux.go ``goToNative``).
_NATIVE = {"x86_64": "amd64", "i686": "x86", "i386": "x86", "aarch64": "arm64",
           "arm64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64", "loongarch64": "loong64", "mips64": "mips64"}
# ... and the profile's SCMP_ARCH_* for the archMap lookup.
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86",
              "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
              "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
              "riscv64": "SCMP_ARCH_RISCV64", "loong64": "SCMP_ARCH_LOONGARCH64",
              "mips64": "SCMP_ARCH_MIPS64"}


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp { unsigned int arg; enum scmp_compare op;
    #                       scmp_datum_t datum_a; scmp_datum_t datum_b; }
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.cache
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise Unsupported("seccomp filters need libseccomp (apt-get install libseccomp2); "
                          "or run with --security-opt seccomp=unconfined") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    return lib


def native_arch() -> str:
    """The running architecture in moby's naming (amd64, arm64, …)."""
    machine = platform.machine()
    return _NATIVE.get(machine, machine)


def default_profile() -> dict[str, Any]:
    """Docker's default profile (moby/profiles seccomp/default.json)."""
    text = resources.files("lamina.run").joinpath("seccomp_default.json").read_text("utf-8")
    return parse_profile(text, "the default seccomp profile")


def parse_profile(text: str, where: str) -> dict[str, Any]:
    """A profile in Docker's format, checked enough to compile without surprises."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{where}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{where}: a seccomp profile is a JSON object")
    if "architectures" in doc and "archMap" in doc:
        raise InvalidInput(f"{where}: both 'architectures' and 'archMap' are specified")
    syscalls = doc.get("syscalls") or []
    if not isinstance(syscalls, list) or not all(isinstance(s, dict) for s in syscalls):
        raise InvalidInput(f"{where}: 'syscalls' must be a list of objects")
    for call in syscalls:
        if "name" in call and "names" in call:
            raise InvalidInput(f"{where}: a rule has both 'name' and 'names'")
        names = [call["name"]] if "name" in call else call.get("names") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InvalidInput(f"{where}: a rule's 'names' must be a list of strings")
        for arg in call.get("args") or []:
            if not isinstance(arg, dict) or arg.get("op") not in _OPS:
                raise InvalidInput(f"{where}: bad argument condition {arg!r} for {names}")
        _action(call.get("action", ""), call.get("errnoRet"), where)
    _action(doc.get("defaultAction", ""), doc.get("defaultErrnoRet"), where)
    return doc


def profile_from_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InvalidInput(f"cannot read seccomp profile {path}: {e.strerror or e}") from None
    return parse_profile(text, f"seccomp profile {path}")


def _action(name: str, errno_ret: object, where: str) -> int:
    if errno_ret is not None and not isinstance(errno_ret, int):
        raise InvalidInput(f"{where}: errnoRet must be a number")
    if name == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | ((_EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    if name == "SCMP_ACT_TRACE":
        return _ACT_TRACE | ((_EPERM if errno_ret is None else errno_ret) & 0xFFFF)
    fixed = {"SCMP_ACT_ALLOW": _ACT_ALLOW, "SCMP_ACT_KILL": _ACT_KILL_THREAD,
             "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD, "SCMP_ACT_KILL_PROCESS":
             _ACT_KILL_PROCESS, "SCMP_ACT_TRAP": _ACT_TRAP, "SCMP_ACT_LOG": _ACT_LOG}
    if name not in fixed:
        # SCMP_ACT_NOTIFY needs a listener (a seccomp agent), which lamina has not.
        raise InvalidInput(f"{where}: unsupported seccomp action {name!r}")
    return fixed[name]


def _kernel_at_least(version: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        out = []
        for p in v.split("-")[0].split(".")[:2]:
            digits = "".join(c for c in p if c.isdigit())
            out.append(int(digits or 0))
        return tuple(out)

    return parts(os.uname().release) >= parts(version)


def _kept(call: Mapping[str, Any], caps: frozenset[str], arch: str) -> bool:
    """moby's setupSeccomp: does the rule apply to this container?"""
    exc = call.get("excludes") or {}
    if arch in (exc.get("arches") or []):
        return False
    if any(c in caps for c in exc.get("caps") or []):
        return False
    if exc.get("minKernel") and _kernel_at_least(exc["minKernel"]):
        return False
    inc = call.get("includes") or {}
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if any(c not in caps for c in inc.get("caps") or []):
        return False
    return not (inc.get("minKernel") and not _kernel_at_least(inc["minKernel"]))


def _conditions(args: Iterable[Mapping[str, Any]]) -> list[list[_ArgCmp]]:
    """runc's grouping: one rule when every condition tests another argument, else one
    rule per condition."""
    conds = [_ArgCmp(int(a.get("index", 0)), _OPS[a["op"]], int(a.get("value", 0)),
                     int(a.get("valueTwo", 0))) for a in args]
    indices = [c.arg for c in conds]
    if len(set(indices)) == len(indices):
        return [conds]
    return [[c] for c in conds]


def compile_profile(profile: Mapping[str, Any], caps: Iterable[str],
                    optimize: bool = True) -> bytes:
    """The BPF program (``struct sock_filter`` array) for ``profile`` in a container
    holding ``caps`` (names like CAP_SYS_ADMIN); ``optimize=False`` writes libseccomp's
    default linear program (for comparison)."""
    lib = _lib()
    capset = frozenset(caps)
    arch = native_arch()
    default = _action(profile.get("defaultAction", ""), profile.get("defaultErrnoRet"),
                      "seccomp profile")
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise Unsupported("libseccomp could not start a filter (seccomp_init)")
    try:
        if optimize:
            # A binary tree of syscall numbers instead of a list: see _FLTATR_CTL_OPTIMIZE.
            lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)
        subarches: list[str] = list(profile.get("architectures") or [])
        for entry in profile.get("archMap") or []:
            if entry.get("architecture") == _SCMP_ARCH.get(arch):
                subarches = list(entry.get("subArchitectures") or [])
        native = lib.seccomp_arch_native()
        for name in subarches:
            token = lib.seccomp_arch_resolve_name(
                name.removeprefix("SCMP_ARCH_").lower().encode())
            # -EEXIST: the native one, already in the filter.
            if token and token != native and lib.seccomp_arch_add(ctx, token) not in (0, -17):
                raise InvalidInput(f"seccomp profile: cannot add architecture {name}")
        for call in profile.get("syscalls") or []:
            if not _kept(call, capset, arch):
                continue
            action = _action(call.get("action", ""), call.get("errnoRet"), "seccomp profile")
            if action == default:
                continue
            names = [call["name"]] if "name" in call else call.get("names") or []
            groups = _conditions(call.get("args") or [])
            for name in names:
                nr = lib.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:   # __NR_SCMP_ERROR: not a syscall libseccomp knows
                    continue
                for conds in groups:
                    array = (_ArgCmp * len(conds))(*conds)
                    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(conds), array)
                    if rc not in (0, -17):   # -EEXIST: a rule that is already there
                        raise InvalidInput(f"seccomp profile: cannot add the rule for "
                                           f"{name}: {os.strerror(-rc)}")
        # A memfd, not a pipe: a large profile's program could fill a pipe's buffer.
        fd = os.memfd_create("lamina-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                raise Unsupported(f"libseccomp could not write the filter: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_CUR)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=8)
def default_filter(caps: frozenset[str]) -> bytes:
    """Docker's default profile compiled for ``caps``."""
    return compile_profile(default_profile(), caps)
