"""A lean streaming tar reader: headers parsed by hand, contents handed out as
zero-copy views of the decompressed blocks.

It reads what layer producers write: POSIX ustar and PAX (local and global headers,
``SCHILY.xattr.*`` and ``LIBARCHIVE.xattr.*``), GNU long names/links ('L'/'K') and
GNU base-256 numbers.  GNU sparse files are refused (``Unsupported``): no layer tool
writes them.  Names are returned as ``str`` decoded like the OS decodes file names
(UTF-8 with surrogateescape), so any byte string round-trips.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from lamina.digest import Readable
from lamina.errors import InvalidInput, Unsupported
from lamina.layer import tarformat as tf
from lamina.layer.compress import open_decompressed
from lamina.layer.paths import check_name, shown


class BlockSource(Protocol):
    def read_block(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One archive member, after PAX and GNU extensions have been applied."""

    name: str
    type: str  # one of the tarformat type flags; '\0' and '7' are reported as '0'
    size: int
    mode: int
    uid: int
    gid: int
    mtime: int  # whole seconds
    linkname: str
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return self.type == tf.REG

    @property
    def is_dir(self) -> bool:
        return self.type == tf.DIR


def _cstr(field_bytes: bytes) -> bytes:
    end = field_bytes.find(b"\0")
    return field_bytes if end < 0 else field_bytes[:end]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _int_value(records: dict[str, bytes], key: str) -> int:
    try:
        return int(records[key])
    except ValueError:
        raise InvalidInput(f"corrupt PAX header: {key}={records[key]!r}") from None


