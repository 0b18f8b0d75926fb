"""``lamina load`` and ``lamina save``: archives and layouts in and out of the store.

Format detection looks inside, not at the file name: a tree with ``manifest.json`` is a
``docker save`` archive (classic or Docker ≥ 25's OCI-based one), else a tree with
``oci-layout`` is an OCI image layout; each may be a directory or a (compressed) tar.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from lamina.digest import VerifyingReader
from lamina.errors import InvalidInput, InvalidReference, LaminaError, NotFound
from lamina.image.manifest import Descriptor, Platform
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.base import ImageSink, ImageSource, NamedImage, Progress
from lamina.transport.compressing import Conversion, converting_sink
from lamina.transport.copy import CopyEvent, CopyOptions, copy_image
from lamina.transport.docker_archive import (
    MANIFEST_FILE,
    DockerArchiveSink,
    DockerArchiveSource,
    is_docker_archive,
)
from lamina.transport.filetree import open_tree
from lamina.transport.inventory import (
    INCREMENTAL_ANNOTATION,
    ExcludingSink,
    excluded_blobs,
    missing_blobs,
)
from lamina.transport.local import StoreTransport
from lamina.transport.oci_layout import (
    CONTAINERD_NAME,
    LAYOUT_FILE,
    REF_NAME,
    OciLayoutSink,
    OciLayoutSource,
)
from lamina.transport.resolve import resolve_image

Format = Literal["oci", "oci-archive", "docker-archive", "docker-oci-archive"]
FORMATS: tuple[str, ...] = ("oci", "oci-archive", "docker-archive", "docker-oci-archive")


def open_archive(path: Path, tmpdir: Path | None = None) -> ImageSource:
    """Open a docker archive or OCI layout (directory or tar) as an image source."""
    tree = open_tree(path, tmpdir)
    try:
        if is_docker_archive(tree):
            return DockerArchiveSource(tree)
        if tree.exists(LAYOUT_FILE):
            # the marker file makes it a layout: a missing index.json is said as such
            return OciLayoutSource(tree)
        if tree.exists(MANIFEST_FILE):
            return DockerArchiveSource(tree)    # says what is wrong with its manifest.json
    except BaseException:
        tree.close()
        raise
    tree.close()
    raise InvalidInput(f"{path} is neither a docker save archive (no manifest.json) nor an "
                       "OCI image layout (no oci-layout)")


def open_sink(path: Path, fmt: Format) -> ImageSink:
    if fmt == "oci":
        return OciLayoutSink.to_dir(path)
    if fmt == "oci-archive":
        return OciLayoutSink.to_tar(path)
    if fmt == "docker-archive":
        return DockerArchiveSink.to_tar(path)
    if fmt == "docker-oci-archive":
        return DockerArchiveSink.to_tar(path, oci=True)
    raise InvalidInput(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Loaded:
    name: str | None          # full reference it was tagged as, or None (untagged)
    descriptor: Descriptor
    image_id: str | None = None   # config digest (of this platform's image)


def _looks_like_reference(text: str) -> bool:
    return any(c in text for c in ":/@")


def _name_for(desc: Descriptor, given: str | None, fallback: str, archive_name: str | None,
              is_layout: bool) -> str | None:
    """io.containerd.image.name, else the archive's RepoTags, else --name or the
    folder's name with the ref.name tag (as the issue and skopeo's conventions say)."""
    if is_layout:
        full = desc.annotations.get(CONTAINERD_NAME)
        if full:
            return str(Reference.parse(full))
        tag = desc.annotations.get(REF_NAME)
        if tag and _looks_like_reference(tag):
            return str(Reference.parse(tag))
        if given:
            base = Reference.parse(given, default_tag=False)
            if tag and base.tag is None and base.digest is None:
                return str(base.with_tag(tag))
            return str(Reference.parse(given))
        if tag:
            return str(Reference.parse(f"{fallback}:{tag}"))
        return None
    if archive_name:
        return archive_name
    return str(Reference.parse(given)) if given else None


def _fallback_name(path: Path) -> str:
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.zst", ".tar", ".oci"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in stem.lower()).strip("._-")
    return name or "image"


def _image_id(store_source: StoreTransport, desc: Descriptor) -> str | None:
    try:
        return resolve_image(store_source, desc).image_id
    except LaminaError:
        return None  # an index without this platform: no single image id


def _check_complete(source: OciLayoutSource, sink: StoreTransport,
                    plan: list[tuple[NamedImage, str | None]], path: Path) -> None:
    """Refuse, before anything is written, a layout whose images need a blob that is
    neither in it nor in the store (an incremental save for another store)."""
    for named, ref in plan:
        gaps = missing_blobs(source, named.descriptor, source.has_blob, sink.has_blob)
        if not gaps:
            continue
        desc, what = gaps[0]
        image = Reference.parse(ref).familiar if ref else str(named.descriptor.digest)
        more = f" (and {len(gaps) - 1} more)" if len(gaps) > 1 else ""
        why = ("; it was saved for a store that has it (save --exclude)"
               if source.index.annotations.get(INCREMENTAL_ANNOTATION) else "")
        raise NotFound(f"{path}: blob {desc.digest}, {what} of {image}, is neither in the "
                       f"archive nor in the store{more}{why}: nothing loaded")


class _ManifestsLast:
    """A sink that passes blobs on at once and holds the manifests back until
    ``replay``: a load records no image before every blob of the archive is checked."""

    def __init__(self, sink: StoreTransport) -> None:
        self.sink = sink
        self.accepts_index = sink.accepts_index
        self.held: list[tuple[Descriptor, bytes, list[str] | None]] = []

    def has_blob(self, desc: Descriptor) -> bool:
        return self.sink.has_blob(desc)

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        self.sink.put_blob(desc, stream, progress)

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        self.held.append((desc, raw, names))

    def replay(self) -> None:
        held, self.held = self.held, []
        for desc, raw, names in held:
            self.sink.put_manifest(desc, raw, names)

    def close(self) -> None:
        self.replay()

    def abort(self) -> None:
        self.sink.abort()


def load_archive(store: Store, path: Path, name: str | None = None,
                 on_event: Callable[[CopyEvent], None] | None = None) -> list[Loaded]:
    """Copy every image of an archive or layout into the store, all platforms."""
    if name is not None:
        Reference.parse(name)  # fail before reading anything
    source = open_archive(path, store.root / "tmp")
    sink = StoreTransport(store, verify_layers=True, compress_layers=True)
    loaded: list[Loaded] = []
    opts = CopyOptions(all_platforms=True, on_event=on_event)
    try:
        is_layout = isinstance(source, OciLayoutSource)
        fallback = _fallback_name(path)
        plan: list[tuple[NamedImage, str | None]] = []
        for named in source.images():
            try:
                ref = _name_for(named.descriptor, name, fallback, named.name, is_layout)
            except InvalidReference as e:
                raise e.context(f"{path}") from None
            plan.append((named, ref))
        # Two images under one name would silently leave only the last: refuse first.
        seen: dict[str, str] = {}
        for named, ref in plan:
            if ref is None:
                continue
            digest = str(named.descriptor.digest)
            if seen.setdefault(ref, digest) != digest:
                familiar = Reference.parse(ref).familiar
                raise InvalidInput(f"{path}: two images would both be named {familiar}"
                                   + (" (give --name without a tag)" if name else ""))
        if isinstance(source, OciLayoutSource):
            _check_complete(source, sink, plan, path)
        # Every blob of every image first, then the manifests (which name images): a
        # corrupt blob anywhere in the archive leaves no image of it tagged.
        deferred = _ManifestsLast(sink)
        tops = [copy_image(source, named.descriptor, deferred, [ref] if ref else [], opts)
                for named, ref in plan]
        deferred.replay()
        for (_, ref), written in zip(plan, tops, strict=True):
            top = sink.stored(written)
            loaded.append(Loaded(ref, top, _image_id(sink, top)))
        sink.close()
    except BaseException:
        sink.abort()
        raise
    finally:
        source.close()
    return loaded


@dataclass(frozen=True)
class Saved:
    images: list[Descriptor]        # what was written at the top of each image
    omitted: list[Descriptor]       # layers left out (--exclude: the far side has them)


def save_images(store: Store, refs: Sequence[str], path: Path, fmt: Format,
                platform: Platform | None = None,
                on_event: Callable[[CopyEvent], None] | None = None,
                conversion: Conversion | None = None, exclude: Sequence[str] = ()) -> Saved:
    """Write the named store images into one archive or layout; ``conversion``: the
    layers' compression there (``save --dest-compress-format``), else as stored.
    ``exclude``: inventory files or store images whose layers the reader already has;
    those are left out (an incremental layout, transport/inventory.py)."""
    if not refs:
        raise InvalidInput("save needs at least one image")
    if conversion is not None and fmt == "docker-archive":
        raise InvalidInput("docker-archive layers are written uncompressed: "
                           "--dest-compress-format needs an OCI format")
    if exclude and fmt in ("docker-archive", "docker-oci-archive"):
        # docker load opens every layer its manifest.json names; an archive without
        # some of them is refused, whatever the daemon already holds.
        raise InvalidInput(f"a {fmt} cannot leave layers out (docker load refuses one "
                           "whose layers are missing): --exclude needs --format "
                           "oci-archive or oci")
    if exclude and conversion is not None:
        raise InvalidInput("--exclude leaves out layers as the far side holds them: it "
                           "cannot be combined with --dest-compress-format")
    source = StoreTransport(store)
    resolved = [(source.resolve(r), r) for r in refs]  # all names checked before writing
    excluded = excluded_blobs(store, source, exclude) if exclude else set()
    sink = open_sink(path, fmt)
    excluding: ExcludingSink | None = None
    if exclude:
        assert isinstance(sink, OciLayoutSink)
        sink = excluding = ExcludingSink(sink, excluded)
    if conversion is not None:
        sink = converting = converting_sink(sink, store, conversion)
    out = []
    opts = CopyOptions(platform, False, on_event)
    try:
        for desc, text in resolved:
            names = []
            try:
                full = str(Reference.parse(text))
                # only a name the store really holds is a name (not a short image id)
                tag = store.meta.get_tag(full)
                if tag is not None and tag.digest == str(desc.digest):
                    names = [full]
            except LaminaError:
                names = []
            top = copy_image(source, desc, sink, names, opts)
            out.append(converting.stored(top) if conversion is not None else top)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return Saved(out, list(excluding.omitted.values()) if excluding is not None else [])


__all__ = ["FORMATS", "CopyEvent", "Format", "Loaded", "Saved", "load_archive",
           "open_archive", "open_sink", "save_images"]
