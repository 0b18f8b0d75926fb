"""``docker save`` archives, read and written, in both of their layouts.

Classic (Docker < 25, skopeo's ``docker-archive:``)::

    manifest.json        [{"Config": "<hex>.json", "RepoTags": ["busybox:latest"],
                           "Layers": ["<hex>.tar" or "<v1 id>/layer.tar", ...]}]
    repositories         {"busybox": {"latest": "<top layer id>"}}   (legacy, informational)
    <hex>.json           the image config, byte for byte: its digest is the image id
    <hex>.tar ...        the layers, normally uncompressed (docker load also takes
                         gzip/zstd files, told apart by their magic bytes)

OCI-based (Docker >= 25): an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/...``) plus the same ``manifest.json`` and ``repositories``, whose paths
point into ``blobs/sha256/``.  Its index entries carry ``io.containerd.image.name``.

Reading.  The OCI-based form has real manifests: they are served as they are, so their
digests survive a round trip.  A classic archive has none, so one is synthesised per
``manifest.json`` entry: an OCI image manifest whose config is the config file's exact
bytes and whose layers are the layer files as they are.  An uncompressed layer's digest
is the config's diff_id at its position, *claimed, not computed*: the VerifyingReader
returned by ``open_blob`` checks it while the bytes stream, so opening a large archive
costs no hashing pass.  A compressed layer file has no digest on record, so it is hashed
once at open.  The synthesised manifest depends only on the archive's content, so reading
the same archive twice gives the same manifest digest.

Writing.  ``copy_image`` sends the config first, then the layers, then the manifest.
Classic archives hold layers uncompressed, named by diff_id (``<diff_id hex>.tar``, as
skopeo names them); a compressed layer is decompressed into a spool file next to the
output (a tar member needs its size before its bytes), hashed on the way to learn its
diff_id, and checked against the config.  ``close`` writes ``manifest.json`` and
``repositories``.  A layer shared by several images in one archive is written once.

``repositories`` maps each familiar repository name and tag to the top layer's id.
Docker >= 25 writes the top layer's diff_id hex there; skopeo instead writes a
synthesised v1 layer id and per-layer ``<id>/{json,VERSION,layer.tar}`` legacy folders
for Docker < 1.10.  Every loader since Docker 1.10 (and skopeo) reads ``manifest.json``
and ignores ``repositories`` when both are present, so lamina writes the diff_id form and
no legacy folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from lamina.digest import CHUNK, Digest, HashingWriter, Readable, VerifyingReader, read_full
from lamina.errors import (
    IntegrityError,
    InvalidInput,
    InvalidManifest,
    InvalidReference,
    LaminaError,
    NotFound,
    Unsupported,
)
from lamina.image import mediatypes as mt
from lamina.image.config import ImageConfig, parse_config
from lamina.image.jsondoc import load_json
from lamina.image.manifest import (
    MAX_MANIFEST_BYTES,
    Descriptor,
    Index,
    Manifest,
    build_manifest,
    dumps,
    parse,
)
from lamina.image.reference import Reference
from lamina.layer import open_tar_stream
from lamina.layer.compress import detect
from lamina.transport.base import NamedImage, Progress, read_blob
from lamina.transport.filetree import (
    DirWriter,
    FileTree,
    TarWriter,
    TreeWriter,
    clean_name,
    open_tree,
)
from lamina.transport.oci_layout import (
    CONTAINERD_NAME,
    REF_NAME,
    OciLayoutSink,
    OciLayoutSource,
    blob_name,
    is_oci_layout,
)

MANIFEST_FILE = "manifest.json"
REPOSITORIES_FILE = "repositories"
# manifest.json lists every image of the archive; far larger than one manifest can be,
# but still bounded so a hostile archive cannot make us read gigabytes of JSON.
MAX_ARCHIVE_MANIFEST_BYTES = 64 * 1024 * 1024

__all__ = ["ArchiveItem", "DockerArchiveSink", "DockerArchiveSource", "is_docker_archive",
           "read_archive_manifest"]


# ------------------------------------------------------------------------ manifest.json


@dataclass(frozen=True)
class ArchiveItem:
    """One entry of ``manifest.json``: member names as written (not yet cleaned)."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


