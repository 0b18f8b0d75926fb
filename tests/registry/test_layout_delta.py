"""Delta copies into an OCI layout directory (issue 11, item 2 for ``copy docker://…
oci:DIR``): with v1 in the layout, v2's zstd:chunked layer is assembled from the frames
of the layout's own blobs plus the ranges fetched, bytes counted in docker-registry's
access log; the blob it writes is the registry's, and peers read the layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from registry_servers import DockerRegistry, FakeRegistry, kill_during_ranges
from test_delta_pull import _fake_pair, _frames_of, _layer, _push_pair, wire_bytes

from lamina.digest import Digest, digest_file
from lamina.transport.filetree import DirWriter, locked_temp, sweep_temps
from lamina.transport.layout_delta import TEMP_MARK
from lamina_testing import LAMINA, Lamina, need, tree_listing


def _layout_blob(layout: Path, digest: object) -> Path:
    return layout / "blobs" / "sha256" / str(digest).split(":")[1]


def _assert_layout_clean(layout: Path) -> None:
    """Every blob of the layout has the digest it is named for; no temp file is left."""
    blobs = layout / "blobs" / "sha256"
    leftovers = [p.name for p in blobs.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers
    for p in blobs.iterdir():
        assert digest_file(str(p))[0] == Digest.parse(f"sha256:{p.name}"), p.name


def _tags(layout: Path) -> list[str]:
    index = json.loads((layout / "index.json").read_text())
    return sorted(m["annotations"]["org.opencontainers.image.ref.name"]
                  for m in index["manifests"])


def test_copy_into_a_layout_fetches_only_the_changed_frames(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    v1, v2 = _push_pair(lamina, registry, tmp_path, "ocid/one", changed=True)
    copier = Lamina(tmp_path / "copier", tmp_path)   # a store without v1's chunks
    layout = tmp_path / "layout"
    first = copier.run("copy", "--json", f"docker://{v1}", f"oci:{layout}:v1").json()
    assert [x["status"] for x in first["layers"]] == ["copied"]
    # a blob whose footer lies offers nothing, and is left alone
    junk = b"\x28\xb5\x2f\xfd" + bytes(200) + b"GNUlInUx"
    (layout / "blobs" / "sha256" / Digest.from_bytes(junk).encoded).write_bytes(junk)
    layer = _layer(lamina, "ocid/one:v2")
    config = lamina.run("inspect", "ocid/one:v2").json()[0]["Manifest"]["config"]
    before = wire_bytes(registry, "ocid/one")["blobs"]
    out = copier.run("copy", "--json", f"docker://{v2}", f"oci:{layout}:v2").json()
    fetched = wire_bytes(registry, "ocid/one")["blobs"] - before - config["size"]
    changed, tail = _frames_of(lamina, "ocid/one:v2", {"big3.bin"})
    assert fetched <= 1.1 * (changed + tail), (fetched, changed, tail)
    (entry,) = out["layers"]
    assert entry["digest"] == layer["digest"] and entry["status"] == "delta"
    assert entry["reused"] == layer["size"] - fetched
    assert out["reused_bytes"] == entry["reused"]
    assert digest_file(str(_layout_blob(layout, layer["digest"])))[0] == \
        Digest.parse(str(layer["digest"]))
    _assert_layout_clean(layout)
    assert _tags(layout) == ["v1", "v2"]
    # the text output says it per layer, as pull does
    again = tmp_path / "again"
    copier.run("copy", f"docker://{v1}", f"oci:{again}:v1")
    text = copier.run("copy", f"docker://{v2}", f"oci:{again}:v2").out
    assert f"{Digest.parse(str(layer['digest'])).short}: Copied (Reused " in text, text

    # peers read it: skopeo inspects it and copies it on (checking every digest);
    # umoci lists and stats it; lamina takes it into a store and unpacks the tree of v2
    skopeo = need("skopeo")
    raw = subprocess.run([skopeo, "inspect", "--raw", f"oci:{layout}:v2"], check=True,
                         capture_output=True).stdout
    assert json.loads(raw)["layers"][0]["digest"] == layer["digest"]
    subprocess.run([skopeo, "copy", f"oci:{layout}:v2", f"oci:{tmp_path / 'on'}:v2"],
                   check=True, capture_output=True)
    umoci = need("umoci")     # Debian's 0.4.7 reads no zstd layer: it lists and stats
    listed = subprocess.run([umoci, "ls", "--layout", str(layout)], check=True,
                            capture_output=True, text=True).stdout.split()
    assert sorted(listed) == ["v1", "v2"]
    stat = subprocess.run([umoci, "stat", "--image", f"{layout}:v2"], check=True,
                          capture_output=True, text=True).stdout
    assert str(layer["digest"]) in stat, stat
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("copy", f"oci:{layout}:v2", "check/app:v2")
    other.run("unpack", "check/app:v2", tmp_path / "out")
    assert tree_listing(tmp_path / "out") == tree_listing(tmp_path / "v2")


@pytest.mark.parametrize("fault", ["ignores-range", "whole-tail-range", "lying-toc",
                                   "damaged-v1"])
def test_copy_into_a_layout_falls_back_to_a_verified_whole_blob(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path, fault: str) -> None:
    """A registry that answers a Range with the whole body, one that answers with
    another range than asked, a TOC checksum that lies, and a v1 blob in the layout
    whose frame was damaged (its TOC intact): the layer is fetched whole, the layout
    holds the registry's blob, and no temp file is left."""
    v1, v2, copier = _fake_pair(lamina, fake, tmp_path, "fb/app", lie=fault == "lying-toc")
    layout = tmp_path / "layout"
    copier.run("copy", f"docker://{v1}", f"oci:{layout}:v1")
    if fault == "damaged-v1":
        old = _layout_blob(layout, _layer(lamina, "fb/app:v1")["digest"])
        data = bytearray(old.read_bytes())
        data[len(data) // 3] ^= 0xFF        # inside a payload frame the v2 layer shares
        old.write_bytes(bytes(data))
    fake.ranges = fault != "ignores-range"
    fake.range_ends = fault != "whole-tail-range"
    out = copier.run("copy", "--json", f"docker://{v2}", f"oci:{layout}:v2").json()
    layer = _layer(lamina, "fb/app:v2")
    gets = [h for _, _, h in fake.requests("GET", f"/blobs/{layer['digest']}")]
    assert gets[-1].get("Range") is None          # the last fetch was the whole blob
    if fault != "lying-toc":
        assert any("Range" in h for h in gets)    # after a delta attempt
    assert [x["status"] for x in out["layers"]] == ["copied"]
    assert digest_file(str(_layout_blob(layout, layer["digest"])))[0] == \
        Digest.parse(str(layer["digest"]))
    if fault == "damaged-v1":
        _layout_blob(layout, _layer(lamina, "fb/app:v1")["digest"]).unlink()
    _assert_layout_clean(layout)


def test_kill_9_during_a_delta_copy_leaves_the_layout_as_it_was(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path) -> None:
    """SIGKILL while the delta copy fetches its ranges: the layout still names v1 only,
    every blob in it is whole; the same copy then completes and leaves no temp file."""
    v1, v2, copier = _fake_pair(lamina, fake, tmp_path, "kill/app")
    layout = tmp_path / "layout"
    copier.run("copy", f"docker://{v1}", f"oci:{layout}:v1")
    index = (layout / "index.json").read_bytes()
    layer = _layer(lamina, "kill/app:v2")
    kill_during_ranges(fake, str(layer["digest"]),
                       [LAMINA, "copy", f"docker://{v2}", f"oci:{layout}:v2"], copier.env)
    assert (layout / "index.json").read_bytes() == index
    assert not _layout_blob(layout, layer["digest"]).exists()
    for p in (layout / "blobs" / "sha256").iterdir():
        if not p.name.startswith("."):
            assert digest_file(str(p))[0] == Digest.parse(f"sha256:{p.name}"), p.name
    # the blob is assembled only once every range is in (no temp file yet); a writer
    # killed while assembling leaves its temp file with its lock free: the retry sweeps it
    dead = _layout_blob(layout, layer["digest"])
    dead = dead.with_name(f".{dead.name}{TEMP_MARK}0123456789ab")
    dead.write_bytes(b"half a blob")
    out = copier.run("copy", "--json", f"docker://{v2}", f"oci:{layout}:v2").json()
    assert [x["status"] for x in out["layers"]] == ["delta"]
    assert _tags(layout) == ["v1", "v2"]
    _assert_layout_clean(layout)



def _hold_lock(path: Path) -> subprocess.Popen[bytes]:
    """A live writer: another process holding ``path``'s lock until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1]); "
         "fcntl.flock(f, fcntl.LOCK_EX); print(flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"\n"
    return holder


def test_a_sweep_leaves_a_live_writers_temp_file(tmp_path: Path) -> None:
    """Only a temp file whose lock is free (its writer died) is removed; one a live
    process holds, and any other file, stay."""
    live, dead = (tmp_path / f".{c * 64}{TEMP_MARK}0123456789ab" for c in "ab")
    other = tmp_path / f".{'c' * 64}.tmp123"      # not a locked temp file: never judged
    for p in (live, dead, other):
        p.write_bytes(b"x")
    holder = _hold_lock(live)
    try:
        sweep_temps(tmp_path, (TEMP_MARK,))
        assert live.exists() and other.exists() and not dead.exists()
    finally:
        holder.kill()
        holder.wait()
    sweep_temps(tmp_path, (TEMP_MARK,))
    assert not live.exists() and other.exists()


def test_a_layout_writer_sweeps_what_a_killed_writer_left(tmp_path: Path) -> None:
    """A whole blob copied into a layout lands through a locked temp file; one a killed
    copy left is removed by the next writer of that directory, a live one's stays."""
    blobs = tmp_path / "layout" / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    dead, fd = locked_temp(blobs / ("d" * 64))
    os.close(fd)                                  # its writer is gone
    live, fd = locked_temp(blobs / ("e" * 64))
    os.close(fd)
    holder = _hold_lock(live)
    try:
        writer = DirWriter(tmp_path / "layout")
        writer.add_bytes("blobs/sha256/" + "f" * 64, b"blob")
        assert sorted(p.name for p in blobs.iterdir()) == [live.name, "f" * 64]
    finally:
        holder.kill()
        holder.wait()


def test_a_fresh_layout_reuses_the_stores_chunks(lamina: Lamina, registry: DockerRegistry,
                                                 tmp_path: Path) -> None:
    """v1 pulled into the store, v2 copied into an empty layout: the frames come from
    the store's chunks (leased meanwhile), only the changed ones from the registry."""
    v1, v2 = _push_pair(lamina, registry, tmp_path, "ocid/store", changed=True)
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", v1)
    layout = tmp_path / "layout"
    out = other.run("copy", "--json", f"docker://{v2}", f"oci:{layout}:v2").json()
    layer = _layer(lamina, "ocid/store:v2")
    (entry,) = out["layers"]
    changed, tail = _frames_of(lamina, "ocid/store:v2", {"big3.bin"})
    assert entry["status"] == "delta"
    assert int(str(layer["size"])) - entry["reused"] <= 1.1 * (changed + tail), entry
    _assert_layout_clean(layout)
    assert _tags(layout) == ["v2"]
    assert not list((other.root / "leases").iterdir())      # the lease ended with the copy
    other.assert_consistent()
