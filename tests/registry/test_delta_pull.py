"""Delta pulls of zstd:chunked layers through a real docker-registry (issue 11, items 2,
3 and 5): pulled chunked layers are kept as chunks, and a pull of v2 with v1 present
fetches only the frames the store lacks, with the registry's digests, bytes counted in
the registry's own access log."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from registry_servers import (
    DockerRegistry,
    FakeRegistry,
    kill_during_ranges,
    pull_image,
    push_image,
)

from lamina.digest import Digest
from lamina.image.reference import Reference
from lamina.layer.chunkmap import chunk_map, read_toc
from lamina.layer.zstdchunked import CHECKSUM_ANNOTATION
from lamina.store.store import Store
from lamina.transport.delta import GAP
from lamina.transport.local import StoreTransport
from lamina_testing import LAMINA, Lamina, need

# "GET /v2/<repo>/blobs/sha256:... HTTP/1.1" 206 12345
_LINE = re.compile(r'"GET (/v2/(\S+?)/(blobs|manifests)/\S+) HTTP/[\d.]+" (\d+) (\d+)')


def wire_bytes(registry: DockerRegistry, repo: str) -> dict[str, int]:
    """Body bytes the registry sent for ``repo`` so far, by kind (blobs, manifests)."""
    time.sleep(0.05)
    out = {"blobs": 0, "manifests": 0}
    for line in registry.log.read_text(errors="replace").splitlines():
        m = _LINE.search(line)
        if m and m.group(2) == repo:
            out[m.group(3)] += int(m.group(5))
    return out


def _tree(root: Path, seed: int = 0, changed: bool = False, chmod: bool = False) -> Path:
    """~2,000 small text files plus eight 1 MiB files of random bytes."""
    import random

    rnd = random.Random(seed)
    for d in range(20):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for f in range(100):
            words = " ".join(str(rnd.randrange(10**6)) for _ in range(rnd.randrange(5, 60)))
            (sub / f"f{f:03}.txt").write_text(words + "\n")
    for i in range(8):
        data = bytearray(random.Random(1000 + i).randbytes(1 << 20))
        if changed and i == 3:
            data[:4096] = random.Random(7).randbytes(4096)
        (root / f"big{i}.bin").write_bytes(bytes(data))
    if chmod:
        os.chmod(root / "big5.bin", 0o600)
    for p in root.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return root


def _layer(lamina: Lamina, name: str) -> dict[str, object]:
    layer = lamina.run("inspect", name).json()[0]["Manifest"]["layers"][0]
    assert isinstance(layer, dict)
    return layer


def _assert_fsck_clean(store: Lamina) -> None:
    fsck = store.run("fsck", "--json").json()
    assert not any(v for k, v in fsck.items() if isinstance(v, list)), fsck


def test_pulled_chunked_layer_is_cut_when_a_delta_pull_shares_it(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    """Made locally, a chunked layer is kept as chunks.  Pulled into a store with
    nothing to share, it is kept whole and listed (``chunk_pending``); the first delta
    pull that shares its content cuts it into chunks (its file becomes the pack) and
    records their contents, then reuses them."""
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/keep", changed=True)
    space = lamina.run("df", "--json").json()["storage"]
    assert space["chunked_blobs"] == 2     # made locally: kept as chunks
    layer = _layer(lamina, "delta/keep:v1")
    digest = Digest.parse(str(layer["digest"]))
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, Reference.parse(v1))
        assert store.blobs.chunked(digest) is None and store.blobs.path(digest).is_file()
        assert [b for b, _ in store.meta.chunk_pending()] == [str(digest)]
        assert not store.meta.has_chunk_contents()
        inode = store.blobs.path(digest).stat().st_ino
    space = other.run("df", "--json").json()["storage"]
    assert (space["chunked_blobs"], space["chunked_kept_whole"]) == (0, 1)
    assert "; 1 chunked layer kept whole until a pull shares it" in other.run("df").out
    _assert_fsck_clean(other)
    _, out = _pull(other, registry, "delta/keep", v2)
    assert "Reused" in out
    with Store(other.root) as store:
        chunked = store.blobs.chunked(digest)
        assert chunked is not None and not store.blobs.path(digest).exists()
        assert store.meta.chunk_pending() == []
        packs = list((other.root / "packs").glob("*.pack"))
        assert inode in {p.stat().st_ino for p in packs}    # the whole file, linked
        annotations = layer["annotations"]
        assert isinstance(annotations, dict)
        toc = read_toc(lambda off, n: chunked.pread(n, off), annotations,
                       int(str(layer["size"])))
        assert toc is not None
        big = next(e for e in toc.entries if e.name == "big3.bin")
        assert store.meta.find_chunk_for_content(big.chunks[0].chunk_digest)
        assert store.blobs.read_bytes(digest, int(str(layer["size"])))   # digest checked
    space = other.run("df", "--json").json()["storage"]
    assert (space["chunked_blobs"], space["chunked_kept_whole"]) == (2, 0)
    _check_blob(lamina, other, "delta/keep:v2", v2)
    _assert_fsck_clean(other)


def _push_pair(lamina: Lamina, registry: DockerRegistry, tmp_path: Path, repo: str,
               **v2: bool) -> tuple[str, str]:
    """v1 and v2 (``changed``/``chmod``) of the tree, chunked, in ``repo``."""
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v1", _tree(tmp_path / "v1"))
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v2",
               _tree(tmp_path / "v2", **v2))
    refs = []
    with Store(lamina.root) as store:
        for tag in ("v1", "v2"):
            dest = Reference.parse(f"{registry.host}/{repo}:{tag}")
            push_image(store, f"{repo}:{tag}", dest)
            refs.append(str(dest))
    return refs[0], refs[1]


def _frames_of(lamina: Lamina, name: str, files: set[str]) -> tuple[int, int]:
    """Compressed bytes of ``files``' payload frames, and of TOC + tar-split + footer."""
    layer = _layer(lamina, name)
    digest = Digest.parse(str(layer["digest"]))
    size = int(str(layer["size"]))
    with Store(lamina.root) as store:
        f = store.blobs.open_file(digest)
        annotations = layer["annotations"]
        assert isinstance(annotations, dict)
        toc = read_toc(lambda off, n: (f.seek(off), f.read(n))[1], annotations, size)
        f.close()
    assert toc is not None
    payload = sum(c.end_offset - c.offset for e in toc.entries if e.name in files
                  for c in e.chunks)
    return payload, size - toc.location.offset + 8


