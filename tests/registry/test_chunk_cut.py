"""The cut of a chunked layer kept whole (``chunk_pending``) by the first delta pull that
shares it (``layer/chunkmap.cut_pending``, issue 11): two cutters at once, gc and
kill -9 between its steps, and a layer file damaged on disk before its cut.  Real
docker-registry, real CLI; the store must stay fsck-clean and the next pull reuse."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
import zstandard
from registry_servers import DockerRegistry, FakeRegistry, pull_image
from test_delta_pull import _assert_fsck_clean, _fake_pair, _layer, _pull, _push_pair

from lamina.digest import Digest
from lamina.image.reference import Reference
from lamina.layer.chunkmap import chunk_map, cut_pending, read_toc
from lamina.store.store import Store
from lamina_testing import LAMINA, Lamina

REPO = "cut/app"
Source = tuple[Lamina, str, str]


@pytest.fixture(scope="module")
def src(registry: DockerRegistry, tmp_path_factory: pytest.TempPathFactory) -> Source:
    """v1 and v2 (one 1 MiB file changed) of the tree, chunked, pushed once for the
    module to ``REPO``; the store that made them (its layers are the registry's)."""
    root = tmp_path_factory.mktemp("cut-src")
    lamina = Lamina(root / "store", root)
    v1, v2 = _push_pair(lamina, registry, root, REPO, changed=True)
    return lamina, v1, v2


def _v1_layer(lamina: Lamina, repo: str = REPO) -> tuple[Digest, dict[str, str]]:
    layer = _layer(lamina, f"{repo}:v1")
    annotations = layer["annotations"]
    assert isinstance(annotations, dict)
    return Digest.parse(str(layer["digest"])), annotations


def _rows_hold(root: Path) -> int:
    """Every ``chunk_contents`` row names a stored chunk that inflates to its content
    (what a delta planner trusts); returns how many rows."""
    with sqlite3.connect(root / "meta.db") as db:
        rows = db.execute("SELECT content, chunk, length FROM chunk_contents").fetchall()
    with Store(root) as store:
        for content, chunk, length in rows:
            frame = store.blobs.chunks.read_chunk(Digest.parse(chunk), length)
            plain = zstandard.ZstdDecompressor().decompressobj().decompress(frame)
            assert str(Digest.from_bytes(plain)) == content, (content, chunk)
    return len(rows)


def _packs(root: Path) -> list[tuple[int, int]]:
    """(inode, size) of each pack file."""
    return sorted((p.stat().st_ino, p.stat().st_size) for p in (root / "packs").glob("*.pack"))


def test_two_cutters_of_one_layer_at_once(src: Source, registry: DockerRegistry,
                                         tmp_path: Path) -> None:
    """Two delta pulls (threads here, lined up just before they look at the layer) cut
    the same pending layer at once: neither fails, the layer is cut once (one pack holds
    its frames, one name for its file), its rows hold, fsck is clean."""
    lamina, v1, v2 = src
    digest, _ = _v1_layer(lamina, REPO)
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", v1)
    toc_contents = set()
    with Store(lamina.root) as store:
        chunked = store.blobs.chunked(digest)
        assert chunked is not None
        _, annotations = _v1_layer(lamina, REPO)
        toc = read_toc(lambda off, n: chunked.pread(n, off), annotations, chunked.size)
        assert toc is not None
        toc_contents = {c for _, c in chunk_map(toc, chunked.size).contents}
    lined_up = threading.Barrier(2)
    errors: list[BaseException] = []
    cuts: list[int] = []

    def cutter() -> None:
        try:
            with Store(other.root) as store:
                cuts.append(cut_pending(store, toc_contents,
                                        lambda keys: lined_up.wait(10)))
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=cutter) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(cuts) == [0, 1], cuts
    with Store(other.root) as store:
        assert store.blobs.chunked(digest) is not None and store.meta.chunk_pending() == []
    assert len(_packs(other.root)) == 1, _packs(other.root)
    assert _rows_hold(other.root) > 0
    _assert_fsck_clean(other)
    _, out = _pull(other, registry, REPO, v2)
    assert "Reused" in out
    _assert_fsck_clean(other)


