"""Start-up latency of a detached container and of an exec into it, lamina vs Podman.

    sudo .venv/bin/python bench/bench_containers.py [--runs N | --quick]

The seed image (busybox) is imported into a fresh lamina store and loaded into a private
Podman storage (``--root``/``--runroot`` in a temporary directory, ``--network none``
like lamina's default).  Then, alternating lamina, podman, lamina, ... (bench/README.md),
one cycle is timed per tool:

    run -d   ``run -d IMAGE sh -c 'while :; do sleep 1; done'`` until the command returns
             (both return once the container's process runs)
    exec     ``exec CONTAINER true`` until it returns
    total    both

and the container is removed (``rm -f``, not timed).  Medians and lamina/podman ratios
are printed.  Podman is first tried as it comes; where its defaults fail here, the bench
says what it had to change (lower rlimits: root may lack CAP_SYS_RESOURCE; runc instead of
crun: crun refuses a hybrid cgroup layout).  Where it cannot run a container at all, the
reason is printed and lamina is compared with the floor instead: ``bwrap`` started
directly with the same namespaces over an unpacked rootfs (``run -d``'s row: bwrap
running ``sh -c :``; no state kept, nothing detached — what any bubblewrap-based runtime
cannot go below; ``exec``'s row: nsenter into a sleeping one).  Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAMINA = str(Path(sys.executable).parent / "lamina")
LOOP = ["sh", "-c", "while :; do sleep 1; done"]
EXEC = ["sh", "-c", ":"]   # the image is busybox: no /bin/true


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}…: exit {proc.returncode}: "
                           f"{(proc.stderr.strip().splitlines() or [''])[-1]}")
    return proc.stdout


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    run(cmd, env)
    return time.perf_counter() - t0


class Tool:
    name = ""

    def cycle(self, i: int) -> tuple[float, float]:
        raise NotImplementedError


class LaminaTool(Tool):
    name = "lamina"

    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "LAMINA_ROOT": str(root)}

    def cycle(self, i: int) -> tuple[float, float]:
        name = f"bench{i}"
        a = timed([LAMINA, "run", "-d", "--name", name, "demo/a", *LOOP], self.env)
        b = timed([LAMINA, "exec", name, *EXEC], self.env)
        run([LAMINA, "rm", "-f", name], self.env)
        return a, b


class PodmanTool(Tool):
    name = "podman"

    def __init__(self, work: Path, archive: Path) -> None:
        self.base = ["podman", "--root", str(work / "storage"), "--runroot", str(work / "run"),
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        self.runtime: list[str] = []
        self.extra: list[str] = []
        run([*self.base, "load", "-i", str(archive)])

    def probe(self) -> str:
        """Run one cycle, trying what makes Podman run here: its defaults; lowered
        rlimits (as root Podman asks crun/runc to raise RLIMIT_NOFILE/NPROC, which needs
        CAP_SYS_RESOURCE, missing on some machines); then runc instead of crun (crun
        refuses a hybrid cgroup layout).  Returns what it had to change ("" if nothing)."""
        ulimits = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
        errors = []
        for runtime, extra in (([], []), ([], ulimits), (["--runtime", "runc"], ulimits)):
            self.runtime, self.extra = runtime, extra
            try:
                self.cycle(-1 - len(errors))
                return " ".join(runtime + extra)
            except RuntimeError as e:
                errors.append(str(e))
        raise RuntimeError("; then ".join(errors))

    def cycle(self, i: int) -> tuple[float, float]:
        name = f"bench{i}"
        try:
            a = timed([*self.base, *self.runtime, "run", "-d", *self.extra, "--network",
                       "none", "--name", name, "localhost/demo/a", *LOOP])
            b = timed([*self.base, *self.runtime, "exec", name, *EXEC])
        finally:
            subprocess.run([*self.base, *self.runtime, "rm", "-f", "-t", "0", name],
                           capture_output=True, check=False)
        return a, b


class BwrapFloor(Tool):
    """bwrap over an unpacked rootfs: its start-up, and an nsenter into a sleeping one."""

    name = "bwrap"

    def __init__(self, rootfs: Path) -> None:
        self.args = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                     "--unshare-net", "--bind", str(rootfs), "/", "--proc", "/proc",
                     "--dev", "/dev", "--"]

    def cycle(self, i: int) -> tuple[float, float]:
        a = timed([*self.args, *EXEC])
        proc = subprocess.Popen([*self.args, "sleep", "30"])
        try:
            pid = 0
            while not pid:   # the command: bwrap's grandchild
                kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                if kids:
                    grand = Path(f"/proc/{kids[0]}/task/{kids[0]}/children").read_text().split()
                    pid = int(grand[0]) if grand else 0
            b = timed(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                       *EXEC])
        finally:
            proc.kill()
            proc.wait()
        return a, b


def bench(tools: list[Tool], runs: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in tools}
    for i in range(runs):
        for tool in tools:   # A B A B …
            results[tool.name].append(tool.cycle(i))
    return results


def report(results: dict[str, list[tuple[float, float]]], peer: str) -> None:
    def med(name: str, pick: Callable[[tuple[float, float]], float]) -> float:
        return statistics.median(pick(r) for r in results[name])

    rows = (("run -d", lambda r: r[0]), ("exec", lambda r: r[1]),
            ("run -d + exec", lambda r: r[0] + r[1]))
    print(f"{'medians (ms)':<16}{'lamina':>10}{peer:>10}{'lamina/' + peer:>16}")
    for label, pick in rows:
        lam, other = med("lamina", pick), med(peer, pick)
        print(f"{label:<16}{lam * 1e3:>10.1f}{other * 1e3:>10.1f}{lam / other:>15.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="two runs (smoke test)")
    args = ap.parse_args()
    runs = 2 if args.quick else args.runs
    if os.geteuid() != 0:
        print("bench_containers: needs root (overlay snapshots, podman storage)")
        return 0
    for tool in ("bwrap", "nsenter"):
        if shutil.which(tool) is None:
            print(f"bench_containers: {tool} is not installed")
            return 1
    with tempfile.TemporaryDirectory(prefix="lamina-bench-ctr-") as tmp:
        work = Path(tmp)
        seed = work / "seed"
        run([str(HERE.parent / "examples" / "seed" / "make-snapshots.sh"), str(seed)])
        lamina = LaminaTool(work / "store")
        run([LAMINA, "import", "demo/a", *(str(seed / s) for s in
                                           ("os", "webserver", "config", "site-a"))],
            lamina.env)
        archive = work / "a.tar"
        run([LAMINA, "save", "demo/a", "-o", str(archive)], lamina.env)
        peer: Tool
        why = None
        try:
            if shutil.which("podman") is None:
                raise RuntimeError("podman is not installed (apt-get install podman)")
            podman = PodmanTool(work / "podman", archive)
            changed = podman.probe()   # can it run a container here at all?
            if changed:
                print(f"podman runs containers here only with: {changed} (its defaults "
                      "failed: see PodmanTool.probe)")
            peer = podman
        except RuntimeError as e:
            why = str(e)
        if why is not None:
            print(f"podman cannot run a container here: {why}")
            print("comparing with the floor instead: bwrap started directly (run -d row: "
                  "bwrap running sh -c :; exec row: nsenter into a sleeping bwrap sandbox)")
            rootfs = work / "rootfs"
            run([LAMINA, "unpack", "demo/a", str(rootfs)], lamina.env)
            peer = BwrapFloor(rootfs)
        try:
            lamina.cycle(-1)   # warm: snapshots extracted, caches filled
            results = bench([lamina, peer], runs)
        finally:
            left = run([LAMINA, "ps", "-aq"], lamina.env).split()
            if left:
                run([LAMINA, "rm", "-f", *left], lamina.env)
        print(f"{runs} runs each, alternating; the busybox seed image")
        report(results, peer.name)
        floor = statistics.median(timed([LAMINA, "--version"]) for _ in range(runs))
        print(f"lamina's CLI start-up alone (lamina --version): {floor * 1e3:.1f} ms, "
              "paid by both of its commands")
    return 0


if __name__ == "__main__":
    sys.exit(main())