def _pull(other: Lamina, registry: DockerRegistry, repo: str, ref: str) -> tuple[int, str]:
    before = sum(wire_bytes(registry, repo).values())
    out = other.run("pull", ref).out
    return sum(wire_bytes(registry, repo).values()) - before, out


def _check_blob(lamina: Lamina, other: Lamina, name: str, ref: str) -> None:
    """The pulled layer is the registry's (same digest, reads back checked), kept as
    chunks, and the store is clean."""
    layer = _layer(lamina, name)
    assert _layer(other, ref)["digest"] == layer["digest"]
    digest = Digest.parse(str(layer["digest"]))
    with Store(other.root) as store:
        assert store.blobs.chunked(digest) is not None
        assert len(store.blobs.read_bytes(digest, int(str(layer["size"])))) == layer["size"]
    _assert_fsck_clean(other)


def test_delta_pull_fetches_only_the_changed_file(lamina: Lamina, registry: DockerRegistry,
                                                  tmp_path: Path) -> None:
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/one", changed=True)
    other = Lamina(tmp_path / "other", tmp_path)
    full, _ = _pull(other, registry, "delta/one", v1)
    delta, out = _pull(other, registry, "delta/one", v2)
    changed, tail = _frames_of(lamina, "delta/one:v2", {"big3.bin"})
    manifest_and_config = 4096
    assert delta <= 1.1 * (changed + tail) + manifest_and_config, (delta, changed, tail, full)
    assert "Reused" in out and "Pull complete" in out, out
    _check_blob(lamina, other, "delta/one:v2", v2)
    # pushed on to a second registry: the same blob (its digest); skopeo pulls it
    skopeo = need("skopeo")
    second = DockerRegistry(tmp_path / "second").start()
    try:
        dest = Reference.parse(f"{second.host}/delta/again:v2")
        with Store(other.root) as store:
            push_image(store, v2, dest)
        subprocess.run([skopeo, "copy", "--src-tls-verify=false", f"docker://{dest}",
                        f"oci:{tmp_path / 'again'}:v2"], check=True, capture_output=True)
    finally:
        second.stop()
    layer = _layer(lamina, "delta/one:v2")
    blob = tmp_path / "again" / "blobs" / "sha256" / str(layer["digest"]).split(":")[1]
    assert Digest.from_bytes(blob.read_bytes()) == Digest.parse(str(layer["digest"]))


