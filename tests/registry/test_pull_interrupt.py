"""#10.12: Ctrl-C during ``lamina pull`` stops at once, keeps the layers that arrived, and
says how to go on; the same pull run again fetches only the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from registry_servers import FakeRegistry, sha256

from lamina_testing import LAMINA, Lamina, tar_bytes


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
        fake.slow[sha256(layer)] = (4096, 0.1)
    ref = f"{fake.host}/demo/slow:v1"
    blobs = lamina.root / "blobs" / "sha256"

    def stored(digest: str) -> bool:
        return (blobs / digest.removeprefix("sha256:")).exists()

    # SIGINT as a terminal sends it, whatever the test runner's own disposition (a
    # background job starts with SIGINT ignored, which Python would keep)
    start = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
             "os.execv(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", start, LAMINA, "pull", "-j", str(jobs),
                             ref],
                            env=lamina.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while not (stored(config) and stored(sha256(small))
                   and len(fake.requests("GET", r"/blobs/sha256:")) >= 2 + min(jobs, 2)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("pull went on after Ctrl-C") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert err == "interrupted: 2 of 4 blobs pulled; run the same pull again to resume\n"
    assert lamina.run("images", "--json").json() == []
    assert stored(config) and stored(sha256(small))
    assert not any(stored(sha256(layer)) for layer in big)
    assert list((lamina.root / "ingest").iterdir()) == []
    # the same pull again: only the big layers move
    fake.slow.clear()
    again = lamina.run("pull", ref).out
    assert f"{sha256(small)[7:19]}: Already exists" in again
    assert again.splitlines()[-1] == f"Status: Downloaded newer image for {ref}"
    assert len(fake.requests("GET", sha256(small))) == 1
    assert len(fake.requests("GET", config)) == 1
    lamina.assert_consistent()
