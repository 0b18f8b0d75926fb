"""Places images live, named as skopeo names them (``lamina copy SRC DST``).

    docker://HOST/REPO[:TAG|@DIGEST]   a registry repository
    oci:DIR[:TAG]                      an OCI image layout directory
    oci-archive:PATH[:TAG]             a tar of one
    docker-archive:PATH[:NAME[:TAG]]   a ``docker save`` archive
    NAME[:TAG] | ID                    the local store (no prefix)

Each place opens as an ``ImageSource`` or an ``ImageSink``; ``copy`` then moves only
the blobs the destination lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lamina.errors import InvalidInput, InvalidReference
from lamina.image.manifest import Descriptor
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.base import ImageSink, ImageSource
from lamina.transport.local import StoreTransport
from lamina.transport.registry import RegistryOptions, RegistrySink, RegistrySource

# Archive and layout transports are imported where a place of that kind is opened: a
# pull or push (the common case, timed against skopeo) never loads them.

Kind = Literal["store", "docker", "oci", "oci-archive", "docker-archive"]
_PREFIXES: tuple[Kind, ...] = ("docker", "oci-archive", "docker-archive", "oci")


@dataclass(frozen=True)
class Place:
    kind: Kind
    text: str                       # as the user wrote it
    path: Path | None = None        # layouts and archives
    name: str | None = None         # tag (oci), reference (docker-archive), or store ref
    ref: Reference | None = None    # registry reference

    def __str__(self) -> str:
        return self.text


def parse_place(text: str) -> Place:
    if text.startswith("docker://"):
        return Place("docker", text, ref=Reference.parse(text[len("docker://"):]))
    for prefix in _PREFIXES[1:]:
        if text.startswith(prefix + ":"):
            rest = text[len(prefix) + 1:]
            path, sep, name = rest.partition(":")
            if not path:
                raise InvalidReference(f"{text}: no path after {prefix}:")
            return Place(prefix, text, Path(path), name if sep and name else None)
    if "://" in text:
        raise InvalidReference(f"unknown transport in {text!r} (docker://, oci:, oci-archive:, "
                               "docker-archive:, or a local image name)")
    return Place("store", text, name=text)


@dataclass
class Opened:
    """A place opened for reading: the source, the image's descriptor, and the name the
    place gives it (a full reference, or None)."""

    source: ImageSource
    descriptor: Descriptor
    name: str | None


def open_source(place: Place, store: Store, opts: RegistryOptions,
                client: Any = None) -> Opened:
    """``client``: a ``wire.HttpClient`` for a registry place (tests bring their own)."""
    if place.kind == "store":
        src = StoreTransport(store)
        desc = src.resolve(place.name)
        tag = store.meta.get_tag(_store_name(place.name or ""))
        return Opened(src, desc, tag.name if tag is not None else None)
    if place.kind == "docker":
        assert place.ref is not None
        reg = RegistrySource(place.ref, opts, client)
        target = str(place.ref.digest) if place.ref.digest else place.ref.tag
        return Opened(reg, reg.resolve(target), str(place.ref) if place.ref.tag else None)
    assert place.path is not None
    from lamina.transport.docker_archive import DockerArchiveSource
    from lamina.transport.oci_layout import OciLayoutSource

    source: ImageSource
    if place.kind in ("oci", "oci-archive"):
        source = OciLayoutSource.open(place.path, store.root / "tmp")
    else:
        source = DockerArchiveSource.open(place.path, store.root / "tmp")
    try:
        desc = source.resolve(place.name)
        named = [i.name for i in source.images() if i.descriptor.digest == desc.digest]
        name = next((n for n in named if n and any(c in n for c in "/:")), None)
    except BaseException:
        source.close()
        raise
    return Opened(source, desc, str(Reference.parse(name)) if name else None)


def _store_name(text: str) -> str:
    try:
        return str(Reference.parse(text))
    except InvalidReference:
        return text


def open_sink(place: Place, store: Store, opts: RegistryOptions,
              default_name: str | None, client: Any = None,
              mount_from: Callable[[Descriptor], str | None] | None = None
              ) -> tuple[ImageSink, list[str]]:
    """The sink and the names to give the image there.  An archive or layout without a
    name of its own takes the source's name (as skopeo does)."""
    if place.kind == "store":
        ref = Reference.parse(place.name or "")
        if ref.digest is not None:
            if ref.tag is None:
                return StoreTransport(store), []  # by digest: stored, not named
            raise InvalidInput(f"cannot name a local image by digest: {place.text}")
        return StoreTransport(store), [str(ref)]
    if place.kind == "docker":
        assert place.ref is not None
        registry = RegistrySink(place.ref, opts, client,
                                mount_from=mount_from or mount_finder(store, place.ref))
        return registry, [str(place.ref)] if place.ref.tag else []
    assert place.path is not None
    from lamina.transport.docker_archive import DockerArchiveSink
    from lamina.transport.oci_layout import OciLayoutSink

    names: list[str] = []
    if place.kind in ("oci", "oci-archive"):
        if place.name:
            base = Reference.parse(default_name) if default_name else None
            names = [str(base.with_tag(place.name)) if base else
                     str(Reference.parse(f"image:{place.name}"))]
        elif default_name:
            names = [default_name]
        sink: ImageSink = (OciLayoutSink.to_dir(place.path, store) if place.kind == "oci"
                           else OciLayoutSink.to_tar(place.path))
        return sink, names
    if place.name:
        names = [str(Reference.parse(place.name))]
    elif default_name:
        names = [default_name]
    return DockerArchiveSink.to_tar(place.path), names


def mount_finder(store: Store, target: Reference) -> Callable[[Descriptor], str | None]:
    """For a push to ``target``: another repository of the same registry known to hold a
    blob (recorded when it was pulled from or pushed there), for a cross-repo mount."""

    def find(desc: Descriptor) -> str | None:
        for repo in store.meta.blob_sources(str(desc.digest), target.registry):
            if repo != target.repository:
                return repo
        return None

    return find