def test_delta_pull_of_a_chmod_fetches_a_few_kb(lamina: Lamina, registry: DockerRegistry,
                                                tmp_path: Path) -> None:
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/mode", chmod=True)
    other = Lamina(tmp_path / "other", tmp_path)
    _pull(other, registry, "delta/mode", v1)
    delta, _ = _pull(other, registry, "delta/mode", v2)
    _, tail = _frames_of(lamina, "delta/mode:v2", set())
    assert delta - tail <= 16 << 10, (delta, tail)
    _check_blob(lamina, other, "delta/mode:v2", v2)


def _serve(fake: FakeRegistry, lamina: Lamina, name: str, tag: str,
           lie: bool = False) -> Reference:
    """``name`` from lamina's store served by the fake as ``delta:<tag>``; ``lie``: its
    layer's TOC checksum annotation names other bytes."""
    with Store(lamina.root) as store:
        top = StoreTransport(store).resolve(name)
        raw = store.blobs.read_bytes(top.digest)
        image = json.loads(raw)
        for d in (image["config"], *image["layers"]):
            fake.blobs[d["digest"]] = store.blobs.read_bytes(Digest.parse(d["digest"]))
            fake.links.add(("delta", d["digest"]))
    if lie:
        image["layers"][0]["annotations"][CHECKSUM_ANNOTATION] = "sha256:" + "0" * 64
        raw = json.dumps(image).encode()
    fake.put_manifest("delta", tag, top.media_type, raw)
    return Reference.parse(f"{fake.host}/delta:{tag}")


def _fake_pair(lamina: Lamina, fake: FakeRegistry, tmp_path: Path, repo: str,
               lie: bool = False) -> tuple[Reference, Reference, Lamina]:
    """v1 and v2 (one file changed) imported as zstd:chunked and served by the fake
    (``lie``: v2's TOC checksum annotation names other bytes), and an empty store."""
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v1", _tree(tmp_path / "v1"))
    lamina.run("import", "--compression", "zstd:chunked", f"{repo}:v2",
               _tree(tmp_path / "v2", changed=True))
    v1 = _serve(fake, lamina, f"{repo}:v1", "v1")
    v2 = _serve(fake, lamina, f"{repo}:v2", "v2", lie=lie)
    return v1, v2, Lamina(tmp_path / "other", tmp_path)


@pytest.mark.parametrize("fault", ["ignores-range", "whole-tail-range", "lying-toc"])
def test_delta_pull_falls_back_to_a_verified_full_fetch(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path, fault: str) -> None:
    """A registry that answers a Range with the whole body (200), one that answers with
    another range than asked (the fake serves to the end of the blob), and a TOC
    checksum that lies: each pull still stores the registry's exact blob, fetched whole,
    and the store stays clean."""
    v1, v2, other = _fake_pair(lamina, fake, tmp_path, "fb/app", lie=fault == "lying-toc")
    with Store(other.root) as store:
        pull_image(store, v1)
        fake.ranges = fault != "ignores-range"
        fake.range_ends = fault != "whole-tail-range"
        pull_image(store, v2)
    layer = _layer(lamina, "fb/app:v2")
    gets = [h for _, _, h in fake.requests("GET", f"/blobs/{layer['digest']}")]
    assert gets[-1].get("Range") is None          # the last fetch was the whole blob
    if fault != "lying-toc":
        assert any("Range" in h for h in gets)    # after a delta attempt
    assert _layer(other, str(v2))["digest"] == layer["digest"]
    with Store(other.root) as store:
        digest = Digest.parse(str(layer["digest"]))
        assert len(store.blobs.read_bytes(digest, int(str(layer["size"])))) == layer["size"]
    _assert_fsck_clean(other)


