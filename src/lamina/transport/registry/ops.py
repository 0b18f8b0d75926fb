"""Pull and push between the local store and a registry: the wiring the CLI needs,
in one place (source, sink, copy, and abort on failure so the store is left as it was)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import httpx

from lamina.image.manifest import Descriptor
from lamina.image.reference import Reference
from lamina.store.store import Store
from lamina.transport.copy import CopyOptions, copy_image
from lamina.transport.local import StoreTransport
from lamina.transport.registry.options import RegistryOptions
from lamina.transport.registry.sink import BlobPush, RegistrySink
from lamina.transport.registry.source import RegistrySource


def pull_image(store: Store, ref: Reference, opts: RegistryOptions = RegistryOptions(),
               copy_opts: CopyOptions | None = None, client: httpx.Client | None = None
               ) -> Descriptor:
    """Copy ``ref`` (tag or digest) from its registry into the store, only the blobs
    the store lacks, ``opts.jobs`` at a time; the store records it under ``ref`` (a
    pull by digest records an untagged image).  Returns the descriptor stored at the top
    (the platform's manifest, or the index with ``all_platforms``)."""
    copy_opts = copy_opts or CopyOptions()
    if copy_opts.jobs == 1 and opts.jobs > 1:
        copy_opts = replace(copy_opts, jobs=opts.jobs)
    source = RegistrySource(ref, opts, client)
    try:
        desc = source.resolve(None)
        names = [str(ref)] if ref.tag and ref.digest is None else []
        sink = StoreTransport(store)
        try:
            top = copy_image(source, desc, sink, names, copy_opts)
            sink.close()
        except BaseException:
            sink.abort()
            raise
    finally:
        source.close()
    return top


def push_image(store: Store, name: str, dest: Reference,
               opts: RegistryOptions = RegistryOptions(), copy_opts: CopyOptions | None = None,
               client: httpx.Client | None = None,
               mount_from: Callable[[Descriptor], str | None] | None = None,
               on_blob: Callable[[BlobPush], None] | None = None) -> Descriptor:
    """Copy the store's image ``name`` to ``dest`` (every platform of an index), sending
    only the blobs the registry lacks; the manifest is put under ``dest``'s tag (or by
    digest).  ``on_blob`` hears each blob's fate (exists / mounted / pushed)."""
    copy_opts = copy_opts or CopyOptions(all_platforms=True)
    if copy_opts.jobs == 1 and opts.jobs > 1:
        copy_opts = replace(copy_opts, jobs=opts.jobs)
    source = StoreTransport(store)
    desc = source.resolve(name)
    sink = RegistrySink(dest, opts, client, mount_from=mount_from, on_blob=on_blob)
    try:
        top = copy_image(source, desc, sink, [str(dest)], copy_opts)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return top