def read_archive_manifest(tree: FileTree) -> list[ArchiveItem]:
    """Parse and check the shape of ``manifest.json``; raise InvalidManifest naming the
    archive when it is not the list ``docker save`` writes."""
    where = f"{tree.where}: {MANIFEST_FILE}"
    if tree.size(MANIFEST_FILE) > MAX_ARCHIVE_MANIFEST_BYTES:
        raise InvalidManifest(f"{where} is over {MAX_ARCHIVE_MANIFEST_BYTES} bytes")
    with tree.open(MANIFEST_FILE) as f:
        raw = f.read()
    doc = load_json(raw, where)
    if not isinstance(doc, list):
        raise InvalidManifest(f"{where} must be a JSON list of images")
    items = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise InvalidManifest(f"{where}: entry {i} is not an object")
        config = entry.get("Config")
        if not isinstance(config, str) or not config:
            raise InvalidManifest(f"{where}: entry {i} has no Config file name")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers):
            raise InvalidManifest(f"{where}: entry {i}: Layers must be a list of file names")
        # docker save writes null for an image saved by id; skopeo writes [].
        tags = entry.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidManifest(f"{where}: entry {i}: RepoTags must be a list of strings")
        items.append(ArchiveItem(config, tuple(tags), tuple(layers)))
    return items


def is_docker_archive(tree: FileTree) -> bool:
    """True if ``tree`` holds a ``manifest.json`` of the ``docker save`` shape."""
    if not tree.exists(MANIFEST_FILE):
        return False
    try:
        read_archive_manifest(tree)
    except LaminaError:
        return False
    return True




def _normalise(name: str, where: str) -> str:
    try:
        return str(Reference.parse(name))
    except InvalidReference as e:
        raise InvalidManifest(f"{where}: {e}") from None


# ------------------------------------------------------------------------------ reading


