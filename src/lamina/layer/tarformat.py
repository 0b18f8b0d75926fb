"""The tar format, as far as layers need it: ustar headers, PAX records, GNU extensions.

References: POSIX.1-2017 ``pax`` "ustar Interchange Format" and "pax Extended Header";
GNU tar manual "Basic Tar Format" (GNU long names 'L'/'K', base-256 numbers).
Writing produces POSIX ustar headers plus a PAX 'x' header only when a value does not
fit (long names, big ids or sizes, xattrs); reading also accepts the GNU forms other
tools write.
"""

from __future__ import annotations

import struct

from lamina.errors import InvalidInput

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)

# Type flags (ustar "typeflag").
REG = "0"
AREG = "\0"  # pre-POSIX regular file
LNK = "1"  # hard link
SYM = "2"
CHR = "3"
BLK = "4"
DIR = "5"
FIFO = "6"
CONT = "7"  # contiguous file: a regular file everywhere that matters
PAX_LOCAL = "x"
PAX_GLOBAL = "g"
GNU_LONGNAME = "L"
GNU_LONGLINK = "K"
GNU_SPARSE = "S"

# Entry types that carry data blocks (tarfile does the same: for links, directories,
# devices and fifos the size field is ignored and no data follows).
NO_DATA_TYPES = frozenset({LNK, SYM, CHR, BLK, DIR, FIFO})

XATTR_PREFIX = "SCHILY.xattr."
LIBARCHIVE_XATTR_PREFIX = "LIBARCHIVE.xattr."

USTAR_MAGIC = b"ustar\x0000"  # POSIX: magic "ustar\0" + version "00"
GNU_MAGIC = b"ustar  \x00"  # GNU: magic "ustar " + version " \0"; no prefix field

# Largest values that fit the octal fields (NUL-terminated): 7 digits / 11 digits.
MAX_ID = 0o7777777
MAX_SIZE = 0o77777777777
MAX_DEV = 0o7777777


def pad_len(size: int) -> int:
    """Bytes of zero padding after ``size`` bytes of data."""
    return -size % BLOCK


def pax_record(key: str, value: bytes) -> bytes:
    """One ``"%d %s=%s\\n"`` record; the length counts its own digits."""
    payload = b" " + key.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
    n = len(payload)
    length = n + len(str(n))
    if len(str(length)) != len(str(n)):
        length = n + len(str(length))
    return str(length).encode() + payload


# name mode uid gid size mtime chksum typeflag linkname magic+version uname+gname
# devmajor devminor prefix pad: the ustar header layout, 512 bytes.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s64x8s8s155s12x")


def ustar_header(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes = b"",
) -> bytes:
    """A 512-byte POSIX ustar header; callers guarantee every value fits.

    uname/gname are left empty on purpose: owners are numeric in layers, and names
    would make the bytes depend on the machine's /etc/passwd.  Numbers are
    zero-padded octal with a NUL, as GNU tar and Go write them.
    """
    raw = _USTAR.pack(
        name,
        b"%07o\0" % mode,
        b"%07o\0" % uid,
        b"%07o\0" % gid,
        b"%011o\0" % size,
        b"%011o\0" % mtime,
        b"        ",  # the checksum is computed with its own field as 8 spaces
        typeflag,
        linkname,
        USTAR_MAGIC,
        b"%07o\0" % devmajor,
        b"%07o\0" % devminor,
        prefix,
    )
    return b"%s%06o\0 %s" % (raw[:148], sum(raw), raw[156:])


def split_ustar_name(name: bytes) -> tuple[bytes, bytes] | None:
    """Split a path into ustar (prefix, name) fields, or None if it cannot fit."""
    if len(name) <= 100:
        return b"", name
    if len(name) > 256:
        return None
    # The prefix must end just before a '/', hold at most 155 bytes, and leave at
    # most 100 bytes (and at least one) for the name field.
    # The rightmost usable '/' leaves the shortest name; if that is still too long,
    # no split works.
    cut = name.rfind(b"/", 0, 156)
    if 0 < cut < len(name) - 1 and len(name) - cut - 1 <= 100:
        return name[:cut], name[cut + 1 :]
    return None


def parse_number(field: bytes, what: str) -> int:
    """An octal field, or GNU base-256 when the high bit of the first byte is set."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes((field[0] & 0x7F,)) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise InvalidInput(f"corrupt tar header: {what} field {field!r} is not a number") from None


def header_checksum_ok(header: bytes) -> bool:
    stored_field = header[148:156]
    try:
        stored = parse_number(stored_field, "checksum")
    except InvalidInput:
        return False
    unsigned = sum(header) - sum(stored_field) + 8 * 0x20
    if stored == unsigned:
        return True
    # Some old tars summed signed chars (POSIX allows readers to accept both).
    signed = unsigned - 256 * sum(1 for b in header if b > 127)
    signed += 256 * sum(1 for b in stored_field if b > 127)
    return stored == signed


def parse_pax(data: bytes) -> dict[str, bytes]:
    """Parse PAX extended header records into key -> raw value bytes."""
    records: dict[str, bytes] = {}
    pos = 0
    end = len(data)
    while pos < end:
        if data[pos] == 0:  # trailing NUL padding some writers leave
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise InvalidInput("corrupt PAX header: record without a length")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise InvalidInput("corrupt PAX header: bad record length") from None
        record_end = pos + length
        if length <= 0 or record_end > end or data[record_end - 1] != 0x0A:
            raise InvalidInput("corrupt PAX header: record length does not match")
        record = data[space + 1 : record_end - 1]
        eq = record.find(b"=")
        if eq < 0:
            raise InvalidInput("corrupt PAX header: record without '='")
        key = record[:eq].decode("utf-8", "surrogateescape")
        records[key] = record[eq + 1 :]
        pos = record_end
    return records


def parse_pax_time(value: bytes) -> int:
    """PAX times are decimal seconds with an optional fraction; keep whole seconds."""
    text = value.decode("ascii", "replace")
    whole = text.split(".", 1)[0]
    try:
        seconds = int(whole) if whole not in ("", "-") else 0
    except ValueError:
        raise InvalidInput(f"corrupt PAX header: bad time {text!r}") from None
    # Floor for negative times with a fraction (-1.5 is 2 seconds before the epoch).
    if text.startswith("-") and "." in text and text.split(".", 1)[1].strip("0"):
        seconds -= 1
    return seconds
