"""What the sandbox's hardening costs: container start-up with and without Docker's
seccomp filter and with ``-p``, against bubblewrap alone and ``podman run``.

    sudo .venv/bin/python bench/bench_sandbox.py [--runs N | --quick]

One busybox image (examples/seed's "os" snapshot) is imported into a fresh store, saved
as a docker archive and loaded into a podman store of its own (vfs; when podman is
installed).  Then, alternating the cases round after round (bench/README.md), the
wall time of one whole ``true`` container is taken:

    lamina                  lamina run IMAGE true  (seccomp default profile, masks)
    lamina unconfined       lamina run --security-opt seccomp=unconfined IMAGE true
    lamina -p               lamina run -p 127.0.0.1::80 IMAGE true  (forwarder started)
    bwrap                   bwrap over the unpacked tree, the same namespaces, no filter
    bwrap + seccomp         the same with lamina's compiled filter (--seccomp FD)
    podman                  podman run --rm --network none IMAGE true  (runc when installed)
    podman -p               podman run --rm -p 127.0.0.1::80 IMAGE true

and the per-syscall cost of the filter: ``dd bs=1 count=N`` (2 syscalls per byte) under
bwrap with no filter, libseccomp's linear program and its binary tree (what lamina
loads), and — without timing noise — how many BPF instructions each program runs per
syscall (emulated).  The compile time of both (libseccomp, in-process) is printed too.  Medians;
ratios are ``peer / lamina`` (> 1: lamina faster).  Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lamina.run.seccomp import compile_profile, default_profile
from lamina.run.security import DEFAULT_CAPS

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/var/tmp/lamina-bench/sandbox")
DD_BYTES = 500_000
# Podman raises RLIMIT_NOFILE/NPROC for root by default, which a root without
# CAP_SYS_RESOURCE (this machine's) may not: ask for low limits instead.
POD_RUN = ["--rm", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def run(cmd: list[str], **kw: object) -> str:
    proc = subprocess.run(cmd, text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return str(proc.stdout)


def bpf_steps(prog: bytes, nr: int, arch: int = 0xC000003E) -> tuple[int, int]:
    """(instructions executed, verdict) of a classic BPF seccomp program for syscall
    ``nr`` with zero arguments: what the kernel walks for it, without timing noise."""
    ins = [struct.unpack("<HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    data = struct.pack("<iIQ6Q", nr, arch, 0, *([0] * 6))   # struct seccomp_data
    a = x = 0
    mem = [0] * 16
    pc = n = 0
    while True:
        code, jt, jf, k = ins[pc]
        n += 1
        pc += 1
        src = x if code & 0x08 else k
        if code == 0x20:                       # ld [k]
            a = struct.unpack_from("<I", data, k)[0]
        elif code in (0x00, 0x01):             # ld #k / ldx #k
            a, x = (k, x) if code == 0x00 else (a, k)
        elif code in (0x60, 0x61):             # ld M[k] / ldx M[k]
            a, x = (mem[k], x) if code == 0x60 else (a, mem[k])
        elif code in (0x02, 0x03):             # st / stx
            mem[k] = a if code == 0x02 else x
        elif code in (0x06, 0x16):             # ret #k / ret a
            return n, k if code == 0x06 else a
        elif code == 0x05:                     # ja
            pc += k
        elif code & 0x07 == 0x05:              # jeq / jgt / jge / jset
            op = code & 0xF0
            hit = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: a & src != 0}[op]
            pc += jt if hit else jf
        elif code & 0x07 == 0x04:              # alu
            ops = {0x00: a + src, 0x10: a - src, 0x40: a | src, 0x50: a & src,
                   0x60: a << src, 0x70: a >> src}
            a = ops[code & 0xF0] & 0xFFFFFFFF
        elif code in (0x07, 0x87):             # tax / txa
            a, x = (a, a) if code == 0x07 else (x, x)
        else:
            raise ValueError(f"BPF opcode {code:#x} not emulated")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="one run of each")
    args = ap.parse_args()
    runs = 1 if args.quick else args.runs
    if os.geteuid() != 0:
        print("bench_sandbox needs root (skipped)")
        return 0
    lamina = str(Path(sys.executable).parent / "lamina")
    bwrap = shutil.which("bwrap")
    podman = shutil.which("podman")
    if bwrap is None:
        sys.exit("bwrap is not installed (apt-get install bubblewrap)")

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    store = WORK / "store"
    env = {**os.environ, "LAMINA_ROOT": str(store), "SOURCE_DATE_EPOCH": "1700000000"}
    snapshots = WORK / "snapshots"
    run([str(REPO / "examples/seed/make-snapshots.sh"), str(snapshots)])
    run([lamina, "import", "bench/busybox", "os"], env=env, cwd=snapshots)
    tree = snapshots / "os"

    n_compile = 1 if args.quick else 20
    programs: dict[str, bytes] = {}
    compile_ms: dict[str, float] = {}
    for kind, optimize in (("tree", True), ("linear", False)):
        t0 = time.perf_counter()
        for _ in range(n_compile):
            programs[kind] = compile_profile(default_profile(), DEFAULT_CAPS, optimize)
        compile_ms[kind] = (time.perf_counter() - t0) / n_compile * 1000
        (WORK / f"{kind}.bpf").write_bytes(programs[kind])

    pod: list[str] = []
    if podman:
        pod = [podman, "--root", str(WORK / "podman"), "--runroot", str(WORK / "podman-run"),
               "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
               "--events-backend", "none"]
        # crun (podman's default) refuses this machine's hybrid cgroup layout; runc runs.
        if shutil.which("runc"):
            pod += ["--runtime", "runc"]
        archive = WORK / "busybox.tar"
        run([lamina, "save", "bench/busybox", "-o", str(archive)], env=env)
        run([*pod, "load", "-q", "-i", str(archive)])
        probe = subprocess.run([*pod, "run", *POD_RUN, "--network", "none", "bench/busybox",
                                "/bin/busybox", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            print(f"podman cannot run containers here: {probe.stderr.strip()}")
            pod = []

    bwrap_args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc",
                  "--unshare-uts", "--unshare-net", "--unshare-cgroup-try", "--bind",
                  str(tree), "/", "--proc", "/proc", "--dev", "/dev", "--hostname", "x"]

    def lam(*opts: str) -> Callable[[], object]:
        # --rm: a run is a kept container now (#12), as podman run --rm removes its own.
        return lambda: run([lamina, "run", "--rm", *opts, "bench/busybox", "/bin/busybox",
                            "true"], env=env)

    def bw(program: str | None, *cmd: str) -> Callable[[], object]:
        cmd = cmd or ("/bin/busybox", "true")

        def go() -> object:
            if program is None:
                return run([*bwrap_args, *cmd])
            fd = os.open(WORK / f"{program}.bpf", os.O_RDONLY)
            try:
                return run([*bwrap_args, "--seccomp", str(fd), *cmd], pass_fds=(fd,))
            finally:
                os.close(fd)
        return go

    dd = ("/bin/busybox", "dd", "if=/dev/zero", "of=/dev/null", "bs=1", f"count={DD_BYTES}")

    cases: dict[str, Callable[[], object]] = {
        "lamina": lam(),
        "lamina unconfined": lam("--security-opt", "seccomp=unconfined"),
        "lamina -p": lam("-p", "127.0.0.1::80"),
        "bwrap": bw(None),
        "bwrap + seccomp": bw("tree"),
    }
    if pod:
        cases["podman"] = lambda: run([*pod, "run", *POD_RUN, "--network", "none",
                                       "bench/busybox", "/bin/busybox", "true"])
        cases["podman -p"] = lambda: run([*pod, "run", *POD_RUN, "-p", "127.0.0.1::80",
                                          "bench/busybox", "/bin/busybox", "true"])
    cases["dd, no filter"] = bw(None, *dd)
    cases["dd, linear filter"] = bw("linear", *dd)
    cases["dd, tree filter"] = bw("tree", *dd)
    for fn in cases.values():   # warm caches (snapshots, podman's storage) once
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(runs):
        for name, fn in cases.items():
            times[name].append(timed(fn))

    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    print(f"\ncontainer start-up, `true` (median and fastest of {runs}; cases alternate)")
    for name in cases:
        if not name.startswith("dd"):
            print(f"  {name:20s} {med[name] * 1000:7.1f} ms  ({low[name] * 1000:6.1f} ms)")

    def ratio(what: str, a: str, b: str) -> None:
        print(f"  {what:32s} {med[a] / med[b]:5.2f}x ({(med[a] - med[b]) * 1000:+6.1f} ms);"
              f" fastest {low[a] / low[b]:5.2f}x ({(low[a] - low[b]) * 1000:+6.1f} ms)")

    print("\nratios, median (fastest)")
    ratio("seccomp's cost in lamina run", "lamina", "lamina unconfined")
    ratio("-p's cost in lamina run", "lamina -p", "lamina")
    ratio("lamina / bwrap alone", "lamina", "bwrap")
    ratio("bwrap + seccomp / bwrap", "bwrap + seccomp", "bwrap")
    if pod:
        ratio("podman / lamina", "podman", "lamina")
        ratio("podman -p / lamina -p", "podman -p", "lamina -p")
    else:
        print("  podman: not installed or cannot run here (apt-get install podman runc)")
    print(f"\nfilter cost per syscall (bwrap, dd bs=1: {2 * DD_BYTES} syscalls; no filter "
          f"{med['dd, no filter']:.3f} s, fastest {low['dd, no filter']:.3f} s)")
    for kind in ("linear", "tree"):
        per_med = (med[f"dd, {kind} filter"] - med["dd, no filter"]) / (2 * DD_BYTES) * 1e9
        per_low = (low[f"dd, {kind} filter"] - low["dd, no filter"]) / (2 * DD_BYTES) * 1e9
        print(f"  {kind:6s} {len(programs[kind]) // 8:5d} BPF instructions: {per_med:5.0f} ns"
              f" ({per_low:5.0f} ns)  compiled in {compile_ms[kind]:.1f} ms")
    if os.uname().machine == "x86_64":
        print("\ninstructions the kernel runs per syscall (emulated; x86_64 numbers)")
        calls = {"read": 0, "write": 1, "execve": 59, "futex": 202, "openat": 257,
                 "newfstatat": 262, "clone": 56}
        for kind in ("linear", "tree"):
            each = [bpf_steps(programs[kind], nr)[0] for nr in range(460)]
            named = ", ".join(f"{k} {bpf_steps(programs[kind], nr)[0]}"
                              for k, nr in calls.items())
            print(f"  {kind:6s} mean {statistics.mean(each):5.1f}, max {max(each):3d}; {named}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