class DockerArchiveSource:
    """A ``docker save`` archive (either layout) as an ImageSource.

    Everything the archive claims is checked when the source is opened (shape of
    manifest.json, presence of every config and layer file, layer count against the
    config's diff_ids, member names); the bytes of the layers are checked as they are
    read."""

    def __init__(self, tree: FileTree) -> None:
        self.tree = tree
        where = tree.where
        if not tree.exists(MANIFEST_FILE):
            if tree.exists(REPOSITORIES_FILE):
                raise Unsupported(f"{where} was written by Docker older than 1.10 "
                                  "(no manifest.json); re-save it with a newer Docker")
            raise InvalidInput(f"{where} is not a docker save archive (no {MANIFEST_FILE})")
        self.items = read_archive_manifest(tree)
        # digest -> bytes of manifests this source made up (classic entries)
        self._synth: dict[Digest, bytes] = {}
        # digest -> member holding the blob (configs and layers of classic entries)
        self._files: dict[Digest, str] = {}
        # cleaned layer member -> its descriptor, so a layer shared by several entries is
        # sniffed (and, if compressed, hashed) once
        self._layer_descs: dict[str, Descriptor] = {}
        self._oci: OciLayoutSource | None = None
        self._images: list[NamedImage] = []
        covered: set[str] = set()
        if is_oci_layout(tree):
            self._oci = OciLayoutSource(tree)
            covered = self._read_oci_entries()
        for i, item in enumerate(self.items):
            if clean_name(item.config) in covered:
                continue
            manifest = self._synthesise(item, i)
            desc = manifest.descriptor()
            names = [_normalise(t, f"{where}: {MANIFEST_FILE}") for t in item.repo_tags]
            if not names:
                self._images.append(NamedImage(None, desc))
            self._images.extend(NamedImage(n, desc) for n in names)

    @classmethod
    def open(cls, path: Path, tmpdir: Path | None = None) -> DockerArchiveSource:
        """Open a directory or a tar (plain, gzip or zstd) written by ``docker save``."""
        tree = open_tree(path, tmpdir)
        try:
            return cls(tree)
        except BaseException:
            tree.close()
            raise

    # -- the OCI-based layout (Docker >= 25) ------------------------------------------
    def _read_oci_entries(self) -> set[str]:
        """Name the index.json entries; return the config members they cover, so that
        manifest.json entries without an index entry still get synthesised."""
        assert self._oci is not None
        where = self.tree.where
        by_config: dict[str, list[str]] = {}
        for item in self.items:
            by_config.setdefault(clean_name(item.config), []).extend(item.repo_tags)
        covered: set[str] = set()
        for entry in self._oci.index.manifests:
            configs = self._configs_under(entry, depth=0)
            covered.update(configs)
            full = entry.annotations.get(CONTAINERD_NAME)
            if full:
                self._images.append(NamedImage(_normalise(full, f"{where}: index.json"), entry))
                continue
            tags = [t for c in configs for t in by_config.get(c, [])]
            if tags:
                self._images.extend(
                    NamedImage(_normalise(t, f"{where}: {MANIFEST_FILE}"), entry)
                    for t in dict.fromkeys(tags))
                continue
            self._images.append(NamedImage(entry.annotations.get(REF_NAME), entry))
        return covered

    def _configs_under(self, desc: Descriptor, depth: int) -> list[str]:
        """Config members reachable from an index entry (through nested indexes)."""
        assert self._oci is not None
        if depth > 4 or not self.tree.exists(blob_name(desc)):
            # multi-platform indexes routinely name platforms that were not saved
            return []
        if desc.media_type not in mt.MANIFESTS | mt.INDEXES:
            return []
        doc = parse(read_blob(self._oci, desc), desc.media_type,
                    what=f"{self.tree.where}: manifest {desc.digest}")
        if isinstance(doc, Manifest):
            return [blob_name(doc.config)]
        return [c for d in doc.manifests for c in self._configs_under(d, depth + 1)]

    # -- classic entries ----------------------------------------------------------------
    def _member(self, name: str, what: str, index: int) -> str:
        clean = clean_name(name)  # refuses "..": UnsafeArchive
        if not clean or not self.tree.exists(clean):
            raise NotFound(f"{self.tree.where}: {what} {name!r} of {MANIFEST_FILE} entry "
                           f"{index} is missing from the archive")
        return clean

    def _synthesise(self, item: ArchiveItem, index: int) -> Manifest:
        where = self.tree.where
        config_name = self._member(item.config, "config file", index)
        size = self.tree.size(config_name)
        if size > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"{where}: config {config_name} is {size} bytes, over the "
                                  "4 MiB limit")
        with self.tree.open(config_name) as f:
            raw = f.read()
        # Kept byte for byte: its digest is the image id Docker shows.
        config = parse_config(raw, what=f"{where}: {config_name}")
        if len(item.layers) != len(config.diff_ids):
            raise InvalidManifest(
                f"{where}: {MANIFEST_FILE} entry {index} lists {len(item.layers)} layers but "
                f"its config {config_name} has {len(config.diff_ids)} diff_ids")
        config_desc = Descriptor(mt.OCI_CONFIG, Digest.from_bytes(raw), len(raw))
        self._files[config_desc.digest] = config_name
        layers = [self._layer(self._member(name, "layer file", index), diff_id)
                  for name, diff_id in zip(item.layers, config.diff_ids, strict=True)]
        manifest = build_manifest(config_desc, layers)
        self._synth[manifest.digest] = manifest.raw
        return manifest

    def _layer(self, member: str, diff_id: Digest) -> Descriptor:
        known = self._layer_descs.get(member)
        if known is not None:
            return known
        with self.tree.open(member) as f:
            kind = detect(read_full(f, 4))
        if kind == "none":
            # Uncompressed: the file's digest must be the diff_id.  Claimed here,
            # verified by open_blob's reader as the bytes go by.
            desc = Descriptor(mt.OCI_LAYER, diff_id, self.tree.size(member))
        else:
            h = hashlib.sha256()
            size = 0
            with self.tree.open(member) as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    size += len(chunk)
            desc = Descriptor(mt.layer_media_type(kind), Digest.from_hasher(h), size)
        self._layer_descs[member] = desc
        self._files.setdefault(desc.digest, member)
        return desc

    # -- ImageSource --------------------------------------------------------------------
    def images(self) -> list[NamedImage]:
        return list(self._images)

    def resolve(self, name: str | None) -> Descriptor:
        """``None`` for the only image; else a name as in RepoTags or the index (familiar
        or full), or a manifest digest."""
        where = self.tree.where
        if name is None:
            distinct = {i.descriptor.digest: i.descriptor for i in self._images}
            if len(distinct) == 1:
                return next(iter(distinct.values()))
            raise InvalidInput(f"{where} holds {len(distinct)} images: name one")
        wanted = {name}
        with contextlib.suppress(InvalidReference):
            wanted.add(str(Reference.parse(name)))
        for image in self._images:
            if image.name in wanted:
                return image.descriptor
        for image in self._images:
            if str(image.descriptor.digest) == name:
                return image.descriptor
        raise NotFound(f"{where}: no image named {name!r}")

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        where = self.tree.where
        raw = self._synth.get(desc.digest)
        if raw is not None:
            return VerifyingReader(io.BytesIO(raw), desc.digest, desc.size,
                                   what=f"{where}: manifest")
        member = self._files.get(desc.digest)
        if member is not None:
            return VerifyingReader(self.tree.open(member), desc.digest, desc.size,
                                   what=f"{where}: {member}")
        if self._oci is not None:
            return self._oci.open_blob(desc)
        raise NotFound(f"{where}: blob {desc.digest} is not in the archive")

    def close(self) -> None:
        self.tree.close()


