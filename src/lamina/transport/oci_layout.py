"""OCI image layouts (image-spec image-layout.md), as a directory or a tar of one.

Names: each entry of ``index.json`` may carry ``org.opencontainers.image.ref.name``,
which skopeo and umoci treat as the tag (``oci:DIR:TAG``), and containerd/Docker add
``io.containerd.image.name`` with the full reference.  lamina writes both, and on reading
prefers the full name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from lamina.digest import VerifyingReader
from lamina.errors import InvalidInput, InvalidManifest, NotFound
from lamina.image import mediatypes as mt
from lamina.image.jsondoc import load_object
from lamina.image.manifest import MAX_MANIFEST_BYTES, Descriptor, Index, build_index, parse
from lamina.image.reference import Reference
from lamina.transport.base import NamedImage, Progress
from lamina.transport.filetree import DirWriter, FileTree, TarWriter, TreeWriter, open_tree

if TYPE_CHECKING:
    from lamina.store.store import Store
    from lamina.transport.delta import BlobRanges
    from lamina.transport.layout_delta import LayoutDelta

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}


def blob_name(desc: Descriptor) -> str:
    return f"blobs/{desc.digest.algorithm}/{desc.digest.encoded}"


def is_oci_layout(tree: FileTree) -> bool:
    return tree.exists(LAYOUT_FILE) and tree.exists("index.json")


def read_index(tree: FileTree) -> Index:
    if tree.size("index.json") > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"{tree.where}: index.json is over the 4 MiB limit")
    with tree.open("index.json") as f:
        raw = f.read()
    doc = parse(raw, mt.OCI_INDEX, what=f"{tree.where}: index.json")
    if not isinstance(doc, Index):
        raise InvalidManifest(f"{tree.where}: index.json is not an image index")
    return doc


def _names(entry: Descriptor, ref: Reference) -> bool:
    """Whether an index entry is named ``ref``: its full name as a reference (an entry
    written ``test/img:latest`` is ``docker.io/test/img:latest``, as ``resolve`` reads
    it), else its bare ref.name as the tag."""
    full = entry.annotations.get(CONTAINERD_NAME)
    if full is None:
        return entry.annotations.get(REF_NAME) in (str(ref), ref.tag)
    try:
        return Reference.parse(full) == ref
    except InvalidInput:        # not a reference: only the same text names it
        return full == str(ref)


def _looks_like_ref(text: str) -> bool:
    return any(c in text for c in ":/@")


def entry_name(desc: Descriptor) -> str | None:
    return desc.annotations.get(CONTAINERD_NAME) or desc.annotations.get(REF_NAME)


class OciLayoutSource:
    def __init__(self, tree: FileTree) -> None:
        self.tree = tree
        if not tree.exists(LAYOUT_FILE):
            raise InvalidInput(f"{tree.where} is not an OCI image layout (no oci-layout file)")
        if tree.size(LAYOUT_FILE) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"{tree.where}: oci-layout is over the 4 MiB limit")
        with tree.open(LAYOUT_FILE) as f:
            version = load_object(f.read(), f"{tree.where}: oci-layout").get(
                "imageLayoutVersion")
        if not isinstance(version, str) or not version.startswith("1."):
            raise InvalidInput(f"{tree.where}: unsupported imageLayoutVersion {version!r}")
        self.index = read_index(tree)

    @classmethod
    def open(cls, path: Path, tmpdir: Path | None = None) -> OciLayoutSource:
        return cls(open_tree(path, tmpdir))

    def images(self) -> list[NamedImage]:
        return [NamedImage(entry_name(d), d) for d in self.index.manifests]

    def resolve(self, name: str | None) -> Descriptor:
        entries = self.index.manifests
        if name is None:
            if len(entries) == 1:
                return entries[0]
            raise InvalidInput(f"{self.tree.where} holds {len(entries)} images: name one")
        for d in entries:
            if name in (d.annotations.get(REF_NAME), d.annotations.get(CONTAINERD_NAME)):
                return d
        # A full reference matches an entry that carries only its tag, or its full name.
        try:
            ref = Reference.parse(name)
        except Exception:  # noqa: BLE001 - not a reference: nothing more to try
            ref = None
        if ref is not None:
            for d in entries:
                full = d.annotations.get(CONTAINERD_NAME)
                if full and Reference.parse(full) == ref:
                    return d
        raise NotFound(f"{self.tree.where}: no image named {name!r}")

    def has_blob(self, desc: Descriptor) -> bool:
        """Whether the layout holds the blob (an incremental save leaves layers out)."""
        return self.tree.exists(blob_name(desc))

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        try:
            f = self.tree.open(blob_name(desc))
        except NotFound:
            raise NotFound(f"{self.tree.where}: blob {desc.digest} is missing") from None
        return VerifyingReader(f, desc.digest, desc.size, what=f"{self.tree.where}: blob")

    def close(self) -> None:
        self.tree.close()


class OciLayoutSink:
    """Writes an OCI layout into a TreeWriter (directory or tar).

    Names: each top-level manifest gets ``ref.name`` = its tag and
    ``io.containerd.image.name`` = the full reference, as ``docker save`` (v25+) writes.
    Writing into an existing layout directory keeps its other entries, and replaces an
    entry whose ref.name is rewritten (as skopeo does).
    """

    accepts_index = True

    def __init__(self, writer: TreeWriter, existing: list[Descriptor] | None = None,
                 store: Store | None = None) -> None:
        """``store``: the local store, whose chunks a delta copy may reuse too."""
        self.writer = writer
        self.store = store
        self.entries: list[Descriptor] = list(existing or [])
        # index.json's own annotations (an incremental save marks what it left out)
        self.annotations: dict[str, str] = {}
        self._delta: LayoutDelta | None = None   # made at the first chunked layer

    @classmethod
    def to_dir(cls, path: Path, store: Store | None = None) -> OciLayoutSink:
        existing: list[Descriptor] = []
        if path.exists() and not path.is_dir():
            raise InvalidInput(f"{path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            tree = open_tree(path)
            if not is_oci_layout(tree):
                raise InvalidInput(f"{path} is a non-empty directory that is not an OCI layout")
            existing = list(read_index(tree).manifests)
        return cls(DirWriter(path), existing, store)

    @classmethod
    def to_tar(cls, path: Path) -> OciLayoutSink:
        return cls(TarWriter(path))

    def has_blob(self, desc: Descriptor) -> bool:
        return self.writer.has(blob_name(desc))

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        self.writer.add(blob_name(desc), desc.size, stream)  # type: ignore[arg-type]
        if isinstance(stream, VerifyingReader):
            stream.verify()

    def put_blob_delta(self, desc: Descriptor, ranges: BlobRanges,
                       progress: Progress | None = None) -> int | None:
        """A zstd:chunked layer into a layout directory, fetching only the frames
        neither the layout's own chunked blobs nor the store hold
        (transport/layout_delta.py): the bytes not fetched, or None when the caller must
        fetch it whole.  An archive (``oci-archive:``) is written anew each time: it
        holds nothing to reuse."""
        if not isinstance(self.writer, DirWriter) or not desc.annotations:
            return None
        from lamina.transport.layout_delta import LayoutDelta

        if self._delta is None:
            self._delta = LayoutDelta(self.writer, self.store)
        return self._delta.put(desc, ranges, progress)

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        if not self.writer.has(blob_name(desc)):
            self.writer.add_bytes(blob_name(desc), raw)
        if names is None:
            return  # a child of an index: reachable through it, not an entry of its own
        plain = Descriptor(desc.media_type, desc.digest, desc.size, platform=desc.platform)
        if not names:
            if not any(e.digest == desc.digest for e in self.entries):
                self.entries.append(plain)
            return
        for name in names:
            ref = Reference.parse(name)
            annotations: dict[str, Any] = {CONTAINERD_NAME: str(ref)}
            if ref.tag:
                annotations[REF_NAME] = ref.tag
            entry = plain.with_annotations(annotations)
            self.entries = [e for e in self.entries if not _names(e, ref)]
            self.entries.append(entry)
        self._disambiguate()

    def _disambiguate(self) -> None:
        """umoci and skopeo pick an image by ``ref.name`` alone: when two entries share
        a tag (demo/a:latest and demo/b:latest), that tag would name either.  Clashing
        entries get their familiar reference as ``ref.name`` instead (``demo/b:latest``,
        which ``umoci unpack --image L:demo/b:latest`` and ``oci:L:demo/b:latest`` take)."""
        by_tag: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            tag = e.annotations.get(REF_NAME)
            if tag is not None and e.annotations.get(CONTAINERD_NAME):
                by_tag.setdefault(tag, []).append(i)
        for tag, idxs in by_tag.items():
            if len(idxs) < 2 or _looks_like_ref(tag):
                continue
            for i in idxs:
                e = self.entries[i]
                full = Reference.parse(e.annotations[CONTAINERD_NAME])
                self.entries[i] = e.with_annotations({**e.annotations,
                                                      REF_NAME: full.familiar})

    def close(self) -> None:
        if self._delta is not None:
            self._delta.close()
        self.writer.add_bytes(LAYOUT_FILE, json.dumps(LAYOUT_VERSION).encode())
        self.writer.add_bytes("index.json",
                              build_index(self.entries, annotations=self.annotations).raw)
        self.writer.finish()

    def abort(self) -> None:
        if self._delta is not None:
            self._delta.close()
        self.writer.abort()