def test_two_pull_processes_cut_one_layer_at_once(src: Source, registry: DockerRegistry,
                                                  tmp_path: Path) -> None:
    """Two ``lamina pull`` of v2 at once into a store holding v1 whole: both complete,
    with the registry's blob, and the store is clean."""
    lamina, v1, v2 = src
    want = _layer(lamina, f"{REPO}:v2")["digest"]
    for round_ in range(2):
        other = Lamina(tmp_path / f"other{round_}", tmp_path)
        other.run("pull", v1)
        procs = [subprocess.Popen([LAMINA, "pull", v2], env=other.env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, (out, err)
        assert _layer(other, v2)["digest"] == want
        _assert_fsck_clean(other)
        assert _rows_hold(other.root) > 0


def _kill_at(step: str, store: Store, digest: Digest, annotations: dict[str, str]) -> None:
    """The store as a cut killed at ``step`` leaves it."""
    blob = store.blobs.path(digest)
    size = blob.stat().st_size
    with open(blob, "rb") as f:
        toc = read_toc(lambda off, n: os.pread(f.fileno(), n, off), annotations, size)
    assert toc is not None
    cmap = chunk_map(toc, size)
    if step == "after-rows":
        cut_pending(store, {c for _, c in cmap.contents}, lambda keys: None)
        store.meta.add_chunk_pending(str(digest), __import__("json").dumps(annotations))
        return
    store.blobs.put_chunked(digest, blob, cmap.spans, verified=True)
    (pack,) = (store.root / "packs").glob("*.pack")
    if step in ("before-recipe", "before-drop-whole"):
        os.link(pack, blob)            # the whole file is still there (same inode)
    if step == "before-recipe":
        store.blobs.chunks.recipe_path(digest).unlink()


@pytest.mark.parametrize("step", ["before-recipe", "before-drop-whole", "before-rows",
                                  "after-rows"])
def test_a_cut_killed_at_each_step_then_gc(src: Source, registry: DockerRegistry,
                                          tmp_path: Path, step: str) -> None:
    """kill -9 at each step of a cut (left as the step leaves it), then ``lamina gc``: fsck
    is clean, no blob is lost, and the next delta pull completes and reuses v1."""
    repo = REPO
    lamina, v1, v2 = src
    digest, annotations = _v1_layer(lamina, repo)
    other = Lamina(tmp_path / "other", tmp_path)
    with Store(other.root) as store:
        pull_image(store, Reference.parse(v1))
        _kill_at(step, store, digest, annotations)
    _assert_fsck_clean(other)
    other.run("gc")
    _assert_fsck_clean(other)
    with Store(other.root) as store:
        assert store.blobs.has(digest)
    fetched, out = _pull(other, registry, repo, v2)
    assert "Reused" in out and fetched < int(str(_layer(lamina, f"{repo}:v1")["size"])) // 4
    with Store(other.root) as store:
        assert store.meta.chunk_pending() == [] and store.blobs.chunked(digest) is not None
        assert len(store.blobs.read_bytes(digest)) == int(str(_layer(lamina, f"{repo}:v1")["size"]))
    assert _rows_hold(other.root) > 0
    other.run("gc")
    _assert_fsck_clean(other)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_pending_layer_damaged_on_disk_is_not_cut(src: Source, registry: DockerRegistry,
                                                   tmp_path: Path, damage: str) -> None:
    """v1 kept whole has one byte flipped inside a payload frame (or loses its last
    byte) before a delta pull of v2 would cut it: the cut checks the file against its
    digest first, so nothing of it is cut or recorded (no row names a frame that does
    not inflate to its content); v2 is fetched whole, exactly; fsck names v1 alone, and
    ``fsck --repair`` then a pull of v1 make the store whole again."""
    repo = REPO
    lamina, v1, v2 = src
    digest, annotations = _v1_layer(lamina, repo)
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", v1)
    path = other.root / "blobs" / "sha256" / digest.encoded
    os.chmod(path, 0o644)
    if damage == "flipped":
        data = path.read_bytes()
        toc = read_toc(lambda off, n: data[off:off + n], annotations, len(data))
        assert toc is not None
        frame = next(e for e in toc.entries if e.name == "big0.bin").chunks[0]
        with open(path, "r+b") as f:
            f.seek(frame.offset + 100)
            byte = f.read(1)
            f.seek(frame.offset + 100)
            f.write(bytes([byte[0] ^ 1]))
    else:
        os.truncate(path, path.stat().st_size - 1)
    other.run("pull", v2)
    assert _layer(other, v2)["digest"] == _layer(lamina, f"{repo}:v2")["digest"]
    _rows_hold(other.root)
    with Store(other.root) as store:
        assert store.blobs.chunked(digest) is None     # left whole, for fsck to judge
        assert str(digest) not in [b for b, _ in store.meta.chunk_pending()]
    fsck = other.run("fsck", "--json", check=False).json()
    assert fsck["corrupt"] == [str(digest)] and not fsck["corrupt_chunks"], fsck
    other.run("fsck", "--repair")
    other.run("pull", v1)
    _assert_fsck_clean(other)
    _rows_hold(other.root)



@pytest.mark.parametrize("fmt", ["oci-archive", "docker-oci-archive", "docker-archive"])
def test_load_then_delta_pull(src: Source, registry: DockerRegistry, tmp_path: Path,
                              fmt: str) -> None:
    """v1 saved and loaded into a fresh store: from an OCI archive (the descriptor's TOC
    annotations come along) it is kept whole and listed, and the delta pull of v2 cuts
    and reuses it; a docker archive has no annotations, so v2 is fetched whole.  Either
    way v2 is the registry's blob and fsck is clean."""
    repo = REPO
    lamina, v1, v2 = src
    digest, _ = _v1_layer(lamina, repo)
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", v1)
    archive = tmp_path / "v1.tar"
    other.run("save", "--format", fmt, "-o", archive, v1)
    fresh = Lamina(tmp_path / "fresh", tmp_path)
    fresh.run("load", archive)
    chunked = fmt != "docker-archive"
    with Store(fresh.root) as store:
        assert [b for b, _ in store.meta.chunk_pending()] == ([str(digest)] if chunked else [])
    size = int(str(_layer(lamina, f"{repo}:v2")["size"]))
    fetched, out = _pull(fresh, registry, repo, v2)
    assert ("Reused" in out) == chunked, out
    assert (fetched < size // 4) == chunked, (fetched, size)
    assert _layer(fresh, v2)["digest"] == _layer(lamina, f"{repo}:v2")["digest"]
    _assert_fsck_clean(fresh)
    if chunked:
        assert _rows_hold(fresh.root) > 0


def test_a_cut_layer_shared_by_two_images_survives_rmi_gc_and_leaves_exact(
        src: Source, registry: DockerRegistry, tmp_path: Path) -> None:
    """v1's layer (kept whole, then cut by the delta pull of v2) is in two images: after
    ``rmi`` of one and of v2 and ``gc``, the other still reads it; ``save`` and ``push``
    hand out the registry's exact bytes (its digest), and after the last ``rmi`` and
    ``gc`` nothing of it is left."""
    from registry_servers import DockerRegistry as Registry

    repo = REPO
    lamina, v1, v2 = src
    digest, _ = _v1_layer(lamina, repo)
    size = int(str(_layer(lamina, f"{repo}:v1")["size"]))
    other = Lamina(tmp_path / "other", tmp_path)
    other.run("pull", v1)
    other.run("tag", v1, "mine/copy:1")
    other.run("pull", v2)
    with Store(other.root) as store:
        assert store.blobs.chunked(digest) is not None       # cut
    other.run("rmi", v1)
    other.run("rmi", v2)
    other.run("gc")
    _assert_fsck_clean(other)
    with Store(other.root) as store:
        assert len(store.blobs.read_bytes(digest, size)) == size     # digest checked
    layout = tmp_path / "saved"
    other.run("save", "--format", "oci", "-o", layout, "mine/copy:1")
    saved = layout / "blobs" / "sha256" / digest.encoded
    assert Digest.from_bytes(saved.read_bytes()) == digest
    second = Registry(tmp_path / "second").start()
    try:
        other.run("push", "mine/copy:1", f"{second.host}/again:1")
        pulled = Lamina(tmp_path / "third", tmp_path)
        pulled.run("pull", f"{second.host}/again:1")
        with Store(pulled.root) as store:
            assert Digest.from_bytes(store.blobs.read_bytes(digest, size)) == digest
    finally:
        second.stop()
    other.run("rmi", "mine/copy:1")
    other.run("gc")
    _assert_fsck_clean(other)
    with Store(other.root) as store:
        assert not store.blobs.has(digest) and store.meta.chunk_pending() == []
        assert not list(store.blobs.chunks.chunks())


def test_gc_while_a_delta_pull_cuts(src: Source, registry: DockerRegistry,
                                    tmp_path: Path) -> None:
    """``lamina gc`` runs again and again while ``lamina pull`` of v2 cuts v1 (whose image
    was removed: only the pull's lease keeps it): the pull completes with the
    registry's blob, fsck is clean, and v1's frames v2 uses are all still there."""
    repo = REPO
    lamina, v1, v2 = src
    want = _layer(lamina, f"{repo}:v2")["digest"]
    for round_ in range(2):
        other = Lamina(tmp_path / f"other{round_}", tmp_path)
        other.run("pull", v1)
        if round_:
            other.run("rmi", v1)
        pull = subprocess.Popen([LAMINA, "pull", v2], env=other.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gcs = 0
        while pull.poll() is None and gcs < 50:
            other.run("gc")
            gcs += 1
        out, err = pull.communicate(timeout=120)
        assert pull.returncode == 0, (out, err)
        assert _layer(other, v2)["digest"] == want
        _assert_fsck_clean(other)
        other.run("gc")
        _assert_fsck_clean(other)
        with Store(other.root) as store:
            digest = Digest.parse(str(want))
            assert Digest.from_bytes(store.blobs.read_bytes(digest)) == digest


def test_a_toc_position_past_the_limit_is_refused_before_it_is_read() -> None:
    """A descriptor (a pending row keeps the registry's) whose TOC position names more
    than the TOC limit, inside a big blob: ``read_toc`` says so in one line without
    reading those bytes (the cut of a 4 GB layer must not read 3 GB into memory)."""
    from lamina.errors import InvalidInput
    from lamina.layer.zstdchunked import CHECKSUM_ANNOTATION, MAX_TOC_SIZE, POSITION_ANNOTATION

    asked: list[int] = []

    def read_at(offset: int, n: int) -> bytes:
        asked.append(n)
        return bytes(min(n, 1 << 20))

    length = 4 * MAX_TOC_SIZE
    annotations = {CHECKSUM_ANNOTATION: "sha256:" + "0" * 64,
                   POSITION_ANNOTATION: f"100:{length}:{MAX_TOC_SIZE}:1"}
    with pytest.raises(InvalidInput, match="larger than the 64 MiB limit"):
        read_toc(read_at, annotations, 8 * MAX_TOC_SIZE)
    assert all(n <= MAX_TOC_SIZE for n in asked), asked


def test_two_delta_pulls_of_one_layer_leave_its_frames_once_after_gc(
        lamina: Lamina, fake: FakeRegistry, tmp_path: Path) -> None:
    """Two ``lamina pull`` of v2 at once (the fake dribbles v2's ranges, so both may fetch
    the changed frames before either has stored them) may each write them into a pack
    of their own; a copy of a pack stands for that where they did not.  The next ``gc``
    keeps one copy of each chunk; the store stays clean and v2 reads back exactly."""
    import shutil

    v1, v2, other = _fake_pair(lamina, fake, tmp_path, "dup/app")
    digest = Digest.parse(str(_layer(lamina, "dup/app:v2")["digest"]))
    other.run("pull", str(v1))
    fake.slow[str(digest)] = (16 << 10, 0.02, 0)
    procs = [subprocess.Popen([LAMINA, "pull", str(v2)], env=other.env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (out, err)
    fake.slow.clear()
    small = min((other.root / "packs").glob("*.pack"), key=lambda p: p.stat().st_size)
    for ext in ("pack", "idx"):
        shutil.copy(small.with_suffix(f".{ext}"), small.with_name(f"{'0' * 32}.{ext}"))
    _assert_fsck_clean(other)
    other.run("gc")
    _assert_fsck_clean(other)
    with Store(other.root) as store:
        held = [str(e.digest) for entries in store.blobs.chunks.packs.packs().values()
                for e in entries]
        assert len(held) == len(set(held)), len(held) - len(set(held))
        assert Digest.from_bytes(store.blobs.read_bytes(digest)) == digest
    assert len(_packs(other.root)) == 2
