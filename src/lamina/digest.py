"""Content addresses: the ``Digest`` value and streams that hash while they move bytes.

OCI image-spec "Digests": ``algorithm ":" encoded``; lamina writes sha256 and reads
sha256 and sha512 (the registered algorithms).  Nothing read from disk, an archive or the
network is trusted until the digest of its bytes has been compared with the name it came
under; ``VerifyingReader`` does that comparison at end of stream so that checking costs
no second pass over the data.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from lamina.errors import IntegrityError, InvalidReference

# image-spec descriptor.md "Digests": registered algorithms and their encoded forms.
_ENCODED = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha512": re.compile(r"[a-f0-9]{128}")}
# Patterns are used with fullmatch: "$" would also match before a trailing newline.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

CHUNK = 1 << 20


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A content address such as ``sha256:9f86d0...``."""

    algorithm: str
    encoded: str

    def __hash__(self) -> int:
        # The hex string's hash is cached by the str itself; the generated hash built a
        # tuple each time (sets and dicts of thousands of chunk digests, store/chunks.py).
        return hash(self.encoded)

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str) or not _GRAMMAR.fullmatch(text):
            raise InvalidReference(f"invalid digest {text!r}: expected ALGORITHM:HEX")
        algorithm, encoded = text.split(":", 1)
        pattern = _ENCODED.get(algorithm)
        if pattern is None:
            raise InvalidReference(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if not pattern.fullmatch(encoded):
            raise InvalidReference(f"invalid {algorithm} digest {text!r}")
        return cls(algorithm, encoded)

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls(hasher.name, hasher.hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        """The 12-character id Docker shows for images and layers."""
        return self.encoded[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


def is_digest(text: str) -> bool:
    try:
        Digest.parse(text)
    except InvalidReference:
        return False
    return True


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def read_full(stream: Readable, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at end of stream: pipes and sockets return short
    reads that a reader of fixed-size records must not mistake for the end."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = stream.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


class VerifyingReader:
    """Wraps a stream; hashes and counts what is read; checks digest and size at EOF.

    A mismatch raises ``IntegrityError`` from the ``read`` that reaches the end (or from
    ``verify``), so a consumer that reads to the end cannot miss it.
    """

    def __init__(
        self, raw: Readable, expected: Digest, size: int | None = None, what: str = "blob",
        at_rest: bool = False,
    ) -> None:
        self._raw = raw
        # The bytes were verified when they were stored (a content store's blob): a
        # consumer with its own check downstream may take them without hashing again.
        self.at_rest = at_rest
        self.expected = expected
        self.size = size
        self.what = what
        self._hasher = expected.hasher()
        self.count = 0
        self._done = False

    def read(self, n: int = -1, /) -> bytes:
        if self._done:
            return b""
        data = self._raw.read(n)
        if data:
            self._take(data)
        else:
            self._finish()
        return data

    def _take(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise IntegrityError(
                f"{self.what} {self.expected}: more than the declared {self.size} bytes"
            )

    @property
    def raw(self) -> Readable:
        """The stream underneath (a consumer that can check the digest another way may
        take the bytes from it directly, e.g. a push by sendfile)."""
        return self._raw

    def readinto(self, buf: bytearray | memoryview) -> int:
        """``read`` into ``buf``: straight into it when the stream underneath can,
        hashing the bytes where they landed (no copy)."""
        if self._done:
            return 0
        readinto = getattr(self._raw, "readinto", None)
        if readinto is None:
            data = self.read(len(buf))
            buf[: len(data)] = data
            return len(data)
        n: int = readinto(buf)
        if n:
            view = memoryview(buf)
            self._take(view[:n] if n < len(view) else view)
        else:
            self._finish()
        return n

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        if self.size is not None and self.count != self.size:
            raise IntegrityError(
                f"{self.what} {self.expected}: got {self.count} bytes, expected {self.size}"
            )
        got = self._hasher.hexdigest()
        if got != self.expected.encoded:
            raise IntegrityError(
                f"{self.what} {self.expected}: content has digest "
                f"{self.expected.algorithm}:{got} (corrupt or wrong blob)"
            )

    def start_at(self, offset: int, hashed: hashlib._Hash) -> bool:
        """Go on from byte ``offset`` of the blob, the bytes before it being already
        hashed into ``hashed`` (a download an earlier run left behind): only before the
        first read, and only if the stream underneath can start there (its own
        ``start_at``).  Returns whether it did; if not, nothing changed."""
        start = getattr(self._raw, "start_at", None)
        if self.count or self._done or start is None or not start(offset):
            return False
        self._hasher = hashed
        self.count = offset
        return True

    def verify(self) -> None:
        """Drain whatever is left and check; call after a consumer that may stop early."""
        while self.read(CHUNK):
            pass
        self._finish()

    def close(self) -> None:
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> VerifyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HashingWriter:
    """Passes writes through to ``raw`` while hashing and counting them."""

    def __init__(self, raw: BinaryIO | None = None, algorithm: str = "sha256",
                 hash: bool = True) -> None:
        self._raw = raw
        self._hasher = hashlib.new(algorithm)
        self._hash = hash
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._hash:
            self._hasher.update(data)
        n = len(data)
        self.count += n
        if self._raw is not None:
            self._raw.write(data)
        return n

    def account(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and count bytes someone else wrote (``BlobWriter.fill_from``)."""
        if self._hash:
            self._hasher.update(data)
        self.count += len(data)

    def flush(self) -> None:
        if self._raw is not None:
            self._raw.flush()

    @property
    def digest(self) -> Digest:
        if not self._hash:
            raise ValueError("this writer counts bytes but does not hash them")
        return Digest.from_hasher(self._hasher)


def digest_file(path: str, algorithm: str = "sha256") -> tuple[Digest, int]:
    """Hash a file without reading it whole into memory."""
    h = hashlib.new(algorithm)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Digest.from_hasher(h), size