class TarReader:
    """Reads entries one at a time from a source of decompressed blocks.

    After ``next()`` returns an entry, ``data()`` yields its contents; whatever the
    caller does not read is skipped by the following ``next()``.  ``next()`` returns
    None at the end-of-archive marker, after which ``drain()`` consumes the rest of
    the stream (so a hash over the whole stream is complete).
    """

    def __init__(self, source: BlockSource) -> None:
        self._source = source
        self._buf = b""
        self._pos = 0
        self.offset = 0  # of the next unread byte in the tar stream
        self._remaining = 0
        self._padding = 0
        self._globals: dict[str, bytes] = {}
        self._ended = False

    # -- buffer --------------------------------------------------------------------

    def _take(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes (b"" if the stream ends right here)."""
        pos = self._pos
        if len(self._buf) - pos >= n:
            self._pos = pos + n
            self.offset += n
            return self._buf[pos : pos + n]
        parts = [self._buf[pos:]]
        got = len(parts[0])
        while got < n:
            block = self._source.read_block()
            if not block:
                if got == 0:
                    self._buf, self._pos = b"", 0
                    return b""
                raise InvalidInput(f"tar archive is truncated in {what} at offset {self.offset}")
            need = n - got
            if len(block) > need:
                parts.append(block[:need])
                self._buf, self._pos = block, need
                got = n
            else:
                parts.append(block)
                self._buf, self._pos = b"", 0
                got += len(block)
        self.offset += n
        return b"".join(parts)

    def _views(self, n: int, what: str) -> Iterator[memoryview]:
        while n:
            if self._pos >= len(self._buf):
                self._buf, self._pos = self._source.read_block(), 0
                if not self._buf:
                    raise InvalidInput(
                        f"tar archive is truncated in {what} at offset {self.offset}"
                    )
            k = min(n, len(self._buf) - self._pos)
            view = memoryview(self._buf)[self._pos : self._pos + k]
            self._pos += k
            self.offset += k
            n -= k
            yield view

    def _skip(self, n: int, what: str) -> None:
        for _ in self._views(n, what):
            pass

    def _skip_padding(self, n: int) -> None:
        """Skip the zero padding after an entry's data.  A stream that ends inside it
        has lost nothing but zeros: umoci 0.4 ``insert`` writes layers that stop right
        after the last file's bytes, and umoci/Docker read them, so it ends the archive
        here instead of failing.  The layer's diff_id still covers every byte."""
        try:
            self._skip(n, "padding")
        except InvalidInput:
            self._ended = True

    # -- entries -------------------------------------------------------------------

    def data(self) -> Iterator[memoryview]:
        """The current entry's contents, as views valid until the next iteration."""
        n, self._remaining = self._remaining, 0
        yield from self._views(n, "file data")
        pad, self._padding = self._padding, 0
        if pad:
            self._skip_padding(pad)

    def _finish_entry(self) -> None:
        left, pad = self._remaining, self._padding
        self._remaining = self._padding = 0
        if left:
            self._skip(left, "file data")
        if pad:
            self._skip_padding(pad)

    def _read_member_data(self, size: int, what: str) -> bytes:
        data = self._take(size, what)
        if len(data) < size:
            raise InvalidInput(f"tar archive is truncated in {what} at offset {self.offset}")
        pad = tf.pad_len(size)
        if pad:
            self._skip(pad, "padding")
        return data

    def next(self) -> TarEntry | None:
        self._finish_entry()
        if self._ended:
            return None
        local: dict[str, bytes] = {}
        long_name: bytes | None = None
        long_link: bytes | None = None
        while True:
            start = self.offset
            header = self._take(tf.BLOCK, "a header")
            if not header or header == tf.ZERO_BLOCK:
                # End-of-archive (one zero block is enough, as GNU tar accepts; a
                # stream that stops on a header boundary is accepted like tarfile).
                self._ended = True
                return None
            if not tf.header_checksum_ok(header):
                if start == 0:
                    raise InvalidInput("not a tar archive (bad header checksum at offset 0)")
                raise InvalidInput(f"corrupt tar header at offset {start} (bad checksum)")
            typeflag = chr(header[156])
            size = tf.parse_number(header[124:136], "size")
            if size < 0:
                raise InvalidInput(f"corrupt tar header at offset {start}: negative size")
            if typeflag in (tf.PAX_LOCAL, tf.PAX_GLOBAL):
                records = tf.parse_pax(self._read_member_data(size, "a PAX header"))
                if typeflag == tf.PAX_GLOBAL:
                    self._globals.update(records)
                else:
                    local.update(records)
                continue
            if typeflag == tf.GNU_LONGNAME:
                long_name = _cstr(self._read_member_data(size, "a GNU long name"))
                continue
            if typeflag == tf.GNU_LONGLINK:
                long_link = _cstr(self._read_member_data(size, "a GNU long link"))
                continue
            return self._entry(header, typeflag, size, local, long_name, long_link)

    def _entry(
        self,
        header: bytes,
        typeflag: str,
        size: int,
        local: dict[str, bytes],
        long_name: bytes | None,
        long_link: bytes | None,
    ) -> TarEntry:
        records = {**self._globals, **local} if self._globals else local
        name = _cstr(header[0:100])
        if header[257:263] == b"ustar\x00":
            # POSIX ustar has a prefix field; GNU's "ustar  " magic uses those bytes
            # for other things.
            prefix = _cstr(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        if long_name is not None:
            name = long_name
        linkname = _cstr(header[157:257]) if long_link is None else long_link
        mode = tf.parse_number(header[100:108], "mode")
        uid = tf.parse_number(header[108:116], "uid")
        gid = tf.parse_number(header[116:124], "gid")
        mtime = tf.parse_number(header[136:148], "mtime")
        devmajor = devminor = 0
        if typeflag in (tf.CHR, tf.BLK):
            devmajor = tf.parse_number(header[329:337], "devmajor")
            devminor = tf.parse_number(header[337:345], "devminor")
        xattrs: dict[str, bytes] = {}
        if records:
            if "path" in records:
                name = records["path"]
            if "linkpath" in records:
                linkname = records["linkpath"]
            if "size" in records:
                size = _int_value(records, "size")
            if "uid" in records:
                uid = _int_value(records, "uid")
            if "gid" in records:
                gid = _int_value(records, "gid")
            if "mtime" in records:
                mtime = tf.parse_pax_time(records["mtime"])
            for key, value in records.items():
                if key.startswith(tf.XATTR_PREFIX):
                    xattrs[key[len(tf.XATTR_PREFIX) :]] = value
                elif key.startswith(tf.LIBARCHIVE_XATTR_PREFIX):
                    # libarchive: URL-encoded name, base64 value.
                    xname = urllib.parse.unquote(key[len(tf.LIBARCHIVE_XATTR_PREFIX) :])
                    try:
                        xattrs[xname] = base64.b64decode(value + b"==")
                    except ValueError:
                        raise InvalidInput(f"corrupt PAX xattr record {key!r}") from None
                elif key.startswith("GNU.sparse."):
                    raise Unsupported(
                        f"tar entry {_decode(name)!r} is a GNU sparse file, which layers do not use"
                    )
            if any("\0" in x for x in xattrs):
                raise InvalidInput(f"tar entry {shown(_decode(name))} has an extended "
                                   "attribute whose name holds a NUL byte")
        if typeflag in (tf.AREG, tf.CONT):
            typeflag = tf.REG
        if typeflag == tf.REG and name.endswith(b"/"):
            typeflag = tf.DIR  # pre-POSIX tars mark directories by a trailing slash
        if typeflag == tf.GNU_SPARSE:
            raise Unsupported(
                f"tar entry {_decode(name)!r} is a GNU sparse file, which layers do not use"
            )
        if size < 0:
            raise InvalidInput(f"tar entry {shown(_decode(name))} has a negative size")
        text, link = _decode(name), _decode(linkname)
        check_name(text)
        if link:
            # A symlink's target is text the kernel stores (only its length is
            # limited); a hard link's is a path in the archive.
            check_name(link, "link target", components=typeflag == tf.LNK)
        if typeflag in tf.NO_DATA_TYPES:
            self._remaining = self._padding = 0
            size = 0
        else:
            self._remaining = size
            self._padding = tf.pad_len(size)
        return TarEntry(
            text,
            typeflag,
            size,
            mode & 0o7777,
            uid,
            gid,
            mtime,
            link,
            devmajor,
            devminor,
            xattrs,
        )

    def drain(self) -> None:
        """Consume the rest of the stream (zero blocks, record padding, anything)."""
        self._finish_entry()
        self._buf, self._pos = b"", 0
        while block := self._source.read_block():
            self.offset += len(block)

    def __iter__(self) -> Iterator[TarEntry]:
        while (entry := self.next()) is not None:
            yield entry


def iter_tar_entries(stream: Readable) -> Iterator[TarEntry]:
    """The entries of a (gzip, zstd or plain) layer tar, without their contents."""
    source = open_decompressed(stream, None)
    try:
        yield from TarReader(source)
    finally:
        source.close()
