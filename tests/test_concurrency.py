"""Several real ``lamina`` processes sharing one store.

Imports that overlap in time must each end with their own image recorded, shared layers
stored once and a store fsck calls clean; gc running in a loop beside imports must never
take a blob an import still needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

LAMINA = str(Path(sys.executable).parent / "lamina")
EPOCH = "1700000000"


def env_for(root: Path) -> dict[str, str]:
    env = {**os.environ, "LAMINA_ROOT": str(root), "SOURCE_DATE_EPOCH": EPOCH}
    env.pop("LAMINA_DEBUG", None)
    return env


def lamina(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([LAMINA, *map(str, args)], capture_output=True, text=True,
                          env=env_for(root), timeout=120)
    assert proc.returncode == 0, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def start(root: Path, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen([LAMINA, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for(root))


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (proc.args, proc.returncode, out, err)
    result: dict[str, Any] = json.loads(out)
    return result


def _fill(root: Path, rng: random.Random, prefix: str, count: int, size: int) -> None:
    for i in range(count):
        d = root / prefix / f"d{i % 16:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(rng.randbytes(size))


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=os.link)


def make_snapshots(base: Path, tops: list[str]) -> dict[str, Path]:
    """Successive full snapshots of one root: os → webserver → config → site-<top>.

    Random (incompressible) content, a few MB and over a thousand files, so that an
    import takes long enough for two of them to overlap.  Seeded: same bytes every run.
    Each snapshot hard-links the files of the one below (unchanged: same inode, same stat,
    so not in the diff); a changed file is unlinked, then written."""
    rng = random.Random(1234)
    snaps: dict[str, Path] = {}
    os_ = base / "os"
    _fill(os_, rng, "usr/lib", 900, 2048)
    (os_ / "etc").mkdir()
    (os_ / "etc" / "os-release").write_text("NAME=lamina-test\n")
    snaps["os"] = os_
    web = base / "webserver"
    _link_tree(os_, web)
    _fill(web, rng, "usr/sbin/httpd", 300, 4096)
    snaps["webserver"] = web
    conf = base / "config"
    _link_tree(web, conf)
    (conf / "etc" / "httpd.conf").write_text("port 80\n")
    os.unlink(conf / "etc" / "os-release")
    (conf / "etc" / "os-release").write_text("NAME=lamina-test\nVARIANT=web\n")
    os.unlink(conf / "usr" / "lib" / "d00" / "f0000.bin")
    snaps["config"] = conf
    for top in tops:
        site = base / f"site-{top}"
        _link_tree(conf, site)
        (site / "srv" / "www").mkdir(parents=True)
        (site / "srv" / "www" / "index.html").write_text(f"<h1>{top}</h1>\n")
        _fill(site, rng, "srv/www/assets", 20, 1024)
        snaps[top] = site
    return snaps


def chain(snaps: dict[str, Path], top: str) -> list[Path]:
    return [snaps["os"], snaps["webserver"], snaps["config"], snaps[top]]


def blob_files(root: Path) -> set[str]:
    return {f"sha256:{n}" for n in os.listdir(root / "blobs" / "sha256")}


def assert_fsck_clean(root: Path) -> None:
    report = json.loads(lamina(root, "fsck", "--json").stdout)
    assert report["clean"], report
    assert report["blobs_checked"] == len(blob_files(root))
    assert os.listdir(root / "ingest") == []


def listing(root: Path) -> dict[str, str]:
    """Relative path → content digest (files), link target (symlinks) or 'dir'."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "-> " + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def snaps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_snapshots(tmp_path_factory.mktemp("snapshots"), ["a", "b", "c", "d"])


