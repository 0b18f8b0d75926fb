"""Root filesystems from images: apply every layer in order onto a directory.

Each layer's compressed bytes are checked against its digest and the uncompressed
stream against the config's diff_id while it is applied (CRAFT 9); a mismatch stops
the unpack and removes what it wrote.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from lamina.errors import InvalidInput, LaminaError, StoreError
from lamina.image.manifest import Descriptor, Platform
from lamina.layer import LayerOptions, apply_layer, write_tree
from lamina.store import scratch
from lamina.store.rmtree import remove_tree
from lamina.transport.base import ImageSource
from lamina.transport.resolve import ResolvedImage, resolve_image

LayerCallback = Callable[[int, int, Descriptor], None]


def _prepare_target(target: Path) -> Path | None:
    """Make sure target is an empty directory; return the topmost directory we created
    (to remove on failure), or None if target already existed."""
    if target.is_symlink():
        raise InvalidInput(f"unpack target {target} is a symlink")
    if target.exists():
        if not target.is_dir():
            raise InvalidInput(f"unpack target {target} exists and is not a directory")
        if any(target.iterdir()):
            raise InvalidInput(f"unpack target {target} is not empty")
        return None
    top = target.absolute()
    while not top.parent.exists():
        top = top.parent
    try:
        target.mkdir(parents=True)
    except OSError as e:
        raise StoreError(f"cannot create {target}: {e.strerror or e}") from None
    return top


def _clear(target: Path, created: Path | None) -> None:
    """Leave the target as it was: remove what the unpack made (best effort: the
    error that stopped the unpack is what the caller reports)."""
    with contextlib.suppress(OSError):
        if created is not None:
            remove_tree(created)
            return
        for entry in os.scandir(target):
            with contextlib.suppress(OSError):
                remove_tree(entry.path)


def unpack_image(source: ImageSource, desc: Descriptor, target: Path,
                 platform: Platform | None = None,
                 on_layer: LayerCallback | None = None) -> ResolvedImage:
    image = resolve_image(source, desc, platform)
    created = _prepare_target(target)
    try:
        layers = image.manifest.layers
        for i, (layer, diff_id) in enumerate(zip(layers, image.config.diff_ids, strict=True)):
            with source.open_blob(layer) as reader:
                apply_layer(reader, target, expected_diff_id=diff_id)
                reader.verify()
            if on_layer is not None:
                on_layer(i, len(layers), layer)
    except (LaminaError, OSError, KeyboardInterrupt):
        _clear(target, created)
        raise
    return image


def export_image(source: ImageSource, desc: Descriptor, output: Path, tmp_root: Path,
                 platform: Platform | None = None) -> ResolvedImage:
    """The flattened root filesystem as one plain tar (``docker export`` of an image)."""
    owned = scratch.make_dir(tmp_root, "export-")
    tmp = owned.path
    part = output.with_name(f".{output.name}.part{os.getpid()}")
    try:
        image = unpack_image(source, desc, tmp / "rootfs", platform)
        try:
            with open(part, "wb") as f:
                write_tree(tmp / "rootfs", f, LayerOptions(compression="none"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, output)
        except OSError as e:
            raise StoreError(f"cannot write {output}: {e.strerror or e}") from None
    finally:
        part.unlink(missing_ok=True)
        owned.remove()
    return image