def test_delta_pull_of_skopeo_chunked_layers(lamina: Lamina, registry: DockerRegistry,
                                             tmp_path: Path) -> None:
    """skopeo's zstd:chunked v1 and v2 (one 1 MiB file changed): with v1 present, the
    pull of v2 fetches its changed frames, the frames between payloads (skopeo's are
    not rebuilt: another compressor) and the TOC, not the unchanged files' frames; the
    stored blob is the registry's."""
    skopeo = need("skopeo")
    refs = []
    for tag, changed in (("v1", False), ("v2", True)):
        lamina.run("import", f"sk/src:{tag}", _tree(tmp_path / tag, changed=changed))
        layout = tmp_path / f"oci-{tag}"
        lamina.run("save", "--format", "oci", "-o", layout, f"sk/src:{tag}")
        dest = f"{registry.host}/delta/skopeo:{tag}"
        subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--dest-compress-format",
                        "zstd:chunked", f"oci:{layout}:{tag}", f"docker://{dest}"],
                       check=True, capture_output=True)
        refs.append(dest)
    other = Lamina(tmp_path / "other", tmp_path)
    _pull(other, registry, "delta/skopeo", refs[0])
    delta, out = _pull(other, registry, "delta/skopeo", refs[1])
    tocs = []
    for ref in refs:
        raw = subprocess.run([skopeo, "inspect", "--raw", "--tls-verify=false",
                              f"docker://{ref}"], check=True, capture_output=True).stdout
        layer = json.loads(raw)["layers"][-1]
        assert _layer(other, ref)["digest"] == layer["digest"]   # the registry's blob
        digest = Digest.parse(layer["digest"])
        with Store(other.root) as store:
            assert store.blobs.chunked(digest) is not None
            blob = store.blobs.read_bytes(digest, layer["size"])
        toc = read_toc(lambda off, n, b=blob: b[off:off + n], layer["annotations"], len(blob))
        assert toc is not None
        tocs.append(toc)
    known = {c.chunk_digest for e in tocs[0].entries for c in e.chunks}
    frames = [(c.end_offset - c.offset, c.chunk_digest in known)
              for e in tocs[1].entries for c in e.chunks]
    new = sum(n for n, seen in frames if not seen)
    assert 0 < new < 2 << 20     # skopeo cut big3.bin in pieces: only some changed
    # skopeo's header frames cannot be rebuilt, so they are fetched, and the small
    # frames between them with them (coalesced: a request costs ~0.5 KB of headers);
    # every reusable frame longer than GAP comes from the store.
    big = sum(n for n, seen in frames if seen and n > GAP)
    assert new <= delta <= 1.1 * (len(blob) - big) + 4096, (delta, new, big)
    assert "Reused" in out
    _assert_fsck_clean(other)


