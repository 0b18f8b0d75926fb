"""#10.12: Ctrl-C during ``lamina pull`` stops at once, keeps the layers that arrived, and
says how to go on; the same pull run again fetches only the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from registry_servers import FakeRegistry, sha256

from lamina_testing import LAMINA, Lamina, tar_bytes


def pull_and_interrupt(lamina: Lamina, args: list[str], ready: Callable[[], bool]
                       ) -> tuple[int, str]:
    """Run ``lamina pull ARGS``, send it SIGINT once ``ready()``, return its exit code and
    stderr.  It must end within 10 s of the signal (a generous bound: the slow layers
    would take far longer)."""
    # SIGINT as a terminal sends it, whatever the test runner's own disposition (a
    # background job starts with SIGINT ignored, which Python would keep)
    start = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", start, LAMINA, "pull", *args],
                            env=lamina.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            _out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("pull went on after Ctrl-C") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("jobs", [3, 1])
def test_ctrl_c_stops_a_pull_at_once_and_the_next_pull_resumes(fake: FakeRegistry,
                                                                 lamina: Lamina,
                                                                 jobs: int) -> None:
    """With -j 3 the signal reaches the main thread while workers read; with -j 1 it
    lands in the read itself.  Either way: config and small layer kept, 2 of 4."""
    big = [tar_bytes([(f"big{i}", os.urandom(1 << 20))]) for i in range(2)]
    small = tar_bytes([("small", b"hello\n")])
    manifest = json.loads(fake.add_image("demo/slow", "v1", [small, *big]))
    config = manifest["config"]["digest"]
    # the big layers would take ~25 s each: far longer than the wait below
    for layer in big:
        fake.slow[sha256(layer)] = (4096, 0.1, 0)
    ref = f"{fake.host}/demo/slow:v1"
    blobs = lamina.root / "blobs" / "sha256"

    def stored(digest: str) -> bool:
        return (blobs / digest.removeprefix("sha256:")).exists()

    code, err = pull_and_interrupt(lamina, ["-j", str(jobs), ref], lambda: (
        stored(config) and stored(sha256(small))
        and len(fake.requests("GET", r"/blobs/sha256:")) >= 2 + min(jobs, 2)))
    assert code == 130, err
    assert err == "interrupted: 2 of 4 blobs pulled; run the same pull again to resume\n"
    assert lamina.run("images", "--json").json() == []
    assert stored(config) and stored(sha256(small))
    assert not any(stored(sha256(layer)) for layer in big)
    # the started big layers' ingest files stay for the next pull (less than one 1 MiB
    # buffer arrived: nothing in them to take over)
    partials = {p.name: p.stat().st_size for p in (lamina.root / "ingest").iterdir()}
    assert partials == {f"partial-sha256-{sha256(layer)[7:]}": 0 for layer in big[:jobs]}
    # the same pull again: only the big layers move
    fake.slow.clear()
    again = lamina.run("pull", ref).out
    assert f"{sha256(small)[7:19]}: Already exists" in again
    assert again.splitlines()[-1] == f"Status: Downloaded newer image for {ref}"
    assert len(fake.requests("GET", sha256(small))) == 1
    assert len(fake.requests("GET", config)) == 1
    assert list((lamina.root / "ingest").iterdir()) == []
    lamina.assert_consistent()


def test_a_pull_interrupted_midway_through_a_layer_goes_on_from_there(
        fake: FakeRegistry, lamina: Lamina) -> None:
    """What arrived of a layer cut off by Ctrl-C is kept (whole 1 MiB buffers) and the
    next pull asks the registry only for the rest (Range), then checks the whole."""
    big = tar_bytes([("big", os.urandom(3 << 20))])
    small = tar_bytes([("small", b"hello\n")])
    manifest = json.loads(fake.add_image("demo/half", "v1", [small, big]))
    digest = sha256(big)
    fake.slow[digest] = (4096, 0.1, 2 << 20)    # 2 MiB at once, then a trickle
    ref = f"{fake.host}/demo/half:v1"
    partial = lamina.root / "ingest" / f"partial-sha256-{digest[7:]}"
    blobs = lamina.root / "blobs" / "sha256"
    # the config and the small layer travel beside the big one: wait for them too, or
    # on a busy machine the signal can land before they are stored (seen in CI)
    others = [manifest["config"]["digest"], sha256(small)]
    code, err = pull_and_interrupt(lamina, [ref], lambda: (
        all((blobs / d.removeprefix("sha256:")).exists() for d in others)
        and partial.exists() and partial.stat().st_size >= 2 << 20))
    assert code == 130, err
    assert err == "interrupted: 2 of 3 blobs pulled; run the same pull again to resume\n"
    assert partial.stat().st_size == 2 << 20
    fake.slow.clear()
    lamina.run("pull", ref)
    gets = fake.requests("GET", digest)
    # the second pull's plain GET (sent as the blob is opened) is dropped once the store
    # has found the kept bytes, and the rest asked for
    assert [g[2].get("Range") for g in gets] == [None, None, f"bytes={2 << 20}-"]
    assert (lamina.root / "blobs" / "sha256" / digest[7:]).read_bytes() == big
    assert list((lamina.root / "ingest").iterdir()) == []
    lamina.assert_consistent()


def test_what_a_killed_pull_left_is_shown_by_df_and_counted_by_gc(
        fake: FakeRegistry, lamina: Lamina) -> None:
    """#10.7/#10.8: kill -9 during a pull leaves its partial layer in ingest/: ``df``
    shows it with the temporary files (reclaimable once gc can tell it abandoned), and
    gc's dry run and real run count the same files and bytes."""
    big = tar_bytes([("big", os.urandom(3 << 20))])
    digest = sha256(big)
    fake.add_image("demo/killed", "v1", [big])
    fake.slow[digest] = (4096, 0.1, 2 << 20)    # 2 MiB at once, then a trickle
    partial = lamina.root / "ingest" / f"partial-sha256-{digest[7:]}"
    proc = subprocess.Popen([LAMINA, "pull", f"{fake.host}/demo/killed:v1"],
                            env=lamina.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        # killed once the layer is 2 MiB in and nothing else is on its way (the config,
        # fetched beside it, done: its ingest file would be a second temporary file)
        while not (partial.exists() and partial.stat().st_size >= 2 << 20
                   and [p.name for p in partial.parent.iterdir()] == [partial.name]):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    size = partial.stat().st_size

    def temp_row() -> dict[str, int]:
        rows = lamina.run("df", "--json").json()["summary"]
        return next(r for r in rows if r["type"] == "Temporary files")

    row = temp_row()
    assert (row["total"], row["size"]) == (1, size)
    # younger than a minute: gc cannot yet tell it from a file about to be locked
    assert (row["active"], row["reclaimable"]) == (1, 0)
    old = time.time() - 3600
    os.utime(partial, (old, old))
    row = temp_row()
    assert (row["total"], row["active"], row["size"], row["reclaimable"]) == (1, 0, size, size)
    dry = lamina.run("gc", "--dry-run", "--json").json()
    real = lamina.run("gc", "--json").json()
    assert dry["ingest_removed"] == real["ingest_removed"] == 1
    assert dry["bytes_freed"] == real["bytes_freed"] >= size
    assert list((lamina.root / "ingest").iterdir()) == []
