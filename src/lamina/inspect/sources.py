"""Any image, wherever it is: the one argument every inspect command takes.

    NAME[:TAG] | NAME@DIGEST | ID        an image in the local store (the default)
    oci:DIR[:TAG]                        an OCI image layout directory
    oci-archive:PATH[:TAG]               an OCI image layout in a tar (gzip'd or not)
    docker-archive:PATH[:REF]            a ``docker save`` archive (classic or Docker >= 25)
    docker://REF                         a registry (see ``SCHEMES``: not wired yet)

The prefixes are skopeo's transport names, so the same text works in both tools.  A
path may itself hold colons: the longest prefix that exists on disk is the path and the
rest is the tag or reference (``docker-archive:a:b.tar:demo/a:latest``).  Without a tag
the source must hold exactly one image.

Opening reads only the source's index (``index.json`` or ``manifest.json``); manifests,
configs and layers are read later, and only by the commands that need them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lamina.errors import InvalidInput, InvalidReference
from lamina.image.manifest import Descriptor, Platform
from lamina.store.store import Store
from lamina.transport.base import ImageSource
from lamina.transport.docker_archive import DockerArchiveSource, is_docker_archive
from lamina.transport.filetree import open_tree
from lamina.transport.local import StoreTransport
from lamina.transport.oci_layout import OciLayoutSource, is_oci_layout
from lamina.transport.resolve import ResolvedImage, resolve_image

# An opener gets the text after "<scheme>:" and returns the source and the image's
# descriptor; the caller closes the source.
Opener = Callable[[str], tuple[ImageSource, Descriptor]]


def _split_path(rest: str, what: str) -> tuple[Path, str | None]:
    """``PATH[:NAME]`` where PATH may contain colons: the longest existing prefix wins."""
    if not rest:
        raise InvalidReference(f"{what}: name a path ({what}:PATH[:NAME])")
    if Path(rest).exists():
        return Path(rest), None
    cut = len(rest)
    while (cut := rest.rfind(":", 0, cut)) > 0:
        if Path(rest[:cut]).exists():
            name = rest[cut + 1:]
            return Path(rest[:cut]), name or None
    head = rest.split(":", 1)[0]
    raise InvalidInput(f"{what}:{rest}: {head}: no such file or directory")


def _open_layout(rest: str, what: str) -> tuple[ImageSource, Descriptor]:
    path, name = _split_path(rest, what)
    tree = open_tree(path)
    try:
        if not is_oci_layout(tree):
            raise InvalidInput(f"{path} is not an OCI image layout (no oci-layout file)")
        source = OciLayoutSource(tree)
    except BaseException:
        tree.close()
        raise
    return _resolved(source, name)


def _open_oci(rest: str) -> tuple[ImageSource, Descriptor]:
    return _open_layout(rest, "oci")


def _open_oci_archive(rest: str) -> tuple[ImageSource, Descriptor]:
    return _open_layout(rest, "oci-archive")


def _open_docker_archive(rest: str) -> tuple[ImageSource, Descriptor]:
    path, name = _split_path(rest, "docker-archive")
    tree = open_tree(path)
    try:
        if not is_docker_archive(tree):
            raise InvalidInput(f"{path} is not a docker save archive (no manifest.json)")
        source = DockerArchiveSource(tree)
    except BaseException:
        tree.close()
        raise
    return _resolved(source, name)


def _open_registry(rest: str) -> tuple[ImageSource, Descriptor]:
    """A repository on a registry (stored credentials, loopback over plain HTTP): only
    the manifest is read here; layers are fetched by ``open_blob`` when a command needs
    them."""
    from lamina.image.reference import Reference
    from lamina.transport.registry import RegistrySource

    ref = Reference.parse(rest)
    source = RegistrySource(ref)
    return _resolved(source, str(ref.digest) if ref.digest else ref.tag)


def _resolved(source: ImageSource, name: str | None) -> tuple[ImageSource, Descriptor]:
    try:
        return source, source.resolve(name)
    except BaseException:
        source.close()
        raise


SCHEMES: dict[str, Opener] = {
    "oci": _open_oci,
    "oci-archive": _open_oci_archive,
    "docker-archive": _open_docker_archive,
    "docker": _open_registry,
}


def split_scheme(text: str) -> tuple[str | None, str]:
    """(scheme, rest) for ``scheme:rest`` with a known scheme; (None, text) otherwise.
    ``docker://x`` and ``docker:x`` are the same (skopeo writes the former)."""
    scheme, sep, rest = text.partition(":")
    if sep and scheme in SCHEMES:
        if scheme == "docker":
            rest = rest.removeprefix("//")
        return scheme, rest
    return None, text


def needs_store(text: str) -> bool:
    """Whether ``text`` names an image in the local store (so the CLI opens one)."""
    return split_scheme(text)[0] is None


def open_image_source(store: Store | None, text: str) -> tuple[ImageSource, Descriptor]:
    """The source holding the image ``text`` names, and the image's descriptor (a
    manifest or an index).  The caller closes the source."""
    scheme, rest = split_scheme(text)
    if scheme is not None:
        return SCHEMES[scheme](rest)
    if store is None:
        raise InvalidInput(f"{text}: no store to look the image up in")
    source = StoreTransport(store)
    return source, source.resolve(text)


@dataclass(frozen=True)
class OpenedImage:
    """An image resolved to one platform, with the source its blobs come from."""

    text: str                # what the user wrote
    source: ImageSource
    image: ResolvedImage


@contextlib.contextmanager
def opened_image(store: Store | None, text: str,
                 platform: Platform | None = None) -> Iterator[OpenedImage]:
    """``open_image_source`` + ``resolve_image``; closes the source on exit."""
    source, desc = open_image_source(store, text)
    try:
        yield OpenedImage(text, source, resolve_image(source, desc, platform))
    finally:
        source.close()