def test_two_imports_into_one_store_at_once(snaps: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    a = start(root, "import", "--json", "shared/a:1", *chain(snaps, "a"))
    b = start(root, "import", "--json", "shared/b:1", *chain(snaps, "b"))
    # Both run at the same time: neither has finished when the other has started.
    assert a.poll() is None and b.poll() is None
    ra, rb = finish(a), finish(b)

    # The same import alone, in a store of its own: concurrency changed no byte.
    alone = json.loads(lamina(tmp_path / "alone", "import", "--json", "shared/a:1",
                              *chain(snaps, "a")).stdout)
    assert alone == ra

    la = [x["digest"] for x in ra["layers"]]
    lb = [x["digest"] for x in rb["layers"]]
    assert len(la) == len(lb) == 4
    assert la[:3] == lb[:3]
    assert la[3] != lb[3]
    assert ra["digest"] != rb["digest"]

    # Shared layers are stored once: 4 + 1 layers, 2 configs, 2 manifests.
    assert blob_files(root) == set(la) | {lb[3], ra["id"], rb["id"], ra["digest"],
                                          rb["digest"]}
    assert len(blob_files(root)) == 9

    images = json.loads(lamina(root, "images", "--json").stdout)
    got = {(x["reference"], x["digest"], x["id"], x["layers"]) for x in images}
    assert got == {("docker.io/shared/a:1", ra["digest"], ra["id"], 4),
                   ("docker.io/shared/b:1", rb["digest"], rb["id"], 4)}
    assert_fsck_clean(root)


# A collector in a tight loop (many passes per import, unlike `lamina gc`, which spends most
# of its time starting Python).  Before each pass it drops an unnamed blob, like a crashed
# pull leaves, so that every pass really sweeps; it prints what each pass removed.
_GC_LOOP = """
import hashlib, json, os, sys, time
from lamina.store import Store, collect
root, stop = sys.argv[1], sys.argv[2]
blobs = os.path.join(root, "blobs", "sha256")
with Store(root) as store:
    n = 0
    while not os.path.exists(stop):
        data = f"stray {n}".encode()
        n += 1
        with open(os.path.join(blobs, hashlib.sha256(data).hexdigest()), "wb") as f:
            f.write(data)
        report = collect(store)
        print(json.dumps({"stray": "sha256:" + hashlib.sha256(data).hexdigest(),
                          "removed": report.blobs_removed}), flush=True)
        time.sleep(0.01)
"""


def test_gc_loop_beside_imports(snaps: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    lamina(root, "images")  # create the store
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    stop_file = tmp_path / "stop"
    tight = subprocess.Popen([sys.executable, "-c", _GC_LOOP, str(root), str(stop_file)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env_for(root))
    # ... and the command itself, in a loop of its own.
    stop = threading.Event()
    cli_runs: list[subprocess.CompletedProcess[str]] = []

    def cli_loop() -> None:
        while not stop.is_set():
            cli_runs.append(subprocess.run([LAMINA, "gc", "--json"], capture_output=True,
                                           text=True, env=env_for(root), timeout=120))

    loop = threading.Thread(target=cli_loop)
    loop.start()
    results: dict[str, dict[str, Any]] = {}
    first_pass = ""
    try:
        assert tight.stdout is not None
        first_pass = tight.stdout.readline()  # the collector is running
        for top in ["a", "b", "c", "d"]:
            res = json.loads(lamina(root, "import", "--json", f"web/{top}:1",
                                    *chain(snaps, top)).stdout)
            # Check now: the next import rewrites the shared layers and would hide a loss.
            names = {x["digest"] for x in res["layers"]} | {res["digest"], res["id"]}
            missing = names - blob_files(root)
            assert not missing, f"gc took blobs of web/{top}:1: {missing}"
            results[top] = res
        cli_runs_during_imports = len(cli_runs)
    finally:
        stop_file.touch()
        stop.set()
        loop.join(timeout=120)
        out, err = tight.communicate(timeout=120)
    assert tight.returncode == 0, err
    assert not loop.is_alive()

    passes = [json.loads(line) for line in [first_pass, *out.splitlines()]]
    for run in cli_runs:
        assert run.returncode == 0, (run.stdout, run.stderr)
    assert cli_runs_during_imports >= 2, f"lamina gc ran only {cli_runs_during_imports} times"
    assert len(passes) >= 20, f"the collector made only {len(passes)} passes"
    removed = [d for p in passes for d in p["removed"]] + [
        d for run in cli_runs for d in json.loads(run.stdout)["blobs_removed"]]
    # gc removed exactly the strays (each once), and never a blob an image names.
    assert sorted(removed) == sorted(p["stray"] for p in passes)
    named = {x["digest"] for r in results.values() for x in r["layers"]} | {
        r["digest"] for r in results.values()} | {r["id"] for r in results.values()}
    assert named == blob_files(root)

    images = json.loads(lamina(root, "images", "--json").stdout)
    assert {x["reference"] for x in images} == {f"docker.io/web/{t}:1" for t in "abcd"}
    for top, res in results.items():
        target = tmp_path / f"rootfs-{top}"
        lamina(root, "unpack", res["digest"], target)
        assert listing(target) == listing(snaps[top])
    assert_fsck_clean(root)


# fsck --repair in a tight loop in its own process (hashing is the long part of a pass).
_FSCK_LOOP = """
import json, os, sys
from lamina.store import Store
from lamina.store.fsck import check
with Store(sys.argv[1]) as store:
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        report = check(store, repair=True)
        if report.repaired:
            print(json.dumps(report.repaired), flush=True)
"""


def test_fsck_repair_beside_imports_keeps_them(snaps: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "store"
    lamina(root, "images")  # create the store
    stop_file = tmp_path / "stop"
    fsck = subprocess.Popen([sys.executable, "-c", _FSCK_LOOP, str(root), str(stop_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_for(root))
    try:
        assert fsck.stdout is not None
        assert fsck.stdout.readline().strip() == "ready"
        for top in ["a", "b", "c"]:
            res = json.loads(lamina(root, "import", "--json", f"web/{top}:1",
                                    *chain(snaps, top)).stdout)
            images = json.loads(lamina(root, "images", "--json").stdout)
            assert f"docker.io/web/{top}:1" in {x["reference"] for x in images}, (
                f"web/{top}:1 ({res['digest']}) vanished")
    finally:
        stop_file.touch()
        out, err = fsck.communicate(timeout=120)
    assert fsck.returncode == 0, err
    assert out == "", f"fsck --repair changed a healthy store: {out}"
    assert_fsck_clean(root)