# ------------------------------------------------------------------------------ writing


@dataclass
class _Item:
    config: str
    layers: list[str]
    repo_tags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"Config": self.config, "RepoTags": self.repo_tags, "Layers": self.layers}


class _Prefixed:
    """Gives back the sniffed magic bytes before the rest of the stream.

    Every read is filled to ``n`` bytes unless the stream ends: ``tarfile.addfile``
    takes a short read for the end of the data."""

    def __init__(self, head: bytes, raw: Readable) -> None:
        self._head = head
        self._raw = raw

    def read(self, n: int = -1, /) -> bytes:
        head, self._head = (self._head, b"") if n < 0 else (self._head[:n], self._head[n:])
        if n < 0:
            return head + self._raw.read()
        return head + read_full(self._raw, n - len(head))


class _Counting:
    """Reports bytes read to a progress callback (the bytes of the blob as sent)."""

    def __init__(self, raw: Readable, total: int, progress: Progress | None) -> None:
        self._raw = raw
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, n: int = -1, /) -> bytes:
        data = self._raw.read(n)
        if data and self._progress is not None:
            self._done += len(data)
            self._progress(self._done, self._total)
        return data


class DockerArchiveSink:
    """Writes a ``docker save`` archive (classic, or Docker >= 25's OCI-based layout
    with ``oci=True``) into a directory or a tar.

    Holds one platform per image (``accepts_index = False``): copy picks the platform.
    Several images may be written before ``close``; shared layers are written once."""

    accepts_index = False

    def __init__(self, writer: TreeWriter, oci: bool = False,
                 spool_parent: Path | None = None) -> None:
        self.writer = writer
        self.oci = oci
        self._layout = OciLayoutSink(writer) if oci else None
        self._spool_parent = spool_parent
        self._spool: Path | None = None
        self._configs: dict[Digest, ImageConfig] = {}
        # layer digest -> diff_id of what was written (classic archives only)
        self._diff_ids: dict[Digest, Digest] = {}
        # every diff_id any config seen so far lists: lets put_blob refuse a layer that
        # belongs to no image before it is written, instead of at put_manifest
        self._expected: set[Digest] = set()
        self._items: list[_Item] = []
        self._repositories: dict[str, dict[str, str]] = {}
        self._closed = False

    @classmethod
    def to_tar(cls, path: Path, oci: bool = False) -> DockerArchiveSink:
        if path.is_dir():
            raise InvalidInput(f"{path} is a directory: name a file for the archive")
        return cls(TarWriter(path), oci, path.parent)

    @classmethod
    def to_dir(cls, path: Path, oci: bool = False) -> DockerArchiveSink:
        if path.exists() and not path.is_dir():
            raise InvalidInput(f"{path} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()):
            raise InvalidInput(f"{path} is not empty: a docker archive needs an empty "
                               "directory")
        return cls(DirWriter(path), oci, path.parent)

    # -- blobs --------------------------------------------------------------------------
    def has_blob(self, desc: Descriptor) -> bool:
        if self._layout is not None:
            return self._layout.has_blob(desc)
        return desc.digest in self._configs or desc.digest in self._diff_ids

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        reader = stream if isinstance(stream, VerifyingReader) else VerifyingReader(
            stream, desc.digest, desc.size, what=f"blob {desc.digest}")
        if desc.media_type in mt.CONFIGS:
            self._put_config(desc, reader)
        elif self._layout is not None:
            self._layout.put_blob(desc, reader, progress)
        elif mt.is_layer(desc.media_type):
            self._put_layer(desc, reader, progress)
        else:
            raise Unsupported(f"a docker archive cannot hold blob {desc.digest} of type "
                              f"{desc.media_type} (only image configs and layers)")

    def _put_config(self, desc: Descriptor, reader: VerifyingReader) -> None:
        if desc.size > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"config {desc.digest} is {desc.size} bytes, over the "
                                  "4 MiB limit")
        raw = reader.read()
        reader.verify()
        config = parse_config(raw, what=f"config {desc.digest}")
        if self._layout is not None:
            self._layout.put_blob(desc, io.BytesIO(raw))
        else:
            self.writer.add_bytes(f"{desc.digest.encoded}.json", raw)
        self._configs[desc.digest] = config
        self._expected.update(config.diff_ids)

    def _check_expected(self, desc: Descriptor, diff_id: Digest) -> None:
        if self._expected and diff_id not in self._expected:
            raise IntegrityError(f"layer {desc.digest}: its uncompressed content has digest "
                                 f"{diff_id}, which is no diff_id of the image config")

    def _put_layer(self, desc: Descriptor, reader: VerifyingReader,
                   progress: Progress | None) -> None:
        counted = _Counting(reader, desc.size, progress)
        head = read_full(counted, 4)
        body = _Prefixed(head, counted)
        kind = detect(head)
        if kind == "none" and desc.digest.algorithm == "sha256":
            # Already a plain tar: its digest is its diff_id; stream it straight in.
            diff_id = desc.digest
            self._check_expected(desc, diff_id)
            name = f"{diff_id.encoded}.tar"
            if not self.writer.has(name):
                self.writer.add(name, desc.size, cast(BinaryIO, body))
            reader.verify()
        else:
            diff_id = self._spool_and_add(desc, reader, body)
        self._diff_ids[desc.digest] = diff_id

    def _spool_dir(self) -> Path:
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix=".lamina-spool-",
                                                dir=self._spool_parent))
        return self._spool

    def _spool_and_add(self, desc: Descriptor, reader: VerifyingReader,
                       body: Readable) -> Digest:
        """Decompress into a spool file (a tar member needs its size up front), hashing
        the tar on the way: that hash is the diff_id."""
        fd, tmp_name = tempfile.mkstemp(prefix="layer-", dir=self._spool_dir())
        tmp = Path(tmp_name)
        try:
            with open(fd, "wb") as out:
                hashing = HashingWriter(out)
                tar = open_tar_stream(cast(BinaryIO, body))
                try:
                    while chunk := tar.read(CHUNK):
                        hashing.write(chunk)
                finally:
                    tar.close()
            # The compressed stream may hold bytes after the end of the data
            # (padding, a second frame): drain and check the blob's own digest too.
            reader.verify()
            diff_id = hashing.digest
            self._check_expected(desc, diff_id)
            name = f"{diff_id.encoded}.tar"
            if not self.writer.has(name):
                with open(tmp, "rb") as f:
                    self.writer.add(name, hashing.count, f)
            return diff_id
        finally:
            tmp.unlink(missing_ok=True)

    # -- manifests ----------------------------------------------------------------------
    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        doc = parse(raw, desc.media_type, what=f"manifest {desc.digest}")
        if isinstance(doc, Index):
            raise Unsupported(f"manifest {desc.digest} is an index: a docker archive holds "
                              "one platform per image, pick a platform")
        config = self._configs.get(doc.config.digest)
        if config is None:
            raise InvalidInput(f"manifest {desc.digest}: its config {doc.config.digest} was "
                               "not written first, or is not an image config")
        if len(doc.layers) != len(config.diff_ids):
            raise InvalidManifest(f"manifest {desc.digest} has {len(doc.layers)} layers but "
                                  f"its config lists {len(config.diff_ids)} diff_ids")
        if self._layout is not None:
            for layer in doc.layers:
                if not self._layout.has_blob(layer):
                    raise InvalidInput(f"manifest {desc.digest}: layer {layer.digest} was "
                                       "not written first")
            self._layout.put_manifest(desc, raw, list(names or []))
            config_name = blob_name(doc.config)
            layers = [blob_name(layer) for layer in doc.layers]
        else:
            layers = []
            for i, (layer, want) in enumerate(zip(doc.layers, config.diff_ids, strict=True)):
                got = self._diff_ids.get(layer.digest)
                if got is None:
                    raise InvalidInput(f"manifest {desc.digest}: layer {layer.digest} was "
                                       "not written first")
                if got != want:
                    raise IntegrityError(
                        f"layer {i} ({layer.digest}) of manifest {desc.digest}: its "
                        f"uncompressed digest is {got}, but the config says {want}")
                layers.append(f"{got.encoded}.tar")
            config_name = f"{doc.config.digest.encoded}.json"
        top = config.diff_ids[-1].encoded if config.diff_ids else None
        self._add_item(config_name, layers, names or [], top)

    def _add_item(self, config: str, layers: list[str], names: list[str],
                  top: str | None) -> None:
        item = next((i for i in self._items if i.config == config and i.layers == layers),
                    None)
        if item is None:
            item = _Item(config, layers)
            self._items.append(item)
        for name in names:
            ref = Reference.parse(name)
            if ref.tag is None:
                continue  # RepoTags are name:tag; a digest-only name has no place there
            tagged = Reference(ref.registry, ref.repository, ref.tag)
            familiar = tagged.familiar
            # A tag names one image: a later image under the same tag takes it over, as
            # it would in the docker engine that loads the archive.
            for other in self._items:
                if other is not item and familiar in other.repo_tags:
                    other.repo_tags.remove(familiar)
            if familiar not in item.repo_tags:
                item.repo_tags.append(familiar)
            if top is not None:
                self._repositories.setdefault(tagged.familiar_name, {})[ref.tag] = top

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.writer.add_bytes(MANIFEST_FILE, dumps([i.to_json() for i in self._items]))
            repositories = json.dumps(self._repositories, sort_keys=True,
                                      separators=(",", ":")).encode()
            self.writer.add_bytes(REPOSITORIES_FILE, repositories)
            if self._layout is not None:
                self._layout.close()  # oci-layout, index.json, then finishes the writer
            else:
                self.writer.finish()
            self._closed = True
        finally:
            self._remove_spool()

    def abort(self) -> None:
        if not self._closed:
            self.writer.abort()
        self._remove_spool()

    def _remove_spool(self) -> None:
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool = None
