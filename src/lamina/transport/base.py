"""The one interface every place an image can be implements (ggcr ``remote``/``layout``/
``tarball``; skopeo's transports).

A *source* resolves names to descriptors and serves blobs; a *sink* says which blobs it
has, takes blobs and manifests, and records names.  ``copy`` is then just "for each blob
the sink lacks, stream it over" (see copy.py).  Manifests and configs are blobs too:
``open_blob`` serves them by descriptor, so a source needs no separate manifest call.

Lifecycle of a sink: ``put_blob`` for every blob (children before parents), then
``put_manifest`` for each manifest/index (children first), then ``close``.  A sink that
writes an archive finishes it in ``close``; if an error escapes before ``close`` the sink's
``abort`` removes whatever it wrote.

Ctrl-C (copy.py): a source or sink that moves blobs on several threads may offer
``cancel()``, called from the interrupted thread to make its workers' blocked reads and
writes end at once; a sink whose finished blobs are worth keeping for the next run (the
store) offers ``suspend()``, called instead of ``abort``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol, runtime_checkable

from lamina.digest import CHUNK, VerifyingReader
from lamina.image.manifest import Descriptor

# (done, total) callback; total may be None when unknown.  Library code never prints:
# the CLI turns these into bars.
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class NamedImage:
    """An image a source holds under a name (``name`` is a full reference string, or the
    bare tag for OCI layouts that carry only ``org.opencontainers.image.ref.name``)."""

    name: str | None
    descriptor: Descriptor


@runtime_checkable
class ImageSource(Protocol):
    def images(self) -> list[NamedImage]:
        """Every named (and, for archives, unnamed) top-level image."""
        ...

    def resolve(self, name: str | None) -> Descriptor:
        """The descriptor for ``name``; ``None`` means "the only image there is"."""
        ...

    def open_blob(self, desc: Descriptor) -> VerifyingReader:
        """A reader that checks size and digest as it reaches the end."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ImageSink(Protocol):
    # False for formats that hold one platform per image (docker-archive): copy then
    # picks a platform out of an index instead of writing the index.
    accepts_index: bool

    def has_blob(self, desc: Descriptor) -> bool: ...

    def put_blob(self, desc: Descriptor, stream: BinaryIO | VerifyingReader,
                 progress: Progress | None = None) -> None:
        """Store the blob, verifying size and digest; raise IntegrityError on mismatch."""
        ...

    def put_manifest(self, desc: Descriptor, raw: bytes, names: list[str] | None) -> None:
        """Record a manifest or index and point ``names`` (full references) at it.
        ``names=None`` marks a child of an index (not an image of its own); ``[]`` a
        top-level image without a name."""
        ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


def read_blob(source: ImageSource, desc: Descriptor) -> bytes:
    """Read a small blob (manifest, config) whole, verified."""
    with source.open_blob(desc) as r:
        data = r.read()
        r.verify()
    return data


def pump(src: BinaryIO | VerifyingReader, write: Callable[[bytes], object],
         total: int | None = None, progress: Progress | None = None) -> int:
    done = 0
    while chunk := src.read(CHUNK):
        write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, total)
    return done
