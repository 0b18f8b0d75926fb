"""Scratch entries in the store's tmp/: owned by a live process, swept when it dies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lamina.store import Store, collect, scratch

# Makes a scratch dir and file the way build/run/import do, fills them, says where,
# and waits to be killed.
_OWNER = """
import sys, time
from pathlib import Path
from lamina.store import scratch
tmp = Path(sys.argv[1])
d = scratch.make_dir(tmp, "build-")
(d.path / "stage").mkdir()
(d.path / "stage" / "big").write_bytes(b"b" * 5000)
os_ro = d.path / "stage" / "ro"
os_ro.mkdir()
(os_ro / "f").write_bytes(b"r" * 7)
os_ro.chmod(0o555)
f = scratch.make_file(tmp, "lamina-archive-")
f.path.write_bytes(b"a" * 300)
print(d.path.name, f.path.name, flush=True)
time.sleep(600)
"""


def _start(tmp: Path) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(tmp)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()


def test_gc_removes_scratch_of_a_killed_process_only(store: Store) -> None:
    """#10.7: kill -9 leaves tmp entries with a free lock: gc removes them and counts
    their bytes (dry run alike), df shows them; a live process's entries stay."""
    tmp = store.root / "tmp"
    dead, dead_names = _start(tmp)
    live, live_names = _start(tmp)
    try:
        dead.kill()
        dead.wait()
        usage = scratch.usage(tmp)
        assert (usage.count, usage.size) == (4, 2 * 5307)
        assert (usage.reclaimable_count, usage.reclaimable_size) == (2, 5307)
        dry = collect(store, dry_run=True)
        assert (dry.temp_removed, dry.bytes_freed) == (2, 5307)
        assert all((tmp / n).exists() for n in dead_names)
        real = collect(store)
        assert (real.temp_removed, real.bytes_freed) == (2, 5307)
        assert sorted(os.listdir(tmp)) == sorted(
            [*live_names, *(f"{n}.lock" for n in live_names)])
        assert (tmp / live_names[0] / "stage" / "big").read_bytes() == b"b" * 5000
    finally:
        for p in (dead, live):
            if p.poll() is None:
                p.kill()
                p.wait()
    # Once the owner is gone, its entries go too.
    assert collect(store).temp_removed == 2
    assert os.listdir(tmp) == []


def test_scratch_remove_and_leftovers_without_locks(store: Store) -> None:
    tmp = store.root / "tmp"
    with scratch.make_dir(tmp, "snap-") as d:
        assert (tmp / f"{d.path.name}.lock").exists()
        assert collect(store).temp_removed == 0   # held by this very process
    assert os.listdir(tmp) == []
    # A dir of a lamina from before locks: gone once older than a process's first step.
    legacy = tmp / "build-legacy"
    legacy.mkdir()
    (legacy / "x").write_bytes(b"12345")
    assert collect(store).temp_removed == 0
    old = time.time() - 3600
    os.utime(legacy, (old, old))
    report = collect(store)
    assert (report.temp_removed, report.bytes_freed) == (1, 5)
    assert os.listdir(tmp) == []
