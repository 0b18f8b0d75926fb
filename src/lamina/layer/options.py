"""The knobs of layer writing and layer applying, as frozen values (one options object
instead of many arguments)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, get_args

from lamina.errors import InvalidInput
from lamina.layer.filepool import FilePool

# "zstd:chunked": zstd with a frame per file payload and a TOC (layer/zstdchunked.py);
# any zstd reader sees a plain +zstd layer.
Compression = Literal["gzip", "zstd", "zstd:chunked", "none"]
COMPRESSIONS: tuple[str, ...] = get_args(Compression)

# How an applied layer records its whiteouts: "delete" removes what the layers below
# have (the target holds the merged tree); "overlay" writes them as overlayfs does, so
# the target holds only this layer and can be a lowerdir (see ApplyOptions).
WhiteoutFormat = Literal["delete", "overlay"]
WHITEOUT_FORMATS: tuple[str, ...] = get_args(WhiteoutFormat)

# isal offers levels 0-3 (1 is as good as zlib -6 for tars and several times faster);
# zstd 3 is the zstd CLI's default and what containerd uses for zstd layers.
DEFAULT_LEVEL: dict[str, int] = {"gzip": 1, "zstd": 3, "zstd:chunked": 3, "none": 0}
LEVEL_RANGE: dict[str, tuple[int, int]] = {"gzip": (0, 3), "zstd": (-7, 22),
                                           "zstd:chunked": (-7, 22), "none": (0, 0)}


@dataclass(frozen=True)
class LayerOptions:
    """How to write a layer.

    ``source_date_epoch`` clamps every mtime to at most that many seconds since the
    epoch (reproducible-builds.org SOURCE_DATE_EPOCH).  The library never reads the
    environment itself: the caller decides whether the env var applies.
    ``threads`` is the number of compression threads; the bytes written do not depend
    on it.
    """

    compression: Compression = "gzip"
    level: int | None = None
    source_date_epoch: int | None = None
    threads: int = 2

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise InvalidInput(
                f"unknown layer compression {self.compression!r}: "
                f"expected one of {', '.join(COMPRESSIONS)}"
            )
        if self.level is not None:
            low, high = LEVEL_RANGE[self.compression]
            if not low <= self.level <= high:
                raise InvalidInput(
                    f"{self.compression} level {self.level} is out of range {low}..{high}"
                )
        if self.threads < 1:
            raise InvalidInput(f"threads must be at least 1, got {self.threads}")
        if self.source_date_epoch is not None and self.source_date_epoch < 0:
            raise InvalidInput(f"source_date_epoch must be >= 0, got {self.source_date_epoch}")

    @property
    def effective_level(self) -> int:
        return DEFAULT_LEVEL[self.compression] if self.level is None else self.level


@dataclass(frozen=True)
class ApplyOptions:
    """How to apply a layer onto a directory.

    ``same_owner``: chown entries to their numeric uid/gid; when False ownership is
    left to whoever runs lamina, as GNU tar does for non-root users.
    ``devices``: create character/block device nodes; when False they are skipped
    (counted, not an error).  FIFOs are always created.
    ``whiteouts``: honour ``.wh.`` files (image-spec layer.md "Whiteouts"); False
    extracts them as plain files.
    ``whiteout_format``: how to honour them.  ``"delete"`` removes what the target
    already holds from lower layers.  ``"overlay"`` is for a target holding this layer
    alone (an overlayfs lowerdir, one per layer): ``.wh.NAME`` becomes a character
    device 0/0 named NAME and ``.wh..wh..opq`` the xattr ``trusted.overlay.opaque=y``
    on its directory (overlayfs.rst "whiteouts and opaque directories").  Needs root:
    device nodes and ``trusted.*`` xattrs are privileged.
    ``pool``: where regular files may be shared by hard link instead of written as
    copies (layer/filepool.py); None writes every file.  Only for targets nobody writes
    into (snapshots under an overlay): a write through one link changes them all.
    """

    same_owner: bool = os.geteuid() == 0
    devices: bool = os.geteuid() == 0
    whiteouts: bool = True
    whiteout_format: WhiteoutFormat = "delete"
    pool: FilePool | None = None

    def __post_init__(self) -> None:
        if self.whiteout_format not in WHITEOUT_FORMATS:
            raise InvalidInput(
                f"unknown whiteout format {self.whiteout_format!r}: "
                f"expected one of {', '.join(WHITEOUT_FORMATS)}"
            )


# The environment variable that sets how far a compressed layer may expand (the CLI's
# --max-expansion sets it for its own process).  Like LAMINA_ROOT, it configures the
# whole process: every decompression reads it, wherever in the rooms above it happens.
EXPANSION_ENV = "LAMINA_MAX_EXPANSION"


@dataclass(frozen=True)
class ExpansionLimit:
    """How far a compressed layer may expand: at most ``max(ratio × compressed size,
    floor)`` bytes of tar.  ``ratio == 0`` means no limit.

    Why these defaults: tars of programs and libraries compress 2-5×, text-heavy ones
    ~10×; only long runs of one byte (zero-filled or sparse files) go past 100×, and
    those are what a decompression bomb is made of (deflate tops out at ~1032×, zstd far
    higher).  The floor lets any small layer expand to 1 GiB, so the bound bites only
    when a layer claims both a huge ratio and a huge output: 2 MB of gzip that would
    become 2 GiB is refused; a 1 GB layer may still become 100 GB.
    Docker and containerd have no such limit; the knob exists for images that really
    hold gigabytes of zeros (``--max-expansion 2000`` or ``off``).
    """

    ratio: int = 100
    floor: int = 1 << 30

    def budget(self, compressed: int) -> int | None:
        """The most bytes ``compressed`` bytes may expand to (None: unlimited)."""
        return None if self.ratio == 0 else max(self.ratio * compressed, self.floor)

    @classmethod
    def parse(cls, text: str, where: str = EXPANSION_ENV) -> ExpansionLimit:
        """``RATIO``, ``RATIO:FLOOR`` (``100:4GiB``) or ``off``."""
        from lamina.units import parse_size

        value = text.strip().lower()
        if value in ("off", "0", "none"):
            return cls(0)
        ratio_text, _, floor_text = value.partition(":")
        try:
            ratio = int(ratio_text)
            floor = parse_size(floor_text) if floor_text else cls.floor
        except ValueError:
            ratio = -1
            floor = 0
        if ratio < 1:
            raise InvalidInput(f"{where} {text!r}: give a ratio like 100, a ratio and a "
                               "floor like 100:4GiB, or off")
        return cls(ratio, floor)

    @classmethod
    def current(cls) -> ExpansionLimit:
        """The limit in force: ``LAMINA_MAX_EXPANSION`` if set, else the default."""
        text = os.environ.get(EXPANSION_ENV)
        return cls.parse(text) if text else cls()