def test_skopeo_zeros_chunks_pull_and_delta_pull(lamina: Lamina, registry: DockerRegistry,
                                                tmp_path: Path) -> None:
    """skopeo writes a run of >= 1 KiB zeros as a chunk of type "zeros" (a tiny frame of
    compressed zeros): lamina pulls such a layer, delta-pulls its v2 reusing the frames
    (``pull --json`` says how much), and unpacks the file with its zeros back."""
    import random

    skopeo = need("skopeo")
    rnd = random.Random(5)
    sparse = rnd.randbytes(65536) + bytes(1 << 20) + rnd.randbytes(65536)
    refs = []
    for tag, text in (("v1", "one\n"), ("v2", "two\n")):
        tree = tmp_path / f"z{tag}"
        tree.mkdir()
        (tree / "sparse.bin").write_bytes(sparse)
        (tree / "a.txt").write_text(text)
        lamina.run("import", f"zs/src:{tag}", tree)
        layout = tmp_path / f"oci-z{tag}"
        lamina.run("save", "--format", "oci", "-o", layout, f"zs/src:{tag}")
        dest = f"{registry.host}/delta/zeros:{tag}"
        subprocess.run([skopeo, "copy", "--dest-tls-verify=false", "--dest-compress-format",
                        "zstd:chunked", f"oci:{layout}:{tag}", f"docker://{dest}"],
                       check=True, capture_output=True)
        refs.append(dest)
    other = Lamina(tmp_path / "other", tmp_path)
    first = other.run("pull", "--json", refs[0]).json()
    assert [x["status"] for x in first["layers"]] == ["pulled"]
    layer = _layer(other, refs[0])
    with Store(other.root) as store:
        blob = store.blobs.read_bytes(Digest.parse(str(layer["digest"])))
    annotations = layer["annotations"]
    assert isinstance(annotations, dict)
    toc = read_toc(lambda off, n: blob[off:off + n], annotations, len(blob))
    assert toc is not None
    assert [c.chunk_type for e in toc.entries if e.name == "sparse.bin"
            for c in e.chunks].count("zeros") == 1
    before = sum(wire_bytes(registry, "delta/zeros").values())
    second = other.run("pull", "--json", refs[1]).json()
    moved = sum(wire_bytes(registry, "delta/zeros").values()) - before
    (entry,) = second["layers"]
    v2 = _layer(other, refs[1])
    assert entry["digest"] == v2["digest"] and entry["status"] == "delta"
    assert second["reused_bytes"] == entry["reused"] > 0.9 * int(str(v2["size"]))
    assert moved < int(str(v2["size"])) - entry["reused"] + 8192   # + manifest, config
    other.run("unpack", refs[1], tmp_path / "out")
    assert (tmp_path / "out" / "sparse.bin").read_bytes() == sparse
    assert (tmp_path / "out" / "a.txt").read_text() == "two\n"
    _assert_fsck_clean(other)


def test_kill_9_during_a_delta_pull_leaves_a_consistent_store(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path) -> None:
    """SIGKILL while the delta pull fetches its ranges (the fake dribbles them): the store
    is consistent (fsck clean, nothing named), and the same pull then completes with
    the registry's blob."""
    v1, v2, other = _fake_pair(lamina, fake, tmp_path, "kill/app")
    with Store(other.root) as store:
        pull_image(store, v1)
    layer = _layer(lamina, "kill/app:v2")
    kill_during_ranges(fake, str(layer["digest"]), [LAMINA, "pull", str(v2)], other.env)
    _assert_fsck_clean(other)
    other.run("pull", str(v2))
    assert _layer(other, str(v2))["digest"] == layer["digest"]
    with Store(other.root) as store:
        digest = Digest.parse(str(layer["digest"]))
        assert store.blobs.chunked(digest) is not None
        assert len(store.blobs.read_bytes(digest)) == layer["size"]
    other.run("gc")
    _assert_fsck_clean(other)


def test_a_range_cut_off_mid_transfer_is_asked_again(lamina: Lamina, fake: FakeRegistry,
                                                      tmp_path: Path) -> None:
    """The connection drops inside a range (the tail's): that range is asked again and
    the delta pull completes, never falling back to the whole blob."""
    v1, v2, other = _fake_pair(lamina, fake, tmp_path, "cut/app")
    layer = _layer(lamina, "cut/app:v2")
    with Store(other.root) as store:
        pull_image(store, v1)
        fake.cuts[str(layer["digest"])] = (int(str(layer["size"])) - 100, 1)
        pull_image(store, v2)
    gets = [h for _, _, h in fake.requests("GET", str(layer["digest"]))]
    assert all("Range" in h for h in gets) and len(gets) >= 3, gets   # tail twice, then more
    assert gets[0]["Range"] == gets[1]["Range"]
    _check_blob(lamina, other, "cut/app:v2", str(v2))


def test_delta_pull_writes_no_whole_copy_of_the_blob(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 (time): the blob is stored as chunks while it is assembled; no whole copy
    goes through an ingest file to be read back and cut (that was ~60% of the CPU)."""
    from lamina.store.blobs import BlobWriter

    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/nocopy", changed=True)
    layer = _layer(lamina, "delta/nocopy:v2")
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, Reference.parse(v1))
    finished: list[int] = []
    finish = BlobWriter.finish

    def counted(self: BlobWriter, *args: object, **kw: object) -> Digest:
        finished.append(self.count)
        return finish(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(BlobWriter, "finish", counted)
    with Store(other.root) as store:
        pull_image(store, Reference.parse(v2))
    assert finished and max(finished) < int(str(layer["size"])), (finished, layer["size"])
    _check_blob(lamina, other, "delta/nocopy:v2", v2)


def test_a_cold_pull_is_a_plain_pull(lamina: Lamina, fake: FakeRegistry, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Into a store with nothing to reuse, a chunked layer is fetched whole, once (no
    Range request for its TOC), and nothing is read back or cut: the cold pull costs
    what a plain zstd pull costs (bench_delta).  A layer it shares nothing with leaves
    it whole; a gc after its image is gone drops it from the list."""
    from lamina.store import chunks as chunk_store

    v1, _v2, other = _fake_pair(lamina, fake, tmp_path, "cold/app")
    layer = _layer(lamina, "cold/app:v1")
    read_back: list[int] = []
    real = chunk_store._hash_spans

    def counting(fd: int, spans: list[tuple[int, int]], whole: object
                 ) -> list[tuple[Digest, int]]:
        read_back.append(len(spans))
        return real(fd, spans, whole)

    monkeypatch.setattr(chunk_store, "_hash_spans", counting)
    with Store(other.root) as store:
        pull_image(store, v1)
        digest = Digest.parse(str(layer["digest"]))
        assert store.blobs.chunked(digest) is None
        assert len(store.blobs.read_bytes(digest, int(str(layer["size"])))) == layer["size"]
    gets = [h.get("Range") for _, _, h in fake.requests("GET", f"/blobs/{layer['digest']}")]
    assert gets == [None] and read_back == []
    _assert_fsck_clean(other)
    other.run("rmi", v1)
    other.run("gc")
    with Store(other.root) as store:
        assert store.meta.chunk_pending() == [] and not store.blobs.has(digest)


def test_a_cut_killed_before_its_rows_is_finished_by_the_next_delta_pull(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path) -> None:
    """Killed after cutting v1 into chunks but before recording their contents (and
    leaving the list), the next delta pull records them and reuses v1's frames."""
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/halfcut", changed=True)
    other = Lamina(tmp_path / "other", tmp_path)
    layer = _layer(lamina, "delta/halfcut:v1")
    digest = Digest.parse(str(layer["digest"]))
    with Store(other.root) as store:
        pull_image(store, Reference.parse(v1))
        annotations = layer["annotations"]
        assert isinstance(annotations, dict)
        blob = store.blobs.path(digest)
        size = blob.stat().st_size
        with open(blob, "rb") as f:
            toc = read_toc(lambda off, n: os.pread(f.fileno(), n, off), annotations, size)
        assert toc is not None
        store.blobs.put_chunked(digest, blob, chunk_map(toc, size).spans, verified=True)
        assert store.blobs.chunked(digest) is not None and store.meta.chunk_pending()
        assert not store.meta.has_chunk_contents()
    fetched, out = _pull(other, registry, "delta/halfcut", v2)
    assert "Reused" in out and fetched < int(str(layer["size"])) // 4
    with Store(other.root) as store:
        assert store.meta.chunk_pending() == [] and store.meta.has_chunk_contents()
    _check_blob(lamina, other, "delta/halfcut:v2", v2)


def test_a_cold_pull_of_a_many_layer_image_asks_for_no_range(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path) -> None:
    """Its layers kept whole one after another do not make the next ones delta pulls
    (no TOC fetched, nothing cut): a cold pull stays a plain pull, whatever the layers."""
    import random

    ctx = tmp_path / "ctx"
    for name in ("a", "b", "c"):
        (ctx / name).mkdir(parents=True)
        for i in range(30):
            (ctx / name / f"f{i}").write_bytes(random.Random(f"{name}{i}").randbytes(40_000))
    (ctx / "Containerfile").write_text("FROM scratch\nCOPY a /a\nCOPY b /b\nCOPY c /c\n")
    lamina.run("build", "--compression", "zstd:chunked", "-t", "many/app:v1", ctx)
    ref = _serve(fake, lamina, "many/app:v1", "v1")
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, ref)
        assert len(store.meta.chunk_pending()) == 3
        assert not store.meta.has_chunk_contents()
    ranged = [p for m, p, h in fake.requests("GET", "/blobs/") if h.get("Range")]
    assert ranged == []
    _assert_fsck_clean(other)


def test_a_load_of_variants_keeps_shared_content_once(lamina: Lamina, tmp_path: Path) -> None:
    """No delta path from an archive: the layers it brings that share content with one
    another (or with stored chunks) are cut as they are recorded; one sharing nothing
    stays whole."""

    lamina.run("import", "--compression", "zstd:chunked", "load/app:v1", _tree(tmp_path / "v1"))
    lamina.run("import", "--compression", "zstd:chunked", "load/app:v2",
               _tree(tmp_path / "v2", changed=True))
    _apart(lamina, tmp_path, "load/apart:v1")
    archive = tmp_path / "all.tar"
    lamina.run("save", "--format", "oci-archive", "-o", archive, "load/app:v1", "load/app:v2",
               "load/apart:v1")
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("load", archive)
    v1, v2, lone = (str(_layer(lamina, n)["digest"])
                    for n in ("load/app:v1", "load/app:v2", "load/apart:v1"))
    with Store(other.root) as store:
        assert [b for b, _ in store.meta.chunk_pending()] == [lone]
        for d in (v1, v2):
            assert store.blobs.chunked(Digest.parse(d)) is not None
        assert store.meta.has_chunk_contents()
    space = other.run("df", "--json").json()["storage"]
    assert space["ratio"] > 1.5      # two ~9 MB layers sharing all but a 1 MiB file
    _assert_fsck_clean(other)


def _apart(lamina: Lamina, tmp_path: Path, name: str) -> None:
    """``name``: a small chunked image sharing no content with ``_tree``'s."""
    import random

    apart = tmp_path / "apart"
    apart.mkdir()
    for i in range(10):
        (apart / f"x{i}").write_bytes(random.Random(-i).randbytes(30_000))
    lamina.run("import", "--compression", "zstd:chunked", name, apart)


def test_a_layer_sharing_nothing_is_left_whole_and_read_once(
        lamina: Lamina, registry: DockerRegistry, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A delta pull cuts only the layers kept whole that share content with it.  One
    that shares nothing has its TOC read the first time a pull looks for sharing, never
    again: later pulls ask the index (``pending_contents``)."""
    from lamina.layer import chunkmap

    _apart(lamina, tmp_path, "delta/apart:a")
    a_ref = f"{registry.host}/delta/apart:a"
    with Store(lamina.root) as store:
        push_image(store, "delta/apart:a", Reference.parse(a_ref))
    v1, v2 = _push_pair(lamina, registry, tmp_path, "delta/apart2", changed=True)
    a_layer = str(_layer(lamina, "delta/apart:a")["digest"])
    reads: list[str] = []
    real = chunkmap._kept_map

    def counting(store: Store, blob: str, marks: str) -> object:
        reads.append(blob)
        return real(store, blob, marks)

    monkeypatch.setattr(chunkmap, "_kept_map", counting)
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, Reference.parse(a_ref))
        pull_image(store, Reference.parse(v1))     # looks for sharing: reads a's TOC
        assert len(store.meta.chunk_pending()) == 2
        pull_image(store, Reference.parse(v2))     # cuts v1; a is in the index
        assert [b for b, _ in store.meta.chunk_pending()] == [a_layer]
        assert store.blobs.chunked(Digest.parse(a_layer)) is None
    assert reads.count(a_layer) == 1, reads
    _assert_fsck_clean(other)
